//! The GitWorkspaceState document (`shared/spec/schemas/
//! GitWorkspaceState.json`) made from a classification and the context it
//! was asked in (session, capability ledger, workspace, policy decision),
//! and the event draft that records it in the log.

use serde::{Deserialize, Serialize};
use sourceos_syncd as core;

use super::classifier::{Classification, GitFacts};
use super::evidence::Redaction;
use super::model::{Actionability, GitState, Operation, Severity};

/// The contract's `type`.
pub const DOCUMENT_TYPE: &str = "GitWorkspaceState";
/// The contract version the documents follow.
pub const SPEC_VERSION: &str = "0.1.0";
/// Prefix of document ids.
pub const ID_PREFIX: &str = "urn:srcos:git-workspace-state:";
/// Actor that records classifications unless told otherwise.
pub const GIT_STATE_ACTOR: &str = "actor:git-classifier";
/// Longest reference accepted in a context, in bytes.
pub const MAX_REF_BYTES: usize = 256;

/// `pathEvidence` as the contract spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathEvidenceDoc {
    /// `sha256:` and 64 hex digits.
    pub path_digest: String,
    /// `~/…`, `<alias>/…`, or null.
    pub redacted_path_hint: Option<String>,
    /// How the hint was made.
    pub redaction: Redaction,
    /// Always false.
    pub raw_path_stored: bool,
}

/// A GitWorkspaceState document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitWorkspaceState {
    /// `urn:srcos:git-workspace-state:<digest prefix>-<micros>-<operation>`.
    pub id: String,
    /// Always [`DOCUMENT_TYPE`].
    #[serde(rename = "type")]
    pub doc_type: String,
    /// Contract version.
    pub spec_version: String,
    /// `urn:srcos:session:…`.
    pub session_ref: String,
    /// `urn:srcos:capability-ledger:…`.
    pub capability_ledger_ref: String,
    /// `urn:srcos:agent-machine-receipt:…`, when an agent asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_machine_receipt_ref: Option<String>,
    /// `urn:srcos:workspace:…`.
    pub workspace_ref: String,
    /// The state.
    pub state: GitState,
    /// Severity.
    pub severity: Severity,
    /// The operation.
    pub operation: Operation,
    /// What to do.
    pub actionability: Actionability,
    /// The path, as evidence.
    pub path_evidence: PathEvidenceDoc,
    /// Git facts.
    pub git_facts: GitFacts,
    /// A normal negative answer for the operation.
    pub expected_negative_state: bool,
    /// What led to the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causal_refs: Vec<String>,
    /// `urn:srcos:decision:…` allowing the probe.
    pub policy_decision_ref: String,
    /// The probe transcript's digest, then any the caller adds.
    pub evidence_refs: Vec<String>,
    /// RFC 3339 UTC.
    pub captured_at: String,
}

/// The references a document carries besides the classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentContext {
    /// `urn:srcos:session:…`.
    pub session_ref: String,
    /// `urn:srcos:capability-ledger:…`.
    pub capability_ledger_ref: String,
    /// `urn:srcos:workspace:…`.
    pub workspace_ref: String,
    /// `urn:srcos:decision:…`.
    pub policy_decision_ref: String,
    /// `urn:srcos:agent-machine-receipt:…`.
    pub agent_machine_receipt_ref: Option<String>,
    /// Causal references (any text without control characters).
    pub causal_refs: Vec<String>,
    /// More evidence references, after the transcript digest.
    pub evidence_refs: Vec<String>,
}

