//! Replication catch-up through one local `nats-server`, against bare
//! JetStream measured in the same run on the same kind of server (each
//! comparison starts on a fresh one): publishing the same bytes (same
//! subject shape, same number in flight) and consuming them through a
//! durable pull consumer with acknowledgements. Ours publishes a long
//! pass without replies and confirms it by groups, so bare publishing
//! done that way is measured too, as a reference. Ours is one
//! device publishing its whole log and another receiving all of it, each
//! event verified and made durable in the receiver's log.
//!
//! One more baseline bounds what any receiver can reach on this machine:
//! the bare pipeline, bare publishing while a bare consumer writes each
//! fetched batch's bytes into a bare sled database and makes it durable
//! (flush + fsync) before acknowledging it; nothing is verified or folded.
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
use sourceos_syncd_adapters::replication::{
    ReplicationConfig, Replicator, CONFIRM_GROUP_EVENTS, FETCH_BATCH, MAX_IN_FLIGHT,
};

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

/// CPU time used so far by a process (user + system), from `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may
    // hold spaces); utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // Clock ticks are 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

/// Wall time and CPU time (this process and the server) of a phase.
struct Phase {
    wall: Duration,
    cpu_us_per_event: f64,
}

fn measure<T>(n: usize, server: &Server, f: impl FnOnce() -> T) -> (Phase, T) {
    let me = std::process::id();
    let cpu0 = cpu_time(me) + cpu_time(server.child.id());
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed();
    let cpu = (cpu_time(me) + cpu_time(server.child.id())).saturating_sub(cpu0);
    let phase = Phase {
        wall,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
    };
    (phase, out)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config_for(server: &Server) -> ReplicationConfig {
    let mut config = ReplicationConfig::default();
    config
        .set_servers(vec![format!("nats://127.0.0.1:{}", server.port)])
        .unwrap();
    config.enabled = true;
    config
}

/// Publishes the whole log of `a`; returns when the stream holds it.
fn publish_all(a: &Store, config: &ReplicationConfig, n: usize) {
    runtime().block_on(async {
        let r = Replicator::connect(a.clone(), config).await.unwrap();
        let p = r.publish(None).await.unwrap();
        assert_eq!(p.confirmed_seq as usize, n);
    });
}

/// How long receiving may go without appending anything before the bench
/// gives up and shows the last passes, rather than spinning unseen.
const STALLED_AFTER_S: u64 = 60;

/// Receives until `b` has appended `n` events.
fn receive_all(b: &Store, config: &ReplicationConfig, n: usize) {
    runtime().block_on(async {
        let r = Replicator::connect(b.clone(), config).await.unwrap();
        let mut applied = 0u64;
        let mut progressed = Instant::now();
        while (applied as usize) < n {
            let reports = r.receive().await.unwrap();
            let before = applied;
            for p in &reports {
                assert!(p.refused.is_empty(), "{:?}", p.refused);
                applied += p.appended;
            }
            if applied > before {
                progressed = Instant::now();
            }
            assert!(
                progressed.elapsed() < Duration::from_secs(STALLED_AFTER_S),
                "no event appended for {STALLED_AFTER_S} s at {applied} of {n}; last passes: {reports:?}"
            );
        }
        assert_eq!(applied as usize, n, "every event must arrive");
    });
}

/// A file-backed stream `name` over `subjects`.
fn file_stream(
    rt: &tokio::runtime::Runtime,
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> stream::Stream {
    rt.block_on(js.get_or_create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    }))
    .unwrap()
}

