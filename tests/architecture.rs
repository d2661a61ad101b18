//! Architecture test: crate dependencies must follow the direction
//! `syncd-cli -> sourceos-syncd <- adapters`. The core depends on no other
//! workspace crate and on no terminal or argument-parsing library; adapters
//! never depend on the CLI. Checked over `cargo metadata`, so a new
//! dependency against the direction fails here, not in review.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn dependencies() -> BTreeMap<String, Vec<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                // Only what the library or binary links, not dev tools.
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
                .collect();
            (p["name"].as_str().unwrap_or_default().to_owned(), deps)
        })
        .collect()
}

#[test]
fn crates_depend_in_one_direction() {
    let deps = dependencies();
    let core = &deps["sourceos-syncd"];
    for forbidden in [
        "syncd-cli",
        "sourceos-syncd-adapters",
        "clap",
        "indicatif",
        "ratatui",
        "crossterm",
    ] {
        assert!(
            !core.iter().any(|d| d == forbidden),
            "the core must not depend on {forbidden}"
        );
    }
    assert!(
        core.iter().all(|d| d != "anyhow"),
        "library crates use typed errors, not anyhow"
    );
    let adapters = &deps["sourceos-syncd-adapters"];
    assert!(
        !adapters.iter().any(|d| d == "syncd-cli"),
        "adapters must not depend on the CLI"
    );
    assert!(
        adapters.iter().all(|d| d != "anyhow"),
        "library crates use typed errors, not anyhow"
    );
    assert!(deps["syncd-cli"].iter().any(|d| d == "sourceos-syncd"));
}
