//! End-to-end tests of replication over NATS JetStream through the real
//! binary (`syncd sync`), against real `nats-server` processes started here
//! with JetStream on, on loopback ports, with temporary store directories.
//! `scripts/test` installs the `nats-server` package when it is missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{stderr, stdout, Home};

const PROFILE: &str = "profile:family";

/// A `nats-server` with JetStream, killed when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Extra arguments (cluster settings).
    args: Vec<String>,
    _tmp: tempfile::TempDir,
}

/// The nats-server binary: `$NATS_SERVER`, else on `PATH`, else where the
/// Debian package puts it.
fn nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from("nats-server")
    } else {
        PathBuf::from("/usr/sbin/nats-server")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut n = Self {
            child: None,
            port: free_port(),
            dir,
            args: Vec::new(),
            _tmp: tmp,
        };
        n.spawn();
        n
    }

    /// Three servers clustered with JetStream, each knowing the others.
    fn cluster() -> Vec<Nats> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .filter(|(_, r)| r != route)
                .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
                .collect();
            let tmp = tempfile::tempdir().unwrap();
            nodes.push(Nats {
                child: None,
                port: *client,
                dir: tmp.path().to_path_buf(),
                args: vec![
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "syncd-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    routes.join(","),
                ],
                _tmp: tmp,
            });
        }
        // Started together, then each waited for.
        for n in &mut nodes {
            n.launch();
        }
        for n in &nodes {
            n.wait_ready();
        }
        nodes
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    fn launch(&mut self) {
        let log = self.dir.join("server.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(nats_server())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .arg("-l")
            .arg(&log)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server must be installed (scripts/test installs it): {e}")
            });
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let log = self.dir.join("server.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server as its service manager would (SIGTERM): it writes
    /// its state before it exits.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let stopped = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(stopped.success());
            c.wait().unwrap();
        }
    }

    /// Kills the server abruptly (no flush).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn device(name: &str) -> Home {
    Home::device(&format!("device:{name}"), PROFILE)
}