/// A durable pull consumer `name` of `s` acknowledging everything up to
/// the message acknowledged; `max_ack_pending` 0 leaves the server's
/// default.
fn durable(
    rt: &tokio::runtime::Runtime,
    s: &stream::Stream,
    name: &str,
    max_ack_pending: i64,
) -> consumer::Consumer<consumer::pull::Config> {
    rt.block_on(s.get_or_create_consumer(
        name,
        consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// Publishes `payloads` on `subject` with acknowledgements, at most
/// `MAX_IN_FLIGHT` awaiting theirs, each with a message id.
async fn bare_publish(js: &jetstream::Context, subject: &str, payloads: &[Vec<u8>]) {
    let mut in_flight = std::collections::VecDeque::new();
    for (i, p) in payloads.iter().enumerate() {
        if in_flight.len() >= MAX_IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture = in_flight.pop_front().unwrap();
            ack.await.unwrap();
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("{subject}-{i}").as_str());
        in_flight.push_back(
            js.publish_with_headers(subject.to_owned(), h, p.clone().into())
                .await
                .unwrap(),
        );
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await.unwrap();
    }
}

/// The bare pipeline: `payloads` published on one connection (on its own
/// thread) while a durable pull consumer on another fetches them in
/// batches as large as ours, writes each batch's bytes into a bare sled
/// database under their stream sequence, makes it durable (flush, then
/// fsync of the database file) and only then acknowledges the batch. Timed
/// until the last event is durable.
fn bare_pipeline(server: &Server, payloads: &[Vec<u8>], dir: &Path) -> Phase {
    let n = payloads.len();
    let url = format!("nats://127.0.0.1:{}", server.port);
    let rt = runtime();
    let _entered = rt.enter();
    let js = jetstream::new(rt.block_on(async_nats::connect(&url)).unwrap());
    let s = file_stream(&rt, &js, "PIPE", "pipe.>");
    let c = durable(&rt, &s, "pipe", 4 * FETCH_BATCH as i64);
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .unwrap();
    let payloads = payloads.to_vec();
    let (phase, ()) = measure(n, server, || {
        let publisher = std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                let js = jetstream::new(async_nats::connect(&url).await.unwrap());
                bare_publish(&js, "pipe.dev", &payloads).await;
            });
        });
        rt.block_on(async {
            // Like ours, one batch is made durable on a blocking thread
            // while the next one is fetched.
            let mut durable: Option<tokio::task::JoinHandle<()>> = None;
            let mut to_ack: Option<jetstream::Message> = None;
            let mut got = 0;
            while got < n {
                let mut batch = c
                    .fetch()
                    .max_messages(FETCH_BATCH)
                    .messages()
                    .await
                    .unwrap();
                let mut writes = sled::Batch::default();
                let mut last = None;
                while let Some(m) = batch.next().await {
                    let m = m.unwrap();
                    let seq = m.info().unwrap().stream_sequence;
                    writes.insert(&seq.to_be_bytes(), m.payload.as_ref());
                    got += 1;
                    last = Some(m);
                }
                if let Some(m) = last {
                    if let Some(d) = durable.take() {
                        d.await.unwrap();
                        to_ack.take().unwrap().ack().await.unwrap();
                    }
                    let (db, file) = (db.clone(), dir.join("db"));
                    durable = Some(tokio::task::spawn_blocking(move || {
                        db.apply_batch(writes).unwrap();
                        db.flush().unwrap();
                        std::fs::File::open(file).unwrap().sync_all().unwrap();
                    }));
                    to_ack = Some(m);
                }
            }
            if let Some(d) = durable.take() {
                d.await.unwrap();
                to_ack.take().unwrap().double_ack().await.unwrap();
            }
        });
        publisher.join().unwrap();
    });
    phase
}

/// A client of `server`.
fn connect(rt: &tokio::runtime::Runtime, server: &Server) -> async_nats::Client {
    rt.block_on(async_nats::connect(format!(
        "nats://127.0.0.1:{}",
        server.port
    )))
    .unwrap()
}

/// Bare publishing without replies, as ours publishes a long pass: the
/// same bytes, each with a message id, then the last one again awaiting
/// its answer (after which the server has handled every earlier one) and
/// one stream request for the count, which must be all of them.
fn bare_unanswered(server: &Server, payloads: &[Vec<u8>]) -> Phase {
    let n = payloads.len();
    let rt = runtime();
    let _entered = rt.enter();
    let client = connect(&rt, server);
    let js = jetstream::new(client.clone());
    let s = file_stream(&rt, &js, "QUIET", "quiet.>");
    let subject = async_nats::Subject::from("quiet.dev");
    let headers = |i: usize| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("quiet.dev-{i}").as_str());
        h
    };
    let (phase, ()) = measure(n, server, || {
        rt.block_on(async {
            for (i, p) in payloads.iter().enumerate() {
                client
                    .publish_with_headers(subject.clone(), headers(i), p.clone().into())
                    .await
                    .unwrap();
            }
            let last = n - 1;
            js.publish_with_headers(
                subject.clone(),
                headers(last),
                payloads[last].clone().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
            let mut subjects = s.info_with_subjects("quiet.dev").await.unwrap();
            let (_, count) = subjects.next().await.unwrap().unwrap();
            assert_eq!(count, n, "every publication must be stored");
        })
    });
    phase
}

/// Bare JetStream on the same server: publish the same bytes with
/// acknowledgements (same number in flight), then consume them.
fn bare(server: &Server, payloads: &[Vec<u8>]) -> (Phase, Phase) {
    let n = payloads.len();
    let rt = runtime();
    let _entered = rt.enter();
    let client = connect(&rt, server);
    let js = jetstream::new(client);
    let s = file_stream(&rt, &js, "BARE", "bare.>");
    let (publish, ()) = measure(n, server, || {
        rt.block_on(bare_publish(&js, "bare.dev", payloads))
    });
    // The server's default limit of unacknowledged messages: batches of
    // 256 stay well under it.
    let c = durable(&rt, &s, "bare", 0);
    let (consume, ()) = measure(n, server, || {
        rt.block_on(async {
            let mut got = 0;
            while got < n {
                let mut batch = c.fetch().max_messages(256).messages().await.unwrap();
                let mut last = None;
                while let Some(m) = batch.next().await {
                    got += 1;
                    last = Some(m.unwrap());
                }
                if let Some(m) = last {
                    m.double_ack().await.unwrap();
                }
            }
        })
    });
    (publish, consume)
}

