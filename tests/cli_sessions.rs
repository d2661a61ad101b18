//! End-to-end tests of sessions, turns, writer leases and the orphan queue
//! through the real binary: `syncd ingest` for input, `syncd sessions`,
//! `syncd session ID`, `syncd orphans [--json]` and `syncd orphans sweep`
//! for answers. Every receipt printed is validated against the published
//! OrphanEventReceipt schema (`../shared/spec`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{json, Value};
use support::{json_lines, stderr, stdout, Home};

fn line(v: Value) -> String {
    v.to_string()
}

fn open(session: &str, payload: Value) -> String {
    line(json!({"kind": "session.opened", "actor": "actor:agent-one",
        "session": format!("urn:srcos:session:{session}"), "payload": payload}))
}

fn turn(kind: &str, session: &str, turn: &str) -> String {
    line(json!({"kind": kind, "actor": "actor:agent-one",
        "session": format!("urn:srcos:session:{session}"), "subject": turn, "payload": {}}))
}

/// Ingests lines and returns each line's result.
fn ingest(home: &Home, lines: &[String]) -> (Option<i32>, Vec<Value>) {
    let out = home.ingest(lines);
    (out.status.code(), json_lines(&out))
}

fn results(r: &[Value]) -> Vec<&str> {
    r.iter().map(|v| v["result"].as_str().unwrap()).collect()
}

