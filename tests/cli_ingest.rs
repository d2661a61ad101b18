//! End-to-end tests of `syncd ingest`, `log` and the exit codes, through
//! the real binary: good lines are appended and acknowledged once durable,
//! duplicates name the original, and every kind of bad input is rejected
//! with a reason while appending nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::{event, json_lines, stderr, stdout, Home};

#[test]
fn good_lines_are_appended_in_order_with_hashes() {
    let home = Home::new();
    let lines: Vec<String> = (0..50).map(event).collect();
    let out = home.ingest(&lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 50);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["result"], "appended");
        assert_eq!(r["line"], i as u64 + 1);
        assert_eq!(r["seq"], i as u64 + 1);
        assert!(r["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("blake3:") && h.len() == 71));
    }
    // The log shows the same events with the same hashes.
    let log = home.run(&["log", "--json", "--limit", "1000"]);
    let docs = json_lines(&log);
    assert_eq!(docs.len(), 50);
    for (d, r) in docs.iter().zip(&results) {
        assert_eq!(d["hash"], r["hash"]);
    }
    // Each event links to its predecessor.
    for w in docs.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
}

#[test]
fn repeated_idempotency_key_appends_nothing_and_names_the_original() {
    let home = Home::new();
    let first = json_lines(&home.ingest(&[event(1), event(2)]));
    let again = home.ingest(&[event(2), event(1)]);
    assert_eq!(again.status.code(), Some(0));
    let again = json_lines(&again);
    assert_eq!(again[0]["result"], "duplicate");
    assert_eq!(again[0]["seq"], first[1]["seq"]);
    assert_eq!(again[0]["hash"], first[1]["hash"]);
    assert_eq!(again[1]["seq"], first[0]["seq"]);
    assert_eq!(home.head(), 2);
}

/// Each bad line is rejected with its line number and a reason that names
/// the problem; the good lines around it are appended; exit 65.
#[test]
fn bad_input_is_rejected_with_a_reason_and_appends_nothing() {
    let long_actor = format!(r#"{{"kind":"a.b","actor":"actor:{}"}}"#, "x".repeat(300));
    let long_subject = format!(
        r#"{{"kind":"a.b","actor":"a","subject":"{}"}}"#,
        "s".repeat(600)
    );
    let long_key = format!(
        r#"{{"kind":"a.b","actor":"a","idempotency_key":"{}"}}"#,
        "k".repeat(257)
    );
    let big_payload = format!(
        r#"{{"kind":"a.b","actor":"a","payload":{{"x":"{}"}}}}"#,
        "p".repeat(5000)
    );
    let huge_line = format!(
        r#"{{"kind":"a.b","actor":"a","payload":{{"x":"{}"}}}}"#,
        "h".repeat(70_000)
    );
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "not a valid event line"),
        (r#"["kind"]"#.into(), "not a valid event line"),
        (
            r#"{"actor":"actor:a"}"#.into(),
            "missing required field `kind`",
        ),
        (r#"{"kind":"a.b"}"#.into(), "missing required field `actor`"),
        (r#"{"kind":"Bad Kind","actor":"a"}"#.into(), "`kind`"),
        (
            r#"{"kind":"syncd.doctor.repaired","actor":"a"}"#.into(),
            "reserved",
        ),
        (long_actor, "`actor`: actor is"),
        (long_subject, "`subject`: subject is"),
        (long_key, "`idempotency_key`: idempotency key is 257 bytes"),
        (
            r#"{"kind":"a.b","actor":"a","idempotency_key":""}"#.into(),
            "`idempotency_key`: idempotency key must not be empty",
        ),
        (
            r#"{"kind":"a.b","actor":"a","idempotency_key":"tab\there"}"#.into(),
            "`idempotency_key`: idempotency key contains",
        ),
        (
            r#"{"kind":"a.b","actor":"a","idempotency_key":7}"#.into(),
            "must be a string",
        ),
        (
            r#"{"kind":"a.b","actor":"a","payload":[1,2]}"#.into(),
            "`payload`",
        ),
        (big_payload, "`payload`: payload is"),
        (huge_line, "longer than 65536 bytes"),
        (
            r#"{"kind":"a.b","actor":"a","colour":"red"}"#.into(),
            "unknown field `colour`",
        ),
    ];
    for (bad, want) in &cases {
        let home = Home::new();
        let out = home.ingest(&[event(1), bad.clone(), event(3)]);
        assert_eq!(
            out.status.code(),
            Some(65),
            "line {bad:.60}: {}",
            stderr(&out)
        );
        let results = json_lines(&out);
        assert_eq!(results.len(), 3, "{}", stdout(&out));
        assert_eq!(results[0]["result"], "appended");
        assert_eq!(results[1]["result"], "rejected");
        assert_eq!(results[1]["line"], 2);
        let reason = results[1]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(want),
            "for {bad:.60}: reason {reason:?} lacks {want:?}"
        );
        assert_eq!(results[2]["result"], "appended");
        assert_eq!(
            results[2]["seq"], 2,
            "the rejected line must not take a sequence number"
        );
        assert_eq!(home.head(), 2);
    }
}

#[test]
fn invalid_utf8_is_rejected_not_fatal() {
    let home = Home::new();
    let mut input = event(1).into_bytes();
    input.extend_from_slice(b"\n{\"kind\":\"a.b\",\"actor\":\"\xff\xfe\"}\n");
    input.extend_from_slice(event(2).as_bytes());
    let out = home.run_stdin(&["ingest"], &input);
    assert_eq!(out.status.code(), Some(65));
    let results = json_lines(&out);
    assert_eq!(results[1]["result"], "rejected");
    assert!(results[1]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("UTF-8"));
    assert_eq!(home.head(), 2);
}

#[test]
fn ingest_from_file_and_missing_file() {
    let home = Home::new();
    let file = home.path().join("in.jsonl");
    std::fs::write(&file, (0..10).map(event).collect::<Vec<_>>().join("\n")).unwrap();
    let out = home.run(&["ingest", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 10);
    let missing = home.run(&["ingest", "--file", "/nonexistent/events.jsonl"]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(stderr(&missing).contains("/nonexistent/events.jsonl"));
    assert_eq!(home.head(), 10);
}

#[test]
fn exit_codes_for_usage_and_missing_store() {
    let home = Home::empty();
    let out = home.run(&["status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("syncd init"), "{}", stderr(&out));
    let out = home.run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let out = home.run(&["log", "--from", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = home.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("doctor"));
}

#[test]
fn log_by_subject_and_range() {
    let home = Home::new();
    home.ingest(&(0..100).map(event).collect::<Vec<_>>());
    let out = home.run(&["log", "--subject", "object:5", "--json"]);
    let docs = json_lines(&out);
    let expected: Vec<u64> = (0..100u64).filter(|i| i % 17 == 5).map(|i| i + 1).collect();
    let got: Vec<u64> = docs.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, expected);
    let out = home.run(&["log", "--from", "90", "--limit", "5", "--json"]);
    let got: Vec<u64> = json_lines(&out)
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![90, 91, 92, 93, 94]);
    let text = home.run(&["log", "--limit", "2"]);
    assert_eq!(stdout(&text).lines().count(), 2);
}

#[test]
fn closed_stdout_ends_quietly() {
    let home = Home::new();
    home.ingest(&(0..3000).map(event).collect::<Vec<_>>());
    // Read only one line of a long listing, then close the pipe.
    let mut child = home
        .cmd(&["log", "--limit", "3000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let _ = std::io::Read::read(&mut stdout, &mut buf).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}
