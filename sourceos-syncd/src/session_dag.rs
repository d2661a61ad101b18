//! Read and sweep APIs of the session DAG: sessions with their turns,
//! orphan events as SourceOS `OrphanEventReceipt` documents, the orphan
//! TTL from the home's configuration, and the sweep that quarantines
//! orphans whose TTL has passed.
//!
//! The sweep is the only part that reads the clock. It decides which
//! queued orphans have outlived the TTL at the store's `now()` and records
//! each decision as an `orphan.quarantined` event (actor
//! `actor:syncd-orphan-sweeper`, idempotency key
//! `syncd-orphan-quarantine:<event id>`), so that a rebuild reproduces it.
//!
//! Receipt fields that need a policy decision or evidence:
//!
//! - `policyDecisionRef`: for a quarantined orphan, the decision recorded
//!   in its `orphan.quarantined` event, `urn:srcos:decision:orphan-quarantine:<event id>`
//!   (`…:orphan-queue-full:<event id>` when its session's queue was full);
//!   otherwise a stable ref derived from the orphan and its state,
//!   `urn:srcos:decision:orphan-<queued|recovered|discarded-duplicate>:<event id>`
//!   (event id in 32 hex digits), the decision the fold made by the
//!   orphan protocol's rules.
//! - `evidenceRefs`: `urn:srcos:evidence:orphan-event:<event id>` (the event
//!   in the log), the raw event digest (`sha256:`), and the event's hash in
//!   the log (`blake3:`).
//! - `capturedAt`: when the orphan's resolution last changed (its
//!   observation while it is queued), so a receipt reads the same after a
//!   rebuild. `ttl.expired` of a queued orphan is evaluated at read time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{load_settings, CONFIG_FILE};
use crate::event::{EventDraft, Payload};
use crate::ids::{ActorId, EventKind, IdempotencyKey, Timestamp};
use crate::projection::sessions::{
    self, LeaseRecord, OrphanRecord, OrphanState, SessionCounters, SessionRecord, TurnRecord,
    TurnStep,
};
use crate::projection::ProjectionError;
use crate::session::{
    CorrelationKeys, QuarantinePayload, TurnState, DECISION_PREFIX, EVENT_PREFIX,
    ORPHAN_QUARANTINED, ORPHAN_SWEEPER_ACTOR, SESSION_PREFIX,
};
use crate::store::{AppendError, AppendOutcome, Store};

/// Orphan TTL when the configuration does not set one, in seconds.
pub const DEFAULT_ORPHAN_TTL_SECONDS: u64 = 300;
/// Longest orphan TTL accepted, in seconds (one year).
pub const MAX_ORPHAN_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Interval of the daemon's orphan sweeper when the configuration does not
/// set one, in milliseconds.
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 30_000;
/// Shortest and longest sweep intervals accepted, in milliseconds (a
/// shorter one would spin; a longer one than a day leaves orphans queued
/// far past any sensible TTL).
pub const SWEEP_INTERVAL_RANGE_MS: (u64, u64) = (100, 86_400_000);
/// `specVersion` of the receipts syncd writes.
pub const ORPHAN_RECEIPT_SPEC_VERSION: &str = "0.1.0";
/// Sessions, turns or orphans listed at most by one call.
pub const MAX_SESSION_LISTED: usize = 10_000;
/// Queued orphans one sweep examines (oldest first).
pub const MAX_SWEEP_EXAMINED: usize = 65_536;
/// Quarantine decisions one sweep records (run it again for the rest).
pub const MAX_SWEEP_QUARANTINED: usize = 1_024;

/// A session DAG read or sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionDagError {
    /// The configuration file cannot be read.
    #[error("cannot read {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is invalid.
    #[error("{path} is invalid: {reason}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A TTL outside 1 second to one year.
    #[error("orphan TTL of {0} s is out of range (1 to {MAX_ORPHAN_TTL_SECONDS})")]
    BadTtl(u64),
    /// The session DAG is unusable.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// Recording the sweep's decisions failed.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// The orphan protocol's configuration (`[orphans]` in `HOME/config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanConfig {
    /// How long an orphan may wait for its session, in seconds.
    pub ttl_seconds: u64,
    /// How often the daemon's sweeper runs, in milliseconds.
    pub sweep_interval_ms: u64,
}

