//! End-to-end tests of the capability ledger and the receipts through the
//! binary: a negotiation where config and UI declare a capability enabled
//! but the server reports it unsupported ends in `unsupported_by_server`
//! with a split-brain flag (conflictRefs, status degraded naming it, a
//! doctor advisory), never `enabled`; a full agreement ends `enabled`;
//! browser automation receipts are listed, revoked once and only once;
//! runtime install receipts keep their manifest in the evidence store;
//! every emitted document validates against the published SourceOS schema
//! (`../shared/spec`) and against ours; each bad input named by the issue
//! is refused with the path of the problem and appends nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::{json_lines, stderr, stdout, Home};

const CAP: &str = "urn:srcos:capability:browser-automation@1.0.0";
const DECISION: &str = "urn:srcos:decision:desk-42";
const RECEIPT: &str = "urn:srcos:receipt:browser-automation:form-fill-1";
const INSTALL: &str = "urn:srcos:receipt:runtime-install:node-22";

fn published(name: &str) -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../shared/spec/schemas/{name}.json"));
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("the SourceOS spec must sit beside the repository: {p:?}: {e}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&serde_json::from_str(&text).unwrap())
        .unwrap()
}

/// Checks documents against the published schema and, through the
/// binary, against ours.
fn assert_conforms(home: &Home, name: &str, docs: &[Value]) {
    assert!(!docs.is_empty());
    let v = published(name);
    for d in docs {
        let errors: Vec<String> = v
            .iter_errors(d)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} against the published schema: {errors:?}\n{d:#}"
        );
    }
    let file = home.path().join(format!("{name}.emitted.json"));
    std::fs::write(&file, serde_json::to_vec(docs).unwrap()).unwrap();
    let out = home.run(&[
        "schema",
        "validate",
        "--schema",
        name,
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

fn line(kind: &str, subject: &str, payload: Value) -> String {
    json!({"kind": kind, "actor": "actor:agent-one", "subject": subject, "payload": payload})
        .to_string()
}

fn declared(plane: &str, state: &str) -> String {
    line(
        "capability.declared",
        CAP,
        json!({"plane": plane, "state": state, "policyDecisionRef": DECISION, "sessionRef": "urn:srcos:session:desk-42", "ownerRef": "urn:srcos:user:kim"}),
    )
}

fn reported(plane: &str, verdict: &str) -> String {
    line(
        "capability.plane_reported",
        CAP,
        json!({"plane": plane, "verdict": verdict, "reason": format!("{plane} says {verdict}"), "policyDecisionRef": DECISION}),
    )
}

fn policy(effect: &str) -> String {
    line(
        "capability.policy_decided",
        CAP,
        json!({"policyDecisionRef": DECISION, "effect": effect, "evidenceRefs": ["urn:srcos:evidence:policy-eval-1"]}),
    )
}

fn ingest_ok(home: &Home, lines: &[String]) {
    let out = home.ingest(lines);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

fn capabilities(home: &Home) -> Vec<Value> {
    let out = home.run(&["capabilities", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn receipts(home: &Home, kind: Option<&str>) -> Vec<Value> {
    let mut args = vec!["receipts", "--json"];
    if let Some(k) = kind {
        args.extend(["--kind", k]);
    }
    let out = home.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn server_rejection_ends_unsupported_by_server_with_split_brain_never_enabled() {
    let home = Home::new();
    ingest_ok(
        &home,
        &[
            declared("config", "enabled"),
            declared("ui", "enabled"),
            reported("runtime", "enabled"),
            reported("server", "unsupported"),
            policy("allow"),
        ],
    );
    let docs = capabilities(&home);
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["effectiveState"], "unsupported_by_server");
    assert_ne!(d["effectiveState"], "enabled");
    let conflicts: Vec<&str> = d["conflictRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        conflicts.iter().any(|c| c.ends_with(":config-vs-server")),
        "{conflicts:?}"
    );
    assert!(
        conflicts.iter().any(|c| c.ends_with(":ui-vs-server")),
        "{conflicts:?}"
    );
    assert!(
        conflicts.iter().any(|c| c.ends_with(":runtime-vs-server")),
        "{conflicts:?}"
    );
    assert_eq!(d["declaredBy"], json!(["config", "ui"]));
    assert_eq!(d["policyDecisionRef"], DECISION);
    assert_conforms(&home, "CapabilityLedger", &docs);

    let status = home.status_json();
    assert_eq!(status["health"], "degraded");
    assert_eq!(status["degraded"], true);
    assert_eq!(status["split_brain_capabilities"], json!([CAP]));
    assert!(status["summary"].as_str().unwrap().contains(CAP));

    let out = home.run(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "split-brain is advisory, not damage"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &report["findings"][0];
    assert_eq!(f["code"], "capability.split_brain");
    assert_eq!(f["class"], "advisory");
    assert!(f["message"].as_str().unwrap().contains(CAP));

    // The server catching up resolves it: the store is clean again.
    ingest_ok(&home, &[reported("server", "supported")]);
    let d = &capabilities(&home)[0];
    assert_eq!(d["effectiveState"], "enabled");
    assert_eq!(d["conflictRefs"], json!([]));
    assert_eq!(home.status_json()["health"], "clean");
}

#[test]
fn the_ledger_moves_from_declared_to_enabled_and_survives_a_rebuild() {
    let home = Home::new();
    ingest_ok(&home, &[declared("config", "enabled")]);
    assert_eq!(capabilities(&home)[0]["effectiveState"], "declared");
    ingest_ok(
        &home,
        &[line(
            "capability.requested",
            CAP,
            json!({"plane": "user", "policyDecisionRef": DECISION}),
        )],
    );
    assert_eq!(capabilities(&home)[0]["effectiveState"], "requested");
    ingest_ok(&home, &[reported("runtime", "supported")]);
    assert_eq!(capabilities(&home)[0]["effectiveState"], "negotiating");
    ingest_ok(&home, &[reported("server", "supported"), policy("allow")]);
    let before = capabilities(&home);
    assert_eq!(before[0]["effectiveState"], "enabled");
    assert_eq!(
        before[0]["evidenceRefs"],
        json!(["urn:srcos:evidence:policy-eval-1"])
    );
    assert_conforms(&home, "CapabilityLedger", &before);
    ingest_ok(&home, &[policy("deny")]);
    assert_eq!(
        capabilities(&home)[0]["effectiveState"],
        "blocked_by_policy"
    );
    let before = capabilities(&home);
    let out = home.run(&["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        capabilities(&home),
        before,
        "a rebuild folds the same ledger"
    );
    let out = home.run(&["drill", "damage-derived", "--tree", "p.ledger"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(home.run(&["doctor"]).status.code(), Some(1));
    assert_eq!(home.run(&["doctor", "--repair"]).status.code(), Some(0));
    assert_eq!(capabilities(&home), before);
}

fn automation(id: &str, owner: &str, session: &str) -> Value {
    json!({
        "kind": "browser.automation_started",
        "actor": "actor:bearbrowser",
        "subject": id,
        "payload": {
            "sessionRef": session,
            "capabilityLedgerRef": "urn:srcos:capability-ledger:browser-automation@1.0.0",
            "ownerRef": owner,
            "transport": "native_pipe",
            "permissionScope": ["read_page", "enter_text"],
            "origin": "workspace",
            "controlledScope": {"windowRef": null, "tabRef": "urn:srcos:browser-tab:1", "urlOrigin": "https://forms.example.invalid", "workspaceRef": "urn:srcos:workspace:notes"},
            "userVisible": true,
            "revocable": true,
            "policyDecisionRef": DECISION,
            "evidenceRefs": ["urn:srcos:evidence:visible-banner-1"]
        }
    })
}

#[test]
fn automation_receipts_are_listed_and_revoked_once() {
    let home = Home::new();
    ingest_ok(
        &home,
        &[automation(RECEIPT, "urn:srcos:user:kim", "urn:srcos:session:desk-42").to_string()],
    );
    let docs = receipts(&home, Some("browser-automation"));
    assert_eq!(docs[0]["terminalState"], "active");
    assert_eq!(docs[0]["revokedAt"], Value::Null);
    assert_conforms(&home, "BrowserAutomationReceipt", &docs);

    let out = home.run(&[
        "receipts",
        "revoke",
        RECEIPT,
        "--reason",
        "user closed the banner",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let docs = receipts(&home, None);
    assert_eq!(docs[0]["terminalState"], "revoked");
    assert!(docs[0]["revokedAt"].is_string());
    assert_conforms(&home, "BrowserAutomationReceipt", &docs);

    // Terminal: a second revoke, or an end of any kind, is refused and appends nothing.
    let head = home.head();
    let out = home.run(&["receipts", "revoke", RECEIPT]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("cannot go from revoked"),
        "{}",
        stderr(&out)
    );
    let out = home.ingest(&[line(
        "browser.automation_ended",
        RECEIPT,
        json!({"terminalState": "completed", "policyDecisionRef": DECISION}),
    )]);
    assert_eq!(out.status.code(), Some(65));
    let out = home.run(&[
        "receipts",
        "revoke",
        "urn:srcos:receipt:browser-automation:nope",
    ]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("unknown receipt"), "{}", stderr(&out));
    assert_eq!(home.head(), head);
    assert!(receipts(&home, Some("runtime-install")).is_empty());
}

#[test]
fn install_receipts_keep_the_manifest_as_evidence() {
    let home = Home::new();
    let manifest = json!({
        "bundleFormatVersion": "1",
        "artifacts": [
            {"artifactRef": "urn:srcos:artifact:node-22-linux-x64.tar.xz", "digest": format!("sha256:{}", "2".repeat(64)), "sizeBytes": 1048576, "verificationState": "verified"}
        ],
        "notes": "the full manifest is only here, never in the log"
    });
    let file = home.path().join("manifest.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = home.run(&["evidence", "add", "--json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    let request = line(
        "runtime.install_requested",
        INSTALL,
        json!({
            "sessionRef": "urn:srcos:session:desk-42",
            "capabilityLedgerRef": "urn:srcos:capability-ledger:runtime-install@1.0.0",
            "runtimeRef": "urn:srcos:runtime:node@22.11.0",
            "runtimeName": "node",
            "runtimeVersion": "22.11.0",
            "targetRef": "urn:srcos:target:desk-42",
            "platform": "linux-x64",
            "manifest": {"manifestRef": stored["evidence_ref"], "manifestDigest": stored["sha256"], "resolvedAt": "2026-12-01T10:00:00Z"},
            "policyDecisionRef": DECISION
        }),
    );
    let step = |s: &str| {
        line(
            "runtime.install_progressed",
            INSTALL,
            json!({"installState": s, "policyDecisionRef": DECISION}),
        )
    };
    ingest_ok(
        &home,
        &[
            request,
            step("manifest_resolved"),
            step("artifact_verified"),
            step("installing"),
            step("installed"),
        ],
    );
    let docs = receipts(&home, Some("runtime-install"));
    assert_eq!(docs[0]["installState"], "installed");
    assert_eq!(docs[0]["artifacts"], manifest["artifacts"]);
    assert!(docs[0]["finishedAt"].is_string());
    assert_conforms(&home, "RuntimeInstallReceipt", &docs);
    // The log holds the compact line only.
    let log = home.run(&["log", "--json"]);
    assert!(!stdout(&log).contains("never in the log"));
    assert!(!stdout(&log).contains("node-22-linux-x64"));
    // An install cannot skip back, and rolled back is terminal.
    let out = home.ingest(&[step("installing")]);
    assert_eq!(out.status.code(), Some(65));
    ingest_ok(&home, &[step("rolled_back")]);
    assert_eq!(home.ingest(&[step("installed")]).status.code(), Some(65));

    // Altered manifest: the doctor needs review, the listing says so.
    let path = home.path().join("evidence").join(
        stored["evidence_ref"]
            .as_str()
            .unwrap()
            .trim_start_matches("blake3:"),
    );
    std::fs::write(&path, b"{}").unwrap();
    assert_eq!(home.run(&["doctor"]).status.code(), Some(3));
    let out = home.run(&["receipts"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains(INSTALL), "{}", stderr(&out));
}

/// Each bad input the issue names, and a few more, is refused with the
/// path of the problem, and nothing is appended.
#[test]
fn bad_ledger_and_receipt_events_are_refused_with_their_path() {
    let home = Home::new();
    ingest_ok(
        &home,
        &[
            declared("config", "enabled"),
            automation(RECEIPT, "urn:srcos:user:kim", "urn:srcos:session:desk-42").to_string(),
        ],
    );
    let with = |mut v: Value, pointer: &str, value: Option<Value>| -> String {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let obj = v.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match value {
            Some(x) => obj.insert(key.to_owned(), x),
            None => obj.remove(key),
        };
        v.to_string()
    };
    let fresh = |id: &str| automation(id, "urn:srcos:user:kim", "urn:srcos:session:desk-7");
    let decl: Value = serde_json::from_str(&declared("ui", "enabled")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            with(decl.clone(), "/payload/policyDecisionRef", None),
            "payload.policyDecisionRef: required",
        ),
        (
            with(
                decl.clone(),
                "/payload/policyDecisionRef",
                Some(json!("urn:srcos:policy-decision:x")),
            ),
            "payload.policyDecisionRef",
        ),
        (
            with(decl.clone(), "/payload/plane", Some(json!("kernel"))),
            "payload.plane: unknown plane",
        ),
        (
            with(decl.clone(), "/payload/state", Some(json!("on"))),
            "payload.state",
        ),
        (
            with(
                decl.clone(),
                "/subject",
                Some(json!("urn:srcos:capability:no-version")),
            ),
            "subject:",
        ),
        (reported("runtime", "perhaps"), "payload.verdict"),
        (
            line(
                "capability.plane_reported",
                "urn:srcos:capability:undeclared@1",
                json!({"plane": "server", "verdict": "supported", "reason": "r", "policyDecisionRef": DECISION}),
            ),
            "not declared",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b1"),
                "/payload/policyDecisionRef",
                None,
            ),
            "payload.policyDecisionRef: required",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b2"),
                "/payload/policyDecisionRef",
                Some(json!("urn:srcos:policy-decision:x")),
            ),
            "payload.policyDecisionRef",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b3"),
                "/payload/transport",
                Some(json!("telnet")),
            ),
            "payload.transport",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b4"),
                "/payload/userVisible",
                Some(json!(false)),
            ),
            "payload.userVisible",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b5"),
                "/payload/revocable",
                Some(json!(false)),
            ),
            "payload.revocable",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b6"),
                "/payload/permissionScope",
                Some(json!(["read_page", "root_shell"])),
            ),
            "payload.permissionScope[1]",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b7"),
                "/payload/terminalState",
                Some(json!("active")),
            ),
            "payload.terminalState: set by syncd",
        ),
        (
            with(
                fresh("urn:srcos:receipt:browser-automation:b8"),
                "/subject",
                Some(json!("urn:srcos:receipt:other:b8")),
            ),
            "subject:",
        ),
        (
            automation(RECEIPT, "urn:srcos:user:kim", "urn:srcos:session:desk-42").to_string(),
            "already exists",
        ),
        (
            automation(
                "urn:srcos:receipt:browser-automation:b9",
                "urn:srcos:user:mallory",
                "urn:srcos:session:desk-42",
            )
            .to_string(),
            "ambiguous session ownership",
        ),
        (
            line(
                "runtime.install_requested",
                INSTALL,
                json!({"policyDecisionRef": DECISION, "artifacts": []}),
            ),
            "payload.artifacts",
        ),
        (
            line(
                "runtime.install_progressed",
                INSTALL,
                json!({"installState": "installed", "policyDecisionRef": DECISION}),
            ),
            "unknown receipt",
        ),
    ];
    for (input, want) in cases {
        let before = home.head();
        let out = home.ingest(std::slice::from_ref(&input));
        assert_eq!(out.status.code(), Some(65), "accepted: {input}");
        let r = &json_lines(&out)[0];
        assert_eq!(r["result"], "rejected");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains(want),
            "{input}\nwanted {want:?} in: {reason}"
        );
        assert_eq!(home.head(), before, "nothing appended for {input}");
    }
}
