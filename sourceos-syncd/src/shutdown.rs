//! The shutdown graph: typed steps with dependencies, each run with its own
//! timeout, each outcome classified. A step that *requires* another runs
//! only when that one completed (otherwise it is skipped and says why); a
//! step that only comes *after* another waits for it to end, whatever its
//! outcome, so the final receipt flush runs even when something before it
//! hung. Steps run one at a time in a fixed topological order, so a
//! shutdown is reproducible and its record reads in the order it happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::lifecycle::StepOutcome;

/// Most steps in one graph.
pub const MAX_SHUTDOWN_STEPS: usize = 64;
/// How often a running step checks for a forced exit.
const FORCE_POLL_MS: u64 = 20;

/// What a step does; `Err` is a failure, with the reason. The flag it gets
/// is set when the graph stops waiting for it (timeout or forced exit), so
/// that it can stop what it started (kill a child process, say).
pub type StepAction = Box<dyn FnOnce(&AtomicBool) -> Result<(), String> + Send>;

/// One step of the graph.
pub struct StepSpec {
    /// Its name.
    pub name: String,
    /// Steps that must have completed for this one to run.
    pub requires: Vec<String>,
    /// Steps that must have ended (any outcome) before this one runs.
    pub after: Vec<String>,
    /// How long it may take.
    pub timeout_ms: u64,
    /// What it does.
    pub action: StepAction,
}

/// The classified outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The step.
    pub name: String,
    /// What it required and came after, for the record.
    pub depends_on: Vec<String>,
    /// Its outcome.
    pub outcome: StepOutcome,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Its timeout.
    pub timeout_ms: u64,
    /// Why it did not complete.
    pub reason: Option<String>,
}

/// The graph cannot be run as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// More than [`MAX_SHUTDOWN_STEPS`] steps.
    #[error("{0} shutdown steps; at most {MAX_SHUTDOWN_STEPS}")]
    TooManySteps(usize),
    /// A dependency names no step, or two steps share a name.
    #[error("shutdown step {step}: {reason}")]
    BadStep {
        /// The step.
        step: String,
        /// What is wrong.
        reason: String,
    },
    /// The dependencies form a cycle.
    #[error("shutdown steps depend on each other in a cycle: {0}")]
    Cycle(String),
}

/// Orders steps so that every step comes after its dependencies; ties keep
/// the given order.
fn order(steps: &[StepSpec]) -> Result<Vec<usize>, GraphError> {
    if steps.len() > MAX_SHUTDOWN_STEPS {
        return Err(GraphError::TooManySteps(steps.len()));
    }
    let index = |name: &str| steps.iter().position(|s| s.name == name);
    for (i, s) in steps.iter().enumerate() {
        if index(&s.name) != Some(i) {
            return Err(GraphError::BadStep {
                step: s.name.clone(),
                reason: "named twice".into(),
            });
        }
        for d in s.requires.iter().chain(&s.after) {
            if index(d).is_none() {
                return Err(GraphError::BadStep {
                    step: s.name.clone(),
                    reason: format!("depends on unknown step {d}"),
                });
            }
        }
    }
    let mut done = vec![false; steps.len()];
    let mut out = Vec::with_capacity(steps.len());
    while out.len() < steps.len() {
        let next = steps.iter().enumerate().position(|(i, s)| {
            !done.get(i).copied().unwrap_or(true)
                && s.requires
                    .iter()
                    .chain(&s.after)
                    .all(|d| index(d).and_then(|j| done.get(j).copied()) == Some(true))
        });
        let Some(i) = next else {
            let left: Vec<&str> = steps
                .iter()
                .enumerate()
                .filter(|(i, _)| !done.get(*i).copied().unwrap_or(true))
                .map(|(_, s)| s.name.as_str())
                .collect();
            return Err(GraphError::Cycle(left.join(", ")));
        };
        if let Some(d) = done.get_mut(i) {
            *d = true;
        }
        out.push(i);
    }
    Ok(out)
}

/// Runs the graph. `forced` is checked while a step runs: once it is set,
/// the running step and every step not yet run are recorded as cut short.
/// `record` is called with each result as soon as it is known, in order.
pub fn run_graph(
    steps: Vec<StepSpec>,
    forced: &AtomicBool,
    record: &mut dyn FnMut(&StepResult),
) -> Result<Vec<StepResult>, GraphError> {
    let order = order(&steps)?;
    let mut slots: Vec<Option<StepSpec>> = steps.into_iter().map(Some).collect();
    let mut results: Vec<StepResult> = Vec::with_capacity(order.len());
    for i in order {
        let Some(spec) = slots.get_mut(i).and_then(Option::take) else {
            continue;
        };
        let mut depends_on = spec.requires.clone();
        depends_on.extend(spec.after.iter().cloned());
        let failed_dep = spec.requires.iter().find(|d| {
            results
                .iter()
                .find(|r| &r.name == *d)
                .is_none_or(|r| r.outcome != StepOutcome::Completed)
        });
        let (outcome, duration_ms, reason) = if forced.load(Ordering::SeqCst) {
            (
                StepOutcome::CutShort,
                0,
                Some("not started: a second signal forced the exit".to_owned()),
            )
        } else if let Some(d) = failed_dep {
            (
                StepOutcome::SkippedBecauseDependencyFailed,
                0,
                Some(format!("required step {d} did not complete")),
            )
        } else {
            run_step(spec.action, spec.timeout_ms, forced)
        };
        let r = StepResult {
            name: spec.name,
            depends_on,
            outcome,
            duration_ms,
            timeout_ms: spec.timeout_ms,
            reason,
        };
        tracing::info!(step = %r.name, outcome = r.outcome.as_str(), "shutdown step");
        record(&r);
        results.push(r);
    }
    Ok(results)
}