impl Default for OrphanConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: DEFAULT_ORPHAN_TTL_SECONDS,
            sweep_interval_ms: DEFAULT_SWEEP_INTERVAL_MS,
        }
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    orphans: Option<OrphansSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrphansSection {
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    sweep_interval_ms: Option<u64>,
}

impl OrphanConfig {
    /// Loads `HOME/config.toml`; a missing file (or section, or key) is
    /// the default.
    pub fn load(home: &Path) -> Result<Self, SessionDagError> {
        load_settings(
            home,
            CONFIG_FILE,
            Self::parse,
            |path, source| SessionDagError::ConfigRead { path, source },
            |path, reason| SessionDagError::ConfigInvalid { path, reason },
        )
    }

    /// Parses configuration text (other sections are left to their owners).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let section = file.orphans;
        let ttl = section
            .as_ref()
            .and_then(|o| o.ttl_seconds)
            .unwrap_or(DEFAULT_ORPHAN_TTL_SECONDS);
        check_ttl(ttl).map_err(|e| format!("[orphans] ttl_seconds: {e}"))?;
        let interval = section
            .as_ref()
            .and_then(|o| o.sweep_interval_ms)
            .unwrap_or(DEFAULT_SWEEP_INTERVAL_MS);
        let (min, max) = SWEEP_INTERVAL_RANGE_MS;
        if !(min..=max).contains(&interval) {
            return Err(format!(
                "[orphans] sweep_interval_ms: {interval} is out of range ({min} to {max})"
            ));
        }
        Ok(Self {
            ttl_seconds: ttl,
            sweep_interval_ms: interval,
        })
    }
}

fn check_ttl(ttl: u64) -> Result<(), SessionDagError> {
    if ttl == 0 || ttl > MAX_ORPHAN_TTL_SECONDS {
        return Err(SessionDagError::BadTtl(ttl));
    }
    Ok(())
}

/// A session as shown to people and programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// `urn:srcos:session:<id>`.
    pub session_ref: String,
    /// Its node in the session DAG.
    pub dag_node_ref: String,
    /// `open` or `closed`.
    pub state: &'static str,
    /// Its correlation keys.
    pub correlation_keys: CorrelationKeys,
    /// The writer lease's current epoch.
    pub lease_epoch: Option<u64>,
    /// The writer holding it.
    pub lease_holder: Option<String>,
    /// Who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: String,
    /// Local sequence of the opening.
    pub opened_seq: u64,
    /// Event id of the opening.
    pub opened_event_ref: String,
    /// The device that recorded the opening.
    pub origin_device: String,
    /// When it was closed.
    pub closed_at: Option<String>,
    /// Local sequence of the closing.
    pub closed_seq: Option<u64>,
    /// Why.
    pub close_reason: Option<String>,
    /// Events attached.
    pub events: u64,
    /// Turns seen.
    pub turns: u64,
    /// Turns accepted and without their terminal outcome.
    pub live_turns: u64,
    /// Orphans recovered into it.
    pub recovered_orphans: u64,
    /// Events in the log from a stale writer epoch.
    pub stale_events: u64,
    /// Other events in the log its rules refused.
    pub ignored_events: u64,
}

/// A turn as shown to people and programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnView {
    /// The turn id.
    pub turn_id: String,
    /// Its node in the session DAG.
    pub dag_node_ref: String,
    /// Where it is.
    pub state: TurnState,
    /// Its terminal outcome, once it has one.
    pub outcome: Option<TurnState>,
    /// Its moves, oldest first.
    pub steps: Vec<TurnStep>,
    /// Older moves not listed.
    pub steps_dropped: u64,
}

/// One session with its turns and recovered orphans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionDetail {
    /// The session.
    pub session: SessionView,
    /// Its turns, by id.
    pub turns: Vec<TurnView>,
    /// Orphans recovered into it (`urn:srcos:event:` refs), oldest first.
    pub recovered_orphans: Vec<String>,
}

