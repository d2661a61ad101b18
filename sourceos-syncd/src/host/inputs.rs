//! Validated inputs of the host facade. Each constructor refuses what
//! syncd would refuse, so a request that was built can be sent; their
//! deserialisation runs the same validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ActorId, EventKind, IdempotencyKey, InvalidValue, SessionRef, Subject};

/// Longest idempotency key or surface version, in bytes.
pub const MAX_FACADE_KEY_BYTES: usize = 256;

/// A request that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// A field is not a valid value of its kind.
    #[error("{field}: {source}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Why.
        #[source]
        source: InvalidValue,
    },
    /// A payload that is not a JSON object.
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    /// A kind in syncd's own namespace.
    #[error("kind {0} is in the reserved `syncd.` namespace")]
    ReservedKind(String),
}

fn field<T>(name: &'static str, r: Result<T, InvalidValue>) -> Result<T, InvalidInput> {
    r.map_err(|source| InvalidInput::Field {
        field: name,
        source,
    })
}

/// Text checked like an idempotency key: not empty, at most
/// [`MAX_FACADE_KEY_BYTES`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FacadeKey(IdempotencyKey);

impl FacadeKey {
    /// Validates `raw`.
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidInput> {
        field("idempotency_key", IdempotencyKey::new(raw)).map(Self)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The key of one step of a request that records several events: the
    /// key itself would be too long with a suffix, so the step's key is
    /// derived from a hash of both.
    pub(crate) fn step(&self, step: &str) -> IdempotencyKey {
        let mut h = blake3::Hasher::new();
        h.update(self.as_str().as_bytes());
        h.update(&[0]);
        h.update(step.as_bytes());
        let text = format!("host:{}", h.finalize().to_hex());
        // A hex digest with a short prefix is always a valid key; the
        // fallback keeps the function total.
        IdempotencyKey::new(text).unwrap_or_else(|_| self.0.clone())
    }

    pub(crate) fn key(&self) -> &IdempotencyKey {
        &self.0
    }
}

impl TryFrom<String> for FacadeKey {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<FacadeKey> for String {
    fn from(k: FacadeKey) -> String {
        k.as_str().to_owned()
    }
}

/// The version of the calling surface (e.g. `turtleterm/0.4.1`), checked
/// like an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SurfaceVersion(String);

impl SurfaceVersion {
    /// Validates `raw`.
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidInput> {
        let raw = raw.into();
        // The same rules as an idempotency key.
        field("surface_version", IdempotencyKey::new(raw.as_str()))?;
        Ok(Self(raw))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SurfaceVersion {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<SurfaceVersion> for String {
    fn from(k: SurfaceVersion) -> String {
        k.0
    }
}

/// One event to submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRequest {
    /// Its kind.
    pub kind: EventKind,
    /// Who submits it.
    pub actor: ActorId,
    /// What it is about.
    pub subject: Option<Subject>,
    /// Its session.
    pub session: Option<SessionRef>,
    /// Repeats with the same key record nothing.
    pub idempotency_key: FacadeKey,
    /// Its payload (a JSON object).
    pub payload: Map<String, Value>,
}

impl EventRequest {
    /// A request from raw parts, validated.
    pub fn new(
        kind: &str,
        actor: &str,
        subject: Option<&str>,
        idempotency_key: &str,
        payload: Value,
    ) -> Result<Self, InvalidInput> {
        let kind = field("kind", EventKind::new(kind))?;
        if kind.is_reserved() {
            return Err(InvalidInput::ReservedKind(kind.to_string()));
        }
        let Value::Object(payload) = payload else {
            return Err(InvalidInput::PayloadNotObject);
        };
        Ok(Self {
            kind,
            actor: field("actor", ActorId::new(actor))?,
            subject: subject
                .map(|s| field("subject", Subject::new(s)))
                .transpose()?,
            session: None,
            idempotency_key: FacadeKey::new(idempotency_key)?,
            payload,
        })
    }

    /// The same request in a session.
    pub fn in_session(mut self, session: &str) -> Result<Self, InvalidInput> {
        self.session = Some(field("session", SessionRef::new(session))?);
        Ok(self)
    }

    /// The JSON line syncd ingests for it, with `key` as its key.
    pub(crate) fn line(&self, key: &IdempotencyKey) -> String {
        let mut m = Map::new();
        m.insert("kind".into(), self.kind.as_str().into());
        m.insert("actor".into(), self.actor.as_str().into());
        if let Some(s) = &self.subject {
            m.insert("subject".into(), s.as_str().into());
        }
        if let Some(s) = &self.session {
            m.insert("session".into(), s.as_str().into());
        }
        m.insert("idempotency_key".into(), key.as_str().into());
        m.insert("payload".into(), Value::Object(self.payload.clone()));
        Value::Object(m).to_string()
    }
}

/// An object transaction to propose (`agent.transaction.proposed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The proposing actor.
    pub actor: ActorId,
    /// The transaction's id (its subject).
    pub transaction_id: Subject,
    /// The proposal (`object_ids`, `operation`, `changes`,
    /// `base_versions`; `transaction_id` is filled in).
    pub proposal: Map<String, Value>,
    /// Repeats with the same key record nothing.
    pub idempotency_key: FacadeKey,
}

impl TxnRequest {
    /// A request from raw parts, validated.
    pub fn new(
        actor: &str,
        transaction_id: &str,
        proposal: Value,
        idempotency_key: &str,
    ) -> Result<Self, InvalidInput> {
        let Value::Object(proposal) = proposal else {
            return Err(InvalidInput::PayloadNotObject);
        };
        Ok(Self {
            actor: field("actor", ActorId::new(actor))?,
            transaction_id: field("transaction_id", Subject::new(transaction_id))?,
            proposal,
            idempotency_key: FacadeKey::new(idempotency_key)?,
        })
    }

