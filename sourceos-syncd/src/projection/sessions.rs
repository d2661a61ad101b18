//! The session DAG projection (`p.sessions`): sessions with their
//! correlation keys, turns with their lifecycle state, writer leases with
//! their epochs, and orphan events with their resolution.
//!
//! Every event that names a session (the envelope's `session`) is attached
//! to it when the session is known. An event naming a session that was
//! never opened is not refused: it is appended and held here as an orphan
//! (`queued`). When a matching session is opened — the very session it
//! names, or the only open session that shares one of its correlation keys
//! (`conversation_id`, `parent_id`, `workspace_ref`, `task_ref`) — the
//! orphan is attached to it and marked `recovered`, and it is replayed into
//! the session as if it had just arrived (so a turn event held as an orphan
//! moves its turn, by the same rules). An orphan with the same content as
//! an earlier orphan is `discarded_duplicate`. One that waits too long is
//! `quarantined` by an `orphan.quarantined` event that the sweeper records
//! (the fold never reads the clock), or at once when its session's queue is
//! full.
//!
//! Decisions that depend on state — a turn needs a recorded admission and a
//! valid transition, a stale writer epoch is refused, a closed session
//! takes no more events — are made by [`admit`] for local drafts, and by
//! the same rules in the fold for events that arrive from other devices:
//! there a refused event stays in the log and changes nothing but a
//! counter.
//!
//! The raw event digest of an orphan is `sha256:` over the event's content
//! as a submitter sends it, written as canonical JSON (keys sorted,
//! compact): `{"actor":…,"kind":…,"payload":{…},"session":…,"subject":…}`
//! (`subject` is `null` when absent). It is the same for a retry and on
//! every device, which is what makes duplicates recognisable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::codec;
use crate::event::{Envelope, EventDraft};
use crate::ids::{EventId, EventKind, Timestamp};
use crate::model::fields;
use crate::session::{
    event_class, has_local_part, transition, CorrelationKeys, QuarantinePayload, TurnEvent,
    TurnState, DAG_NODE_PREFIX, DECISION_PREFIX, DEVICE_PREFIX, LEASE_ACQUIRED, MAX_CANDIDATES,
    ORPHAN_QUARANTINED, SESSION_CLOSED, SESSION_OPENED, SESSION_PREFIX,
};

use super::{read_u64, Projection, ProjectionError, RawRecord, Staging};

/// Name of the projection.
pub(crate) const NAME: &str = "sessions";

/// Orphans one session may have queued; more are quarantined at once.
pub const MAX_QUEUED_PER_SESSION: usize = 256;
/// Orphans one correlation key may bring to a newly opened session.
pub const MAX_RECOVERED_PER_KEY: usize = 256;
/// Transitions remembered per turn (older ones are dropped and counted).
pub const MAX_TURN_STEPS: usize = 16;

const SESSION: u8 = 0x01;
const TURN: u8 = 0x02;
const LEASE: u8 = 0x03;
const ORPHAN: u8 = 0x04;
const QUEUE_BY_SESSION: u8 = 0x05;
const QUEUE_BY_KEY: u8 = 0x06;
const SESSION_BY_KEY: u8 = 0x07;
const DIGEST: u8 = 0x08;
const COUNTERS: &[u8] = &[0x09];
const RECOVERED: u8 = 0x0a;
const QUEUE_ALL: u8 = 0x0b;
const QUEUE_COUNT: u8 = 0x0c;

/// The payload field of a writer's lease epoch.
const LEASE_EPOCH: &str = "lease_epoch";
/// How `"lease_epoch":` appears in a canonical payload text.
const LEASE_EPOCH_KEY: &str = "\"lease_epoch\":";

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// `urn:srcos:session:<id>`.
    pub session_ref: String,
    /// Open (false once closed).
    pub open: bool,
    /// Its correlation keys.
    pub keys: CorrelationKeys,
    /// Who opened it.
    pub opened_by: String,
    /// The device that recorded the opening.
    pub origin_device: String,
    /// Event id of the opening.
    pub opened_event: String,
    /// Local sequence of the opening.
    pub opened_seq: u64,
    /// When it was opened.
    pub opened_at: Timestamp,
    /// Local sequence of the closing.
    pub closed_seq: Option<u64>,
    /// When it was closed.
    pub closed_at: Option<Timestamp>,
    /// Why it was closed.
    pub close_reason: Option<String>,
    /// Events attached to it (its own, its turns', recovered orphans).
    pub events: u64,
    /// Turns it has seen.
    pub turns: u64,
    /// Turns accepted and still without their terminal outcome.
    pub live_turns: u64,
    /// Orphans recovered into it.
    pub recovered_orphans: u64,
    /// Events in the log from a stale writer epoch (changed nothing).
    pub stale_events: u64,
    /// Other events in the log that its rules refused (changed nothing).
    pub ignored_events: u64,
    /// Local sequence of the last attached event.
    pub last_seq: u64,
}

/// One move of a turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnStep {
    /// What happened.
    pub event: TurnEvent,
    /// The state it produced.
    pub to: TurnState,
    /// Local sequence of the event.
    pub seq: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// Who recorded it.
    pub actor: String,
    /// The reason it gave.
    pub reason: Option<String>,
    /// True when it was held as an orphan and replayed on recovery.
    pub recovered: bool,
}

/// A turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// The turn id (the events' subject).
    pub turn_id: String,
    /// Its session.
    pub session_ref: String,
    /// Where it is.
    pub state: TurnState,
    /// Its terminal outcome (committed or aborted), once it has one.
    pub outcome: Option<TurnState>,
    /// Its moves, oldest first (the last [`MAX_TURN_STEPS`]).
    pub steps: Vec<TurnStep>,
    /// Older moves no longer listed.
    pub steps_dropped: u64,
    /// Local sequence of its first event.
    pub first_seq: u64,
    /// Local sequence of its last event.
    pub updated_seq: u64,
}

/// A writer lease: a session's or a device's current epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The session or device.
    pub scope: String,
    /// The current epoch.
    pub epoch: u64,
    /// The writer that holds it.
    pub holder: String,
    /// Local sequence of the event that granted it.
    pub acquired_seq: u64,
    /// When.
    pub acquired_at: Timestamp,
    /// Events in the log that presented an older epoch.
    pub stale_events: u64,
}

/// What became of an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanState {
    /// Waiting for its session.
    Queued,
    /// Attached to a session.
    Recovered,
    /// Not reconciled in time (or its session's queue was full).
    Quarantined,
    /// The same content as an earlier orphan.
    DiscardedDuplicate,
}

impl OrphanState {
    /// Name as in the receipt.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanState::Queued => "queued",
            OrphanState::Recovered => "recovered",
            OrphanState::Quarantined => "quarantined",
            OrphanState::DiscardedDuplicate => "discarded_duplicate",
        }
    }
}

/// An event that named a session nobody had opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanRecord {
    /// Its event id.
    pub event_id: String,
    /// Its local sequence.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// Its actor.
    pub actor: String,
    /// Its subject.
    pub subject: Option<String>,
    /// The session it named.
    pub named_session: String,
    /// Its payload (canonical JSON), replayed on recovery.
    pub payload: String,
    /// When it was recorded.
    pub observed_at: Timestamp,
    /// Its hash in the log (`blake3:`).
    pub event_hash: String,
    /// `sha256:` of its content (see the module docs).
    pub raw_digest: String,
    /// The receipt's event class.
    pub event_class: String,
    /// Its correlation keys.
    pub keys: CorrelationKeys,
    /// What became of it.
    pub state: OrphanState,
    /// Sessions that matched it (at most [`MAX_CANDIDATES`]).
    pub candidates: Vec<String>,
    /// Matching sessions not listed.
    pub candidates_dropped: u64,
    /// The session it was attached to.
    pub recovered_session: Option<String>,
    /// Its node in that session's DAG.
    pub dag_node: Option<String>,
    /// When it was recovered or discarded.
    pub reconciled_at: Option<Timestamp>,
    /// Event id of the event that resolved it.
    pub resolved_by: Option<String>,
    /// When it was quarantined.
    pub quarantined_at: Option<Timestamp>,
    /// The TTL applied by the quarantine decision.
    pub ttl_seconds: Option<u64>,
    /// The recorded decision (quarantine) about it.
    pub decision_id: Option<String>,
    /// Why it was quarantined or discarded.
    pub reason: Option<String>,
    /// For a duplicate: the event id of the orphan it repeats.
    pub duplicate_of: Option<String>,
    /// For a recovered orphan: how its replay into the session went.
    pub replay: Option<String>,
    /// When its resolution last changed (its observation while queued).
    pub captured_at: Timestamp,
}

