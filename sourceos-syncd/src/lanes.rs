//! Ingest lanes: the pure decisions behind the daemon's prioritised ingest
//! path. Every event submitted through the daemon is classified into one
//! of three lanes (control, data, telemetry); each lane is a bounded queue
//! measured in events; admission compares a lane's depth with its limits
//! and answers with one deterministic action; the dispatcher takes work in
//! strict priority, control before data before telemetry.
//!
//! The threads, the waiting and the HTTP answers are the daemon's
//! (`syncd-cli/src/daemon/lanes.rs`); nothing here blocks, reads the clock
//! or spawns anything, so every decision is a unit test away.
//!
//! Under pressure, telemetry goes first (it is shed: counted and
//! summarised as one `ingest.telemetry_shed` event per episode), data is
//! deferred (the submitter is told to retry after a delay and nothing it
//! was told is appended is lost), and control is never shed or deferred by
//! a watermark: a full control lane makes its submitter wait for room.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::{read_config_file, ConfigFileError, CONFIG_FILE};
use crate::event::{EventDraft, Payload};
use crate::ids::{ActorId, EventKind, Timestamp};
use crate::kinds::KindSpec;
use crate::store::{AppendError, AppendOutcome, Store};

/// The actor of the shed summaries: reserved, so only syncd records them.
pub const INGEST_ACTOR: &str = "actor:syncd-ingest";
/// The kind of a shed summary.
pub const TELEMETRY_SHED_KIND: &str = "ingest.telemetry_shed";
/// Most events in one queued item: a submission is cut into items of at
/// most this many events, so that an item always fits an empty lane.
pub const MAX_LANE_ITEM_EVENTS: usize = 1_024;
/// Most events the dispatcher hands to one group commit.
pub const MAX_LANE_BATCH_EVENTS: usize = 1_024;
/// Most telemetry events in one item and in one batch: a control item that
/// arrives while telemetry is being committed waits for that commit, so
/// telemetry commits are kept short.
pub const MAX_TELEMETRY_ITEM_EVENTS: usize = 128;

/// Kind prefixes that steer sessions, turns, leases, the lifecycle, policy
/// and capabilities: their events are control events, whatever the hint.
const CONTROL_PREFIXES: [&str; 7] = [
    "session.",
    "turn.",
    "lease.",
    "lifecycle.",
    "policy.",
    "capability.",
    "orphan.",
];
/// Kind prefixes of telemetry (sheddable observations).
const TELEMETRY_PREFIXES: [&str; 3] = ["telemetry.", "metric.", "trace."];

/// A lane, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Session, turn, lease, lifecycle, policy and capability events, and
    /// events submitted with the `control` hint. Never shed or deferred.
    Control,
    /// Everything that is neither control nor telemetry. Deferred under
    /// pressure.
    Data,
    /// `telemetry.*`, `metric.*`, `trace.*` kinds and events submitted
    /// with the `telemetry` hint. Shed under pressure.
    Telemetry,
}

impl Lane {
    /// The lanes in priority order.
    pub const ALL: [Lane; 3] = [Lane::Control, Lane::Data, Lane::Telemetry];

    /// The lane's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Data => "data",
            Lane::Telemetry => "telemetry",
        }
    }

    /// Parses a lane hint (`control`, `data`, `telemetry`).
    pub fn parse(text: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == text)
    }

    fn index(self) -> usize {
        match self {
            Lane::Control => 0,
            Lane::Data => 1,
            Lane::Telemetry => 2,
        }
    }
}

/// The lane of an event of `kind` submitted with `hint`. A control kind is
/// control whatever the hint (a hint cannot make it sheddable); otherwise
/// a hint decides; otherwise a telemetry kind is telemetry and the rest is
/// data.
pub fn classify(kind: &EventKind, hint: Option<Lane>) -> Lane {
    let k = kind.as_str();
    if CONTROL_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return Lane::Control;
    }
    if let Some(h) = hint {
        return h;
    }
    if TELEMETRY_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return Lane::Telemetry;
    }
    Lane::Data
}

/// The limits of the three lanes, in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LaneLimits {
    /// Control events queued at most; a submitter waits beyond.
    pub control_capacity_events: usize,
    /// Data events queued at most; data beyond is deferred.
    pub data_capacity_events: usize,
    /// Telemetry events queued at most; telemetry beyond is shed.
    pub telemetry_capacity_events: usize,
    /// Telemetry is also shed while the data lane holds at least this many
    /// events, so that telemetry goes before data is deferred.
    pub data_pressure_watermark_events: usize,
    /// What a deferred submitter is told to wait before retrying.
    pub retry_after_ms: u64,
}

