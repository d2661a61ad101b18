//! Typed event kinds: the kinds syncd knows and how each one's envelope and
//! payload are validated before anything is appended.
//!
//! Kinds not listed here are free-form (dotted lowercase names) and carry
//! any JSON object. Each domain module declares its kinds in a `KINDS`
//! table; this module only joins the tables, so adding a domain is one line
//! in [`tables`].

use crate::event::EventDraft;

/// Validation of one known kind: returns why the draft is not acceptable.
pub(crate) type Validator = fn(&mut EventDraft) -> Result<(), String>;

/// A known kind.
pub(crate) struct KindSpec {
    /// The kind, e.g. `session.opened`.
    pub kind: &'static str,
    /// Checks envelope fields and payload.
    pub validate: Validator,
}

/// Every domain's table of kinds.
fn tables() -> [&'static [KindSpec]; 8] {
    [
        crate::model::KINDS,
        crate::agent_txn::KINDS,
        crate::gitstate::KINDS,
        crate::session::KINDS,
        crate::capability::KINDS,
        crate::receipt::KINDS,
        crate::lifecycle::KINDS,
        crate::lanes::KINDS,
    ]
}

/// The spec of a known kind.
fn spec(kind: &str) -> Option<&'static KindSpec> {
    tables()
        .into_iter()
        .flat_map(|t| t.iter())
        .find(|s| s.kind == kind)
}

/// Names of all known kinds, for documentation and help.
pub fn known_kinds() -> Vec<&'static str> {
    tables()
        .into_iter()
        .flat_map(|t| t.iter())
        .map(|s| s.kind)
        .collect()
}

/// Validates a draft against its kind's rules (free-form kinds pass). A
/// record event's subject is filled in from the record's id.
pub fn validate(draft: &mut EventDraft) -> Result<(), String> {
    match spec(draft.kind.as_str()) {
        Some(s) => (s.validate)(draft).map_err(|e| format!("{}: {e}", draft.kind)),
        None => Ok(()),
    }
}

/// Decodes a payload into a typed record, naming the failing field.
pub(crate) fn payload_as<T: serde::de::DeserializeOwned>(draft: &EventDraft) -> Result<T, String> {
    serde_json::from_value(draft.payload.to_value()).map_err(|e| format!("payload: {e}"))
}
