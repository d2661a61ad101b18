//! `syncd diagnostics export`: a redacted bundle for support, built from an
//! allowlist (status, lifecycle, doctor report, compact recent log lines,
//! versions) by the core's redactor. `--preview` prints the bundle and
//! writes nothing.

use std::io::Write;
use std::path::Path;

use sourceos_syncd as core;
use sourceos_syncd::IdGenerator;

use crate::cli::{Cli, DiagnosticsExportArgs};
use crate::commands::{close, open};
use crate::output::Out;
use crate::{exit, Failure};

/// A fresh key for one bundle. UUID v7 ids carry 74 random bits each from
/// the operating system's generator; four of them, hashed with the time and
/// the process id, give a key that no one can guess or reuse.
fn fresh_salt() -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for _ in 0..4 {
        h.update(
            core::UuidV7Generator::new()
                .next_id()
                .to_string()
                .as_bytes(),
        );
    }
    h.update(&std::process::id().to_le_bytes());
    h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    *h.finalize().as_bytes()
}

fn data(message: String) -> Failure {
    Failure {
        code: exit::DATA,
        message,
    }
}

pub(crate) fn export(cli: &Cli, home: &Path, a: &DiagnosticsExportArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let input = gather(&store, home, a.recent);
    close(store)?;
    let input = input?;
    let bundle = core::diagnostics_bundle(&input, fresh_salt());
    let text = serde_json::to_string_pretty(&bundle).map_err(|e| Failure::store(&e))?;
    let mut out = Out::new();
    if a.preview {
        out.line(&text)?;
        out.flush()?;
        return Ok(exit::OK);
    }
    write_atomically(&a.out, text.as_bytes())
        .map_err(|e| data(format!("cannot write {}: {e}", a.out.display())))?;
    let replaced: u64 = bundle
        .pointer("/redaction_manifest/replaced_distinct_values")
        .and_then(|v| v.as_object())
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    out.line(&format!(
        "wrote diagnostics bundle {} to {}: {replaced} distinct values replaced by pseudonyms",
        input.export_id,
        a.out.display()
    ))?;
    out.flush()?;
    Ok(exit::OK)
}

fn gather(
    store: &core::Store,
    home: &Path,
    recent: u64,
) -> Result<core::DiagnosticsInput, Failure> {
    let mut status = core::status(store).map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    if let Some(d) = crate::served::daemon() {
        status = status.with_daemon(d);
    }
    let device = store.meta().device.to_string();
    let lifecycle = core::lifecycle(store).map_err(|e| Failure::store(&e))?;
    let doctor = core::doctor(store, core::DoctorOptions { repair: false }, &mut |_, _| {})
        .map_err(|e| Failure::store(&e))?;
    let (head, _) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    let from = head.saturating_sub(recent).saturating_add(1);
    let events = match core::Seq::new(from) {
        Ok(f) if recent > 0 => store
            .range(f, usize::try_from(recent).unwrap_or(0))
            .map_err(|e| Failure::store(&e))?,
        _ => Vec::new(),
    };
    // Compact lines only: never payloads, which may hold anything.
    let recent_lines = events
        .iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq().get(),
                "recorded_at": e.recorded_at().to_string(),
                "kind": e.kind().as_str(),
                "actor": e.actor().as_str(),
                "subject": e.subject().map(|s| s.as_str()),
                "origin_device": e.origin().as_str(),
                "payload_bytes": e.payload().json_len(),
            })
        })
        .collect();
    let mut local_paths = vec![home.to_string_lossy().into_owned()];
    if let Ok(c) = std::fs::canonicalize(home) {
        local_paths.push(c.to_string_lossy().into_owned());
    }
    for var in [
        "HOME",
        "XDG_RUNTIME_DIR",
        "SYNCD_RUNTIME_DIR",
        "XDG_DATA_HOME",
    ] {
        if let Some(v) = std::env::var_os(var).filter(|v| v.len() > 1) {
            local_paths.push(v.to_string_lossy().into_owned());
        }
    }
    Ok(core::DiagnosticsInput {
        export_id: format!(
            "urn:srcos:diag-export:{}",
            core::UuidV7Generator::new().next_id()
        ),
        exported_at: store.now().to_string(),
        status: serde_json::to_value(&status).map_err(|e| Failure::store(&e))?,
        lifecycle: crate::cmd_lifecycle::document(&lifecycle, &device),
        doctor: serde_json::to_value(&doctor).map_err(|e| Failure::store(&e))?,
        recent: recent_lines,
        versions: serde_json::json!({
            "syncd": env!("CARGO_PKG_VERSION"),
            "store_format": store.meta().format_version,
            "status_schema": core::STATUS_SCHEMA_VERSION,
            "lifecycle_spec": core::LIFECYCLE_SPEC_VERSION,
            "diagnostics_spec": core::DIAGNOSTICS_SPEC_VERSION,
        }),
        local_paths,
    })
}

/// Temporary name, fsync, rename, fsync of the directory: a reader sees
/// the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}
