//! End-to-end tests of the evidence store: `syncd evidence add` stores a
//! file under `HOME/evidence/<blake3 hex>` and prints its reference; the
//! doctor checks every file the log references, and missing or altered
//! evidence is durable damage (exit 3, `needs_review`) that `--repair`
//! leaves alone. Bad input (no store, unreadable file) loses nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;
use support::{stderr, stdout, Home};

fn add(home: &Home, content: &[u8]) -> String {
    let file = home.path().join("input.bin");
    std::fs::write(&file, content).unwrap();
    let out = home.run(&["evidence", "add", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn doctor(home: &Home) -> (i32, Value) {
    let out = home.run(&["doctor", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.code().unwrap(), v)
}

fn reference_it(home: &Home, r: &str) {
    let line = format!(
        r#"{{"kind":"note.added","actor":"actor:agent-one","subject":"object:n","payload":{{"evidenceRefs":["{r}","urn:srcos:evidence:elsewhere"]}}}}"#
    );
    let out = home.ingest(&[line]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn evidence_is_content_addressed_and_stored_once() {
    let home = Home::new();
    let r = add(&home, b"full manifest");
    assert_eq!(
        r,
        format!("blake3:{}", blake3::hash(b"full manifest").to_hex())
    );
    let path = home
        .path()
        .join("evidence")
        .join(r.trim_start_matches("blake3:"));
    assert_eq!(std::fs::read(&path).unwrap(), b"full manifest");
    assert_eq!(add(&home, b"full manifest"), r);
    let names: Vec<_> = std::fs::read_dir(home.path().join("evidence"))
        .unwrap()
        .collect();
    assert_eq!(names.len(), 1, "one file, no temporary left behind");
}

#[test]
fn doctor_finds_missing_and_altered_evidence_and_repair_changes_nothing() {
    let home = Home::new();
    let kept = add(&home, b"kept");
    let altered = add(&home, b"to be altered");
    let lost = add(&home, b"to be lost");
    for r in [&kept, &altered, &lost] {
        reference_it(&home, r);
    }
    let (code, report) = doctor(&home);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["evidence_checked"], 3);

    let file = |r: &str| {
        home.path()
            .join("evidence")
            .join(r.trim_start_matches("blake3:"))
    };
    std::fs::write(file(&altered), b"to be altereD").unwrap();
    std::fs::remove_file(file(&lost)).unwrap();
    let (code, report) = doctor(&home);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["outcome"], "needs_review");
    let findings = report["findings"].as_array().unwrap();
    let codes: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f["code"].as_str().unwrap(), f["class"].as_str().unwrap()))
        .collect();
    assert!(
        codes.contains(&("evidence.altered", "needs_review")),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("evidence.missing", "needs_review")),
        "{codes:?}"
    );
    assert_eq!(
        findings.len(),
        2,
        "the intact file is no finding: {codes:?}"
    );
    assert!(findings
        .iter()
        .any(|f| f["message"].as_str().unwrap().contains(&lost)));

    let before = home.raw_dump();
    let out = home.run(&["doctor", "--repair"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert_eq!(
        home.raw_dump(),
        before,
        "repair changes nothing while evidence is damaged"
    );
    assert_eq!(std::fs::read(file(&altered)).unwrap(), b"to be altereD");

    // Putting the content back heals it.
    add(&home, b"to be lost");
    std::fs::write(file(&altered), b"to be altered").unwrap();
    assert_eq!(doctor(&home).0, 0);
}

#[test]
fn the_doctors_own_report_is_evidence_too() {
    let home = Home::new();
    reference_it(&home, &add(&home, b"x"));
    let out = home.run(&["drill", "damage-derived", "--tree", "p.summary"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(home.run(&["doctor", "--repair"]).status.code(), Some(0));
    let (code, report) = doctor(&home);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["evidence_checked"], 2,
        "the repair report is referenced and checked"
    );
}

#[test]
fn bad_input_loses_nothing() {
    let empty = Home::empty();
    let f = empty.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let out = empty.run(&["evidence", "add", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("no store"), "{}", stderr(&out));
    assert!(!empty.path().join("evidence").exists());

    let home = Home::new();
    let before = home.raw_dump();
    let missing = home.path().join("nope");
    let out = home.run(&["evidence", "add", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    assert_eq!(home.raw_dump(), before);
    assert!(!home.path().join("evidence").exists());
}
