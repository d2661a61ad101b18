//! Sessions, turns and writer leases: the kinds agents, terminals and
//! browsers record about their work, with the validation each payload gets
//! and the turn lifecycle as a pure transition function.
//!
//! A session is opened and closed (`session.opened`, `session.closed`; the
//! session is the envelope's `session`, `urn:srcos:session:<id>`). A turn
//! (the event's subject is the turn id, the envelope's `session` its
//! session) first gets a recorded admission decision — `turn.admitted`,
//! `turn.deferred` or `turn.refused` — and only an admitted turn opens:
//!
//! ```text
//! new ──admit──▶ admitted ──open──▶ open ──activate──▶ active ──commit──▶ committed ─┐
//!  │  ▲            │                 │                   │                          ├─close─▶ closed
//!  │  └─admit─ deferred              └──────abort────────┴──abort──▶ aborted ───────┘
//!  ├─defer──▶ deferred ─defer─▶ deferred   (admitted ──abort──▶ aborted as well)
//!  └─refuse─▶ refused          (deferred ──refuse──▶ refused)
//! ```
//!
//! Committed and aborted are the terminal outcomes: an admitted turn gets
//! exactly one of them, a refused or deferred request never gets one. Every
//! other (state, event) pair is refused by [`transition`] and changes
//! nothing.
//!
//! A writer lease (`lease.acquired`) gives a session or a device writer an
//! epoch; an event whose payload carries an older `lease_epoch` is from a
//! stale writer and is refused (see `projection::sessions`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventDraft;
use crate::ids::Subject;
use crate::kinds::{payload_as, KindSpec};

/// Prefix of every session reference.
pub const SESSION_PREFIX: &str = "urn:srcos:session:";
/// Prefix of workspace references (`workspace_ref`).
pub const WORKSPACE_PREFIX: &str = "urn:srcos:workspace:";
/// Prefix of device ids, for device lease scopes.
pub const DEVICE_PREFIX: &str = "device:";
/// Prefix of event references.
pub const EVENT_PREFIX: &str = "urn:srcos:event:";
/// Prefix of session DAG node references.
pub const DAG_NODE_PREFIX: &str = "urn:srcos:session-dag-node:";
/// Prefix of the decisions syncd records about orphans.
pub const DECISION_PREFIX: &str = "urn:srcos:decision:";
/// The actor that records orphan quarantine decisions (the sweeper).
pub const ORPHAN_SWEEPER_ACTOR: &str = "actor:syncd-orphan-sweeper";
/// Candidate sessions remembered per orphan.
pub const MAX_CANDIDATES: usize = 16;
/// Longest free-text reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Longest correlation key or turn id, in bytes.
const MAX_ID_BYTES: usize = 256;

/// `session.opened`.
pub const SESSION_OPENED: &str = "session.opened";
/// `session.closed`.
pub const SESSION_CLOSED: &str = "session.closed";
/// `lease.acquired`.
pub const LEASE_ACQUIRED: &str = "lease.acquired";
/// `orphan.quarantined`.
pub const ORPHAN_QUARANTINED: &str = "orphan.quarantined";

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: SESSION_OPENED,
        validate: session_opened,
    },
    KindSpec {
        kind: SESSION_CLOSED,
        validate: session_closed,
    },
    KindSpec {
        kind: "turn.admitted",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.deferred",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.refused",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.opened",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.activated",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.committed",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.aborted",
        validate: turn_event,
    },
    KindSpec {
        kind: "turn.closed",
        validate: turn_event,
    },
    KindSpec {
        kind: LEASE_ACQUIRED,
        validate: lease_acquired,
    },
    KindSpec {
        kind: ORPHAN_QUARANTINED,
        validate: orphan_quarantined,
    },
];

/// Where a turn is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnState {
    /// Nothing recorded about it yet.
    New,
    /// Its admission was deferred; it may be admitted or refused later.
    Deferred,
    /// Its admission was refused; it never opens and has no outcome.
    Refused,
    /// Admitted: it may open.
    Admitted,
    /// Opened.
    Open,
    /// Working.
    Active,
    /// Terminal outcome: committed.
    Committed,
    /// Terminal outcome: aborted.
    Aborted,
    /// Closed after its outcome.
    Closed,
}