    pub(crate) fn event(&self) -> Result<EventRequest, InvalidInput> {
        let mut payload = self.proposal.clone();
        payload.insert("transaction_id".into(), self.transaction_id.as_str().into());
        Ok(EventRequest {
            kind: field("kind", EventKind::new("agent.transaction.proposed"))?,
            actor: self.actor.clone(),
            subject: Some(self.transaction_id.clone()),
            session: None,
            idempotency_key: self.idempotency_key.clone(),
            payload,
        })
    }
}

/// A session to open or close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// Who opens or closes it.
    pub actor: ActorId,
    /// `urn:srcos:session:<id>`.
    pub session: SessionRef,
    /// Correlation keys and other payload fields.
    pub payload: Map<String, Value>,
    /// Repeats with the same key record nothing.
    pub idempotency_key: FacadeKey,
}

impl SessionRequest {
    /// A request from raw parts, validated.
    pub fn new(actor: &str, session: &str, idempotency_key: &str) -> Result<Self, InvalidInput> {
        Ok(Self {
            actor: field("actor", ActorId::new(actor))?,
            session: field("session", SessionRef::new(session))?,
            payload: Map::new(),
            idempotency_key: FacadeKey::new(idempotency_key)?,
        })
    }

    pub(crate) fn event(&self, kind: &str) -> Result<EventRequest, InvalidInput> {
        Ok(EventRequest {
            kind: field("kind", EventKind::new(kind))?,
            actor: self.actor.clone(),
            subject: None,
            session: Some(self.session.clone()),
            idempotency_key: self.idempotency_key.clone(),
            payload: self.payload.clone(),
        })
    }
}

/// A turn to open, close or cancel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRequest {
    /// Who acts.
    pub actor: ActorId,
    /// The turn's session.
    pub session: SessionRef,
    /// The turn (its subject).
    pub turn: Subject,
    /// Why, for a cancellation (one line).
    pub reason: Option<String>,
    /// Repeats with the same key record nothing.
    pub idempotency_key: FacadeKey,
}

impl TurnRequest {
    /// A request from raw parts, validated.
    pub fn new(
        actor: &str,
        session: &str,
        turn: &str,
        idempotency_key: &str,
    ) -> Result<Self, InvalidInput> {
        Ok(Self {
            actor: field("actor", ActorId::new(actor))?,
            session: field("session", SessionRef::new(session))?,
            turn: field("turn", Subject::new(turn))?,
            reason: None,
            idempotency_key: FacadeKey::new(idempotency_key)?,
        })
    }

    pub(crate) fn event(&self, kind: &str) -> Result<EventRequest, InvalidInput> {
        let mut payload = Map::new();
        if let (Some(r), "turn.aborted") = (&self.reason, kind) {
            payload.insert("reason".into(), r.clone().into());
        }
        Ok(EventRequest {
            kind: field("kind", EventKind::new(kind))?,
            actor: self.actor.clone(),
            subject: Some(self.turn.clone()),
            session: Some(self.session.clone()),
            idempotency_key: self.idempotency_key.clone(),
            payload,
        })
    }
}
