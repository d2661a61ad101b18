//! The host facade's contract, run against its three implementations: in
//! process over a store, a client of a real `syncd daemon` started here,
//! and the scripted fake (primed with the outcome each step expects, so
//! the same steps and checks hold for all three).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use serde_json::{json, Value};
use sourceos_syncd::{
    DaemonHost, EventRequest, FacadeKey, Host, HostRequest, LocalHost, LocalPolicy, OpenOptions,
    Outcome, ScriptedHost, SessionRequest, Store, SurfaceVersion, TurnRequest, TxnRequest,
};
use support::Home;

const POLICY: &str = r#"
[[rule]]
name = "agents need review"
action = "agent_transaction"
effect = "review_required"
[[rule]]
name = "personal objects stay put"
action = "mutation"
privacy_class = "personal"
effect = "deny"
"#;

const SETUP: [&str; 3] = [
    r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:source-object:v1","object_type":"source_object","schema_version":"v1","required_fields":["object_id"]}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-one","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-two","actor_type":"agent","trust_level":"local"}}"#,
];

fn surface() -> SurfaceVersion {
    SurfaceVersion::new("contract-suite/1").unwrap()
}

/// A home with the schema, two agents and the policy above.
fn prepared_home() -> Home {
    let home = Home::new();
    let out = home.ingest(&SETUP.map(str::to_owned));
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    // A session nobody opened, whose orphan queue is full (256 events).
    let waiting: Vec<String> = (0..256)
        .map(|i| {
            json!({"kind": "note.added", "actor": "actor:agent-one",
                "session": "urn:srcos:session:never-opened", "payload": {"n": i}})
            .to_string()
        })
        .collect();
    let out = home.ingest(&waiting);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    std::fs::write(home.path().join("policy.toml"), POLICY).unwrap();
    home
}

/// The implementation under test; `expect` primes the fake with what the
/// next step should answer, and does nothing for the real ones.
struct Subject<'a> {
    host: &'a dyn Host,
    fake: Option<&'a ScriptedHost>,
}

impl Subject<'_> {
    fn expect(&self, o: Outcome) {
        if let Some(f) = self.fake {
            assert!(f.push_outcome(o));
        }
    }
}

fn created(object: &str, privacy: &str, key: &str) -> EventRequest {
    EventRequest::new(
        "object.created",
        "actor:agent-one",
        Some(object),
        key,
        json!({"object_id": object, "object_type": "file",
               "schema_id": "schema:source-object:v1", "privacy_class": privacy}),
    )
    .unwrap()
}

fn seq_of(o: &Outcome) -> (u64, String) {
    match o {
        Outcome::Completed { seq, hash } => (*seq, hash.clone()),
        other => panic!("expected completed, got {other:?}"),
    }
}

