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
            let mut entry = [0u8; ENTRY_LEN];
            let (oseq, rest) = entry.split_at_mut(8);
            let (hash, local) = rest.split_at_mut(32);
            oseq.copy_from_slice(&o.seq.to_key());
            hash.copy_from_slice(o.hash.as_bytes());
            local.copy_from_slice(&event.seq().to_key());
            // Events of a device mostly arrive in order: at the end.
            if at >= chunk.len() {
                chunk.extend_from_slice(&entry);
            } else {
                chunk.splice(at..at, entry);
            }
        }
        let high = state.entry(&high_key(&o.device))?;
        let current = high.as_deref().and_then(read_u64).unwrap_or(0);
        if o.seq.get() > current {
            match high {
                // Overwritten in place: it changes with every event.
                Some(v) if v.len() == 40 => {
                    let (seq, hash) = v.split_at_mut(8);
                    seq.copy_from_slice(&o.seq.to_key());
                    hash.copy_from_slice(o.hash.as_bytes());
                }
                _ => {
                    let mut v = o.seq.to_key().to_vec();
                    v.extend_from_slice(o.hash.as_bytes());
                    *high = Some(v);
                }
            }
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
    // Read where the chunk lies: it holds up to 256 entries (12 KiB), and
    // every received event is looked up before it is appended.
    state.with_record(&chunk_key(device, oseq), |chunk| {
        let chunk = chunk?;
        let at = search(chunk, oseq.get()).ok()?;
        let hash = chunk
            .get(at + 8..at + 40)
            .and_then(|b| Digest::from_slice(b).ok());
        let local = chunk
            .get(at + 40..at + 48)
            .and_then(read_u64)
            .and_then(|n| Seq::new(n).ok());
        hash.zip(local)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::event::{EventDraft, SealContext};
    use crate::ids::{ActorId, EventId, EventKind, Timestamp};

    /// The local event at `seq` carrying origin position `oseq` of
    /// `device`, whose hash there is made from `oseq`.
    fn received(seq: u64, device: &str, oseq: u64) -> Envelope {
        let ctx = SealContext {
            seq: Seq::new(seq).unwrap(),
            id: EventId::parse("01890a5d-ac96-774b-bcce-b302099a8057").unwrap(),
            at: Timestamp::parse("2026-11-24T09:00:00Z").unwrap(),
            origin: DeviceId::new(device).unwrap(),
            foreign: Some((Seq::new(oseq).unwrap(), origin_hash(oseq))),
            prev: crate::genesis(),
        };
        let draft = EventDraft::new(
            ActorId::new("actor:a").unwrap(),
            EventKind::new("note.added").unwrap(),
        );
        Envelope::seal(draft, ctx).unwrap().0
    }

    fn origin_hash(oseq: u64) -> Digest {
        Digest::from_bytes(*blake3::hash(&oseq.to_be_bytes()).as_bytes())
    }

    /// Positions arriving in order, out of order, across chunks and from
    /// two devices each find their local copy, the records stay valid, and
    /// the highest position of each device is the one recorded.
    #[test]
    fn every_origin_slot_is_found_whatever_the_arrival_order() {
        let mut state = Staging::new(NAME.to_owned(), None);
        let a: Vec<u64> = vec![1, 2, 3, 7, 5, 4, 300, 6, 256, 255, 257];
        let b: Vec<u64> = vec![9, 1, 2];
        let mut local = 0;
        let mut expected = Vec::new();
        for (device, list) in [("device:a", &a), ("device:b", &b)] {
            for &oseq in list {
                local += 1;
                OriginsIndex
                    .apply(&received(local, device, oseq), &mut state)
                    .unwrap();
                expected.push((device, oseq, local));
            }
        }
        // A second event claiming a slot already held does not move it.
        OriginsIndex
            .apply(&received(local + 1, "device:a", 5), &mut state)
            .unwrap();
        for (device, oseq, local) in expected {
            let found = lookup(
                &state,
                &DeviceId::new(device).unwrap(),
                Seq::new(oseq).unwrap(),
            )
            .unwrap();
            assert_eq!(
                found,
                Some((origin_hash(oseq), Seq::new(local).unwrap())),
                "{device} {oseq}"
            );
        }
        let a_dev = DeviceId::new("device:a").unwrap();
        assert_eq!(lookup(&state, &a_dev, Seq::new(8).unwrap()).unwrap(), None);
        for (key, oseq) in [
            (high_key(&a_dev), 300u64),
            (high_key(&DeviceId::new("device:b").unwrap()), 9),
        ] {
            let high = state.get(&key).unwrap().unwrap();
            OriginsIndex.check_record(&key, &high).unwrap();
            assert_eq!(read_u64(&high), Some(oseq));
            assert_eq!(&high[8..], origin_hash(oseq).as_bytes());
        }
        for chunk in [0u64, 1] {
            let key = chunk_key(&a_dev, Seq::new(chunk * CHUNK_ENTRIES + 1).unwrap());
            let record = state.get(&key).unwrap().unwrap();
            OriginsIndex.check_record(&key, &record).unwrap();
        }
    }
}
