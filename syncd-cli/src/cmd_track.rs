//! `syncd track DIR`: scan a workspace directory with the workspace file
//! adapter, compare it with the file objects already recorded, and append
//! only the differences (or, with `--dry-run`, print them). Argument
//! checking and rendering only; the work is in
//! `sourceos_syncd_adapters::workspace`.

use std::path::Path;

use sourceos_syncd as core;
use sourceos_syncd_adapters::workspace::{
    self, ChangeKind, ScanError, ScanOptions, SkipReason, TrackError, TrackReport, WorkspaceAlias,
};

use crate::cli::{Cli, TrackArgs};
use crate::output::Out;
use crate::{exit, Failure};

fn scan_failure(e: &ScanError) -> Failure {
    let code = match e {
        ScanError::NotFound { .. } | ScanError::NotADirectory { .. } => exit::USAGE,
        _ => exit::DATA,
    };
    Failure {
        code,
        message: crate::chain(e),
    }
}

fn track_failure(e: &TrackError) -> Failure {
    match e {
        TrackError::Scan(s) => scan_failure(s),
        TrackError::SchemaRefused { .. } => Failure {
            code: exit::DATA,
            message: crate::chain(e),
        },
        _ => Failure::store(e),
    }
}

/// Runs `syncd track`.
pub fn track(cli: &Cli, home: &Path, a: &TrackArgs) -> Result<u8, Failure> {
    let alias = match &a.workspace {
        Some(w) => {
            Some(WorkspaceAlias::new(w).map_err(|e| Failure::usage(format!("--workspace: {e}")))?)
        }
        None => None,
    };
    // Checked before the store is opened, so that a mistyped directory
    // fails fast and says so.
    let root = match std::fs::canonicalize(&a.dir) {
        Ok(r) if r.is_dir() => r,
        Ok(_) => {
            return Err(scan_failure(&ScanError::NotADirectory {
                path: a.dir.clone(),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(scan_failure(&ScanError::NotFound {
                path: a.dir.clone(),
            }))
        }
        Err(source) => {
            return Err(scan_failure(&ScanError::Root {
                path: a.dir.clone(),
                source,
            }))
        }
    };
    let alias = alias.unwrap_or_else(|| WorkspaceAlias::from_dir(&root));
    let options = ScanOptions {
        max_files: usize::try_from(a.max_files).unwrap_or(usize::MAX),
        exclude: vec![home.to_path_buf()],
    };
    let store = crate::commands::open(cli, home, true)?;
    let result = run(&store, &root, &alias, &options, a.dry_run);
    crate::commands::close(store)?;
    let report = result.map_err(|e| track_failure(&e))?;
    render(&report, a.json)?;
    if report.lossy_paths > 0 {
        crate::output::note(&format!(
            "syncd: track: note: {} path(s) are not valid UTF-8; they are recorded with U+FFFD \
             in `path` and `path_lossy: true`",
            report.lossy_paths
        ));
    }
    let refused = report.skipped.iter().any(|s| {
        matches!(
            s.reason,
            SkipReason::Rejected { .. } | SkipReason::PolicyBlocked { .. }
        )
    });
    Ok(if refused { exit::DATA } else { exit::OK })
}

fn run(
    store: &core::Store,
    root: &Path,
    alias: &WorkspaceAlias,
    options: &ScanOptions,
    dry_run: bool,
) -> Result<TrackReport, TrackError> {
    let scan = workspace::scan(root, options)?;
    let tracked = workspace::load_tracked(store, alias)?;
    let plan = workspace::plan(&scan, &tracked, alias);
    if dry_run {
        let (head, _) = store.head().map_err(TrackError::Head)?;
        Ok(plan.dry_run_report(head))
    } else {
        workspace::submit(store, plan)
    }
}

fn render(r: &TrackReport, json: bool) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(r)?;
        out.flush()?;
        return Ok(());
    }
    let counts = format!(
        "{} created, {} updated, {} deleted, {} unchanged, {} skipped",
        r.created, r.updated, r.deleted, r.unchanged, r.skipped_count
    );
    if r.dry_run {
        out.line(&format!(
            "plan for {} ({}); dry run, nothing recorded:",
            r.workspace_id, r.root
        ))?;
        if r.schema_registered {
            out.line(&format!("  register {}", workspace::FILE_SCHEMA_ID))?;
        }
        for c in &r.changes {
            let what = match c.kind {
                ChangeKind::Created => "create",
                ChangeKind::Updated => "update",
                ChangeKind::Deleted => "delete",
            };
            let detail = match (&c.size, &c.content_hash) {
                (Some(size), Some(hash)) => format!("  {size} bytes  {hash}"),
                _ => String::new(),
            };
            out.line(&format!("  {what:<8} {}{detail}", c.path.escape_debug()))?;
        }
        out.line(&format!("would record: {counts}"))?;
    } else {
        let already = if r.already_recorded > 0 {
            format!(", {} already recorded", r.already_recorded)
        } else {
            String::new()
        };
        out.line(&format!(
            "tracked {} ({}): {counts}{already}; head {}",
            r.workspace_id, r.root, r.head_seq
        ))?;
    }
    for s in &r.skipped {
        out.line(&format!(
            "  skipped  {}  {}",
            s.path.escape_debug(),
            s.reason
        ))?;
    }
    let unlisted = r.skipped_count.saturating_sub(r.skipped.len() as u64);
    if unlisted > 0 {
        out.line(&format!("  … and {unlisted} more skipped"))?;
    }
    out.flush()?;
    Ok(())
}
