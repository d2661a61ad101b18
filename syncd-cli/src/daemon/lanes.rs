//! The daemon's ingest lanes: the threads and waiting around the core's
//! pure lane decisions (`sourceos_syncd::LaneQueues`). Submitters offer
//! items to the bounded lanes; one dispatcher thread takes batches in
//! strict priority (control, data, telemetry) and hands each batch to the
//! store as one `append_many`, so many submissions share one group commit.
//! Shedding episodes are summarised by the dispatcher once they have been
//! quiet, and at shutdown.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sourceos_syncd as core;

/// How long telemetry must go unshed before its episode is summarised.
pub const SHED_QUIET_MS: u64 = 1_000;
/// How long a control submitter waits for room before it is told to
/// retry (it is never dropped: the answer says so).
pub const CONTROL_WAIT_MS: u64 = 10_000;
/// How often an idle dispatcher looks at the shed tracker.
const IDLE_POLL_MS: u64 = 100;

/// What became of one item.
pub enum Submitted {
    /// Appended (outcomes in order), or the store failed.
    Done(Result<Vec<core::AppendOutcome>, String>),
    /// Telemetry shed.
    Shed,
    /// Data deferred, or control that found no room in time.
    Deferred {
        /// How long to wait before retrying.
        retry_after_ms: u64,
    },
    /// The lanes are stopped (the daemon drains).
    Stopped,
}

type Reply = mpsc::SyncSender<Result<Vec<core::AppendOutcome>, String>>;
type Item = (Vec<core::EventDraft>, Reply);

struct State {
    queues: core::LaneQueues<Item>,
    tracker: core::ShedTracker,
    stopped: bool,
}

