//! Document contracts: the JSON Schemas (draft 2020-12) of every document
//! syncd reads or writes, embedded in the binary from `schemas/`, and the
//! rules a schema cannot express (the cross-field rules of the SourceOS
//! contracts, and session ownership across a set of documents).
//!
//! Validation never touches the network: the schemas are self-contained
//! (only `#/$defs/...` references) and the validator is built without its
//! HTTP and file resolvers.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

/// Violations reported per document before the rest are counted.
pub const MAX_VIOLATIONS: usize = 64;

/// One embedded schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchemaInfo {
    /// Name used by `--schema` and, for SourceOS records, the document's
    /// `type`.
    pub name: &'static str,
    /// Whether it is a published SourceOS record (chosen from `type`).
    pub sourceos: bool,
    /// What the documents are.
    pub about: &'static str,
    #[serde(skip)]
    text: &'static str,
}

impl SchemaInfo {
    /// The schema's JSON text, as embedded.
    pub fn text(&self) -> &'static str {
        self.text
    }
}

/// Every schema, SourceOS records first.
pub const SCHEMAS: &[SchemaInfo] = &[
    SchemaInfo {
        name: "CapabilityLedger",
        sourceos: true,
        about: "effective state of one capability across planes (syncd capabilities)",
        text: include_str!("../../schemas/CapabilityLedger.json"),
    },
    SchemaInfo {
        name: "BrowserAutomationReceipt",
        sourceos: true,
        about: "a user-visible, revocable browser automation session (syncd receipts)",
        text: include_str!("../../schemas/BrowserAutomationReceipt.json"),
    },
    SchemaInfo {
        name: "GitWorkspaceState",
        sourceos: true,
        about: "what a path is to Git, with redacted path evidence (syncd git-state)",
        text: include_str!("../../schemas/GitWorkspaceState.json"),
    },
    SchemaInfo {
        name: "OrphanEventReceipt",
        sourceos: true,
        about: "an event that arrived before its session, and what became of it",
        text: include_str!("../../schemas/OrphanEventReceipt.json"),
    },
    SchemaInfo {
        name: "RuntimeInstallReceipt",
        sourceos: true,
        about: "a runtime install and where it got to (syncd receipts)",
        text: include_str!("../../schemas/RuntimeInstallReceipt.json"),
    },
    SchemaInfo {
        name: "EventInput",
        sourceos: false,
        about: "one line of syncd ingest input",
        text: include_str!("../../schemas/EventInput.json"),
    },
    SchemaInfo {
        name: "Event",
        sourceos: false,
        about: "one event as syncd log --json prints it",
        text: include_str!("../../schemas/Event.json"),
    },
    SchemaInfo {
        name: "StatusDocument",
        sourceos: false,
        about: "syncd status --json",
        text: include_str!("../../schemas/StatusDocument.json"),
    },
    SchemaInfo {
        name: "DoctorReport",
        sourceos: false,
        about: "syncd doctor --json",
        text: include_str!("../../schemas/DoctorReport.json"),
    },
    SchemaInfo {
        name: "Explanation",
        sourceos: false,
        about: "syncd explain OBJECT --json",
        text: include_str!("../../schemas/Explanation.json"),
    },
];

/// The schema of a name.
pub fn schema_info(name: &str) -> Option<&'static SchemaInfo> {
    SCHEMAS.iter().find(|s| s.name == name)
}

/// One problem in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer of the offending value (`""` is the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Violation {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The result of checking one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// The schema it was checked against.
    pub schema: &'static str,
    /// Problems, at most [`MAX_VIOLATIONS`].
    pub violations: Vec<Violation>,
    /// Problems beyond the bound.
    pub not_listed: usize,
}

impl Checked {
    /// True when nothing is wrong.
    pub fn valid(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Why a document could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// No schema has this name.
    #[error("no schema is named {name:?} (see `syncd schema list`)")]
    UnknownSchema {
        /// The name asked for.
        name: String,
    },
    /// No schema was named and the document's `type` names none.
    #[error("cannot choose a schema: the document has {found}; pass --schema NAME")]
    NoSchemaChosen {
        /// What the document's `type` was.
        found: String,
    },
    /// An embedded schema does not compile (a build defect).
    #[error("embedded schema {name} is unusable: {reason}")]
    BrokenSchema {
        /// The schema.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

type Compiled = Result<jsonschema::Validator, String>;

fn compiled() -> &'static Vec<(&'static str, Compiled)> {
    static CELL: OnceLock<Vec<(&'static str, Compiled)>> = OnceLock::new();
    CELL.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|s| {
                let built = serde_json::from_str::<Value>(s.text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        jsonschema::draft202012::options()
                            .should_validate_formats(true)
                            .build(&v)
                            .map_err(|e| e.to_string())
                    });
                (s.name, built)
            })
            .collect()
    })
}