impl TurnState {
    /// Every state, for exhaustive tests and documentation.
    pub const ALL: [TurnState; 9] = [
        TurnState::New,
        TurnState::Deferred,
        TurnState::Refused,
        TurnState::Admitted,
        TurnState::Open,
        TurnState::Active,
        TurnState::Committed,
        TurnState::Aborted,
        TurnState::Closed,
    ];

    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnState::New => "new",
            TurnState::Deferred => "deferred",
            TurnState::Refused => "refused",
            TurnState::Admitted => "admitted",
            TurnState::Open => "open",
            TurnState::Active => "active",
            TurnState::Committed => "committed",
            TurnState::Aborted => "aborted",
            TurnState::Closed => "closed",
        }
    }

    /// Accepted and still waiting for its terminal outcome.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            TurnState::Admitted | TurnState::Open | TurnState::Active
        )
    }

    /// Has had its terminal outcome (committed or aborted, maybe closed).
    pub fn has_outcome(self) -> bool {
        matches!(
            self,
            TurnState::Committed | TurnState::Aborted | TurnState::Closed
        )
    }
}

/// What happens to a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEvent {
    /// `turn.admitted`.
    Admit,
    /// `turn.deferred`.
    Defer,
    /// `turn.refused`.
    Refuse,
    /// `turn.opened`.
    Open,
    /// `turn.activated`.
    Activate,
    /// `turn.committed`.
    Commit,
    /// `turn.aborted`.
    Abort,
    /// `turn.closed`.
    Close,
}

impl TurnEvent {
    /// Every event, for exhaustive tests and documentation.
    pub const ALL: [TurnEvent; 8] = [
        TurnEvent::Admit,
        TurnEvent::Defer,
        TurnEvent::Refuse,
        TurnEvent::Open,
        TurnEvent::Activate,
        TurnEvent::Commit,
        TurnEvent::Abort,
        TurnEvent::Close,
    ];

    /// The event of a kind.
    pub fn of_kind(kind: &str) -> Option<Self> {
        match kind {
            "turn.admitted" => Some(TurnEvent::Admit),
            "turn.deferred" => Some(TurnEvent::Defer),
            "turn.refused" => Some(TurnEvent::Refuse),
            "turn.opened" => Some(TurnEvent::Open),
            "turn.activated" => Some(TurnEvent::Activate),
            "turn.committed" => Some(TurnEvent::Commit),
            "turn.aborted" => Some(TurnEvent::Abort),
            "turn.closed" => Some(TurnEvent::Close),
            _ => None,
        }
    }

    /// The kind that records it.
    pub fn kind(self) -> &'static str {
        match self {
            TurnEvent::Admit => "turn.admitted",
            TurnEvent::Defer => "turn.deferred",
            TurnEvent::Refuse => "turn.refused",
            TurnEvent::Open => "turn.opened",
            TurnEvent::Activate => "turn.activated",
            TurnEvent::Commit => "turn.committed",
            TurnEvent::Abort => "turn.aborted",
            TurnEvent::Close => "turn.closed",
        }
    }

    /// True for the terminal outcomes (commit, abort).
    pub fn is_outcome(self) -> bool {
        matches!(self, TurnEvent::Commit | TurnEvent::Abort)
    }
}

/// A refused move of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*from, *event))]
pub struct InvalidTransition {
    /// Where the turn was.
    pub from: TurnState,
    /// What was asked.
    pub event: TurnEvent,
}

fn describe(from: TurnState, event: TurnEvent) -> String {
    use TurnEvent as E;
    use TurnState as S;
    let kind = event.kind();
    match (from, event) {
        (S::Committed | S::Aborted | S::Closed, E::Commit | E::Abort) => format!(
            "{kind} refused: the turn already has its terminal outcome (it is {}); a turn has exactly one",
            from.as_str()
        ),
        (S::Refused, _) => format!(
            "{kind} refused: the turn's admission was refused; a refused request never opens and has no outcome"
        ),
        (S::Deferred, _) => format!(
            "{kind} refused: the turn's admission is deferred; record turn.admitted or turn.refused first"
        ),
        (S::New, _) => format!(
            "{kind} refused: no admission is recorded for the turn; record turn.admitted first"
        ),
        _ => format!(
            "{kind} refused: a turn that is {} cannot move that way",
            from.as_str()
        ),
    }
}