impl Default for LaneLimits {
    fn default() -> Self {
        Self {
            control_capacity_events: 4_096,
            data_capacity_events: 8_192,
            telemetry_capacity_events: 2_048,
            data_pressure_watermark_events: 4_096,
            retry_after_ms: 250,
        }
    }
}

/// Largest capacity a lane may be given, in events: whatever the settings
/// say, the events a daemon holds queued stay bounded (eight times the
/// default data lane; at the largest event, as much memory as the HTTP
/// bodies of all connections at once).
pub const MAX_LANE_CAPACITY_EVENTS: usize = 65_536;
/// Longest retry delay a deferred submitter may be told, in milliseconds.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// The `[lanes]` section of `HOME/config.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LaneConfigError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A value is missing its bounds or the section has an unknown key.
    #[error("{path}: [lanes] {reason}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct LanesFile {
    #[serde(default)]
    lanes: Option<LanesSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LanesSection {
    #[serde(default)]
    control_capacity_events: Option<usize>,
    #[serde(default)]
    data_capacity_events: Option<usize>,
    #[serde(default)]
    telemetry_capacity_events: Option<usize>,
    #[serde(default)]
    data_pressure_watermark_events: Option<usize>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl LaneLimits {
    /// Loads the `[lanes]` section of `HOME/config.toml`; a missing file,
    /// section or key is the default.
    pub fn load(home: &std::path::Path) -> Result<Self, LaneConfigError> {
        let Some(text) = read_config_file(home, CONFIG_FILE)? else {
            return Ok(Self::default());
        };
        Self::parse(&text).map_err(|reason| LaneConfigError::Invalid {
            path: home.join(CONFIG_FILE),
            reason,
        })
    }

    /// Parses configuration text (other sections are left to their
    /// owners). Without `data_pressure_watermark_events`, telemetry is shed
    /// once the data lane is half full, whatever its capacity.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: LanesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut l = Self::default();
        let Some(s) = file.lanes else {
            return Ok(l);
        };
        if let Some(v) = s.control_capacity_events {
            l.control_capacity_events = v;
        }
        if let Some(v) = s.data_capacity_events {
            l.data_capacity_events = v;
        }
        if let Some(v) = s.telemetry_capacity_events {
            l.telemetry_capacity_events = v;
        }
        l.data_pressure_watermark_events = s
            .data_pressure_watermark_events
            .unwrap_or((l.data_capacity_events / 2).max(1));
        if let Some(v) = s.retry_after_ms {
            l.retry_after_ms = v;
        }
        l.check()?;
        Ok(l)
    }

    /// Checks that every lane takes at least one full item and at most
    /// [`MAX_LANE_CAPACITY_EVENTS`], that the data pressure watermark lies
    /// within the data lane and that the retry delay is 1 ms to a minute.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("control_capacity_events", self.control_capacity_events),
            ("data_capacity_events", self.data_capacity_events),
            ("telemetry_capacity_events", self.telemetry_capacity_events),
        ] {
            if !(MAX_LANE_ITEM_EVENTS..=MAX_LANE_CAPACITY_EVENTS).contains(&v) {
                return Err(format!(
                    "{name} is {v}; it must be {MAX_LANE_ITEM_EVENTS} to {MAX_LANE_CAPACITY_EVENTS}"
                ));
            }
        }
        if self.data_pressure_watermark_events == 0
            || self.data_pressure_watermark_events > self.data_capacity_events
        {
            return Err(format!(
                "data_pressure_watermark_events is {}; 1 to data_capacity_events ({})",
                self.data_pressure_watermark_events, self.data_capacity_events
            ));
        }
        if self.retry_after_ms == 0 || self.retry_after_ms > MAX_RETRY_AFTER_MS {
            return Err(format!(
                "retry_after_ms is {}; it must be 1 to {MAX_RETRY_AFTER_MS}",
                self.retry_after_ms
            ));
        }
        Ok(())
    }

    fn capacity(&self, lane: Lane) -> usize {
        match lane {
            Lane::Control => self.control_capacity_events,
            Lane::Data => self.data_capacity_events,
            Lane::Telemetry => self.telemetry_capacity_events,
        }
    }
}

/// Events queued per lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Depths {
    /// Control events queued.
    pub control: usize,
    /// Data events queued.
    pub data: usize,
    /// Telemetry events queued.
    pub telemetry: usize,
}