fn main() {
    let n: usize = std::env::var("SYNCD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = new_store(dirs[0].path(), "device:a");
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

    // Every comparison starts on a fresh server: one that already holds
    // other streams spends more of its CPU on its own memory.
    let server = start_server();
    let (bare_pub, bare_sub) = bare(&server, &payloads);
    drop(server);
    let server = start_server();
    let pipeline = bare_pipeline(&server, &payloads, dirs[3].path());
    drop(server);
    let server = start_server();
    let unanswered = bare_unanswered(&server, &payloads);
    drop(server);
    drop(payloads);

    // Catch-up end to end: A publishes its whole log while B, on its own
    // thread as a second daemon would, receives and verifies all of it.
    // The time is from the start until B holds every event durably.
    let server = start_server();
    let config = config_for(&server);
    let b = new_store(dirs[1].path(), "device:b");
    let (e2e, ()) = measure(n, &server, || {
        let publisher = {
            let (a, config) = (a.clone(), config.clone());
            std::thread::spawn(move || publish_all(&a, &config, n))
        };
        receive_all(&b, &config, n);
        publisher.join().unwrap();
    });
    b.close().unwrap();
    drop(server);

    // Each side alone, on another server: where the time goes.
    let server = start_server();
    let config = config_for(&server);
    let (ours_pub, ()) = measure(n, &server, || publish_all(&a, &config, n));
    let c = new_store(dirs[2].path(), "device:c");
    let (ours_sub, ()) = measure(n, &server, || receive_all(&c, &config, n));
    a.close().unwrap();
    c.close().unwrap();

    let bare_pub_rate = rate(n, bare_pub.wall);
    let row = |what: &str, base: &Phase, ours: &Phase| {
        let (b, o) = (rate(n, base.wall), rate(n, ours.wall));
        println!(
            "| {what} | {b:.0} | {o:.0} | {:.2} | {:.1} | {:.1} | (report) |",
            o / b,
            base.cpu_us_per_event,
            ours.cpu_us_per_event
        );
    };
    println!("# replication catch-up (cargo bench -p sourceos-syncd-adapters --bench replication)");
    println!(
        "# {n} events, {} B/event on average, one local nats-server; bare publishing: {MAX_IN_FLIGHT} publications in flight; ours: groups of {CONFIRM_GROUP_EVENTS} without replies, each confirmed",
        bytes / n.max(1)
    );
    println!("# CPU: this process and the server, user + system, per event");
    println!("| measure, events/s | bare JetStream (baseline) | sourceos-syncd | ratio | bare CPU us/event | our CPU us/event | target |");
    println!("|---|---|---|---|---|---|---|");
    row("publish alone", &bare_pub, &ours_pub);
    row(
        "publish alone vs bare publishing without replies, confirmed by one answer and the stream's count (how ours publishes a long pass; reference)",
        &unanswered,
        &ours_pub,
    );
    row(
        "consume alone (ours: verify and append durably)",
        &bare_sub,
        &ours_sub,
    );
    let e2e_rate = rate(n, e2e.wall);
    let pipe_rate = rate(n, pipeline.wall);
    println!(
        "| bare pipeline (bare publish while a bare consumer makes each batch durable in bare sled) vs bare publish: the ceiling here | {bare_pub_rate:.0} | {pipe_rate:.0} (bare) | {:.2} | {:.1} | {:.1} | (report) |",
        pipe_rate / bare_pub_rate,
        bare_pub.cpu_us_per_event,
        pipeline.cpu_us_per_event
    );
    println!(
        "| catch-up end to end vs the bare pipeline | {pipe_rate:.0} | {e2e_rate:.0} | {:.2} | {:.1} | {:.1} | (report) |",
        e2e_rate / pipe_rate,
        pipeline.cpu_us_per_event,
        e2e.cpu_us_per_event
    );
    println!(
        "| **catch-up end to end** (ours: publish and receive concurrently until all durable at the receiver) vs bare publish | {bare_pub_rate:.0} | {e2e_rate:.0} | {:.2} | {:.1} | {:.1} | >= 0.40 |",
        e2e_rate / bare_pub_rate,
        bare_pub.cpu_us_per_event,
        e2e.cpu_us_per_event
    );
    row(
        "catch-up end to end vs bare publishing without replies (reference)",
        &unanswered,
        &e2e,
    );
}
