//! Benchmarks of the event log against bare sled on the same machine, in
//! the same run: durable batched append (group commit), single durable
//! append latency, full rebuild, doctor, and status at two log sizes. Each
//! row prints the baseline, our figure and the ratio.
//!
//! Run: `cargo bench -p sourceos-syncd --bench log`
//! (`SYNCD_BENCH_EVENTS=N` scales the large log; default 1,000,000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use sourceos_syncd::{
    doctor, status, ActorId, AppendOutcome, DoctorOptions, EventDraft, EventKind, IdempotencyKey,
    InitOptions, OpenOptions, Payload, ProfileId, Seq, StorageOptions, Store, Subject,
    MAX_SUBMISSION_EVENTS,
};

const CACHE_BYTES: u64 = 256 * 1024 * 1024;
const BATCH_EVENTS: usize = 1_000;
const BATCHED_TOTAL_EVENTS: usize = 200_000;
const BATCH_ROUNDS: usize = 4;
const LATENCY_SAMPLES: usize = 2_000;
const STATUS_CALLS: usize = 1_000;
const SUBJECTS: usize = 10_000;
const STATUS_SMALL_EVENTS: usize = 1_000;

fn options() -> OpenOptions {
    OpenOptions {
        storage: StorageOptions {
            cache_capacity_bytes: CACHE_BYTES,
        },
        ..OpenOptions::default()
    }
}

fn new_store(dir: &Path) -> Store {
    Store::init(
        dir,
        InitOptions {
            device: None,
            profile: ProfileId::new("profile:bench").unwrap(),
            created_at: None,
        },
        options(),
    )
    .unwrap()
}

/// A realistic event: a subject from 10,000, every other one keyed,
/// a small payload (about 250 bytes stored).
fn draft(i: usize) -> EventDraft {
    let mut d = EventDraft::new(
        ActorId::new(format!("actor:agent-{}", i % 7)).unwrap(),
        EventKind::new("note.added").unwrap(),
    );
    d.subject = Some(Subject::new(format!("object:{}", i % SUBJECTS)).unwrap());
    if i % 2 == 0 {
        d.idempotency_key = Some(IdempotencyKey::new(format!("bench-{i}")).unwrap());
    }
    d.payload = Payload::new(serde_json::json!({ "n": i, "text": "x".repeat(60) })).unwrap();
    d
}

fn fill(store: &Store, from: usize, n: usize, chunk: usize) {
    let mut i = from;
    while i < from + n {
        let k = chunk.min(from + n - i);
        let out = store.append_many((i..i + k).map(draft).collect()).unwrap();
        assert!(out
            .iter()
            .all(|o| matches!(o, AppendOutcome::Appended { .. })));
        i += k;
    }
}

fn raw_sled(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .open()
        .unwrap()
}