impl Depths {
    fn of(&self, lane: Lane) -> usize {
        match lane {
            Lane::Control => self.control,
            Lane::Data => self.data,
            Lane::Telemetry => self.telemetry,
        }
    }

    fn of_mut(&mut self, lane: Lane) -> &mut usize {
        match lane {
            Lane::Control => &mut self.control,
            Lane::Data => &mut self.data,
            Lane::Telemetry => &mut self.telemetry,
        }
    }
}

/// What admission decides for an item of `events` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queue it.
    Admit,
    /// Telemetry under pressure: drop it, count it, summarise it.
    Shed,
    /// Data under pressure: tell the submitter to retry later.
    Defer {
        /// How long to wait before retrying.
        retry_after_ms: u64,
    },
    /// Control with a full lane: wait for room (never dropped).
    Wait,
}

/// The admission decision for an item of `events` events (at most
/// [`MAX_LANE_ITEM_EVENTS`]) into `lane` at `depths`.
pub fn admit(lane: Lane, events: usize, depths: Depths, limits: &LaneLimits) -> Admission {
    let fits = depths.of(lane).saturating_add(events) <= limits.capacity(lane);
    match lane {
        Lane::Control if fits => Admission::Admit,
        Lane::Control => Admission::Wait,
        Lane::Data if fits => Admission::Admit,
        Lane::Data => Admission::Defer {
            retry_after_ms: limits.retry_after_ms,
        },
        Lane::Telemetry if fits && depths.data < limits.data_pressure_watermark_events => {
            Admission::Admit
        }
        Lane::Telemetry => Admission::Shed,
    }
}

/// Counters of one lane since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneCounters {
    /// Events admitted.
    pub admitted_events: u64,
    /// Events shed (telemetry only).
    pub shed_events: u64,
    /// Events deferred (data only).
    pub deferred_events: u64,
    /// Times a submitter waited for room (control only).
    pub waits: u64,
    /// The largest depth reached.
    pub peak_depth_events: u64,
}

/// One lane in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneView {
    /// `control`, `data` or `telemetry`.
    pub lane: Lane,
    /// Events queued now.
    pub depth_events: u64,
    /// Its bound.
    pub capacity_events: u64,
    /// Where its action starts: the capacity for control (wait), data
    /// (defer) and telemetry (shed).
    pub high_watermark_events: u64,
    /// Counters since the daemon started.
    #[serde(flatten)]
    pub counters: LaneCounters,
}

/// The `lanes` block of the status document (present when a daemon
/// answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// The lanes in priority order.
    pub lanes: Vec<LaneView>,
    /// Telemetry is also shed while data holds this many events.
    pub data_pressure_watermark_events: u64,
    /// Shedding episodes summarised so far.
    pub shed_episodes: u64,
    /// Whether an episode is open (telemetry was shed recently).
    pub shedding: bool,
}

/// Three bounded queues of items (`T`), each item counted in events.
#[derive(Debug)]
pub struct LaneQueues<T> {
    queues: [VecDeque<(usize, T)>; 3],
    depths: Depths,
    counters: [LaneCounters; 3],
    limits: LaneLimits,
}

impl<T> LaneQueues<T> {
    /// Empty lanes with `limits`.
    pub fn new(limits: LaneLimits) -> Self {
        Self {
            queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            depths: Depths::default(),
            counters: [LaneCounters::default(); 3],
            limits,
        }
    }

    /// Offers an item of `events` events to `lane`: queued when admitted,
    /// else handed back with the decision. Shed and deferred events are
    /// counted here; a wait is counted by [`LaneQueues::count_wait`].
    pub fn offer(&mut self, lane: Lane, events: usize, item: T) -> Result<(), (Admission, T)> {
        let decision = admit(lane, events, self.depths, &self.limits);
        let c = self.counters.get_mut(lane.index());
        match decision {
            Admission::Admit => {
                let depth = self.depths.of_mut(lane);
                *depth = depth.saturating_add(events);
                let depth = *depth as u64;
                if let Some(c) = c {
                    c.admitted_events = c.admitted_events.saturating_add(events as u64);
                    c.peak_depth_events = c.peak_depth_events.max(depth);
                }
                if let Some(q) = self.queues.get_mut(lane.index()) {
                    q.push_back((events, item));
                }
                debug_assert!(self.depths.of(lane) <= self.limits.capacity(lane));
                Ok(())
            }
            Admission::Shed => {
                if let Some(c) = c {
                    c.shed_events = c.shed_events.saturating_add(events as u64);
                }
                Err((decision, item))
            }
            Admission::Defer { .. } => {
                if let Some(c) = c {
                    c.deferred_events = c.deferred_events.saturating_add(events as u64);
                }
                Err((decision, item))
            }
            Admission::Wait => Err((decision, item)),
        }
    }