/// Totals, so that status and listings never scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounters {
    /// Sessions opened.
    pub sessions: u64,
    /// Sessions open now.
    pub open_sessions: u64,
    /// Turns seen.
    pub turns: u64,
    /// Turns accepted and without their terminal outcome.
    pub live_turns: u64,
    /// Orphans waiting.
    pub orphans_queued: u64,
    /// Orphans recovered.
    pub orphans_recovered: u64,
    /// Orphans quarantined.
    pub orphans_quarantined: u64,
    /// Orphans discarded as duplicates.
    pub orphans_discarded: u64,
    /// Events in the log from stale writer epochs (imported; local ones
    /// are refused before they reach the log).
    pub stale_events: u64,
    /// Other events in the log refused by the rules (imported, or naming
    /// an orphan that no longer waits).
    pub ignored_events: u64,
}

/// Why a local draft is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The message, naming what is wrong.
    pub reason: String,
    /// For a stale writer epoch: the lease scope.
    pub stale_scope: Option<String>,
}

impl Refusal {
    fn plain(reason: String) -> Self {
        Self {
            reason,
            stale_scope: None,
        }
    }
}

type Verdict = Result<(), Refusal>;

/// The session DAG projection.
pub(crate) struct Sessions;

fn bad(reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Damaged {
        tree: super::tree_name(NAME),
        key: String::new(),
        reason: reason.to_string(),
    }
}

fn get<T: serde::de::DeserializeOwned>(
    state: &Staging,
    k: &[u8],
) -> Result<Option<T>, ProjectionError> {
    state.get_cbor(k, "session record")
}

fn put<T: Serialize>(state: &mut Staging, k: Vec<u8>, v: &T) -> Result<(), ProjectionError> {
    state.put_cbor(k, "session record", v)
}

fn remove(state: &mut Staging, k: &[u8]) -> Result<(), ProjectionError> {
    *state.entry(k)? = None;
    Ok(())
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn session_key(s: &str) -> Vec<u8> {
    key(SESSION, &[s.as_bytes()])
}

fn turn_prefix(s: &str) -> Vec<u8> {
    key(TURN, &[s.as_bytes(), b""])
}

fn turn_key(s: &str, turn: &str) -> Vec<u8> {
    key(TURN, &[s.as_bytes(), turn.as_bytes()])
}

fn lease_key(scope: &str) -> Vec<u8> {
    key(LEASE, &[scope.as_bytes()])
}

fn orphan_key(id: &[u8; 16]) -> Vec<u8> {
    key(ORPHAN, &[id])
}

fn queue_session_prefix(s: &str) -> Vec<u8> {
    key(QUEUE_BY_SESSION, &[s.as_bytes(), b""])
}

fn queue_key_prefix(tag: u8, value: &str) -> Vec<u8> {
    key(QUEUE_BY_KEY, &[&[tag], value.as_bytes(), b""])
}

fn session_by_key_prefix(tag: u8, value: &str) -> Vec<u8> {
    key(SESSION_BY_KEY, &[&[tag], value.as_bytes(), b""])
}

fn recovered_prefix(s: &str) -> Vec<u8> {
    key(RECOVERED, &[s.as_bytes(), b""])
}

fn with_seq(mut prefix: Vec<u8>, seq: u64) -> Vec<u8> {
    prefix.extend_from_slice(&seq.to_be_bytes());
    prefix
}

/// The trailing 8-byte sequence of an index key.
fn tail_seq(k: &[u8]) -> Option<u64> {
    k.len()
        .checked_sub(8)
        .and_then(|at| k.get(at..))
        .and_then(read_u64)
}

fn id_bytes(v: &[u8]) -> Option<[u8; 16]> {
    v.try_into().ok()
}

fn event_id_text(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).hyphenated().to_string()
}

fn parse_event_id(text: &str) -> Option<[u8; 16]> {
    EventId::parse(text).ok().map(|e| *e.as_bytes())
}

fn counters(state: &Staging) -> Result<SessionCounters, ProjectionError> {
    Ok(get(state, COUNTERS)?.unwrap_or_default())
}

fn bump(state: &mut Staging, f: impl FnOnce(&mut SessionCounters)) -> Result<(), ProjectionError> {
    let mut c = counters(state)?;
    f(&mut c);
    put(state, COUNTERS.to_vec(), &c)
}

fn text<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// The local part of a session reference.
fn local(session: &str) -> &str {
    session.strip_prefix(SESSION_PREFIX).unwrap_or(session)
}

/// The DAG node of a session.
pub(crate) fn session_node(session: &str) -> String {
    format!("{DAG_NODE_PREFIX}{}", local(session))
}

/// The DAG node an event attaches to: its turn's node for a turn event,
/// else its own node.
fn node_of(session: &str, kind: &str, subject: Option<&str>, event_id: &str) -> String {
    match (TurnEvent::of_kind(kind), subject) {
        (Some(_), Some(turn)) => format!("{}:turn:{turn}", session_node(session)),
        _ => format!("{}:event:{event_id}", session_node(session)),
    }
}

/// `sha256:` over an event's content in canonical JSON.
pub(crate) fn raw_digest(
    actor: &str,
    kind: &str,
    payload_json: &str,
    session: &str,
    subject: Option<&str>,
) -> String {
    let s = |v: &str| Value::String(v.to_owned()).to_string();
    let doc = format!(
        "{{\"actor\":{},\"kind\":{},\"payload\":{payload_json},\"session\":{},\"subject\":{}}}",
        s(actor),
        s(kind),
        s(session),
        subject.map_or_else(|| "null".to_owned(), s)
    );
    let digest = Sha256::digest(doc.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// An event as the rules see it: live, or an orphan being replayed.
struct Scoped<'a> {
    kind: &'a str,
    actor: &'a str,
    subject: Option<&'a str>,
    payload: &'a Map<String, Value>,
    seq: u64,
    at: Timestamp,
    recovered: bool,
}

impl Scoped<'_> {
    fn turn_id(&self) -> Option<&str> {
        self.subject.or_else(|| text(self.payload, "turn_id"))
    }
}

fn is_ours(kind: &EventKind) -> bool {
    match kind.namespace() {
        "session" | "turn" => true,
        "lease" => kind.as_str() == LEASE_ACQUIRED,
        "orphan" => kind.as_str() == ORPHAN_QUARANTINED,
        _ => false,
    }
}

/// True when a local draft is one [`admit`] has to look at.
pub(crate) fn concerns(d: &EventDraft) -> bool {
    d.session.is_some() || is_ours(&d.kind) || d.payload.json_text().contains(LEASE_EPOCH_KEY)
}

/// Reads one session.
pub(crate) fn session(state: &Staging, s: &str) -> Result<Option<SessionRecord>, ProjectionError> {
    get(state, &session_key(s))
}

/// Reads one turn.
pub(crate) fn turn(
    state: &Staging,
    s: &str,
    turn: &str,
) -> Result<Option<TurnRecord>, ProjectionError> {
    get(state, &turn_key(s, turn))
}

/// Reads one lease.
pub(crate) fn lease(state: &Staging, scope: &str) -> Result<Option<LeaseRecord>, ProjectionError> {
    get(state, &lease_key(scope))
}

/// Reads one orphan by event id.
pub(crate) fn orphan(
    state: &Staging,
    id: &[u8; 16],
) -> Result<Option<OrphanRecord>, ProjectionError> {
    get(state, &orphan_key(id))
}

/// The totals.
pub(crate) fn totals(state: &Staging) -> Result<SessionCounters, ProjectionError> {
    counters(state)
}

fn decode_all<T: serde::de::DeserializeOwned>(
    rows: Vec<RawRecord>,
) -> Result<Vec<T>, ProjectionError> {
    rows.into_iter()
        .map(|(_, v)| codec::decode("session record", &v).map_err(bad))
        .collect()
}

/// Sessions in id order, at most `limit`.
pub(crate) fn list_sessions(
    state: &Staging,
    limit: usize,
) -> Result<Vec<SessionRecord>, ProjectionError> {
    decode_all(state.scan_prefix(&[SESSION], limit)?)
}

/// A session's turns in id order, at most `limit`.
pub(crate) fn list_turns(
    state: &Staging,
    s: &str,
    limit: usize,
) -> Result<Vec<TurnRecord>, ProjectionError> {
    decode_all(state.scan_prefix(&turn_prefix(s), limit)?)
}

/// Orphans in event-id order (which is time order), at most `limit`.
pub(crate) fn list_orphans(
    state: &Staging,
    limit: usize,
) -> Result<Vec<OrphanRecord>, ProjectionError> {
    decode_all(state.scan_prefix(&[ORPHAN], limit)?)
}