/// The turn lifecycle's transition function (see the module docs).
pub fn transition(from: TurnState, event: TurnEvent) -> Result<TurnState, InvalidTransition> {
    use TurnEvent as E;
    use TurnState as S;
    match (from, event) {
        (S::New | S::Deferred, E::Admit) => Ok(S::Admitted),
        (S::New | S::Deferred, E::Defer) => Ok(S::Deferred),
        (S::New | S::Deferred, E::Refuse) => Ok(S::Refused),
        (S::Admitted, E::Open) => Ok(S::Open),
        (S::Open, E::Activate) => Ok(S::Active),
        (S::Active, E::Commit) => Ok(S::Committed),
        (S::Admitted | S::Open | S::Active, E::Abort) => Ok(S::Aborted),
        (S::Committed | S::Aborted, E::Close) => Ok(S::Closed),
        _ => Err(InvalidTransition { from, event }),
    }
}

/// The keys that let an orphan event find its session: the same fields on
/// `session.opened` and on any event that names a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationKeys {
    /// Conversation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Parent id (a parent session, turn or task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Workspace, `urn:srcos:workspace:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_ref: Option<String>,
    /// Task reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<String>,
}

/// Payload field names of the correlation keys, with a one-byte tag each
/// (used in index keys).
pub(crate) const KEY_FIELDS: [(&str, u8); 4] = [
    ("conversation_id", b'c'),
    ("parent_id", b'p'),
    ("workspace_ref", b'w'),
    ("task_ref", b't'),
];

impl CorrelationKeys {
    /// Reads the keys of a session or turn payload, refusing bad values.
    pub(crate) fn strict(p: &Map<String, Value>) -> Result<Self, String> {
        let mut out = Self::default();
        for (field, _) in KEY_FIELDS {
            let Some(v) = p.get(field) else { continue };
            if v.is_null() {
                continue;
            }
            let s = v
                .as_str()
                .ok_or_else(|| format!("payload.{field} must be a string"))?;
            check_id(field, s)?;
            if field == "workspace_ref" && !has_local_part(s, WORKSPACE_PREFIX) {
                return Err(format!(
                    "payload.workspace_ref must be {WORKSPACE_PREFIX}<id>, got {s:?}"
                ));
            }
            out.set(field, s.to_owned());
        }
        Ok(out)
    }

    /// Reads the keys of any payload, leaving out values that could not
    /// be a key (events of free-form kinds are not refused for them).
    pub(crate) fn lenient(p: &Map<String, Value>) -> Self {
        let mut out = Self::default();
        for (field, _) in KEY_FIELDS {
            let Some(s) = p.get(field).and_then(Value::as_str) else {
                continue;
            };
            if check_id(field, s).is_err()
                || (field == "workspace_ref" && !has_local_part(s, WORKSPACE_PREFIX))
            {
                continue;
            }
            out.set(field, s.to_owned());
        }
        out
    }

    fn set(&mut self, field: &str, v: String) {
        match field {
            "conversation_id" => self.conversation_id = Some(v),
            "parent_id" => self.parent_id = Some(v),
            "workspace_ref" => self.workspace_ref = Some(v),
            _ => self.task_ref = Some(v),
        }
    }

    /// The keys that are set, as (tag, value).
    pub(crate) fn tagged(&self) -> Vec<(u8, &str)> {
        let mut out = Vec::with_capacity(4);
        for (v, (_, tag)) in [
            &self.conversation_id,
            &self.parent_id,
            &self.workspace_ref,
            &self.task_ref,
        ]
        .into_iter()
        .zip(KEY_FIELDS)
        {
            if let Some(v) = v {
                out.push((tag, v.as_str()));
            }
        }
        out
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.tagged().is_empty()
    }
}