fn run_step(
    action: StepAction,
    timeout_ms: u64,
    forced: &AtomicBool,
) -> (StepOutcome, u64, Option<String>) {
    let (tx, rx) = mpsc::sync_channel(1);
    let started = Instant::now();
    let abandon = Arc::new(AtomicBool::new(false));
    let flag = abandon.clone();
    // A step that hangs keeps its thread; it is told it was abandoned, and
    // the process exits soon after shutdown ends, which ends it.
    let spawned = std::thread::Builder::new()
        .name("shutdown-step".into())
        .spawn(move || {
            let _ = tx.send(action(&flag));
        });
    if let Err(e) = spawned {
        return (
            StepOutcome::Failed,
            0,
            Some(format!("cannot start the step: {e}")),
        );
    }
    let deadline = started + Duration::from_millis(timeout_ms);
    let elapsed = |s: Instant| u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX);
    loop {
        if forced.load(Ordering::SeqCst) {
            abandon.store(true, Ordering::SeqCst);
            return (
                StepOutcome::CutShort,
                elapsed(started),
                Some("a second signal forced the exit while it ran".into()),
            );
        }
        let now = Instant::now();
        if now >= deadline {
            abandon.store(true, Ordering::SeqCst);
            return (
                StepOutcome::TimedOut,
                elapsed(started),
                Some(format!("did not finish within {timeout_ms} ms")),
            );
        }
        let wait = (deadline - now).min(Duration::from_millis(FORCE_POLL_MS));
        match rx.recv_timeout(wait) {
            Ok(Ok(())) => return (StepOutcome::Completed, elapsed(started), None),
            Ok(Err(reason)) => return (StepOutcome::Failed, elapsed(started), Some(reason)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return (
                    StepOutcome::Failed,
                    elapsed(started),
                    Some("the step ended without a result".into()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, requires: &[&str], after: &[&str], action: StepAction) -> StepSpec {
        StepSpec {
            name: name.into(),
            requires: requires.iter().map(|s| (*s).to_owned()).collect(),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms: 200,
            action,
        }
    }

    #[test]
    fn outcomes_are_classified_and_the_last_step_still_runs() {
        let forced = AtomicBool::new(false);
        let mut seen = Vec::new();
        let results = run_graph(
            vec![
                step("flush", &[], &["a", "b", "c", "d"], Box::new(|_| Ok(()))),
                step("a", &[], &[], Box::new(|_| Ok(()))),
                step(
                    "b",
                    &["a"],
                    &[],
                    Box::new(|abandoned| {
                        while !abandoned.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(())
                    }),
                ),
                step("c", &["b"], &[], Box::new(|_| Ok(()))),
                step("d", &[], &[], Box::new(|_| Err("boom".into()))),
            ],
            &forced,
            &mut |r| seen.push(r.name.clone()),
        )
        .unwrap();
        let got: Vec<(&str, StepOutcome)> = results
            .iter()
            .map(|r| (r.name.as_str(), r.outcome))
            .collect();
        assert_eq!(
            got,
            [
                ("a", StepOutcome::Completed),
                ("b", StepOutcome::TimedOut),
                ("c", StepOutcome::SkippedBecauseDependencyFailed),
                ("d", StepOutcome::Failed),
                ("flush", StepOutcome::Completed),
            ]
        );
        assert_eq!(seen, ["a", "b", "c", "d", "flush"]);
    }

    #[test]
    fn a_forced_exit_cuts_the_rest_short() {
        let forced = std::sync::Arc::new(AtomicBool::new(false));
        let f2 = forced.clone();
        let results = run_graph(
            vec![
                step(
                    "a",
                    &[],
                    &[],
                    Box::new(move |_| {
                        f2.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(5));
                        Ok(())
                    }),
                ),
                step("b", &[], &["a"], Box::new(|_| Ok(()))),
            ],
            &forced,
            &mut |_| {},
        )
        .unwrap();
        assert!(results.iter().all(|r| r.outcome == StepOutcome::CutShort));
    }

    #[test]
    fn bad_graphs_are_refused() {
        let noop = || -> StepAction { Box::new(|_| Ok(())) };
        let forced = AtomicBool::new(false);
        let cycle = run_graph(
            vec![
                step("a", &["b"], &[], noop()),
                step("b", &[], &["a"], noop()),
            ],
            &forced,
            &mut |_| {},
        );
        assert!(matches!(cycle, Err(GraphError::Cycle(_))));
        let unknown = run_graph(vec![step("a", &["x"], &[], noop())], &forced, &mut |_| {});
        assert!(matches!(unknown, Err(GraphError::BadStep { .. })));
    }
}
