//! Receipts: browser automation sessions and runtime installs, each a
//! record folded from its events and shown as a SourceOS document
//! (BrowserAutomationReceipt, RuntimeInstallReceipt).
//!
//! Browser automation never runs below the UI without a receipt: a session
//! starts with its transport, permission scope, owner, origin and policy
//! decision, is always user-visible and revocable, and ends in one terminal
//! state (`syncd receipts revoke ID` ends it as revoked). Runtime installs
//! move through `installState`; the full manifest lives in the evidence
//! store and the log keeps only a compact line naming it
//! (`manifest.manifestRef`, a `blake3:` evidence ref).
//!
//! Both lifecycles are enums with a transition function that refuses
//! invalid moves and changes nothing ([`automation_transition`],
//! [`install_transition`]). Payloads are checked against the embedded
//! schema of the document they become, so a problem is named by its path.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::capability::{self, text_enum, Fact, MAX_CAUSAL_REFS, MAX_EVIDENCE_REFS};
use crate::event::EventDraft;
use crate::kinds::KindSpec;

/// An automation session starts.
pub const AUTOMATION_STARTED: &str = "browser.automation_started";
/// An automation session ends.
pub const AUTOMATION_ENDED: &str = "browser.automation_ended";
/// A runtime install is asked for.
pub const INSTALL_REQUESTED: &str = "runtime.install_requested";
/// A runtime install moves on.
pub const INSTALL_PROGRESSED: &str = "runtime.install_progressed";
/// Prefix of automation receipt ids.
pub const AUTOMATION_PREFIX: &str = "urn:srcos:receipt:browser-automation:";
/// Prefix of install receipt ids.
pub const INSTALL_PREFIX: &str = "urn:srcos:receipt:runtime-install:";
/// specVersion of the receipts syncd emits.
pub const RECEIPT_SPEC_VERSION: &str = "0.1.0";

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: AUTOMATION_STARTED,
        validate: validate_started,
    },
    KindSpec {
        kind: AUTOMATION_ENDED,
        validate: validate_step,
    },
    KindSpec {
        kind: INSTALL_REQUESTED,
        validate: validate_requested,
    },
    KindSpec {
        kind: INSTALL_PROGRESSED,
        validate: validate_step,
    },
];

/// Whether a kind is one of the receipt kinds.
pub(crate) fn is_receipt_kind(kind: &str) -> bool {
    KINDS.iter().any(|k| k.kind == kind)
}

/// The namespaces of the receipt kinds (a test holds every kind to them).
const NAMESPACES: &[&str] = &["browser", "runtime"];

/// [`is_receipt_kind`] for a validated kind, deciding most kinds by their
/// namespace alone (projections ask this of every event).
pub(crate) fn is_receipt_event_kind(kind: &crate::ids::EventKind) -> bool {
    NAMESPACES.contains(&kind.namespace()) && is_receipt_kind(kind.as_str())
}

text_enum!(
    /// Where an automation session is.
    AutomationState {
        /// No start event yet.
        NotStarted = "not_started",
        /// Running, visible, revocable.
        Active = "active",
        /// Ended by the user or on their behalf.
        Revoked = "revoked",
        /// Finished its work.
        Completed = "completed",
        /// Failed.
        Failed = "failed",
        /// Policy stopped it.
        Denied = "denied",
    }
);

text_enum!(
    /// What can happen to an automation session.
    AutomationEvent {
        /// `browser.automation_started`.
        Start = "start",
        /// Ended as revoked.
        Revoke = "revoked",
        /// Ended as completed.
        Complete = "completed",
        /// Ended as failed.
        Fail = "failed",
        /// Ended as denied.
        Deny = "denied",
    }
);

