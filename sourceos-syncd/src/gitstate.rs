//! Git workspace states in the log: the `git.workspace_state_recorded`
//! kind, whose payload is a GitWorkspaceState document
//! (`shared/spec/schemas/GitWorkspaceState.json`), its validation, and the
//! read API over the git_state projection (latest state per path digest).
//!
//! Validation follows the schema (required fields, no unknown fields,
//! enumerations, reference prefixes, digest and commit formats) and adds
//! what a schema cannot say: `rawPathStored` is false, a hint is never an
//! absolute path nor unredacted, `capturedAt` parses, and the event's
//! subject is the path digest (filled in when absent).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::EventDraft;
use crate::explain::MAX_LISTED;
use crate::ids::{Subject, Timestamp};
use crate::kinds::KindSpec;
use crate::projection::git_state::{self, Stored};
use crate::projection::ProjectionError;
use crate::store::Store;

/// The kind that records a GitWorkspaceState document.
pub const GIT_STATE_KIND: &str = "git.workspace_state_recorded";

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[KindSpec {
    kind: GIT_STATE_KIND,
    validate: recorded,
}];

/// The contract's states.
pub const GIT_STATES: [&str; 10] = [
    "not_a_repo",
    "repo_root",
    "inside_worktree",
    "inside_git_dir",
    "bare_repo",
    "worktree_no_remote",
    "detached_head",
    "corrupt_repo",
    "permission_denied",
    "operation_superseded",
];
const SEVERITIES: [&str; 4] = ["debug", "info", "warning", "error"];
const OPERATIONS: [&str; 5] = [
    "passive_discovery",
    "watcher_refresh",
    "user_requested_command",
    "agent_requested_command",
    "ci_validation",
];
const ACTIONABILITY: [&str; 4] = ["none", "remediation_hint", "blocked", "quarantined"];
const REDACTIONS: [&str; 4] = [
    "none",
    "user_home_redacted",
    "workspace_alias",
    "digest_only",
];
const REMOTE_STATES: [&str; 5] = ["available", "missing", "not_applicable", "error", "unknown"];
const COMMAND_CLASSES: [&str; 7] = [
    "config",
    "rev_parse",
    "symbolic_ref",
    "for_each_ref",
    "status",
    "remote",
    "watcher",
];
const TOP_KEYS: [&str; 18] = [
    "id",
    "type",
    "specVersion",
    "sessionRef",
    "capabilityLedgerRef",
    "agentMachineReceiptRef",
    "workspaceRef",
    "state",
    "severity",
    "operation",
    "actionability",
    "pathEvidence",
    "gitFacts",
    "expectedNegativeState",
    "causalRefs",
    "policyDecisionRef",
    "evidenceRefs",
    "capturedAt",
];
const EVIDENCE_KEYS: [&str; 4] = [
    "pathDigest",
    "redactedPathHint",
    "redaction",
    "rawPathStored",
];
const FACT_KEYS: [&str; 7] = [
    "branch",
    "headSha",
    "remoteState",
    "worktreeRootDigest",
    "gitDirDigest",
    "failureReason",
    "commandClass",
];

/// Whether `text` is `sha256:` followed by 64 hex digits.
pub fn is_sha256_ref(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn only_keys(at: &str, m: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match m
        .keys()
        .find(|k| k.is_empty() || !allowed.contains(&k.as_str()))
    {
        Some(k) => Err(format!("{at}.{k} is not a field of GitWorkspaceState")),
        None => Ok(()),
    }
}

fn string<'a>(at: &str, m: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{at}.{key} must be a string")),
        None => Err(format!("{at}.{key} is required")),
    }
}

/// A field that must be present and may be null.
fn nullable<'a>(at: &str, m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match m.get(key) {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{at}.{key} must be a string or null")),
        None => Err(format!("{at}.{key} is required (it may be null)")),
    }
}

/// A field that may be absent or null.
fn optional<'a>(at: &str, m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match m.get(key) {
        None => Ok(None),
        _ => nullable(at, m, key),
    }
}

fn one_of(at: &str, m: &Map<String, Value>, key: &str, allowed: &[&str]) -> Result<(), String> {
    let v = string(at, m, key)?;
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{at}.{key} {v:?} is not one of {}",
            allowed.join(", ")
        ))
    }
}

fn prefixed(at: &str, m: &Map<String, Value>, key: &str, prefix: &str) -> Result<(), String> {
    let v = string(at, m, key)?;
    match v.strip_prefix(prefix) {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(format!("{at}.{key} {v:?} must start with {prefix}")),
    }
}

fn digest_or_null(at: &str, m: &Map<String, Value>, key: &str) -> Result<(), String> {
    match nullable(at, m, key)? {
        Some(d) if !is_sha256_ref(d) => Err(format!(
            "{at}.{key} must be sha256: followed by 64 hex digits"
        )),
        _ => Ok(()),
    }
}

