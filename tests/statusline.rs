//! `syncd status --line`: one line with the health state, profile, device
//! and conflict count, for each health state; with a daemon running it is
//! read from the daemon's status snapshot and follows the log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::time::{Duration, Instant};

use support::{event, stderr, stdout, Home};

const SETUP: [&str; 4] = [
    r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:source-object:v1","object_type":"source_object","schema_version":"v1","required_fields":["object_id"]}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-one","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-two","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:source-object:v1","privacy_class":"work"}}"#,
];

fn ingest_ok(home: &Home, lines: &[&str]) {
    let lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let out = home.ingest(&lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn line(home: &Home) -> String {
    let out = home.run(&["status", "--line"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    text.trim_end().to_owned()
}

fn wait_line(home: &Home, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = line(home);
        if l.contains(want) {
            return l;
        }
        assert!(Instant::now() < deadline, "no {want:?} in {l}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clean_line_names_health_profile_device_and_conflicts() {
    let home = Home::new();
    assert_eq!(
        line(&home),
        "syncd clean · profile:local-dev · device:test-a · 0 conflicts · head 0"
    );
}

#[test]
fn conflicted_line_counts_the_conflicts() {
    let home = Home::new();
    ingest_ok(&home, &SETUP);
    let x = home.run(&["explain", "object:alpha", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&x.stdout).unwrap();
    let base = v["version"].as_str().unwrap();
    let up = |actor: &str, title: &str| {
        format!(
            r#"{{"kind":"object.updated","actor":"{actor}","payload":{{"object_id":"object:alpha","base_version":"{base}","title":"{title}"}}}}"#
        )
    };
    ingest_ok(
        &home,
        &[&up("actor:agent-one", "a"), &up("actor:agent-two", "b")],
    );
    let l = line(&home);
    assert!(l.starts_with("syncd conflicted · "), "{l}");
    assert!(l.contains("· 1 conflicts ·"), "{l}");
}

#[test]
fn policy_blocked_line() {
    let home = Home::new();
    ingest_ok(&home, &SETUP);
    ingest_ok(
        &home,
        &[
            r#"{"kind":"policy.decided","actor":"actor:policy","payload":{"decision_id":"urn:srcos:decision:deny-alpha","effect":"deny","policy_id":"sourceos.policy/local-object-review","object_id":"object:alpha","rationale":"work data stays on this device"}}"#,
        ],
    );
    assert!(line(&home).starts_with("syncd policy_blocked · "));
}

#[test]
fn repair_recommended_line() {
    let home = Home::new();
    ingest_ok(&home, &[&event(1), &event(2)]);
    {
        let db = home.raw_db();
        assert!(db.drop_tree("p.summary").unwrap());
        db.flush().unwrap();
    }
    assert!(line(&home).starts_with("syncd repair_recommended · "));
}

#[test]
fn daemon_unavailable_line_when_the_named_daemon_is_gone() {
    let home = Home::new();
    // A process that has exited: its pid names no daemon.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        home.path().join("daemon.json"),
        format!(
            r#"{{"pid":{pid},"socket":"/nonexistent/syncd.sock","run_id":"urn:srcos:run:gone"}}"#
        ),
    )
    .unwrap();
    assert!(line(&home).starts_with("syncd daemon_unavailable · "));
}

#[test]
fn offline_local_only_line_from_the_daemon_snapshot() {
    let home = Home::new();
    home.daemon_config(
        "retry_interval_ms = 60000\n[identity]\ncommand = [\"sh\", \"-c\", \"exit 7\"]\ntimeout_ms = 2000\n",
    );
    let _d = home.start_daemon();
    wait_line(&home, "syncd offline_local_only · ");
    assert!(home.path().join("status.snapshot.json").exists());
}

#[test]
fn degraded_line_when_the_org_policy_fails_to_load() {
    let home = Home::new();
    std::fs::write(home.path().join("org-policy.json"), b"{ not json").unwrap();
    home.daemon_config("retry_interval_ms = 60000\n[org_policy]\nfile = \"org-policy.json\"\n");
    let _d = home.start_daemon();
    wait_line(&home, "syncd degraded · ");
}

#[test]
fn the_snapshot_follows_the_log_and_goes_with_the_daemon() {
    let home = Home::new();
    let mut d = home.start_daemon();
    wait_line(&home, "· head ");
    ingest_ok(&home, &[&event(1)]);
    let head = home.head();
    let t = Instant::now();
    wait_line(&home, &format!("· head {head}"));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
    assert!(!home.path().join("status.snapshot.json").exists());
    assert!(line(&home).starts_with("syncd clean · "));
}

#[test]
fn a_damaged_or_foreign_snapshot_is_ignored() {
    let home = Home::new();
    let _d = home.start_daemon();
    wait_line(&home, "syncd clean · ");
    let snap = home.path().join("status.snapshot.json");
    // Another run's snapshot, and then garbage: the line is asked of the
    // daemon instead, and is still right.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap();
    v["run_id"] = "urn:srcos:run:other".into();
    v["status"]["health"] = "conflicted".into();
    std::fs::write(&snap, v.to_string()).unwrap();
    assert!(line(&home).starts_with("syncd clean · "));
    std::fs::write(&snap, b"{ not json").unwrap();
    assert!(line(&home).starts_with("syncd clean · "));
}
