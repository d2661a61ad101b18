//! End-to-end corruption tests: damage each derived tree the way a disk or
//! a stray tool would (through sled directly, while no syncd runs), and
//! watch `syncd doctor` find it (exit 1), `doctor --repair` rebuild it from
//! the log (exit 0) and leave status as it was. Damage to an event is
//! durable damage: exit 3, named by sequence, and `--repair` changes
//! nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;
use support::{event, stderr, stdout, Home};

const DERIVED: [&str; 5] = [
    "p.idempotency",
    "p.subjects",
    "p.summary",
    "p.origins",
    "p.registry",
];
const CHECKPOINT: &[u8] = b"\x00checkpoint";

/// A home with free-form events, registered state and events imported
/// from another device, so that every derived tree holds records.
fn seeded() -> Home {
    let home = Home::new();
    let mut lines: Vec<String> = (0..290).map(event).collect();
    lines.push(r#"{"kind":"schema.registered","actor":"actor:u","payload":{"schema_id":"schema:s","object_type":"file","schema_version":"v1"}}"#.into());
    lines.push(r#"{"kind":"actor.registered","actor":"actor:u","payload":{"actor_id":"actor:agent-one","actor_type":"agent","trust_level":"local"}}"#.into());
    lines.push(r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:s"}}"#.into());
    let out = home.ingest(&lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let peer = Home::empty();
    assert_eq!(
        peer.run(&[
            "init",
            "--device",
            "device:peer",
            "--profile",
            "profile:local-dev"
        ])
        .status
        .code(),
        Some(0)
    );
    peer.ingest(&(1000..1007).map(event).collect::<Vec<_>>());
    let bundle = peer.path().join("peer.bundle");
    assert_eq!(
        peer.run(&["export", "--out", bundle.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let out = home.run(&["import", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(home.head(), 300);
    home
}

fn first_data_key(tree: &sled::Tree) -> Vec<u8> {
    tree.iter()
        .map(|r| r.unwrap().0.to_vec())
        .find(|k| k.as_slice() != CHECKPOINT)
        .expect("tree has a data record")
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Garble,
    Delete,
    Add,
    DropTree,
    GarbleCheckpoint,
}

fn damage(home: &Home, tree: &str, how: Damage) {
    let db = home.raw_db();
    let t = db.open_tree(tree).unwrap();
    match how {
        Damage::Garble => {
            let k = first_data_key(&t);
            let mut v = t.get(&k).unwrap().unwrap().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xff;
            t.insert(k, v).unwrap();
        }
        Damage::Delete => {
            let k = first_data_key(&t);
            t.remove(k).unwrap();
        }
        Damage::Add => {
            t.insert(b"\x01stray-record", b"0123456789abcdef".to_vec())
                .unwrap();
        }
        Damage::DropTree => {
            drop(t);
            assert!(db.drop_tree(tree).unwrap());
        }
        Damage::GarbleCheckpoint => {
            let mut v = t.get(CHECKPOINT).unwrap().unwrap().to_vec();
            v[0] ^= 0x01;
            t.insert(CHECKPOINT, v).unwrap();
        }
    }
    db.flush().unwrap();
}

/// The status document without what legitimately changes when the repair
/// records its report as one more event: the time, the head, the
/// checkpoints and the count of repair events.
fn comparable(mut s: Value) -> Value {
    let m = s.as_object_mut().unwrap();
    m.remove("generated_at");
    m.remove("summary");
    m.remove("log");
    if let Some(p) = m.get_mut("projections").and_then(Value::as_object_mut) {
        for v in p.values_mut() {
            v.as_object_mut().unwrap().remove("checkpoint_seq");
        }
    }
    if let Some(k) = m.get_mut("events_by_kind").and_then(Value::as_object_mut) {
        k.remove("syncd.doctor.repaired");
    }
    s
}

fn doctor_json(home: &Home, args: &[&str]) -> (Option<i32>, Value) {
    let mut full = vec!["doctor", "--json"];
    full.extend_from_slice(args);
    let out = home.run(&full);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor JSON: {e}: {} {}", stdout(&out), stderr(&out)));
    (out.status.code(), v)
}

fn check_repair_cycle(tree: &str, how: Damage) {
    let home = seeded();
    let before = home.status_json();
    damage(&home, tree, how);

    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(1), "{tree} {how:?}: {report:#}");
    let findings = report["findings"].as_array().unwrap();
    assert!(!findings.is_empty());
    assert!(
        findings.iter().all(|f| f["class"] == "repairable"),
        "{tree} {how:?}: {report:#}"
    );
    assert!(
        findings.iter().any(|f| f["tree"] == tree),
        "{tree} {how:?}: doctor did not name the tree: {report:#}"
    );
    // Stable ids: the same damage gives the same finding ids.
    let (_, again) = doctor_json(&home, &[]);
    assert_eq!(again["findings"], report["findings"]);

    let (code, repaired) = doctor_json(&home, &["--repair"]);
    assert_eq!(code, Some(0), "{tree} {how:?}: {repaired:#}");
    assert_eq!(repaired["outcome"], "repaired");
    let repair = &repaired["repair"];
    assert!(repair["rebuilt"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| format!("p.{}", r[0].as_str().unwrap()) == tree));
    assert_eq!(repair["report_event_seq"], 301);

    let (code, after) = doctor_json(&home, &[]);
    assert_eq!(code, Some(0), "{tree} {how:?}: {after:#}");
    assert!(after["findings"].as_array().unwrap().is_empty());

    let now = home.status_json();
    assert_eq!(
        comparable(now.clone()),
        comparable(before.clone()),
        "{tree} {how:?}"
    );
    assert_eq!(now["log"]["head_seq"], 301);
    assert_eq!(now["events_by_kind"]["syncd.doctor.repaired"], 1);
    // The repair report is the one new event.
    let last = home.run(&["log", "--from", "301", "--json"]);
    let last: Value = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(last["kind"], "syncd.doctor.repaired");
    assert_eq!(last["prev_hash"], before["log"]["head_hash"]);
}

#[test]
fn garbled_record_in_each_derived_tree_is_found_and_repaired() {
    for tree in DERIVED {
        check_repair_cycle(tree, Damage::Garble);
    }
}

#[test]
fn deleted_record_in_each_derived_tree_is_found_and_repaired() {
    for tree in DERIVED {
        check_repair_cycle(tree, Damage::Delete);
    }
}

#[test]
fn added_record_in_each_derived_tree_is_found_and_repaired() {
    for tree in DERIVED {
        check_repair_cycle(tree, Damage::Add);
    }
}

#[test]
fn dropped_derived_tree_is_found_and_repaired() {
    for tree in DERIVED {
        check_repair_cycle(tree, Damage::DropTree);
    }
}

#[test]
fn garbled_checkpoint_is_found_and_repaired() {
    check_repair_cycle("p.subjects", Damage::GarbleCheckpoint);
}

/// After an upgrade that changed a projection's record format, the doctor
/// reports the tree as outdated (a repairable warning, not damage) and the
/// next command that opens the store for writing rebuilds it from the log
/// by itself: no `doctor --repair` needed, nothing appended, status as it
/// was, and the rebuilt indexes answer as before.
#[test]
fn a_tree_left_by_an_older_syncd_is_rebuilt_by_the_next_writable_open() {
    for tree in DERIVED {
        let home = seeded();
        let before = home.status_json();
        let out = home.run(&[
            "drill",
            "damage-derived",
            "--tree",
            tree,
            "--mode",
            "outdated",
        ]);
        assert_eq!(out.status.code(), Some(0), "{tree}: {}", stderr(&out));
        assert!(stdout(&out).contains("record format"), "{}", stdout(&out));

        let (code, report) = doctor_json(&home, &[]);
        assert_eq!(code, Some(1), "{tree}: {report:#}");
        let findings = report["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 1, "{tree}: {report:#}");
        assert_eq!(findings[0]["code"], "derived.outdated");
        assert_eq!(findings[0]["severity"], "warning");
        assert_eq!(findings[0]["class"], "repairable");
        assert_eq!(findings[0]["tree"], tree);

        // `status` opens for writing: it rebuilds the tree first.
        let now = home.status_json();
        assert_eq!(
            comparable(now.clone()),
            comparable(before.clone()),
            "{tree}"
        );
        assert_eq!(now["health"], "clean", "{tree}: {now:#}");
        assert_eq!(now["log"]["head_seq"], before["log"]["head_seq"]);
        let (code, after) = doctor_json(&home, &[]);
        assert_eq!(code, Some(0), "{tree}: {after:#}");
        assert!(after["findings"].as_array().unwrap().is_empty());
        // A key seen before the upgrade is still a duplicate.
        let out = home.ingest(&[event(5)]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(
            home.status_json()["log"]["head_seq"],
            before["log"]["head_seq"],
            "{tree}: a known idempotency key appended again"
        );
    }
}

/// An upgrade that adds a projection: the store's record of held
/// projections (`projection:<name>` keys in meta) does not name it and it
/// has no tree. The doctor says it is
/// new (a warning), status builds it and is as before; a tree dropped by
/// damage, by contrast, stays damaged until a repair.
#[test]
fn a_projection_new_to_the_store_is_built_by_the_next_writable_open() {
    let home = seeded();
    let before = home.status_json();
    {
        let db = home.raw_db();
        let meta = db.open_tree("meta").unwrap();
        assert!(meta.remove("projection:sessions").unwrap().is_some());
        assert!(meta.get("projection:registry").unwrap().is_some());
        db.drop_tree("p.sessions").unwrap();
        db.flush().unwrap();
    }
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report:#}");
    assert_eq!(findings[0]["code"], "derived.outdated");
    assert_eq!(findings[0]["severity"], "warning");
    assert_eq!(findings[0]["tree"], "p.sessions");

    let now = home.status_json();
    assert_eq!(comparable(now.clone()), comparable(before.clone()));
    assert_eq!(now["health"], "clean", "{now:#}");
    let (code, after) = doctor_json(&home, &[]);
    assert_eq!(code, Some(0), "{after:#}");

    // Now held: dropping it is damage again.
    damage(&home, "p.sessions", Damage::DropTree);
    let s = home.status_json();
    assert_eq!(s["projections"]["sessions"]["state"], "damaged");
    let (_, report) = doctor_json(&home, &[]);
    assert_eq!(report["findings"][0]["code"], "derived.tree_missing");
}

/// The drill cannot age a tree that is not a projection's.
#[test]
fn the_outdated_drill_refuses_what_is_no_projection() {
    let home = seeded();
    let out = home.run(&[
        "drill",
        "damage-derived",
        "--tree",
        "p.nothing",
        "--mode",
        "outdated",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("p.nothing"), "{}", stderr(&out));
}

#[test]
fn status_reports_damaged_derived_state() {
    let home = seeded();
    damage(&home, "p.summary", Damage::DropTree);
    let s = home.status_json();
    assert_eq!(s["health"], "repair_recommended");
    assert_eq!(s["repair_needed"], true);
    assert_eq!(s["projections"]["summary"]["state"], "damaged");
}

#[test]
fn damaged_idempotency_index_refuses_ingest_until_repaired() {
    let home = seeded();
    damage(&home, "p.idempotency", Damage::DropTree);
    let out = home.ingest(&[event(1000)]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("doctor --repair"), "{}", stderr(&out));
    assert_eq!(home.run(&["doctor", "--repair"]).status.code(), Some(0));
    assert_eq!(home.ingest(&[event(1000)]).status.code(), Some(0));
}

fn flip_event_byte(home: &Home, seq: u64, offset_from_middle: isize) {
    let db = home.raw_db();
    let events = db.open_tree("events").unwrap();
    let key = seq.to_be_bytes();
    let mut v = events.get(key).unwrap().unwrap().to_vec();
    let i = (v.len() as isize / 2 + offset_from_middle) as usize;
    v[i] ^= 0x04;
    events.insert(key, v).unwrap();
    db.flush().unwrap();
}

#[test]
fn flipped_byte_in_an_event_is_durable_damage_and_repair_changes_nothing() {
    let home = seeded();
    flip_event_byte(&home, 123, 0);
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(3), "{report:#}");
    let f = &report["findings"][0];
    assert_eq!(f["class"], "needs_review");
    assert_eq!(f["seq"], 123);
    assert_eq!(f["tree"], "events");
    let text = stdout(&home.run(&["doctor"]));
    assert!(text.contains(":123"), "{text}");

    let dump = home.raw_dump();
    let (code, repaired) = doctor_json(&home, &["--repair"]);
    assert_eq!(code, Some(3), "{repaired:#}");
    assert!(repaired["repair"]["rebuilt"].as_array().unwrap().is_empty());
    assert!(!repaired["repair"]["remains_for_human"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(home.raw_dump(), dump, "--repair modified the store");

    // verify agrees and names the event; ingest refuses to extend a
    // damaged chain only at the head, so it still works here.
    let v = home.run(&["verify"]);
    assert_eq!(v.status.code(), Some(3));
    assert!(stdout(&v).contains("123"));
}

#[test]
fn missing_event_is_a_gap_named_by_sequence() {
    let home = seeded();
    {
        let db = home.raw_db();
        db.open_tree("events")
            .unwrap()
            .remove(50u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(3), "{report:#}");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.iter().any(|id| id.starts_with("log.gap:events:51")),
        "{ids:?}"
    );
    assert!(
        ids.iter()
            .any(|id| id.starts_with("log.chain_break:events:51")),
        "{ids:?}"
    );
}

#[test]
fn damaged_head_event_blocks_writes_but_not_reads() {
    let home = seeded();
    flip_event_byte(&home, 300, 3);
    let out = home.ingest(&[event(5000)]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("log is damaged"), "{}", stderr(&out));
    let s = home.status_json();
    assert_eq!(s["degraded"], true);
    assert_eq!(home.run(&["doctor"]).status.code(), Some(3));
}

#[test]
fn verify_proves_a_head() {
    let home = seeded();
    let head = home.status_json()["log"]["head_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = home.run(&["verify", "--expect-head", &head]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains(&head));
    let other = format!("blake3:{}", "0".repeat(64));
    assert_eq!(
        home.run(&["verify", "--expect-head", &other]).status.code(),
        Some(3)
    );
    assert_eq!(
        home.run(&["verify", "--expect-head", "nonsense"])
            .status
            .code(),
        Some(2)
    );
}