    /// Counts a control submitter that had to wait for room.
    pub fn count_wait(&mut self, lane: Lane) {
        if let Some(c) = self.counters.get_mut(lane.index()) {
            c.waits = c.waits.saturating_add(1);
        }
    }

    /// Takes items in strict priority (every control item before any data
    /// item before any telemetry item) until the next one would bring the
    /// batch over `max_events`, or its telemetry over
    /// [`MAX_TELEMETRY_ITEM_EVENTS`]; the first item is always taken.
    pub fn pop_batch(&mut self, max_events: usize) -> Vec<(Lane, T)> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        for lane in Lane::ALL {
            let Some(q) = self.queues.get_mut(lane.index()) else {
                continue;
            };
            let mut taken_here = 0usize;
            while let Some((events, _)) = q.front() {
                let events = *events;
                if !out.is_empty() && taken.saturating_add(events) > max_events {
                    return out;
                }
                if lane == Lane::Telemetry
                    && !out.is_empty()
                    && taken_here.saturating_add(events) > MAX_TELEMETRY_ITEM_EVENTS
                {
                    return out;
                }
                taken_here = taken_here.saturating_add(events);
                let Some((_, item)) = q.pop_front() else {
                    break;
                };
                let depth = self.depths.of_mut(lane);
                *depth = depth.saturating_sub(events);
                taken = taken.saturating_add(events);
                out.push((lane, item));
            }
        }
        out
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Events queued per lane.
    pub fn depths(&self) -> Depths {
        self.depths
    }

    /// The lanes for the status document.
    pub fn view(&self, tracker: &ShedTracker) -> LaneStatus {
        let lanes = Lane::ALL
            .into_iter()
            .map(|lane| LaneView {
                lane,
                depth_events: self.depths.of(lane) as u64,
                capacity_events: self.limits.capacity(lane) as u64,
                high_watermark_events: self.limits.capacity(lane) as u64,
                counters: self.counters.get(lane.index()).copied().unwrap_or_default(),
            })
            .collect();
        LaneStatus {
            lanes,
            data_pressure_watermark_events: self.limits.data_pressure_watermark_events as u64,
            shed_episodes: tracker.episodes,
            shedding: tracker.open.is_some(),
        }
    }
}

/// One shedding episode: telemetry shed with no quiet gap of the
/// tracker's length in between. Also the payload of `ingest.telemetry_shed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShedEpisode {
    /// When the first event of the episode was shed.
    pub first_shed_at: Timestamp,
    /// When the last one was.
    pub last_shed_at: Timestamp,
    /// Events shed.
    pub shed_events: u64,
    /// Submissions (items) shed.
    pub shed_submissions: u64,
}

/// Groups sheds into episodes: an episode closes once no telemetry was
/// shed for `quiet_ms`, so a sustained flood is one summary, not one per
/// refused submission. Times are handed in (no clock is read here).
#[derive(Debug)]
pub struct ShedTracker {
    quiet_ms: u64,
    open: Option<(ShedEpisode, u64)>,
    episodes: u64,
}

impl ShedTracker {
    /// A tracker closing episodes after `quiet_ms` without a shed.
    pub fn new(quiet_ms: u64) -> Self {
        Self {
            quiet_ms,
            open: None,
            episodes: 0,
        }
    }

    /// Notes that `events` events were shed at `at` (`now_ms` on a
    /// monotonic scale).
    pub fn on_shed(&mut self, at: Timestamp, now_ms: u64, events: u64) {
        match &mut self.open {
            Some((e, last_ms)) => {
                e.last_shed_at = e.last_shed_at.max(at);
                e.shed_events = e.shed_events.saturating_add(events);
                e.shed_submissions = e.shed_submissions.saturating_add(1);
                *last_ms = now_ms;
            }
            None => {
                self.open = Some((
                    ShedEpisode {
                        first_shed_at: at,
                        last_shed_at: at,
                        shed_events: events,
                        shed_submissions: 1,
                    },
                    now_ms,
                ));
            }
        }
    }

    /// The open episode, once it has been quiet for `quiet_ms` at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Option<ShedEpisode> {
        let quiet = match &self.open {
            Some((_, last_ms)) => now_ms.saturating_sub(*last_ms) >= self.quiet_ms,
            None => false,
        };
        if quiet {
            self.finish()
        } else {
            None
        }
    }

    /// The open episode, whatever the time (at shutdown).
    pub fn finish(&mut self) -> Option<ShedEpisode> {
        let (e, _) = self.open.take()?;
        self.episodes = self.episodes.saturating_add(1);
        Some(e)
    }
}