/// Orphans recovered into a session, oldest first, at most `limit`.
pub(crate) fn recovered_into(
    state: &Staging,
    s: &str,
    limit: usize,
) -> Result<Vec<OrphanRecord>, ProjectionError> {
    let mut out = Vec::new();
    for (_, v) in state.scan_prefix(&recovered_prefix(s), limit)? {
        if let Some(o) = id_bytes(&v)
            .map(|id| orphan(state, &id))
            .transpose()?
            .flatten()
        {
            out.push(o);
        }
    }
    Ok(out)
}

/// Queued orphans in arrival order, at most `limit`.
pub(crate) fn queued(state: &Staging, limit: usize) -> Result<Vec<OrphanRecord>, ProjectionError> {
    let mut out = Vec::new();
    for (_, v) in state.scan_prefix(&[QUEUE_ALL], limit)? {
        if let Some(o) = id_bytes(&v)
            .map(|id| orphan(state, &id))
            .transpose()?
            .flatten()
        {
            out.push(o);
        }
    }
    Ok(out)
}

impl Projection for Sessions {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, ev: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        // Most events name no session and carry no lease: leave them
        // before parsing anything.
        let kind = ev.kind().as_str();
        if ev.session().is_none()
            && !is_ours(ev.kind())
            && !ev.payload().json_text().contains(LEASE_EPOCH_KEY)
        {
            return Ok(());
        }
        let payload = fields(ev.payload());
        match kind {
            ORPHAN_QUARANTINED => return fold_quarantine(state, ev, &payload),
            SESSION_OPENED => return open_session(state, ev, &payload),
            _ => {}
        }
        let c = Scoped {
            kind,
            actor: ev.actor().as_str(),
            subject: ev.subject().map(|s| s.as_str()),
            payload: &payload,
            seq: ev.seq().get(),
            at: ev.recorded_at(),
            recovered: false,
        };
        match ev.session() {
            None => fold_unscoped(state, &c),
            Some(s) => match session(state, s.as_str())? {
                Some(_) => fold_scoped(state, s.as_str(), &c).map(|_| ()),
                None => new_orphan(state, ev, &c, s.as_str()),
            },
        }
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        let r = match key.first() {
            Some(&SESSION) => codec::decode::<SessionRecord>("session", payload).map(|_| ()),
            Some(&TURN) => codec::decode::<TurnRecord>("turn", payload).map(|_| ()),
            Some(&LEASE) => codec::decode::<LeaseRecord>("lease", payload).map(|_| ()),
            Some(&ORPHAN) => codec::decode::<OrphanRecord>("orphan", payload).map(|_| ()),
            Some(&0x09) => codec::decode::<SessionCounters>("counters", payload).map(|_| ()),
            Some(&QUEUE_BY_SESSION | &QUEUE_BY_KEY | &DIGEST | &RECOVERED | &QUEUE_ALL) => {
                return if payload.len() == 16 {
                    Ok(())
                } else {
                    Err(format!("index entry of {} bytes, not 16", payload.len()))
                }
            }
            Some(&SESSION_BY_KEY) => {
                return if payload == [1] {
                    Ok(())
                } else {
                    Err("session key entry is not the marker byte".into())
                }
            }
            Some(&QUEUE_COUNT) => {
                return if payload.len() == 8 {
                    Ok(())
                } else {
                    Err(format!("queue count of {} bytes, not 8", payload.len()))
                }
            }
            _ => return Err("unknown record".into()),
        };
        r.map_err(|e| e.to_string())
    }
}

/// The lease scope and epoch an event presents, or why they are unusable.
fn presented(c: &Scoped<'_>, session: Option<&str>) -> Result<Option<(String, u64)>, String> {
    let epoch = match c.payload.get(LEASE_EPOCH) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|e| *e >= 1)
            .ok_or("payload.lease_epoch must be a positive integer")?,
    };
    let scope = match c.payload.get("lease_scope") {
        None | Some(Value::Null) => session.map(str::to_owned),
        Some(v) => {
            let s = v.as_str().unwrap_or_default();
            if !(has_local_part(s, SESSION_PREFIX) || has_local_part(s, DEVICE_PREFIX)) {
                return Err(format!(
                    "payload.lease_scope must be a session or a device, got {v}"
                ));
            }
            Some(s.to_owned())
        }
    };
    let scope = scope.ok_or(
        "payload.lease_epoch names no lease: set the envelope's session or payload.lease_scope",
    )?;
    Ok(Some((scope, epoch)))
}

/// The rules, for a live event or a replayed orphan. `session` is the
/// envelope's session when it is known.
fn judge(
    state: &Staging,
    session: Option<(&str, &SessionRecord)>,
    c: &Scoped<'_>,
) -> Result<Verdict, ProjectionError> {
    let refuse = |r: String| Ok(Err(Refusal::plain(r)));
    // The writer's lease (a session.opened sets the first epoch).
    if c.kind != SESSION_OPENED {
        let fence = match presented(c, session.map(|(s, _)| s)) {
            Err(r) => return refuse(r),
            Ok(f) => f,
        };
        match (fence, c.kind == LEASE_ACQUIRED) {
            (None, true) => return refuse("lease.acquired without payload.lease_epoch".into()),
            (None, false) => {}
            (Some((scope, epoch)), acquiring) => {
                let current = lease(state, &scope)?;
                if let Some(r) = fence_verdict(&scope, epoch, current.as_ref(), acquiring) {
                    return Ok(Err(r));
                }
            }
        }
    }
    let Some((sref, rec)) = session else {
        return Ok(Ok(()));
    };
    if c.kind == SESSION_OPENED {
        return refuse(format!(
            "session {sref} already exists (opened by event {})",
            rec.opened_seq
        ));
    }
    let turn_event = TurnEvent::of_kind(c.kind);
    if !rec.open && turn_event != Some(TurnEvent::Close) {
        return refuse(format!(
            "session {sref} is closed (event {}); it takes no more events",
            rec.closed_seq.unwrap_or_default()
        ));
    }
    if c.kind == SESSION_CLOSED && rec.live_turns > 0 {
        return refuse(format!(
            "session {sref} has {} turn(s) without a terminal outcome; commit or abort them first",
            rec.live_turns
        ));
    }
    if let Some(event) = turn_event {
        let Some(t) = c.turn_id() else {
            return refuse("a turn event names its turn as the subject".into());
        };
        let from = turn(state, sref, t)?.map_or(TurnState::New, |r| r.state);
        if let Err(e) = transition(from, event) {
            return refuse(format!("turn {t} in {sref}: {e}"));
        }
    }
    Ok(Ok(()))
}

/// The lease check: `None` when the presented epoch is acceptable.
fn fence_verdict(
    scope: &str,
    epoch: u64,
    current: Option<&LeaseRecord>,
    acquiring: bool,
) -> Option<Refusal> {
    let stale = |reason: String| {
        Some(Refusal {
            reason,
            stale_scope: Some(scope.to_owned()),
        })
    };
    match (current, acquiring) {
        (None, true) => None,
        (None, false) => Some(Refusal::plain(format!(
            "no writer lease is held for {scope}; record lease.acquired first"
        ))),
        (Some(l), true) if epoch <= l.epoch => stale(format!(
            "stale lease epoch {epoch} for {scope}: the current epoch is {} (held by {} since event {}); a new lease needs a higher epoch",
            l.epoch, l.holder, l.acquired_seq
        )),
        (Some(_), true) => None,
        (Some(l), false) if epoch < l.epoch => stale(format!(
            "stale lease epoch {epoch} for {scope}: the current epoch is {} (held by {} since event {})",
            l.epoch, l.holder, l.acquired_seq
        )),
        (Some(l), false) if epoch > l.epoch => Some(Refusal::plain(format!(
            "lease epoch {epoch} for {scope} was never acquired: the current epoch is {}",
            l.epoch
        ))),
        (Some(_), false) => None,
    }
}

/// Admission of a local draft: what its payload alone cannot tell.
pub(crate) fn admit(state: &Staging, d: &EventDraft) -> Result<Verdict, ProjectionError> {
    let kind = d.kind.as_str();
    let payload = fields(&d.payload);
    if kind == ORPHAN_QUARANTINED {
        return admit_quarantine(state, &payload);
    }
    let c = Scoped {
        kind,
        actor: d.actor.as_str(),
        subject: d.subject.as_ref().map(|s| s.as_str()),
        payload: &payload,
        seq: 0,
        at: Timestamp::from_unix_micros(0),
        recovered: false,
    };
    match &d.session {
        None => judge(state, None, &c),
        Some(s) => match session(state, s.as_str())? {
            Some(rec) => judge(state, Some((s.as_str(), &rec)), &c),
            // Unknown session: appended and held as an orphan.
            None => Ok(Ok(())),
        },
    }
}

