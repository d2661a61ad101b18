//! End-to-end tests of the daemon's ingest lanes and its orphan sweeper,
//! with real daemon processes: a telemetry flood is shed while every
//! control event gets through and memory stays bounded, the shed episodes
//! are summarised as `ingest.telemetry_shed` events, a data flood is
//! deferred with 429 and `Retry-After` and loses nothing acknowledged, a
//! bad lane hint is refused, and a running daemon quarantines an orphan
//! after its TTL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{http, stderr, Home};

/// Resident memory the daemon may reach during a flood. The lanes hold at
/// most 14,336 small events and each connection at most its request; the
/// daemon's sled cache is 64 MiB. Measured well under this bound.
const MAX_RSS_KIB: u64 = 256 * 1024;

/// One exchange that also returns the response head (for `Retry-After`).
fn post(sock: &Path, target: &str, body: &[u8]) -> (u16, String, Vec<serde_json::Value>) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let lines = String::from_utf8_lossy(&all[split + 4..])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (status, head, lines)
}

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn lanes_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["lanes"]["lanes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn telemetry_body(n: usize) -> Vec<u8> {
    let mut b = String::new();
    for i in 0..n {
        b.push_str(&format!(
            "{{\"kind\":\"telemetry.cpu\",\"actor\":\"actor:probe\",\"payload\":{{\"i\":{i}}}}}\n"
        ));
    }
    b.into_bytes()
}

fn socket(home: &Home) -> PathBuf {
    home.daemon_socket().unwrap()
}