fn strings(at: &str, m: &Map<String, Value>, key: &str) -> Result<usize, String> {
    match m.get(key) {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(a.len()),
        Some(_) => Err(format!("{at}.{key} must be an array of strings")),
        None => Ok(0),
    }
}

/// Whether a hint looks like an absolute path (Unix, UNC or drive).
fn looks_absolute(hint: &str) -> bool {
    let b = hint.as_bytes();
    hint.starts_with('/')
        || hint.starts_with('\\')
        || (b.len() >= 2
            && b.first().is_some_and(u8::is_ascii_alphabetic)
            && b.get(1) == Some(&b':'))
}

fn path_evidence(m: &Map<String, Value>) -> Result<&str, String> {
    let at = "payload.pathEvidence";
    let Some(Value::Object(e)) = m.get("pathEvidence") else {
        return Err(format!("{at} is required and must be an object"));
    };
    only_keys(at, e, &EVIDENCE_KEYS)?;
    let digest = string(at, e, "pathDigest")?;
    if !is_sha256_ref(digest) {
        return Err(format!(
            "{at}.pathDigest must be sha256: followed by 64 hex digits"
        ));
    }
    match e.get("rawPathStored") {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(format!(
                "{at}.rawPathStored is true; git path evidence never stores the raw path"
            ))
        }
        _ => return Err(format!("{at}.rawPathStored is required and must be false")),
    }
    one_of(at, e, "redaction", &REDACTIONS)?;
    if let Some(hint) = optional(at, e, "redactedPathHint")? {
        if string(at, e, "redaction")? == "none" {
            return Err(format!(
                "{at}.redactedPathHint is given with redaction \"none\": that is the raw path"
            ));
        }
        if looks_absolute(hint) {
            return Err(format!(
                "{at}.redactedPathHint is an absolute path; hints are redacted (~/…, or a workspace alias)"
            ));
        }
    }
    Ok(digest)
}