/// Records a shedding episode as one `ingest.telemetry_shed` event by
/// [`INGEST_ACTOR`], through the system path (the actor is reserved).
pub fn record_shed(store: &Store, episode: &ShedEpisode) -> Result<AppendOutcome, AppendError> {
    let value = serde_json::to_value(episode).unwrap_or_default();
    let mut d = EventDraft::new(
        ActorId::new(INGEST_ACTOR).map_err(|e| AppendError::Poisoned(e.to_string()))?,
        EventKind::new(TELEMETRY_SHED_KIND).map_err(|e| AppendError::Poisoned(e.to_string()))?,
    );
    d.payload = Payload::new(value).map_err(|e| AppendError::Poisoned(e.to_string()))?;
    if let Err(reason) = crate::kinds::validate(&mut d) {
        return Ok(AppendOutcome::Rejected { reason });
    }
    store.append_system(d)
}

fn validate_shed(d: &mut EventDraft) -> Result<(), String> {
    if d.actor.as_str() != INGEST_ACTOR {
        return Err(format!("only {INGEST_ACTOR} records shed summaries"));
    }
    let e: ShedEpisode = crate::kinds::payload_as(d)?;
    if e.last_shed_at < e.first_shed_at {
        return Err("payload: last_shed_at is before first_shed_at".into());
    }
    if e.shed_events == 0 || e.shed_submissions == 0 || e.shed_submissions > e.shed_events {
        return Err(
            "payload: shed_events and shed_submissions must be at least 1, submissions at most events"
                .into(),
        );
    }
    Ok(())
}

/// The lane kinds.
pub(crate) const KINDS: &[KindSpec] = &[KindSpec {
    kind: TELEMETRY_SHED_KIND,
    validate: validate_shed,
}];

/// One non-blank line of a submission: its number and its lane and draft,
/// or why it is rejected.
#[derive(Debug)]
pub struct SubmittedLine {
    /// Line number (from 1).
    pub line: u64,
    /// The lane and draft, or the reason for rejecting it.
    pub parsed: Result<(Lane, EventDraft), String>,
}

/// Parses a JSON Lines submission (as `syncd ingest` reads it) and
/// classifies each valid line with `hint`. Blank lines get no entry.
pub fn parse_submission(body: &[u8], hint: Option<Lane>) -> Vec<SubmittedLine> {
    let mut out = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = i as u64 + 1;
        let parsed = if raw.len() > crate::ingest::MAX_LINE_BYTES {
            Err(format!(
                "line is longer than {} bytes",
                crate::ingest::MAX_LINE_BYTES
            ))
        } else {
            match std::str::from_utf8(raw) {
                Err(e) => Err(format!("line is not UTF-8: {e}")),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => {
                    crate::ingest::parse_line(text.trim()).map(|d| (classify(&d.kind, hint), d))
                }
            }
        };
        out.push(SubmittedLine { line, parsed });
    }
    out
}

/// Cuts the valid lines of a submission into items: runs of consecutive
/// valid lines of one lane, at most [`MAX_LANE_ITEM_EVENTS`] each
/// ([`MAX_TELEMETRY_ITEM_EVENTS`] for telemetry), in input order. Each item lists the indexes (into `lines`) it carries.
pub fn items(lines: &[SubmittedLine]) -> Vec<(Lane, Vec<usize>)> {
    let mut out: Vec<(Lane, Vec<usize>)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Ok((lane, _)) = &l.parsed else { continue };
        match out.last_mut() {
            Some((last, idx)) if last == lane && idx.len() < item_bound(*lane) => idx.push(i),
            _ => out.push((*lane, vec![i])),
        }
    }
    out
}

