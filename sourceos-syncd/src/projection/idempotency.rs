//! The idempotency index: idempotency key -> sequence number of the first
//! event that carried it.
//!
//! Keys are hashed into 4,096 buckets so that a rebuild writes at most one
//! record per bucket instead of one per keyed event (sled takes roughly
//! 100k-150k record writes per second here; see `docs/performance.md`). A
//! bucket holds entries of 24 bytes: the first 16 bytes of blake3(key) and
//! the sequence number, sorted by digest. A digest match is confirmed by the
//! caller against the event itself, so a truncated-digest collision can
//! never report a wrong duplicate.

use crate::event::Envelope;
use crate::ids::{IdempotencyKey, Seq};

use super::{read_u64, Projection, ProjectionError, Staging};

const RECORD_BUCKET: u8 = 0x01;
const BUCKET_BITS: u32 = 12;
const DIGEST_LEN: usize = 16;
const ENTRY_LEN: usize = DIGEST_LEN + 8;

/// The idempotency index projection.
pub(crate) struct IdempotencyIndex;

/// Name of the projection.
pub(crate) const NAME: &str = "idempotency";

fn digest(key: &IdempotencyKey) -> [u8; DIGEST_LEN] {
    let full = blake3::hash(key.as_str().as_bytes());
    let mut out = [0u8; DIGEST_LEN];
    for (d, s) in out.iter_mut().zip(full.as_bytes().iter()) {
        *d = *s;
    }
    out
}

fn bucket_key(d: &[u8; DIGEST_LEN]) -> [u8; 3] {
    let [a, b, ..] = *d;
    let bucket = u16::from_be_bytes([a, b]) >> (16 - BUCKET_BITS);
    let [hi, lo] = bucket.to_be_bytes();
    [RECORD_BUCKET, hi, lo]
}

/// Binary search of a bucket by digest. `Ok(offset)` when found,
/// `Err(offset)` where it would be inserted.
fn search(bucket: &[u8], d: &[u8; DIGEST_LEN]) -> Result<usize, usize> {
    let n = bucket.len() / ENTRY_LEN;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at = mid * ENTRY_LEN;
        let probe = bucket.get(at..at + DIGEST_LEN).unwrap_or_default();
        match probe.cmp(d.as_slice()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(at),
        }
    }
    Err(lo * ENTRY_LEN)
}

impl Projection for IdempotencyIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        let Some(key) = event.idempotency_key() else {
            return Ok(());
        };
        let d = digest(key);
        let slot = state.entry(&bucket_key(&d))?;
        let bucket = slot.get_or_insert_with(Vec::new);
        // The first event with a key wins; a later one (possible only
        // through a raw import) does not move the mapping.
        if let Err(at) = search(bucket, &d) {
            let mut entry = [0u8; ENTRY_LEN];
            let (dst_d, dst_s) = entry.split_at_mut(DIGEST_LEN);
            dst_d.copy_from_slice(&d);
            dst_s.copy_from_slice(&event.seq().to_key());
            let at = at.min(bucket.len());
            bucket.splice(at..at, entry);
        }
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        if key.len() != 3 || key.first() != Some(&RECORD_BUCKET) {
            return Err("not a bucket key".into());
        }
        if payload.is_empty() || payload.len() % ENTRY_LEN != 0 {
            return Err(format!(
                "bucket of {} bytes is not whole entries",
                payload.len()
            ));
        }
        let mut prev: Option<&[u8]> = None;
        for entry in payload.chunks(ENTRY_LEN) {
            let (d, s) = entry.split_at(DIGEST_LEN);
            if prev.is_some_and(|p| p >= d) {
                return Err("bucket entries out of order".into());
            }
            if read_u64(s).and_then(|n| Seq::new(n).ok()).is_none() {
                return Err("bucket entry with sequence 0".into());
            }
            prev = Some(d);
        }
        Ok(())
    }
}

/// The sequence number recorded for `key`, if any.
pub(crate) fn lookup(
    state: &Staging,
    key: &IdempotencyKey,
) -> Result<Option<Seq>, ProjectionError> {
    let d = digest(key);
    state.with_record(&bucket_key(&d), |bucket| {
        let bucket = bucket?;
        let at = search(bucket, &d).ok()?;
        bucket
            .get(at + DIGEST_LEN..at + ENTRY_LEN)
            .and_then(read_u64)
            .and_then(|n| Seq::new(n).ok())
    })
}
