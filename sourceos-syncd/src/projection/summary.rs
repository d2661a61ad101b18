//! The summary projection: event counts per kind and per actor, the total,
//! and the first and last recording times. Status reads it; its size grows
//! with the number of distinct kinds and actors, never with the log.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::event::Envelope;
use crate::ids::Timestamp;

use super::{read_u64, Projection, ProjectionError, Staging};

const RECORD_KIND: u8 = 0x01;
const RECORD_ACTOR: u8 = 0x02;
const RECORD_TOTALS: &[u8] = &[0x03];

/// Name of the projection.
pub(crate) const NAME: &str = "summary";

/// The summary projection.
pub(crate) struct Summary;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    events: u64,
    first_at: Option<Timestamp>,
    last_at: Option<Timestamp>,
}

fn keyed(tag: u8, text: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(text.len() + 1);
    k.push(tag);
    k.extend_from_slice(text.as_bytes());
    k
}

fn bump(state: &mut Staging, key: &[u8]) -> Result<(), ProjectionError> {
    let slot = state.entry(key)?;
    let n = slot.as_deref().and_then(read_u64).unwrap_or(0);
    *slot = Some(n.saturating_add(1).to_be_bytes().to_vec());
    Ok(())
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
        bump(state, &keyed(RECORD_KIND, event.kind().as_str()))?;
        bump(state, &keyed(RECORD_ACTOR, event.actor().as_str()))?;
        let slot = state.entry(RECORD_TOTALS)?;
        let mut totals: Totals = match slot.as_deref() {
            Some(b) => codec::decode("summary totals", b).map_err(|e| bad(e.to_string()))?,
            None => Totals::default(),
        };
        totals.events = totals.events.saturating_add(1);
        let at = event.recorded_at();
        totals.first_at = Some(totals.first_at.map_or(at, |f| f.min(at)));
        totals.last_at = Some(totals.last_at.map_or(at, |l| l.max(at)));
        *slot = Some(codec::encode("summary totals", &totals).map_err(|e| bad(e.to_string()))?);
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
            Some(0x03) if key.len() == 1 => codec::decode::<Totals>("summary totals", payload)
                .map(|_| ())
                .map_err(|e| e.to_string()),
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
        let t: Totals = codec::decode("summary totals", &b).map_err(|e| bad(e.to_string()))?;
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