fn validator(name: &'static str) -> Result<&'static jsonschema::Validator, ContractError> {
    match compiled().iter().find(|(n, _)| *n == name) {
        Some((_, Ok(v))) => Ok(v),
        Some((_, Err(reason))) => Err(ContractError::BrokenSchema {
            name,
            reason: reason.clone(),
        }),
        None => Err(ContractError::UnknownSchema { name: name.into() }),
    }
}

/// Chooses the schema: the one named, else the SourceOS record named by
/// the document's `type`.
pub fn choose(doc: &Value, name: Option<&str>) -> Result<&'static SchemaInfo, ContractError> {
    if let Some(n) = name {
        return schema_info(n).ok_or_else(|| ContractError::UnknownSchema { name: n.into() });
    }
    match doc.get("type") {
        Some(Value::String(t)) => SCHEMAS
            .iter()
            .find(|s| s.sourceos && s.name == t)
            .ok_or_else(|| ContractError::NoSchemaChosen {
                found: format!(
                    "type {:?}, which is no SourceOS record syncd knows",
                    crate::ids::truncated(t)
                ),
            }),
        Some(_) => Err(ContractError::NoSchemaChosen {
            found: "a `type` that is not a string".into(),
        }),
        None => Err(ContractError::NoSchemaChosen {
            found: "no `type`".into(),
        }),
    }
}

/// Checks one document against a schema (chosen as [`choose`] does) and
/// the cross-field rules of its record type.
pub fn validate_document(doc: &Value, name: Option<&str>) -> Result<Checked, ContractError> {
    let info = choose(doc, name)?;
    let mut all = schema_violations(info.name, doc)?;
    all.extend(cross_field(info.name, doc));
    let not_listed = all.len().saturating_sub(MAX_VIOLATIONS);
    all.truncate(MAX_VIOLATIONS);
    Ok(Checked {
        schema: info.name,
        violations: all,
        not_listed,
    })
}

/// Schema violations only, each with its JSON pointer.
pub(crate) fn schema_violations(
    name: &'static str,
    doc: &Value,
) -> Result<Vec<Violation>, ContractError> {
    let v = validator(name)?;
    Ok(v.iter_errors(doc)
        .take(MAX_VIOLATIONS + 1)
        .map(|e| Violation::new(e.instance_path().to_string(), e.to_string()))
        .collect())
}

fn text<'a>(doc: &'a Value, pointer: &str) -> Option<&'a str> {
    doc.pointer(pointer).and_then(Value::as_str)
}

fn time(doc: &Value, pointer: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    text(doc, pointer).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
}

/// `later` (when present) is not before `earlier`.
fn ordered(doc: &Value, earlier: &str, later: &str, out: &mut Vec<Violation>) {
    if let (Some(a), Some(b)) = (time(doc, earlier), time(doc, later)) {
        if b < a {
            out.push(Violation::new(
                later,
                format!(
                    "{} is before {}; timestamps must be ordered",
                    later.trim_start_matches('/'),
                    earlier.trim_start_matches('/')
                ),
            ));
        }
    }
}