text_enum!(
    /// Where a runtime install is (the contract's `installState`), plus
    /// the state before its request.
    InstallState {
        /// No request yet.
        NotRequested = "not_requested",
        /// Asked for.
        Requested = "requested",
        /// Its manifest is known.
        ManifestResolved = "manifest_resolved",
        /// Its artifacts are verified.
        ArtifactVerified = "artifact_verified",
        /// Installing.
        Installing = "installing",
        /// Installed.
        Installed = "installed",
        /// Failed.
        Failed = "failed",
        /// Undone.
        RolledBack = "rolled_back",
        /// Partly installed.
        Partial = "partial",
        /// Policy refused it.
        Denied = "denied",
        /// Put off.
        Deferred = "deferred",
    }
);

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} by {by}")]
pub struct InvalidReceiptTransition {
    /// Which lifecycle.
    pub what: &'static str,
    /// The state.
    pub from: &'static str,
    /// The event.
    pub by: &'static str,
}

/// The automation lifecycle: started once, then one terminal state.
pub fn automation_transition(
    from: AutomationState,
    event: AutomationEvent,
) -> Result<AutomationState, InvalidReceiptTransition> {
    use AutomationEvent as E;
    use AutomationState as S;
    match (from, event) {
        (S::NotStarted, E::Start) => Ok(S::Active),
        (S::Active, E::Revoke) => Ok(S::Revoked),
        (S::Active, E::Complete) => Ok(S::Completed),
        (S::Active, E::Fail) => Ok(S::Failed),
        (S::Active, E::Deny) => Ok(S::Denied),
        _ => Err(InvalidReceiptTransition {
            what: "a browser automation session",
            from: from.as_str(),
            by: event.as_str(),
        }),
    }
}

/// The install lifecycle; the event is the state it moves to.
pub fn install_transition(
    from: InstallState,
    to: InstallState,
) -> Result<InstallState, InvalidReceiptTransition> {
    use InstallState as S;
    let ok = match from {
        S::NotRequested => to == S::Requested,
        S::Requested | S::Deferred => {
            matches!(
                to,
                S::ManifestResolved | S::Denied | S::Deferred | S::Failed
            ) && to != from
        }
        S::ManifestResolved => matches!(to, S::ArtifactVerified | S::Denied | S::Failed),
        S::ArtifactVerified => matches!(to, S::Installing | S::Failed),
        S::Installing => matches!(to, S::Installed | S::Failed | S::Partial | S::RolledBack),
        S::Installed | S::Failed => to == S::RolledBack,
        S::Partial => matches!(to, S::RolledBack | S::Failed | S::Installed),
        S::RolledBack | S::Denied => false,
    };
    if ok {
        Ok(to)
    } else {
        Err(InvalidReceiptTransition {
            what: "a runtime install",
            from: from.as_str(),
            by: to.as_str(),
        })
    }
}

/// Fields of the documents that syncd fills in; a payload must not.
const DERIVED: [&str; 10] = [
    "id",
    "type",
    "specVersion",
    "startedAt",
    "capturedAt",
    "terminalState",
    "revokedAt",
    "installState",
    "finishedAt",
    "logMode",
];

/// Schema paths of a document mapped to the payload's, for messages.
fn payload_path(doc_path: &str) -> String {
    if doc_path == "/id" {
        return "subject".into();
    }
    let mut p = "payload".to_owned();
    for part in doc_path.split('/').filter(|s| !s.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            p.push_str(&format!("[{part}]"));
        } else {
            p.push('.');
            p.push_str(part);
        }
    }
    p
}