fn item_bound(lane: Lane) -> usize {
    match lane {
        Lane::Telemetry => MAX_TELEMETRY_ITEM_EVENTS,
        Lane::Control | Lane::Data => MAX_LANE_ITEM_EVENTS,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    fn kind(k: &str) -> EventKind {
        EventKind::new(k).unwrap()
    }

    fn limits() -> LaneLimits {
        LaneLimits::default()
    }

    fn depths(control: usize, data: usize, telemetry: usize) -> Depths {
        Depths {
            control,
            data,
            telemetry,
        }
    }

    #[test]
    fn classification_follows_the_documented_rule() {
        for k in [
            "session.opened",
            "turn.admitted",
            "lease.acquired",
            "lifecycle.transitioned",
            "policy.decided",
            "capability.declared",
            "orphan.quarantined",
        ] {
            for hint in [None, Some(Lane::Data), Some(Lane::Telemetry)] {
                assert_eq!(classify(&kind(k), hint), Lane::Control, "{k} {hint:?}");
            }
        }
        assert_eq!(classify(&kind("telemetry.cpu"), None), Lane::Telemetry);
        assert_eq!(classify(&kind("metric.disk"), None), Lane::Telemetry);
        assert_eq!(classify(&kind("trace.span"), None), Lane::Telemetry);
        assert_eq!(classify(&kind("object.created"), None), Lane::Data);
        assert_eq!(
            classify(&kind("object.created"), Some(Lane::Control)),
            Lane::Control
        );
        assert_eq!(
            classify(&kind("object.created"), Some(Lane::Telemetry)),
            Lane::Telemetry
        );
        assert_eq!(
            classify(&kind("telemetry.cpu"), Some(Lane::Data)),
            Lane::Data
        );
        assert_eq!(Lane::parse("telemetry"), Some(Lane::Telemetry));
        assert_eq!(Lane::parse("urgent"), None);
    }

    #[test]
    fn every_admission_decision() {
        let l = limits();
        // Control: admitted up to its capacity, waits beyond; never shed or
        // deferred, whatever the other lanes hold.
        assert_eq!(
            admit(Lane::Control, 1, depths(0, 8_192, 2_048), &l),
            Admission::Admit
        );
        assert_eq!(
            admit(Lane::Control, 96, depths(4_000, 0, 0), &l),
            Admission::Admit
        );
        assert_eq!(
            admit(Lane::Control, 97, depths(4_000, 0, 0), &l),
            Admission::Wait
        );
        // Data: admitted up to its capacity, deferred beyond.
        assert_eq!(
            admit(Lane::Data, 1, depths(4_096, 0, 2_048), &l),
            Admission::Admit
        );
        assert_eq!(
            admit(Lane::Data, 192, depths(0, 8_000, 0), &l),
            Admission::Admit
        );
        assert_eq!(
            admit(Lane::Data, 193, depths(0, 8_000, 0), &l),
            Admission::Defer {
                retry_after_ms: 250
            }
        );
        // Telemetry: admitted while it fits and data is below its pressure
        // watermark; shed otherwise.
        assert_eq!(
            admit(Lane::Telemetry, 48, depths(4_096, 4_095, 2_000), &l),
            Admission::Admit
        );
        assert_eq!(
            admit(Lane::Telemetry, 49, depths(0, 0, 2_000), &l),
            Admission::Shed
        );
        assert_eq!(
            admit(Lane::Telemetry, 1, depths(0, 4_096, 0), &l),
            Admission::Shed
        );
    }

    #[test]
    fn the_lanes_section_is_read_checked_and_defaulted() {
        assert_eq!(LaneLimits::parse("").unwrap(), limits());
        assert_eq!(
            LaneLimits::parse("[orphans]\nttl_seconds = 9\n").unwrap(),
            limits()
        );
        let l = LaneLimits::parse(
            "[lanes]\ncontrol_capacity_events = 2048\ndata_capacity_events = 3000\ntelemetry_capacity_events = 1024\nretry_after_ms = 40\n",
        )
        .unwrap();
        assert_eq!(
            l,
            LaneLimits {
                control_capacity_events: 2_048,
                data_capacity_events: 3_000,
                telemetry_capacity_events: 1_024,
                data_pressure_watermark_events: 1_500,
                retry_after_ms: 40,
            }
        );
        let l = LaneLimits::parse("[lanes]\ndata_pressure_watermark_events = 8192\n").unwrap();
        assert_eq!(l.data_pressure_watermark_events, 8_192);
        for (text, names) in [
            (
                "[lanes]\ncontrol_capacity_events = 10\n",
                "control_capacity_events",
            ),
            (
                "[lanes]\ndata_capacity_events = 10000000\n",
                "data_capacity_events",
            ),
            (
                "[lanes]\ndata_pressure_watermark_events = 9000\n",
                "data_pressure_watermark_events",
            ),
            ("[lanes]\nretry_after_ms = 0\n", "retry_after_ms"),
            ("[lanes]\nretry_after_ms = 600000\n", "retry_after_ms"),
            (
                "[lanes]\nurgent_capacity_events = 5\n",
                "urgent_capacity_events",
            ),
            (
                "[lanes]\ndata_capacity_events = -1\n",
                "data_capacity_events",
            ),
            (
                "[lanes]\ndata_capacity_events = \"many\"\n",
                "data_capacity_events",
            ),
        ] {
            let e = LaneLimits::parse(text).unwrap_err();
            assert!(e.contains(names), "{text}: {e}");
        }
    }

    #[test]
    fn the_lanes_section_is_loaded_from_the_home() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LaneLimits::load(dir.path()).unwrap(), limits());
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[lanes]\ndata_capacity_events = 2048\n").unwrap();
        assert_eq!(
            LaneLimits::load(dir.path()).unwrap().data_capacity_events,
            2_048
        );
        std::fs::write(&path, "[lanes]\ndata_capacity_events = 1\n").unwrap();
        let e = LaneLimits::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("[lanes] data_capacity_events is 1"),
            "{e}"
        );
    }

    #[test]
    fn limits_are_checked() {
        assert!(limits().check().is_ok());
        let mut l = limits();
        l.telemetry_capacity_events = 10;
        assert!(l.check().unwrap_err().contains("telemetry_capacity_events"));
        let mut l = limits();
        l.data_pressure_watermark_events = 9_000;
        assert!(l
            .check()
            .unwrap_err()
            .contains("data_pressure_watermark_events"));
        let mut l = limits();
        l.retry_after_ms = 0;
        assert!(l.check().is_err());
    }

    #[test]
    fn queues_stay_within_capacity_and_count_every_outcome() {
        let mut q = LaneQueues::new(limits());
        for i in 0..2 {
            assert!(q.offer(Lane::Telemetry, 1_024, i).is_ok());
        }
        assert_eq!(
            q.offer(Lane::Telemetry, 1, 9).unwrap_err().0,
            Admission::Shed
        );
        for i in 0..8 {
            assert!(q.offer(Lane::Data, 1_024, i).is_ok());
        }
        assert!(matches!(
            q.offer(Lane::Data, 1, 9).unwrap_err().0,
            Admission::Defer { .. }
        ));
        for i in 0..4 {
            assert!(q.offer(Lane::Control, 1_024, i).is_ok());
        }
        assert_eq!(q.offer(Lane::Control, 1, 9).unwrap_err().0, Admission::Wait);
        q.count_wait(Lane::Control);
        assert_eq!(q.depths(), depths(4_096, 8_192, 2_048));
        let v = q.view(&ShedTracker::new(1_000));
        let c: Vec<_> = v.lanes.iter().map(|l| l.counters).collect();
        assert_eq!(c[0].waits, 1);
        assert_eq!(c[0].peak_depth_events, 4_096);
        assert_eq!(c[1].deferred_events, 1);
        assert_eq!(c[2].shed_events, 1);
        assert_eq!(c[2].admitted_events, 2_048);
        assert!(v.lanes.iter().all(|l| l.depth_events <= l.capacity_events));
    }

    #[test]
    fn dequeue_is_strict_priority_and_batches_are_bounded() {
        let mut q = LaneQueues::new(limits());
        q.offer(Lane::Telemetry, 10, "t1").unwrap();
        q.offer(Lane::Data, 10, "d1").unwrap();
        q.offer(Lane::Control, 10, "c1").unwrap();
        q.offer(Lane::Data, 10, "d2").unwrap();
        q.offer(Lane::Control, 10, "c2").unwrap();
        let b: Vec<_> = q.pop_batch(30).into_iter().map(|(_, i)| i).collect();
        assert_eq!(b, ["c1", "c2", "d1"]);
        let b: Vec<_> = q.pop_batch(5).into_iter().map(|(_, i)| i).collect();
        // The first item is taken even when it alone exceeds the batch.
        assert_eq!(b, ["d2"]);
        // A control item arriving now still goes before the queued telemetry.
        q.offer(Lane::Control, 1, "c3").unwrap();
        let b = q.pop_batch(100);
        assert_eq!(b, [(Lane::Control, "c3"), (Lane::Telemetry, "t1")]);
        assert!(q.is_empty());
        assert_eq!(q.depths(), Depths::default());
        assert!(q.pop_batch(100).is_empty());
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_micros(s * 1_000_000)
    }

    #[test]
    fn sheds_close_into_one_episode_after_a_quiet_gap() {
        let mut t = ShedTracker::new(1_000);
        assert_eq!(t.poll(0), None);
        t.on_shed(at(10), 10_000, 5);
        t.on_shed(at(10), 10_500, 7);
        assert_eq!(t.poll(11_400), None);
        t.on_shed(at(11), 11_400, 1);
        assert_eq!(t.poll(12_399), None);
        let e = t.poll(12_400).unwrap();
        assert_eq!(
            e,
            ShedEpisode {
                first_shed_at: at(10),
                last_shed_at: at(11),
                shed_events: 13,
                shed_submissions: 3
            }
        );
        assert_eq!(t.poll(99_999), None);
        t.on_shed(at(20), 20_000, 2);
        assert_eq!(t.finish().unwrap().shed_events, 2);
        assert_eq!(t.finish(), None);
        assert_eq!(t.episodes, 2);
    }

    #[test]
    fn submissions_are_parsed_classified_and_cut_into_ordered_items() {
        let body = b"{\"kind\":\"session.opened\",\"actor\":\"actor:a\",\"session\":\"urn:srcos:session:s\"}\n\n{\"kind\":\"object.noted\",\"actor\":\"actor:a\"}\nnot json\n{\"kind\":\"object.noted\",\"actor\":\"actor:a\"}\n{\"kind\":\"telemetry.cpu\",\"actor\":\"actor:a\"}\n";
        let lines = parse_submission(body, None);
        let numbers: Vec<_> = lines.iter().map(|l| l.line).collect();
        assert_eq!(numbers, [1, 3, 4, 5, 6]);
        assert!(lines[2].parsed.is_err());
        let it = items(&lines);
        assert_eq!(
            it,
            [
                (Lane::Control, vec![0]),
                (Lane::Data, vec![1, 3]),
                (Lane::Telemetry, vec![4])
            ]
        );
        let hinted = parse_submission(body, Some(Lane::Telemetry));
        assert_eq!(items(&hinted)[1], (Lane::Telemetry, vec![1, 3, 4]));
    }

    #[test]
    fn long_runs_are_cut_at_the_item_bound() {
        let line = "{\"kind\":\"note.x\",\"actor\":\"actor:a\"}\n";
        let body = line.repeat(MAX_LANE_ITEM_EVENTS + 1);
        let it = items(&parse_submission(body.as_bytes(), None));
        assert_eq!(it.len(), 2);
        assert_eq!(it[0].1.len(), MAX_LANE_ITEM_EVENTS);
        let line = "{\"kind\":\"metric.x\",\"actor\":\"actor:a\"}\n";
        let body = line.repeat(MAX_TELEMETRY_ITEM_EVENTS * 2 + 1);
        let it = items(&parse_submission(body.as_bytes(), None));
        let sizes: Vec<_> = it.iter().map(|(_, i)| i.len()).collect();
        assert_eq!(
            sizes,
            [MAX_TELEMETRY_ITEM_EVENTS, MAX_TELEMETRY_ITEM_EVENTS, 1]
        );
    }

    #[test]
    fn a_batch_carries_little_telemetry() {
        let mut q = LaneQueues::new(limits());
        q.offer(Lane::Data, 10, "d").unwrap();
        q.offer(Lane::Telemetry, 100, "t1").unwrap();
        q.offer(Lane::Telemetry, 100, "t2").unwrap();
        let b: Vec<_> = q.pop_batch(1_024).into_iter().map(|(_, i)| i).collect();
        assert_eq!(b, ["d", "t1"]);
        let b: Vec<_> = q.pop_batch(1_024).into_iter().map(|(_, i)| i).collect();
        assert_eq!(b, ["t2"]);
    }

    #[test]
    fn shed_summaries_are_only_syncds() {
        let e = ShedEpisode {
            first_shed_at: at(1),
            last_shed_at: at(2),
            shed_events: 3,
            shed_submissions: 1,
        };
        let mut d = EventDraft::new(
            ActorId::new(INGEST_ACTOR).unwrap(),
            kind(TELEMETRY_SHED_KIND),
        );
        d.payload = Payload::new(serde_json::to_value(&e).unwrap()).unwrap();
        assert!(crate::kinds::validate(&mut d).is_ok());
        let mut other = d.clone();
        other.actor = ActorId::new("actor:someone").unwrap();
        assert!(crate::kinds::validate(&mut other).is_err());
        let mut bad = d.clone();
        let mut v = serde_json::to_value(&e).unwrap();
        v["shed_events"] = 0.into();
        bad.payload = Payload::new(v).unwrap();
        assert!(crate::kinds::validate(&mut bad).is_err());
        // A line claiming the kind from outside is refused at the edge.
        let line = format!(
            "{{\"kind\":\"{TELEMETRY_SHED_KIND}\",\"actor\":\"actor:a\",\"payload\":{}}}",
            serde_json::to_string(&e).unwrap()
        );
        assert!(crate::ingest::parse_line(&line).is_err());
    }
}
