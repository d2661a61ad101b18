//! End-to-end tests of `syncd track DIR` through the real binary: files of
//! a workspace become `file` objects with the right size and blake3 hash,
//! a rescan records exactly what changed and nothing when nothing did,
//! `--dry-run` appends nothing, and bad directories fail clearly.
//!
//! Expected hashes are fixed vectors computed with the reference blake3
//! crate, not with the code under test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;
use support::{stderr, stdout, Home};

const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

/// (path, content, blake3 hex) of the first scan.
fn first_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "a.txt",
            b"alpha\n".to_vec(),
            "ac678d92b3d739773d18cd952cfcea443fa4a5a98ffc9554b66795bb22d5532d",
        ),
        ("empty.txt", Vec::new(), EMPTY),
        (
            "nested/deep/b.md",
            b"# beta\n".to_vec(),
            "b16e5c2ceadcda51af44993967d7ba02ff1192a0e22344a9e3117255c09361f8",
        ),
        (
            "naïve 日本.txt",
            "ünïcödé\n".as_bytes().to_vec(),
            "d0186f1ff9eaef81e295554f963ba7629682556d3be8e938ec5cf9e48bc88cb0",
        ),
        (
            "nested/c.txt",
            b"gamma\n".to_vec(),
            "c10c784db818e2bacf20404299617a484de6ff7a85c8c7e350eeac3ef2eae666",
        ),
        (
            // Larger than the scanner's hash buffer.
            "data/big.bin",
            (0..200_000u32).map(|i| (i % 251) as u8).collect(),
            "55409142cced2ec79897459f170b6d22565daf883710b4ad7aeeddaef54244b4",
        ),
    ]
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn track(home: &Home, dir: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["track", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = home.run(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code(), report)
}

fn track_ok(home: &Home, dir: &Path, extra: &[&str]) -> Value {
    let (code, report) = track(home, dir, extra);
    assert_eq!(code, Some(0), "{report}");
    report
}

fn counts(r: &Value) -> [u64; 5] {
    [
        "created",
        "updated",
        "deleted",
        "unchanged",
        "skipped_count",
    ]
    .map(|k| r[k].as_u64().unwrap())
}

/// The workspace's objects as path -> explanation, found through
/// `syncd objects --json` and then `syncd explain`.
fn recorded(home: &Home, alias: &str) -> BTreeMap<String, Value> {
    let out = home.run(&["objects", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let prefix = format!("object:file:{alias}:");
    let mut by_path = BTreeMap::new();
    for o in list {
        let id = o["object_id"].as_str().unwrap();
        let Some(key) = id.strip_prefix(&prefix) else {
            continue;
        };
        assert_eq!(key.len(), 24, "{id}");
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(o["object_type"], "file");
        let out = home.run(&["explain", id, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let x: Value = serde_json::from_slice(&out.stdout).unwrap();
        let path = x["record"]["path"].as_str().unwrap().to_owned();
        by_path.insert(path, x);
    }
    by_path
}

fn active(objects: &BTreeMap<String, Value>) -> BTreeMap<String, (u64, String)> {
    objects
        .iter()
        .filter(|(_, x)| x["state"] == "active")
        .map(|(p, x)| {
            (
                p.clone(),
                (
                    x["record"]["size"].as_u64().unwrap(),
                    x["record"]["content_hash"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn expected(files: &[(&str, Vec<u8>, &str)]) -> BTreeMap<String, (u64, String)> {
    files
        .iter()
        .map(|(p, c, h)| ((*p).to_owned(), (c.len() as u64, format!("blake3:{h}"))))
        .collect()
}

/// INV-TRACK-03, through the binary.
#[test]
fn tracks_a_workspace_then_records_exactly_what_changed() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    let mut files = first_files();
    for (p, c, _) in &files {
        write(ws.path(), p, c);
    }
    // Not tracked: git metadata and symbolic links.
    write(ws.path(), ".git/HEAD", b"ref: refs/heads/main\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink("a.txt", ws.path().join("link-to-a")).unwrap();

    let r = track_ok(&home, ws.path(), &["--workspace", "proj"]);
    assert_eq!(r["workspace_id"], "workspace:proj");
    assert_eq!(r["schema_registered"], true);
    assert_eq!(r["dry_run"], false);
    #[cfg(unix)]
    {
        assert_eq!(counts(&r), [6, 0, 0, 0, 1]);
        assert_eq!(r["skipped"][0]["path"], "link-to-a");
        assert_eq!(r["skipped"][0]["code"], "symlink");
    }
    let objects = recorded(&home, "proj");
    assert_eq!(active(&objects), expected(&files));
    let a = &objects["a.txt"];
    assert_eq!(a["record"]["workspace_id"], "workspace:proj");
    assert_eq!(a["record"]["schema_id"], "schema:workspace-file:v1");
    assert_eq!(a["object_type"], "file");
    assert_eq!(a["schema"]["registered"], true);
    assert_eq!(a["created_by"], "actor:workspace-tracker");

    // Change one, add one, delete one.
    let old_a_version = a["version"].as_str().unwrap().to_owned();
    write(ws.path(), "a.txt", b"alpha, changed\n");
    write(ws.path(), "new.txt", b"delta\n");
    fs::remove_file(ws.path().join("nested/c.txt")).unwrap();
    let head = home.head();
    let r = track_ok(&home, ws.path(), &["--workspace", "proj"]);
    assert_eq!(&counts(&r)[..4], &[1, 1, 1, 4]);
    assert_eq!(r["schema_registered"], false);
    assert_eq!(home.head(), head + 3, "exactly three events");
    files.retain(|(p, _, _)| *p != "nested/c.txt" && *p != "a.txt");
    files.push((
        "a.txt",
        b"alpha, changed\n".to_vec(),
        "9ee9a25700d689588f7465dbba0e53e7ec04259d157ca1965cfe63ff918b0a90",
    ));
    files.push((
        "new.txt",
        b"delta\n".to_vec(),
        "ba73f69e9b2835094da5db5bef36673c561a75271c4d12d4acd41ea1473124cb",
    ));
    let objects = recorded(&home, "proj");
    assert_eq!(active(&objects), expected(&files));
    assert_eq!(objects["nested/c.txt"]["state"], "deleted");
    // The update was based on the version the first scan recorded.
    let history = objects["a.txt"]["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["base"], old_a_version.as_str());

    // Nothing changed: nothing is appended.
    let head = home.head();
    let r = track_ok(&home, ws.path(), &["--workspace", "proj"]);
    assert_eq!(&counts(&r)[..4], &[0, 0, 0, 6]);
    assert_eq!(r["head_seq"], head);
    assert_eq!(home.head(), head, "an unchanged workspace appends nothing");

    let out = home.run(&["doctor"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn dry_run_prints_the_plan_and_appends_nothing() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    write(ws.path(), "a.txt", b"alpha\n");
    write(ws.path(), "b.txt", b"");

    let before = home.raw_dump();
    let (code, r) = track(&home, ws.path(), &["--workspace", "proj", "--dry-run"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["schema_registered"], true);
    assert_eq!(&counts(&r)[..4], &[2, 0, 0, 0]);
    let changes = r["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1]["kind"], "created");
    assert_eq!(changes[1]["path"], "b.txt");
    assert_eq!(changes[1]["content_hash"], format!("blake3:{EMPTY}"));
    assert_eq!(home.raw_dump(), before, "a dry run modifies nothing");

    track_ok(&home, ws.path(), &["--workspace", "proj"]);
    write(ws.path(), "a.txt", b"alpha, changed\n");
    let head = home.head();
    let (code, r) = track(&home, ws.path(), &["--workspace", "proj", "--dry-run"]);
    assert_eq!(code, Some(0));
    assert_eq!(&counts(&r)[..4], &[0, 1, 0, 1]);
    let version = recorded(&home, "proj")["a.txt"]["version"].clone();
    assert_eq!(r["changes"][0]["kind"], "updated");
    assert_eq!(r["changes"][0]["base_version"], version);
    assert_eq!(home.head(), head);

    // The human form names the change and says nothing was recorded.
    let out = home.run(&[
        "track",
        ws.path().to_str().unwrap(),
        "--workspace",
        "proj",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("nothing recorded"), "{text}");
    assert!(text.contains("update   a.txt"), "{text}");
    assert_eq!(home.head(), head);
}

#[test]
fn a_missing_directory_is_a_clear_usage_error() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    let missing = ws.path().join("does-not-exist");
    let out = home.run(&["track", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("does-not-exist"), "{err}");

    write(ws.path(), "file", b"x");
    let out = home.run(&["track", ws.path().join("file").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );

    let out = home.run(&["track", ws.path().to_str().unwrap(), "--workspace", "a:b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--workspace"), "{}", stderr(&out));
    assert_eq!(home.head(), 0);
}

#[test]
fn more_files_than_the_bound_are_refused_and_nothing_is_recorded() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write(ws.path(), &format!("f{i}"), b"x");
    }
    let out = home.run(&["track", ws.path().to_str().unwrap(), "--max-files", "2"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("more than 2 files"),
        "{}",
        stderr(&out)
    );
    assert_eq!(home.head(), 0);
    let out = home.run(&["track", ws.path().to_str().unwrap(), "--max-files", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_default_alias_is_the_directory_name_and_the_home_is_not_tracked() {
    let parent = tempfile::tempdir().unwrap();
    let ws = parent.path().join("My Project!");
    write(&ws, "src/main.rs", b"fn main() {}\n");
    // The store lives inside the workspace: it must not track itself.
    let state = ws.join(".state");
    let run = |args: &[&str]| {
        std::process::Command::new(support::bin())
            .arg("--home")
            .arg(&state)
            .args(args)
            .env_remove("SYNCD_HOME")
            .output()
            .unwrap()
    };
    let out = run(&["init", "--device", "device:test-a"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&["track", ws.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["workspace_id"], "workspace:My-Project");
    assert_eq!(counts(&r), [1, 0, 0, 0, 1]);
    assert_eq!(r["skipped"][0]["path"], ".state");
    assert_eq!(r["skipped"][0]["code"], "excluded");
    let out = run(&["objects", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0]["object_id"]
        .as_str()
        .unwrap()
        .starts_with("object:file:My-Project:"));

    // The human form says what happened.
    write(&ws, "README", b"hi\n");
    let out = run(&["track", ws.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("1 created, 0 updated, 0 deleted, 1 unchanged"),
        "{text}"
    );
    let out = run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}