fn contract(s: &Subject<'_>) {
    let h = s.host;
    // Completed, then the same key again: a duplicate naming the original.
    s.expect(Outcome::Completed {
        seq: 10,
        hash: "blake3:aa".into(),
    });
    let first = h
        .submit_event(&created("object:alpha", "work", "k-alpha"))
        .unwrap();
    let (seq, hash) = seq_of(&first);
    assert!(seq > 0 && hash.starts_with("blake3:"), "{first:?}");
    s.expect(Outcome::Duplicate {
        seq,
        hash: hash.clone(),
    });
    assert_eq!(
        h.submit_event(&created("object:alpha", "work", "k-alpha"))
            .unwrap(),
        Outcome::Duplicate { seq, hash }
    );

    // Policy blocks with the rule's reason.
    s.expect(Outcome::PolicyBlocked {
        reason: "denied by rule \"personal objects stay put\"".into(),
    });
    match h
        .submit_event(&created("object:private", "personal", "k-private"))
        .unwrap()
    {
        Outcome::PolicyBlocked { reason } => {
            assert!(reason.contains("personal objects stay put"), "{reason}")
        }
        other => panic!("expected policy blocked, got {other:?}"),
    }

    // A failure says why in plain words, without paths or ids.
    s.expect(Outcome::Failed {
        message: sourceos_syncd::sanitise("unknown object object:nowhere"),
    });
    let bad = EventRequest::new(
        "object.updated",
        "actor:agent-one",
        Some("object:nowhere"),
        "k-bad",
        json!({"object_id": "object:nowhere", "base_version": "v:0000000000000000", "title": "x"}),
    )
    .unwrap();
    match h.submit_event(&bad).unwrap() {
        Outcome::Failed { message } => {
            let t = message.as_str();
            assert!(!t.is_empty());
            for leak in ["object:", "v:0", "/", "urn:", "actor:"] {
                assert!(!t.contains(leak), "{leak} in {t}");
            }
        }
        other => panic!("expected failed, got {other:?}"),
    }

    // Two agents change the same version: the second is a conflict.
    let version = match h.explain("object:alpha").unwrap() {
        Some(x) => x["version"].as_str().unwrap().to_owned(),
        None => {
            assert!(s.fake.is_some(), "a recorded object is explained");
            "v:0000000000000000".to_owned()
        }
    };
    for (actor, title, key) in [
        ("actor:agent-one", "one", "k-up-1"),
        ("actor:agent-two", "two", "k-up-2"),
    ] {
        let up = EventRequest::new(
            "object.updated",
            actor,
            Some("object:alpha"),
            key,
            json!({"object_id": "object:alpha", "base_version": version, "title": title}),
        )
        .unwrap();
        if actor.ends_with("two") {
            s.expect(Outcome::Conflict {
                conflict_id: "conflict:0123456789abcdef".into(),
            });
            match h.submit_event(&up).unwrap() {
                Outcome::Conflict { conflict_id } => {
                    assert!(conflict_id.starts_with("conflict:"), "{conflict_id}")
                }
                other => panic!("expected conflict, got {other:?}"),
            }
        } else {
            s.expect(Outcome::Completed {
                seq: 20,
                hash: "blake3:bb".into(),
            });
            seq_of(&h.submit_event(&up).unwrap());
        }
    }

    // A transaction that needs review waits, naming the decision.
    s.expect(Outcome::ApprovalRequired {
        decision_id: "urn:srcos:decision:x".into(),
    });
    let txn = TxnRequest::new(
        "actor:agent-one",
        "agent-txn:one",
        json!({"object_ids": ["object:alpha"], "operation": "update",
               "changes": {"object:alpha": {"title": "reviewed"}},
               "base_versions": {"object:alpha": version}}),
        "k-txn",
    )
    .unwrap();
    match h.submit_transaction(&txn).unwrap() {
        Outcome::ApprovalRequired { decision_id } => {
            assert!(
                decision_id.starts_with("urn:srcos:decision:"),
                "{decision_id}"
            )
        }
        other => panic!("expected approval required, got {other:?}"),
    }

    // Sessions and turns: open, work, close; a cancelled turn.
    let session = SessionRequest::new("actor:agent-one", "urn:srcos:session:s1", "k-s1").unwrap();
    let t1 =
        TurnRequest::new("actor:agent-one", "urn:srcos:session:s1", "turn:t1", "k-t1").unwrap();
    let mut t2 =
        TurnRequest::new("actor:agent-one", "urn:srcos:session:s1", "turn:t2", "k-t2").unwrap();
    t2.reason = Some("the user pressed stop".into());
    for step in 0..6 {
        s.expect(Outcome::Completed {
            seq: 30 + step,
            hash: "blake3:cc".into(),
        });
    }
    seq_of(&h.open_session(&session).unwrap());
    seq_of(&h.open_turn(&t1).unwrap());
    seq_of(&h.close_turn(&t1).unwrap());
    seq_of(&h.open_turn(&t2).unwrap());
    seq_of(&h.cancel_turn(&t2).unwrap());
    seq_of(&h.close_session(&session).unwrap());
    // Retrying a multi-event request records nothing twice.
    s.expect(Outcome::Duplicate {
        seq: 1,
        hash: "blake3:dd".into(),
    });
    assert!(matches!(
        h.open_turn(&t1).unwrap(),
        Outcome::Duplicate { .. }
    ));

    // One more event for a session whose orphan queue is full is
    // quarantined at once, with the decision that did it.
    s.expect(Outcome::Quarantined {
        decision_id: "urn:srcos:decision:orphan-queue-full:0".into(),
    });
    let mut late = EventRequest::new(
        "note.added",
        "actor:agent-one",
        None,
        "k-late",
        json!({"n": "one too many"}),
    )
    .unwrap();
    late.session = Some(sourceos_syncd::SessionRef::new("urn:srcos:session:never-opened").unwrap());
    match h.submit_event(&late).unwrap() {
        Outcome::Quarantined { decision_id } => assert!(
            decision_id.starts_with("urn:srcos:decision:orphan-queue-full:"),
            "{decision_id}"
        ),
        other => panic!("expected quarantined, got {other:?}"),
    }

    // Queries.
    assert_eq!(h.explain("object:never-seen").unwrap(), None);
    let status = h.status().unwrap();
    assert_eq!(status.active_device, "device:test-a");
    assert!(status.conflict_count >= 1, "{}", status.summary);
    assert!(h.capabilities().unwrap().is_array());
}

