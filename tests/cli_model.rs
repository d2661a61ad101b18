//! End-to-end tests of the state integrity model through the binary:
//! registries, admission of bad input, update-update conflicts across two
//! devices exchanging bundles, policy blocks named by explain, and restore
//! reproducing explain output exactly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;
use support::{json_lines, stderr, stdout, Home};

fn device(name: &str) -> Home {
    Home::device(name, "profile:local-dev")
}

fn ingest_ok(home: &Home, lines: &[&str]) -> Vec<Value> {
    let lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let out = home.ingest(&lines);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    json_lines(&out)
}

const SETUP: [&str; 3] = [
    r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:source-object:v1","object_type":"source_object","schema_version":"v1","required_fields":["object_id"]}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-one","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:source-object:v1","privacy_class":"work","sync_visibility":"workspace"}}"#,
];

fn explain(home: &Home, object: &str) -> Value {
    let out = home.run(&["explain", object, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn exchange(a: &Home, b: &Home) {
    for (from, to) in [(a, b), (b, a)] {
        let file = from.path().join("x.bundle");
        assert_eq!(
            from.run(&["export", "--out", file.to_str().unwrap()])
                .status
                .code(),
            Some(0)
        );
        let out = to.run(&["import", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

fn conflicts(home: &Home) -> Vec<Value> {
    let out = home.run(&["conflicts", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// A conflict record without the fields that are local positions
/// (sequence numbers in this device's log).
fn portable(mut c: Value) -> Value {
    let m = c.as_object_mut().unwrap();
    m.remove("detected_seq");
    m.remove("resolved_seq");
    c
}

#[test]
fn concurrent_updates_on_two_devices_give_one_conflict_everywhere() {
    let a = device("device:a");
    let b = device("device:b");
    ingest_ok(&a, &SETUP);
    exchange(&a, &b);
    let base = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        explain(&b, "object:alpha")["version"],
        base.as_str(),
        "versions agree across devices"
    );

    let upd = |actor: &str, field: &str| {
        format!(
            r#"{{"kind":"object.updated","actor":"{actor}","payload":{{"object_id":"object:alpha","base_version":"{base}","{field}":"x"}}}}"#
        )
    };
    ingest_ok(&a, &[&upd("actor:agent-one", "title")]);
    ingest_ok(&b, &[&upd("actor:local-user", "title")]);
    exchange(&a, &b);

    let (ca, cb) = (conflicts(&a), conflicts(&b));
    assert_eq!(ca.len(), 1, "{ca:#?}");
    assert_eq!(cb.len(), 1, "{cb:#?}");
    assert_eq!(ca[0]["conflict_id"], cb[0]["conflict_id"]);
    assert_eq!(
        portable(ca[0].clone()),
        portable(cb[0].clone()),
        "both devices record the same conflict"
    );
    let devices: Vec<&str> = ca[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        devices.contains(&"device:a") && devices.contains(&"device:b"),
        "{devices:?}"
    );
    assert_eq!(ca[0]["recommended_option"], "fork", "both changed `title`");
    for h in [&a, &b] {
        let s = h.status_json();
        assert_eq!(s["conflict_count"], 1);
        assert_eq!(s["health"], "conflicted");
        let x = explain(h, "object:alpha");
        assert_eq!(x["sync_plan"]["may_sync"], false);
        assert_eq!(
            x["sync_plan"]["blocked_by"][0]["code"],
            "unresolved_conflict"
        );
    }

    // Resolve on A; after another exchange it is cleared on both.
    let id = ca[0]["conflict_id"].as_str().unwrap();
    ingest_ok(
        &a,
        &[&format!(
            r#"{{"kind":"conflict.resolved","actor":"actor:local-user","payload":{{"conflict_id":"{id}","selected_option":"fork","rationale":"keep both"}}}}"#
        )],
    );
    exchange(&a, &b);
    for h in [&a, &b] {
        let c = conflicts(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["selected_option"], "fork");
        assert_eq!(h.status_json()["conflict_count"], 0);
        assert_eq!(explain(h, "object:alpha")["sync_plan"]["may_sync"], true);
    }
    // Resolving again is refused.
    let again = a.ingest(&[format!(
        r#"{{"kind":"conflict.resolved","actor":"actor:local-user","payload":{{"conflict_id":"{id}","selected_option":"merge"}}}}"#
    )]);
    assert_eq!(again.status.code(), Some(65));
}

#[test]
fn same_writer_updating_in_sequence_is_not_a_conflict() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    for i in 0..3 {
        let v = explain(&a, "object:alpha")["version"]
            .as_str()
            .unwrap()
            .to_owned();
        ingest_ok(
            &a,
            &[&format!(
                r#"{{"kind":"object.updated","actor":"actor:agent-one","payload":{{"object_id":"object:alpha","base_version":"{v}","n":{i}}}}}"#
            )],
        );
    }
    assert!(conflicts(&a).is_empty());
    let x = explain(&a, "object:alpha");
    assert_eq!(x["record"]["n"], 2);
    assert_eq!(x["history"].as_array().unwrap().len(), 4);
}

#[test]
fn explain_names_the_policy_decision_that_blocks_an_object() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    ingest_ok(
        &a,
        &[
            r#"{"kind":"policy.decided","actor":"actor:policy","payload":{"decision_id":"urn:srcos:decision:deny-alpha","effect":"deny","policy_id":"sourceos.policy/local-object-review","object_id":"object:alpha","rationale":"work data stays on this device"}}"#,
        ],
    );
    let x = explain(&a, "object:alpha");
    assert_eq!(x["sync_plan"]["may_sync"], false);
    let reason = x["sync_plan"]["blocked_by"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("urn:srcos:decision:deny-alpha"), "{reason}");
    assert_eq!(
        x["policy_decision"]["decision_id"],
        "urn:srcos:decision:deny-alpha"
    );
    let text = stdout(&a.run(&["explain", "object:alpha"]));
    assert!(text.contains("urn:srcos:decision:deny-alpha"), "{text}");
    let s = a.status_json();
    assert_eq!(s["policy_blocked"], true);
    assert_eq!(s["health"], "policy_blocked");
    // A later allow lifts the block.
    ingest_ok(
        &a,
        &[
            r#"{"kind":"policy.decided","actor":"actor:policy","payload":{"decision_id":"urn:srcos:decision:allow-alpha","effect":"allow","policy_id":"sourceos.policy/local-object-review","object_id":"object:alpha"}}"#,
        ],
    );
    assert_eq!(explain(&a, "object:alpha")["sync_plan"]["may_sync"], true);
    assert_eq!(a.status_json()["policy_blocked"], false);
}

#[test]
fn bad_model_input_is_rejected_naming_what_and_why() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    ingest_ok(
        &a,
        &[
            r#"{"kind":"actor.revoked","actor":"actor:local-user","payload":{"actor_id":"actor:rogue"}}"#,
        ],
    );
    let v = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (format!(r#"{{"kind":"object.updated","actor":"actor:agent-one","payload":{{"object_id":"object:nope","base_version":"{v}"}}}}"#), "unknown object object:nope"),
        (format!(r#"{{"kind":"object.updated","actor":"actor:rogue","payload":{{"object_id":"object:alpha","base_version":"{v}"}}}}"#), "actor actor:rogue was revoked"),
        (r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:b","object_type":"file","schema_id":"schema:unregistered"}}"#.to_owned(), "schema schema:unregistered, which is not registered"),
        (r#"{"kind":"conflict.resolved","actor":"actor:local-user","payload":{"conflict_id":"conflict:nope","selected_option":"skip"}}"#.to_owned(), "unknown conflict conflict:nope"),
        (r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:source-object:v1"}}"#.to_owned(), "object object:alpha already exists"),
    ];
    for (line, want) in cases {
        let before = a.head();
        let out = a.ingest(std::slice::from_ref(&line));
        assert_eq!(out.status.code(), Some(65), "{line}");
        let r = &json_lines(&out)[0];
        assert_eq!(r["result"], "rejected");
        assert!(
            r["reason"].as_str().unwrap().contains(want),
            "{}: wanted {want:?}",
            r["reason"]
        );
        assert_eq!(a.head(), before, "nothing appended for {line}");
    }
    // The records are listed.
    let actors: Vec<Value> = serde_json::from_slice(&a.run(&["actors", "--json"]).stdout).unwrap();
    assert!(actors
        .iter()
        .any(|r| r["actor_id"] == "actor:rogue" && r["revoked"] == true));
    let objects: Vec<Value> =
        serde_json::from_slice(&a.run(&["objects", "--json"]).stdout).unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(a.run(&["explain", "object:nope"]).status.code(), Some(65));
}

#[test]
fn restore_reproduces_status_and_explain_exactly() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    let v = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_ok(
        &a,
        &[&format!(
            r#"{{"kind":"object.updated","actor":"actor:agent-one","payload":{{"object_id":"object:alpha","base_version":"{v}","title":"t"}}}}"#
        )],
    );
    let bundle = a.path().join("full.bundle");
    assert_eq!(
        a.run(&["export", "--out", bundle.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let r = Home::empty();
    assert_eq!(
        r.run(&["restore", bundle.to_str().unwrap()]).status.code(),
        Some(0)
    );
    assert_eq!(
        stdout(&r.run(&["explain", "object:alpha"])),
        stdout(&a.run(&["explain", "object:alpha"]))
    );
    assert_eq!(explain(&r, "object:alpha"), explain(&a, "object:alpha"));
    let strip = |mut s: Value| {
        s.as_object_mut().unwrap().remove("generated_at");
        s
    };
    assert_eq!(strip(r.status_json()), strip(a.status_json()));
}

#[test]
fn local_policy_file_gates_mutations_and_records_its_decisions() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    std::fs::write(
        a.path().join("policy.toml"),
        r#"
policy_id = "sourceos.policy/laptop"
[[rule]]
name = "agents may not touch personal objects"
action = "mutation"
privacy_class = "personal"
actor_trust_level = "local"
effect = "deny"
"#,
    )
    .unwrap();
    let before = a.head();
    let out = a.ingest(&[
        r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:p","object_type":"file","schema_id":"schema:source-object:v1","privacy_class":"personal"}}"#.to_owned(),
        r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:w","object_type":"file","schema_id":"schema:source-object:v1","privacy_class":"work"}}"#.to_owned(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let r = json_lines(&out);
    assert_eq!(r[0]["result"], "policy_blocked");
    let decision = r[0]["decision_id"].as_str().unwrap().to_owned();
    assert!(decision.starts_with("urn:srcos:decision:"), "{decision}");
    assert!(r[0]["reason"]
        .as_str()
        .unwrap()
        .contains("agents may not touch personal objects"));
    assert_eq!(r[1]["result"], "appended");
    // The decision is in the log; the blocked object is not.
    assert_eq!(a.head(), before + 2);
    let logged: Value = serde_json::from_slice(
        &a.run(&[
            "log",
            "--from",
            &(before + 1).to_string(),
            "--limit",
            "1",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(logged["kind"], "policy.decided");
    assert_eq!(logged["actor"], "actor:syncd-policy");
    assert_eq!(logged["payload"]["decision_id"], decision.as_str());
    assert_eq!(logged["payload"]["effect"], "deny");
    assert_eq!(a.run(&["explain", "object:p"]).status.code(), Some(65));
    // A refused mutation does not hold the object's sync.
    assert_eq!(explain(&a, "object:w")["sync_plan"]["may_sync"], true);

    // A policy file that does not parse is named, with the problem.
    std::fs::write(
        a.path().join("policy.toml"),
        "[[rule]]\nname = \"x\"\neffect = \"sometimes\"\n",
    )
    .unwrap();
    let out = a.run(&["status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("policy.toml") && stderr(&out).contains("sometimes"),
        "{}",
        stderr(&out)
    );
}

fn proposal(txn: &str, base: &str, title: &str) -> String {
    format!(
        r#"{{"kind":"agent.transaction.proposed","actor":"actor:agent-one","payload":{{"transaction_id":"{txn}","object_ids":["object:alpha"],"operation":"update","changes":{{"object:alpha":{{"title":"{title}"}}}},"base_versions":{{"object:alpha":"{base}"}}}}}}"#
    )
}

fn txn_show(home: &Home, id: &str) -> Value {
    let out = home.run(&["txn", "show", id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn agent_transactions_change_objects_only_when_applied() {
    let a = device("device:a");
    ingest_ok(&a, &SETUP);
    let v0 = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();

    // No policy rule: the proposal is approved by policy at once, but the
    // object is unchanged until the transaction is applied.
    ingest_ok(&a, &[&proposal("agent-txn:one", &v0, "by agent")]);
    assert_eq!(txn_show(&a, "agent-txn:one")["status"], "approved");
    assert_eq!(explain(&a, "object:alpha")["version"], v0.as_str());
    let out = a.run(&["txn", "apply", "agent-txn:one"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(txn_show(&a, "agent-txn:one")["status"], "applied");
    let x = explain(&a, "object:alpha");
    assert_eq!(x["record"]["title"], "by agent");
    assert_eq!(x["last_changed"]["actor"], "actor:agent-one");
    assert_ne!(x["version"], v0.as_str());
    // Applying twice is an invalid move.
    let again = a.run(&["txn", "apply", "agent-txn:one"]);
    assert_eq!(again.status.code(), Some(65));
    assert!(stderr(&again).contains("Applied"), "{}", stderr(&again));

    // Policy asks for review: the proposal waits, naming the decision.
    std::fs::write(
        a.path().join("policy.toml"),
        "[[rule]]\nname = \"agents need review\"\naction = \"agent_transaction\"\neffect = \"review_required\"\n",
    )
    .unwrap();
    let v1 = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_ok(&a, &[&proposal("agent-txn:two", &v1, "reviewed")]);
    let t = txn_show(&a, "agent-txn:two");
    assert_eq!(t["status"], "proposed");
    assert!(t["policy_decision_ref"]
        .as_str()
        .unwrap()
        .starts_with("urn:srcos:decision:"));
    assert_eq!(
        a.run(&["txn", "apply", "agent-txn:two"]).status.code(),
        Some(65),
        "apply before approval"
    );
    assert_eq!(
        a.run(&[
            "txn",
            "approve",
            "agent-txn:two",
            "--actor",
            "actor:local-user"
        ])
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        a.run(&["txn", "apply", "agent-txn:two"]).status.code(),
        Some(0)
    );
    assert_eq!(explain(&a, "object:alpha")["record"]["title"], "reviewed");

    // A rejected transaction never changes anything.
    let v2 = explain(&a, "object:alpha")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_ok(&a, &[&proposal("agent-txn:three", &v2, "never")]);
    assert_eq!(
        a.run(&["txn", "reject", "agent-txn:three", "--reason", "not now"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(txn_show(&a, "agent-txn:three")["status"], "rejected");
    assert_eq!(
        a.run(&["txn", "apply", "agent-txn:three"]).status.code(),
        Some(65)
    );
    assert_eq!(explain(&a, "object:alpha")["version"], v2.as_str());

    // Policy denies: the proposal is not recorded, the decision is.
    std::fs::write(
        a.path().join("policy.toml"),
        "[[rule]]\nname = \"no agent changes\"\naction = \"agent_transaction\"\neffect = \"deny\"\n",
    )
    .unwrap();
    let out = a.ingest(&[proposal("agent-txn:four", &v2, "denied")]);
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(json_lines(&out)[0]["result"], "policy_blocked");
    assert_eq!(
        a.run(&["txn", "show", "agent-txn:four"]).status.code(),
        Some(65)
    );
    let list: Vec<Value> =
        serde_json::from_slice(&a.run(&["txn", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(a.run(&["doctor"]).status.code(), Some(0));
}
