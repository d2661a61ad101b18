//! Crash tests: the real `syncd ingest` is killed with SIGKILL in the
//! middle of a large input, at several points. Every sequence number it
//! acknowledged must then be in the log with the same hash, the log must
//! be contiguous, and `doctor` must exit 0 or repair derived state to 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use serde_json::Value;
use support::{event, stderr, Home};

/// Ingests from a live pipe and kills the process after `kill_after`
/// acknowledgements. Returns the acknowledged seq -> hash.
fn ingest_and_kill(
    home: &Home,
    first: u64,
    total: u64,
    kill_after: usize,
) -> BTreeMap<u64, String> {
    let mut child = home
        .cmd(&["ingest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ingest");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        for i in first..first + total {
            if writeln!(stdin, "{}", event(i)).is_err() {
                return; // the process is gone
            }
        }
    });
    let mut acked = BTreeMap::new();
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).expect("result line");
        if v["result"] == "appended" {
            acked.insert(
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            );
        }
        if acked.len() >= kill_after {
            child.kill().expect("SIGKILL");
            break;
        }
    }
    let _ = child.wait();
    let _ = writer.join();
    acked
}

fn all_hashes(home: &Home) -> BTreeMap<u64, String> {
    let out = home.run(&["log", "--json", "--limit", "1000000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    support::json_lines(&out)
        .into_iter()
        .map(|d| {
            (
                d["seq"].as_u64().unwrap(),
                d["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_acknowledged_event_survives_sigkill() {
    let home = Home::new();
    let mut next = 0u64;
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    for kill_after in [1usize, 700, 2_500, 9_000] {
        let acked = ingest_and_kill(&home, next, 40_000, kill_after);
        assert!(acked.len() >= kill_after.min(1), "nothing was acknowledged");
        next += 40_000;
        acknowledged.extend(acked);

        // Right after the crash: doctor sees the truth, then repairs if the
        // derived state lagged behind.
        let doctor = home.run(&["doctor"]);
        match doctor.status.code() {
            Some(0) => {}
            Some(1) => {
                assert_eq!(home.run(&["doctor", "--repair"]).status.code(), Some(0));
                assert_eq!(home.run(&["doctor"]).status.code(), Some(0));
            }
            other => panic!(
                "doctor after crash exited {other:?}: {}",
                support::stdout(&doctor)
            ),
        }

        let stored = all_hashes(&home);
        for (seq, hash) in &acknowledged {
            assert_eq!(
                stored.get(seq),
                Some(hash),
                "acknowledged event {seq} lost or changed"
            );
        }
        let seqs: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "log is not contiguous"
        );
        assert_eq!(home.run(&["verify"]).status.code(), Some(0));
    }
}
