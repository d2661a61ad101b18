//! The ledger projection: capabilities and receipts, each folded from its
//! events into one record keyed by its ref. Its size grows with the number
//! of capabilities, receipts and sessions, never with the log.
//!
//! Keys and values (values are CBOR):
//!
//! | key | value |
//! |---|---|
//! | `0x01 ‖ capability ref` | [`CapabilityState`] |
//! | `0x02 ‖ capability ref` | empty: the capability is in split-brain |
//! | `0x03 ‖ receipt id` | [`ReceiptState`] (browser automation and runtime install) |
//! | `0x04 ‖ session ref` | owner ref: the first owner a receipt named for the session |

use serde::{Deserialize, Serialize};

use crate::capability::{self, capability_of, CapabilityRef, CapabilityState, Fact};
use crate::codec;
use crate::event::{Envelope, EventDraft};
use crate::receipt::{self, ReceiptState};

use super::{Projection, ProjectionError, RawRecord, Staging};

const CAPABILITY: u8 = 0x01;
const SPLIT: u8 = 0x02;
const RECEIPT: u8 = 0x03;
const SESSION_OWNER: u8 = 0x04;

/// Name of the projection.
pub(crate) const NAME: &str = "ledger";

/// The ledger projection.
pub(crate) struct Ledger;

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

fn bad(key: &[u8], reason: String) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: super::key_hex(key),
        reason,
    }
}