/// Checks a payload by building the document it becomes (with syncd's
/// fields filled by placeholders) and validating that.
fn check_as_document(
    d: &EventDraft,
    schema: &'static str,
    prefix: &str,
    fill: impl FnOnce(&mut Map<String, Value>),
) -> Result<(), String> {
    let Some(subject) = &d.subject else {
        return Err(format!("subject: required, the receipt id ({prefix}<id>)"));
    };
    if !subject.as_str().starts_with(prefix) || subject.as_str().len() == prefix.len() {
        return Err(format!(
            "subject: {:?} must start with {prefix}",
            subject.as_str()
        ));
    }
    let Some(m) = d.payload.as_map() else {
        return Err("payload: must be an object".into());
    };
    if let Some(k) = DERIVED.iter().find(|k| m.contains_key(**k)) {
        return Err(format!(
            "payload.{k}: set by syncd from the log; leave it out"
        ));
    }
    capability::decision(m)?;
    capability::string_list(m, "evidenceRefs", MAX_EVIDENCE_REFS)?;
    capability::string_list(m, "causalRefs", MAX_CAUSAL_REFS)?;
    for flag in ["userVisible", "revocable"] {
        if m.get(flag) == Some(&Value::Bool(false)) {
            return Err(format!(
                "payload.{flag}: false; browser automation is always user-visible and revocable"
            ));
        }
    }
    let mut doc = m.clone();
    doc.insert("id".into(), json!(subject.as_str()));
    doc.insert("type".into(), json!(schema));
    doc.insert("specVersion".into(), json!(RECEIPT_SPEC_VERSION));
    doc.insert("startedAt".into(), json!("2000-01-01T00:00:00Z"));
    doc.insert("capturedAt".into(), json!("2000-01-01T00:00:00Z"));
    doc.entry("evidenceRefs")
        .or_insert_with(|| json!(["urn:srcos:evidence:placeholder"]));
    fill(&mut doc);
    let violations = crate::contract::schema_violations(schema, &Value::Object(doc))
        .map_err(|e| e.to_string())?;
    match violations.first() {
        Some(v) => Err(format!("{}: {}", payload_path(&v.path), v.message)),
        None => Ok(()),
    }
}

fn validate_started(d: &mut EventDraft) -> Result<(), String> {
    check_as_document(d, "BrowserAutomationReceipt", AUTOMATION_PREFIX, |doc| {
        doc.insert("terminalState".into(), json!("active"));
    })
}

fn validate_requested(d: &mut EventDraft) -> Result<(), String> {
    if let Some(m) = d.payload.as_map() {
        if m.contains_key("artifacts") {
            return Err("payload.artifacts: the full manifest belongs in the evidence store; the log keeps only manifest.manifestRef".into());
        }
        let r = m
            .get("manifest")
            .and_then(|x| x.get("manifestRef"))
            .and_then(Value::as_str);
        match r {
            Some(r) => {
                crate::evidence::EvidenceRef::parse(r)
                    .map_err(|e| format!("payload.manifest.manifestRef: must be the manifest's evidence ref ({e})"))?;
            }
            None => return Err("payload.manifest.manifestRef: required, the manifest's evidence ref (syncd evidence add)".into()),
        }
    }
    check_as_document(d, "RuntimeInstallReceipt", INSTALL_PREFIX, |doc| {
        doc.insert("installState".into(), json!("requested"));
        doc.insert("logMode".into(), json!("compact_receipt_ref"));
        doc.insert(
            "artifacts".into(),
            json!([{"artifactRef": "placeholder", "digest": format!("sha256:{}", "0".repeat(64)), "verificationState": "not_checked"}]),
        );
    })
}