/// The rules of the SourceOS contracts that a schema cannot state.
pub(crate) fn cross_field(name: &str, doc: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    match name {
        "BrowserAutomationReceipt" => {
            ordered(doc, "/startedAt", "/capturedAt", &mut out);
            ordered(doc, "/startedAt", "/revokedAt", &mut out);
            let revoked_at = text(doc, "/revokedAt").is_some();
            let state = text(doc, "/terminalState");
            if state == Some("revoked") && !revoked_at {
                out.push(Violation::new(
                    "/revokedAt",
                    "terminalState is revoked, so revokedAt must name when",
                ));
            }
            if revoked_at && state.is_some_and(|s| s != "revoked") {
                out.push(Violation::new(
                    "/terminalState",
                    "revokedAt is set, so terminalState must be revoked",
                ));
            }
        }
        "RuntimeInstallReceipt" => {
            ordered(doc, "/startedAt", "/capturedAt", &mut out);
            ordered(doc, "/startedAt", "/finishedAt", &mut out);
        }
        "OrphanEventReceipt" => {
            ordered(doc, "/observedAt", "/capturedAt", &mut out);
            ordered(
                doc,
                "/observedAt",
                "/sessionResolution/reconciledAt",
                &mut out,
            );
            ordered(
                doc,
                "/observedAt",
                "/sessionResolution/quarantinedAt",
                &mut out,
            );
            match text(doc, "/sessionResolution/state") {
                Some("recovered")
                    if text(doc, "/sessionResolution/recoveredSessionRef").is_none() =>
                {
                    out.push(Violation::new(
                        "/sessionResolution/recoveredSessionRef",
                        "a recovered orphan must name the session it was recovered into",
                    ))
                }
                Some("quarantined") if text(doc, "/sessionResolution/quarantinedAt").is_none() => {
                    out.push(Violation::new(
                        "/sessionResolution/quarantinedAt",
                        "a quarantined orphan must say when it was quarantined",
                    ))
                }
                _ => {}
            }
        }
        // The schema says `const: false`; this names the reason.
        "GitWorkspaceState"
            if doc.pointer("/pathEvidence/rawPathStored") == Some(&Value::Bool(true)) =>
        {
            out.push(Violation::new(
                "/pathEvidence/rawPathStored",
                "git path evidence never stores the raw path",
            ));
        }
        "CapabilityLedger" => {
            let owners = owners_of(doc);
            if text(doc, "/sessionRef").is_some() && owners.len() > 1 {
                out.push(Violation::new(
                    "/ownerRefs",
                    format!(
                        "the session is claimed by {} owners ({}); a session has one owner",
                        owners.len(),
                        owners.join(", ")
                    ),
                ));
            }
        }
        _ => {}
    }
    out
}

/// Distinct owners a document claims for its session.
fn owners_of(doc: &Value) -> Vec<String> {
    let mut owners: Vec<String> = Vec::new();
    if let Some(o) = text(doc, "/ownerRef") {
        owners.push(o.to_owned());
    }
    if let Some(Value::Array(a)) = doc.get("ownerRefs") {
        for o in a.iter().filter_map(Value::as_str) {
            if !owners.iter().any(|x| x == o) {
                owners.push(o.to_owned());
            }
        }
    }
    owners
}

/// Sessions that several documents claim, checked across a set: a session
/// owned by one owner in one document and another in the next is
/// ambiguous, and so is an id used by two different documents.
#[derive(Debug, Default)]
pub struct SetRules {
    owners: BTreeMap<String, (String, usize)>,
    ids: BTreeMap<String, (usize, u64)>,
}

/// Documents tracked per set before later ones are no longer compared.
pub const MAX_SET_DOCUMENTS: usize = 100_000;