/// A context reference that the contract would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {reason}")]
pub struct ContextError {
    /// Which reference.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

fn check_ref(field: &'static str, value: &str, prefix: &str) -> Result<(), ContextError> {
    let err = |reason: String| ContextError {
        field,
        value: value.to_owned(),
        reason,
    };
    let Some(local) = value.strip_prefix(prefix) else {
        return Err(err(format!("must start with {prefix}")));
    };
    if local.is_empty() {
        return Err(err(format!("needs an id after {prefix}")));
    }
    if value.len() > MAX_REF_BYTES {
        return Err(err(format!("longer than {MAX_REF_BYTES} bytes")));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/@+#".contains(*c)))
    {
        return Err(err(format!(
            "contains {c:?}; references use ASCII letters, digits and . _ - : / @ + #"
        )));
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str) -> Result<(), ContextError> {
    if value.is_empty() || value.len() > MAX_REF_BYTES || value.chars().any(char::is_control) {
        return Err(ContextError {
            field,
            value: value.to_owned(),
            reason: format!("must be 1 to {MAX_REF_BYTES} bytes without control characters"),
        });
    }
    Ok(())
}

impl DocumentContext {
    /// A context for a local workspace alias with local defaults:
    /// `urn:srcos:session:local`, `urn:srcos:capability-ledger:local`,
    /// `urn:srcos:decision:local-git-classification`.
    pub fn local(workspace_alias: &str) -> Self {
        Self {
            session_ref: "urn:srcos:session:local".into(),
            capability_ledger_ref: "urn:srcos:capability-ledger:local".into(),
            workspace_ref: format!("urn:srcos:workspace:{workspace_alias}"),
            policy_decision_ref: "urn:srcos:decision:local-git-classification".into(),
            agent_machine_receipt_ref: None,
            causal_refs: Vec::new(),
            evidence_refs: Vec::new(),
        }
    }

    /// Checks every reference against the contract's prefixes.
    pub fn check(&self) -> Result<(), ContextError> {
        check_ref("session", &self.session_ref, "urn:srcos:session:")?;
        check_ref(
            "capability ledger",
            &self.capability_ledger_ref,
            "urn:srcos:capability-ledger:",
        )?;
        check_ref("workspace", &self.workspace_ref, "urn:srcos:workspace:")?;
        check_ref(
            "policy decision",
            &self.policy_decision_ref,
            "urn:srcos:decision:",
        )?;
        if let Some(r) = &self.agent_machine_receipt_ref {
            check_ref(
                "agent machine receipt",
                r,
                "urn:srcos:agent-machine-receipt:",
            )?;
        }
        for r in &self.causal_refs {
            check_text("causal reference", r)?;
        }
        for r in &self.evidence_refs {
            check_text("evidence reference", r)?;
        }
        Ok(())
    }
}

impl Classification {
    /// The document for this classification in `ctx`. Its id is derived
    /// from the path digest, the capture time and the operation, so the
    /// same answer gives the same document.
    pub fn to_document(&self, ctx: &DocumentContext) -> Result<GitWorkspaceState, ContextError> {
        ctx.check()?;
        let digest_hex = self
            .path
            .path_digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.path.path_digest);
        let short: String = digest_hex.chars().take(16).collect();
        let mut evidence_refs = vec![self.transcript_digest.clone()];
        evidence_refs.extend(ctx.evidence_refs.iter().cloned());
        Ok(GitWorkspaceState {
            id: format!(
                "{ID_PREFIX}{short}-{}-{}",
                self.captured_at.unix_micros(),
                self.operation.as_str()
            ),
            doc_type: DOCUMENT_TYPE.into(),
            spec_version: SPEC_VERSION.into(),
            session_ref: ctx.session_ref.clone(),
            capability_ledger_ref: ctx.capability_ledger_ref.clone(),
            agent_machine_receipt_ref: ctx.agent_machine_receipt_ref.clone(),
            workspace_ref: ctx.workspace_ref.clone(),
            state: self.state,
            severity: self.severity,
            operation: self.operation,
            actionability: self.actionability,
            path_evidence: PathEvidenceDoc {
                path_digest: self.path.path_digest.clone(),
                redacted_path_hint: self.path.redacted_path_hint.clone(),
                redaction: self.path.redaction,
                raw_path_stored: false,
            },
            git_facts: self.facts.clone(),
            expected_negative_state: self.expected_negative_state,
            causal_refs: ctx.causal_refs.clone(),
            policy_decision_ref: ctx.policy_decision_ref.clone(),
            evidence_refs,
            captured_at: self.captured_at.to_string(),
        })
    }
}

/// Building the event that records a document failed.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// The actor, subject or session is not an acceptable identifier.
    #[error("{0}")]
    Invalid(#[from] core::InvalidValue),
    /// The document does not serialise (never expected).
    #[error("the document cannot be written as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The core's validation of the kind refused it.
    #[error("{0}")]
    Refused(String),
}

impl GitWorkspaceState {
    /// The `git.workspace_state_recorded` event for this document: subject
    /// is the path digest, and the idempotency key is the document id
    /// (recording the same document twice records it once). With
    /// [`Attach::Session`] the envelope's session is the document's, so the
    /// event joins that session's DAG (or waits as an orphan until the
    /// session is opened); with [`Attach::None`] the reference stays in the
    /// document only. Validated as the store would validate it.
    pub fn to_draft(&self, actor: &str, attach: Attach) -> Result<core::EventDraft, DraftError> {
        let mut d = core::EventDraft::new(
            core::ActorId::new(actor)?,
            core::EventKind::new(core::GIT_STATE_KIND)?,
        );
        d.subject = Some(core::Subject::new(self.path_evidence.path_digest.as_str())?);
        if attach == Attach::Session {
            d.session = Some(core::SessionRef::new(self.session_ref.as_str())?);
        }
        d.idempotency_key = Some(core::IdempotencyKey::new(self.id.as_str())?);
        d.payload = core::Payload::new(serde_json::to_value(self)?)?;
        core::validate_kind(&mut d).map_err(DraftError::Refused)?;
        Ok(d)
    }
}

/// Whether a recorded document joins its session's DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The envelope names the document's session.
    Session,
    /// The envelope names no session (the document still references one):
    /// for a probe made outside any session the caller opened.
    None,
}

/// What recording a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Appended and durable.
    Appended {
        /// Its sequence number.
        seq: u64,
    },
    /// The same document was recorded before.
    Duplicate {
        /// The original's sequence number.
        seq: u64,
    },
    /// The store refused it; nothing was recorded.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Local policy did not allow it; the decision was recorded.
    PolicyBlocked {
        /// The decision.
        decision_id: String,
        /// Why.
        reason: String,
    },
}

/// Recording failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event could not be built.
    #[error("cannot build the event")]
    Draft(#[from] DraftError),
    /// The store failed.
    #[error("cannot append")]
    Append(#[from] core::AppendError),
}

/// Appends `doc` to the log as a `git.workspace_state_recorded` event.
pub fn record(
    store: &core::Store,
    doc: &GitWorkspaceState,
    actor: &str,
    attach: Attach,
) -> Result<RecordOutcome, RecordError> {
    let draft = doc.to_draft(actor, attach)?;
    Ok(match store.append(draft)? {
        core::AppendOutcome::Appended { seq, .. } => RecordOutcome::Appended { seq: seq.get() },
        core::AppendOutcome::Duplicate { seq, .. } => RecordOutcome::Duplicate { seq: seq.get() },
        core::AppendOutcome::Rejected { reason } => RecordOutcome::Rejected { reason },
        core::AppendOutcome::PolicyBlocked {
            decision_id,
            reason,
            ..
        } => RecordOutcome::PolicyBlocked {
            decision_id,
            reason,
        },
    })
}