fn git_facts(m: &Map<String, Value>) -> Result<(), String> {
    let at = "payload.gitFacts";
    let Some(Value::Object(f)) = m.get("gitFacts") else {
        return Err(format!("{at} is required and must be an object"));
    };
    only_keys(at, f, &FACT_KEYS)?;
    nullable(at, f, "branch")?;
    if let Some(sha) = nullable(at, f, "headSha")? {
        if !((7..=40).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!("{at}.headSha must be 7 to 40 hex digits"));
        }
    }
    one_of(at, f, "remoteState", &REMOTE_STATES)?;
    digest_or_null(at, f, "worktreeRootDigest")?;
    digest_or_null(at, f, "gitDirDigest")?;
    optional(at, f, "failureReason")?;
    if let Some(c) = optional(at, f, "commandClass")? {
        if !COMMAND_CLASSES.contains(&c) {
            return Err(format!(
                "{at}.commandClass {c:?} is not one of {} (or null)",
                COMMAND_CLASSES.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks a GitWorkspaceState document; returns its path digest.
pub(crate) fn check_document(m: &Map<String, Value>) -> Result<&str, String> {
    let at = "payload";
    only_keys(at, m, &TOP_KEYS)?;
    prefixed(at, m, "id", "urn:srcos:git-workspace-state:")?;
    if string(at, m, "type")? != "GitWorkspaceState" {
        return Err(format!("{at}.type must be \"GitWorkspaceState\""));
    }
    if string(at, m, "specVersion")?.is_empty() {
        return Err(format!("{at}.specVersion must not be empty"));
    }
    prefixed(at, m, "sessionRef", "urn:srcos:session:")?;
    prefixed(at, m, "capabilityLedgerRef", "urn:srcos:capability-ledger:")?;
    if optional(at, m, "agentMachineReceiptRef")?.is_some() {
        prefixed(
            at,
            m,
            "agentMachineReceiptRef",
            "urn:srcos:agent-machine-receipt:",
        )?;
    }
    prefixed(at, m, "workspaceRef", "urn:srcos:workspace:")?;
    one_of(at, m, "state", &GIT_STATES)?;
    one_of(at, m, "severity", &SEVERITIES)?;
    one_of(at, m, "operation", &OPERATIONS)?;
    one_of(at, m, "actionability", &ACTIONABILITY)?;
    let digest = path_evidence(m)?;
    git_facts(m)?;
    match m.get("expectedNegativeState") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return Err(format!("{at}.expectedNegativeState must be a boolean")),
    }
    strings(at, m, "causalRefs")?;
    let decision = string(at, m, "policyDecisionRef")?;
    if decision.starts_with("urn:srcos:policy-decision:") {
        return Err(format!(
            "{at}.policyDecisionRef uses the prefix urn:srcos:policy-decision:; decisions are urn:srcos:decision:<id>"
        ));
    }
    prefixed(at, m, "policyDecisionRef", "urn:srcos:decision:")?;
    if !matches!(m.get("evidenceRefs"), Some(Value::Array(_)))
        || strings(at, m, "evidenceRefs")? == 0
    {
        return Err(format!(
            "{at}.evidenceRefs is required: a non-empty array of strings"
        ));
    }
    let at_text = string(at, m, "capturedAt")?;
    Timestamp::parse(at_text).map_err(|e| format!("{at}.capturedAt: {e}"))?;
    Ok(digest)
}

fn recorded(d: &mut EventDraft) -> Result<(), String> {
    let Some(doc) = d.payload.as_map() else {
        return Err("payload must be a GitWorkspaceState document".into());
    };
    let digest = check_document(doc)?.to_owned();
    let session = string("payload", doc, "sessionRef")?.to_owned();
    if let Some(s) = &d.session {
        if s.as_str() != session {
            return Err(format!(
                "session {s} differs from payload.sessionRef {session}"
            ));
        }
    }
    match &d.subject {
        Some(s) if s.as_str() != digest => Err(format!(
            "subject {s} differs from payload.pathEvidence.pathDigest {digest}"
        )),
        Some(_) => Ok(()),
        None => {
            d.subject = Some(Subject::new(digest).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

/// The latest recorded state of one path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GitStateRecord {
    /// `sha256:` digest of the path.
    pub path_digest: String,
    /// Sequence number of the event that recorded it.
    pub seq: u64,
    /// When it was recorded.
    pub recorded_at: String,
    /// Who recorded it.
    pub actor: String,
    /// The document's state.
    pub state: String,
    /// Its severity.
    pub severity: String,
    /// Its operation.
    pub operation: String,
    /// When the state was observed.
    pub captured_at: String,
    /// The GitWorkspaceState document.
    pub document: Value,
}

fn view(path_digest: String, s: Stored) -> Result<GitStateRecord, ProjectionError> {
    let document: Value = serde_json::from_str(&s.doc).map_err(|e| ProjectionError::Damaged {
        tree: crate::projection::tree_name(git_state::NAME),
        key: path_digest.clone(),
        reason: format!("document: {e}"),
    })?;
    let field = |k: &str| {
        document
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(GitStateRecord {
        state: field("state"),
        severity: field("severity"),
        operation: field("operation"),
        captured_at: field("capturedAt"),
        path_digest,
        seq: s.seq,
        recorded_at: s.recorded_at.to_string(),
        actor: s.actor,
        document,
    })
}

fn digest_field(s: &Stored) -> String {
    serde_json::from_str::<Value>(&s.doc)
        .ok()
        .and_then(|d| {
            d.get("pathEvidence")?
                .get("pathDigest")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The latest recorded state of every path, in path-digest order (at most
/// [`MAX_LISTED`]).
pub fn git_states(store: &Store) -> Result<Vec<GitStateRecord>, ProjectionError> {
    store.with_projection(git_state::NAME, |state| {
        git_state::list(state, MAX_LISTED)?
            .into_iter()
            .map(|s| view(digest_field(&s), s))
            .collect()
    })?
}

/// The latest recorded state of the path with this digest.
pub fn git_state(
    store: &Store,
    path_digest: &str,
) -> Result<Option<GitStateRecord>, ProjectionError> {
    if !is_sha256_ref(path_digest) {
        return Ok(None);
    }
    store.with_projection(git_state::NAME, |state| {
        git_state::get(state, path_digest)?
            .map(|s| view(path_digest.to_owned(), s))
            .transpose()
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::ids::{ActorId, EventKind};

    fn example() -> Value {
        serde_json::json!({
            "id": "urn:srcos:git-workspace-state:runtime-observability-0001",
            "type": "GitWorkspaceState",
            "specVersion": "0.1.0",
            "sessionRef": "urn:srcos:session:runtime-observability-demo-0001",
            "capabilityLedgerRef": "urn:srcos:capability-ledger:runtime-observability-0001",
            "agentMachineReceiptRef": "urn:srcos:agent-machine-receipt:runtime-probe-0001",
            "workspaceRef": "urn:srcos:workspace:runtime-observability-demo",
            "state": "not_a_repo",
            "severity": "info",
            "operation": "passive_discovery",
            "actionability": "none",
            "pathEvidence": {
                "pathDigest": format!("sha256:{}", "c".repeat(64)),
                "redactedPathHint": "~/Documents/New project",
                "redaction": "user_home_redacted",
                "rawPathStored": false
            },
            "gitFacts": {
                "branch": null,
                "headSha": null,
                "remoteState": "not_applicable",
                "worktreeRootDigest": null,
                "gitDirDigest": null,
                "failureReason": "Passive discovery classified the directory as not_a_repo; no warning is required.",
                "commandClass": "rev_parse"
            },
            "expectedNegativeState": true,
            "causalRefs": ["urn:srcos:event:git-passive-discovery-0001"],
            "policyDecisionRef": "urn:srcos:decision:runtime-observability-policy-0001",
            "evidenceRefs": ["urn:srcos:evidence:git-workspace-passive-discovery-0001"],
            "capturedAt": "2026-05-06T04:32:00Z"
        })
    }

    fn draft(payload: Value) -> EventDraft {
        let mut d = EventDraft::new(
            ActorId::new("actor:git-classifier").unwrap(),
            EventKind::new(GIT_STATE_KIND).unwrap(),
        );
        d.payload = Payload::new(payload).unwrap();
        d
    }

    #[test]
    fn the_published_example_is_accepted_and_names_its_subject() {
        let mut d = draft(example());
        crate::kinds::validate(&mut d).unwrap();
        assert_eq!(
            d.subject.unwrap().as_str(),
            format!("sha256:{}", "c".repeat(64))
        );
    }

    #[test]
    fn contract_violations_are_refused() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "rawPathStored",
                Box::new(|v| v["pathEvidence"]["rawPathStored"] = true.into()),
            ),
            (
                "pathDigest",
                Box::new(|v| v["pathEvidence"]["pathDigest"] = "sha256:abc".into()),
            ),
            (
                "absolute",
                Box::new(|v| v["pathEvidence"]["redactedPathHint"] = "/home/ada/x".into()),
            ),
            (
                "raw path",
                Box::new(|v| v["pathEvidence"]["redaction"] = "none".into()),
            ),
            ("state", Box::new(|v| v["state"] = "lost".into())),
            (
                "headSha",
                Box::new(|v| v["gitFacts"]["headSha"] = "xyz".into()),
            ),
            (
                "branch",
                Box::new(|v| {
                    v["gitFacts"].as_object_mut().unwrap().remove("branch");
                }),
            ),
            ("not a field", Box::new(|v| v["extra"] = 1.into())),
            (
                "policy-decision",
                Box::new(|v| v["policyDecisionRef"] = "urn:srcos:policy-decision:x".into()),
            ),
            (
                "evidenceRefs",
                Box::new(|v| v["evidenceRefs"] = serde_json::json!([])),
            ),
            (
                "capturedAt",
                Box::new(|v| v["capturedAt"] = "yesterday".into()),
            ),
            (
                "sessionRef",
                Box::new(|v| v["sessionRef"] = "session:1".into()),
            ),
            (
                "commandClass",
                Box::new(|v| v["gitFacts"]["commandClass"] = "push".into()),
            ),
        ];
        for (what, change) in cases {
            let mut v = example();
            change(&mut v);
            let err = crate::kinds::validate(&mut draft(v)).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
        }
        let mut d = draft(example());
        d.subject = Some(Subject::new("object:other").unwrap());
        assert!(crate::kinds::validate(&mut d)
            .unwrap_err()
            .contains("differs"));
    }

    #[test]
    fn latest_state_per_path_digest_survives_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(
            dir.path(),
            crate::store::InitOptions {
                device: Some(crate::ids::DeviceId::new("device:t").unwrap()),
                profile: crate::ids::ProfileId::new("profile:local-dev").unwrap(),
                created_at: None,
            },
            crate::store::OpenOptions::default(),
        )
        .unwrap();
        let other = format!("sha256:{}", "d".repeat(64));
        for (i, (state, digest)) in [
            ("not_a_repo", format!("sha256:{}", "c".repeat(64))),
            ("repo_root", other.clone()),
            ("detached_head", format!("sha256:{}", "c".repeat(64))),
        ]
        .into_iter()
        .enumerate()
        {
            let mut v = example();
            v["state"] = state.into();
            v["id"] = format!("urn:srcos:git-workspace-state:{i}").into();
            v["pathEvidence"]["pathDigest"] = digest.into();
            let mut d = draft(v);
            crate::kinds::validate(&mut d).unwrap();
            store.append(d).unwrap();
        }
        let check = |store: &Store| {
            let all = git_states(store).unwrap();
            assert_eq!(all.len(), 2);
            let c = git_state(store, &format!("sha256:{}", "c".repeat(64)))
                .unwrap()
                .unwrap();
            assert_eq!((c.state.as_str(), c.seq), ("detached_head", 3));
            assert_eq!(
                git_state(store, &other).unwrap().unwrap().state,
                "repo_root"
            );
            assert!(git_state(store, "sha256:nope").unwrap().is_none());
        };
        check(&store);
        store
            .rebuild(&[git_state::NAME.to_owned()], &mut |_, _| {})
            .unwrap();
        check(&store);
    }
}
