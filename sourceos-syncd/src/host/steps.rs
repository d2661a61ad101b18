//! What the in-process host and the daemon client share: how a request
//! becomes events, and how the answers become one [`Outcome`]. Both send
//! the same JSON lines as `syncd ingest`, so both decide alike.

use serde_json::Value;

use super::inputs::{EventRequest, InvalidInput, SessionRequest, TurnRequest, TxnRequest};
use super::outcome::{sanitise, Outcome};
use super::HostError;
use crate::ids::IdempotencyKey;

/// A field of a JSON object, or null.
pub(crate) fn at<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

/// One line's answer, before it is interpreted.
#[derive(Debug)]
pub(crate) enum Raw {
    /// Recorded.
    Appended { seq: u64, hash: String },
    /// Seen before.
    Duplicate { seq: u64, hash: String },
    /// Not recorded.
    Rejected(String),
    /// Policy refused it.
    Blocked { reason: String },
    /// A lane is closed or under pressure.
    Refused { lane: String },
}

/// How requests reach syncd.
pub(crate) trait Transport {
    /// Submits one JSON line.
    fn submit(&self, line: &str) -> Result<Raw, HostError>;
    /// `syncd explain --json` of an object.
    fn explain(&self, object: &str) -> Result<Option<Value>, HostError>;
    /// `syncd txn show` of a transaction.
    fn txn(&self, id: &str) -> Result<Option<Value>, HostError>;
    /// Whether a session (`urn:srcos:session:<id>`) has been opened.
    fn session_known(&self, session: &str) -> Result<bool, HostError>;
    /// `syncd orphans --json`: the orphan receipts.
    fn orphans(&self) -> Result<Value, HostError>;
}

/// The quarantine decision about the event with `hash`, when it was held
/// as an orphan and quarantined at once (its session's queue was full).
fn quarantined(t: &impl Transport, hash: &str) -> Result<Option<String>, HostError> {
    let receipts = t.orphans()?;
    let hit = receipts.as_array().and_then(|rs| {
        rs.iter().find(|r| {
            at(at(r, "sessionResolution"), "state").as_str() == Some("quarantined")
                && at(r, "evidenceRefs")
                    .as_array()
                    .is_some_and(|e| e.iter().any(|x| x.as_str() == Some(hash)))
        })
    });
    Ok(hit
        .and_then(|r| at(r, "policyDecisionRef").as_str())
        .map(str::to_owned))
}

fn failed(e: &InvalidInput) -> Outcome {
    Outcome::Failed {
        message: sanitise(&e.to_string()),
    }
}

/// Submits one event and interprets its answer.
pub(crate) fn one(
    t: &impl Transport,
    req: &EventRequest,
    key: &IdempotencyKey,
) -> Result<Outcome, HostError> {
    let raw = t.submit(&req.line(key))?;
    Ok(match raw {
        Raw::Appended { seq, hash } => refine(t, req, seq, hash)?,
        Raw::Duplicate { seq, hash } => Outcome::Duplicate { seq, hash },
        Raw::Rejected(reason) => Outcome::Failed {
            message: sanitise(&reason),
        },
        Raw::Blocked { reason } => Outcome::PolicyBlocked { reason },
        Raw::Refused { lane } => Outcome::ResourceBlocked { lane },
    })
}

/// A recorded event may still wait for approval or have caused a
/// conflict: the projections say so.
fn refine(
    t: &impl Transport,
    req: &EventRequest,
    seq: u64,
    hash: String,
) -> Result<Outcome, HostError> {
    let subject = req.subject.as_ref().map(|s| s.as_str());
    match (req.kind.as_str(), subject) {
        ("agent.transaction.proposed", Some(id)) => {
            if let Some(x) = t.txn(id)? {
                let proposed = at(&x, "status").as_str() == Some("proposed");
                if let (true, Some(d)) = (proposed, at(&x, "policy_decision_ref").as_str()) {
                    return Ok(Outcome::ApprovalRequired {
                        decision_id: d.to_owned(),
                    });
                }
            }
        }
        (kind, Some(object)) if kind.starts_with("object.") => {
            if let Some(x) = t.explain(object)? {
                let hit = at(&x, "conflicts").as_array().and_then(|cs| {
                    cs.iter()
                        .find(|c| at(c, "detected_seq").as_u64() == Some(seq))
                        .and_then(|c| at(c, "conflict_id").as_str())
                });
                if let Some(id) = hit {
                    return Ok(Outcome::Conflict {
                        conflict_id: id.to_owned(),
                    });
                }
            }
        }
        _ => {}
    }
    // An event naming a session syncd has not seen is held as an orphan;
    // when that session's queue is full it is quarantined at once.
    if let Some(session) = &req.session {
        if !t.session_known(session.as_str())? {
            if let Some(decision_id) = quarantined(t, &hash)? {
                return Ok(Outcome::Quarantined { decision_id });
            }
        }
    }
    Ok(Outcome::Completed { seq, hash })
}

