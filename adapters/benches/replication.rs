//! Replication catch-up through one local `nats-server`, against bare
//! JetStream measured in the same run on the same server: publishing the
//! same bytes (same subject shape, same number in flight) and consuming
//! them through a durable pull consumer with acknowledgements. Ours is one
//! device publishing its whole log and another receiving all of it, each
//! event verified and made durable in the receiver's log.
//!
//! Run: `cargo bench -p sourceos-syncd-adapters --bench replication`
//! (`SYNCD_BENCH_EVENTS=N`, default 100,000; needs `nats-server` on PATH
//! or at /usr/sbin/nats-server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use sourceos_syncd::{
    ActorId, DeviceId, EventDraft, EventKind, IdempotencyKey, InitOptions, OpenOptions, Payload,
    ProfileId, Seq, Store,
};
use sourceos_syncd_adapters::replication::{ReplicationConfig, Replicator, MAX_IN_FLIGHT};

const BATCH_EVENTS: usize = 1_000;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from("nats-server")
    } else {
        PathBuf::from("/usr/sbin/nats-server")
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("server.log");
    let child = Command::new(nats_server())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path().join("store"))
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Server is ready")
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        port,
        _dir: dir,
    }
}

fn new_store(dir: &Path, device: &str) -> Store {
    Store::init(
        dir,
        InitOptions {
            device: Some(DeviceId::new(device).unwrap()),
            profile: ProfileId::new("profile:bench").unwrap(),
            created_at: None,
        },
        OpenOptions::default(),
    )
    .unwrap()
}

fn draft(i: usize) -> EventDraft {
    let mut d = EventDraft::new(
        ActorId::new(format!("actor:agent-{}", i % 7)).unwrap(),
        EventKind::new("note.added").unwrap(),
    );
    if i % 2 == 0 {
        d.idempotency_key = Some(IdempotencyKey::new(format!("bench-{i}")).unwrap());
    }
    d.payload = Payload::new(serde_json::json!({"n": i, "text": "x".repeat(60)})).unwrap();
    d
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("SYNCD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server = start_server();
    let url = format!("nats://127.0.0.1:{}", server.port);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = new_store(dirs.0.path(), "device:a");
    let b = new_store(dirs.1.path(), "device:b");
    let mut i = 0;
    while i < n {
        let k = BATCH_EVENTS.min(n - i);
        a.append_many((i..i + k).map(draft).collect()).unwrap();
        i += k;
    }
    // The exact bytes our publisher sends, for the baseline.
    let mut payloads = Vec::with_capacity(n);
    let mut next = 1u64;
    while payloads.len() < n {
        for env in a.range(Seq::new(next).unwrap(), 4096).unwrap() {
            payloads.push(env.stored_bytes().unwrap());
            next = env.seq().get() + 1;
        }
    }
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Bare JetStream: publish with acknowledgements, then consume.
    let (bare_pub, bare_sub) = rt.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = jetstream::new(client);
        let s = js
            .get_or_create_stream(stream::Config {
                name: "BARE".into(),
                subjects: vec!["bare.>".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for (i, p) in payloads.iter().enumerate() {
            if in_flight.len() >= MAX_IN_FLIGHT {
                let ack: jetstream::context::PublishAckFuture = in_flight.pop_front().unwrap();
                ack.await.unwrap();
            }
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("bare-{i}").as_str());
            in_flight.push_back(
                js.publish_with_headers("bare.dev", h, p.clone().into())
                    .await
                    .unwrap(),
            );
        }
        while let Some(ack) = in_flight.pop_front() {
            ack.await.unwrap();
        }
        let publish = started.elapsed();
        let c: consumer::Consumer<consumer::pull::Config> = s
            .get_or_create_consumer(
                "bare",
                consumer::pull::Config {
                    durable_name: Some("bare".into()),
                    ack_policy: consumer::AckPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut got = 0;
        while got < n {
            let mut batch = c
                .fetch()
                .max_messages(256)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .unwrap();
            let mut last = None;
            while let Some(m) = batch.next().await {
                got += 1;
                last = Some(m.unwrap());
            }
            if let Some(m) = last {
                m.double_ack().await.unwrap();
            }
        }
        (publish, started.elapsed())
    });

    // Ours: A publishes its whole log while B, on its own thread as a
    // second daemon would, receives and verifies all of it. The time is
    // from the start until B holds every event durably.
    let mut config = ReplicationConfig::default();
    config.set_servers(vec![url.clone()]).unwrap();
    config.enabled = true;
    let started = Instant::now();
    let publisher = {
        let (a, config) = (a.clone(), config.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let ra = Replicator::connect(a, &config).await.unwrap();
                let p = ra.publish(None).await.unwrap();
                assert_eq!(p.confirmed_seq as usize, n);
            });
            started.elapsed()
        })
    };
    let applied = rt.block_on(async {
        let rb = Replicator::connect(b.clone(), &config).await.unwrap();
        let mut applied = 0u64;
        while (applied as usize) < n {
            for r in rb.receive().await.unwrap() {
                applied += r.appended;
            }
        }
        applied
    });
    let ours_end_to_end_time = started.elapsed();
    assert_eq!(applied as usize, n, "every event must arrive");
    let ours_pub = publisher.join().unwrap();
    a.close().unwrap();
    b.close().unwrap();

    let bare_pub_rate = rate(n, bare_pub);
    let bare_sub_rate = rate(n, bare_sub);
    let bare_end_to_end = rate(n, bare_pub + bare_sub);
    let ours_pub_rate = rate(n, ours_pub);
    let ours_end_to_end = rate(n, ours_end_to_end_time);
    println!("# replication catch-up (cargo bench -p sourceos-syncd-adapters --bench replication)");
    println!(
        "# {n} events, {} B/event on average, one local nats-server, {MAX_IN_FLIGHT} publications in flight",
        bytes / n.max(1)
    );
    println!("| measure | bare JetStream (baseline) | sourceos-syncd | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish, events/s | {bare_pub_rate:.0} | {ours_pub_rate:.0} | {:.2} | (report) |",
        ours_pub_rate / bare_pub_rate
    );
    println!(
        "| catch-up end to end (ours: publish and receive concurrently, until all durable at B), events/s | {bare_end_to_end:.0} (publish then consume) | {ours_end_to_end:.0} | {:.2} | (report) |",
        ours_end_to_end / bare_end_to_end
    );
    println!("| bare consume, events/s | {bare_sub_rate:.0} | | | (report) |");
    println!(
        "| end to end vs bare publish rate | {bare_pub_rate:.0} | {ours_end_to_end:.0} | {:.2} | >= 0.40 |",
        ours_end_to_end / bare_pub_rate
    );
}
