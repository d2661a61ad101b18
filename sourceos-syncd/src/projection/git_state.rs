//! The git_state projection: the latest recorded GitWorkspaceState per
//! path digest. "Latest" is log order: a later `git.workspace_state_recorded`
//! event for the same `pathEvidence.pathDigest` replaces the record. Its
//! size grows with the number of distinct paths classified, never with
//! the log.
//!
//! Keys: `0x01 ‖ "sha256:<64 hex>"`. Values: CBOR of [`Stored`] (the
//! event's sequence, time and actor, and the document as its canonical
//! JSON text, so the fold copies text instead of re-encoding a document).

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::event::Envelope;
use crate::gitstate::{is_sha256_ref, GIT_STATE_KIND};
use crate::ids::Timestamp;

use super::{Projection, ProjectionError, RawRecord, Staging};

const RECORD_STATE: u8 = 0x01;

/// Name of the projection.
pub(crate) const NAME: &str = "git_state";

/// The git_state projection.
pub(crate) struct GitStateIndex;

/// One path's latest state as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// Sequence number of the event that recorded it.
    pub seq: u64,
    /// When that event was recorded.
    pub recorded_at: Timestamp,
    /// Who recorded it.
    pub actor: String,
    /// The GitWorkspaceState document, as canonical JSON text.
    pub doc: String,
}

pub(crate) fn key(path_digest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(path_digest.len() + 1);
    k.push(RECORD_STATE);
    k.extend_from_slice(path_digest.as_bytes());
    k
}

fn bad(key: &[u8], reason: String) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: super::key_hex(key),
        reason,
    }
}

/// The path digest a document names, if it names a well-formed one.
fn digest_of(doc: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    doc.get("pathEvidence")?
        .get("pathDigest")?
        .as_str()
        .filter(|d| is_sha256_ref(d))
}

impl Projection for GitStateIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        if event.kind().as_str() != GIT_STATE_KIND {
            return Ok(());
        }
        // Appends validate the document; an event without a usable digest
        // (only possible from a peer with other rules) is left out rather
        // than failing the fold.
        let Some(digest) = event.payload().as_map().and_then(digest_of) else {
            return Ok(());
        };
        let k = key(digest);
        let stored = Stored {
            seq: event.seq().get(),
            recorded_at: event.recorded_at(),
            actor: event.actor().as_str().to_owned(),
            doc: event.payload().json_text().to_owned(),
        };
        let bytes =
            codec::encode("git state record", &stored).map_err(|e| ProjectionError::BadEvent {
                seq: event.seq().get(),
                reason: e.to_string(),
            })?;
        state.put(k, bytes);
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        let digest = match key.split_first() {
            Some((&RECORD_STATE, rest)) => {
                std::str::from_utf8(rest).map_err(|_| "key is not UTF-8".to_owned())?
            }
            _ => return Err("unknown record".into()),
        };
        if !is_sha256_ref(digest) {
            return Err("key is not a sha256 path digest".into());
        }
        let s = decode(payload)?;
        let doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&s.doc).map_err(|e| format!("document: {e}"))?;
        if digest_of(&doc) != Some(digest) {
            return Err("document names another path digest than its key".into());
        }
        Ok(())
    }
}

fn decode(payload: &[u8]) -> Result<Stored, String> {
    codec::decode::<Stored>("git state record", payload).map_err(|e| e.to_string())
}

/// The record of one path digest.
pub(crate) fn get(state: &Staging, path_digest: &str) -> Result<Option<Stored>, ProjectionError> {
    let k = key(path_digest);
    match state.get(&k)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some).map_err(|r| bad(&k, r)),
    }
}

/// Records in path-digest order, at most `limit`.
pub(crate) fn list(state: &Staging, limit: usize) -> Result<Vec<Stored>, ProjectionError> {
    let rows: Vec<RawRecord> = state.scan_prefix(&[RECORD_STATE], limit)?;
    rows.into_iter()
        .map(|(k, v)| decode(&v).map_err(|r| bad(&k, r)))
        .collect()
}
