//! Agent object transactions: how an agent changes objects. The agent
//! proposes; the policy hook decides whether a person must review it; an
//! approved transaction is applied; only the application changes objects.
//!
//! Lifecycle: draft (the agent's own, before it is submitted) → proposed →
//! approved → applied, or → rejected from proposed or approved. The
//! transition function refuses every other move and changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventDraft;
use crate::kinds::{payload_as, KindSpec};

/// Objects one transaction may change.
pub const MAX_TXN_OBJECTS: usize = 64;

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "agent.transaction.proposed",
        validate: proposed,
    },
    KindSpec {
        kind: "agent.transaction.approved",
        validate: decided,
    },
    KindSpec {
        kind: "agent.transaction.rejected",
        validate: decided,
    },
    KindSpec {
        kind: "agent.transaction.applied",
        validate: decided,
    },
];

/// Where a transaction is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStatus {
    /// Being written by the agent; not yet in the log.
    Draft,
    /// Submitted, waiting for approval.
    Proposed,
    /// Approved (by policy or a person), not yet applied.
    Approved,
    /// Applied: its changes are in the objects.
    Applied,
    /// Rejected; it will never change anything.
    Rejected,
}

/// What happens to a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    /// `agent.transaction.proposed`.
    Propose,
    /// `agent.transaction.approved`.
    Approve,
    /// `agent.transaction.rejected`.
    Reject,
    /// `agent.transaction.applied`.
    Apply,
}

impl TxnEvent {
    /// The event for a kind.
    pub fn of_kind(kind: &str) -> Option<Self> {
        match kind {
            "agent.transaction.proposed" => Some(TxnEvent::Propose),
            "agent.transaction.approved" => Some(TxnEvent::Approve),
            "agent.transaction.rejected" => Some(TxnEvent::Reject),
            "agent.transaction.applied" => Some(TxnEvent::Apply),
            _ => None,
        }
    }
}

/// An invalid move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a transaction that is {from:?} cannot be {event:?}d")]
pub struct InvalidTransition {
    /// Where it was.
    pub from: TxnStatus,
    /// What was asked.
    pub event: TxnEvent,
}

/// The lifecycle's transition function.
pub fn transition(from: TxnStatus, event: TxnEvent) -> Result<TxnStatus, InvalidTransition> {
    use TxnEvent as E;
    use TxnStatus as S;
    match (from, event) {
        (S::Draft, E::Propose) => Ok(S::Proposed),
        (S::Proposed, E::Approve) => Ok(S::Approved),
        (S::Proposed | S::Approved, E::Reject) => Ok(S::Rejected),
        (S::Approved, E::Apply) => Ok(S::Applied),
        _ => Err(InvalidTransition { from, event }),
    }
}

/// What a transaction does to objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOperation {
    /// Create the objects.
    Create,
    /// Update the objects.
    Update,
    /// Delete the objects.
    Delete,
}

/// A proposal's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Id of the transaction.
    pub transaction_id: String,
    /// The objects it changes.
    pub object_ids: Vec<String>,
    /// What it does.
    pub operation: TxnOperation,
    /// Per object: the fields to write (for create: the object record).
    #[serde(default)]
    pub changes: Map<String, Value>,
    /// Per object: the version the change is based on (update, delete).
    #[serde(default)]
    pub base_versions: Map<String, Value>,
}

#[derive(Deserialize)]
struct Decided {
    transaction_id: String,
}

fn proposed(d: &mut EventDraft) -> Result<(), String> {
    let p: Proposal = payload_as(d)?;
    if p.object_ids.is_empty() || p.object_ids.len() > MAX_TXN_OBJECTS {
        return Err(format!(
            "payload.object_ids must name 1 to {MAX_TXN_OBJECTS} objects"
        ));
    }
    for id in &p.object_ids {
        if p.operation != TxnOperation::Create && !p.base_versions.contains_key(id) {
            return Err(format!("payload.base_versions lacks {id}"));
        }
        if p.operation != TxnOperation::Delete && !p.changes.get(id).is_some_and(Value::is_object) {
            return Err(format!("payload.changes.{id} must be an object of fields"));
        }
    }
    set_subject(d, &p.transaction_id)
}

fn decided(d: &mut EventDraft) -> Result<(), String> {
    let p: Decided = payload_as(d)?;
    set_subject(d, &p.transaction_id)
}

fn set_subject(d: &mut EventDraft, id: &str) -> Result<(), String> {
    let subject =
        crate::ids::Subject::new(id).map_err(|e| format!("payload.transaction_id: {e}"))?;
    match &d.subject {
        Some(s) if s != &subject => Err(format!(
            "subject {s} differs from payload.transaction_id {id}"
        )),
        _ => {
            d.subject = Some(subject);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [TxnStatus; 5] = [
        TxnStatus::Draft,
        TxnStatus::Proposed,
        TxnStatus::Approved,
        TxnStatus::Applied,
        TxnStatus::Rejected,
    ];
    const ALL_EVENTS: [TxnEvent; 4] = [
        TxnEvent::Propose,
        TxnEvent::Approve,
        TxnEvent::Reject,
        TxnEvent::Apply,
    ];

    #[test]
    fn every_state_event_pair() {
        use TxnEvent as E;
        use TxnStatus as S;
        for from in ALL_STATES {
            for event in ALL_EVENTS {
                let expected = match (from, event) {
                    (S::Draft, E::Propose) => Some(S::Proposed),
                    (S::Proposed, E::Approve) => Some(S::Approved),
                    (S::Proposed, E::Reject) | (S::Approved, E::Reject) => Some(S::Rejected),
                    (S::Approved, E::Apply) => Some(S::Applied),
                    _ => None,
                };
                match (transition(from, event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from:?} + {event:?}"),
                    (Err(e), None) => assert_eq!(e, InvalidTransition { from, event }),
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for event in ALL_EVENTS {
            assert!(transition(TxnStatus::Applied, event).is_err());
            assert!(transition(TxnStatus::Rejected, event).is_err());
        }
    }
}