/// Submits the events of a request in order, stopping at the first that
/// is neither recorded nor a duplicate; the outcome is that one's, or the
/// last one's.
fn steps(
    t: &impl Transport,
    events: Result<Vec<(EventRequest, IdempotencyKey)>, InvalidInput>,
) -> Result<Outcome, HostError> {
    let events = match events {
        Ok(e) => e,
        Err(e) => return Ok(failed(&e)),
    };
    let mut last = Outcome::Failed {
        message: sanitise("nothing to submit"),
    };
    for (req, key) in &events {
        last = one(t, req, key)?;
        if !matches!(last, Outcome::Completed { .. } | Outcome::Duplicate { .. }) {
            break;
        }
    }
    Ok(last)
}

pub(crate) fn submit_event(t: &impl Transport, r: &EventRequest) -> Result<Outcome, HostError> {
    one(t, r, r.idempotency_key.key())
}

pub(crate) fn submit_transaction(t: &impl Transport, r: &TxnRequest) -> Result<Outcome, HostError> {
    match r.event() {
        Ok(e) => one(t, &e, r.idempotency_key.key()),
        Err(e) => Ok(failed(&e)),
    }
}

pub(crate) fn session(
    t: &impl Transport,
    r: &SessionRequest,
    kind: &str,
) -> Result<Outcome, HostError> {
    // Opening and closing may carry the same request key: each kind
    // gets its own derived key.
    match r.event(kind) {
        Ok(e) => one(t, &e, &r.idempotency_key.step(kind)),
        Err(e) => Ok(failed(&e)),
    }
}

/// The events of a turn request: each step's key is derived from the
/// request's, so a retried request records nothing twice.
pub(crate) fn turn(
    t: &impl Transport,
    r: &TurnRequest,
    kinds: &[&str],
) -> Result<Outcome, HostError> {
    let events = kinds
        .iter()
        .map(|k| r.event(k).map(|e| (e, r.idempotency_key.step(k))))
        .collect();
    steps(t, events)
}

/// Turn opening: admitted, opened, activated.
pub(crate) const OPEN_TURN: &[&str] = &["turn.admitted", "turn.opened", "turn.activated"];
/// Turn closing: committed, closed.
pub(crate) const CLOSE_TURN: &[&str] = &["turn.committed", "turn.closed"];
/// Turn cancelling: aborted, closed.
pub(crate) const CANCEL_TURN: &[&str] = &["turn.aborted", "turn.closed"];

/// The `Host` methods that a [`Transport`] implements alike (requests that
/// become events); each implementation adds its own queries.
macro_rules! transport_requests {
    () => {
        fn submit_event(
            &self,
            r: &super::inputs::EventRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::submit_event(self, r)
        }
        fn submit_transaction(
            &self,
            r: &super::inputs::TxnRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::submit_transaction(self, r)
        }
        fn open_session(
            &self,
            r: &super::inputs::SessionRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::session(self, r, crate::session::SESSION_OPENED)
        }
        fn close_session(
            &self,
            r: &super::inputs::SessionRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::session(self, r, crate::session::SESSION_CLOSED)
        }
        fn open_turn(
            &self,
            r: &super::inputs::TurnRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::turn(self, r, super::steps::OPEN_TURN)
        }
        fn close_turn(
            &self,
            r: &super::inputs::TurnRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::turn(self, r, super::steps::CLOSE_TURN)
        }
        fn cancel_turn(
            &self,
            r: &super::inputs::TurnRequest,
        ) -> Result<super::outcome::Outcome, super::HostError> {
            super::steps::turn(self, r, super::steps::CANCEL_TURN)
        }
    };
}
pub(crate) use transport_requests;