fn encode<T: Serialize>(seq: u64, what: &'static str, v: &T) -> Result<Vec<u8>, ProjectionError> {
    codec::encode(what, v).map_err(|e| ProjectionError::BadEvent {
        seq,
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, String> {
    codec::decode::<T>(what, bytes).map_err(|e| e.to_string())
}

impl Projection for Ledger {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        let kind = event.kind().as_str();
        // Most events are neither: leave them before parsing the payload
        // or formatting anything.
        if event.kind().namespace() != "capability" && !receipt::is_receipt_event_kind(event.kind())
        {
            return Ok(());
        }
        let Some(payload) = event.payload().as_map() else {
            return Ok(());
        };
        let seq = event.seq().get();
        let fact = Fact {
            kind,
            payload,
            event_id: event.id().to_string(),
            recorded_at: event.recorded_at().to_string(),
        };
        if kind.starts_with("capability.") {
            // Appends validate the subject; an event without a usable one
            // (only possible from a peer with other rules) is left out.
            let Some(cap) = capability_of(event.subject()) else {
                return Ok(());
            };
            let k = key(CAPABILITY, cap.as_str());
            let mut record = match state.get(&k)? {
                Some(bytes) => decode::<CapabilityState>("capability record", &bytes)
                    .map_err(|r| bad(&k, r))?,
                None => CapabilityState::new(cap.clone()),
            };
            record.apply(&fact);
            let split = !record.split_brain().is_empty();
            state.put(k, encode(seq, "capability record", &record)?);
            *state.entry(&key(SPLIT, cap.as_str()))? = split.then(Vec::new);
            return Ok(());
        }
        if receipt::is_receipt_kind(kind) {
            let Some(id) = event.subject().map(|s| s.as_str().to_owned()) else {
                return Ok(());
            };
            let k = key(RECEIPT, &id);
            let prior = match state.get(&k)? {
                Some(bytes) => {
                    Some(decode::<ReceiptState>("receipt record", &bytes).map_err(|r| bad(&k, r))?)
                }
                None => None,
            };
            if let Some(next) = ReceiptState::fold(prior, &id, &fact) {
                if let Some((session, owner)) = next.session_owner() {
                    let sk = key(SESSION_OWNER, &session);
                    let slot = state.entry(&sk)?;
                    if slot.is_none() {
                        *slot = Some(owner.into_bytes());
                    }
                }
                state.put(k, encode(seq, "receipt record", &next)?);
            }
        }
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        let (prefix, rest) = key.split_first().ok_or("empty key")?;
        let id = std::str::from_utf8(rest).map_err(|_| "key is not UTF-8".to_owned())?;
        match *prefix {
            CAPABILITY => {
                let r: CapabilityState = decode("capability record", payload)?;
                if r.capability.as_str() != id {
                    return Err("record names another capability than its key".into());
                }
                Ok(())
            }
            SPLIT => {
                CapabilityRef::new(id)?;
                if payload.is_empty() {
                    Ok(())
                } else {
                    Err("split-brain marker is not empty".into())
                }
            }
            RECEIPT => {
                let r: ReceiptState = decode("receipt record", payload)?;
                if r.id() != id {
                    return Err("record names another receipt than its key".into());
                }
                Ok(())
            }
            SESSION_OWNER => std::str::from_utf8(payload)
                .map(|_| ())
                .map_err(|_| "owner is not UTF-8".to_owned()),
            _ => Err("unknown record".into()),
        }
    }
}

/// Admission of a local draft: what its payload alone cannot tell. A
/// capability must be declared before anything else is said about it; a
/// receipt moves only as its state machine allows; a session has one owner.
pub(crate) fn admit(
    state: &Staging,
    d: &EventDraft,
) -> Result<Result<(), String>, ProjectionError> {
    let kind = d.kind.as_str();
    if kind.starts_with("capability.") && kind != capability::DECLARED {
        let Some(cap) = capability_of(d.subject.as_ref()) else {
            return Ok(Ok(()));
        };
        if state.get(&key(CAPABILITY, cap.as_str()))?.is_none() {
            return Ok(Err(format!(
                "{cap} is not declared; a plane declares it first ({})",
                capability::DECLARED,
                cap = cap.as_str()
            )));
        }
        return Ok(Ok(()));
    }
    if !receipt::is_receipt_kind(kind) {
        return Ok(Ok(()));
    }
    let Some(id) = d.subject.as_ref().map(|s| s.as_str()) else {
        return Ok(Ok(()));
    };
    let k = key(RECEIPT, id);
    let prior = match state.get(&k)? {
        Some(bytes) => {
            Some(decode::<ReceiptState>("receipt record", &bytes).map_err(|r| bad(&k, r))?)
        }
        None => None,
    };
    let Some(m) = d.payload.as_map() else {
        return Ok(Ok(()));
    };
    if let Err(reason) = receipt::admit(prior.as_ref(), kind, m) {
        return Ok(Err(reason));
    }
    if let (Some(session), Some(owner)) = (
        m.get("sessionRef").and_then(serde_json::Value::as_str),
        m.get("ownerRef").and_then(serde_json::Value::as_str),
    ) {
        if let Some(held) = state.get(&key(SESSION_OWNER, session))? {
            let held = String::from_utf8_lossy(&held);
            if held != owner {
                return Ok(Err(format!(
                    "payload.ownerRef: session {session} is already owned by {held}; ambiguous session ownership is refused"
                )));
            }
        }
    }
    Ok(Ok(()))
}

/// Every capability, in ref order, at most `limit`.
pub(crate) fn capabilities(
    state: &Staging,
    limit: usize,
) -> Result<Vec<CapabilityState>, ProjectionError> {
    let rows: Vec<RawRecord> = state.scan_prefix(&[CAPABILITY], limit)?;
    rows.into_iter()
        .map(|(k, v)| decode("capability record", &v).map_err(|r| bad(&k, r)))
        .collect()
}

/// Capabilities in split-brain, in ref order, at most `limit`.
pub(crate) fn split_brain(state: &Staging, limit: usize) -> Result<Vec<String>, ProjectionError> {
    Ok(state
        .scan_prefix(&[SPLIT], limit)?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(k.get(1..).unwrap_or_default()).into_owned())
        .collect())
}

/// Every receipt, in id order, at most `limit`.
pub(crate) fn receipts(
    state: &Staging,
    limit: usize,
) -> Result<Vec<ReceiptState>, ProjectionError> {
    let rows: Vec<RawRecord> = state.scan_prefix(&[RECEIPT], limit)?;
    rows.into_iter()
        .map(|(k, v)| decode("receipt record", &v).map_err(|r| bad(&k, r)))
        .collect()
}

/// One receipt.
pub(crate) fn receipt(state: &Staging, id: &str) -> Result<Option<ReceiptState>, ProjectionError> {
    let k = key(RECEIPT, id);
    match state.get(&k)? {
        None => Ok(None),
        Some(v) => decode("receipt record", &v)
            .map(Some)
            .map_err(|r| bad(&k, r)),
    }
}

/// The split-brain capabilities of a fresh fold's records (for the doctor).
pub(crate) fn split_brain_in(
    records: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<String> {
    records
        .range(vec![SPLIT]..vec![SPLIT + 1])
        .map(|(k, _)| String::from_utf8_lossy(k.get(1..).unwrap_or_default()).into_owned())
        .collect()
}
