//! The lifecycle projection: the daemon's current lifecycle state, the most
//! recent moves, and the outcome of each step of the latest shutdown. One
//! record, rewritten on each lifecycle event; lifecycle events are rare (a
//! few per daemon run), so the rewrite costs nothing that matters, and the
//! history it keeps is bounded by [`MAX_HISTORY`]. Only this device's own
//! lifecycle events are folded; imported ones are another device's.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::event::Envelope;
use crate::lifecycle::{
    ShutdownStep, Transition, TransitionRecord, LIFECYCLE_KIND, SHUTDOWN_STEP_KIND,
};

use super::{Projection, ProjectionError, Staging};

/// Name of the projection.
pub(crate) const NAME: &str = "lifecycle";
/// Moves kept in the history, newest last.
pub(crate) const MAX_HISTORY: usize = 128;
/// Shutdown steps kept for the latest shutdown.
pub(crate) const MAX_STEPS: usize = 64;

const RECORD: &[u8] = &[0x01];

/// The lifecycle projection.
pub(crate) struct LifecycleIndex;

/// One shutdown step's recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownStepRecord {
    /// Sequence number of the event.
    pub seq: u64,
    /// The step's outcome.
    #[serde(flatten)]
    pub step: ShutdownStep,
}

/// The stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub transitions: u64,
    pub history: Vec<TransitionRecord>,
    pub shutdown_run: Option<String>,
    pub shutdown_steps: Vec<ShutdownStepRecord>,
}

fn bad(reason: String) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: "01".into(),
        reason,
    }
}

fn decode(payload: &[u8]) -> Result<Stored, String> {
    codec::decode::<Stored>("lifecycle record", payload).map_err(|e| e.to_string())
}

impl Projection for LifecycleIndex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        let kind = event.kind().as_str();
        // Another device's lifecycle, arriving in a bundle, is its own: it
        // stays in the log but is not this device's state.
        if (kind != LIFECYCLE_KIND && kind != SHUTDOWN_STEP_KIND) || event.is_imported() {
            return Ok(());
        }
        let seq = event.seq().get();
        let slot = state.entry(RECORD)?;
        let mut stored = match slot.as_deref() {
            Some(b) => decode(b).map_err(bad)?,
            None => Stored::default(),
        };
        let value = event.payload().to_value();
        // Appends validate these payloads; one that does not decode (only
        // possible from a peer with other rules) is left out rather than
        // failing the fold.
        if kind == LIFECYCLE_KIND {
            let Ok(transition) = serde_json::from_value::<Transition>(value) else {
                return Ok(());
            };
            stored.transitions = stored.transitions.saturating_add(1);
            stored.history.push(TransitionRecord {
                seq,
                at: event.recorded_at(),
                transition,
            });
            let excess = stored.history.len().saturating_sub(MAX_HISTORY);
            stored.history.drain(..excess);
        } else {
            let Ok(step) = serde_json::from_value::<ShutdownStep>(value) else {
                return Ok(());
            };
            if stored.shutdown_run.as_deref() != Some(step.run_id.as_str()) {
                stored.shutdown_run = Some(step.run_id.clone());
                stored.shutdown_steps.clear();
            }
            if stored.shutdown_steps.len() < MAX_STEPS {
                stored.shutdown_steps.push(ShutdownStepRecord { seq, step });
            }
        }
        let bytes =
            codec::encode("lifecycle record", &stored).map_err(|e| ProjectionError::BadEvent {
                seq,
                reason: e.to_string(),
            })?;
        *slot = Some(bytes);
        Ok(())
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        if key != RECORD {
            return Err("unknown record".into());
        }
        decode(payload).map(|_| ())
    }
}

/// The stored state (empty before the first lifecycle event).
pub(crate) fn get(state: &Staging) -> Result<Stored, ProjectionError> {
    match state.get(RECORD)? {
        None => Ok(Stored::default()),
        Some(b) => decode(&b).map_err(bad),
    }
}