/// The lanes of one daemon run.
pub struct Lanes {
    state: Mutex<State>,
    /// Signalled when an item is queued or the lanes stop.
    work: Condvar,
    /// Signalled when the dispatcher took items (room in the lanes).
    room: Condvar,
    store: core::Store,
    started: Instant,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain counters and queues
    // behind; carrying on with them is safer than refusing all ingest.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lanes {
    /// Lanes over `store` with `limits`, and their dispatcher thread.
    pub fn start(store: core::Store, limits: core::LaneLimits) -> std::io::Result<Arc<Lanes>> {
        let lanes = Arc::new(Lanes {
            state: Mutex::new(State {
                queues: core::LaneQueues::new(limits),
                tracker: core::ShedTracker::new(SHED_QUIET_MS),
                stopped: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            store,
            started: Instant::now(),
            dispatcher: Mutex::new(None),
        });
        let l = lanes.clone();
        let handle = std::thread::Builder::new()
            .name("ingest-lanes".into())
            .spawn(move || l.dispatch())?;
        if let Ok(mut d) = lanes.dispatcher.lock() {
            *d = Some(handle);
        }
        Ok(lanes)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Offers one item (at most `MAX_LANE_ITEM_EVENTS` drafts of one lane)
    /// and, when admitted, waits until it is durable.
    pub fn submit(&self, lane: core::Lane, drafts: Vec<core::EventDraft>) -> Submitted {
        let n = drafts.len();
        let (tx, rx) = mpsc::sync_channel(1);
        let mut item = (drafts, tx);
        let deadline = Instant::now() + Duration::from_millis(CONTROL_WAIT_MS);
        let mut st = lock(&self.state);
        let mut waited = false;
        loop {
            if st.stopped {
                return Submitted::Stopped;
            }
            match st.queues.offer(lane, n, item) {
                Ok(()) => break,
                Err((core::Admission::Shed, _)) => {
                    let at = self.store.now();
                    let now = self.now_ms();
                    st.tracker.on_shed(at, now, n as u64);
                    return Submitted::Shed;
                }
                Err((core::Admission::Defer { retry_after_ms }, _)) => {
                    return Submitted::Deferred { retry_after_ms }
                }
                Err((core::Admission::Wait, back)) => {
                    item = back;
                    if !waited {
                        st.queues.count_wait(lane);
                        waited = true;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Submitted::Deferred {
                            retry_after_ms: CONTROL_WAIT_MS,
                        };
                    }
                    st = match self.room.wait_timeout(st, left) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                Err((core::Admission::Admit, _)) => {
                    // `offer` queues what it admits; never handed back.
                    return Submitted::Done(Err("lane admission disagreed".into()));
                }
            }
        }
        drop(st);
        self.work.notify_one();
        match rx.recv() {
            Ok(r) => Submitted::Done(r),
            Err(_) => Submitted::Done(Err("the ingest lanes stopped".into())),
        }
    }

    /// The `lanes` block of the status document.
    pub fn view(&self) -> core::LaneStatus {
        let st = lock(&self.state);
        st.queues.view(&st.tracker)
    }

    /// Stops the lanes once they are empty: what was queued is appended,
    /// an open shedding episode is summarised, and the dispatcher exits.
    pub fn stop(&self) {
        lock(&self.state).stopped = true;
        self.work.notify_all();
        self.room.notify_all();
        let handle = self.dispatcher.lock().ok().and_then(|mut d| d.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn record(&self, episode: Option<core::ShedEpisode>) {
        let Some(e) = episode else { return };
        match core::record_shed(&self.store, &e) {
            Ok(core::AppendOutcome::Appended { seq, .. }) => {
                tracing::info!(
                    seq = seq.get(),
                    shed = e.shed_events,
                    "telemetry shed summary"
                );
            }
            Ok(other) => tracing::warn!(?other, "telemetry shed summary not recorded"),
            Err(err) => {
                tracing::error!(error = %crate::chain(&err), "recording a telemetry shed summary failed")
            }
        }
    }

    fn dispatch(&self) {
        loop {
            let mut st = lock(&self.state);
            while st.queues.is_empty() {
                let now = self.now_ms();
                let closed = st.tracker.poll(now);
                if closed.is_some() {
                    drop(st);
                    self.record(closed);
                    st = lock(&self.state);
                    continue;
                }
                if st.stopped {
                    let last = st.tracker.finish();
                    drop(st);
                    self.record(last);
                    return;
                }
                st = match self
                    .work
                    .wait_timeout(st, Duration::from_millis(IDLE_POLL_MS))
                {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            let batch = st.queues.pop_batch(core::MAX_LANE_BATCH_EVENTS);
            // A flood that never lets the lanes go idle still closes its
            // episodes once shedding stops.
            let closed = st.tracker.poll(self.now_ms());
            drop(st);
            self.room.notify_all();
            self.record(closed);
            self.commit(batch);
        }
    }

    fn commit(&self, batch: Vec<(core::Lane, Item)>) {
        let mut drafts = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for (_, (d, reply)) in batch {
            replies.push((d.len(), reply));
            drafts.extend(d);
        }
        match self.store.append_many(drafts) {
            Ok(outcomes) => {
                let mut it = outcomes.into_iter();
                for (n, reply) in replies {
                    let mine: Vec<_> = it.by_ref().take(n).collect();
                    let _ = reply.try_send(Ok(mine));
                }
            }
            Err(e) => {
                let why = crate::chain(&e);
                for (_, reply) in replies {
                    let _ = reply.try_send(Err(why.clone()));
                }
            }
        }
    }
}

/// Pause before offering deferred drafts again, at least.
const MIN_RETRY_MS: u64 = 10;

/// Appends `drafts` through the lanes for a caller that waits rather than
/// retries itself (`syncd ingest` served by the daemon): each run of one
/// lane, in order, is offered until admitted; deferral is back-pressure
/// (the caller waits the time the lanes ask for); shed telemetry comes
/// back as a rejected line, saying so. Outcomes are in the drafts' order.
pub fn append_waiting(
    lanes: &Lanes,
    drafts: Vec<core::EventDraft>,
) -> Result<Vec<core::AppendOutcome>, core::AppendError> {
    let mut out = Vec::with_capacity(drafts.len());
    let mut runs: Vec<(core::Lane, Vec<core::EventDraft>)> = Vec::new();
    for d in drafts {
        let lane = core::classify_lane(&d.kind, None);
        let limit = if lane == core::Lane::Telemetry {
            core::MAX_TELEMETRY_ITEM_EVENTS
        } else {
            core::MAX_LANE_ITEM_EVENTS
        };
        match runs.last_mut() {
            Some((l, run)) if *l == lane && run.len() < limit => run.push(d),
            _ => runs.push((lane, vec![d])),
        }
    }
    for (lane, run) in runs {
        loop {
            match lanes.submit(lane, run.clone()) {
                Submitted::Done(Ok(outcomes)) => {
                    out.extend(outcomes);
                    break;
                }
                Submitted::Done(Err(e)) => return Err(core::AppendError::Poisoned(e)),
                Submitted::Shed => {
                    out.extend(run.iter().map(|_| core::AppendOutcome::Rejected {
                        reason: "shed: the telemetry lane is full; nothing was appended".into(),
                    }));
                    break;
                }
                Submitted::Deferred { retry_after_ms } => {
                    std::thread::sleep(Duration::from_millis(retry_after_ms.max(MIN_RETRY_MS)));
                }
                Submitted::Stopped => {
                    return Err(core::AppendError::Poisoned(
                        "the daemon is shutting down; nothing more is accepted".into(),
                    ))
                }
            }
        }
    }
    Ok(out)
}
