//! End-to-end tests of store-level commands through the binary: locking
//! between processes, `rebuild`, and the status forms.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use support::{event, stderr, stdout, Home};

#[test]
fn a_second_process_is_told_who_holds_the_store() {
    let home = Home::new();
    // An ingest waiting on an open stdin holds the store.
    let mut holder = home
        .cmd(&["ingest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holder");
    let mut stdin = holder.stdin.take().expect("stdin");
    writeln!(stdin, "{}", event(1)).unwrap();
    let mut first = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("appended"));

    let out = home.run(&["status"]);
    assert_eq!(out.status.code(), Some(4));
    let msg = stderr(&out);
    assert!(msg.contains(&format!("process {}", holder.id())), "{msg}");
    assert!(msg.contains("ingest"), "{msg}");

    drop(stdin);
    assert!(holder.wait().unwrap().success());
    assert_eq!(home.run(&["status"]).status.code(), Some(0));
}

#[test]
fn rebuild_all_and_one_projection_keeps_status() {
    let home = Home::new();
    home.ingest(&(0..500).map(event).collect::<Vec<_>>());
    let before = home.status_json();
    let out = home.run(&["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("rebuilt p.subjects"));
    let out = home.run(&["rebuild", "--projection", "summary", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut after = home.status_json();
    let mut before = before;
    before.as_object_mut().unwrap().remove("generated_at");
    after.as_object_mut().unwrap().remove("generated_at");
    assert_eq!(before, after);
    assert_eq!(home.run(&["doctor"]).status.code(), Some(0));
    let out = home.run(&["rebuild", "--projection", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("known: idempotency, subjects, summary"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_forms_carry_the_contract_keys() {
    let home = Home::new();
    home.ingest(&(0..20).map(event).collect::<Vec<_>>());
    let s = home.status_json();
    for key in [
        "schema_version",
        "summary",
        "generated_at",
        "health",
        "daemon_available",
        "daemon_state",
        "active_profile",
        "active_workspace",
        "active_device",
        "degraded",
        "policy_blocked",
        "conflict_count",
        "repair_needed",
        "log",
        "projections",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}");
    }
    assert_eq!(s["health"], "clean");
    assert_eq!(s["log"]["head_seq"], 20);
    assert_eq!(s["log"]["event_count"], 20);
    assert_eq!(s["active_device"], "device:test-a");
    assert_eq!(s["projections"]["subjects"]["checkpoint_seq"], 20);
    let line = stdout(&home.run(&["status", "--line"]));
    assert_eq!(line.lines().count(), 1);
    assert!(
        line.contains("clean") && line.contains("device:test-a"),
        "{line}"
    );
    let text = stdout(&home.run(&["status"]));
    assert!(text.contains("projection subjects"), "{text}");
}

#[test]
fn init_refuses_an_existing_store_and_bad_ids() {
    let home = Home::new();
    let out = home.run(&["init"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let fresh = Home::empty();
    let out = fresh.run(&["init", "--device", "has space"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--device"), "{}", stderr(&out));
    assert!(
        !fresh.path().join("db").exists(),
        "a refused init must create nothing"
    );
}

#[test]
fn syncd_home_environment_variable_selects_the_home() {
    let home = Home::new();
    let out = std::process::Command::new(support::bin())
        .args(["status", "--line"])
        .env("SYNCD_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("device:test-a"));
}

#[test]
fn damaged_database_files_exit_4_with_a_message_not_a_panic() {
    for damage in ["truncate", "garbage", "snapshot"] {
        let home = Home::new();
        home.ingest(&(0..50).map(event).collect::<Vec<_>>());
        let db = home.path().join("db");
        match damage {
            "truncate" => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(db.join("db"))
                    .unwrap();
                f.set_len(100).unwrap();
            }
            "garbage" => {
                let mut bytes = std::fs::read(db.join("db")).unwrap();
                for b in bytes.iter_mut().skip(512).take(4096) {
                    *b ^= 0xa5;
                }
                std::fs::write(db.join("db"), bytes).unwrap();
            }
            _ => {
                for entry in std::fs::read_dir(&db).unwrap() {
                    let p = entry.unwrap().path();
                    if p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("snap.")
                    {
                        std::fs::write(&p, b"xx").unwrap();
                    }
                }
            }
        }
        for cmd in [&["status"][..], &["doctor"], &["log"], &["verify"]] {
            let out = home.run(cmd);
            let err = stderr(&out);
            assert!(!err.contains("panicked"), "{damage} {cmd:?}: {err}");
            if out.status.code() != Some(0) {
                assert_eq!(out.status.code(), Some(4), "{damage} {cmd:?}: {err}");
                assert!(
                    err.contains("syncd: error:") && err.contains("db"),
                    "{damage} {cmd:?}: {err}"
                );
            }
        }
    }
}