#[test]
fn in_process_host_keeps_the_contract() {
    let home = prepared_home();
    let options = OpenOptions {
        policy: std::sync::Arc::new(LocalPolicy::load(home.path()).unwrap()),
        ..OpenOptions::default()
    };
    let store = Store::open(home.path(), options).unwrap();
    let host = LocalHost::new(store, surface());
    contract(&Subject {
        host: &host,
        fake: None,
    });
}

#[test]
fn daemon_client_keeps_the_contract() {
    let home = prepared_home();
    let _daemon = home.start_daemon();
    let host = DaemonHost::new(home.daemon_socket().unwrap(), surface());
    contract(&Subject {
        host: &host,
        fake: None,
    });
}

#[test]
fn scripted_fake_keeps_the_contract_and_records_every_request() {
    // The status the fake answers is a real one.
    let home = prepared_home();
    let store = Store::open(home.path(), OpenOptions::default()).unwrap();
    let mut status = sourceos_syncd::status(&store).unwrap();
    drop(store);
    status.conflict_count = 1;
    let fake = ScriptedHost::new();
    assert!(fake.push_status(status));
    assert!(fake.push_explanation(Some(json!({"version": "v:0123456789abcdef"}))));
    assert!(fake.push_explanation(None));
    assert!(fake.push_capabilities(json!([])));
    contract(&Subject {
        host: &fake,
        fake: Some(&fake),
    });
    let requests = fake.requests();
    assert!(matches!(requests[0], HostRequest::SubmitEvent(_)));
    assert!(requests.contains(&HostRequest::Status));
    assert!(requests
        .iter()
        .any(|r| matches!(r, HostRequest::CancelTurn(t) if t.reason.is_some())));
    assert_eq!(requests.len(), 19);
}

#[test]
fn scripted_fake_replays_cancellations_and_faults_without_panicking() {
    let fake = ScriptedHost::new();
    let t = TurnRequest::new("actor:agent-one", "urn:srcos:session:s1", "turn:t1", "k").unwrap();
    assert!(fake.push_outcome(Outcome::Cancelled));
    assert!(fake.push_fault("socket closed"));
    assert_eq!(fake.open_turn(&t).unwrap(), Outcome::Cancelled);
    assert!(fake.close_turn(&t).is_err());
    // Nothing queued: submissions complete, queries say nothing is scripted.
    assert!(matches!(
        fake.cancel_turn(&t).unwrap(),
        Outcome::Completed { .. }
    ));
    assert!(fake.status().is_err());
    assert!(fake.capabilities().is_err());
    assert_eq!(fake.explain("object:x").unwrap(), None);
    assert_eq!(fake.requests().len(), 6);
}

#[test]
fn facade_inputs_are_validated_newtypes() {
    assert!(FacadeKey::new("k-001").is_ok());
    assert!(FacadeKey::new("").is_err());
    assert!(FacadeKey::new("a".repeat(256)).is_ok());
    assert!(FacadeKey::new("a".repeat(257)).is_err());
    assert!(FacadeKey::new("a\nb").is_err());
    assert!(SurfaceVersion::new("turtleterm/0.4.1").is_ok());
    assert!(SurfaceVersion::new("").is_err());
    assert!(SurfaceVersion::new("x".repeat(257)).is_err());
    assert!(SurfaceVersion::new("v\u{7}1").is_err());
    // Deserialising runs the same checks.
    assert!(serde_json::from_value::<FacadeKey>(json!("")).is_err());
    assert!(serde_json::from_value::<SurfaceVersion>(json!("a\tb")).is_err());
    let e = EventRequest::new("syncd.repair", "actor:a", None, "k", json!({})).unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(EventRequest::new("note.added", "actor:a", None, "k", json!([1])).is_err());
    assert!(EventRequest::new("note.added", "not an actor", None, "k", Value::Null).is_err());
}
