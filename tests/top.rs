//! `syncd top` against a real daemon: the frame it draws shows every
//! panel, and it resumes after a daemon restart from the last event it
//! saw, so no event is lost or shown twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{stderr, Home};

fn note(subject: &str) -> String {
    format!(
        r#"{{"kind":"note.added","actor":"actor:agent-one","subject":"{subject}","payload":{{}}}}"#
    )
}

#[test]
fn top_shows_the_panels_and_resumes_after_a_daemon_restart() {
    let home = Home::new();
    let mut d = home.start_daemon();
    let out = home.ingest(&[note("object:before")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let top = home
        .cmd(&["top", "--headless-until", "object:after"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it connect and read the backlog, then restart the daemon.
    std::thread::sleep(Duration::from_millis(700));
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0));
    drop(d);
    let _d2 = home.start_daemon();
    let out = home.ingest(&[note("object:after")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done = top.wait_with_output().unwrap();
    let frame = String::from_utf8_lossy(&done.stdout).into_owned();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{frame}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for panel in [
        "Health",
        "Lifecycle",
        "Lanes",
        "Peers",
        "Conflicts",
        "Orphans",
        "Recent events",
    ] {
        assert!(frame.contains(panel), "{panel} missing in\n{frame}");
    }
    assert!(frame.contains("object:before") && frame.contains("object:after"));
    // The events shown are consecutive: nothing lost across the restart,
    // nothing repeated.
    let seqs: Vec<u64> = frame
        .lines()
        .filter_map(|l| {
            let inner = l.trim_start_matches('│').trim_start();
            inner.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert!(seqs.len() > 5, "{frame}");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{frame}");
    }
    assert_eq!(*seqs.last().unwrap(), home.head(), "{frame}");
}
