//! Benchmark: `status` through a running daemon on a large log.
//!
//! Builds a store of `SYNCD_BENCH_EVENTS` events (default 1,000,000) with
//! the release `syncd` binary, starts `syncd daemon` on it, then measures
//! (1) `GET /v1/status` over the Unix socket, as a status pane would ask,
//! and (2) the whole `syncd status --json` command going through the
//! daemon (process start included), which is the baseline of (3) the
//! whole `syncd status --line` command, which reads the daemon's status
//! snapshot (target: p50 under 30 ms); the ratio of (3) to (2) is
//! printed. Run with
//! `cargo bench -p syncd-cli --bench daemon_status`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_EVENTS: u64 = 1_000_000;
const API_ROUNDS: usize = 500;
const CLI_ROUNDS: usize = 30;
const LINE_ROUNDS: usize = 100;
/// The statusline's target, whole process, with the daemon running.
const LINE_TARGET_MS: f64 = 30.0;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(socket: &Path, target: &str) -> Vec<u8> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut v: Vec<Duration>) -> f64 {
    v.sort();
    println!(
        "{what:<44} n={:<4} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    );
    percentile(&v, 0.5).as_secs_f64() * 1e3
}

fn main() {
    let events: u64 = std::env::var("SYNCD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let home = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["init", "--device", "device:bench"]);
    let input = home.path().join("events.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..events {
            writeln!(
                f,
                r#"{{"kind":"note.added","actor":"actor:agent-{}","subject":"object:{}","payload":{{"n":{i}}}}}"#,
                i % 7,
                i % 1009
            )
            .unwrap();
        }
    }
    let t = Instant::now();
    run(&["ingest", "--file", input.to_str().unwrap()]);
    println!(
        "ingested {events} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&input).unwrap();

    let child = Command::new(bin())
        .arg("--home")
        .arg(home.path())
        .arg("daemon")
        .env("SYNCD_RUNTIME_DIR", runtime.path())
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let socket = loop {
        let named = std::fs::read_to_string(home.path().join("daemon.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["socket"].as_str().map(PathBuf::from));
        if let Some(s) = named {
            if std::os::unix::net::UnixStream::connect(&s).is_ok() {
                let body = get(&s, "/v1/status");
                if String::from_utf8_lossy(&body).contains("\"RUNNING\"") {
                    break s;
                }
            }
        }
        assert!(Instant::now() < deadline, "daemon did not reach RUNNING");
        std::thread::sleep(Duration::from_millis(50));
    };
    let body = get(&socket, "/v1/status");
    assert!(String::from_utf8_lossy(&body).contains(&format!("\"head_seq\":{}", events + 8)));

    let mut api = Vec::with_capacity(API_ROUNDS);
    for _ in 0..API_ROUNDS {
        let t = Instant::now();
        let b = get(&socket, "/v1/status");
        api.push(t.elapsed());
        assert!(b.starts_with(b"HTTP/1.1 200"));
    }
    report("GET /v1/status over the socket", api);

    let mut cli = Vec::with_capacity(CLI_ROUNDS);
    for _ in 0..CLI_ROUNDS {
        let t = Instant::now();
        run(&["status", "--json"]);
        cli.push(t.elapsed());
    }
    let baseline = report("syncd status --json through the daemon", cli);

    // The snapshot is written once the daemon is running; wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&run(&["status", "--line"]).stdout)
        .contains(&format!("head {}", events + 8))
    {
        assert!(Instant::now() < deadline, "no status snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut line = Vec::with_capacity(LINE_ROUNDS);
    for _ in 0..LINE_ROUNDS {
        let t = Instant::now();
        run(&["status", "--line"]);
        line.push(t.elapsed());
    }
    let p50 = report("syncd status --line (daemon snapshot)", line);
    println!(
        "status --line / status --json p50 ratio {:.3}; target p50 < {LINE_TARGET_MS} ms: {}",
        p50 / baseline,
        if p50 < LINE_TARGET_MS {
            "met"
        } else {
            "NOT met"
        }
    );
}
