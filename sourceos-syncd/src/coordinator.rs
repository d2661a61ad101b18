//! The lifecycle coordinator of a running daemon: it holds the current
//! lifecycle state, asks the transition function before every move,
//! records each allowed move as a `lifecycle.transitioned` event by the
//! reserved lifecycle actor, and answers readiness questions. A refused
//! move is an outcome, not an error, and records nothing.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::ids::InvalidValue;
use crate::lifecycle::{
    readiness, transition, InvalidLifecycleTransition, LifecycleEvent, LifecycleState, Readiness,
    RunId, ShutdownStep, Subsystem, Transition, TransitionRecord, SUBSYSTEMS,
};
use crate::projection::lifecycle::{self as proj, ShutdownStepRecord};
use crate::projection::ProjectionError;
use crate::store::{AppendError, AppendOutcome, Store};

/// Why the coordinator could not record a move it allowed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The store refused or failed the append.
    #[error("recording the lifecycle move failed")]
    Append(#[source] AppendError),
    /// The store rejected the event (a bug in the payload).
    #[error("the store rejected the lifecycle event: {0}")]
    Rejected(String),
    /// The payload could not be built.
    #[error("lifecycle payload")]
    Payload(#[source] InvalidValue),
    /// The lifecycle projection could not be read.
    #[error("reading the lifecycle projection failed")]
    Projection(#[source] ProjectionError),
    /// The coordinator's lock was poisoned by a panic elsewhere.
    #[error("lifecycle state lock poisoned")]
    Poisoned,
}

/// What a move request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Recorded as this event.
    Moved(TransitionRecord),
    /// Not allowed; nothing changed.
    Refused(InvalidLifecycleTransition),
}

/// Extra facts recorded with a move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveDetails {
    /// Why, in words.
    pub reason: Option<String>,
    /// The confirmed identity.
    pub identity_ref: Option<String>,
    /// The loaded org policy.
    pub org_policy_ref: Option<String>,
}

#[derive(Debug, Clone)]
struct Current {
    state: LifecycleState,
    reason: Option<String>,
    identity_ref: Option<String>,
    org_policy_ref: Option<String>,
}

/// The coordinator of one daemon run.
pub struct Coordinator {
    store: Store,
    run_id: RunId,
    current: Mutex<Current>,
    started: Mutex<BTreeSet<Subsystem>>,
}

/// One subsystem as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubsystemView {
    /// The subsystem.
    pub subsystem: Subsystem,
    /// Whether it was started.
    pub started: bool,
    /// Whether it may start now, and if not which gate is missing.
    pub readiness: Readiness,
}

/// The lifecycle as recorded: current move, recent history, latest
/// shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LifecycleView {
    /// The latest move, if any was ever recorded.
    pub current: Option<TransitionRecord>,
    /// Recent moves, oldest first (at most the projection's bound).
    pub history: Vec<TransitionRecord>,
    /// Moves ever recorded.
    pub transitions: u64,
    /// The run of the latest shutdown.
    pub shutdown_run: Option<String>,
    /// That shutdown's steps, in the order they ended.
    pub shutdown_steps: Vec<ShutdownStepRecord>,
}

impl LifecycleView {
    /// The recorded state (BOOT when nothing was ever recorded).
    pub fn state(&self) -> LifecycleState {
        self.current
            .as_ref()
            .map_or(LifecycleState::Boot, |c| c.transition.to)
    }
}

/// Reads the lifecycle projection.
pub fn lifecycle(store: &Store) -> Result<LifecycleView, ProjectionError> {
    let stored = store.with_projection(proj::NAME, proj::get)??;
    Ok(LifecycleView {
        current: stored.history.last().cloned(),
        transitions: stored.transitions,
        history: stored.history,
        shutdown_run: stored.shutdown_run,
        shutdown_steps: stored.shutdown_steps,
    })
}