/// `sessionResolution` of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionResolution {
    /// `queued`, `recovered`, `quarantined` or `discarded_duplicate`.
    pub state: &'static str,
    /// Sessions that matched.
    pub candidate_session_refs: Vec<String>,
    /// The session it was attached to.
    pub recovered_session_ref: Option<String>,
    /// Its node there.
    pub recovered_dag_node_ref: Option<String>,
    /// When it was recovered or discarded.
    pub reconciled_at: Option<String>,
    /// When it was quarantined.
    pub quarantined_at: Option<String>,
}

/// `ttl` of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptTtl {
    /// Observed at + TTL.
    pub expires_at: String,
    /// Whether the TTL has passed (at resolution; at read time if queued).
    pub expired: bool,
}

/// `correlationKeys` of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptKeys {
    /// Conversation id.
    pub conversation_id: Option<String>,
    /// Parent id.
    pub parent_id: Option<String>,
    /// Workspace.
    pub workspace_ref: Option<String>,
    /// Task.
    pub task_ref: Option<String>,
}

/// A SourceOS `OrphanEventReceipt` (schema `OrphanEventReceipt.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanEventReceipt {
    /// `urn:srcos:receipt:orphan-event:<event id>`.
    pub id: String,
    /// `OrphanEventReceipt`.
    #[serde(rename = "type")]
    pub doc_type: &'static str,
    /// [`ORPHAN_RECEIPT_SPEC_VERSION`].
    pub spec_version: &'static str,
    /// `urn:srcos:event:<event id>`.
    pub event_ref: String,
    /// Event class.
    pub event_class: String,
    /// When the event was recorded.
    pub observed_at: String,
    /// `sha256:` of the event's content.
    pub raw_event_digest: String,
    /// What became of it.
    pub session_resolution: SessionResolution,
    /// Its TTL.
    pub ttl: ReceiptTtl,
    /// Its correlation keys.
    pub correlation_keys: ReceiptKeys,
    /// The session it named, and the events that resolved it.
    pub causal_refs: Vec<String>,
    /// The decision (see the module docs).
    pub policy_decision_ref: String,
    /// Evidence (see the module docs).
    pub evidence_refs: Vec<String>,
    /// When the resolution last changed.
    pub captured_at: String,
}

/// An orphan: its receipt and what people want to see next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The receipt.
    pub receipt: OrphanEventReceipt,
    /// Local sequence of the event.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// The session it named.
    pub named_session: String,
    /// Why it was quarantined or discarded.
    pub reason: Option<String>,
    /// How its replay went, once recovered.
    pub replay: Option<String>,
}

/// One quarantine recorded by a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweptOrphan {
    /// The orphan.
    pub event_ref: String,
    /// The recorded decision.
    pub decision_id: String,
    /// Sequence of the `orphan.quarantined` event.
    pub decision_seq: u64,
    /// When it expired.
    pub expires_at: String,
}

/// An orphan the sweep could not quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepRefusal {
    /// The orphan.
    pub event_ref: String,
    /// Why.
    pub reason: String,
}

/// What a sweep did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// The instant the sweep decided at.
    pub swept_at: String,
    /// The TTL it applied.
    pub ttl_seconds: u64,
    /// Queued orphans examined.
    pub examined: u64,
    /// Quarantined now.
    pub quarantined: Vec<SweptOrphan>,
    /// Expired but not quarantined.
    pub refused: Vec<SweepRefusal>,
    /// Still queued after the sweep.
    pub still_queued: u64,
}

fn lease_of(
    state: &crate::projection::Staging,
    s: &str,
) -> Result<Option<LeaseRecord>, ProjectionError> {
    sessions::lease(state, s)
}

fn view(s: SessionRecord, lease: Option<LeaseRecord>) -> SessionView {
    SessionView {
        dag_node_ref: sessions::session_node(&s.session_ref),
        state: if s.open { "open" } else { "closed" },
        correlation_keys: s.keys,
        lease_epoch: lease.as_ref().map(|l| l.epoch),
        lease_holder: lease.map(|l| l.holder),
        opened_by: s.opened_by,
        opened_at: s.opened_at.to_string(),
        opened_seq: s.opened_seq,
        opened_event_ref: format!("{EVENT_PREFIX}{}", s.opened_event),
        origin_device: s.origin_device,
        closed_at: s.closed_at.map(|t| t.to_string()),
        closed_seq: s.closed_seq,
        close_reason: s.close_reason,
        events: s.events,
        turns: s.turns,
        live_turns: s.live_turns,
        recovered_orphans: s.recovered_orphans,
        stale_events: s.stale_events,
        ignored_events: s.ignored_events,
        session_ref: s.session_ref,
    }
}

