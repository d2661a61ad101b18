//! The host facade: the one API through which upper layers (shell
//! components, agents, terminals) talk to syncd, without knowing about
//! sled, the daemon's routes or internal types.
//!
//! Every request is validated before it is sent: the inputs are newtypes
//! whose constructors refuse what syncd would refuse. What happens to a
//! request is an [`Outcome`]; waits and refusals are outcomes, not errors.
//! Only infrastructure faults (the store or the daemon cannot be reached,
//! an answer cannot be read) are [`HostError`]s.
//!
//! Three implementations: [`LocalHost`] over an open store in this
//! process, [`DaemonHost`] over the daemon's local API (std only), and
//! [`ScriptedHost`], a fake for other projects' tests.

mod daemon;
mod fake;
mod inputs;
mod local;
mod outcome;
mod steps;

use serde_json::Value;

pub use daemon::DaemonHost;
pub use fake::{HostRequest, ScriptedHost, MAX_RECORDED_REQUESTS};
pub use inputs::{
    EventRequest, FacadeKey, InvalidInput, SessionRequest, SurfaceVersion, TurnRequest, TxnRequest,
    MAX_FACADE_KEY_BYTES,
};
pub use local::LocalHost;
pub use outcome::{sanitise, Outcome, SanitisedMessage};

use crate::status::StatusDocument;

/// An infrastructure fault: the request could not be carried out or its
/// answer could not be read. Everything else is an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The store failed underneath.
    #[error("the store failed: {0}")]
    Store(#[source] crate::store::AppendError),
    /// A projection could not be read.
    #[error("derived state could not be read: {0}")]
    Projection(#[source] crate::projection::ProjectionError),
    /// The status document could not be built.
    #[error("status could not be built: {0}")]
    Status(String),
    /// The daemon could not be reached or did not answer in time.
    #[error("the daemon did not answer: {0}")]
    Unreachable(#[source] std::io::Error),
    /// The daemon answered something that is not a valid answer.
    #[error("the daemon answered with something unreadable: {0}")]
    Protocol(String),
    /// A scripted fake ran out of queued answers for a query.
    #[error("no scripted answer is queued for {0}")]
    NotScripted(&'static str),
}

/// The facade. Submissions return an [`Outcome`]; queries return the same
/// documents `syncd` prints with `--json`.
pub trait Host {
    /// Submits one event.
    fn submit_event(&self, request: &EventRequest) -> Result<Outcome, HostError>;
    /// Proposes an object transaction; policy may approve it at once,
    /// hold it for review ([`Outcome::ApprovalRequired`]) or block it.
    fn submit_transaction(&self, request: &TxnRequest) -> Result<Outcome, HostError>;
    /// Opens a session.
    fn open_session(&self, request: &SessionRequest) -> Result<Outcome, HostError>;
    /// Closes a session.
    fn close_session(&self, request: &SessionRequest) -> Result<Outcome, HostError>;
    /// Opens a turn in a session (admitted, then opened).
    fn open_turn(&self, request: &TurnRequest) -> Result<Outcome, HostError>;
    /// Closes a turn (committed when active, then closed).
    fn close_turn(&self, request: &TurnRequest) -> Result<Outcome, HostError>;
    /// Cancels a turn's work: it is aborted with the request's reason.
    fn cancel_turn(&self, request: &TurnRequest) -> Result<Outcome, HostError>;
    /// The status document.
    fn status(&self) -> Result<StatusDocument, HostError>;
    /// `syncd explain --json` of an object; `None` when unknown.
    fn explain(&self, object: &str) -> Result<Option<Value>, HostError>;
    /// The capability ledger (`syncd capabilities --json`).
    fn capabilities(&self) -> Result<Value, HostError>;
}