fn sync(home: &Home, nats: &Nats) -> (Option<i32>, Value) {
    let out = home.run(&["sync", "--nats", &nats.url(), "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report)
}

fn sync_ok(home: &Home, nats: &Nats) -> Value {
    let (code, report) = sync(home, nats);
    assert_eq!(code, Some(0), "{report:#}");
    report
}

/// Syncs every home, twice round, so that everything published reaches
/// everyone.
fn converge(homes: &[&Home], nats: &Nats) {
    for _ in 0..2 {
        for h in homes {
            sync_ok(h, nats);
        }
    }
}

fn ingest_ok(home: &Home, lines: &[String]) {
    let out = home.ingest(lines);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

fn json_of(home: &Home, args: &[&str]) -> Value {
    let out = home.run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn schema() -> String {
    r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:note:v1","object_type":"note","schema_version":"v1"}}"#.to_owned()
}

fn create(id: &str, visibility: &str) -> String {
    json!({"kind": "object.created", "actor": "actor:local-user",
        "payload": {"object_id": id, "object_type": "note", "schema_id": "schema:note:v1",
            "sync_visibility": visibility, "title": "t"}})
    .to_string()
}

fn notes(tag: &str, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            json!({"kind": "note.added", "actor": format!("actor:{tag}"),
                "idempotency_key": format!("{tag}-{i}"), "payload": {"i": i}})
            .to_string()
        })
        .collect()
}

/// What must be identical on every device once replication converged.
/// (A daemon's own lifecycle events stay on its device.)
fn projections(home: &Home) -> Value {
    let s = home.status_json();
    let by_kind: serde_json::Map<String, Value> = s["events_by_kind"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("lifecycle."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let events: u64 = by_kind.values().map(|v| v.as_u64().unwrap()).sum();
    json!({
        "events": events,
        "by_kind": by_kind,
        "objects": json_of(home, &["objects", "--json"]),
        "conflicts": json_of(home, &["conflicts", "--json"]),
    })
}

#[test]
fn three_devices_converge_to_identical_projections() {
    let nats = Nats::start();
    let (a, b, c) = (device("a"), device("b"), device("c"));
    ingest_ok(&a, &[schema(), create("object:shopping", "profile")]);
    ingest_ok(&a, &notes("a", 40));
    ingest_ok(&b, &notes("b", 25));
    ingest_ok(&c, &notes("c", 10));
    // Concurrent writes between passes.
    sync_ok(&a, &nats);
    ingest_ok(&b, &notes("b2", 5));
    sync_ok(&b, &nats);
    ingest_ok(&c, &notes("c2", 5));
    converge(&[&a, &b, &c], &nats);

    let pa = projections(&a);
    assert_eq!(pa["events"], 2 + 40 + 30 + 15, "{pa:#}");
    assert_eq!(projections(&b), pa);
    assert_eq!(projections(&c), pa);
    for h in [&a, &b, &c] {
        assert_eq!(h.run(&["doctor"]).status.code(), Some(0));
        assert_eq!(h.status_json()["health"], "clean");
    }
    // Nothing new: a further pass appends nothing anywhere.
    let heads: Vec<u64> = [&a, &b, &c].iter().map(|h| h.head()).collect();
    let report = sync_ok(&b, &nats);
    for p in report["peers"].as_array().unwrap() {
        assert_eq!(p["appended"], 0, "{report:#}");
        assert_eq!(p["lag"], 0, "{report:#}");
    }
    assert_eq!(
        heads,
        [&a, &b, &c].iter().map(|h| h.head()).collect::<Vec<_>>()
    );
}

#[test]
fn a_concurrent_update_is_the_same_single_conflict_everywhere() {
    let nats = Nats::start();
    let (a, b) = (device("a"), device("b"));
    ingest_ok(&a, &[schema(), create("object:plan", "profile")]);
    converge(&[&a, &b], &nats);
    let v = json_of(&a, &["explain", "object:plan", "--json"])["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        json_of(&b, &["explain", "object:plan", "--json"])["version"],
        v.as_str()
    );
    let update = |field: &str| {
        json!({"kind": "object.updated", "actor": "actor:local-user",
            "payload": {"object_id": "object:plan", "base_version": v, field: "x"}})
        .to_string()
    };
    ingest_ok(&a, &[update("title")]);
    ingest_ok(&b, &[update("body")]);
    // And a second pair writing the same field, each after its own first
    // change, so each device applies the two sides in the other's order.
    let title = |home: &Home, value: &str| {
        let v = json_of(home, &["explain", "object:plan", "--json"])["version"]
            .as_str()
            .unwrap()
            .to_owned();
        json!({"kind": "object.updated", "actor": "actor:local-user",
            "payload": {"object_id": "object:plan", "base_version": v, "title": value}})
        .to_string()
    };
    let (ta, tb) = (title(&a, "from a"), title(&b, "from b"));
    ingest_ok(&a, &[ta]);
    ingest_ok(&b, &[tb]);
    converge(&[&a, &b], &nats);
    // The object reads the same everywhere, whatever the arrival order.
    let ea = json_of(&a, &["explain", "object:plan", "--json"]);
    let eb = json_of(&b, &["explain", "object:plan", "--json"]);
    for field in ["record", "version", "state", "last_changed"] {
        assert_eq!(ea[field], eb[field], "{field}: {ea:#} {eb:#}");
    }
    let strip = |mut c: Value| {
        // The local event at which a device noticed it is its own.
        for x in c.as_array_mut().unwrap() {
            x.as_object_mut().unwrap().remove("detected_seq");
        }
        c
    };
    let ca = strip(json_of(&a, &["conflicts", "--json"]));
    let cb = strip(json_of(&b, &["conflicts", "--json"]));
    // One conflict: the two changes made from the same version (the later
    // pair started from different versions, so it is not a sibling pair).
    assert_eq!(ca.as_array().unwrap().len(), 1, "{ca:#}");
    assert_eq!(ca, cb);
    assert_eq!(a.status_json()["conflict_count"], 1);
    assert_eq!(b.status_json()["conflict_count"], 1);
    let text = stdout(&b.run(&["status"]));
    assert!(
        text.contains("conflicts  1 unresolved (`syncd conflicts`)"),
        "{text}"
    );
}

#[test]
fn a_local_only_object_never_reaches_a_peer() {
    let nats = Nats::start();
    let (a, b) = (device("a"), device("b"));
    ingest_ok(
        &a,
        &[
            schema(),
            create("object:diary", "local_only"),
            create("object:recipes", "profile"),
        ],
    );
    let v = json_of(&a, &["explain", "object:diary", "--json"])["version"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_ok(
        &a,
        &[
            json!({"kind": "object.updated", "actor": "actor:local-user",
            "payload": {"object_id": "object:diary", "base_version": v, "title": "secret"}})
            .to_string(),
        ],
    );
    let report = sync_ok(&a, &nats);
    assert_eq!(
        report["published"]["withheld"]["local_only"], 2,
        "{report:#}"
    );
    sync_ok(&b, &nats);
    let log = stdout(&b.run(&["log", "--json"]));
    assert!(log.contains("object:recipes"), "{log}");
    assert!(
        !log.contains("object:diary") && !log.contains("secret"),
        "{log}"
    );
    let objects = json_of(&b, &["objects", "--json"]);
    let ids: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["object_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["object:recipes"]);
    // B still verified A's whole chain, withheld positions included.
    let peer = &sync_ok(&b, &nats)["peers"][0];
    assert_eq!(peer["applied_through"], a.head());
    assert_eq!(peer["lag"], 0);
}

#[test]
fn offline_work_continues_and_catches_up_after_reconnecting_and_restarts() {
    let mut nats = Nats::start();
    let (a, b) = (device("a"), device("b"));
    ingest_ok(&a, &notes("a", 10));
    ingest_ok(&b, &notes("b", 1));
    converge(&[&a, &b], &nats);

    // The server goes away: syncing says so quickly and changes nothing;
    // local work goes on.
    nats.kill();
    let head = a.head();
    let started = Instant::now();
    let out = a.run(&["sync", "--nats", &nats.url()]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no replication server reachable"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(a.head(), head);
    ingest_ok(&a, &notes("a-offline", 20));
    // Status panes see offline operation until a pass reaches a server.
    let s = a.status_json();
    assert_eq!(s["health"], "offline_local_only", "{s:#}");
    assert_eq!(s["replication"]["reached_server"], false);
    let text = stdout(&a.run(&["status"]));
    assert!(
        text.contains("replication offline, working locally"),
        "{text}"
    );
    let peers = json_of(&a, &["peers", "--json"]);
    assert_eq!(peers["reached_server"], false, "{peers:#}");
    assert_eq!(peers["peers"][0]["device"], "device:b");

    // The server comes back (same store): A publishes what it wrote
    // offline, B resumes from its consumer's position. A killed
    // nats-server 2.9 may come back with an older acknowledgement floor
    // for B's consumer (it writes consumer state to disk later, not when
    // it confirms an acknowledgement): B then receives positions it holds
    // again, and recognises each by its origin instead of appending it.
    nats.spawn();
    let published = sync_ok(&a, &nats);
    // Position `head` is B's event, received after A last published: its
    // stub goes out now, with what A wrote offline.
    assert_eq!(published["published"]["from_seq"], head, "{published:#}");
    assert_eq!(published["published"]["confirmed_seq"], head + 20);
    let report = sync_ok(&b, &nats);
    let peer = &report["peers"][0];
    assert_eq!(peer["appended"], 20, "{report:#}");
    let again = peer["duplicates"].as_u64().unwrap();
    assert!(
        again <= 10,
        "only A's first ten were here already: {report:#}"
    );
    assert_eq!(peer["refused"], json!([]), "{report:#}");
    assert!(peer["missing"].is_null(), "{report:#}");
    assert_eq!(peer["lag"], 0, "{report:#}");
    assert_eq!(projections(&a), projections(&b));

    // A server that is stopped rather than killed keeps B's position
    // exactly: after it restarts, B receives only what is new.
    ingest_ok(&a, &notes("a-later", 5));
    sync_ok(&a, &nats);
    nats.stop();
    nats.spawn();
    let report = sync_ok(&b, &nats);
    let peer = &report["peers"][0];
    assert_eq!(peer["appended"], 5, "{report:#}");
    assert_eq!(peer["duplicates"], 0, "{report:#}");
    assert_eq!(peer["refilled"], 0, "{report:#}");
    assert_eq!(projections(&a), projections(&b));
    assert_eq!(a.status_json()["health"], "clean");
    let peers = json_of(&b, &["peers", "--json"]);
    let p = &peers["peers"][0];
    assert_eq!(p["device"], "device:a", "{peers:#}");
    assert_eq!(p["lag"], 0);
    assert_eq!(p["stale"], false);
    assert!(p["last_confirmed_at"].is_string() && p["last_received_at"].is_string());

    // Not confirmed in sync for longer than configured: stale.
    std::fs::write(
        b.path().join("config.toml"),
        "[replication]\nstale_after_seconds = 1\n",
    )
    .unwrap();
    sync_ok(&b, &nats);
    nats.kill();
    std::thread::sleep(Duration::from_millis(1_200));
    let peers = json_of(&b, &["peers", "--json"]);
    assert_eq!(peers["peers"][0]["stale"], true, "{peers:#}");
    assert_eq!(b.status_json()["replication"]["stale_peers"], 1);
    let text = stdout(&b.run(&["peers"]));
    assert!(text.contains("STALE"), "{text}");
    let text = stdout(&b.run(&["status"]));
    assert!(
        text.contains("replication 1 peer(s), lag at most 0 event(s), 1 STALE"),
        "{text}"
    );
}

/// Devices that connect for the first time at the same moment each find
/// the stream missing and create it; whichever loses that race must use
/// the one the other created instead of failing. Three first connections
/// start together, five times over, from threads of one process so that
/// their requests meet. The server refuses the loser only now and then
/// (seen once, in the replication bench), so this does not reproduce that
/// every time; it holds that connecting together always succeeds.
#[test]
fn replicators_connecting_together_to_a_fresh_server_all_connect() {
    use sourceos_syncd::{DeviceId, InitOptions, OpenOptions, ProfileId, Store};
    use sourceos_syncd_adapters::replication::{ReplicationConfig, Replicator};
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<Store> = dirs
        .iter()
        .zip(["device:a", "device:b", "device:c"])
        .map(|(dir, device)| {
            Store::init(
                dir.path(),
                InitOptions {
                    device: Some(DeviceId::new(device).unwrap()),
                    profile: ProfileId::new(PROFILE).unwrap(),
                    created_at: None,
                },
                OpenOptions::default(),
            )
            .unwrap()
        })
        .collect();
    for round in 0..5 {
        let nats = Nats::start();
        let mut config = ReplicationConfig::default();
        config.set_servers(vec![nats.url()]).unwrap();
        config.enabled = true;
        let start = std::sync::Arc::new(std::sync::Barrier::new(stores.len()));
        let threads: Vec<_> = stores
            .iter()
            .map(|s| {
                let (s, config, start) = (s.clone(), config.clone(), start.clone());
                std::thread::spawn(move || {
                    let rt = runtime();
                    start.wait();
                    rt.block_on(Replicator::connect(s, &config)).map(|_| ())
                })
            })
            .collect();
        for (device, t) in ["a", "b", "c"].iter().zip(threads) {
            if let Err(e) = t.join().unwrap() {
                panic!("round {round}, device {device}: {e}");
            }
        }
    }
}

/// Fetches up to `max` messages from the only consumer on the stream (a
/// receiving device's, following its one peer) and never acknowledges
/// them, as a pass that dies after delivery would. Returns how many it got.
fn fetch_without_ack(nats: &Nats, max: usize) -> usize {
    use futures_util::StreamExt;
    let (rt, js) = jetstream(nats);
    rt.block_on(async {
        let stream = js.get_stream("SYNCD").await.unwrap();
        let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
        assert_eq!(names.len(), 1, "{names:?}");
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&names[0]).await.unwrap();
        let mut batch = consumer.fetch().max_messages(max).messages().await.unwrap();
        let mut got = 0;
        while let Some(m) = batch.next().await {
            m.unwrap();
            got += 1;
        }
        got
    })
}

/// A pass that died after the server delivered messages to it leaves them
/// awaiting an acknowledgement that never comes, and the consumer does not
/// deliver them again before that times out: the next pass reads them from
/// the stream instead and catches up at once.
#[test]
fn a_pass_that_died_after_delivery_is_made_good_from_the_stream() {
    let nats = Nats::start();
    let (a, b) = (device("a"), device("b"));
    ingest_ok(&a, &notes("a", 5));
    sync_ok(&a, &nats);
    let first = sync_ok(&b, &nats);
    assert_eq!(first["peers"][0]["appended"], 5, "{first:#}");
    ingest_ok(&a, &notes("a-more", 20));
    sync_ok(&a, &nats);
    assert_eq!(fetch_without_ack(&nats, 100), 20);

    let report = sync_ok(&b, &nats);
    let peer = &report["peers"][0];
    assert_eq!(peer["appended"], 20, "{report:#}");
    assert_eq!(peer["refilled"], 20, "{report:#}");
    assert_eq!(peer["lag"], 0, "{report:#}");
    assert!(peer["missing"].is_null(), "{report:#}");
    assert_eq!(projections(&a), projections(&b));

    // Later passes go on from there.
    ingest_ok(&a, &notes("a-last", 3));
    sync_ok(&a, &nats);
    let report = sync_ok(&b, &nats);
    assert_eq!(report["peers"][0]["appended"], 3, "{report:#}");
    assert_eq!(report["peers"][0]["lag"], 0, "{report:#}");
    assert_eq!(projections(&a), projections(&b));
}

/// A message's headers and body.
type RawMessage = (Vec<(&'static str, String)>, Vec<u8>);

/// A single-threaded runtime, as `syncd` runs its replicator on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime and a JetStream client of `nats`, as a rogue or test client.
fn jetstream(nats: &Nats) -> (tokio::runtime::Runtime, async_nats::jetstream::Context) {
    let rt = runtime();
    let js = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
    });
    (rt, js)
}

/// Publishes raw messages into the stream, as a rogue client would.
fn publish_raw(nats: &Nats, subject: &str, messages: Vec<RawMessage>) {
    let (rt, js) = jetstream(nats);
    rt.block_on(async {
        for (headers, body) in messages {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in headers {
                h.insert(k, v.as_str());
            }
            js.publish_with_headers(subject.to_owned(), h, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// The stored bytes and hashes of a home's events (the store is closed).
fn stored(home: &Home) -> Vec<(Vec<u8>, String, String)> {
    let mut out = Vec::new();
    {
        // The tree holds the database (and its lock) until it is dropped.
        let db = home.raw_db();
        let events = db.open_tree("events").unwrap();
        for row in events.iter() {
            let (_, v) = row.unwrap();
            out.push(v.to_vec());
        }
    }
    let log: Vec<Value> = support::json_lines(&home.run(&["log", "--json"]));
    assert_eq!(out.len(), log.len());
    out.into_iter()
        .zip(log)
        .map(|(bytes, e)| {
            (
                bytes,
                e["hash"].as_str().unwrap().to_owned(),
                e["prev_hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn position(seq: u64, hash: &str, prev: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Nats-Msg-Id", format!("{hash}-{seq}-{}", rand_suffix())),
        ("Syncd-Seq", seq.to_string()),
        ("Syncd-Hash", hash.to_owned()),
        ("Syncd-Prev", prev.to_owned()),
    ]
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn forged_and_corrupt_messages_are_refused_and_reported() {
    let nats = Nats::start();
    let a = device("a");
    let mallory = device("mallory");
    ingest_ok(&mallory, &notes("m", 4));
    let ev = stored(&mallory);
    assert_eq!(ev.len(), 4);
    let subject = format!("syncd.ev.{PROFILE}.device:mallory");
    let mut flipped = ev[1].0.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let other = format!("blake3:{}", "0".repeat(64));
    ingest_ok(&a, &notes("a", 1));
    let a_event = stored(&a).remove(0);
    // The first pass creates the stream.
    sync_ok(&a, &nats);
    publish_raw(
        &nats,
        &subject,
        vec![
            (position(1, &ev[0].1, &ev[0].2), ev[0].0.clone()),
            // Bytes altered in transit: the hash does not recompute.
            (position(2, &ev[1].1, &ev[1].2), flipped),
            (position(2, &ev[1].1, &ev[1].2), ev[1].0.clone()),
            // A link to a history that is not the chain's.
            (position(3, &ev[2].1, &other), ev[2].0.clone()),
            (position(3, &ev[2].1, &ev[2].2), ev[2].0.clone()),
            // Another device's event put in this device's chain.
            (position(4, &a_event.1, &ev[2].1), a_event.0.clone()),
        ],
    );
    let (code, report) = sync(&a, &nats);
    assert_eq!(code, Some(65), "{report:#}");
    let peer = peer_of(&report, "device:mallory");
    assert_eq!(peer["appended"], 3, "{peer:#}");
    assert_eq!(peer["applied_through"], 3, "{peer:#}");
    let reasons: Vec<String> = peer["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(reasons[0].contains("does not verify"), "{reasons:#?}");
    assert!(
        reasons[1].contains("broken or forged chain"),
        "{reasons:#?}"
    );
    assert!(reasons[2].contains("the headers say 4"), "{reasons:#?}");
    // Only the verified events are in A's log, and A is healthy.
    assert_eq!(a.head(), 1 + 3);
    assert_eq!(a.run(&["doctor"]).status.code(), Some(0));
    // A gap (position 6 without 5) is reported, not skipped.
    publish_raw(
        &nats,
        &subject,
        vec![(position(6, &ev[3].1, &ev[2].1), ev[3].0.clone())],
    );
    let (code, report) = sync(&a, &nats);
    assert_eq!(code, Some(65), "{report:#}");
    let text = report.to_string();
    assert!(text.contains("\"missing\":4"), "{report:#}");
}

/// One peer's part of a `syncd sync --json` report.
fn peer_of(report: &Value, device: &str) -> Value {
    report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["device"] == device)
        .unwrap_or_else(|| panic!("no report for {device}: {report:#}"))
        .clone()
}

/// A header naming only the message id, as events are published.
fn id_only(hash: &str) -> Vec<(&'static str, String)> {
    vec![("Nats-Msg-Id", format!("{hash}-{}", rand_suffix()))]
}

#[test]
fn forged_events_without_position_headers_are_refused_by_their_bytes() {
    let nats = Nats::start();
    let a = device("a");
    let eve = device("eve");
    // Another history under the same device id: its second event links
    // to a first event that is not eve's.
    let impostor = device("eve");
    ingest_ok(&eve, &notes("e", 2));
    ingest_ok(&impostor, &notes("i", 2));
    let ev = stored(&eve);
    let forged = stored(&impostor);
    assert_ne!(forged[1].2, ev[0].1);
    ingest_ok(&a, &notes("a", 1));
    let a_event = stored(&a).remove(0);
    let mut flipped = ev[0].0.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    sync_ok(&a, &nats);
    let subject = format!("syncd.ev.{PROFILE}.device:eve");
    publish_raw(
        &nats,
        &subject,
        vec![
            // Bytes altered in transit: no position can be read at all.
            (id_only(&ev[0].1), flipped),
            // Another device's event on eve's subject.
            (id_only(&a_event.1), a_event.0.clone()),
            (id_only(&ev[0].1), ev[0].0.clone()),
            // A second event that links to another first one.
            (id_only(&forged[1].1), forged[1].0.clone()),
            (id_only(&ev[1].1), ev[1].0.clone()),
        ],
    );
    let (code, report) = sync(&a, &nats);
    assert_eq!(code, Some(65), "{report:#}");
    let peer = peer_of(&report, "device:eve");
    assert_eq!(peer["appended"], 2, "{peer:#}");
    assert_eq!(peer["applied_through"], 2, "{peer:#}");
    let refused = peer["refused"].as_array().unwrap();
    let reasons: Vec<&str> = refused
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(reasons[0].contains("does not verify"), "{reasons:#?}");
    assert_eq!(refused[0]["seq"], Value::Null, "{refused:#?}");
    assert!(
        reasons[1].contains("published on device:eve's subject but its origin is device:a"),
        "{reasons:#?}"
    );
    assert!(
        reasons[2].contains("broken or forged chain"),
        "{reasons:#?}"
    );
    assert_eq!(refused[2]["seq"], 2, "{refused:#?}");
    assert_eq!(a.head(), 1 + 2);
    assert_eq!(a.run(&["doctor"]).status.code(), Some(0));
}

#[test]
fn bad_configuration_and_arguments_are_clear_errors() {
    let a = device("a");
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("replication is off"),
        "{}",
        stderr(&out)
    );
    for url in ["http://127.0.0.1:4222", "nats://127.0.0.1", "nats://:4222"] {
        let out = a.run(&["sync", "--nats", url]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
    }
    std::fs::write(
        a.path().join("config.toml"),
        "[replication]\nenabled = true\nstream_replicas = 2\nservers = [\"nats://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("stream_replicas"), "{}", stderr(&out));
}

/// A stream that exists but not as configured is named in a clear error
/// (exit 2), and nothing local changes: copies a lone server cannot hold
/// (it accepts the count and keeps one), and a stream of that name that
/// carries other subjects.
#[test]
fn a_stream_unlike_its_configuration_is_a_clear_error() {
    let nats = Nats::start();
    let a = device("a");
    ingest_ok(&a, &notes("a", 3));
    let config = |extra: &str| {
        format!(
            "[replication]\nenabled = true\nservers = [\"{}\"]\n{extra}",
            nats.url()
        )
    };
    std::fs::write(
        a.path().join("config.toml"),
        config("stream_replicas = 1\n"),
    )
    .unwrap();
    assert_eq!(a.run(&["sync"]).status.code(), Some(0));
    let head = a.head();

    std::fs::write(
        a.path().join("config.toml"),
        config("stream_replicas = 3\n"),
    )
    .unwrap();
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "stream SYNCD: [replication] stream_replicas asks for 3 copies but the servers hold 1"
        ),
        "{err}"
    );
    assert_eq!(a.head(), head);
    let text = stdout(&a.run(&["status"]));
    assert!(
        text.contains("failed: stream SYNCD: [replication] stream_replicas asks for 3"),
        "{text}"
    );
    // So does every later pass: the single server cannot hold three.
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let (rt, js) = jetstream(&nats);
    rt.block_on(async {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    std::fs::write(a.path().join("config.toml"), config("stream = \"OTHER\"\n")).unwrap();
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stream OTHER: it exists for the subjects") && err.contains("syncd.ev.>"),
        "{err}"
    );
    assert_eq!(a.head(), head);
}

/// How many messages of `device`'s subject the stream `SYNCD` holds.
fn messages_of(nats: &Nats, device: &str) -> u64 {
    let (rt, js) = jetstream(nats);
    rt.block_on(async {
        use futures_util::StreamExt;
        let subject = format!("syncd.ev.profile:family.device:{device}");
        let stream = js.get_stream("SYNCD").await.unwrap();
        let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
        let mut count = 0;
        while let Some(item) = subjects.next().await {
            let (name, n) = item.unwrap();
            if name == subject {
                count = n as u64;
            }
        }
        count
    })
}

/// Sets the `SYNCD` stream's largest message.
fn set_max_message_size(nats: &Nats, max: i32) {
    let (rt, js) = jetstream(nats);
    rt.block_on(async {
        let mut s = js.get_stream("SYNCD").await.unwrap();
        let mut config = s.info().await.unwrap().config.clone();
        config.max_message_size = max;
        js.update_stream(&config).await.unwrap();
    });
}

/// A pass fails (exit 65) because the stream refuses a message too large
/// for it, after confirming positions through `seq`.
fn refused_after(home: &Home, nats: &Nats, seq: u64) {
    let (code, _) = sync(home, nats);
    assert_eq!(code, Some(65));
    let peers = json_of(home, &["peers", "--json"]);
    let err = peers["last_error"].as_str().unwrap();
    assert!(
        err.contains(&format!("publishing stopped after event {seq}")) && err.contains("maximum"),
        "{err}"
    );
}

/// A note too large for a stream limited to 700-byte messages.
fn big_note(tag: &str) -> String {
    json!({"kind": "note.added", "actor": format!("actor:{tag}"),
        "payload": {"text": "x".repeat(1_000)}})
    .to_string()
}

/// A long pass publishes without replies and confirms each group by the
/// stream's count: a publication the stream refuses in the middle of a
/// group (here a stream created beforehand with a message size limit) is
/// found, published again awaiting its answer, and named in the error; the
/// positions before it are confirmed. Once the stream takes it, the next
/// pass publishes what is missing, and what the stream already held is
/// not stored twice, nor sent again by later passes although the stream's
/// last message is now an earlier position. When the server then loses
/// its newest messages, among them that earlier position, the next pass
/// finds it missing and publishes it again. A short pass awaits each
/// answer and names a refusal the same way.
#[test]
fn a_publication_the_stream_drops_is_found_and_sent_again() {
    let mut nats = Nats::start();
    let (rt, js) = jetstream(&nats);
    rt.block_on(js.create_stream(async_nats::jetstream::stream::Config {
        name: "SYNCD".into(),
        subjects: vec!["syncd.ev.>".into()],
        max_message_size: 700,
        ..Default::default()
    }))
    .unwrap();
    drop((rt, js));
    let a = device("a");
    let mut lines = notes("a", 100);
    lines.push(big_note("a"));
    lines.extend(notes("b", 100));
    ingest_ok(&a, &lines);
    assert_eq!(a.head(), 201);

    refused_after(&a, &nats, 100);
    // Every position but 101 arrived.
    assert_eq!(messages_of(&nats, "a"), 200);

    set_max_message_size(&nats, 8_192);
    let report = sync_ok(&a, &nats);
    assert_eq!(report["published"]["from_seq"], 101, "{report:#}");
    assert_eq!(report["published"]["confirmed_seq"], 201, "{report:#}");
    assert_eq!(report["published"]["already_in_stream"], 100, "{report:#}");
    assert_eq!(messages_of(&nats, "a"), 201);

    // Position 101 is now the stream's last message of this device, but
    // the very one seen when 201 was confirmed: nothing is sent again.
    let report = sync_ok(&a, &nats);
    assert_eq!(report["published"]["from_seq"], 0, "{report:#}");
    assert_eq!(report["published"]["confirmed_seq"], 201, "{report:#}");
    assert_eq!(messages_of(&nats, "a"), 201);

    // Without that record (a peers file written before it existed), a pass
    // cannot tell the stream's order from a server that lost its tail: it
    // resumes after the stream's last message, and the stream drops what
    // it holds. The pass records it, and the next one sends nothing.
    let peers_file = a.path().join("replication/peers.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&peers_file).unwrap()).unwrap();
    assert!(file["published_last_message"].is_u64(), "{file:#}");
    file.as_object_mut()
        .unwrap()
        .remove("published_last_message");
    std::fs::write(&peers_file, file.to_string()).unwrap();
    let out = a.run(&["sync", "--nats", &nats.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("published: events 102..201 of device:a")
            && text.contains("100 of them the stream already held"),
        "{text}"
    );
    let report = sync_ok(&a, &nats);
    assert_eq!(report["published"]["from_seq"], 0, "{report:#}");
    assert_eq!(messages_of(&nats, "a"), 201);

    ingest_ok(&a, &notes("c", 1));
    let report = sync_ok(&a, &nats);
    assert_eq!(report["published"]["from_seq"], 202, "{report:#}");
    assert_eq!(report["published"]["already_in_stream"], 0, "{report:#}");
    assert_eq!(messages_of(&nats, "a"), 202);

    // The server loses its newest two messages, 202 and 101 (stored after
    // 201). Resuming after the last one left (201) would never send 101
    // again: the pass finds it missing and publishes again from it.
    let (rt, js) = jetstream(&nats);
    rt.block_on(async {
        let mut stream = js.get_stream("SYNCD").await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        for seq in [last, last - 1] {
            assert!(stream.delete_message(seq).await.unwrap());
        }
    });
    drop((rt, js));
    // A restart, as after the crash that lost them (nats-server 2.9 only
    // then finds the subject's new last message).
    nats.stop();
    nats.spawn();
    assert_eq!(messages_of(&nats, "a"), 200);
    let out = a.run(&["sync", "--nats", &nats.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("published: events 101..202 of device:a")
            && text.contains(
                "the stream had lost events it confirmed, from event 101: published again"
            ),
        "{text}"
    );
    let peers = json_of(&a, &["peers", "--json"]);
    assert!(peers["last_error"].is_null(), "{peers:#}");
    // Each of the 102 positions sent again was either known to the stream
    // or stored (the restarted server may have forgotten the message ids
    // of its duplicate window; receivers drop such copies).
    let added = messages_of(&nats, "a") - 200;
    let held: u64 = text
        .lines()
        .find_map(|l| l.strip_suffix(" of them the stream already held"))
        .map_or(0, |n| n.parse().unwrap());
    assert!(added >= 2, "{text}");
    assert_eq!(held + added, 102, "{text}");
    let report = sync_ok(&a, &nats);
    assert_eq!(report["published"]["from_seq"], 0, "{report:#}");
    assert!(report["published"]["restored_from"].is_null(), "{report:#}");

    let b = device("b");
    sync_ok(&b, &nats);
    assert_eq!(projections(&b)["by_kind"], projections(&a)["by_kind"]);
    assert_eq!(b.head(), 202);

    // A short pass: one position, refused by its answer.
    set_max_message_size(&nats, 700);
    ingest_ok(&a, &[big_note("d")]);
    let before = messages_of(&nats, "a");
    refused_after(&a, &nats, 202);
    assert_eq!(messages_of(&nats, "a"), before);
}

/// Runs `openssl` in `dir`, failing the test with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by it, in `dir`.
fn test_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=syncd test CA"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", "/CN=127.0.0.1"];
        req.extend_from_slice(&ec);
        req.extend_from_slice(&["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

/// Replication over TLS to a server that verifies clients: devices with the
/// CA and a client certificate converge; without them, or with a file
/// that is not there, the pass fails clearly and nothing local changes.
#[test]
fn replication_over_tls_with_client_certificates() {
    let pki = tempfile::tempdir().unwrap();
    test_pki(pki.path());
    let file = |name: &str| pki.path().join(name).display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = Nats {
        child: None,
        port: free_port(),
        dir: tmp.path().to_path_buf(),
        args: vec![
            "--tls".into(),
            "--tlscert".into(),
            file("server.pem"),
            "--tlskey".into(),
            file("server-key.pem"),
            "--tlscacert".into(),
            file("ca.pem"),
            "--tlsverify".into(),
        ],
        _tmp: tmp,
    };
    nats.spawn();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let config = |tls: &str| format!("[replication]\nenabled = true\nservers = [\"{url}\"]\n{tls}");
    let full = format!(
        "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        file("ca.pem"),
        file("client.pem"),
        file("client-key.pem")
    );
    let (a, b) = (device("a"), device("b"));
    for h in [&a, &b] {
        std::fs::write(h.path().join("config.toml"), config(&full)).unwrap();
    }
    ingest_ok(&a, &notes("tls", 5));
    let head = a.head();
    assert_eq!(a.run(&["sync"]).status.code(), Some(0));
    let out = b.run(&["sync", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["peers"][0]["appended"], 5, "{report:#}");
    assert_eq!(projections(&a), projections(&b));

    // The server's certificate is not trusted without the CA; the server
    // refuses a client without a certificate.
    let ca_only = format!("tls_ca_file = \"{}\"\n", file("ca.pem"));
    for tls in ["", ca_only.as_str()] {
        std::fs::write(a.path().join("config.toml"), config(tls)).unwrap();
        let out = a.run(&["sync"]);
        assert_eq!(out.status.code(), Some(69), "{tls:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no replication server reachable"),
            "{}",
            stderr(&out)
        );
        assert_eq!(a.head(), head);
    }
    // A file that is not there is named.
    let missing = full.replace("client-key.pem", "gone-key.pem");
    std::fs::write(a.path().join("config.toml"), config(&missing)).unwrap();
    let out = a.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("gone-key.pem"), "{}", stderr(&out));
    assert_eq!(a.head(), head);
}

/// Runs `syncd sync` until it succeeds (a cluster settling, a server
/// failing over), at most `tries` times; returns the last report.
fn sync_until_ok(home: &Home, tries: u32) -> Value {
    let mut last = String::new();
    for _ in 0..tries {
        let out = home.run(&["sync", "--json"]);
        if out.status.code() == Some(0) {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        last = format!("{:?}: {}{}", out.status.code(), stdout(&out), stderr(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("sync did not succeed: {last}");
}

#[test]
fn a_three_node_cluster_with_r3_loses_nothing_when_a_server_dies_mid_burst() {
    let mut cluster = Nats::cluster();
    let servers: Vec<String> = cluster.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let config = format!(
        "[replication]\nenabled = true\nservers = [{}]\nstream_replicas = 3\n",
        servers.join(", ")
    );
    let (a, b) = (device("a"), device("b"));
    // The first pass creates the stream once the cluster has a leader; it
    // is made with one replica here, then the configuration asks for
    // three and the next pass scales it up in place.
    std::fs::write(
        a.path().join("config.toml"),
        config.replace("stream_replicas = 3", "stream_replicas = 1"),
    )
    .unwrap();
    ingest_ok(&a, &notes("warm", 1));
    sync_until_ok(&a, 40);
    for h in [&a, &b] {
        std::fs::write(h.path().join("config.toml"), &config).unwrap();
    }
    sync_until_ok(&a, 40);
    let (rt, js) = jetstream(&cluster[0]);
    let replicas = rt.block_on(async {
        let mut stream = js.get_stream("SYNCD").await.unwrap();
        stream.info().await.unwrap().config.num_replicas
    });
    assert_eq!(replicas, 3);
    drop((rt, js));

    for batch in 0..3 {
        ingest_ok(&a, &notes(&format!("burst{batch}"), 1_000));
    }
    let expected = a.head();
    let mut publishing = a
        .cmd(&["sync", "--publish-only"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    cluster[1].kill();
    let _ = publishing.wait();
    // Whatever that pass managed, the next ones resume from what the
    // stream holds, through the surviving servers.
    let report = sync_until_ok(&a, 20);
    assert_eq!(report["published"]["confirmed_seq"], expected, "{report:#}");

    sync_until_ok(&b, 20);
    let report = sync_until_ok(&b, 20);
    let peer = &report["peers"][0];
    assert_eq!(peer["applied_through"], expected, "{report:#}");
    assert_eq!(peer["lag"], 0, "{report:#}");
    assert_eq!(projections(&a), projections(&b));
    assert_eq!(b.head(), expected);
}

#[test]
fn running_daemons_replicate_continuously_and_catch_up_after_an_outage() {
    let mut nats = Nats::start();
    let (a, b, c) = (device("a"), device("b"), device("c"));
    let config = format!(
        "[replication]\nenabled = true\nservers = [\"{}\"]\ninterval_ms = 100\n",
        nats.url()
    );
    for h in [&a, &b] {
        std::fs::write(h.path().join("config.toml"), &config).unwrap();
    }
    let mut da = a.start_daemon();
    let _db = b.start_daemon();
    // The third replicates for this run only, from the command line.
    let _dc = c.start_daemon_with(&["--nats", &nats.url()], &[]);
    // Concurrent writes on every device, through their daemons.
    ingest_ok(&a, &notes("a", 30));
    ingest_ok(&b, &notes("b", 20));
    ingest_ok(&c, &notes("c", 10));
    for h in [&a, &b, &c] {
        h.wait_status("every device's events", |s| {
            s["events_by_kind"]["note.added"] == 60
        });
    }
    let pa = projections(&a);
    assert_eq!(projections(&b), pa);
    assert_eq!(projections(&c), pa);

    // The server goes away: the daemons work locally and say so.
    nats.kill();
    ingest_ok(&a, &notes("a-offline", 10));
    a.wait_status("offline operation", |s| s["health"] == "offline_local_only");
    assert_eq!(a.status_json()["events_by_kind"]["note.added"], 70);

    // It comes back: everything written offline reaches the others.
    nats.spawn();
    for h in [&a, &b, &c] {
        h.wait_status("catch-up after the outage", |s| {
            s["events_by_kind"]["note.added"] == 70 && s["health"] == "clean"
        });
    }
    assert_eq!(projections(&b), projections(&a));

    // A graceful shutdown stops the replicator as its own step.
    da.signal("TERM");
    assert_eq!(da.wait_exit(20), Some(0), "{}", da.stderr());
    let life = json_of(&a, &["lifecycle", "--json"]);
    let text = life.to_string();
    assert!(text.contains("\"replication\""), "{life:#}");
}