/// `browser.automation_ended` and `runtime.install_progressed`: the next
/// state, the decision, and optionally why, evidence and a rollback ref.
fn validate_step(d: &mut EventDraft) -> Result<(), String> {
    let (prefix, field) = if d.kind.as_str() == AUTOMATION_ENDED {
        (AUTOMATION_PREFIX, "terminalState")
    } else {
        (INSTALL_PREFIX, "installState")
    };
    match &d.subject {
        Some(s) if s.as_str().starts_with(prefix) && s.as_str().len() > prefix.len() => {}
        _ => return Err(format!("subject: required, the receipt id ({prefix}<id>)")),
    }
    let Some(m) = d.payload.as_map() else {
        return Err("payload: must be an object".into());
    };
    capability::decision(m)?;
    capability::string_list(m, "evidenceRefs", MAX_EVIDENCE_REFS)?;
    capability::text(m, "reason")?;
    let next = capability::required(m, field)?;
    if d.kind.as_str() == AUTOMATION_ENDED {
        capability::only_keys(
            m,
            &[
                "terminalState",
                "reason",
                "policyDecisionRef",
                "evidenceRefs",
            ],
        )?;
        match AutomationEvent::parse(next) {
            Some(AutomationEvent::Start) | None => {
                return Err(format!(
                "payload.terminalState: {next:?} is not one of revoked, completed, failed, denied"
            ))
            }
            Some(_) => {}
        }
    } else {
        capability::only_keys(
            m,
            &[
                "installState",
                "reason",
                "rollbackRef",
                "policyDecisionRef",
                "evidenceRefs",
            ],
        )?;
        capability::text(m, "rollbackRef")?;
        match InstallState::parse(next) {
            Some(InstallState::NotRequested | InstallState::Requested) | None => {
                return Err(format!(
                    "payload.installState: {next:?} is not a state an install moves to"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Admission against the receipt's current state: the move must be one
/// its lifecycle allows.
pub(crate) fn admit(
    prior: Option<&ReceiptState>,
    kind: &str,
    m: &Map<String, Value>,
) -> Result<(), String> {
    let next = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default();
    match (kind, prior) {
        (AUTOMATION_STARTED | INSTALL_REQUESTED, Some(r)) => {
            Err(format!("receipt {} already exists", r.id()))
        }
        (AUTOMATION_STARTED | INSTALL_REQUESTED, None) => Ok(()),
        (_, None) => Err("unknown receipt: no start or request event names it".into()),
        (AUTOMATION_ENDED, Some(ReceiptState::Automation(a))) => {
            let e = AutomationEvent::parse(next("terminalState"))
                .ok_or("payload.terminalState: unknown")?;
            automation_transition(a.state, e)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        (INSTALL_PROGRESSED, Some(ReceiptState::Install(i))) => {
            let to =
                InstallState::parse(next("installState")).ok_or("payload.installState: unknown")?;
            install_transition(i.state, to)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        (_, Some(r)) => Err(format!(
            "receipt {} is not of the kind {kind} moves",
            r.id()
        )),
    }
}

/// An automation session as folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutomationRecord {
    /// Receipt id.
    pub id: String,
    /// The start payload, canonical JSON text.
    pub start: String,
    /// Lifecycle state.
    pub state: AutomationState,
    /// When it started.
    pub started_at: String,
    /// When it ended, if it did.
    pub ended_at: Option<String>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Evidence named by later events.
    pub more_evidence: Vec<String>,
    /// Its events.
    pub events: Vec<String>,
    /// When the latest event was recorded.
    pub captured_at: String,
}

/// A runtime install as folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// Receipt id.
    pub id: String,
    /// The request payload (the compact line), canonical JSON text.
    pub request: String,
    /// Lifecycle state.
    pub state: InstallState,
    /// When it was requested.
    pub started_at: String,
    /// When it reached installed, failed, rolled_back, partial or denied.
    pub finished_at: Option<String>,
    /// The latest reason given.
    pub failure_reason: Option<String>,
    /// What it rolled back to.
    pub rollback_ref: Option<String>,
    /// Evidence named by later events.
    pub more_evidence: Vec<String>,
    /// Its events.
    pub events: Vec<String>,
    /// When the latest event was recorded.
    pub captured_at: String,
}

/// A receipt record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptState {
    /// A browser automation session.
    Automation(AutomationRecord),
    /// A runtime install.
    Install(InstallRecord),
}

fn push_bounded(v: &mut Vec<String>, item: String, max: usize) {
    if v.contains(&item) {
        return;
    }
    if v.len() >= max {
        v.remove(0);
    }
    v.push(item);
}

impl ReceiptState {
    /// The receipt id.
    pub fn id(&self) -> &str {
        match self {
            ReceiptState::Automation(a) => &a.id,
            ReceiptState::Install(i) => &i.id,
        }
    }

    /// Which listing it belongs to: `browser-automation` or `runtime-install`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiptState::Automation(_) => "browser-automation",
            ReceiptState::Install(_) => "runtime-install",
        }
    }

    /// `(session, owner)` for an automation session.
    pub(crate) fn session_owner(&self) -> Option<(String, String)> {
        let ReceiptState::Automation(a) = self else {
            return None;
        };
        let m: Map<String, Value> = serde_json::from_str(&a.start).ok()?;
        Some((
            m.get("sessionRef")?.as_str()?.to_owned(),
            m.get("ownerRef")?.as_str()?.to_owned(),
        ))
    }

    /// Folds one event. A move the lifecycle refuses (only possible from a
    /// peer with other rules) changes nothing.
    pub(crate) fn fold(
        prior: Option<ReceiptState>,
        id: &str,
        f: &Fact<'_>,
    ) -> Option<ReceiptState> {
        let event_ref = format!("urn:srcos:event:{}", f.event_id);
        let s = |k: &str| f.payload.get(k).and_then(Value::as_str).map(str::to_owned);
        let evidence: Vec<String> = match f.payload.get("evidenceRefs") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let text = Value::Object(f.payload.clone()).to_string();
        match (f.kind, prior) {
            (AUTOMATION_STARTED, None) => Some(ReceiptState::Automation(AutomationRecord {
                id: id.to_owned(),
                start: text,
                state: AutomationState::Active,
                started_at: f.recorded_at.clone(),
                ended_at: None,
                end_reason: None,
                more_evidence: Vec::new(),
                events: vec![event_ref],
                captured_at: f.recorded_at.clone(),
            })),
            (INSTALL_REQUESTED, None) => Some(ReceiptState::Install(InstallRecord {
                id: id.to_owned(),
                request: text,
                state: InstallState::Requested,
                started_at: f.recorded_at.clone(),
                finished_at: None,
                failure_reason: None,
                rollback_ref: None,
                more_evidence: Vec::new(),
                events: vec![event_ref],
                captured_at: f.recorded_at.clone(),
            })),
            (AUTOMATION_ENDED, Some(ReceiptState::Automation(mut a))) => {
                let e = AutomationEvent::parse(&s("terminalState")?)?;
                a.state = automation_transition(a.state, e).ok()?;
                a.ended_at = Some(f.recorded_at.clone());
                a.end_reason = s("reason");
                for e in evidence {
                    push_bounded(&mut a.more_evidence, e, MAX_EVIDENCE_REFS);
                }
                push_bounded(&mut a.events, event_ref, MAX_CAUSAL_REFS);
                a.captured_at = f.recorded_at.clone();
                Some(ReceiptState::Automation(a))
            }
            (INSTALL_PROGRESSED, Some(ReceiptState::Install(mut i))) => {
                let to = InstallState::parse(&s("installState")?)?;
                i.state = install_transition(i.state, to).ok()?;
                if matches!(
                    to,
                    InstallState::Installed
                        | InstallState::Failed
                        | InstallState::RolledBack
                        | InstallState::Partial
                        | InstallState::Denied
                ) {
                    i.finished_at = Some(f.recorded_at.clone());
                }
                if let Some(r) = s("reason") {
                    i.failure_reason = Some(r);
                }
                if let Some(r) = s("rollbackRef") {
                    i.rollback_ref = Some(r);
                }
                for e in evidence {
                    push_bounded(&mut i.more_evidence, e, MAX_EVIDENCE_REFS);
                }
                push_bounded(&mut i.events, event_ref, MAX_CAUSAL_REFS);
                i.captured_at = f.recorded_at.clone();
                Some(ReceiptState::Install(i))
            }
            _ => None,
        }
    }
}

fn evidence_or_event(mut refs: Vec<String>, events: &[String]) -> Vec<String> {
    if refs.is_empty() {
        // The log entry itself is the evidence.
        if let Some(e) = events.first() {
            refs.push(e.replacen("urn:srcos:event:", "urn:srcos:evidence:syncd-event:", 1));
        }
    }
    refs
}

fn list(m: &Map<String, Value>, key: &str) -> Vec<String> {
    match m.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl AutomationRecord {
    /// The BrowserAutomationReceipt document.
    pub fn document(&self) -> Value {
        let mut doc: Map<String, Value> = serde_json::from_str(&self.start).unwrap_or_default();
        let mut evidence = list(&doc, "evidenceRefs");
        for e in &self.more_evidence {
            if !evidence.contains(e) {
                evidence.push(e.clone());
            }
        }
        let mut causal = list(&doc, "causalRefs");
        causal.extend(self.events.iter().cloned());
        doc.insert("id".into(), json!(self.id));
        doc.insert("type".into(), json!("BrowserAutomationReceipt"));
        doc.insert("specVersion".into(), json!(RECEIPT_SPEC_VERSION));
        doc.insert("startedAt".into(), json!(self.started_at));
        let revoked = (self.state == AutomationState::Revoked)
            .then(|| self.ended_at.clone())
            .flatten();
        doc.insert("revokedAt".into(), json!(revoked));
        doc.insert("terminalState".into(), json!(self.state.as_str()));
        doc.insert("causalRefs".into(), json!(causal));
        doc.insert(
            "evidenceRefs".into(),
            json!(evidence_or_event(evidence, &self.events)),
        );
        doc.insert("capturedAt".into(), json!(self.captured_at));
        Value::Object(doc)
    }
}

/// A manifest as the evidence store keeps it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFile {
    artifacts: Vec<Value>,
}

/// Artifacts listed in one manifest, at most.
pub const MAX_MANIFEST_ARTIFACTS: usize = 1024;

impl InstallRecord {
    /// The manifest's evidence ref.
    pub fn manifest_ref(&self) -> Option<crate::evidence::EvidenceRef> {
        let m: Map<String, Value> = serde_json::from_str(&self.request).ok()?;
        let r = m.get("manifest")?.get("manifestRef")?.as_str()?;
        crate::evidence::EvidenceRef::parse(r).ok()
    }

    /// The RuntimeInstallReceipt document, with `artifacts` taken from
    /// the manifest (the evidence file's content, read and verified by the
    /// caller).
    pub fn document(&self, manifest: &[u8]) -> Result<Value, String> {
        let parsed: ManifestFile = serde_json::from_slice(manifest).map_err(|e| {
            format!("the manifest is not a manifest (an object with artifacts): {e}")
        })?;
        if parsed.artifacts.is_empty() || parsed.artifacts.len() > MAX_MANIFEST_ARTIFACTS {
            return Err(format!(
                "the manifest lists {} artifacts; 1 to {MAX_MANIFEST_ARTIFACTS} are expected",
                parsed.artifacts.len()
            ));
        }
        let mut doc: Map<String, Value> = serde_json::from_str(&self.request).unwrap_or_default();
        let mut evidence = list(&doc, "evidenceRefs");
        if let Some(r) = self.manifest_ref() {
            let r = r.to_string();
            if !evidence.contains(&r) {
                evidence.insert(0, r);
            }
        }
        for e in &self.more_evidence {
            if !evidence.contains(e) {
                evidence.push(e.clone());
            }
        }
        let mut causal = list(&doc, "causalRefs");
        causal.extend(self.events.iter().cloned());
        doc.insert("id".into(), json!(self.id));
        doc.insert("type".into(), json!("RuntimeInstallReceipt"));
        doc.insert("specVersion".into(), json!(RECEIPT_SPEC_VERSION));
        doc.insert("installState".into(), json!(self.state.as_str()));
        doc.insert("artifacts".into(), Value::Array(parsed.artifacts));
        doc.insert("logMode".into(), json!("compact_receipt_ref"));
        doc.insert("rollbackRef".into(), json!(self.rollback_ref));
        doc.insert("failureReason".into(), json!(self.failure_reason));
        doc.insert("causalRefs".into(), json!(causal));
        doc.insert("evidenceRefs".into(), json!(evidence));
        doc.insert("startedAt".into(), json!(self.started_at));
        doc.insert("finishedAt".into(), json!(self.finished_at));
        doc.insert("capturedAt".into(), json!(self.captured_at));
        Ok(Value::Object(doc))
    }
}

/// Every receipt, in id order, at most [`crate::MAX_LISTED`].
pub fn receipts(
    store: &crate::store::Store,
) -> Result<Vec<ReceiptState>, crate::projection::ProjectionError> {
    store.with_projection(crate::projection::ledger::NAME, |s| {
        crate::projection::ledger::receipts(s, crate::explain::MAX_LISTED)
    })?
}

/// One receipt.
pub fn receipt(
    store: &crate::store::Store,
    id: &str,
) -> Result<Option<ReceiptState>, crate::projection::ProjectionError> {
    store.with_projection(crate::projection::ledger::NAME, |s| {
        crate::projection::ledger::receipt(s, id)
    })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn every_receipt_kind_is_in_a_listed_namespace() {
        for k in KINDS {
            let kind = crate::ids::EventKind::new(k.kind).unwrap();
            assert!(is_receipt_event_kind(&kind), "{}", k.kind);
        }
        for other in [
            "note.added",
            "browser.opened",
            "capability.granted",
            "runtime",
        ] {
            let kind = crate::ids::EventKind::new(other).unwrap();
            assert!(!is_receipt_event_kind(&kind), "{other}");
        }
    }

    #[test]
    fn every_automation_state_event_pair() {
        use AutomationEvent as E;
        use AutomationState as S;
        let allowed = [
            (S::NotStarted, E::Start, S::Active),
            (S::Active, E::Revoke, S::Revoked),
            (S::Active, E::Complete, S::Completed),
            (S::Active, E::Fail, S::Failed),
            (S::Active, E::Deny, S::Denied),
        ];
        for &from in S::ALL {
            for &e in E::ALL {
                let want = allowed
                    .iter()
                    .find(|(f, ev, _)| *f == from && *ev == e)
                    .map(|(_, _, to)| *to);
                let before = from;
                match (automation_transition(from, e), want) {
                    (Ok(to), Some(w)) => assert_eq!(to, w),
                    (Err(err), None) => {
                        assert_eq!(err.from, from.as_str());
                        assert_eq!(before, from, "a refused move changes nothing");
                    }
                    (got, want) => panic!("{from} by {e}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn every_install_state_event_pair() {
        use InstallState as S;
        let allowed: &[(S, &[S])] = &[
            (S::NotRequested, &[S::Requested]),
            (
                S::Requested,
                &[S::ManifestResolved, S::Denied, S::Deferred, S::Failed],
            ),
            (S::Deferred, &[S::ManifestResolved, S::Denied, S::Failed]),
            (
                S::ManifestResolved,
                &[S::ArtifactVerified, S::Denied, S::Failed],
            ),
            (S::ArtifactVerified, &[S::Installing, S::Failed]),
            (
                S::Installing,
                &[S::Installed, S::Failed, S::Partial, S::RolledBack],
            ),
            (S::Installed, &[S::RolledBack]),
            (S::Failed, &[S::RolledBack]),
            (S::Partial, &[S::RolledBack, S::Failed, S::Installed]),
            (S::RolledBack, &[]),
            (S::Denied, &[]),
        ];
        assert_eq!(allowed.len(), S::ALL.len());
        for &from in S::ALL {
            let ok = allowed.iter().find(|(f, _)| *f == from).unwrap().1;
            for &to in S::ALL {
                let got = install_transition(from, to);
                if ok.contains(&to) {
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                } else {
                    assert!(got.is_err(), "{from} -> {to} must be refused");
                }
            }
        }
    }

    #[test]
    fn payload_paths_read_like_the_input() {
        assert_eq!(
            payload_path("/permissionScope/0"),
            "payload.permissionScope[0]"
        );
        assert_eq!(payload_path("/id"), "subject");
        assert_eq!(payload_path(""), "payload");
    }
}