impl SetRules {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks document number `index` (0-based) against those seen before.
    pub fn observe(&mut self, index: usize, doc: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        if self.ids.len() >= MAX_SET_DOCUMENTS {
            return out;
        }
        if let Some(id) = text(doc, "/id") {
            let fingerprint = fingerprint(doc);
            match self.ids.get(id) {
                Some((first, f)) if *f != fingerprint => out.push(Violation::new(
                    "/id",
                    format!(
                        "id {id} is already used by document {} with other content; ids are unique",
                        first + 1
                    ),
                )),
                Some(_) => {}
                None => {
                    self.ids.insert(id.to_owned(), (index, fingerprint));
                }
            }
        }
        if let Some(session) = text(doc, "/sessionRef") {
            for owner in owners_of(doc) {
                match self.owners.get(session) {
                    Some((o, first)) if *o != owner => out.push(Violation::new(
                        "/sessionRef",
                        format!(
                            "session {session} is owned by {o} (document {}) and by {owner} here: ambiguous session ownership",
                            first + 1
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        self.owners.insert(session.to_owned(), (owner, index));
                    }
                }
            }
        }
        out
    }
}

fn fingerprint(doc: &Value) -> u64 {
    let h = blake3::hash(doc.to_string().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(h.as_bytes().get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use serde_json::json;

    #[test]
    fn every_embedded_schema_compiles() {
        for s in SCHEMAS {
            validator(s.name).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let v: Value = serde_json::from_str(s.text).unwrap();
            assert_eq!(v["title"], s.name, "title of {}", s.name);
        }
    }

    #[test]
    fn schema_is_chosen_from_type_or_refused() {
        assert_eq!(
            choose(&json!({"type": "CapabilityLedger"}), None)
                .unwrap()
                .name,
            "CapabilityLedger"
        );
        assert!(matches!(
            choose(&json!({"type": "Nope"}), None),
            Err(ContractError::NoSchemaChosen { .. })
        ));
        assert!(matches!(
            choose(&json!({}), None),
            Err(ContractError::NoSchemaChosen { .. })
        ));
        assert!(matches!(
            choose(&json!({}), Some("Nope")),
            Err(ContractError::UnknownSchema { .. })
        ));
        // A syncd document is never chosen from `type`.
        assert!(choose(&json!({"type": "StatusDocument"}), None).is_err());
    }

    #[test]
    fn violations_carry_json_pointers() {
        let c = validate_document(
            &json!({"kind": "Bad Kind", "actor": "actor:a"}),
            Some("EventInput"),
        )
        .unwrap();
        assert!(!c.valid());
        assert_eq!(c.violations[0].path, "/kind");
    }

    #[test]
    fn one_session_two_owners_is_ambiguous() {
        let mut set = SetRules::new();
        let a = json!({"id": "urn:x:1", "sessionRef": "urn:srcos:session:s", "ownerRef": "urn:srcos:agent:a"});
        let b = json!({"id": "urn:x:2", "sessionRef": "urn:srcos:session:s", "ownerRef": "urn:srcos:agent:b"});
        assert!(set.observe(0, &a).is_empty());
        assert!(
            set.observe(0, &a).is_empty(),
            "the same document again is no conflict"
        );
        let v = set.observe(1, &b);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].path, "/sessionRef");
        let c = json!({"id": "urn:x:1", "sessionRef": "urn:srcos:session:t"});
        assert_eq!(set.observe(2, &c)[0].path, "/id");
    }
    fn schema_enum(name: &str, pointer: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(schema_info(name).unwrap().text).unwrap();
        v.pointer(pointer)
            .unwrap_or_else(|| panic!("{name}{pointer}"))
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    }

    fn names<T: serde::Serialize>(values: &[T]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// The Rust enums that fill these documents and the schemas' enums
    /// list the same values, and documents built from Rust types validate.
    #[test]
    fn rust_types_and_schemas_agree() {
        use crate::capability::{EffectiveState, Plane};
        use crate::receipt::{AutomationState, InstallState};
        assert_eq!(
            names(EffectiveState::ALL),
            schema_enum("CapabilityLedger", "/properties/effectiveState/enum")
        );
        assert_eq!(
            names(Plane::ALL),
            schema_enum("CapabilityLedger", "/$defs/plane/enum")
        );
        let terminal: Vec<AutomationState> = AutomationState::ALL
            .iter()
            .copied()
            .filter(|s| *s != AutomationState::NotStarted)
            .collect();
        assert_eq!(
            names(&terminal),
            schema_enum("BrowserAutomationReceipt", "/properties/terminalState/enum")
        );
        let install: Vec<InstallState> = InstallState::ALL
            .iter()
            .copied()
            .filter(|s| *s != InstallState::NotRequested)
            .collect();
        assert_eq!(
            names(&install),
            schema_enum("RuntimeInstallReceipt", "/properties/installState/enum")
        );
        assert_eq!(
            crate::gitstate::GIT_STATES.to_vec(),
            schema_enum("GitWorkspaceState", "/properties/state/enum")
        );
        use crate::status::Health;
        // A new variant fails this match, and so this test, until the
        // schema lists it too.
        let health = |h: Health| match h {
            Health::Clean
            | Health::Degraded
            | Health::Conflicted
            | Health::PolicyBlocked
            | Health::OfflineLocalOnly
            | Health::RepairRecommended
            | Health::DaemonUnavailable => h,
        };
        let all_health = [
            Health::Clean,
            Health::Degraded,
            Health::Conflicted,
            Health::PolicyBlocked,
            Health::OfflineLocalOnly,
            Health::RepairRecommended,
            Health::DaemonUnavailable,
        ]
        .map(health);
        assert_eq!(
            names(&all_health),
            schema_enum("StatusDocument", "/properties/health/enum")
        );
        use crate::doctor::{FindingClass, Severity};
        let mut classes = names(&[
            FindingClass::Repairable,
            FindingClass::NeedsReview,
            FindingClass::Advisory,
        ]);
        classes.sort();
        let mut want = schema_enum("DoctorReport", "/$defs/finding/properties/class/enum");
        want.sort();
        assert_eq!(classes, want);
        assert_eq!(
            names(&[Severity::Warning, Severity::Error, Severity::Critical]),
            schema_enum("DoctorReport", "/$defs/finding/properties/severity/enum")
        );
    }

    #[test]
    fn documents_built_from_rust_types_validate() {
        use crate::capability::{CapabilityRef, CapabilityState, Fact};
        let mut s = CapabilityState::new(CapabilityRef::new("urn:srcos:capability:x@1").unwrap());
        for (kind, p) in [
            (
                "capability.declared",
                json!({"plane": "config", "state": "enabled"}),
            ),
            (
                "capability.plane_reported",
                json!({"plane": "server", "verdict": "unsupported", "reason": "r"}),
            ),
        ] {
            let mut p = p.as_object().unwrap().clone();
            p.insert("policyDecisionRef".into(), json!("urn:srcos:decision:d"));
            s.apply(&Fact {
                kind,
                payload: &p,
                event_id: "e".into(),
                recorded_at: "2026-01-01T00:00:00.000000Z".into(),
            });
        }
        let doc = serde_json::to_value(s.document()).unwrap();
        let c = validate_document(&doc, None).unwrap();
        assert!(c.valid(), "{:?}", c.violations);
    }

    /// Orphan receipts the session DAG emits (queued, recovered,
    /// quarantined) pass our schema and the cross-field rules.
    #[test]
    fn emitted_orphan_receipts_validate() {
        use crate::clock::{CountingIdGenerator, SteppingClock};
        use crate::event::{EventDraft, Payload};
        use crate::ids::{ActorId, DeviceId, EventKind, ProfileId, SessionRef, Timestamp};
        use crate::store::{InitOptions, OpenOptions, Store};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(
            dir.path(),
            InitOptions {
                device: Some(DeviceId::new("device:a").unwrap()),
                profile: ProfileId::new("profile:test").unwrap(),
                created_at: None,
            },
            OpenOptions {
                clock: Arc::new(SteppingClock::new(
                    Timestamp::from_unix_micros(1_700_000_000_000_000),
                    1_000_000,
                )),
                ids: Arc::new(CountingIdGenerator::new(1_700_000_000_000)),
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let ev = |kind: &str, session: &str, payload: Value| {
            let mut d = EventDraft::new(
                ActorId::new("actor:agent").unwrap(),
                EventKind::new(kind).unwrap(),
            );
            d.session = Some(SessionRef::new(session).unwrap());
            d.payload = Payload::new(payload).unwrap();
            d
        };
        store
            .append(ev("note.added", "urn:srcos:session:late", json!({})))
            .unwrap();
        store
            .append(ev("note.added", "urn:srcos:session:never", json!({})))
            .unwrap();
        store
            .append(ev("note.added", "urn:srcos:session:queued", json!({})))
            .unwrap();
        store
            .append(ev(
                crate::session::SESSION_OPENED,
                "urn:srcos:session:late",
                json!({"lease_epoch": 1}),
            ))
            .unwrap();
        let mut states = Vec::new();
        // First as they are (one recovered, two queued), then after a
        // sweep that quarantines what waited longer than a second.
        for (ttl, sweep) in [(300, false), (1, true)] {
            if sweep {
                crate::session_dag::sweep(&store, ttl).unwrap();
            }
            for o in crate::session_dag::orphans(&store, ttl, store.now()).unwrap() {
                let doc = serde_json::to_value(&o.receipt).unwrap();
                let c = validate_document(&doc, None).unwrap();
                assert!(c.valid(), "{:?}\n{doc:#}", c.violations);
                states.push(o.receipt.session_resolution.state);
            }
        }
        for want in ["recovered", "quarantined", "queued"] {
            assert!(states.contains(&want), "no {want} receipt among {states:?}");
        }
    }
}
