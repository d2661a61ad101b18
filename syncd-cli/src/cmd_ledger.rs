//! `syncd capabilities` and `syncd receipts [revoke ID]`: the capability
//! ledger and the receipts, rendered as a table or as SourceOS documents.
//! Rendering and argument checking only; the folds are in the core.
//!
//! Exit codes: 0 listed or revoked; 2 bad arguments; 3 an install
//! receipt's manifest is missing or altered in the evidence store (the
//! other receipts are still printed); 4 the store cannot be read; 65 a
//! revoke the store refuses (unknown receipt, not active).

use std::path::Path;

use serde_json::Value;
use sourceos_syncd as core;

use crate::cli::{Cli, ListArgs, ReceiptKind, ReceiptsAction, ReceiptsArgs, RevokeArgs};
use crate::output::Out;
use crate::{exit, Failure};

fn data(message: String) -> Failure {
    Failure {
        code: exit::DATA,
        message,
    }
}

/// Runs `syncd capabilities`.
pub fn capabilities(cli: &Cli, home: &Path, a: &ListArgs) -> Result<u8, Failure> {
    let store = crate::commands::open(cli, home, true)?;
    let docs = core::capabilities(&store).map_err(|e| Failure::store(&e));
    crate::commands::close(store)?;
    let docs = docs?;
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&docs)?;
    } else {
        for d in &docs {
            let split = if d.conflict_refs.is_empty() {
                String::new()
            } else {
                "  SPLIT-BRAIN".to_owned()
            };
            out.line(&format!(
                "{}  {}{split}",
                d.capability_ref, d.effective_state
            ))?;
            if let Some(r) = &d.state_reason {
                out.line(&format!("  {r}"))?;
            }
        }
        if docs.is_empty() {
            out.line("no capabilities recorded")?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Runs `syncd receipts`.
pub fn receipts(cli: &Cli, home: &Path, a: &ReceiptsArgs) -> Result<u8, Failure> {
    if let Some(ReceiptsAction::Revoke(r)) = &a.action {
        return revoke(cli, home, r);
    }
    let store = crate::commands::open(cli, home, true)?;
    let listed = core::receipts(&store).map_err(|e| Failure::store(&e));
    crate::commands::close(store)?;
    let wanted = |r: &core::ReceiptState| match a.kind {
        None => true,
        Some(ReceiptKind::BrowserAutomation) => r.kind() == "browser-automation",
        Some(ReceiptKind::RuntimeInstall) => r.kind() == "runtime-install",
    };
    let mut docs: Vec<Value> = Vec::new();
    let mut broken = Vec::new();
    for r in listed?.iter().filter(|r| wanted(r)) {
        match r {
            core::ReceiptState::Automation(x) => docs.push(x.document()),
            core::ReceiptState::Install(x) => match install_document(home, x) {
                Ok(d) => docs.push(d),
                Err(e) => broken.push(format!("{}: {e}", x.id)),
            },
        }
    }
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&docs)?;
    } else {
        for d in &docs {
            let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
            let state = if s("type") == "RuntimeInstallReceipt" {
                s("installState")
            } else {
                s("terminalState")
            };
            out.line(&format!("{}  {state}", s("id")))?;
            out.line(&format!(
                "  session {}  decision {}  captured {}",
                s("sessionRef"),
                s("policyDecisionRef"),
                s("capturedAt")
            ))?;
        }
        if docs.is_empty() && broken.is_empty() {
            out.line("no receipts recorded")?;
        }
    }
    out.flush()?;
    if broken.is_empty() {
        return Ok(exit::OK);
    }
    for b in &broken {
        eprintln!("syncd: receipts: {b}");
    }
    eprintln!("syncd: receipts: evidence the log references is damaged; run `syncd doctor`");
    Ok(exit::NEEDS_REVIEW)
}

fn install_document(home: &Path, x: &core::InstallRecord) -> Result<Value, String> {
    let r = x
        .manifest_ref()
        .ok_or_else(|| "the request names no manifest".to_owned())?;
    let manifest =
        core::read_evidence(home, &r).map_err(|e| format!("manifest {r}: {}", crate::chain(&e)))?;
    x.document(&manifest)
}

fn revoke(cli: &Cli, home: &Path, a: &RevokeArgs) -> Result<u8, Failure> {
    let usage = |what: &str, e: String| Failure::usage(format!("{what}: {e}"));
    let actor =
        core::ActorId::new(a.actor.as_str()).map_err(|e| usage("--actor", e.to_string()))?;
    let subject = core::Subject::new(a.id.as_str()).map_err(|e| usage("ID", e.to_string()))?;
    let store = crate::commands::open(cli, home, true)?;
    let result = revoke_in(&store, actor, subject, a);
    crate::commands::close(store)?;
    let seq = result?;
    let mut out = Out::new();
    out.line(&format!("{} revoked (event {seq})", a.id))?;
    out.flush()?;
    Ok(exit::OK)
}

fn revoke_in(
    store: &core::Store,
    actor: core::ActorId,
    subject: core::Subject,
    a: &RevokeArgs,
) -> Result<u64, Failure> {
    let decision = match &a.policy_decision {
        Some(d) => d.clone(),
        None => match core::receipt(store, &a.id).map_err(|e| Failure::store(&e))? {
            Some(core::ReceiptState::Automation(x)) => serde_json::from_str::<Value>(&x.start)
                .ok()
                .and_then(|v| {
                    v.get("policyDecisionRef")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
            Some(_) => {
                return Err(data(format!(
                    "{} is not a browser automation receipt",
                    a.id
                )))
            }
            None => return Err(data(format!("unknown receipt {}", a.id))),
        },
    };
    let kind = core::EventKind::new(core::AUTOMATION_ENDED).map_err(|e| data(e.to_string()))?;
    let mut draft = core::EventDraft::new(actor, kind);
    draft.subject = Some(subject);
    draft.payload = core::Payload::new(serde_json::json!({
        "terminalState": "revoked",
        "reason": a.reason,
        "policyDecisionRef": decision,
    }))
    .map_err(|e| data(e.to_string()))?;
    core::validate_kind(&mut draft).map_err(data)?;
    match store.append(draft).map_err(|e| Failure::store(&e))? {
        core::AppendOutcome::Appended { seq, .. } | core::AppendOutcome::Duplicate { seq, .. } => {
            Ok(seq.get())
        }
        core::AppendOutcome::Rejected { reason }
        | core::AppendOutcome::PolicyBlocked { reason, .. } => {
            Err(data(format!("{} was not revoked: {reason}", a.id)))
        }
    }
}
