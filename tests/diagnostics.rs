//! End-to-end tests of `syncd diagnostics export`: a bundle built from a
//! home full of real paths and ids (device, profile, actors, sessions,
//! objects, idempotency keys, identity and org references, the daemon's
//! runtime ids) contains none of them, its export record validates against
//! the published DiagnosticsExport schema, pseudonyms are consistent within
//! one bundle and differ between bundles, `--preview` writes nothing, and
//! an unwritable destination is refused with its path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::{stderr, stdout, Home};

const SECRETS: [&str; 9] = [
    "alice",
    "7731",
    "acme",
    "sess-93121",
    "payroll",
    "tok-cache-key",
    "device:",
    "actor:",
    "urn:srcos:session:",
];

fn schema() -> jsonschema::Validator {
    support::spec_schema("shell-schemas/diagnostics-export.schema.json")
}

fn busy_home() -> (Home, String) {
    let home = Home::device("device:alice-laptop-7731", "profile:acme-finance");
    std::fs::write(
        home.path().join("identity.json"),
        br#"{"identity_ref":"urn:srcos:identity:alice-account-991"}"#,
    )
    .unwrap();
    std::fs::write(
        home.path().join("org.json"),
        br#"{"org_policy_ref":"urn:srcos:org:acme-org-17"}"#,
    )
    .unwrap();
    home.daemon_config("[identity]\nfile = \"identity.json\"\n[org_policy]\nfile = \"org.json\"\n");
    let mut d = home.start_daemon();
    home.wait_status("RUNNING", |s| s["daemon_state"] == "RUNNING");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"kind":"note.added","actor":"actor:alice.smith","subject":"object:payroll-2026-{i}","session":"urn:srcos:session:sess-93121","idempotency_key":"tok-cache-key-{i}","payload":{{"path":"{}/secret.txt"}}}}"#,
                home.path().display()
            )
        })
        .collect();
    let out = home.ingest(&lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    d.signal("TERM");
    assert_eq!(d.wait_exit(20), Some(0), "{}", d.stderr());
    let l = home.run(&["lifecycle", "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    let run_id = l["native"]["history"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (home, run_id)
}

fn assert_clean(text: &str, home: &Home, run_id: &str) {
    let home_path = home.path().display().to_string();
    assert!(!text.contains(&home_path), "home path leaked");
    assert!(!text.contains(run_id), "runtime id leaked");
    let runtime_uuid = run_id.trim_start_matches("urn:srcos:runtime:");
    assert!(!text.contains(runtime_uuid), "runtime id leaked");
    for s in SECRETS {
        assert!(!text.contains(s), "{s:?} leaked");
    }
}

#[test]
fn a_bundle_from_a_busy_home_contains_none_of_its_paths_and_ids() {
    let (home, run_id) = busy_home();
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("diag.json");
    let out = home.run(&["diagnostics", "export", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_clean(&text, &home, &run_id);
    let b: serde_json::Value = serde_json::from_str(&text).unwrap();

    let v = schema();
    let errors: Vec<String> = v.iter_errors(&b["export"]).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(b["export"]["redactionApplied"], true);
    assert_eq!(b["export"]["contentCaptureEnabled"], false);

    // The allowlisted sections are there, redacted, and consistent.
    let s = &b["sections"];
    assert_eq!(s["status"]["log"]["head_seq"], home.head());
    assert_eq!(s["lifecycle"]["native"]["state"], "QUIT_READY");
    assert!(s["doctor"]["findings"].is_array());
    let recent = s["recent_log"].as_array().unwrap();
    assert!(!recent.is_empty());
    assert!(
        recent.iter().all(|l| l.get("payload").is_none()),
        "no payloads"
    );
    let device = s["status"]["active_device"].as_str().unwrap();
    assert!(device.starts_with("device_id#"), "{device}");
    assert_eq!(recent.last().unwrap()["origin_device"], device);
    let m = &b["redaction_manifest"]["replaced_distinct_values"];
    for cat in [
        "device_id",
        "account_id",
        "runtime_id",
        "object_id",
        "profile_id",
    ] {
        assert!(m[cat].as_u64().unwrap_or(0) >= 1, "{cat}: {m:#}");
    }

    // A second bundle uses other pseudonyms (fresh salt).
    let file2 = out_dir.path().join("diag2.json");
    let out = home.run(&["diagnostics", "export", "--out", file2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let b2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file2).unwrap()).unwrap();
    assert_ne!(b2["sections"]["status"]["active_device"], device);
}

#[test]
fn preview_writes_nothing_and_a_bad_destination_is_refused() {
    let home = Home::device("device:alice-laptop-7731", "profile:acme-finance");
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("diag.json");
    let before = home.head();
    let out = home.run(&[
        "diagnostics",
        "export",
        "--out",
        file.to_str().unwrap(),
        "--preview",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!file.exists(), "--preview writes nothing");
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema().is_valid(&b["export"]));
    assert!(!stdout(&out).contains("alice"));

    let bad = out_dir.path().join("missing/dir/diag.json");
    let out = home.run(&["diagnostics", "export", "--out", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("missing/dir/diag.json"),
        "{}",
        stderr(&out)
    );
    assert_eq!(home.head(), before, "nothing recorded");
}
