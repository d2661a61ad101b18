//! The subject index: subject -> sequence numbers of its events, in order.
//!
//! Posting lists are chunked so that appends rewrite a bounded record and a
//! rebuild writes one record per chunk, not per event. For each subject the
//! open tail chunk lives at chunk index `u32::MAX` and starts with the count
//! of sealed chunks; sealed chunks (indexes 0, 1, ...) hold exactly
//! [`CHUNK_SEQS`] sequence numbers. Keys: `0x01 ‖ subject ‖ 0x00 ‖ chunk
//! (u32, big-endian)`. Subject text never contains a NUL byte, so the
//! separator keeps one subject's chunks together and apart from others.

use crate::event::Envelope;
use crate::ids::{Seq, Subject};

use super::{read_u64, unpack_seqs, with_key, Projection, ProjectionError, Staging};

const RECORD_CHUNK: u8 = 0x01;
const RECORD_COUNT: &[u8] = &[0x02];
const TAIL: u32 = u32::MAX;
/// Sequence numbers per sealed chunk.
pub(crate) const CHUNK_SEQS: usize = 512;

/// Name of the projection.
pub(crate) const NAME: &str = "subjects";

/// The subject index projection.
pub(crate) struct SubjectIndex;

fn chunk_key(subject: &Subject, chunk: u32) -> Vec<u8> {
    let s = subject.as_str().as_bytes();
    let mut k = Vec::with_capacity(s.len() + 6);
    k.push(RECORD_CHUNK);
    k.extend_from_slice(s);
    k.push(0);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    let arr: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(arr))
}

fn damaged(what: &str) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: String::new(),
        reason: what.to_owned(),
    }
}

/// Appends `seq` to `subject`'s tail chunk (key `tail_key`), sealing the
/// tail into a numbered chunk when it is full.
fn append(
    state: &mut Staging,
    subject: &Subject,
    tail_key: &[u8],
    seq: Seq,
) -> Result<(), ProjectionError> {
    let tail = state.entry(tail_key)?;
    let is_new = tail.is_none();
    let tail = tail.get_or_insert_with(|| 0u32.to_be_bytes().to_vec());
    tail.extend_from_slice(&seq.to_key());
    let held = tail.len().saturating_sub(4) / 8;
    if held >= CHUNK_SEQS {
        let sealed = read_u32(tail).ok_or_else(|| damaged("tail chunk header"))?;
        let seqs = tail.split_off(4);
        tail.clear();
        tail.extend_from_slice(&sealed.saturating_add(1).to_be_bytes());
        state.put(chunk_key(subject, sealed), seqs);
    }
    if is_new {
        let count = state.entry(RECORD_COUNT)?;
        let n = count.as_deref().and_then(read_u64).unwrap_or(0);
        *count = Some((n + 1).to_be_bytes().to_vec());
    }
    Ok(())
}

impl Projection for SubjectIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        let Some(subject) = event.subject() else {
            return Ok(());
        };
        let tail_key = [
            &[RECORD_CHUNK],
            subject.as_str().as_bytes(),
            &[0],
            &TAIL.to_be_bytes(),
        ];
        with_key(&tail_key, |tail_key| {
            append(state, subject, tail_key, event.seq())
        })
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        if key == RECORD_COUNT {
            return if payload.len() == 8 {
                Ok(())
            } else {
                Err("count is not 8 bytes".into())
            };
        }
        let chunk = key
            .len()
            .checked_sub(4)
            .and_then(|i| key.get(i..))
            .and_then(read_u32)
            .ok_or("chunk key too short")?;
        let seqs = if chunk == TAIL {
            payload.get(4..).ok_or("tail without header")?
        } else {
            if payload.len() != CHUNK_SEQS * 8 {
                return Err("sealed chunk is not full".into());
            }
            payload
        };
        if seqs.len() % 8 != 0 {
            return Err("chunk is not whole sequence numbers".into());
        }
        let mut prev = 0u64;
        for s in unpack_seqs(seqs) {
            let s = s.ok_or("sequence 0 in chunk")?.get();
            if s <= prev {
                return Err("sequence numbers out of order".into());
            }
            prev = s;
        }
        Ok(())
    }
}

/// Sequence numbers of `subject`'s events after `after`, at most `limit`.
pub(crate) fn seqs(
    state: &Staging,
    subject: &Subject,
    after: u64,
    limit: usize,
) -> Result<Vec<Seq>, ProjectionError> {
    let mut out = Vec::new();
    let Some(tail) = state.get(&chunk_key(subject, TAIL))? else {
        return Ok(out);
    };
    let sealed = read_u32(&tail).ok_or_else(|| damaged("tail chunk header"))?;
    let mut take = |bytes: &[u8]| -> Result<bool, ProjectionError> {
        for s in unpack_seqs(bytes) {
            let s = s.ok_or_else(|| damaged("sequence 0 in chunk"))?;
            if s.get() > after {
                if out.len() >= limit {
                    return Ok(false);
                }
                out.push(s);
            }
        }
        Ok(true)
    };
    for chunk in 0..sealed {
        let bytes = state
            .get(&chunk_key(subject, chunk))?
            .ok_or_else(|| damaged("sealed chunk missing"))?;
        // Skip whole chunks that end before `after`.
        let last = bytes
            .len()
            .checked_sub(8)
            .and_then(|i| bytes.get(i..))
            .and_then(read_u64);
        if last.is_some_and(|l| l <= after) {
            continue;
        }
        if !take(&bytes)? {
            return Ok(out);
        }
    }
    take(tail.get(4..).unwrap_or_default())?;
    Ok(out)
}

/// Number of distinct subjects seen.
pub(crate) fn count(state: &Staging) -> Result<u64, ProjectionError> {
    Ok(state
        .get(RECORD_COUNT)?
        .as_deref()
        .and_then(read_u64)
        .unwrap_or(0))
}