fn admit_quarantine(
    state: &Staging,
    payload: &Map<String, Value>,
) -> Result<Verdict, ProjectionError> {
    let refuse = |r: String| Ok(Err(Refusal::plain(r)));
    let Ok(p) = serde_json::from_value::<QuarantinePayload>(Value::Object(payload.clone())) else {
        return refuse("the quarantine payload does not decode".into());
    };
    let id = p.event_ref.rsplit(':').next().and_then(parse_event_id);
    let Some(o) = id.map(|id| orphan(state, &id)).transpose()?.flatten() else {
        return refuse(format!("{} is not an orphan here", p.event_ref));
    };
    if o.state != OrphanState::Queued {
        return refuse(format!(
            "orphan {} is {}, not queued",
            p.event_ref,
            o.state.as_str()
        ));
    }
    if p.raw_event_digest != o.raw_digest {
        return refuse(format!(
            "payload.raw_event_digest {} differs from the orphan's {}",
            p.raw_event_digest, o.raw_digest
        ));
    }
    let at = Timestamp::parse(&p.quarantined_at).map_err(bad)?;
    let ttl_micros = i64::try_from(p.ttl_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    if at.unix_micros() < o.observed_at.unix_micros().saturating_add(ttl_micros) {
        return refuse(format!(
            "orphan {} observed at {} has not outlived a TTL of {} s at {}",
            p.event_ref, o.observed_at, p.ttl_seconds, p.quarantined_at
        ));
    }
    Ok(Ok(()))
}

/// Folds an event whose session is known.
fn fold_scoped(
    state: &mut Staging,
    sref: &str,
    c: &Scoped<'_>,
) -> Result<Verdict, ProjectionError> {
    let mut rec = session(state, sref)?.ok_or_else(|| bad(format!("session {sref} vanished")))?;
    let verdict = judge(state, Some((sref, &rec)), c)?;
    rec.events += 1;
    rec.last_seq = rec.last_seq.max(c.seq);
    match &verdict {
        Err(r) => {
            if let Some(scope) = &r.stale_scope {
                rec.stale_events += 1;
                count_stale(state, scope)?;
            } else {
                rec.ignored_events += 1;
                bump(state, |t| t.ignored_events += 1)?;
            }
        }
        Ok(()) => effect(state, sref, &mut rec, c)?,
    }
    put(state, session_key(sref), &rec)?;
    Ok(verdict)
}

/// Folds an event that names no session (device leases).
fn fold_unscoped(state: &mut Staging, c: &Scoped<'_>) -> Result<(), ProjectionError> {
    if TurnEvent::of_kind(c.kind).is_some() || c.kind == SESSION_CLOSED {
        // Only forged or foreign records lack the session these require.
        return bump(state, |t| t.ignored_events += 1);
    }
    match judge(state, None, c)? {
        Err(Refusal {
            stale_scope: Some(scope),
            ..
        }) => count_stale(state, &scope),
        Err(_) => bump(state, |t| t.ignored_events += 1),
        Ok(()) if c.kind == LEASE_ACQUIRED => grant_lease(state, None, c),
        Ok(()) => Ok(()),
    }
}

fn count_stale(state: &mut Staging, scope: &str) -> Result<(), ProjectionError> {
    if let Some(mut l) = lease(state, scope)? {
        l.stale_events += 1;
        put(state, lease_key(scope), &l)?;
    }
    bump(state, |t| t.stale_events += 1)
}

fn grant_lease(
    state: &mut Staging,
    session: Option<&str>,
    c: &Scoped<'_>,
) -> Result<(), ProjectionError> {
    let Ok(Some((scope, epoch))) = presented(c, session) else {
        return Ok(());
    };
    let stale_events = lease(state, &scope)?.map_or(0, |l| l.stale_events);
    let l = LeaseRecord {
        scope: scope.clone(),
        epoch,
        holder: text(c.payload, "holder").unwrap_or(c.actor).to_owned(),
        acquired_seq: c.seq,
        acquired_at: c.at,
        stale_events,
    };
    put(state, lease_key(&scope), &l)
}

/// What an accepted event does to its session.
fn effect(
    state: &mut Staging,
    sref: &str,
    rec: &mut SessionRecord,
    c: &Scoped<'_>,
) -> Result<(), ProjectionError> {
    if c.kind == SESSION_CLOSED {
        rec.open = false;
        rec.closed_seq = Some(c.seq);
        rec.closed_at = Some(c.at);
        rec.close_reason = text(c.payload, "reason").map(str::to_owned);
        for (tag, value) in rec.keys.tagged() {
            let mut k = session_by_key_prefix(tag, value);
            k.extend_from_slice(sref.as_bytes());
            remove(state, &k)?;
        }
        return bump(state, |t| {
            t.open_sessions = t.open_sessions.saturating_sub(1)
        });
    }
    if c.kind == LEASE_ACQUIRED {
        return grant_lease(state, Some(sref), c);
    }
    let (Some(event), Some(t)) = (TurnEvent::of_kind(c.kind), c.turn_id()) else {
        return Ok(());
    };
    let current = turn(state, sref, t)?;
    let from = current.as_ref().map_or(TurnState::New, |r| r.state);
    let Ok(to) = transition(from, event) else {
        return Ok(());
    };
    let mut r = current.unwrap_or_else(|| TurnRecord {
        turn_id: t.to_owned(),
        session_ref: sref.to_owned(),
        state: TurnState::New,
        outcome: None,
        steps: Vec::new(),
        steps_dropped: 0,
        first_seq: c.seq,
        updated_seq: c.seq,
    });
    if from == TurnState::New {
        rec.turns += 1;
    }
    let live_delta = i64::from(to.is_live()) - i64::from(from.is_live());
    if live_delta > 0 {
        rec.live_turns += 1;
    } else if live_delta < 0 {
        rec.live_turns = rec.live_turns.saturating_sub(1);
    }
    r.state = to;
    if event.is_outcome() {
        r.outcome = Some(to);
    }
    r.updated_seq = r.updated_seq.max(c.seq);
    if r.steps.len() >= MAX_TURN_STEPS {
        r.steps.remove(0);
        r.steps_dropped += 1;
    }
    r.steps.push(TurnStep {
        event,
        to,
        seq: c.seq,
        at: c.at,
        actor: c.actor.to_owned(),
        reason: text(c.payload, "reason").map(str::to_owned),
        recovered: c.recovered,
    });
    put(state, turn_key(sref, t), &r)?;
    bump(state, |tot| {
        if from == TurnState::New {
            tot.turns += 1;
        }
        if live_delta > 0 {
            tot.live_turns += 1;
        } else if live_delta < 0 {
            tot.live_turns = tot.live_turns.saturating_sub(1);
        }
    })
}

fn open_session(
    state: &mut Staging,
    ev: &Envelope,
    payload: &Map<String, Value>,
) -> Result<(), ProjectionError> {
    let Some(sref) = ev.session().map(|s| s.as_str()) else {
        return bump(state, |t| t.ignored_events += 1);
    };
    if let Some(mut rec) = session(state, sref)? {
        // A second opening (only from another device; refused locally).
        rec.events += 1;
        rec.ignored_events += 1;
        put(state, session_key(sref), &rec)?;
        return bump(state, |t| t.ignored_events += 1);
    }
    let keys = CorrelationKeys::lenient(payload);
    let rec = SessionRecord {
        session_ref: sref.to_owned(),
        open: true,
        keys: keys.clone(),
        opened_by: ev.actor().to_string(),
        origin_device: ev.origin().to_string(),
        opened_event: ev.id().to_string(),
        opened_seq: ev.seq().get(),
        opened_at: ev.recorded_at(),
        closed_seq: None,
        closed_at: None,
        close_reason: None,
        events: 1,
        turns: 0,
        live_turns: 0,
        recovered_orphans: 0,
        stale_events: 0,
        ignored_events: 0,
        last_seq: ev.seq().get(),
    };
    put(state, session_key(sref), &rec)?;
    if lease(state, sref)?.is_none() {
        let epoch = payload
            .get(LEASE_EPOCH)
            .and_then(Value::as_u64)
            .filter(|e| *e >= 1)
            .unwrap_or(1);
        let l = LeaseRecord {
            scope: sref.to_owned(),
            epoch,
            holder: text(payload, "holder")
                .unwrap_or(ev.actor().as_str())
                .to_owned(),
            acquired_seq: ev.seq().get(),
            acquired_at: ev.recorded_at(),
            stale_events: 0,
        };
        put(state, lease_key(sref), &l)?;
    }
    for (tag, value) in keys.tagged() {
        let mut k = session_by_key_prefix(tag, value);
        k.extend_from_slice(sref.as_bytes());
        state.put(k, vec![1]);
    }
    bump(state, |t| {
        t.sessions += 1;
        t.open_sessions += 1;
    })?;
    reconcile(state, sref, &keys, ev)
}

/// Attaches the orphans waiting for a newly opened session: those naming
/// it, and those sharing a correlation key with it when it is their only
/// candidate. Replayed in log order.
fn reconcile(
    state: &mut Staging,
    sref: &str,
    keys: &CorrelationKeys,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let mut found: BTreeMap<u64, ([u8; 16], bool)> = BTreeMap::new();
    for (k, v) in state.scan_prefix(&queue_session_prefix(sref), MAX_QUEUED_PER_SESSION)? {
        if let (Some(seq), Some(id)) = (tail_seq(&k), id_bytes(&v)) {
            found.insert(seq, (id, true));
        }
    }
    for (tag, value) in keys.tagged() {
        for (k, v) in state.scan_prefix(&queue_key_prefix(tag, value), MAX_RECOVERED_PER_KEY)? {
            if let (Some(seq), Some(id)) = (tail_seq(&k), id_bytes(&v)) {
                found.entry(seq).or_insert((id, false));
            }
        }
    }
    for (id, exact) in found.into_values() {
        let Some(mut o) = orphan(state, &id)? else {
            continue;
        };
        if o.state != OrphanState::Queued {
            continue;
        }
        add_candidate(&mut o, sref);
        if !exact && o.candidates.len() + usize::from(o.candidates_dropped > 0) != 1 {
            // Ambiguous: more than one open session shares its keys.
            put(state, orphan_key(&id), &o)?;
            continue;
        }
        dequeue(state, &o)?;
        recover(state, o, &id, sref, ev.recorded_at(), &ev.id().to_string())?;
    }
    Ok(())
}

fn add_candidate(o: &mut OrphanRecord, sref: &str) {
    if o.candidates.iter().any(|c| c == sref) {
        return;
    }
    if o.candidates.len() < MAX_CANDIDATES {
        o.candidates.push(sref.to_owned());
        o.candidates.sort();
    } else {
        o.candidates_dropped += 1;
    }
}

/// Open sessions sharing a correlation key with `keys`.
fn candidates_for(
    state: &Staging,
    keys: &CorrelationKeys,
) -> Result<(Vec<String>, u64), ProjectionError> {
    let mut all = std::collections::BTreeSet::new();
    for (tag, value) in keys.tagged() {
        let prefix = session_by_key_prefix(tag, value);
        for (k, _) in state.scan_prefix(&prefix, MAX_CANDIDATES + 1)? {
            if let Some(s) = k.get(prefix.len()..) {
                all.insert(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    let dropped = all.len().saturating_sub(MAX_CANDIDATES) as u64;
    Ok((all.into_iter().take(MAX_CANDIDATES).collect(), dropped))
}

fn queue_count_key(s: &str) -> Vec<u8> {
    key(QUEUE_COUNT, &[s.as_bytes()])
}

fn queue_count(state: &Staging, s: &str) -> Result<u64, ProjectionError> {
    Ok(state
        .get(&queue_count_key(s))?
        .as_deref()
        .and_then(read_u64)
        .unwrap_or(0))
}

fn set_queue_count(state: &mut Staging, s: &str, n: u64) -> Result<(), ProjectionError> {
    let k = queue_count_key(s);
    if n == 0 {
        remove(state, &k)
    } else {
        state.put(k, n.to_be_bytes().to_vec());
        Ok(())
    }
}

fn new_orphan(
    state: &mut Staging,
    ev: &Envelope,
    c: &Scoped<'_>,
    named: &str,
) -> Result<(), ProjectionError> {
    let id = *ev.id().as_bytes();
    let id_text = ev.id().to_string();
    let digest = raw_digest(c.actor, c.kind, ev.payload().json_text(), named, c.subject);
    let mut o = OrphanRecord {
        event_id: id_text.clone(),
        seq: c.seq,
        kind: c.kind.to_owned(),
        actor: c.actor.to_owned(),
        subject: c.subject.map(str::to_owned),
        named_session: named.to_owned(),
        payload: ev.payload().json_text().to_owned(),
        observed_at: c.at,
        event_hash: ev.hash().to_string(),
        raw_digest: digest.clone(),
        event_class: event_class(c.kind, c.payload).to_owned(),
        keys: CorrelationKeys::lenient(c.payload),
        state: OrphanState::Queued,
        candidates: Vec::new(),
        candidates_dropped: 0,
        recovered_session: None,
        dag_node: None,
        reconciled_at: None,
        resolved_by: None,
        quarantined_at: None,
        ttl_seconds: None,
        decision_id: None,
        reason: None,
        duplicate_of: None,
        replay: None,
        captured_at: c.at,
    };
    let digest_key = {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        key(DIGEST, &[hex.as_bytes()])
    };
    if let Some(first) = state.get(&digest_key)?.as_deref().and_then(id_bytes) {
        let first = event_id_text(&first);
        o.state = OrphanState::DiscardedDuplicate;
        o.reconciled_at = Some(c.at);
        o.resolved_by = Some(id_text);
        o.reason = Some(format!("the same content as orphan event {first}"));
        o.duplicate_of = Some(first);
        put(state, orphan_key(&id), &o)?;
        return bump(state, |t| t.orphans_discarded += 1);
    }
    state.put(digest_key, id.to_vec());
    if queue_count(state, named)? >= MAX_QUEUED_PER_SESSION as u64 {
        o.state = OrphanState::Quarantined;
        o.quarantined_at = Some(c.at);
        o.resolved_by = Some(id_text);
        o.reason = Some(format!(
            "queue_full: {named} already has {MAX_QUEUED_PER_SESSION} orphans waiting"
        ));
        o.decision_id = Some(format!(
            "{DECISION_PREFIX}orphan-queue-full:{}",
            ev.id().to_string().replace('-', "")
        ));
        put(state, orphan_key(&id), &o)?;
        return bump(state, |t| t.orphans_quarantined += 1);
    }
    let (candidates, dropped) = candidates_for(state, &o.keys)?;
    o.candidates = candidates;
    o.candidates_dropped = dropped;
    match (o.candidates.first().cloned(), o.candidates.len(), dropped) {
        (Some(only), 1, 0) => recover(state, o, &id, &only, c.at, &ev.id().to_string()),
        _ => enqueue(state, &o, &id),
    }
}

fn enqueue(state: &mut Staging, o: &OrphanRecord, id: &[u8; 16]) -> Result<(), ProjectionError> {
    state.put(
        with_seq(queue_session_prefix(&o.named_session), o.seq),
        id.to_vec(),
    );
    state.put(with_seq(vec![QUEUE_ALL], o.seq), id.to_vec());
    for (tag, value) in o.keys.tagged() {
        state.put(with_seq(queue_key_prefix(tag, value), o.seq), id.to_vec());
    }
    let n = queue_count(state, &o.named_session)?;
    set_queue_count(state, &o.named_session, n + 1)?;
    put(state, orphan_key(id), o)?;
    bump(state, |t| t.orphans_queued += 1)
}

fn dequeue(state: &mut Staging, o: &OrphanRecord) -> Result<(), ProjectionError> {
    remove(
        state,
        &with_seq(queue_session_prefix(&o.named_session), o.seq),
    )?;
    remove(state, &with_seq(vec![QUEUE_ALL], o.seq))?;
    for (tag, value) in o.keys.tagged() {
        remove(state, &with_seq(queue_key_prefix(tag, value), o.seq))?;
    }
    let n = queue_count(state, &o.named_session)?;
    set_queue_count(state, &o.named_session, n.saturating_sub(1))?;
    bump(state, |t| {
        t.orphans_queued = t.orphans_queued.saturating_sub(1)
    })
}

/// Attaches an orphan to a session and replays it there.
fn recover(
    state: &mut Staging,
    mut o: OrphanRecord,
    id: &[u8; 16],
    sref: &str,
    at: Timestamp,
    resolved_by: &str,
) -> Result<(), ProjectionError> {
    let payload: Map<String, Value> = serde_json::from_str(&o.payload).unwrap_or_default();
    let c = Scoped {
        kind: &o.kind,
        actor: &o.actor,
        subject: o.subject.as_deref(),
        payload: &payload,
        seq: o.seq,
        at: o.observed_at,
        recovered: true,
    };
    let verdict = fold_scoped(state, sref, &c)?;
    o.replay = Some(match verdict {
        Ok(()) => "applied".to_owned(),
        Err(r) => format!("not applied: {}", r.reason),
    });
    add_candidate(&mut o, sref);
    o.dag_node = Some(node_of(sref, &o.kind, o.subject.as_deref(), &o.event_id));
    o.state = OrphanState::Recovered;
    o.recovered_session = Some(sref.to_owned());
    o.reconciled_at = Some(at);
    o.resolved_by = Some(resolved_by.to_owned());
    o.captured_at = at;
    if let Some(mut rec) = session(state, sref)? {
        rec.recovered_orphans += 1;
        put(state, session_key(sref), &rec)?;
    }
    state.put(with_seq(recovered_prefix(sref), o.seq), id.to_vec());
    put(state, orphan_key(id), &o)?;
    bump(state, |t| t.orphans_recovered += 1)
}

fn fold_quarantine(
    state: &mut Staging,
    ev: &Envelope,
    payload: &Map<String, Value>,
) -> Result<(), ProjectionError> {
    let Ok(p) = serde_json::from_value::<QuarantinePayload>(Value::Object(payload.clone())) else {
        return bump(state, |t| t.ignored_events += 1);
    };
    let id = p.event_ref.rsplit(':').next().and_then(parse_event_id);
    let found = id.map(|id| orphan(state, &id)).transpose()?.flatten();
    let (Some(id), Some(mut o)) = (id, found) else {
        return bump(state, |t| t.ignored_events += 1);
    };
    if o.state != OrphanState::Queued {
        // Recovered here before the decision arrived (from another
        // device, or a race): the recovery stands.
        return bump(state, |t| t.ignored_events += 1);
    }
    dequeue(state, &o)?;
    o.state = OrphanState::Quarantined;
    o.quarantined_at = Some(Timestamp::parse(&p.quarantined_at).unwrap_or(ev.recorded_at()));
    o.ttl_seconds = Some(p.ttl_seconds);
    let mut candidates: Vec<String> = p
        .candidates
        .into_iter()
        .filter(|c| has_local_part(c, SESSION_PREFIX))
        .take(MAX_CANDIDATES)
        .collect();
    candidates.sort();
    candidates.dedup();
    o.candidates = candidates;
    o.decision_id = Some(p.decision_id);
    o.reason = Some(p.reason);
    o.resolved_by = Some(ev.id().to_string());
    o.captured_at = ev.recorded_at();
    put(state, orphan_key(&id), &o)?;
    bump(state, |t| t.orphans_quarantined += 1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::clock::{CountingIdGenerator, SteppingClock};
    use crate::event::Payload;
    use crate::ids::{
        ActorId, DeviceId, EventKind, IdempotencyKey, ProfileId, SessionRef, Subject,
    };
    use crate::session::{ORPHAN_SWEEPER_ACTOR, SESSION_OPENED};
    use crate::store::{AppendOutcome, InitOptions, OpenOptions, Store};

    const S1: &str = "urn:srcos:session:s1";

    /// A store whose clock advances one second per reading.
    fn init(dir: &Path, device: &str) -> Store {
        Store::init(
            dir,
            InitOptions {
                device: Some(DeviceId::new(device).unwrap()),
                profile: ProfileId::new("profile:test").unwrap(),
                created_at: None,
            },
            OpenOptions {
                clock: Arc::new(SteppingClock::new(
                    Timestamp::from_unix_micros(1_700_000_000_000_000),
                    1_000_000,
                )),
                ids: Arc::new(CountingIdGenerator::new(1_700_000_000_000)),
                ..OpenOptions::default()
            },
        )
        .unwrap()
    }

    fn ev(kind: &str, session: Option<&str>, subject: Option<&str>, payload: Value) -> EventDraft {
        let mut d = EventDraft::new(
            ActorId::new("actor:agent").unwrap(),
            EventKind::new(kind).unwrap(),
        );
        d.session = session.map(|s| SessionRef::new(s).unwrap());
        d.subject = subject.map(|s| Subject::new(s).unwrap());
        d.payload = Payload::new(payload).unwrap();
        d
    }

    fn open(session: &str, payload: Value) -> EventDraft {
        ev(SESSION_OPENED, Some(session), None, payload)
    }

    fn turn_ev(event: TurnEvent, session: &str, turn: &str) -> EventDraft {
        ev(event.kind(), Some(session), Some(turn), json!({}))
    }

    fn appended(out: &AppendOutcome) -> bool {
        matches!(out, AppendOutcome::Appended { .. })
    }

    fn rejected(out: AppendOutcome) -> String {
        match out {
            AppendOutcome::Rejected { reason } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn read<R>(store: &Store, f: impl FnOnce(&Staging) -> R) -> R {
        store.with_projection(NAME, f).unwrap()
    }

    fn orphan_of(store: &Store, out: &AppendOutcome) -> OrphanRecord {
        let AppendOutcome::Appended { id, .. } = out else {
            panic!("{out:?}")
        };
        read(store, |s| orphan(s, id.as_bytes())).unwrap().unwrap()
    }

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn snapshot(store: &Store) -> BTreeMap<String, Rows> {
        store.flush().unwrap();
        let mut out = BTreeMap::new();
        for name in store.storage().derived_tree_names() {
            let tree = store.storage().derived(&name).unwrap();
            out.insert(name, tree.iter().map(|r| r.unwrap()).collect());
        }
        out
    }

    /// A path of events from `New` to each state.
    fn path_to(state: TurnState) -> Vec<TurnEvent> {
        use TurnEvent as E;
        match state {
            TurnState::New => vec![],
            TurnState::Deferred => vec![E::Defer],
            TurnState::Refused => vec![E::Refuse],
            TurnState::Admitted => vec![E::Admit],
            TurnState::Open => vec![E::Admit, E::Open],
            TurnState::Active => vec![E::Admit, E::Open, E::Activate],
            TurnState::Committed => vec![E::Admit, E::Open, E::Activate, E::Commit],
            TurnState::Aborted => vec![E::Admit, E::Abort],
            TurnState::Closed => vec![E::Admit, E::Open, E::Activate, E::Commit, E::Close],
        }
    }

    /// Every (turn state, event) pair through the store's admission: a
    /// valid move is appended and moves the turn; an invalid one is
    /// refused and changes neither the log nor any derived record.
    #[test]
    fn every_turn_state_event_pair_through_admission() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        assert!(appended(&store.append(open(S1, json!({}))).unwrap()));
        for from in TurnState::ALL {
            for event in TurnEvent::ALL {
                let t = format!("turn:{}-{}", from.as_str(), event.kind());
                for step in path_to(from) {
                    let out = store.append(turn_ev(step, S1, &t)).unwrap();
                    assert!(appended(&out), "{t}: {step:?}: {out:?}");
                }
                let state_of = |store: &Store| {
                    read(store, |s| turn(s, S1, &t))
                        .unwrap()
                        .map_or(TurnState::New, |r| r.state)
                };
                assert_eq!(state_of(&store), from, "{t}");
                let head = store.head().unwrap();
                let before = snapshot(&store);
                let out = store.append(turn_ev(event, S1, &t)).unwrap();
                match transition(from, event) {
                    Ok(to) => {
                        assert!(appended(&out), "{from:?} + {event:?}: {out:?}");
                        assert_eq!(state_of(&store), to);
                    }
                    Err(e) => {
                        let reason = rejected(out);
                        assert!(reason.contains(&e.to_string()), "{reason}");
                        assert_eq!(store.head().unwrap(), head);
                        assert_eq!(snapshot(&store), before, "{from:?} + {event:?}");
                    }
                }
            }
        }
        let totals = read(&store, totals).unwrap();
        let rec = read(&store, |s| session(s, S1)).unwrap().unwrap();
        assert_eq!(totals.turns, rec.turns);
        assert_eq!(totals.live_turns, rec.live_turns);
        // A session with turns still waiting for an outcome does not close.
        assert!(rec.live_turns > 0);
        let reason = rejected(
            store
                .append(ev(SESSION_CLOSED, Some(S1), None, json!({})))
                .unwrap(),
        );
        assert!(reason.contains("without a terminal outcome"), "{reason}");
    }

    #[test]
    fn pre_turn_refusal_never_produces_an_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        store.append(open(S1, json!({}))).unwrap();
        assert!(appended(
            &store
                .append(turn_ev(TurnEvent::Refuse, S1, "turn:r"))
                .unwrap()
        ));
        for e in [
            TurnEvent::Open,
            TurnEvent::Commit,
            TurnEvent::Abort,
            TurnEvent::Close,
        ] {
            rejected(store.append(turn_ev(e, S1, "turn:r")).unwrap());
        }
        let t = read(&store, |s| turn(s, S1, "turn:r")).unwrap().unwrap();
        assert_eq!(
            (t.state, t.outcome, t.steps.len()),
            (TurnState::Refused, None, 1)
        );
        // With no live turn the session closes, and then takes nothing.
        assert!(appended(
            &store
                .append(ev(SESSION_CLOSED, Some(S1), None, json!({})))
                .unwrap()
        ));
        let reason = rejected(
            store
                .append(turn_ev(TurnEvent::Admit, S1, "turn:x"))
                .unwrap(),
        );
        assert!(reason.contains("is closed"), "{reason}");
    }

    #[test]
    fn stale_writer_epochs_are_refused_counted_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        store.append(open(S1, json!({"lease_epoch": 1}))).unwrap();
        let grant = ev(
            LEASE_ACQUIRED,
            Some(S1),
            None,
            json!({"lease_epoch": 2, "holder": "actor:w2"}),
        );
        assert!(appended(&store.append(grant).unwrap()));
        let head = store.head().unwrap();
        let before = snapshot(&store);
        let stale = ev(
            "turn.admitted",
            Some(S1),
            Some("turn:1"),
            json!({"lease_epoch": 1}),
        );
        let reason = rejected(store.append(stale).unwrap());
        assert!(
            reason.contains("stale lease epoch 1") && reason.contains("current epoch is 2"),
            "{reason}"
        );
        let regrant = ev(LEASE_ACQUIRED, Some(S1), None, json!({"lease_epoch": 2}));
        assert!(rejected(store.append(regrant).unwrap()).contains("stale lease epoch 2"));
        assert_eq!(store.stale_epoch_refusals(), 2);
        // An epoch nobody acquired is refused but is not a stale writer.
        let future = ev("note.added", Some(S1), None, json!({"lease_epoch": 3}));
        assert!(rejected(store.append(future).unwrap()).contains("never acquired"));
        assert_eq!(store.stale_epoch_refusals(), 2);
        assert_eq!(store.head().unwrap(), head);
        assert_eq!(snapshot(&store), before);
        // The current writer is accepted.
        let ok = ev(
            "turn.admitted",
            Some(S1),
            Some("turn:1"),
            json!({"lease_epoch": 2}),
        );
        assert!(appended(&store.append(ok).unwrap()));

        // A device writer's lease works the same way, without a session.
        let dev = |kind: &str, e: u64| {
            ev(
                kind,
                None,
                None,
                json!({"lease_epoch": e, "lease_scope": "device:browser-1"}),
            )
        };
        let reason = rejected(store.append(dev("tab.opened", 1)).unwrap());
        assert!(reason.contains("no writer lease"), "{reason}");
        assert!(appended(&store.append(dev(LEASE_ACQUIRED, 4)).unwrap()));
        assert!(appended(&store.append(dev("tab.opened", 4)).unwrap()));
        let reason = rejected(store.append(dev("tab.opened", 3)).unwrap());
        assert!(reason.contains("stale lease epoch 3") && reason.contains("current epoch is 4"));
        assert_eq!(store.stale_epoch_refusals(), 3);
    }

    #[test]
    fn idempotent_retries_of_session_and_turn_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        let keyed = |mut d: EventDraft, k: &str| {
            d.idempotency_key = Some(IdempotencyKey::new(k).unwrap());
            d
        };
        let first = store
            .append_many(vec![
                keyed(open(S1, json!({})), "k-open"),
                keyed(turn_ev(TurnEvent::Admit, S1, "turn:1"), "k-admit"),
                keyed(turn_ev(TurnEvent::Open, S1, "turn:1"), "k-open-turn"),
            ])
            .unwrap();
        assert!(first.iter().all(appended));
        let before = snapshot(&store);
        // A retry, then a reconnect (a new handle) sending the same again.
        for _ in 0..2 {
            let again = store
                .append_many(vec![
                    keyed(open(S1, json!({})), "k-open"),
                    keyed(turn_ev(TurnEvent::Admit, S1, "turn:1"), "k-admit"),
                    keyed(turn_ev(TurnEvent::Open, S1, "turn:1"), "k-open-turn"),
                ])
                .unwrap();
            for (a, b) in first.iter().zip(&again) {
                let (
                    AppendOutcome::Appended { seq, hash, .. },
                    AppendOutcome::Duplicate { seq: s2, hash: h2 },
                ) = (a, b)
                else {
                    panic!("{a:?} {b:?}")
                };
                assert_eq!((seq, hash), (s2, h2));
            }
            assert_eq!(snapshot(&store), before);
        }
    }

    #[test]
    fn orphans_are_recovered_when_their_session_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        let s9 = "urn:srcos:session:s9";
        let a = store
            .append(turn_ev(TurnEvent::Admit, s9, "turn:1"))
            .unwrap();
        let o = store
            .append(turn_ev(TurnEvent::Open, s9, "turn:1"))
            .unwrap();
        // Out of order: a commit that is not yet valid when replayed.
        let c = store
            .append(turn_ev(TurnEvent::Commit, s9, "turn:1"))
            .unwrap();
        assert!([&a, &o, &c].iter().all(|x| appended(x)));
        assert_eq!(orphan_of(&store, &a).state, OrphanState::Queued);
        assert_eq!(read(&store, totals).unwrap().orphans_queued, 3);
        assert!(read(&store, |s| turn(s, s9, "turn:1")).unwrap().is_none());

        store.append(open(s9, json!({}))).unwrap();
        let t = read(&store, |s| turn(s, s9, "turn:1")).unwrap().unwrap();
        assert_eq!(t.state, TurnState::Open);
        assert!(t.steps.iter().all(|s| s.recovered));
        let (oa, oc) = (orphan_of(&store, &a), orphan_of(&store, &c));
        assert_eq!(oa.state, OrphanState::Recovered);
        assert_eq!(oa.recovered_session.as_deref(), Some(s9));
        assert_eq!(oa.replay.as_deref(), Some("applied"));
        assert_eq!(oa.candidates, vec![s9.to_owned()]);
        assert!(
            oc.replay.unwrap().starts_with("not applied"),
            "out of order"
        );
        let tot = read(&store, totals).unwrap();
        assert_eq!((tot.orphans_queued, tot.orphans_recovered), (0, 3));
        assert_eq!(
            read(&store, |s| session(s, s9))
                .unwrap()
                .unwrap()
                .recovered_orphans,
            3
        );

        // By correlation key: recovered when exactly one open session
        // shares it, held while two do.
        store
            .append(open(
                "urn:srcos:session:c1",
                json!({"conversation_id": "conv-1"}),
            ))
            .unwrap();
        let x = store
            .append(ev(
                "note.added",
                Some("urn:srcos:session:gone"),
                None,
                json!({"conversation_id": "conv-1"}),
            ))
            .unwrap();
        let ox = orphan_of(&store, &x);
        assert_eq!(ox.state, OrphanState::Recovered);
        assert_eq!(
            ox.recovered_session.as_deref(),
            Some("urn:srcos:session:c1")
        );
        store
            .append(open(
                "urn:srcos:session:c2",
                json!({"conversation_id": "conv-1"}),
            ))
            .unwrap();
        let y = store
            .append(ev(
                "note.added",
                Some("urn:srcos:session:gone"),
                None,
                json!({"conversation_id": "conv-1", "n": 2}),
            ))
            .unwrap();
        let oy = orphan_of(&store, &y);
        assert_eq!(oy.state, OrphanState::Queued, "ambiguous");
        assert_eq!(oy.candidates.len(), 2);
        // The session it names settles it.
        store
            .append(open("urn:srcos:session:gone", json!({})))
            .unwrap();
        assert_eq!(
            orphan_of(&store, &y).recovered_session.as_deref(),
            Some("urn:srcos:session:gone")
        );

        // The same content again is a duplicate, not a second orphan.
        let d1 = store
            .append(ev(
                "note.added",
                Some("urn:srcos:session:z"),
                None,
                json!({"v": 1}),
            ))
            .unwrap();
        let d2 = store
            .append(ev(
                "note.added",
                Some("urn:srcos:session:z"),
                None,
                json!({"v": 1}),
            ))
            .unwrap();
        assert_eq!(orphan_of(&store, &d1).state, OrphanState::Queued);
        let od2 = orphan_of(&store, &d2);
        assert_eq!(od2.state, OrphanState::DiscardedDuplicate);
        assert_eq!(od2.duplicate_of, Some(orphan_of(&store, &d1).event_id));
        assert_eq!(od2.raw_digest, orphan_of(&store, &d1).raw_digest);

        // Incremental folds equal a rebuild.
        let incremental = snapshot(&store);
        store.rebuild(&[], &mut |_, _| {}).unwrap();
        assert_eq!(snapshot(&store), incremental);
    }

    #[test]
    fn sweep_quarantines_expired_orphans_and_a_rebuild_reproduces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path(), "device:a");
        let out = store
            .append(ev(
                "note.added",
                Some("urn:srcos:session:late"),
                None,
                json!({}),
            ))
            .unwrap();
        // The clock moves one second per reading: nothing is 100 s old.
        let report = crate::session_dag::sweep(&store, 100).unwrap();
        assert!(report.quarantined.is_empty());
        assert_eq!(report.still_queued, 1);
        let report = crate::session_dag::sweep(&store, 1).unwrap();
        assert_eq!(report.quarantined.len(), 1, "{report:?}");
        assert_eq!(report.still_queued, 0);
        let o = orphan_of(&store, &out);
        assert_eq!(o.state, OrphanState::Quarantined);
        assert_eq!(o.ttl_seconds, Some(1));
        assert!(o
            .decision_id
            .unwrap()
            .starts_with("urn:srcos:decision:orphan-quarantine:"));
        // A second sweep finds nothing; forging the decision is refused.
        assert!(crate::session_dag::sweep(&store, 1)
            .unwrap()
            .quarantined
            .is_empty());
        let mut forged = ev(ORPHAN_QUARANTINED, None, None, json!({}));
        forged.actor = ActorId::new(ORPHAN_SWEEPER_ACTOR).unwrap();
        assert!(matches!(
            store.append(forged).unwrap(),
            AppendOutcome::Rejected { .. }
        ));

        let now = store.now();
        let receipts = |store: &Store| crate::session_dag::orphans(store, 300, now).unwrap();
        let before = receipts(&store);
        let incremental = snapshot(&store);
        store.rebuild(&[], &mut |_, _| {}).unwrap();
        assert_eq!(snapshot(&store), incremental);
        assert_eq!(receipts(&store), before);
        let r = &before[0].receipt;
        assert_eq!(r.session_resolution.state, "quarantined");
        assert!(r.ttl.expired);
    }

    #[test]
    fn imported_events_follow_the_same_rules_in_the_fold() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = init(a_dir.path(), "device:a");
        let b = init(b_dir.path(), "device:b");
        a.append(open(S1, json!({"lease_epoch": 1}))).unwrap();
        a.append(turn_ev(TurnEvent::Admit, S1, "turn:1")).unwrap();
        // Device b, which has not heard of the new lease, writes with
        // epoch 1 while a moves to epoch 2.
        let bundle = a_dir.path().join("a.bundle");
        crate::bundle::export(&a, &bundle, 0, &mut |_, _| {}).unwrap();
        crate::bundle::import(&b, &bundle).unwrap();
        let late = ev(
            "turn.opened",
            Some(S1),
            Some("turn:1"),
            json!({"lease_epoch": 1}),
        );
        assert!(appended(&b.append(late).unwrap()));
        a.append(ev(
            LEASE_ACQUIRED,
            Some(S1),
            None,
            json!({"lease_epoch": 2}),
        ))
        .unwrap();
        let bundle = b_dir.path().join("b.bundle");
        crate::bundle::export(&b, &bundle, 0, &mut |_, _| {}).unwrap();
        crate::bundle::import(&a, &bundle).unwrap();
        // On a, the stale write is in the log, counted, and moved nothing.
        let t = read(&a, |s| turn(s, S1, "turn:1")).unwrap().unwrap();
        assert_eq!(t.state, TurnState::Admitted);
        assert_eq!(read(&a, totals).unwrap().stale_events, 1);
        assert_eq!(read(&a, |s| lease(s, S1)).unwrap().unwrap().stale_events, 1);
        assert_eq!(a.stale_epoch_refusals(), 0, "nothing was refused locally");
        let incremental = snapshot(&a);
        a.rebuild(&[], &mut |_, _| {}).unwrap();
        assert_eq!(snapshot(&a), incremental);
    }

    /// One step of a random session workload.
    #[derive(Debug, Clone)]
    enum Op {
        /// Open session `s` (some sessions are never opened, so events
        /// naming them become orphans), with an optional conversation.
        Open(u8, Option<u8>),
        Close(u8),
        Turn(u8, u8, TurnEvent),
        Lease(u8, u64),
        /// A note in session `s`, maybe with a writer epoch and a
        /// conversation key (for orphan matching).
        Note(u8, Option<u64>, Option<u8>, u8),
        /// A batch boundary, optionally followed by a sweep with a TTL.
        Cut(Option<u64>),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let s = 0u8..5;
        prop_oneof![
            (s.clone(), proptest::option::of(0u8..2)).prop_map(|(s, c)| Op::Open(s, c)),
            s.clone().prop_map(Op::Close),
            (
                s.clone(),
                0u8..3,
                proptest::sample::select(TurnEvent::ALL.to_vec())
            )
                .prop_map(|(s, t, e)| Op::Turn(s, t, e)),
            (s.clone(), 1u64..4).prop_map(|(s, e)| Op::Lease(s, e)),
            (
                s,
                proptest::option::of(1u64..4),
                proptest::option::of(0u8..2),
                0u8..3
            )
                .prop_map(|(s, e, c, n)| Op::Note(s, e, c, n)),
            proptest::option::of(1u64..20).prop_map(Op::Cut),
        ]
    }

    fn sref(s: u8) -> String {
        format!("urn:srcos:session:p{s}")
    }

    fn op_draft(o: &Op) -> Option<EventDraft> {
        Some(match o {
            Op::Open(s, c) => {
                let p = c.map_or(json!({}), |c| json!({"conversation_id": format!("c{c}")}));
                open(&sref(*s), p)
            }
            Op::Close(s) => ev(SESSION_CLOSED, Some(&sref(*s)), None, json!({})),
            Op::Turn(s, t, e) => turn_ev(*e, &sref(*s), &format!("t{t}")),
            Op::Lease(s, e) => ev(
                crate::session::LEASE_ACQUIRED,
                Some(&sref(*s)),
                None,
                json!({"lease_scope": sref(*s), "lease_epoch": e, "holder": "actor:agent"}),
            ),
            Op::Note(s, e, c, n) => {
                let mut p = serde_json::Map::new();
                p.insert("n".into(), json!(n));
                if let Some(e) = e {
                    p.insert("lease_epoch".into(), json!(e));
                }
                if let Some(c) = c {
                    p.insert("conversation_id".into(), json!(format!("c{c}")));
                }
                ev("note.added", Some(&sref(*s)), None, Value::Object(p))
            }
            Op::Cut(_) => return None,
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 16,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// INV-PROJ-01 for the session DAG: whatever mix of sessions,
        /// turns, leases, orphans, sweeps and reopenings, the incremental
        /// fold equals a full rebuild, and equals it again after a reopen.
        #[test]
        fn session_dag_incremental_equals_rebuild(
            ops in proptest::collection::vec(op(), 1..160),
            reopen_at in 0usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = init(dir.path(), "device:a");
            let mut batch = Vec::new();
            let mut cuts = 0usize;
            for o in ops.iter().chain(std::iter::once(&Op::Cut(None))) {
                if let Some(d) = op_draft(o) {
                    batch.push(d);
                    continue;
                }
                store.append_many(std::mem::take(&mut batch)).unwrap();
                if let Op::Cut(Some(ttl)) = o {
                    crate::session_dag::sweep(&store, *ttl).unwrap();
                }
                if cuts == reopen_at {
                    store.close().unwrap();
                    store = Store::open(dir.path(), OpenOptions {
                        clock: Arc::new(SteppingClock::new(
                            Timestamp::from_unix_micros(1_800_000_000_000_000),
                            1_000_000,
                        )),
                        ids: Arc::new(CountingIdGenerator::new(1_800_000_000_000)),
                        ..OpenOptions::default()
                    }).unwrap();
                }
                cuts += 1;
            }
            let incremental = snapshot(&store);
            store.rebuild(&[], &mut |_, _| {}).unwrap();
            let rebuilt = snapshot(&store);
            proptest::prop_assert_eq!(&incremental, &rebuilt);
            store.close().unwrap();
            let store = Store::open(dir.path(), OpenOptions::default()).unwrap();
            proptest::prop_assert_eq!(&snapshot(&store), &rebuilt);
        }
    }
}