fn json_of(home: &Home, args: &[&str]) -> Value {
    let out = home.run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn receipt_schema() -> jsonschema::Validator {
    support::spec_schema("schemas/OrphanEventReceipt.json")
}

/// `syncd orphans --json`, each receipt checked against the schema.
fn receipts(home: &Home) -> Vec<Value> {
    let list = json_of(home, &["orphans", "--json"]);
    let schema = receipt_schema();
    let list = list.as_array().unwrap().clone();
    for r in &list {
        let errors: Vec<String> = schema.iter_errors(r).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{r:#}");
    }
    list
}

#[test]
fn a_turn_lives_through_its_lifecycle_and_is_shown() {
    let home = Home::new();
    let (code, r) = ingest(
        &home,
        &[
            open("s1", json!({"conversation_id": "conv-1"})),
            turn("turn.admitted", "s1", "t1"),
            turn("turn.opened", "s1", "t1"),
            turn("turn.activated", "s1", "t1"),
            turn("turn.committed", "s1", "t1"),
            turn("turn.closed", "s1", "t1"),
        ],
    );
    assert_eq!(code, Some(0), "{r:?}");
    assert!(results(&r).iter().all(|x| *x == "appended"), "{r:?}");

    let list = json_of(&home, &["sessions", "--json"]);
    let s = &list[0];
    assert_eq!(s["session_ref"], "urn:srcos:session:s1");
    assert_eq!(s["state"], "open");
    assert_eq!(s["turns"], 1);
    assert_eq!(s["live_turns"], 0);
    assert_eq!(s["correlation_keys"]["conversation_id"], "conv-1");

    let d = json_of(&home, &["session", "s1", "--json"]);
    let t = &d["turns"][0];
    assert_eq!(t["turn_id"], "t1");
    assert_eq!(t["state"], "closed");
    assert_eq!(t["outcome"], "committed");
    assert_eq!(t["steps"].as_array().unwrap().len(), 5);

    let human = home.run(&["session", "urn:srcos:session:s1"]);
    assert_eq!(human.status.code(), Some(0));
    let text = stdout(&human);
    assert!(text.contains("t1  closed  outcome committed"), "{text}");
    assert!(text.contains("conversation conv-1"), "{text}");
    let text = stdout(&home.run(&["sessions"]));
    assert!(
        text.contains("urn:srcos:session:s1  open  1 turn(s), 0 live"),
        "{text}"
    );

    let status = home.status_json();
    assert_eq!(status["sessions"]["sessions"], 1);
    assert_eq!(status["sessions"]["open_sessions"], 1);
    assert_eq!(status["sessions"]["turns"], 1);
}

#[test]
fn invalid_moves_are_rejected_and_change_nothing() {
    let home = Home::new();
    let (code, _) = ingest(
        &home,
        &[
            open("s1", json!({})),
            turn("turn.admitted", "s1", "t1"),
            turn("turn.opened", "s1", "t1"),
            turn("turn.activated", "s1", "t1"),
            turn("turn.committed", "s1", "t1"),
        ],
    );
    assert_eq!(code, Some(0));
    let head = home.head();
    let before = json_of(&home, &["session", "s1", "--json"]);
    // A second terminal outcome, a turn that was never admitted, and a
    // refused request that tries to commit.
    let (code, r) = ingest(
        &home,
        &[
            turn("turn.aborted", "s1", "t1"),
            turn("turn.committed", "s1", "t1"),
            turn("turn.opened", "s1", "t2"),
            turn("turn.refused", "s1", "t3"),
            turn("turn.committed", "s1", "t3"),
        ],
    );
    assert_eq!(code, Some(65), "{r:?}");
    assert_eq!(
        results(&r),
        ["rejected", "rejected", "rejected", "appended", "rejected"]
    );
    for x in [&r[0], &r[2], &r[4]] {
        assert!(!x["reason"].as_str().unwrap().is_empty(), "{x}");
    }
    assert_eq!(home.head(), head + 1);
    let after = json_of(&home, &["session", "s1", "--json"]);
    let t1 = |d: &Value| d["turns"][0].clone();
    assert_eq!(t1(&after), t1(&before));
    let t3 = &after["turns"][1];
    assert_eq!(t3["turn_id"], "t3");
    assert_eq!(t3["state"], "refused");
    assert_eq!(t3["outcome"], Value::Null);
}

#[test]
fn a_stale_writer_epoch_is_refused_naming_both_epochs() {
    let home = Home::new();
    let lease = |epoch: u64| {
        line(json!({"kind": "lease.acquired", "actor": "actor:agent-one",
            "session": "urn:srcos:session:s1",
            "payload": {"lease_scope": "urn:srcos:session:s1", "lease_epoch": epoch,
                "holder": "actor:agent-one"}}))
    };
    let (code, r) = ingest(&home, &[open("s1", json!({})), lease(3)]);
    assert_eq!(code, Some(0), "{r:?}");
    let head = home.head();
    let before = json_of(&home, &["session", "s1", "--json"]);
    let stale = line(json!({"kind": "note.added", "actor": "actor:agent-one",
        "session": "urn:srcos:session:s1", "payload": {"lease_epoch": 2}}));
    let (code, r) = ingest(&home, &[stale]);
    assert_eq!(code, Some(65));
    let reason = r[0]["reason"].as_str().unwrap();
    assert!(reason.contains('2') && reason.contains('3'), "{reason}");
    assert_eq!(home.head(), head);
    assert_eq!(json_of(&home, &["session", "s1", "--json"]), before);
    let current = line(json!({"kind": "note.added", "actor": "actor:agent-one",
        "session": "urn:srcos:session:s1", "payload": {"lease_epoch": 3}}));
    let (code, r) = ingest(&home, &[current]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(
        json_of(&home, &["session", "s1", "--json"])["session"]["lease_epoch"],
        3
    );
}

#[test]
fn an_orphan_is_recovered_when_a_matching_session_opens() {
    let home = Home::new();
    let early = line(json!({"kind": "note.added", "actor": "actor:agent-one",
        "session": "urn:srcos:session:not-yet", "idempotency_key": "early-1",
        "payload": {"conversation_id": "conv-9", "text": "hello"}}));
    let (code, r) = ingest(&home, std::slice::from_ref(&early));
    assert_eq!(code, Some(0), "an orphan is not an error: {r:?}");
    let list = receipts(&home);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["sessionResolution"]["state"], "queued");
    assert_eq!(list[0]["correlationKeys"]["conversationId"], "conv-9");
    assert_eq!(home.status_json()["sessions"]["orphans_queued"], 1);

    // A retry is deduplicated by its idempotency key, not queued twice.
    let (_, r) = ingest(&home, std::slice::from_ref(&early));
    assert_eq!(results(&r), ["duplicate"]);

    // A different session sharing the conversation id claims it.
    let (code, _) = ingest(&home, &[open("real", json!({"conversation_id": "conv-9"}))]);
    assert_eq!(code, Some(0));
    let list = receipts(&home);
    let res = &list[0]["sessionResolution"];
    assert_eq!(res["state"], "recovered");
    assert_eq!(res["recoveredSessionRef"], "urn:srcos:session:real");
    let d = json_of(&home, &["session", "real", "--json"]);
    assert_eq!(d["recovered_orphans"].as_array().unwrap().len(), 1);
    assert_eq!(d["recovered_orphans"][0], list[0]["eventRef"]);
    let text = stdout(&home.run(&["orphans"]));
    assert!(
        text.contains("recovered") && text.contains("into urn:srcos:session:real"),
        "{text}"
    );
    // syncd's own validator agrees with the published schema.
    let file = home.path().join("receipts.json");
    std::fs::write(&file, home.run(&["orphans", "--json"]).stdout).unwrap();
    let out = home.run(&["schema", "validate", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn duplicate_orphans_are_discarded() {
    let home = Home::new();
    let orphan = |key: &str| {
        line(json!({"kind": "note.added", "actor": "actor:agent-one",
            "session": "urn:srcos:session:gone", "idempotency_key": key,
            "payload": {"text": "same"}}))
    };
    let (code, r) = ingest(&home, &[orphan("a"), orphan("b")]);
    assert_eq!(code, Some(0), "{r:?}");
    let list = receipts(&home);
    let states: Vec<&str> = list
        .iter()
        .map(|r| r["sessionResolution"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "discarded_duplicate"]);
}

#[test]
fn expired_orphans_are_quarantined_and_a_rebuild_reproduces_it() {
    let home = Home::new();
    let orphan = line(json!({"kind": "turn.opened", "actor": "actor:agent-one",
        "session": "urn:srcos:session:never", "subject": "t1", "payload": {}}));
    let (code, r) = ingest(&home, &[orphan]);
    assert_eq!(code, Some(0), "{r:?}");

    // Not yet expired under the default TTL: nothing is recorded.
    let head = home.head();
    let report = json_of(&home, &["orphans", "sweep", "--json"]);
    assert_eq!(report["ttl_seconds"], 300);
    assert_eq!(report["quarantined"].as_array().unwrap().len(), 0);
    assert_eq!(report["still_queued"], 1);
    assert_eq!(home.head(), head);

    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let report = json_of(&home, &["orphans", "sweep", "--ttl", "1", "--json"]);
    assert_eq!(
        report["quarantined"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["still_queued"], 0);
    assert_eq!(home.head(), head + 1);
    let before = receipts(&home);
    let res = &before[0]["sessionResolution"];
    assert_eq!(res["state"], "quarantined");
    assert!(res["quarantinedAt"].is_string());
    assert_eq!(before[0]["ttl"]["expired"], true);
    assert!(before[0]["policyDecisionRef"]
        .as_str()
        .unwrap()
        .starts_with("urn:srcos:decision:orphan-quarantine:"));

    // A second sweep records nothing more.
    let report = json_of(&home, &["orphans", "sweep", "--ttl", "1", "--json"]);
    assert_eq!(report["quarantined"].as_array().unwrap().len(), 0);
    assert_eq!(home.head(), head + 1);

    let out = home.run(&["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(receipts(&home), before);
    assert_eq!(home.run(&["doctor"]).status.code(), Some(0));
    let status = home.status_json();
    assert_eq!(status["sessions"]["orphans_quarantined"], 1);
    assert_eq!(status["sessions"]["orphans_queued"], 0);
}

#[test]
fn the_ttl_comes_from_the_home_configuration() {
    let home = Home::new();
    let orphan = line(json!({"kind": "note.added", "actor": "actor:agent-one",
        "session": "urn:srcos:session:never", "payload": {}}));
    assert_eq!(ingest(&home, &[orphan]).0, Some(0));
    std::fs::write(
        home.path().join("config.toml"),
        "[orphans]\nttl_seconds = 1\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let out = home.run(&["orphans", "sweep"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("with a TTL of 1 s: 1 examined, 1 quarantined"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_input_is_refused_clearly_and_loses_nothing() {
    let home = Home::new();
    let orphan = line(json!({"kind": "note.added", "actor": "actor:agent-one",
        "session": "urn:srcos:session:never", "payload": {}}));
    assert_eq!(ingest(&home, &[orphan]).0, Some(0));
    let head = home.head();

    // TTLs out of range are usage errors; nothing is recorded.
    for ttl in ["0", "31536001", "-1", "soon"] {
        let out = home.run(&["orphans", "sweep", "--ttl", ttl]);
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl}: {}", stderr(&out));
    }
    // A broken configuration names the file; nothing is recorded.
    std::fs::write(
        home.path().join("config.toml"),
        "[orphans]\nttl_seconds = 0\n",
    )
    .unwrap();
    for args in [&["orphans", "sweep"][..], &["orphans"][..]] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert!(stderr(&out).contains("config.toml"), "{}", stderr(&out));
    }
    std::fs::write(home.path().join("config.toml"), "[orphans]\nttl = 5\n").unwrap();
    assert_eq!(home.run(&["orphans", "sweep"]).status.code(), Some(4));
    std::fs::remove_file(home.path().join("config.toml")).unwrap();

    // Unknown sessions are bad data, empty ids usage errors.
    let out = home.run(&["session", "nobody"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("unknown session urn:srcos:session:nobody"));
    assert_eq!(home.run(&["session", ""]).status.code(), Some(2));

    // Only syncd's sweeper may record a quarantine; malformed session
    // kinds are rejected with their reason.
    let forged = line(
        json!({"kind": "orphan.quarantined", "actor": "actor:syncd-orphan-sweeper",
        "payload": {}}),
    );
    let not_a_session = line(json!({"kind": "session.opened", "actor": "actor:agent-one",
        "session": "s1", "payload": {}}));
    let bad_key = line(json!({"kind": "session.opened", "actor": "actor:agent-one",
        "session": "urn:srcos:session:s1", "payload": {"workspace_ref": "ws-1"}}));
    let no_turn = line(json!({"kind": "turn.admitted", "actor": "actor:agent-one",
        "session": "urn:srcos:session:s1", "payload": {}}));
    let (code, r) = ingest(&home, &[forged, not_a_session, bad_key, no_turn]);
    assert_eq!(code, Some(65));
    assert_eq!(results(&r), ["rejected"; 4]);
    assert!(r[2]["reason"].as_str().unwrap().contains("workspace_ref"));
    assert!(r[3]["reason"].as_str().unwrap().contains("turn id"));
    assert_eq!(home.head(), head);
    assert_eq!(receipts(&home).len(), 1);
}
