//! `syncd git-state PATH`: classify what a path is to Git with the Git
//! workspace classifier, print the GitWorkspaceState document (or a short
//! summary), and with `--record` append it to the log. Argument checking
//! and rendering only; the work is in `sourceos_syncd_adapters::git`.
//!
//! Nothing printed here contains the path: only its digest and the
//! redacted hint (`~/…`, or `ALIAS/…` under `--workspace-root`). Exit 0
//! for every state (a state is an answer, not a failure), 2 for bad
//! arguments, 4 when the store cannot be opened for `--record`, 65 when
//! Git cannot be run or the store refuses the document.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sourceos_syncd as core;
use sourceos_syncd_adapters::git::{
    self, Classification, Classifier, ClassifierOptions, DocumentContext, GitWorkspaceState,
    Operation, ProcessGit, RealFs, RecordOutcome, Redactor, Request, WorkspaceRoot,
};

use crate::cli::{Cli, GitStateArgs};
use crate::output::Out;
use crate::{exit, Failure};

/// The session a document names when the probe was made outside any
/// session the caller opened.
const LOCAL_SESSION_REF: &str = "urn:srcos:session:local";

fn data(message: String) -> Failure {
    Failure {
        code: exit::DATA,
        message,
    }
}

/// Runs `syncd git-state`.
pub fn git_state(cli: &Cli, home: &Path, a: &GitStateArgs) -> Result<u8, Failure> {
    let operation = Operation::parse(&a.operation)
        .ok_or_else(|| Failure::usage(format!("--operation: unknown {:?}", a.operation)))?;
    let context = DocumentContext {
        session_ref: a
            .session
            .clone()
            .unwrap_or_else(|| LOCAL_SESSION_REF.to_owned()),
        capability_ledger_ref: a.capability_ledger.clone(),
        workspace_ref: format!("urn:srcos:workspace:{}", a.workspace),
        policy_decision_ref: a.policy_decision.clone(),
        agent_machine_receipt_ref: a.agent_receipt.clone(),
        causal_refs: Vec::new(),
        evidence_refs: Vec::new(),
    };
    context.check().map_err(|e| Failure::usage(e.to_string()))?;
    let workspaces = match &a.workspace_root {
        Some(root) => {
            let root = std::fs::canonicalize(root)
                .map_err(|e| Failure::usage(format!("--workspace-root: cannot resolve it: {e}")))?;
            vec![WorkspaceRoot::new(&a.workspace, root)
                .map_err(|e| Failure::usage(format!("--workspace: {e}")))?]
        }
        None => Vec::new(),
    };
    let home_dir = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let classifier = Classifier::new(
        RealFs,
        ProcessGit::default(),
        Arc::new(core::SystemClock),
        ClassifierOptions {
            cache_capacity: 1,
            redactor: Redactor::new(home_dir, workspaces),
        },
    );
    let c = classifier
        .classify(&Request::new(&a.path, operation))
        .map_err(|e| data(format!("cannot classify the path: {}", crate::chain(&e))))?;
    let doc = c
        .to_document(&context)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let recorded = if a.record {
        let attach = if a.session.is_some() {
            git::Attach::Session
        } else {
            git::Attach::None
        };
        Some(record(cli, home, &doc, &a.actor, attach)?)
    } else {
        None
    };
    render(&c, &doc, recorded.as_ref(), a.json)?;
    match recorded {
        Some(RecordOutcome::Rejected { reason }) => {
            Err(data(format!("the store refused the document: {reason}")))
        }
        Some(RecordOutcome::PolicyBlocked {
            decision_id,
            reason,
        }) => Err(data(format!(
            "local policy did not allow recording it ({decision_id}): {reason}"
        ))),
        _ => Ok(exit::OK),
    }
}

fn record(
    cli: &Cli,
    home: &Path,
    doc: &GitWorkspaceState,
    actor: &str,
    attach: git::Attach,
) -> Result<RecordOutcome, Failure> {
    // Checked before the store is opened: a bad actor is a usage error.
    core::ActorId::new(actor).map_err(|e| Failure::usage(format!("--actor: {e}")))?;
    let store = crate::commands::open(cli, home, true)?;
    let result = git::record(&store, doc, actor, attach);
    crate::commands::close(store)?;
    result.map_err(|e| match e {
        git::RecordError::Append(a) => Failure::store(&a),
        other => data(crate::chain(&other)),
    })
}

fn render(
    c: &Classification,
    doc: &GitWorkspaceState,
    recorded: Option<&RecordOutcome>,
    json: bool,
) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(doc)?;
        out.flush()?;
        return Ok(());
    }
    let e = &doc.path_evidence;
    let hint = e.redacted_path_hint.as_deref().unwrap_or("(digest only)");
    out.line(&format!(
        "{}  {}  ({})",
        c.state,
        c.severity.as_str(),
        c.operation
    ))?;
    out.line(&format!(
        "  path      {hint}  [{}]  {}",
        e.redaction.as_str(),
        e.path_digest
    ))?;
    let f = &c.facts;
    if let Some(b) = &f.branch {
        out.line(&format!("  branch    {b}"))?;
    }
    if let Some(h) = &f.head_sha {
        out.line(&format!("  head      {h}"))?;
    }
    out.line(&format!("  remote    {}", f.remote_state.as_str()))?;
    if c.linked_worktree {
        out.line("  worktree  linked (git worktree add)")?;
    }
    if let Some(r) = &f.failure_reason {
        out.line(&format!("  reason    {r}"))?;
    }
    out.line(&format!("  action    {}", c.actionability.as_str()))?;
    match recorded {
        Some(RecordOutcome::Appended { seq }) => out.line(&format!("  recorded  event {seq}"))?,
        Some(RecordOutcome::Duplicate { seq }) => {
            out.line(&format!("  recorded  already, as event {seq}"))?
        }
        Some(RecordOutcome::Rejected { .. } | RecordOutcome::PolicyBlocked { .. }) => {
            out.line("  recorded  no")?
        }
        None => {}
    }
    out.flush()?;
    Ok(())
}