/// The `eventClass` of an orphan receipt: payload `event_class` when it is
/// one of the schema's values, else derived from the kind.
pub(crate) fn event_class(kind: &str, payload: &Map<String, Value>) -> &'static str {
    const CLASSES: [&str; 7] = [
        "agent_lifecycle",
        "runtime_lifecycle",
        "browser_automation",
        "terminal_workspace",
        "plugin",
        "transport",
        "unknown",
    ];
    if let Some(c) = payload.get("event_class").and_then(Value::as_str) {
        if let Some(known) = CLASSES.iter().find(|k| **k == c) {
            return known;
        }
    }
    let first = kind.split('.').next().unwrap_or_default();
    match first {
        "session" | "turn" | "lease" | "agent" | "orphan" => "agent_lifecycle",
        "runtime" | "host" | "process" => "runtime_lifecycle",
        "browser" => "browser_automation",
        "terminal" | "workspace" | "shell" | "git" => "terminal_workspace",
        "plugin" => "plugin",
        "transport" | "sync" | "replication" => "transport",
        _ => "unknown",
    }
}

/// True when `s` is `prefix` followed by a non-empty local part.
pub(crate) fn has_local_part(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty())
}

fn check_id(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("payload.{field} must not be empty"));
    }
    if v.len() > MAX_ID_BYTES {
        return Err(format!(
            "payload.{field} is {} bytes; at most {MAX_ID_BYTES}",
            v.len()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/@+#".contains(*c)))
    {
        return Err(format!(
            "payload.{field} contains {c:?}; identifiers use ASCII letters, digits and . _ - : / @ + #"
        ));
    }
    Ok(())
}

/// The envelope's session, which these kinds require.
fn require_session(d: &EventDraft) -> Result<String, String> {
    let Some(s) = &d.session else {
        return Err(format!(
            "the envelope's `session` is required ({SESSION_PREFIX}<id>)"
        ));
    };
    if !has_local_part(s.as_str(), SESSION_PREFIX) {
        return Err(format!("session {s} is not {SESSION_PREFIX}<id>"));
    }
    Ok(s.to_string())
}

/// Fields shared by the session, turn and lease kinds.
#[derive(Deserialize)]
struct Common {
    #[serde(default)]
    lease_epoch: Option<u64>,
    #[serde(default)]
    lease_scope: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    holder: Option<String>,
    #[serde(default)]
    turn_id: Option<String>,
}

fn check_common(d: &EventDraft) -> Result<Common, String> {
    let c: Common = payload_as(d)?;
    if c.lease_epoch == Some(0) {
        return Err("payload.lease_epoch starts at 1".into());
    }
    if let Some(r) = &c.reason {
        if r.len() > MAX_REASON_BYTES || r.chars().any(char::is_control) {
            return Err(format!(
                "payload.reason must be one line of at most {MAX_REASON_BYTES} bytes"
            ));
        }
    }
    if let Some(h) = &c.holder {
        crate::ids::ActorId::new(h.as_str()).map_err(|e| format!("payload.holder: {e}"))?;
    }
    if let Some(scope) = &c.lease_scope {
        check_scope(scope)?;
    }
    CorrelationKeys::strict(&crate::model::fields(&d.payload))?;
    Ok(c)
}

fn check_scope(scope: &str) -> Result<(), String> {
    if has_local_part(scope, SESSION_PREFIX) {
        return Ok(());
    }
    if has_local_part(scope, DEVICE_PREFIX) {
        return crate::ids::DeviceId::new(scope)
            .map(|_| ())
            .map_err(|e| format!("payload.lease_scope: {e}"));
    }
    Err(format!(
        "payload.lease_scope must be a session ({SESSION_PREFIX}<id>) or a device (device:<id>), got {scope:?}"
    ))
}

/// Sets the subject to `id`, or checks that it already is.
fn subject_is(d: &mut EventDraft, what: &str, id: &str) -> Result<(), String> {
    match &d.subject {
        Some(s) if s.as_str() != id => Err(format!("subject {s} differs from {what} {id}")),
        Some(_) => Ok(()),
        None => {
            d.subject = Some(Subject::new(id).map_err(|e| format!("{what}: {e}"))?);
            Ok(())
        }
    }
}

fn session_opened(d: &mut EventDraft) -> Result<(), String> {
    let session = require_session(d)?;
    let c = check_common(d)?;
    if c.lease_scope.is_some() {
        return Err("payload.lease_scope: a session.opened holds the session's own lease".into());
    }
    subject_is(d, "the session", &session)
}

fn session_closed(d: &mut EventDraft) -> Result<(), String> {
    let session = require_session(d)?;
    check_common(d)?;
    subject_is(d, "the session", &session)
}

fn turn_event(d: &mut EventDraft) -> Result<(), String> {
    require_session(d)?;
    let c = check_common(d)?;
    match (&c.turn_id, &d.subject) {
        (Some(t), _) => {
            check_id("turn_id", t)?;
            subject_is(d, "payload.turn_id", t)
        }
        (None, Some(_)) => Ok(()),
        (None, None) => Err("the turn id is required as the subject (or payload.turn_id)".into()),
    }
}

fn lease_acquired(d: &mut EventDraft) -> Result<(), String> {
    let c = check_common(d)?;
    if c.lease_epoch.is_none() {
        return Err("payload.lease_epoch is required".into());
    }
    let scope = match (&c.lease_scope, &d.session) {
        (Some(s), Some(env)) if has_local_part(s, SESSION_PREFIX) && s != env.as_str() => {
            return Err(format!(
                "payload.lease_scope {s} differs from the envelope's session {env}"
            ))
        }
        (Some(s), _) => s.clone(),
        (None, Some(_)) => require_session(d)?,
        (None, None) => {
            return Err(
                "the lease scope is required: the envelope's session, or payload.lease_scope"
                    .into(),
            )
        }
    };
    // A session lease is about that session: it carries it in the envelope
    // so that it is attached to (or held as an orphan of) the session.
    if has_local_part(&scope, SESSION_PREFIX) && d.session.is_none() {
        d.session = Some(
            crate::ids::SessionRef::new(scope.as_str())
                .map_err(|e| format!("payload.lease_scope: {e}"))?,
        );
    }
    subject_is(d, "the lease scope", &scope)
}

/// Payload of `orphan.quarantined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinePayload {
    /// The orphan, `urn:srcos:event:<event id>`.
    pub event_ref: String,
    /// `sha256:` digest of the orphan's content (see `projection::sessions`).
    pub raw_event_digest: String,
    /// Sessions that were candidates when the decision was made.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// When the sweeper decided, RFC 3339.
    pub quarantined_at: String,
    /// The TTL it applied, in seconds.
    pub ttl_seconds: u64,
    /// When the orphan expired (observed at + TTL), RFC 3339.
    pub expires_at: String,
    /// The decision, `urn:srcos:decision:orphan-quarantine:<event id>`.
    pub decision_id: String,
    /// Why: `ttl_expired`.
    pub reason: String,
}

fn orphan_quarantined(d: &mut EventDraft) -> Result<(), String> {
    if d.actor.as_str() != ORPHAN_SWEEPER_ACTOR {
        return Err(format!(
            "only the orphan sweeper ({ORPHAN_SWEEPER_ACTOR}) records quarantine decisions; run `syncd orphans sweep`"
        ));
    }
    let p: QuarantinePayload = payload_as(d)?;
    let id = p
        .event_ref
        .strip_prefix(EVENT_PREFIX)
        .ok_or_else(|| format!("payload.event_ref must be {EVENT_PREFIX}<event id>"))?;
    crate::ids::EventId::parse(id).map_err(|e| format!("payload.event_ref: {e}"))?;
    let hex = p
        .raw_event_digest
        .strip_prefix("sha256:")
        .unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("payload.raw_event_digest must be sha256: and 64 hex digits".into());
    }
    if p.candidates.len() > MAX_CANDIDATES
        || !p
            .candidates
            .iter()
            .all(|c| has_local_part(c, SESSION_PREFIX) && check_id("candidates", c).is_ok())
    {
        return Err(format!(
            "payload.candidates must list at most {MAX_CANDIDATES} sessions ({SESSION_PREFIX}<id>)"
        ));
    }
    for (f, v) in [
        ("quarantined_at", &p.quarantined_at),
        ("expires_at", &p.expires_at),
    ] {
        crate::ids::Timestamp::parse(v).map_err(|e| format!("payload.{f}: {e}"))?;
    }
    if p.ttl_seconds == 0 {
        return Err("payload.ttl_seconds must be at least 1".into());
    }
    if !has_local_part(&p.decision_id, DECISION_PREFIX) {
        return Err(format!("payload.decision_id must be {DECISION_PREFIX}<id>"));
    }
    if p.reason.is_empty() || p.reason.len() > MAX_REASON_BYTES {
        return Err("payload.reason must be a short code such as ttl_expired".into());
    }
    subject_is(d, "payload.event_ref", &p.event_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::ids::{ActorId, EventKind, SessionRef};
    use serde_json::json;

    /// The expected result of every (state, event) pair, written out as a
    /// table independent of `transition`.
    fn expected(from: TurnState, event: TurnEvent) -> Option<TurnState> {
        use TurnEvent as E;
        use TurnState as S;
        let table: &[(S, E, S)] = &[
            (S::New, E::Admit, S::Admitted),
            (S::New, E::Defer, S::Deferred),
            (S::New, E::Refuse, S::Refused),
            (S::Deferred, E::Admit, S::Admitted),
            (S::Deferred, E::Defer, S::Deferred),
            (S::Deferred, E::Refuse, S::Refused),
            (S::Admitted, E::Open, S::Open),
            (S::Admitted, E::Abort, S::Aborted),
            (S::Open, E::Activate, S::Active),
            (S::Open, E::Abort, S::Aborted),
            (S::Active, E::Commit, S::Committed),
            (S::Active, E::Abort, S::Aborted),
            (S::Committed, E::Close, S::Closed),
            (S::Aborted, E::Close, S::Closed),
        ];
        table
            .iter()
            .find(|(s, e, _)| *s == from && *e == event)
            .map(|(_, _, to)| *to)
    }

    #[test]
    fn every_turn_state_event_pair() {
        let mut valid = 0;
        for from in TurnState::ALL {
            for event in TurnEvent::ALL {
                match (transition(from, event), expected(from, event)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from:?} + {event:?}");
                        valid += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, InvalidTransition { from, event });
                        assert!(e.to_string().contains(event.kind()), "{e}");
                    }
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(valid, 14, "the table above lists 14 valid moves");
    }

    #[test]
    fn refused_and_deferred_requests_never_reach_an_outcome() {
        for from in [TurnState::Refused, TurnState::Deferred] {
            for event in [TurnEvent::Commit, TurnEvent::Abort, TurnEvent::Close] {
                assert!(transition(from, event).is_err(), "{from:?} + {event:?}");
            }
        }
        for event in TurnEvent::ALL {
            assert!(transition(TurnState::Refused, event).is_err());
            assert!(transition(TurnState::Closed, event).is_err());
        }
    }

    #[test]
    fn a_turn_has_at_most_one_outcome() {
        for from in [TurnState::Committed, TurnState::Aborted, TurnState::Closed] {
            for event in [TurnEvent::Commit, TurnEvent::Abort] {
                let e = transition(from, event).unwrap_err();
                assert!(e.to_string().contains("exactly one"), "{e}");
            }
        }
        // Every path from New reaches at most one outcome event.
        fn walk(s: TurnState, outcomes: u32) {
            assert!(outcomes <= 1);
            for e in TurnEvent::ALL {
                if let Ok(next) = transition(s, e) {
                    if next != s {
                        walk(next, outcomes + u32::from(e.is_outcome()));
                    }
                }
            }
        }
        walk(TurnState::New, 0);
    }

    #[test]
    fn kinds_round_trip() {
        for e in TurnEvent::ALL {
            assert_eq!(TurnEvent::of_kind(e.kind()), Some(e));
        }
        assert_eq!(TurnEvent::of_kind("turn.started"), None);
    }

    fn draft(kind: &str, session: Option<&str>, payload: Value) -> EventDraft {
        let mut d = EventDraft::new(
            ActorId::new("actor:agent").unwrap(),
            EventKind::new(kind).unwrap(),
        );
        d.session = session.map(|s| SessionRef::new(s).unwrap());
        d.payload = Payload::new(payload).unwrap();
        d
    }

    #[test]
    fn validation_of_session_turn_and_lease_kinds() {
        let s = Some("urn:srcos:session:s1");
        let mut d = draft(SESSION_OPENED, s, json!({"conversation_id": "c1"}));
        session_opened(&mut d).unwrap();
        assert_eq!(d.subject.unwrap().as_str(), "urn:srcos:session:s1");
        assert!(session_opened(&mut draft(SESSION_OPENED, None, json!({}))).is_err());
        assert!(session_opened(&mut draft(SESSION_OPENED, Some("s1"), json!({}))).is_err());
        let bad_ws = json!({"workspace_ref": "ws-1"});
        assert!(session_opened(&mut draft(SESSION_OPENED, s, bad_ws)).is_err());
        assert!(session_opened(&mut draft(SESSION_OPENED, s, json!({"lease_epoch": 0}))).is_err());
        assert!(
            session_opened(&mut draft(SESSION_OPENED, s, json!({"lease_epoch": "2"}))).is_err()
        );

        assert!(turn_event(&mut draft("turn.opened", s, json!({}))).is_err());
        let mut t = draft("turn.opened", s, json!({"turn_id": "turn:1"}));
        turn_event(&mut t).unwrap();
        assert_eq!(t.subject.unwrap().as_str(), "turn:1");
        assert!(turn_event(&mut draft("turn.opened", None, json!({"turn_id": "t"}))).is_err());

        let mut l = draft(
            LEASE_ACQUIRED,
            None,
            json!({"lease_epoch": 2, "lease_scope": "urn:srcos:session:s1"}),
        );
        lease_acquired(&mut l).unwrap();
        assert_eq!(l.session.unwrap().as_str(), "urn:srcos:session:s1");
        let mut dev = draft(
            LEASE_ACQUIRED,
            None,
            json!({"lease_epoch": 1, "lease_scope": "device:laptop"}),
        );
        lease_acquired(&mut dev).unwrap();
        assert!(dev.session.is_none());
        assert!(lease_acquired(&mut draft(LEASE_ACQUIRED, s, json!({}))).is_err());
        assert!(
            lease_acquired(&mut draft(LEASE_ACQUIRED, None, json!({"lease_epoch": 1}))).is_err()
        );
        let other = json!({"lease_epoch": 1, "lease_scope": "urn:srcos:session:s2"});
        assert!(lease_acquired(&mut draft(LEASE_ACQUIRED, s, other)).is_err());

        let q = json!({
            "event_ref": "urn:srcos:event:01890a5d-ac96-774b-bcce-b302099a8057",
            "raw_event_digest": format!("sha256:{}", "a".repeat(64)),
            "candidates": [], "quarantined_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-01T00:00:00Z", "ttl_seconds": 5,
            "decision_id": "urn:srcos:decision:x", "reason": "ttl_expired"
        });
        assert!(orphan_quarantined(&mut draft(ORPHAN_QUARANTINED, None, q.clone())).is_err());
        let mut ok = draft(ORPHAN_QUARANTINED, None, q);
        ok.actor = ActorId::new(ORPHAN_SWEEPER_ACTOR).unwrap();
        orphan_quarantined(&mut ok).unwrap();
    }

    #[test]
    fn correlation_keys_and_event_classes() {
        let p = json!({"conversation_id": "c", "workspace_ref": "nope", "task_ref": 3});
        let m = p.as_object().unwrap();
        let k = CorrelationKeys::lenient(m);
        assert_eq!(k.conversation_id.as_deref(), Some("c"));
        assert_eq!(k.workspace_ref, None);
        assert_eq!(k.task_ref, None);
        assert!(CorrelationKeys::strict(m).is_err());
        assert_eq!(event_class("turn.opened", &Map::new()), "agent_lifecycle");
        assert_eq!(
            event_class("browser.clicked", &Map::new()),
            "browser_automation"
        );
        assert_eq!(event_class("note.added", &Map::new()), "unknown");
        let o = json!({"event_class": "plugin"});
        assert_eq!(event_class("note.added", o.as_object().unwrap()), "plugin");
    }
}