impl Coordinator {
    /// Starts a run: reads the recorded state and, when the previous run
    /// ended cleanly, records `process_started`; when it did not, records
    /// `crash_detected` and `recovery_completed`. The run is then at BOOT.
    pub fn start(store: Store, run_id: RunId) -> Result<Self, CoordinatorError> {
        let view = lifecycle(&store).map_err(CoordinatorError::Projection)?;
        let state = view.state();
        let c = Self {
            store,
            run_id,
            current: Mutex::new(Current {
                state,
                reason: None,
                identity_ref: None,
                org_policy_ref: None,
            }),
            started: Mutex::new(BTreeSet::new()),
        };
        match state {
            LifecycleState::Boot if view.current.is_none() => {}
            LifecycleState::QuitReady | LifecycleState::Halted => {
                c.apply(LifecycleEvent::ProcessStarted, MoveDetails::default())?;
            }
            other => {
                let reason = format!(
                    "the previous run ended in {} without reaching QUIT_READY",
                    other.as_str()
                );
                c.apply(
                    LifecycleEvent::CrashDetected,
                    MoveDetails {
                        reason: Some(reason),
                        ..MoveDetails::default()
                    },
                )?;
                c.apply(LifecycleEvent::RecoveryCompleted, MoveDetails::default())?;
            }
        }
        Ok(c)
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        self.run_id.as_str()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> Result<MutexGuard<'_, Current>, CoordinatorError> {
        self.current.lock().map_err(|_| CoordinatorError::Poisoned)
    }

    /// The current state.
    pub fn state(&self) -> Result<LifecycleState, CoordinatorError> {
        Ok(self.lock()?.state)
    }

    /// The reason recorded with the latest move, if any (why the daemon is
    /// degraded, for instance).
    pub fn reason(&self) -> Result<Option<String>, CoordinatorError> {
        Ok(self.lock()?.reason.clone())
    }

    /// Asks for a move. Allowed moves are recorded (durably) before the
    /// state changes; refused moves change nothing.
    pub fn apply(
        &self,
        event: LifecycleEvent,
        details: MoveDetails,
    ) -> Result<MoveOutcome, CoordinatorError> {
        let mut cur = self.lock()?;
        let to = match transition(cur.state, event) {
            Ok(to) => to,
            Err(refused) => return Ok(MoveOutcome::Refused(refused)),
        };
        let t = Transition {
            run_id: self.run_id.as_str().to_owned(),
            from: cur.state,
            to,
            event,
            reason: details.reason.clone(),
            identity_ref: details.identity_ref.or_else(|| cur.identity_ref.clone()),
            org_policy_ref: details
                .org_policy_ref
                .or_else(|| cur.org_policy_ref.clone()),
        };
        let draft = t.draft().map_err(CoordinatorError::Payload)?;
        match self
            .store
            .append_system(draft)
            .map_err(CoordinatorError::Append)?
        {
            AppendOutcome::Appended { seq, .. } => {
                // The record carries the time the event was sealed with.
                let at = match self.store.get(seq) {
                    Ok(Some(e)) => e.recorded_at(),
                    _ => self.store.now(),
                };
                let seq = seq.get();
                tracing::info!(from = t.from.as_str(), to = to.as_str(), seq, "lifecycle");
                cur.state = to;
                cur.reason = details.reason;
                cur.identity_ref = t.identity_ref.clone();
                cur.org_policy_ref = t.org_policy_ref.clone();
                Ok(MoveOutcome::Moved(TransitionRecord {
                    seq,
                    at,
                    transition: t,
                }))
            }
            AppendOutcome::Duplicate { seq, .. } => Err(CoordinatorError::Rejected(format!(
                "unexpected duplicate of event {seq}"
            ))),
            AppendOutcome::Rejected { reason } | AppendOutcome::PolicyBlocked { reason, .. } => {
                Err(CoordinatorError::Rejected(reason))
            }
        }
    }

    /// Records one shutdown step's outcome.
    pub fn record_step(&self, step: &ShutdownStep) -> Result<u64, CoordinatorError> {
        let draft = step.draft().map_err(CoordinatorError::Payload)?;
        match self
            .store
            .append_system(draft)
            .map_err(CoordinatorError::Append)?
        {
            AppendOutcome::Appended { seq, .. } | AppendOutcome::Duplicate { seq, .. } => {
                Ok(seq.get())
            }
            AppendOutcome::Rejected { reason } | AppendOutcome::PolicyBlocked { reason, .. } => {
                Err(CoordinatorError::Rejected(reason))
            }
        }
    }

