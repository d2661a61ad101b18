//! End-to-end tests of bundles through the binary: two homes as two devices
//! exchange bundles and converge; re-importing is a no-op; a restore into a
//! fresh home reproduces the log byte for byte (proved by the head hash) and
//! the same status; every kind of bad bundle is refused and appends nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{event, json_lines, stderr, stdout, Home};

fn device(name: &str, profile: &str) -> Home {
    Home::device(name, profile)
}

fn export(home: &Home, extra: &[&str]) -> std::path::PathBuf {
    let out_file = home.path().join(format!("export-{}.bundle", home.head()));
    let mut args = vec!["export", "--out", out_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = home.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    out_file
}

fn import(home: &Home, file: &std::path::Path) -> std::process::Output {
    home.run(&["import", file.to_str().unwrap(), "--json"])
}

/// The set of (origin device, origin seq, origin hash) in a log: two
/// devices have converged when these sets are equal.
fn origins(home: &Home) -> BTreeSet<(String, u64, String)> {
    json_lines(&home.run(&["log", "--json", "--limit", "100000"]))
        .into_iter()
        .map(|d| {
            let seq = d["origin_seq"]
                .as_u64()
                .unwrap_or_else(|| d["seq"].as_u64().unwrap());
            let hash = d["origin_hash"]
                .as_str()
                .unwrap_or_else(|| d["hash"].as_str().unwrap())
                .to_owned();
            (d["origin_device"].as_str().unwrap().to_owned(), seq, hash)
        })
        .collect()
}

#[test]
fn two_devices_exchange_bundles_and_converge() {
    let a = device("device:a", "profile:p");
    let b = device("device:b", "profile:p");
    a.ingest(&(0..40).map(event).collect::<Vec<_>>());
    b.ingest(&(100..125).map(event).collect::<Vec<_>>());

    let from_a = export(&a, &[]);
    let out = import(&b, &from_a);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["appended"].as_u64(), r["duplicates"].as_u64()),
        (Some(40), Some(0))
    );

    // Re-importing is a no-op.
    let again: Value = serde_json::from_slice(&import(&b, &from_a).stdout).unwrap();
    assert_eq!(
        (again["appended"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(40))
    );
    assert_eq!(b.head(), 65);

    // B's bundle carries A's events back; A recognises its own.
    let from_b = export(&b, &[]);
    let back: Value = serde_json::from_slice(&import(&a, &from_b).stdout).unwrap();
    assert_eq!(
        (back["appended"].as_u64(), back["duplicates"].as_u64()),
        (Some(25), Some(40))
    );
    assert_eq!(origins(&a), origins(&b));
    assert_eq!(a.head(), 65);

    // Imported events keep origin device, sequence and hash.
    let first_on_b: Value = serde_json::from_slice(
        &b.run(&["log", "--from", "26", "--limit", "1", "--json"])
            .stdout,
    )
    .unwrap();
    let first_on_a: Value = serde_json::from_slice(
        &a.run(&["log", "--from", "1", "--limit", "1", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(first_on_b["origin_device"], "device:a");
    assert_eq!(first_on_b["origin_seq"], 1);
    assert_eq!(first_on_b["origin_hash"], first_on_a["hash"]);
    assert_eq!(first_on_b["id"], first_on_a["id"]);
    assert_eq!(first_on_b["recorded_at"], first_on_a["recorded_at"]);

    // Incremental export: only what came after.
    a.ingest(&(200..205).map(event).collect::<Vec<_>>());
    let tail = export(&a, &["--since", "65"]);
    let t: Value = serde_json::from_slice(&import(&b, &tail).stdout).unwrap();
    assert_eq!(t["appended"], 5);
    assert_eq!(origins(&a), origins(&b));
    for h in [&a, &b] {
        assert_eq!(h.run(&["doctor"]).status.code(), Some(0));
    }
}

#[test]
fn restore_reproduces_log_and_status_exactly() {
    let a = device("device:a", "profile:p");
    a.ingest(&(0..300).map(event).collect::<Vec<_>>());
    let b = device("device:b", "profile:p");
    b.ingest(&(500..510).map(event).collect::<Vec<_>>());
    import(&a, &export(&b, &[]));
    let bundle = export(&a, &[]);
    let head = a.status_json()["log"]["head_hash"]
        .as_str()
        .unwrap()
        .to_owned();

    let restored = Home::empty();
    let out = restored.run(&["restore", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = restored.run(&["verify", "--expect-head", &head]);
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));

    let strip = |mut s: Value| {
        s.as_object_mut().unwrap().remove("generated_at");
        s
    };
    assert_eq!(strip(restored.status_json()), strip(a.status_json()));
    let all = |h: &Home| stdout(&h.run(&["log", "--json", "--limit", "100000"]));
    assert_eq!(all(&restored), all(&a));
    assert_eq!(restored.run(&["doctor"]).status.code(), Some(0));

    // Restoring over an existing store, or from a partial export, is refused.
    assert_eq!(
        restored
            .run(&["restore", bundle.to_str().unwrap()])
            .status
            .code(),
        Some(4)
    );
    let partial = export(&a, &["--since", "10"]);
    let fresh = Home::empty();
    let out = fresh.run(&["restore", partial.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("full export"), "{}", stderr(&out));
}

fn refused(home: &Home, file: &std::path::Path, want: &str) {
    let before = home.head();
    let out = import(home, file);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(want),
        "wanted {want:?} in {}",
        stderr(&out)
    );
    assert_eq!(home.head(), before, "a refused bundle appended something");
}

#[test]
fn bad_bundles_are_refused_and_append_nothing() {
    let a = device("device:a", "profile:p");
    a.ingest(&(0..20).map(event).collect::<Vec<_>>());
    let good = std::fs::read(export(&a, &[])).unwrap();
    let b = device("device:b", "profile:p");
    b.ingest(&(50..53).map(event).collect::<Vec<_>>());
    let write = |name: &str, bytes: &[u8]| {
        let p = b.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // A flipped bit inside an event.
    let mut flipped = good.clone();
    flipped[16 + 4 + 40] ^= 0x10;
    refused(&b, &write("flipped.bundle", &flipped), "not a valid bundle");
    // Truncated.
    refused(
        &b,
        &write("short.bundle", &good[..good.len() / 2]),
        "truncated",
    );
    // Not a bundle at all.
    refused(
        &b,
        &write("text.bundle", b"hello, world\n"),
        "bundle header",
    );
    // The manifest lies about the content.
    let needle = b"{\"format\"";
    let m_at = good
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    let mut manifest: Value = serde_json::from_slice(&good[m_at..]).unwrap();
    manifest["event_count"] = 19.into();
    let m = serde_json::to_vec(&manifest).unwrap();
    let mut lying = good[..m_at - 4].to_vec();
    lying.extend_from_slice(&(m.len() as u32).to_be_bytes());
    lying.extend_from_slice(&m);
    refused(&b, &write("lying.bundle", &lying), "event count");
    // Missing file.
    let out = import(&b, std::path::Path::new("/nonexistent.bundle"));
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("/nonexistent.bundle"));

    // A foreign profile.
    let other = device("device:c", "profile:work");
    other.ingest(&(0..3).map(event).collect::<Vec<_>>());
    let foreign = export(&other, &[]);
    refused(&b, &foreign, "profiles are isolated");
    // A policy rule can admit another profile explicitly.
    std::fs::write(
        b.path().join("policy.toml"),
        "[[rule]]\nname = \"work data may come here\"\naction = \"sync\"\nprofile = \"profile:work\"\neffect = \"allow\"\n",
    )
    .unwrap();
    let before = b.head();
    assert_eq!(import(&b, &foreign).status.code(), Some(0));
    // The admitting decision, then the three events.
    assert_eq!(b.head(), before + 4);
    let decision: Value = serde_json::from_slice(
        &b.run(&[
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
    assert_eq!(decision["kind"], "policy.decided");
    assert_eq!(decision["payload"]["action"], "sync");
    assert_eq!(decision["payload"]["profile_id"], "profile:work");
    std::fs::remove_file(b.path().join("policy.toml")).unwrap();

    // A forked history: a second store claiming to be device:a with
    // different events, after B already has the real device:a's.
    assert_eq!(
        import(&b, &write("good.bundle", &good)).status.code(),
        Some(0)
    );
    let impostor = device("device:a", "profile:p");
    impostor.ingest(&(900..905).map(event).collect::<Vec<_>>());
    refused(&b, &export(&impostor, &[]), "forked or forged history");
}
