//! The summary projection: event counts per kind and per actor, the total,
//! and the first and last recording times. Status reads it; its size grows
//! with the number of distinct kinds and actors, never with the log.

use serde::Serialize;

use crate::event::Envelope;
use crate::ids::Timestamp;

use super::{bump_counter, read_u64, with_key, Projection, ProjectionError, Staging};

const RECORD_KIND: u8 = 0x01;
const RECORD_ACTOR: u8 = 0x02;
const RECORD_TOTALS: &[u8] = &[0x03];

/// Name of the projection.
pub(crate) const NAME: &str = "summary";

/// The summary projection.
pub(crate) struct Summary;

/// Totals, stored as three 8-byte big-endian numbers (events, first and
/// last recording time in Unix microseconds) so that the per-event update
/// needs no decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    events: u64,
    first_at: Option<Timestamp>,
    last_at: Option<Timestamp>,
}

const TOTALS_LEN: usize = 24;

impl Totals {
    fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != TOTALS_LEN {
            return Err(format!(
                "totals record is {} bytes, not {TOTALS_LEN}",
                b.len()
            ));
        }
        let n = |i: usize| b.get(i..i + 8).and_then(read_u64).unwrap_or(0);
        let events = n(0);
        let at = |raw: u64| (events > 0).then(|| Timestamp::from_unix_micros(raw as i64));
        Ok(Self {
            events,
            first_at: at(n(8)),
            last_at: at(n(16)),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = vec![0; TOTALS_LEN];
        self.encode_into(&mut v);
        v
    }

    /// Overwrites a record of [`TOTALS_LEN`] bytes in place.
    fn encode_into(&self, v: &mut [u8]) {
        let times = [self.first_at, self.last_at].map(|t| t.map_or(0, Timestamp::unix_micros));
        for (dst, n) in v
            .chunks_exact_mut(8)
            .zip([self.events, times[0] as u64, times[1] as u64])
        {
            dst.copy_from_slice(&n.to_be_bytes());
        }
    }
}

fn bump(state: &mut Staging, tag: u8, text: &str) -> Result<(), ProjectionError> {
    with_key(&[&[tag], text.as_bytes()], |key| {
        bump_counter(state.entry(key)?);
        Ok(())
    })
}

fn bad(reason: String) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: "03".into(),
        reason,
    }
}

impl Projection for Summary {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        bump(state, RECORD_KIND, event.kind().as_str())?;
        bump(state, RECORD_ACTOR, event.actor().as_str())?;
        let slot = state.entry(RECORD_TOTALS)?;
        let mut totals = match slot.as_deref() {
            Some(b) => Totals::decode(b).map_err(bad)?,
            None => Totals::default(),
        };
        totals.events = totals.events.saturating_add(1);
        let at = event.recorded_at();
        totals.first_at = Some(totals.first_at.map_or(at, |f| f.min(at)));
        totals.last_at = Some(totals.last_at.map_or(at, |l| l.max(at)));
        match slot {
            Some(v) if v.len() == TOTALS_LEN => totals.encode_into(v),
            _ => *slot = Some(totals.encode()),
        }
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        match key.first() {
            Some(&RECORD_KIND) | Some(&RECORD_ACTOR) => {
                if payload.len() == 8 {
                    Ok(())
                } else {
                    Err("counter is not 8 bytes".into())
                }
            }
            Some(0x03) if key.len() == 1 => Totals::decode(payload).map(|_| ()),
            _ => Err("unknown record".into()),
        }
    }
}

/// What the summary projection knows, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SummaryView {
    /// Events folded.
    pub events: u64,
    /// Earliest recording time.
    pub first_recorded_at: Option<String>,
    /// Latest recording time.
    pub last_recorded_at: Option<String>,
    /// Events per kind.
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// Events per actor.
    pub by_actor: std::collections::BTreeMap<String, u64>,
}

/// Reads the summary (cost grows with distinct kinds and actors only).
pub(crate) fn read(state: &Staging) -> Result<SummaryView, ProjectionError> {
    let pairs = state.scan_all()?;
    let mut view = SummaryView::default();
    if let Some(b) = state.get(RECORD_TOTALS)? {
        let t = Totals::decode(&b).map_err(bad)?;
        view.events = t.events;
        view.first_recorded_at = t.first_at.map(|t| t.to_string());
        view.last_recorded_at = t.last_at.map(|t| t.to_string());
    }
    for (k, v) in pairs {
        let (Some((&tag, name)), Some(n)) = (k.split_first(), read_u64(&v)) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match tag {
            RECORD_KIND => {
                view.by_kind.insert(name, n);
            }
            RECORD_ACTOR => {
                view.by_actor.insert(name, n);
            }
            _ => {}
        }
    }
    Ok(view)
}
