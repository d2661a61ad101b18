//! Control-lane latency of a real daemon, with and without a telemetry
//! flood: `cargo bench -p syncd-cli --bench lanes`. Harness-free: it
//! starts `syncd daemon` on a temporary home, submits control events one
//! at a time over the Unix socket and prints p50/p99 of each submission's
//! round trip (durable acknowledgement included), first with no other
//! load (the baseline), then while flood threads submit telemetry as fast
//! as the daemon answers, with the ratio of the two.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTROL_SAMPLES: usize = 400;
/// Flood sizes: 4 submitters do not fill the telemetry lane (nothing is
/// shed), 24 keep it full (most is shed).
const FLOOD_THREADS: [usize; 2] = [4, 24];
const FLOOD_LINES: usize = 1_024;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

fn post(sock: &Path, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&all[9..12]).parse().unwrap();
    (status, all[split + 4..].to_vec())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(home: &Path, runtime: &Path) -> (Daemon, PathBuf) {
    let st = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args([
            "init",
            "--device",
            "device:bench",
            "--profile",
            "profile:bench",
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    let child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .arg("daemon")
        .env("SYNCD_RUNTIME_DIR", runtime)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sock = std::fs::read_to_string(home.join("daemon.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["socket"].as_str().map(PathBuf::from));
        if let Some(sock) = sock {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return (d, sock);
            }
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn control_latencies_us(sock: &Path, tag: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(CONTROL_SAMPLES);
    for i in 0..CONTROL_SAMPLES {
        let line = format!(
            "{{\"kind\":\"session.opened\",\"actor\":\"actor:bench\",\"session\":\"urn:srcos:session:{tag}-{i}\"}}\n"
        );
        let t = Instant::now();
        let (code, body) = post(sock, "/v1/events", line.as_bytes());
        out.push(u64::try_from(t.elapsed().as_micros()).unwrap());
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("\"appended\""));
    }
    out.sort_unstable();
    out
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Control latencies while `threads` threads flood telemetry; with the
/// events offered, shed and the flood's length.
fn flood_run(sock: &Path, threads: usize) -> (Vec<u64>, u64, u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let mut body = String::new();
    for i in 0..FLOOD_LINES {
        body.push_str(&format!(
            "{{\"kind\":\"telemetry.cpu\",\"actor\":\"actor:probe\",\"payload\":{{\"i\":{i}}}}}\n"
        ));
    }
    let body = Arc::new(body.into_bytes());
    let flood: Vec<_> = (0..threads)
        .map(|_| {
            let (sock, stop, sent, shed, body) = (
                sock.to_path_buf(),
                stop.clone(),
                sent.clone(),
                shed.clone(),
                body.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let (_, answer) = post(&sock, "/v1/events", &body);
                    let text = String::from_utf8_lossy(&answer);
                    sent.fetch_add(FLOOD_LINES as u64, Ordering::SeqCst);
                    shed.fetch_add(text.matches("\"shed\"").count() as u64, Ordering::SeqCst);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let loaded = control_latencies_us(sock, &format!("flood{threads}"));
    let flood_s = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        f.join().unwrap();
    }

    (
        loaded,
        sent.load(Ordering::SeqCst),
        shed.load(Ordering::SeqCst),
        flood_s,
    )
}

fn main() {
    let home = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let (_daemon, sock) = start(home.path(), runtime.path());

    // Warm up, then the baseline with no other load.
    let _ = control_latencies_us(&sock, "warm");
    let base = control_latencies_us(&sock, "base");

    let mut floods = Vec::new();
    for threads in FLOOD_THREADS {
        floods.push((threads, flood_run(&sock, threads)));
    }
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "control-lane latency, {CONTROL_SAMPLES} single-event submissions each (round trip to a durable acknowledgement)"
    );
    let mut head = "| measure | no flood (baseline) |".to_owned();
    let mut rule = "|---|---:|".to_owned();
    for (t, _) in &floods {
        head.push_str(&format!(" flood, {t} submitters | ratio |"));
        rule.push_str("---:|---:|");
    }
    println!("{head}\n{rule}");
    for (name, p) in [("p50", 0.50), ("p99", 0.99), ("max", 1.0)] {
        let b = pct(&base, p);
        let mut row = format!("| {name} | {:.2} ms |", b as f64 / 1000.0);
        for (_, (loaded, ..)) in &floods {
            let l = pct(loaded, p);
            row.push_str(&format!(
                " {:.2} ms | {:.2}x |",
                l as f64 / 1000.0,
                ratio(l, b)
            ));
        }
        println!("{row}");
    }
    for (t, (_, sent, shed, secs)) in &floods {
        println!(
            "flood of {t} submitters x {FLOOD_LINES}-line bodies: {sent} telemetry events offered in {secs:.1} s, {shed} shed ({:.0}%)",
            100.0 * *shed as f64 / (*sent).max(1) as f64
        );
    }
}
