//! The origins index: for events recorded on another device and imported
//! here, (origin device, origin sequence) -> (origin hash, local sequence).
//! Import and replication use it to append each foreign event exactly once
//! and to refuse a second, different event claiming the same origin slot.
//!
//! Entries are chunked per device by origin sequence (256 per chunk, since
//! a device's events arrive mostly in order), so a rebuild writes one record
//! per chunk. Keys: `0x01 ‖ device ‖ 0x00 ‖ chunk (u64, big-endian)`;
//! values: sorted 48-byte entries `origin seq ‖ origin hash ‖ local seq`.
//! `0x02 ‖ device` holds the highest origin sequence imported and its hash.

use crate::event::Envelope;
use crate::ids::{DeviceId, Digest, Seq};

use super::{read_u64, Projection, ProjectionError, Staging};

const RECORD_CHUNK: u8 = 0x01;
const RECORD_HIGH: u8 = 0x02;
const CHUNK_ENTRIES: u64 = 256;
const ENTRY_LEN: usize = 8 + 32 + 8;

/// Name of the projection.
pub(crate) const NAME: &str = "origins";

/// The origins projection.
pub(crate) struct OriginsIndex;

fn chunk_key(device: &DeviceId, oseq: Seq) -> Vec<u8> {
    let d = device.as_str().as_bytes();
    let mut k = Vec::with_capacity(d.len() + 10);
    k.push(RECORD_CHUNK);
    k.extend_from_slice(d);
    k.push(0);
    k.extend_from_slice(&(oseq.get() / CHUNK_ENTRIES).to_be_bytes());
    k
}

fn high_key(device: &DeviceId) -> Vec<u8> {
    let mut k = vec![RECORD_HIGH];
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

fn search(chunk: &[u8], oseq: u64) -> Result<usize, usize> {
    let n = chunk.len() / ENTRY_LEN;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at = mid * ENTRY_LEN;
        let probe = chunk.get(at..at + 8).and_then(read_u64).unwrap_or(0);
        match probe.cmp(&oseq) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(at),
        }
    }
    Err(lo * ENTRY_LEN)
}

impl Projection for OriginsIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        if !event.is_imported() {
            return Ok(());
        }
        let o = event.origin_ref();
        let slot = state.entry(&chunk_key(&o.device, o.seq))?;
        let chunk = slot.get_or_insert_with(Vec::new);
        // The first event for an origin slot wins; the append path refuses
        // a second one, so a later one can only come from a damaged log.
        if let Err(at) = search(chunk, o.seq.get()) {
            let mut entry = Vec::with_capacity(ENTRY_LEN);
            entry.extend_from_slice(&o.seq.to_key());
            entry.extend_from_slice(o.hash.as_bytes());
            entry.extend_from_slice(&event.seq().to_key());
            let at = at.min(chunk.len());
            chunk.splice(at..at, entry);
        }
        let high = state.entry(&high_key(&o.device))?;
        let current = high.as_deref().and_then(read_u64).unwrap_or(0);
        if o.seq.get() > current {
            let mut v = o.seq.to_key().to_vec();
            v.extend_from_slice(o.hash.as_bytes());
            *high = Some(v);
        }
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        match key.first() {
            Some(&RECORD_CHUNK) => {
                if payload.is_empty() || payload.len() % ENTRY_LEN != 0 {
                    return Err("chunk is not whole entries".into());
                }
                let mut prev = 0u64;
                for e in payload.chunks(ENTRY_LEN) {
                    let s = read_u64(e).unwrap_or(0);
                    if s <= prev {
                        return Err("entries out of order".into());
                    }
                    prev = s;
                }
                Ok(())
            }
            Some(&RECORD_HIGH) if payload.len() == 40 => Ok(()),
            _ => Err("unknown record".into()),
        }
    }
}

/// The local copy of an origin slot: (origin hash, local sequence).
pub(crate) fn lookup(
    state: &Staging,
    device: &DeviceId,
    oseq: Seq,
) -> Result<Option<(Digest, Seq)>, ProjectionError> {
    let Some(chunk) = state.get(&chunk_key(device, oseq))? else {
        return Ok(None);
    };
    let Ok(at) = search(&chunk, oseq.get()) else {
        return Ok(None);
    };
    let hash = chunk
        .get(at + 8..at + 40)
        .and_then(|b| Digest::from_slice(b).ok());
    let local = chunk
        .get(at + 40..at + 48)
        .and_then(read_u64)
        .and_then(|n| Seq::new(n).ok());
    Ok(hash.zip(local))
}