fn turn_view(t: TurnRecord) -> TurnView {
    TurnView {
        dag_node_ref: format!(
            "{}:turn:{}",
            sessions::session_node(&t.session_ref),
            t.turn_id
        ),
        turn_id: t.turn_id,
        state: t.state,
        outcome: t.outcome,
        steps: t.steps,
        steps_dropped: t.steps_dropped,
    }
}

/// The full reference of a session given as a reference or a bare id.
pub fn session_ref(id: &str) -> String {
    if id.starts_with(SESSION_PREFIX) {
        id.to_owned()
    } else {
        format!("{SESSION_PREFIX}{id}")
    }
}

/// Lists sessions.
pub fn sessions(store: &Store) -> Result<Vec<SessionView>, ProjectionError> {
    store.with_projection(sessions::NAME, |state| {
        let mut out = Vec::new();
        for s in sessions::list_sessions(state, MAX_SESSION_LISTED)? {
            let lease = lease_of(state, &s.session_ref)?;
            out.push(view(s, lease));
        }
        Ok(out)
    })?
}

/// One session with its turns and recovered orphans (`id` is a session
/// reference or its bare id).
pub fn session(store: &Store, id: &str) -> Result<Option<SessionDetail>, ProjectionError> {
    let sref = session_ref(id);
    store.with_projection(sessions::NAME, |state| {
        let Some(s) = sessions::session(state, &sref)? else {
            return Ok(None);
        };
        let lease = lease_of(state, &sref)?;
        let turns = sessions::list_turns(state, &sref, MAX_SESSION_LISTED)?
            .into_iter()
            .map(turn_view)
            .collect();
        let recovered_orphans = sessions::recovered_into(state, &sref, MAX_SESSION_LISTED)?
            .into_iter()
            .map(|o| format!("{EVENT_PREFIX}{}", o.event_id))
            .collect();
        Ok(Some(SessionDetail {
            session: view(s, lease),
            turns,
            recovered_orphans,
        }))
    })?
}

/// Totals of the session DAG.
pub fn session_totals(store: &Store) -> Result<SessionCounters, ProjectionError> {
    store.with_projection(sessions::NAME, sessions::totals)?
}

