//! A scripted host for other projects' tests: it records every request
//! and answers with the outcomes queued for it, in order. When nothing is
//! queued, a submission completes with the next sequence number, so a
//! test scripts only what it cares about. It never panics.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::inputs::{EventRequest, SessionRequest, TurnRequest, TxnRequest};
use super::outcome::Outcome;
use super::{Host, HostError};
use crate::status::StatusDocument;

/// Requests kept for inspection; older ones are dropped first.
pub const MAX_RECORDED_REQUESTS: usize = 4_096;
/// Answers that may wait in one queue.
const MAX_QUEUED_ANSWERS: usize = 4_096;

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub enum HostRequest {
    /// [`Host::submit_event`].
    SubmitEvent(EventRequest),
    /// [`Host::submit_transaction`].
    SubmitTransaction(TxnRequest),
    /// [`Host::open_session`].
    OpenSession(SessionRequest),
    /// [`Host::close_session`].
    CloseSession(SessionRequest),
    /// [`Host::open_turn`].
    OpenTurn(TurnRequest),
    /// [`Host::close_turn`].
    CloseTurn(TurnRequest),
    /// [`Host::cancel_turn`].
    CancelTurn(TurnRequest),
    /// [`Host::status`].
    Status,
    /// [`Host::explain`].
    Explain(String),
    /// [`Host::capabilities`].
    Capabilities,
}

#[derive(Default)]
struct Script {
    requests: VecDeque<HostRequest>,
    outcomes: VecDeque<Result<Outcome, String>>,
    statuses: VecDeque<StatusDocument>,
    explanations: VecDeque<Option<Value>>,
    capabilities: VecDeque<Value>,
    next_seq: u64,
}

/// The scripted fake.
#[derive(Default)]
pub struct ScriptedHost {
    script: Mutex<Script>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) -> bool {
    if q.len() >= MAX_QUEUED_ANSWERS {
        return false;
    }
    q.push_back(v);
    true
}

impl ScriptedHost {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    // A test that panicked while holding the lock must not make every
    // later call panic too: the script is still usable.
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the outcome of the next submission; false when the queue is
    /// full.
    pub fn push_outcome(&self, o: Outcome) -> bool {
        push_bounded(&mut self.lock().outcomes, Ok(o))
    }

    /// Queues an infrastructure fault for the next submission.
    pub fn push_fault(&self, why: &str) -> bool {
        push_bounded(&mut self.lock().outcomes, Err(why.to_owned()))
    }

    /// Queues the answer of the next status query.
    pub fn push_status(&self, s: StatusDocument) -> bool {
        push_bounded(&mut self.lock().statuses, s)
    }

    /// Queues the answer of the next explain query.
    pub fn push_explanation(&self, x: Option<Value>) -> bool {
        push_bounded(&mut self.lock().explanations, x)
    }

    /// Queues the answer of the next capabilities query.
    pub fn push_capabilities(&self, c: Value) -> bool {
        push_bounded(&mut self.lock().capabilities, c)
    }

    /// Every request received, oldest first (at most
    /// [`MAX_RECORDED_REQUESTS`]).
    pub fn requests(&self) -> Vec<HostRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    fn record(&self, r: HostRequest) -> MutexGuard<'_, Script> {
        let mut s = self.lock();
        if s.requests.len() >= MAX_RECORDED_REQUESTS {
            s.requests.pop_front();
        }
        s.requests.push_back(r);
        s
    }

    fn answer(&self, r: HostRequest) -> Result<Outcome, HostError> {
        let mut s = self.record(r);
        match s.outcomes.pop_front() {
            Some(Ok(o)) => Ok(o),
            Some(Err(why)) => Err(HostError::Protocol(why)),
            None => {
                s.next_seq = s.next_seq.saturating_add(1);
                Ok(Outcome::Completed {
                    seq: s.next_seq,
                    hash: format!(
                        "blake3:{}",
                        blake3::hash(&s.next_seq.to_be_bytes()).to_hex()
                    ),
                })
            }
        }
    }
}

impl Host for ScriptedHost {
    fn submit_event(&self, r: &EventRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::SubmitEvent(r.clone()))
    }
    fn submit_transaction(&self, r: &TxnRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::SubmitTransaction(r.clone()))
    }
    fn open_session(&self, r: &SessionRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::OpenSession(r.clone()))
    }
    fn close_session(&self, r: &SessionRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::CloseSession(r.clone()))
    }
    fn open_turn(&self, r: &TurnRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::OpenTurn(r.clone()))
    }
    fn close_turn(&self, r: &TurnRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::CloseTurn(r.clone()))
    }
    fn cancel_turn(&self, r: &TurnRequest) -> Result<Outcome, HostError> {
        self.answer(HostRequest::CancelTurn(r.clone()))
    }
    fn status(&self) -> Result<StatusDocument, HostError> {
        self.record(HostRequest::Status)
            .statuses
            .pop_front()
            .ok_or(HostError::NotScripted("status"))
    }
    fn explain(&self, object: &str) -> Result<Option<Value>, HostError> {
        Ok(self
            .record(HostRequest::Explain(object.to_owned()))
            .explanations
            .pop_front()
            .flatten())
    }
    fn capabilities(&self) -> Result<Value, HostError> {
        self.record(HostRequest::Capabilities)
            .capabilities
            .pop_front()
            .ok_or(HostError::NotScripted("capabilities"))
    }
}