#[test]
fn a_telemetry_flood_is_shed_while_every_control_event_gets_through_in_bounded_memory() {
    let home = Home::new();
    let daemon = home.start_daemon();
    let sock = socket(&home);
    let stop = Arc::new(AtomicBool::new(false));
    let shed_lines = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (sock, stop, shed) = (sock.clone(), stop.clone(), shed_lines.clone());
            std::thread::spawn(move || {
                let body = telemetry_body(1_024);
                while !stop.load(Ordering::SeqCst) {
                    let (code, _, lines) = post(&sock, "/v1/events", &body);
                    assert_eq!(code, 200, "telemetry is shed, never deferred");
                    let n = lines.iter().filter(|l| l["result"] == "shed").count();
                    shed.fetch_add(n as u64, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Control events, one submission each, while the flood runs; half by
    // kind, half by hint.
    std::thread::sleep(Duration::from_millis(300));
    let mut seqs = Vec::new();
    let mut peak_rss = 0;
    let mut samples = Vec::new();
    for i in 0..60 {
        let (target, line) = if i % 2 == 0 {
            (
                "/v1/events",
                format!(
                    "{{\"kind\":\"session.opened\",\"actor\":\"actor:agent\",\"session\":\"urn:srcos:session:s{i}\"}}\n"
                ),
            )
        } else {
            (
                "/v1/events?lane=control",
                format!("{{\"kind\":\"note.added\",\"actor\":\"actor:agent\",\"idempotency_key\":\"c-{i}\"}}\n"),
            )
        };
        let (code, _, lines) = post(&sock, target, line.as_bytes());
        assert_eq!(code, 200, "{lines:?}");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["result"], "appended", "{lines:?}");
        seqs.push(lines[0]["seq"].as_u64().unwrap());
        peak_rss = peak_rss.max(rss_kib(daemon.pid()));
        if i % 10 == 0 {
            let (_, body) = http(&sock, "GET", "/v1/status", &[], b"").unwrap();
            samples.push(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in flood {
        t.join().unwrap();
    }
    seqs.dedup();
    assert_eq!(seqs.len(), 60, "every control event has its own sequence");
    assert!(
        peak_rss > 0 && peak_rss < MAX_RSS_KIB,
        "daemon RSS {peak_rss} KiB"
    );
    for s in &samples {
        for l in lanes_of(s) {
            assert!(
                l["depth_events"].as_u64().unwrap() <= l["capacity_events"].as_u64().unwrap(),
                "{l}"
            );
        }
    }
    let shed = shed_lines.load(Ordering::SeqCst);
    assert!(shed > 0, "the flood was shed");

    // Once shedding has been quiet for a second, the episode is one event
    // whose counts match what the submitters were told.
    let status = home.wait_status("a shed summary", |s| {
        s["events_by_kind"]["ingest.telemetry_shed"]
            .as_u64()
            .unwrap_or(0)
            > 0
            && s["lanes"]["shedding"] == false
    });
    let lanes = lanes_of(&status);
    assert_eq!(lanes[0]["lane"], "control");
    assert_eq!(lanes[0]["shed_events"], 0);
    assert_eq!(lanes[0]["deferred_events"], 0);
    assert_eq!(lanes[2]["lane"], "telemetry");
    assert_eq!(lanes[2]["shed_events"].as_u64().unwrap(), shed);
    assert!(lanes[2]["peak_depth_events"].as_u64().unwrap() <= 2_048);
    assert!(lanes.iter().all(|l| l["depth_events"] == 0));
    let episodes = status["events_by_kind"]["ingest.telemetry_shed"]
        .as_u64()
        .unwrap();
    assert_eq!(status["lanes"]["shed_episodes"].as_u64().unwrap(), episodes);
    let head = status["log"]["head_seq"].as_u64().unwrap();
    let mut summaries = Vec::new();
    let mut from = 1;
    while from <= head {
        let (_, body) = http(
            &sock,
            "GET",
            &format!("/v1/log?from={from}&limit=1000"),
            &[],
            b"",
        )
        .unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        from += events.len() as u64;
        summaries.extend(
            events
                .into_iter()
                .filter(|e| e["kind"] == "ingest.telemetry_shed"),
        );
    }
    assert!(!summaries.is_empty());
    let summed: u64 = summaries
        .iter()
        .map(|e| e["payload"]["shed_events"].as_u64().unwrap())
        .sum();
    assert_eq!(summaries.len() as u64, episodes);
    assert_eq!(summed, shed, "the summaries count every shed event");
    for e in &summaries {
        assert_eq!(e["actor"], "actor:syncd-ingest");
        assert!(
            e["payload"]["first_shed_at"].as_str().unwrap()
                <= e["payload"]["last_shed_at"].as_str().unwrap()
        );
    }
    let text = home.run(&["status"]);
    assert!(
        support::stdout(&text).contains("lanes      control 0/4096"),
        "{}",
        support::stdout(&text)
    );
}

#[test]
fn a_data_flood_is_deferred_with_retry_after_and_nothing_acknowledged_is_lost() {
    let home = Home::new();
    let _daemon = home.start_daemon();
    let sock = socket(&home);
    let deferred_seen = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..14)
        .map(|w| {
            let (sock, seen) = (sock.clone(), deferred_seen.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut retried = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut round = 0;
                while !seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let mut body = String::new();
                    for i in 0..1_024 {
                        body.push_str(&format!(
                            "{{\"kind\":\"note.added\",\"actor\":\"actor:w\",\"idempotency_key\":\"d-{w}-{round}-{i}\"}}\n"
                        ));
                    }
                    round += 1;
                    let (code, head, lines) = post(&sock, "/v1/events", body.as_bytes());
                    for l in &lines {
                        match l["result"].as_str().unwrap() {
                            "appended" => acked.push(l["seq"].as_u64().unwrap()),
                            "deferred" => {
                                assert_eq!(code, 429);
                                assert_eq!(l["error"], "resource_blocked");
                                assert_eq!(l["lane"], "data");
                                assert!(l["retry_after_ms"].as_u64().unwrap() > 0);
                                assert!(head.contains("Retry-After: 1"), "{head}");
                                retried.push(l["line"].as_u64().unwrap());
                            }
                            other => panic!("unexpected {other}: {l}"),
                        }
                    }
                    if !retried.is_empty() {
                        seen.store(true, Ordering::SeqCst);
                        // Retrying the deferred lines later appends them.
                        std::thread::sleep(Duration::from_millis(300));
                        let lines: Vec<&str> = body.lines().collect();
                        let again: String = retried
                            .iter()
                            .map(|n| format!("{}\n", lines[*n as usize - 1]))
                            .collect();
                        let mut left = again;
                        for _ in 0..50 {
                            let (_, _, res) = post(&sock, "/v1/events", left.as_bytes());
                            let mut next = String::new();
                            for (r, l) in res.iter().zip(left.lines()) {
                                match r["result"].as_str().unwrap() {
                                    "appended" => acked.push(r["seq"].as_u64().unwrap()),
                                    "deferred" => next.push_str(&format!("{l}\n")),
                                    other => panic!("unexpected {other}"),
                                }
                            }
                            if next.is_empty() {
                                break;
                            }
                            left = next;
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        retried.clear();
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        deferred_seen.load(Ordering::SeqCst),
        "the data lane deferred work"
    );
    acked.sort_unstable();
    let n = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), n, "each acknowledgement has its own sequence");
    // Every acknowledged sequence holds a data event, and the log holds no
    // data event that was not acknowledged.
    let status = home.status_json();
    assert_eq!(
        status["events_by_kind"]["note.added"].as_u64().unwrap(),
        n as u64
    );
    let lanes = lanes_of(&status);
    assert!(lanes[1]["deferred_events"].as_u64().unwrap() > 0);
    assert!(lanes[1]["peak_depth_events"].as_u64().unwrap() <= 8_192);
    for s in acked.iter().step_by(97) {
        let (_, body) = http(&sock, "GET", &format!("/v1/log?from={s}&limit=1"), &[], b"").unwrap();
        let e: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(e[0]["kind"], "note.added");
        assert_eq!(e[0]["seq"].as_u64().unwrap(), *s);
    }
}

#[test]
fn a_bad_lane_hint_is_refused_and_appends_nothing() {
    let home = Home::new();
    let _daemon = home.start_daemon();
    let sock = socket(&home);
    // The daemon answers before it has recorded all of its own startup
    // transitions: the head is only still once it is running.
    home.wait_status("RUNNING", |s| s["daemon_state"] == "RUNNING");
    let before = home.head();
    let (code, _, lines) = post(
        &sock,
        "/v1/events?lane=urgent",
        b"{\"kind\":\"note.added\",\"actor\":\"actor:a\"}\n",
    );
    assert_eq!(code, 400);
    assert!(lines[0]["message"].as_str().unwrap().contains("urgent"));
    assert_eq!(home.head(), before);
    // A submitter may not record a shed summary itself.
    let (code, _, lines) = post(
        &sock,
        "/v1/events",
        b"{\"kind\":\"ingest.telemetry_shed\",\"actor\":\"actor:syncd-ingest\",\"payload\":{}}\n",
    );
    assert_eq!(code, 200);
    assert_eq!(lines[0]["result"], "rejected");
    assert_eq!(home.head(), before);
}

#[test]
fn a_running_daemon_quarantines_an_orphan_after_its_ttl() {
    let home = Home::new();
    std::fs::write(
        home.path().join("config.toml"),
        "[orphans]\nttl_seconds = 1\nsweep_interval_ms = 200\n",
    )
    .unwrap();
    let _daemon = home.start_daemon();
    let sock = socket(&home);
    let (code, _, lines) = post(
        &sock,
        "/v1/events",
        b"{\"kind\":\"note.added\",\"actor\":\"actor:a\",\"session\":\"urn:srcos:session:ghost\"}\n",
    );
    assert_eq!(code, 200);
    assert_eq!(lines[0]["result"], "appended");
    let status = home.wait_status("the sweeper's quarantine", |s| {
        s["sessions"]["orphans_quarantined"] == 1
    });
    assert_eq!(status["sessions"]["orphans_queued"], 0);
    assert_eq!(status["events_by_kind"]["orphan.quarantined"], 1);
    let out = home.run(&["orphans", "--json"]);
    assert!(
        support::stdout(&out).contains("quarantined"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_sweep_interval_stops_the_daemon_before_it_records_anything() {
    let home = Home::new();
    std::fs::write(
        home.path().join("config.toml"),
        "[orphans]\nsweep_interval_ms = 5\n",
    )
    .unwrap();
    let before = home.head();
    let out = home.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml") && err.contains("sweep_interval_ms"),
        "{err}"
    );
    assert_eq!(home.head(), before);
}

/// `[lanes]` in `HOME/config.toml` sets the limits the daemon runs with
/// and reports; a watermark left unset follows the data lane's capacity.
#[test]
fn configured_lane_limits_are_the_ones_the_daemon_runs_with() {
    let home = Home::new();
    std::fs::write(
        home.path().join("config.toml"),
        "[lanes]\ncontrol_capacity_events = 2048\ndata_capacity_events = 3072\ntelemetry_capacity_events = 1024\n",
    )
    .unwrap();
    let _daemon = home.start_daemon();
    let status = home.status_json();
    let lanes = lanes_of(&status);
    let capacities: Vec<u64> = lanes
        .iter()
        .map(|l| l["capacity_events"].as_u64().unwrap())
        .collect();
    assert_eq!(capacities, vec![2_048, 3_072, 1_024], "{status:#}");
    assert_eq!(status["lanes"]["data_pressure_watermark_events"], 1_536);
    // Events still go through them.
    let (code, _, lines) = post(&socket(&home), "/v1/events", telemetry_body(10).as_slice());
    assert_eq!(code, 200);
    assert!(lines.iter().all(|l| l["result"] == "appended"), "{lines:?}");
}

/// A `[lanes]` value out of its bounds (or an unknown key) stops the
/// daemon before it records anything, naming the file and the key.
#[test]
fn a_bad_lanes_section_stops_the_daemon_before_it_records_anything() {
    for (text, key) in [
        (
            "[lanes]\ndata_capacity_events = 5\n",
            "data_capacity_events",
        ),
        (
            "[lanes]\ntelemetry_capacity_events = 100000000\n",
            "telemetry_capacity_events",
        ),
        ("[lanes]\nurgent_events = 1\n", "urgent_events"),
    ] {
        let home = Home::new();
        std::fs::write(home.path().join("config.toml"), text).unwrap();
        let before = home.head();
        let out = home.run(&["daemon"]);
        assert_eq!(out.status.code(), Some(4), "{text}");
        let err = stderr(&out);
        assert!(err.contains("config.toml") && err.contains(key), "{err}");
        assert_eq!(home.head(), before);
    }
}

#[test]
fn syncd_ingest_served_by_the_daemon_goes_through_the_lanes() {
    let home = Home::new();
    let _d = home.start_daemon();
    let before = lanes_of(&home.status_json());
    let admitted = |lanes: &[serde_json::Value], lane: &str| {
        lanes
            .iter()
            .find(|l| l["lane"] == lane)
            .and_then(|l| l["admitted_events"].as_u64())
            .unwrap()
    };
    let lines: Vec<String> = (0..3)
        .map(support::event)
        .chain(std::iter::once(
            r#"{"kind":"session.opened","actor":"actor:agent-one","session":"urn:srcos:session:through-lanes","payload":{}}"#.to_owned(),
        ))
        .chain(std::iter::once(
            r#"{"kind":"telemetry.sample","actor":"actor:agent-one","payload":{"cpu":1}}"#
                .to_owned(),
        ))
        .collect();
    let out = home.ingest(&lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = support::json_lines(&out);
    assert_eq!(results.len(), 5);
    assert!(
        results.iter().all(|r| r["result"] == "appended"),
        "{results:?}"
    );
    let after = lanes_of(&home.status_json());
    assert_eq!(admitted(&after, "data") - admitted(&before, "data"), 3);
    assert_eq!(
        admitted(&after, "control") - admitted(&before, "control"),
        1
    );
    assert_eq!(
        admitted(&after, "telemetry") - admitted(&before, "telemetry"),
        1
    );
}