fn plus_seconds(t: Timestamp, seconds: u64) -> Timestamp {
    let micros = i64::try_from(seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    Timestamp::from_unix_micros(t.unix_micros().saturating_add(micros))
}

fn simple(event_id: &str) -> String {
    event_id.replace('-', "")
}

/// The receipt of an orphan, with `ttl_seconds` from the configuration
/// (unless its quarantine recorded one) and `now` for a queued orphan's
/// expiry.
pub(crate) fn receipt(o: &OrphanRecord, ttl_seconds: u64, now: Timestamp) -> OrphanEventReceipt {
    let ttl = o.ttl_seconds.unwrap_or(ttl_seconds);
    let expires = plus_seconds(o.observed_at, ttl);
    let expired = match o.state {
        OrphanState::Queued => now >= expires,
        OrphanState::Quarantined => {
            o.ttl_seconds.is_some() || o.quarantined_at.is_some_and(|q| q >= expires)
        }
        OrphanState::Recovered | OrphanState::DiscardedDuplicate => {
            o.reconciled_at.is_some_and(|r| r >= expires)
        }
    };
    let state = o.state.as_str();
    let reconciled = matches!(
        o.state,
        OrphanState::Recovered | OrphanState::DiscardedDuplicate
    );
    let mut causal_refs = vec![o.named_session.clone()];
    for id in [&o.duplicate_of, &o.resolved_by].into_iter().flatten() {
        if *id != o.event_id {
            causal_refs.push(format!("{EVENT_PREFIX}{id}"));
        }
    }
    let policy_decision_ref = o.decision_id.clone().unwrap_or_else(|| {
        format!(
            "{DECISION_PREFIX}orphan-{}:{}",
            state.replace('_', "-"),
            simple(&o.event_id)
        )
    });
    let k = &o.keys;
    OrphanEventReceipt {
        id: format!("urn:srcos:receipt:orphan-event:{}", o.event_id),
        doc_type: "OrphanEventReceipt",
        spec_version: ORPHAN_RECEIPT_SPEC_VERSION,
        event_ref: format!("{EVENT_PREFIX}{}", o.event_id),
        event_class: o.event_class.clone(),
        observed_at: o.observed_at.to_string(),
        raw_event_digest: o.raw_digest.clone(),
        session_resolution: SessionResolution {
            state,
            candidate_session_refs: o
                .candidates
                .iter()
                .filter(|c| c.starts_with(SESSION_PREFIX))
                .cloned()
                .collect(),
            recovered_session_ref: o.recovered_session.clone(),
            recovered_dag_node_ref: o.dag_node.clone(),
            reconciled_at: if reconciled {
                o.reconciled_at.map(|t| t.to_string())
            } else {
                None
            },
            quarantined_at: o.quarantined_at.map(|t| t.to_string()),
        },
        ttl: ReceiptTtl {
            expires_at: expires.to_string(),
            expired,
        },
        correlation_keys: ReceiptKeys {
            conversation_id: k.conversation_id.clone(),
            parent_id: k.parent_id.clone(),
            workspace_ref: k.workspace_ref.clone(),
            task_ref: k.task_ref.clone(),
        },
        causal_refs,
        policy_decision_ref,
        evidence_refs: vec![
            format!("urn:srcos:evidence:orphan-event:{}", o.event_id),
            o.raw_digest.clone(),
            o.event_hash.clone(),
        ],
        captured_at: o.captured_at.to_string(),
    }
}

/// Lists orphans in event-id (time) order, with receipts built for a TTL
/// of `ttl_seconds` at `now`.
pub fn orphans(
    store: &Store,
    ttl_seconds: u64,
    now: Timestamp,
) -> Result<Vec<Orphan>, ProjectionError> {
    let records = store.with_projection(sessions::NAME, |s| {
        sessions::list_orphans(s, MAX_SESSION_LISTED)
    })??;
    Ok(records
        .into_iter()
        .map(|o| Orphan {
            receipt: receipt(&o, ttl_seconds, now),
            seq: o.seq,
            kind: o.kind,
            named_session: o.named_session,
            reason: o.reason,
            replay: o.replay,
        })
        .collect())
}

/// The idempotency key of the quarantine decision about an orphan.
fn quarantine_key(event_id: &str) -> String {
    format!("syncd-orphan-quarantine:{event_id}")
}

fn quarantine_draft(
    o: &OrphanRecord,
    ttl_seconds: u64,
    now: Timestamp,
) -> Result<EventDraft, String> {
    let p = QuarantinePayload {
        event_ref: format!("{EVENT_PREFIX}{}", o.event_id),
        raw_event_digest: o.raw_digest.clone(),
        candidates: o.candidates.clone(),
        quarantined_at: now.to_string(),
        ttl_seconds,
        expires_at: plus_seconds(o.observed_at, ttl_seconds).to_string(),
        decision_id: format!("{DECISION_PREFIX}orphan-quarantine:{}", simple(&o.event_id)),
        reason: "ttl_expired".to_owned(),
    };
    let value = serde_json::to_value(&p).map_err(|e| e.to_string())?;
    let mut d = EventDraft::new(
        ActorId::new(ORPHAN_SWEEPER_ACTOR).map_err(|e| e.to_string())?,
        EventKind::new(ORPHAN_QUARANTINED).map_err(|e| e.to_string())?,
    );
    d.idempotency_key =
        Some(IdempotencyKey::new(quarantine_key(&o.event_id)).map_err(|e| e.to_string())?);
    d.payload = Payload::new(value).map_err(|e| e.to_string())?;
    crate::kinds::validate(&mut d)?;
    Ok(d)
}

/// Quarantines the queued orphans that have outlived `ttl_seconds` at the
/// store's `now()`, oldest first, recording one `orphan.quarantined`
/// event each (at most [`MAX_SWEEP_QUARANTINED`] per sweep; run it again
/// for the rest).
pub fn sweep(store: &Store, ttl_seconds: u64) -> Result<SweepReport, SessionDagError> {
    check_ttl(ttl_seconds)?;
    let now = store.now();
    let queued =
        store.with_projection(sessions::NAME, |s| sessions::queued(s, MAX_SWEEP_EXAMINED))??;
    let mut report = SweepReport {
        swept_at: now.to_string(),
        ttl_seconds,
        examined: queued.len() as u64,
        quarantined: Vec::new(),
        refused: Vec::new(),
        still_queued: 0,
    };
    let mut drafts = Vec::new();
    let mut pending = Vec::new();
    for o in &queued {
        let expires = plus_seconds(o.observed_at, ttl_seconds);
        if now < expires || drafts.len() >= MAX_SWEEP_QUARANTINED {
            continue;
        }
        let event_ref = format!("{EVENT_PREFIX}{}", o.event_id);
        match quarantine_draft(o, ttl_seconds, now) {
            Ok(d) => {
                drafts.push(d);
                pending.push((event_ref, expires));
            }
            Err(reason) => report.refused.push(SweepRefusal { event_ref, reason }),
        }
    }
    // The sweeper's actor is reserved for syncd itself: its decisions go
    // through the system path, one durable commit each.
    for (draft, (event_ref, expires)) in drafts.into_iter().zip(pending) {
        let id = event_ref.strip_prefix(EVENT_PREFIX).unwrap_or_default();
        match store.append_system(draft)? {
            AppendOutcome::Appended { seq, .. } => report.quarantined.push(SweptOrphan {
                decision_id: format!("{DECISION_PREFIX}orphan-quarantine:{}", simple(id)),
                event_ref,
                decision_seq: seq.get(),
                expires_at: expires.to_string(),
            }),
            AppendOutcome::Duplicate { seq, .. } => report.refused.push(SweepRefusal {
                event_ref,
                reason: format!("a quarantine decision was already recorded as event {seq}"),
            }),
            AppendOutcome::Rejected { reason } | AppendOutcome::PolicyBlocked { reason, .. } => {
                report.refused.push(SweepRefusal { event_ref, reason })
            }
        }
    }
    report.still_queued = session_totals(store)?.orphans_queued;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_bounds() {
        assert_eq!(OrphanConfig::parse("").unwrap().ttl_seconds, 300);
        assert_eq!(
            OrphanConfig::parse("[other]\nx = 1\n").unwrap().ttl_seconds,
            300
        );
        assert_eq!(
            OrphanConfig::parse("[orphans]\nttl_seconds = 7\n")
                .unwrap()
                .ttl_seconds,
            7
        );
        assert!(OrphanConfig::parse("[orphans]\nttl_seconds = 0\n").is_err());
        assert!(OrphanConfig::parse("[orphans]\nttl = 5\n").is_err());
        assert!(OrphanConfig::parse("[orphans]\nttl_seconds = \"5\"\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            OrphanConfig::load(dir.path()).unwrap(),
            OrphanConfig::default()
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "[orphans]\nttl_seconds = 9\n").unwrap();
        assert_eq!(OrphanConfig::load(dir.path()).unwrap().ttl_seconds, 9);
    }

    #[test]
    fn sweep_interval_defaults_and_bounds() {
        assert_eq!(
            OrphanConfig::parse("").unwrap().sweep_interval_ms,
            DEFAULT_SWEEP_INTERVAL_MS
        );
        let c =
            OrphanConfig::parse("[orphans]\nsweep_interval_ms = 250\nttl_seconds = 2\n").unwrap();
        assert_eq!((c.ttl_seconds, c.sweep_interval_ms), (2, 250));
        for bad in ["99", "86400001", "0", "\"1s\""] {
            let e = OrphanConfig::parse(&format!("[orphans]\nsweep_interval_ms = {bad}\n"));
            assert!(e.is_err(), "{bad}");
        }
        assert!(OrphanConfig::parse("[orphans]\nsweep_interval_ms = 100\n").is_ok());
    }
}