fn durable(db: &sled::Db, dir: &Path) {
    db.flush().unwrap();
    File::open(dir.join("db")).unwrap().sync_all().unwrap();
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn row(&mut self, what: &str, baseline: String, ours: String, ratio: f64, target: &str) {
        self.rows.push([
            what.into(),
            baseline,
            ours,
            format!("{ratio:.2}"),
            target.into(),
        ]);
    }

    fn print(&self) {
        let head = [
            "measure",
            "bare sled (baseline)",
            "sourceos-syncd",
            "ratio",
            "target",
        ];
        let widths: Vec<usize> = (0..5)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].len())
                    .chain([head[c].len()])
                    .max()
                    .unwrap()
            })
            .collect();
        let line = |cells: [&str; 5]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(head);
        let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", dashes.join("-|-"));
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
        }
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let big: usize = std::env::var("SYNCD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("# sourceos-syncd benchmark (cargo bench -p sourceos-syncd --bench log)");
    println!(
        "# machine: {} cores; large log: {big} events; batches of {BATCH_EVENTS}; sled cache {} MiB",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        CACHE_BYTES >> 20
    );
    let mut table = Table { rows: Vec::new() };

    // ---- 1. durable batched append ----
    // Ours and the baseline run in alternating rounds so that drift in the
    // disk's state (background writeback, earlier phases) hits both alike.
    let ours_dir = tempfile::tempdir().unwrap();
    let store = new_store(ours_dir.path());
    let bare_dir = tempfile::tempdir().unwrap();
    let bare = raw_sled(bare_dir.path());
    let events = bare.open_tree("events").unwrap();
    let per_round = BATCHED_TOTAL_EVENTS / BATCH_ROUNDS;
    let mut ours_batched = Duration::ZERO;
    let mut bare_batched = Duration::ZERO;
    let mut stored: Vec<Vec<u8>> = Vec::with_capacity(BATCHED_TOTAL_EVENTS);
    for round in 0..BATCH_ROUNDS {
        let first = round * per_round;
        // Drafts are made before the clock starts: the baseline gets its
        // bytes ready-made too.
        let batches: Vec<Vec<EventDraft>> = (first..first + per_round)
            .collect::<Vec<_>>()
            .chunks(BATCH_EVENTS)
            .map(|c| c.iter().map(|i| draft(*i)).collect())
            .collect();
        let t = Instant::now();
        for batch in batches {
            let out = store.append_many(batch).unwrap();
            assert!(out
                .iter()
                .all(|o| matches!(o, AppendOutcome::Appended { .. })));
        }
        ours_batched += t.elapsed();
        // The same bytes, as stored, for the baseline.
        let round_bytes: Vec<Vec<u8>> = store
            .range(Seq::new(first as u64 + 1).unwrap(), per_round)
            .unwrap()
            .iter()
            .map(|e| e.stored_bytes().unwrap())
            .collect();
        assert_eq!(round_bytes.len(), per_round);
        let t = Instant::now();
        for (b, chunk) in round_bytes.chunks(BATCH_EVENTS).enumerate() {
            let mut batch = sled::Batch::default();
            for (i, v) in chunk.iter().enumerate() {
                let seq = (first + b * BATCH_EVENTS + i + 1) as u64;
                batch.insert(&seq.to_be_bytes(), v.as_slice());
            }
            events.apply_batch(batch).unwrap();
            durable(&bare, bare_dir.path());
        }
        bare_batched += t.elapsed();
        stored.extend(round_bytes);
    }
    let mean_len = stored.iter().map(Vec::len).sum::<usize>() / stored.len();
    let ours_rate = per_sec(stored.len(), ours_batched);
    let bare_rate = per_sec(stored.len(), bare_batched);
    table.row(
        &format!("durable batched append, events/s ({mean_len} B/event)"),
        format!("{bare_rate:.0}"),
        format!("{ours_rate:.0}"),
        ours_rate / bare_rate,
        ">= 0.80",
    );

    // ---- 2. single durable append latency ----
    // One sample of ours, then one of the baseline, and so on.
    let singles: Vec<EventDraft> = (0..LATENCY_SAMPLES)
        .map(|i| draft(BATCHED_TOTAL_EVENTS + i))
        .collect();
    let mut ours_lat = Vec::with_capacity(LATENCY_SAMPLES);
    let mut bare_lat = Vec::with_capacity(LATENCY_SAMPLES);
    for (i, d) in singles.into_iter().enumerate() {
        let t = Instant::now();
        let out = store.append(d).unwrap();
        ours_lat.push(t.elapsed());
        assert!(matches!(out, AppendOutcome::Appended { .. }));
        let v = &stored[i % stored.len()];
        let seq = (BATCHED_TOTAL_EVENTS + i + 1) as u64;
        let t = Instant::now();
        events.insert(seq.to_be_bytes(), v.as_slice()).unwrap();
        durable(&bare, bare_dir.path());
        bare_lat.push(t.elapsed());
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let o = percentile(&mut ours_lat, p);
        let b = percentile(&mut bare_lat, p);
        table.row(
            &format!("single durable append latency {name}, us ({LATENCY_SAMPLES} samples)"),
            format!("{:.0}", b.as_secs_f64() * 1e6),
            format!("{:.0}", o.as_secs_f64() * 1e6),
            o.as_secs_f64() / b.as_secs_f64(),
            "(report)",
        );
    }
    store.close().unwrap();
    drop(events);
    drop(bare);

    // ---- 3-5. rebuild, doctor, status on a large log ----
    let big_dir = tempfile::tempdir().unwrap();
    let store = new_store(big_dir.path());
    // Filled in tenths, printing each tenth's rate: how append throughput
    // changes as the log (and its indexes) grow.
    let t = Instant::now();
    let mut rates = Vec::new();
    for tenth in 0..10 {
        let (from, to) = (big * tenth / 10, big * (tenth + 1) / 10);
        let t = Instant::now();
        fill(&store, from, to - from, MAX_SUBMISSION_EVENTS);
        rates.push(format!("{:.0}", per_sec(to - from, t.elapsed())));
    }
    eprintln!(
        "filled {big} events in {:.1} s; events/s per tenth (batches of {}): {}",
        t.elapsed().as_secs_f64(),
        MAX_SUBMISSION_EVENTS,
        rates.join(" ")
    );
    store.close().unwrap();
    // Baseline: a bare full scan of the same events tree. Both the scan and
    // the rebuild start from a freshly opened database (empty sled cache,
    // warm OS page cache), so neither is favoured.
    let raw = raw_sled(&big_dir.path().join("db"));
    let tree = raw.open_tree("events").unwrap();
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut scanned = 0usize;
    for kv in tree.iter() {
        bytes += kv.unwrap().1.len();
        scanned += 1;
    }
    let scan = t.elapsed();
    assert_eq!(scanned, big);
    std::hint::black_box(bytes);
    drop(tree);
    drop(raw);
    let store = Store::open(big_dir.path(), options()).unwrap();
    let status_big = median_status(&store);
    let t = Instant::now();
    store.rebuild(&[], &mut |_, _| {}).unwrap();
    let rebuild = t.elapsed();
    let t = Instant::now();
    let report = doctor(&store, DoctorOptions { repair: false }, &mut |_, _| {}).unwrap();
    let doctor_time = t.elapsed();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    store.close().unwrap();
    table.row(
        &format!("full rebuild of all projections, events/s ({big} events)"),
        format!("{:.0} (bare scan)", per_sec(big, scan)),
        format!("{:.0}", per_sec(big, rebuild)),
        per_sec(big, rebuild) / per_sec(big, scan),
        ">= 300000 events/s",
    );
    table.row(
        &format!("doctor over {big} events, s (baseline: our rebuild)"),
        format!("{:.2}", rebuild.as_secs_f64()),
        format!("{:.2}", doctor_time.as_secs_f64()),
        doctor_time.as_secs_f64() / rebuild.as_secs_f64(),
        "<= 2.0",
    );

    let small_dir = tempfile::tempdir().unwrap();
    let small = new_store(small_dir.path());
    fill(&small, 0, STATUS_SMALL_EVENTS, BATCH_EVENTS);
    // Measured like the large store: closed after filling, then reopened.
    small.close().unwrap();
    let small = Store::open(small_dir.path(), options()).unwrap();
    let status_small = median_status(&small);
    small.close().unwrap();
    table.row(
        &format!("status median of {STATUS_CALLS} calls, us"),
        format!("{:.1} (1,000 events)", status_small.as_secs_f64() * 1e6),
        format!("{:.1} ({big} events)", status_big.as_secs_f64() * 1e6),
        status_big.as_secs_f64() / status_small.as_secs_f64(),
        "<= 1.5",
    );
    table.print();
}

fn median_status(store: &Store) -> Duration {
    let mut samples: Vec<Duration> = (0..STATUS_CALLS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(status(store).unwrap());
            t.elapsed()
        })
        .collect();
    percentile(&mut samples, 0.5)
}
