//! The host facade in process, over an open store.

use serde_json::Value;

use super::inputs::SurfaceVersion;
use super::steps::{self, Raw, Transport};
use super::{Host, HostError};
use crate::status::StatusDocument;
use crate::store::{AppendOutcome, Store};

/// The facade over a store this process holds.
pub struct LocalHost {
    store: Store,
    surface: SurfaceVersion,
}

impl LocalHost {
    /// A host over `store`, for the surface `surface`.
    pub fn new(store: Store, surface: SurfaceVersion) -> Self {
        Self { store, surface }
    }

    /// The calling surface's version.
    pub fn surface(&self) -> &SurfaceVersion {
        &self.surface
    }
}

impl Transport for LocalHost {
    fn submit(&self, line: &str) -> Result<Raw, HostError> {
        let draft = match crate::ingest::parse_line(line) {
            Ok(d) => d,
            Err(reason) => return Ok(Raw::Rejected(reason)),
        };
        Ok(match self.store.append(draft).map_err(HostError::Store)? {
            AppendOutcome::Appended { seq, hash, .. } => Raw::Appended {
                seq: seq.get(),
                hash: hash.to_string(),
            },
            AppendOutcome::Duplicate { seq, hash } => Raw::Duplicate {
                seq: seq.get(),
                hash: hash.to_string(),
            },
            AppendOutcome::Rejected { reason } => Raw::Rejected(reason),
            AppendOutcome::PolicyBlocked { reason, .. } => Raw::Blocked { reason },
        })
    }

    fn explain(&self, object: &str) -> Result<Option<Value>, HostError> {
        let x = crate::explain::explain(&self.store, object).map_err(HostError::Projection)?;
        x.map(|x| serde_json::to_value(x).map_err(|e| HostError::Protocol(e.to_string())))
            .transpose()
    }

    fn txn(&self, id: &str) -> Result<Option<Value>, HostError> {
        let x = crate::explain::transaction(&self.store, id).map_err(HostError::Projection)?;
        x.map(|x| serde_json::to_value(x).map_err(|e| HostError::Protocol(e.to_string())))
            .transpose()
    }

    fn session_known(&self, session: &str) -> Result<bool, HostError> {
        Ok(crate::session_dag::session(&self.store, session)
            .map_err(HostError::Projection)?
            .is_some())
    }

    fn orphans(&self) -> Result<Value, HostError> {
        // The TTL only shapes a queued orphan's expiry; quarantine is read
        // from the log's decisions.
        let ttl = crate::session_dag::OrphanConfig::load(self.store.home())
            .map(|c| c.ttl_seconds)
            .unwrap_or(crate::session_dag::DEFAULT_ORPHAN_TTL_SECONDS);
        let list = crate::session_dag::orphans(&self.store, ttl, self.store.now())
            .map_err(HostError::Projection)?;
        let receipts: Vec<_> = list.into_iter().map(|o| o.receipt).collect();
        serde_json::to_value(receipts).map_err(|e| HostError::Protocol(e.to_string()))
    }
}

impl Host for LocalHost {
    steps::transport_requests!();
    fn status(&self) -> Result<StatusDocument, HostError> {
        crate::status::status(&self.store).map_err(HostError::Status)
    }
    fn explain(&self, object: &str) -> Result<Option<Value>, HostError> {
        Transport::explain(self, object)
    }
    fn capabilities(&self) -> Result<Value, HostError> {
        let c = crate::capability::capabilities(&self.store).map_err(HostError::Projection)?;
        serde_json::to_value(c).map_err(|e| HostError::Protocol(e.to_string()))
    }
}