    /// Starts a subsystem if its gate is open; otherwise refuses and says
    /// which gate is missing. Nothing is started twice.
    pub fn start_subsystem(&self, subsystem: Subsystem) -> Result<Readiness, CoordinatorError> {
        let state = self.state()?;
        let r = readiness(state, subsystem);
        if matches!(r, Readiness::Ready { .. }) {
            let mut started = self
                .started
                .lock()
                .map_err(|_| CoordinatorError::Poisoned)?;
            if started.insert(subsystem) {
                tracing::info!(subsystem = subsystem.as_str(), "subsystem started");
            }
        }
        Ok(r)
    }

    /// Starts every subsystem whose gate is open now.
    pub fn start_ready(&self) -> Result<(), CoordinatorError> {
        for s in SUBSYSTEMS {
            self.start_subsystem(s)?;
        }
        Ok(())
    }

    /// Whether a subsystem was started.
    pub fn is_started(&self, subsystem: Subsystem) -> Result<bool, CoordinatorError> {
        let started = self
            .started
            .lock()
            .map_err(|_| CoordinatorError::Poisoned)?;
        Ok(started.contains(&subsystem))
    }

    /// Every subsystem: started or not, and its readiness now.
    pub fn subsystems(&self) -> Result<Vec<SubsystemView>, CoordinatorError> {
        let state = self.state()?;
        let started = self
            .started
            .lock()
            .map_err(|_| CoordinatorError::Poisoned)?;
        Ok(SUBSYSTEMS
            .iter()
            .map(|s| SubsystemView {
                subsystem: *s,
                started: started.contains(s),
                readiness: readiness(state, *s),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InitOptions, OpenOptions};

    fn store(dir: &std::path::Path) -> Store {
        Store::init(
            dir,
            InitOptions {
                device: None,
                profile: crate::ids::ProfileId::new("profile:test").unwrap(),
                created_at: None,
            },
            OpenOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn moves_are_recorded_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let c =
            Coordinator::start(s.clone(), RunId::new("urn:srcos:runtime:one").unwrap()).unwrap();
        let head = s.head().unwrap().0;
        let out = c
            .apply(LifecycleEvent::Started, MoveDetails::default())
            .unwrap();
        assert!(matches!(out, MoveOutcome::Refused(_)));
        assert_eq!(s.head().unwrap().0, head, "a refusal appends nothing");
        assert_eq!(c.state().unwrap(), LifecycleState::Boot);
        let out = c
            .apply(LifecycleEvent::LocalStoreOpened, MoveDetails::default())
            .unwrap();
        assert!(matches!(out, MoveOutcome::Moved(_)));
        let view = lifecycle(&s).unwrap();
        assert_eq!(view.state(), LifecycleState::LocalReady);
        assert_eq!(view.transitions, 1);
        drop(c);
        // A new run after an unclean end goes through recovery.
        let c =
            Coordinator::start(s.clone(), RunId::new("urn:srcos:runtime:two").unwrap()).unwrap();
        assert_eq!(c.state().unwrap(), LifecycleState::Boot);
        let view = lifecycle(&s).unwrap();
        let path: Vec<_> = view.history.iter().map(|r| r.transition.to).collect();
        assert_eq!(
            path,
            [
                LifecycleState::LocalReady,
                LifecycleState::Recovery,
                LifecycleState::Boot
            ]
        );
    }

    #[test]
    fn users_cannot_record_lifecycle_moves() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let t = Transition {
            run_id: "urn:srcos:runtime:x".into(),
            from: LifecycleState::Boot,
            to: LifecycleState::LocalReady,
            event: LifecycleEvent::LocalStoreOpened,
            reason: None,
            identity_ref: None,
            org_policy_ref: None,
        };
        let draft = t.draft().unwrap();
        assert!(matches!(
            s.append(draft.clone()).unwrap(),
            AppendOutcome::Rejected { .. }
        ));
        let mut other = draft;
        other.actor = crate::ids::ActorId::new("actor:me").unwrap();
        assert!(matches!(
            s.append(other).unwrap(),
            AppendOutcome::Rejected { .. }
        ));
        assert_eq!(s.head().unwrap().0, 0);
    }
}
