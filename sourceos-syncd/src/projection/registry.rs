//! The registry projection: objects, actors, schemas, devices, profiles,
//! policy decisions and conflicts, each queryable by id.
//!
//! Conflicts (one type, done thoroughly): two updates of the same object
//! based on the same version, from different devices or actors, neither
//! aware of the other. An object keeps a bounded history of the updates
//! applied to it (base version -> produced version, with the origin hash,
//! device and actor); a later update whose base was already used by another
//! writer is concurrent with that one. The conflict id is derived from the
//! object and the two updates' origin hashes, so every device that sees both
//! updates, in either order, records the same conflict.
//!
//! Versions are derived from the origin hash of the event that produced
//! them, so they are the same on every device.
//!
//! Convergence: both sides of a conflict are applied, and what an object
//! reads as does not depend on the order they arrived in. Each change has
//! a stamp (its causal depth — one more than its base's — and its origin
//! hash); each field keeps the value of the highest stamp that wrote it,
//! and the object's version, state and last writer follow the highest
//! stamp overall. Sequential changes always have higher depths, so they
//! apply as written; concurrent ones are ordered by origin hash, the same
//! on every device. A change whose base is older than the remembered
//! history counts as one deeper than the current head.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codec;
use crate::event::{Envelope, EventDraft};
use crate::model::{fields, ConflictOption};

use super::{Projection, ProjectionError, Staging};

/// Name of the projection.
pub(crate) const NAME: &str = "registry";

/// Updates remembered per object for conflict detection.
pub(crate) const HISTORY_STEPS: usize = 64;

const OBJECT: u8 = 0x01;
const ACTOR: u8 = 0x02;
const SCHEMA: u8 = 0x03;
const DEVICE: u8 = 0x04;
const PROFILE: u8 = 0x05;
const CONFLICT: u8 = 0x06;
const DECISION: u8 = 0x07;
const OBJECT_DECISION: u8 = 0x08;
const COUNTERS: &[u8] = &[0x09];
const TXN: u8 = 0x0a;

/// Entity kinds kept by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// Objects.
    Object,
    /// Actors.
    Actor,
    /// Schemas.
    Schema,
    /// Devices.
    Device,
    /// Profiles.
    Profile,
    /// Conflicts.
    Conflict,
    /// Policy decisions.
    Decision,
    /// Agent object transactions.
    Transaction,
}

impl Entity {
    fn tag(self) -> u8 {
        match self {
            Entity::Object => OBJECT,
            Entity::Actor => ACTOR,
            Entity::Schema => SCHEMA,
            Entity::Device => DEVICE,
            Entity::Profile => PROFILE,
            Entity::Conflict => CONFLICT,
            Entity::Decision => DECISION,
            Entity::Transaction => TXN,
        }
    }
}

/// One applied change of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Version the change was based on ("" for the creation).
    pub base: String,
    /// Version it produced.
    pub version: String,
    /// Origin hash of the event.
    pub origin_hash: String,
    /// Device that recorded it.
    pub device: String,
    /// Actor that caused it.
    pub actor: String,
    /// Local sequence number.
    pub seq: u64,
    /// Fields the change wrote.
    pub changed: Vec<String>,
    /// Whether it deleted the object.
    pub deletes: bool,
    /// Causal depth: 1 for the creation, one more than its base's.
    #[serde(default)]
    pub depth: u64,
}

/// The order in which changes win, the same on every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    /// Causal depth of the change.
    pub depth: u64,
    /// Its origin hash (breaks ties between concurrent changes).
    pub origin_hash: String,
}

impl Step {
    fn stamp(&self) -> Stamp {
        Stamp {
            depth: self.depth,
            origin_hash: self.origin_hash.clone(),
        }
    }
}

/// What the registry knows about an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectState {
    /// The record's fields as last written (object record field names).
    pub record: Map<String, Value>,
    /// Opaque current version.
    pub version: String,
    /// `active`, `deleted` or `tombstoned`.
    pub state: String,
    /// Creating actor.
    pub created_by: String,
    /// Last modifying actor.
    pub last_modified_by: String,
    /// Device that created it.
    pub owner_device: String,
    /// Device of the last change.
    pub last_device: String,
    /// Event that created it.
    pub created_seq: u64,
    /// Event of the last change.
    pub updated_seq: u64,
    /// Recent changes, oldest first (bounded).
    pub history: Vec<Step>,
    /// Conflicts involving this object.
    pub conflicts: Vec<String>,
    /// The stamp of the change each field's value comes from.
    #[serde(default)]
    pub field_stamps: std::collections::BTreeMap<String, Stamp>,
    /// The stamp of the change the version and state come from.
    #[serde(default)]
    pub head: Stamp,
}

/// A generic registered record (actor, schema, device, profile, decision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    /// The record's fields.
    pub record: Map<String, Value>,
    /// Event that registered it.
    pub registered_seq: u64,
    /// Event of the last change.
    pub updated_seq: u64,
    /// Actor of the last change.
    pub changed_by: String,
    /// For actors: the event that revoked it.
    pub revoked_seq: Option<u64>,
}

/// A detected conflict with its decision card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictState {
    /// Deterministic id.
    pub conflict_id: String,
    /// The object.
    pub object_id: String,
    /// The version both updates were based on.
    pub base_version: String,
    /// The two competing versions.
    pub versions: Vec<String>,
    /// Actors of the two updates.
    pub actors: Vec<String>,
    /// Devices of the two updates.
    pub devices: Vec<String>,
    /// Origin hashes of the two updates (the same on every device).
    pub origin_hashes: Vec<String>,
    /// Local event at which it was detected (differs per device).
    pub detected_seq: u64,
    /// Options offered.
    pub options: Vec<ConflictOption>,
    /// The recommendation.
    pub recommended_option: ConflictOption,
    /// Why that recommendation.
    pub rationale: String,
    /// The chosen option, once resolved.
    pub selected_option: Option<ConflictOption>,
    /// Who chose it.
    pub selected_by: Option<String>,
    /// Local event that resolved it (differs per device).
    pub resolved_seq: Option<u64>,
}

/// An agent object transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnState {
    /// Id.
    pub transaction_id: String,
    /// The proposal as submitted.
    pub proposal: Map<String, Value>,
    /// Where it is.
    pub status: crate::agent_txn::TxnStatus,
    /// The proposing actor.
    pub proposed_by: String,
    /// Who approved, rejected or applied it last.
    pub decided_by: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The policy decision about it, when one was recorded.
    pub policy_decision_ref: Option<String>,
    /// Event that proposed it.
    pub proposed_seq: u64,
    /// Event of the last change.
    pub updated_seq: u64,
}

/// Counters kept for status, so that it never scans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Conflicts not yet resolved.
    pub open_conflicts: u64,
    /// Objects whose latest policy decision denies or holds them.
    pub policy_blocked_objects: u64,
    /// Objects known.
    pub objects: u64,
}

/// The registry projection.
pub(crate) struct Registry;

fn key(entity: Entity, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(entity.tag());
    k.extend_from_slice(id.as_bytes());
    k
}

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
    state.get_cbor(k, "registry record")
}

fn put<T: Serialize>(state: &mut Staging, k: Vec<u8>, v: &T) -> Result<(), ProjectionError> {
    state.put_cbor(k, "registry record", v)
}

/// The version an event produces.
pub(crate) fn version_of(ev: &Envelope) -> String {
    let hex = ev.origin_ref().hash.to_hex();
    format!("v:{}", hex.get(..16).unwrap_or(&hex))
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn counters(state: &Staging) -> Result<Counters, ProjectionError> {
    Ok(get(state, COUNTERS)?.unwrap_or_default())
}

impl Projection for Registry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: changes win by stamp, not by arrival order.
        2
    }

    fn apply(&self, ev: &Envelope, state: &mut Staging) -> Result<(), ProjectionError> {
        // Most events in a busy log are not registry events: leave them
        // before copying any payload.
        let kind = ev.kind().as_str();
        match ev.kind().namespace() {
            "actor" | "schema" | "device" | "profile" | "object" | "policy" | "conflict" => {}
            "agent" if kind.starts_with("agent.transaction.") => {}
            _ => return Ok(()),
        }
        let p = fields(ev.payload());
        match kind {
            "actor.registered" => upsert(state, Entity::Actor, "actor_id", p, ev),
            "schema.registered" => upsert(state, Entity::Schema, "schema_id", p, ev),
            "device.registered" => upsert(state, Entity::Device, "device_id", p, ev),
            "profile.registered" => upsert(state, Entity::Profile, "profile_id", p, ev),
            "device.state_changed" => upsert(state, Entity::Device, "device_id", p, ev),
            "actor.revoked" => {
                let Some(id) = text(&p, "actor_id") else {
                    return Ok(());
                };
                let k = key(Entity::Actor, &id);
                let mut r: RecordState = get(state, &k)?.unwrap_or_else(|| RecordState {
                    record: Map::from_iter([("actor_id".to_owned(), Value::String(id.clone()))]),
                    registered_seq: ev.seq().get(),
                    updated_seq: ev.seq().get(),
                    changed_by: ev.actor().to_string(),
                    revoked_seq: None,
                });
                if r.revoked_seq.is_none() {
                    r.revoked_seq = Some(ev.seq().get());
                }
                r.updated_seq = ev.seq().get();
                r.changed_by = ev.actor().to_string();
                if let Some(at) = p.get("revoked_at") {
                    r.record.insert("revoked_at".into(), at.clone());
                }
                put(state, k, &r)
            }
            "object.created" => object_created(state, p, ev),
            "object.updated" | "object.deleted" => object_changed(state, p, ev),
            "object.tombstoned" => {
                let Some(id) = text(&p, "object_id") else {
                    return Ok(());
                };
                let k = key(Entity::Object, &id);
                let Some(mut o) = get::<ObjectState>(state, &k)? else {
                    return Ok(());
                };
                o.state = "tombstoned".into();
                o.updated_seq = ev.seq().get();
                o.last_modified_by = ev.actor().to_string();
                put(state, k, &o)
            }
            "policy.decided" => policy_decided(state, p, ev),
            "conflict.resolved" => conflict_resolved(state, p, ev),
            k if k.starts_with("agent.transaction.") => transaction(state, p, ev),
            _ => Ok(()),
        }
    }

    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String> {
        let r = match key.first() {
            Some(&OBJECT) => codec::decode::<ObjectState>("object", payload).map(|_| ()),
            Some(&ACTOR) | Some(&SCHEMA) | Some(&DEVICE) | Some(&PROFILE) | Some(&DECISION) => {
                codec::decode::<RecordState>("record", payload).map(|_| ())
            }
            Some(&CONFLICT) => codec::decode::<ConflictState>("conflict", payload).map(|_| ()),
            Some(&OBJECT_DECISION) => codec::decode::<String>("decision ref", payload).map(|_| ()),
            Some(0x09) => codec::decode::<Counters>("counters", payload).map(|_| ()),
            Some(&TXN) => codec::decode::<TxnState>("transaction", payload).map(|_| ()),
            _ => return Err("unknown record".into()),
        };
        r.map_err(|e| e.to_string())
    }
}

fn upsert(
    state: &mut Staging,
    entity: Entity,
    id_field: &str,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let Some(id) = text(&p, id_field) else {
        return Ok(());
    };
    let k = key(entity, &id);
    let mut r: RecordState = get(state, &k)?.unwrap_or_else(|| RecordState {
        record: Map::new(),
        registered_seq: ev.seq().get(),
        updated_seq: ev.seq().get(),
        changed_by: ev.actor().to_string(),
        revoked_seq: None,
    });
    for (f, v) in p {
        r.record.insert(f, v);
    }
    r.updated_seq = ev.seq().get();
    r.changed_by = ev.actor().to_string();
    put(state, k, &r)
}

fn step(ev: &Envelope, base: String) -> Step {
    Step {
        base,
        version: version_of(ev),
        origin_hash: ev.origin_ref().hash.to_string(),
        device: ev.origin().to_string(),
        actor: ev.actor().to_string(),
        seq: ev.seq().get(),
        changed: changed_fields(&fields(ev.payload())).into_iter().collect(),
        deletes: ev.kind().as_str() == "object.deleted",
        depth: 0,
    }
}

fn object_created(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let Some(id) = text(&p, "object_id") else {
        return Ok(());
    };
    let k = key(Entity::Object, &id);
    // A second creation of the same id is refused locally; from another
    // device the first one in this log wins.
    if state.get(&k)?.is_some() {
        return Ok(());
    }
    let mut s = step(ev, String::new());
    s.depth = 1;
    let field_stamps = p
        .keys()
        .filter(|f| *f != "object_id")
        .map(|f| (f.clone(), s.stamp()))
        .collect();
    let head = s.stamp();
    let o = ObjectState {
        record: p,
        field_stamps,
        head,
        version: s.version.clone(),
        state: "active".into(),
        created_by: ev.actor().to_string(),
        last_modified_by: ev.actor().to_string(),
        owner_device: ev.origin().to_string(),
        last_device: ev.origin().to_string(),
        created_seq: ev.seq().get(),
        updated_seq: ev.seq().get(),
        history: vec![s],
        conflicts: Vec::new(),
    };
    let mut c = counters(state)?;
    c.objects += 1;
    put(state, COUNTERS.to_vec(), &c)?;
    put(state, k, &o)
}

/// The decision card's recommendation, from both sides alike (so that
/// arrival order does not change it).
fn recommend(a: &Step, b: &Step) -> (ConflictOption, String) {
    if a.deletes || b.deletes {
        return (
            ConflictOption::Fork,
            "one side deleted the object while the other changed it; keep both until someone decides".into(),
        );
    }
    let x: BTreeSet<&String> = a.changed.iter().collect();
    let y: BTreeSet<&String> = b.changed.iter().collect();
    if x.is_disjoint(&y) {
        (
            ConflictOption::Merge,
            "the two updates changed different fields and can be combined".into(),
        )
    } else {
        (
            ConflictOption::Fork,
            "the two updates changed the same fields; keep both versions for review".into(),
        )
    }
}

fn changed_fields(m: &Map<String, Value>) -> BTreeSet<String> {
    m.keys()
        .filter(|k| *k != "object_id" && *k != "base_version")
        .cloned()
        .collect()
}

fn object_changed(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let deletes = ev.kind().as_str() == "object.deleted";
    object_change(state, p, ev, deletes, ev.actor().as_str())
}

/// One object change produced by `ev` on behalf of `actor` (the event's
/// own actor, or the agent whose applied transaction it is).
fn object_change(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
    deletes: bool,
    actor: &str,
) -> Result<(), ProjectionError> {
    let (Some(id), Some(base)) = (text(&p, "object_id"), text(&p, "base_version")) else {
        return Ok(());
    };
    let k = key(Entity::Object, &id);
    let Some(mut o) = get::<ObjectState>(state, &k)? else {
        return Ok(());
    };
    let mut me = step(ev, base.clone());
    me.deletes = deletes;
    me.actor = actor.to_owned();
    me.changed = changed_fields(&p).into_iter().collect();
    // A writer that already changed from this base, other than this one.
    let sibling = o
        .history
        .iter()
        .find(|s| s.base == base && s.origin_hash != me.origin_hash)
        .cloned();
    if let Some(sib) = sibling {
        if sib.device != me.device || sib.actor != me.actor {
            record_conflict(state, &mut o, &id, &sib, &me, ev)?;
        }
    }
    me.depth = o
        .history
        .iter()
        .find(|s| s.version == base)
        .map_or(o.head.depth, |s| s.depth)
        .saturating_add(1);
    let stamp = me.stamp();
    for (f, v) in p
        .iter()
        .filter(|(f, _)| *f != "base_version" && *f != "object_id")
    {
        if o.field_stamps.get(f).is_none_or(|old| *old < stamp) {
            o.record.insert(f.clone(), v.clone());
            o.field_stamps.insert(f.clone(), stamp.clone());
        }
    }
    if o.head < stamp {
        o.version = me.version.clone();
        // A tombstone is final whatever comes after it.
        if o.state != "tombstoned" {
            o.state = if deletes {
                "deleted".into()
            } else {
                "active".into()
            };
        }
        o.last_modified_by = me.actor.clone();
        o.last_device = me.device.clone();
        o.head = stamp;
    }
    o.updated_seq = me.seq;
    o.history.push(me);
    if o.history.len() > HISTORY_STEPS {
        let drop = o.history.len() - HISTORY_STEPS;
        o.history.drain(..drop);
    }
    put(state, k, &o)
}

fn record_conflict(
    state: &mut Staging,
    o: &mut ObjectState,
    id: &str,
    sib: &Step,
    me: &Step,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let mut pair = [sib.origin_hash.clone(), me.origin_hash.clone()];
    pair.sort();
    let [first, second] = pair;
    let digest = blake3::hash(format!("{id}\0{first}\0{second}").as_bytes());
    let hex = crate::ids::Digest::from_bytes(*digest.as_bytes()).to_hex();
    let conflict_id = format!("conflict:{}", hex.get(..16).unwrap_or(&hex));
    let ck = key(Entity::Conflict, &conflict_id);
    if state.get(&ck)?.is_some() {
        return Ok(());
    }
    // Order the two sides by origin hash so that every device writes the
    // same record.
    let (a, b) = if sib.origin_hash <= me.origin_hash {
        (sib, me)
    } else {
        (me, sib)
    };
    let (recommended_option, rationale) = recommend(a, b);
    let c = ConflictState {
        conflict_id: conflict_id.clone(),
        object_id: id.to_owned(),
        base_version: me.base.clone(),
        versions: vec![a.version.clone(), b.version.clone()],
        actors: vec![a.actor.clone(), b.actor.clone()],
        devices: vec![a.device.clone(), b.device.clone()],
        origin_hashes: vec![a.origin_hash.clone(), b.origin_hash.clone()],
        detected_seq: ev.seq().get(),
        options: vec![
            ConflictOption::Merge,
            ConflictOption::Fork,
            ConflictOption::Skip,
        ],
        recommended_option,
        rationale,
        selected_option: None,
        selected_by: None,
        resolved_seq: None,
    };
    o.conflicts.push(conflict_id);
    let mut counts = counters(state)?;
    counts.open_conflicts += 1;
    put(state, COUNTERS.to_vec(), &counts)?;
    put(state, ck, &c)
}

fn policy_decided(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let Some(id) = text(&p, "decision_id") else {
        return Ok(());
    };
    let object = text(&p, "object_id");
    // Only decisions about syncing (or about nothing in particular) hold
    // an object; a refused mutation refused that request only.
    let blocking = |m: &Map<String, Value>| {
        matches!(
            text(m, "effect").as_deref(),
            Some("deny") | Some("review_required")
        ) && matches!(text(m, "action").as_deref(), None | Some("sync"))
    };
    let now_blocks = blocking(&p);
    upsert(state, Entity::Decision, "decision_id", p, ev)?;
    if let Some(obj) = object {
        let ok = key(Entity::Object, &obj);
        let mut ik = vec![OBJECT_DECISION];
        ik.extend_from_slice(obj.as_bytes());
        let before: Option<String> = get(state, &ik)?;
        let was_blocking = match before {
            Some(prev) => get::<RecordState>(state, &key(Entity::Decision, &prev))?
                .is_some_and(|r| blocking(&r.record)),
            None => false,
        };
        put(state, ik, &id)?;
        if state.get(&ok)?.is_some() && was_blocking != now_blocks {
            let mut c = counters(state)?;
            if now_blocks {
                c.policy_blocked_objects += 1;
            } else {
                c.policy_blocked_objects = c.policy_blocked_objects.saturating_sub(1);
            }
            put(state, COUNTERS.to_vec(), &c)?;
        }
    }
    Ok(())
}

fn conflict_resolved(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let Some(id) = text(&p, "conflict_id") else {
        return Ok(());
    };
    let k = key(Entity::Conflict, &id);
    let Some(mut c) = get::<ConflictState>(state, &k)? else {
        return Ok(());
    };
    if c.resolved_seq.is_some() {
        return Ok(());
    }
    c.selected_option = p
        .get("selected_option")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    c.selected_by = Some(text(&p, "selected_by").unwrap_or_else(|| ev.actor().to_string()));
    c.resolved_seq = Some(ev.seq().get());
    let mut counts = counters(state)?;
    counts.open_conflicts = counts.open_conflicts.saturating_sub(1);
    put(state, COUNTERS.to_vec(), &counts)?;
    put(state, k, &c)
}

fn transaction(
    state: &mut Staging,
    p: Map<String, Value>,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    use crate::agent_txn::{transition, TxnEvent, TxnStatus};
    let (Some(event), Some(id)) = (
        TxnEvent::of_kind(ev.kind().as_str()),
        text(&p, "transaction_id"),
    ) else {
        return Ok(());
    };
    let k = key(Entity::Transaction, &id);
    let current: Option<TxnState> = get(state, &k)?;
    let from = current.as_ref().map_or(TxnStatus::Draft, |t| t.status);
    // Moves that are invalid here (possible only for events from another
    // device in an odd order) change nothing, deterministically.
    let Ok(to) = transition(from, event) else {
        return Ok(());
    };
    let mut t = current.unwrap_or_else(|| TxnState {
        transaction_id: id.clone(),
        proposal: p.clone(),
        status: TxnStatus::Draft,
        proposed_by: ev.actor().to_string(),
        decided_by: None,
        reason: None,
        policy_decision_ref: text(&p, "policy_decision_ref"),
        proposed_seq: ev.seq().get(),
        updated_seq: ev.seq().get(),
    });
    t.status = to;
    t.updated_seq = ev.seq().get();
    if event != TxnEvent::Propose {
        t.decided_by = Some(ev.actor().to_string());
        if let Some(r) = text(&p, "policy_decision_ref") {
            t.policy_decision_ref = Some(r);
        }
    }
    if event == TxnEvent::Reject {
        t.reason = text(&p, "reason");
    }
    if event == TxnEvent::Apply {
        apply_transaction(state, &t.proposal, &t.proposed_by, ev)?;
    }
    put(state, k, &t)
}

/// The changes of an applied transaction, as object changes produced by
/// the `applied` event (with the same conflict detection as direct ones).
fn apply_transaction(
    state: &mut Staging,
    proposal: &Map<String, Value>,
    proposer: &str,
    ev: &Envelope,
) -> Result<(), ProjectionError> {
    let Ok(p) =
        serde_json::from_value::<crate::agent_txn::Proposal>(Value::Object(proposal.clone()))
    else {
        return Ok(());
    };
    for id in &p.object_ids {
        let mut m: Map<String, Value> = p
            .changes
            .get(id)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        m.insert("object_id".into(), Value::String(id.clone()));
        match p.operation {
            crate::agent_txn::TxnOperation::Create => object_created(state, m, ev)?,
            op => {
                if let Some(base) = p.base_versions.get(id) {
                    m.insert("base_version".into(), base.clone());
                }
                object_change(
                    state,
                    m,
                    ev,
                    op == crate::agent_txn::TxnOperation::Delete,
                    proposer,
                )?;
            }
        }
    }
    Ok(())
}

/// Reads one transaction.
pub(crate) fn txn(state: &Staging, id: &str) -> Result<Option<TxnState>, ProjectionError> {
    get(state, &key(Entity::Transaction, id))
}

/// Reads one entity.
pub(crate) fn object(state: &Staging, id: &str) -> Result<Option<ObjectState>, ProjectionError> {
    get(state, &key(Entity::Object, id))
}

/// Reads one record-like entity.
pub(crate) fn record(
    state: &Staging,
    entity: Entity,
    id: &str,
) -> Result<Option<RecordState>, ProjectionError> {
    get(state, &key(entity, id))
}

/// Reads one conflict.
pub(crate) fn conflict(
    state: &Staging,
    id: &str,
) -> Result<Option<ConflictState>, ProjectionError> {
    get(state, &key(Entity::Conflict, id))
}

/// The latest policy decision about an object.
pub(crate) fn object_decision(
    state: &Staging,
    object: &str,
) -> Result<Option<RecordState>, ProjectionError> {
    let mut ik = vec![OBJECT_DECISION];
    ik.extend_from_slice(object.as_bytes());
    match get::<String>(state, &ik)? {
        Some(id) => record(state, Entity::Decision, &id),
        None => Ok(None),
    }
}

/// Status counters.
pub(crate) fn status_counters(state: &Staging) -> Result<Counters, ProjectionError> {
    counters(state)
}

/// Every entity of one kind, as (id, encoded record), bounded by `limit`.
pub(crate) fn list(
    state: &Staging,
    entity: Entity,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
    let tag = entity.tag();
    Ok(state
        .scan_prefix(&[tag], limit)?
        .into_iter()
        .filter_map(|(k, v)| {
            let (_, id) = k.split_first()?;
            Some((String::from_utf8_lossy(id).into_owned(), v))
        })
        .collect())
}

/// Decodes a listed record.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProjectionError> {
    codec::decode("registry record", bytes).map_err(bad)
}

/// Admission of a locally submitted draft against the registry: what the
/// payload alone cannot tell (unknown object, revoked actor, unregistered
/// schema, unknown conflict). Returns why it is refused.
pub(crate) fn admit(
    state: &Staging,
    d: &EventDraft,
) -> Result<Result<(), String>, ProjectionError> {
    if let Some(a) = record(state, Entity::Actor, d.actor.as_str())? {
        if let Some(at) = a.revoked_seq {
            return Ok(Err(format!(
                "actor {} was revoked (event {at}) and may not record events",
                d.actor
            )));
        }
    }
    let kind = d.kind.as_str();
    let checked = ["object.", "conflict.", "agent.transaction."];
    if !checked.iter().any(|prefix| kind.starts_with(prefix)) {
        return Ok(Ok(()));
    }
    let p = fields(&d.payload);
    let id = |f: &str| text(&p, f).unwrap_or_default();
    let verdict = match kind {
        "object.created" => {
            let obj = id("object_id");
            let schema = id("schema_id");
            if let Some(o) = object(state, &obj)? {
                Err(format!(
                    "object {obj} already exists (version {})",
                    o.version
                ))
            } else if record(state, Entity::Schema, &schema)?.is_none() {
                Err(format!(
                    "object {obj} names schema {schema}, which is not registered"
                ))
            } else {
                Ok(())
            }
        }
        "object.updated" | "object.deleted" | "object.tombstoned" => {
            let obj = id("object_id");
            match object(state, &obj)? {
                None => Err(format!("unknown object {obj}")),
                Some(o) if o.state == "tombstoned" => Err(format!("object {obj} is tombstoned")),
                Some(_) => Ok(()),
            }
        }
        "agent.transaction.proposed" => admit_proposal(state, &p)?,
        k if k.starts_with("agent.transaction.") => {
            let t = id("transaction_id");
            let event = crate::agent_txn::TxnEvent::of_kind(k);
            match (txn(state, &t)?, event) {
                (None, _) => Err(format!("unknown transaction {t}")),
                (Some(x), Some(e)) => match crate::agent_txn::transition(x.status, e) {
                    Err(bad) => Err(format!("transaction {t}: {bad}")),
                    Ok(_) if e == crate::agent_txn::TxnEvent::Apply => {
                        admit_proposal_objects(state, &x.proposal, true)?
                    }
                    Ok(_) => Ok(()),
                },
                (Some(_), None) => Err(format!("unknown transaction event {k}")),
            }
        }
        "conflict.resolved" => {
            let c = id("conflict_id");
            match conflict(state, &c)? {
                None => Err(format!("unknown conflict {c}")),
                Some(x) if x.resolved_seq.is_some() => {
                    Err(format!("conflict {c} is already resolved"))
                }
                Some(_) => Ok(()),
            }
        }
        _ => Ok(()),
    };
    Ok(verdict)
}

/// The facts the policy hook decides a local object mutation on, or
/// `None` when the draft is not an object mutation. Privacy class and sync
/// visibility come from the draft when it sets them, else from the object.
pub(crate) fn policy_request(
    state: &Staging,
    d: &EventDraft,
    profile: &crate::ids::ProfileId,
) -> Result<Option<crate::policy::PolicyRequest>, ProjectionError> {
    let action = match d.kind.as_str() {
        "object.created" | "object.updated" | "object.deleted" | "object.tombstoned" => {
            crate::policy::Action::Mutation
        }
        "agent.transaction.proposed" => crate::policy::Action::AgentTransaction,
        _ => return Ok(None),
    };
    let mut p = fields(&d.payload);
    if action == crate::policy::Action::AgentTransaction {
        // Decide on the first object the transaction touches.
        let first = p
            .get("object_ids")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut facts = first
            .as_ref()
            .and_then(|f| {
                p.get("changes")
                    .and_then(|c| c.get(f.as_str()))
                    .and_then(Value::as_object)
                    .cloned()
            })
            .unwrap_or_default();
        if let Some(f) = first {
            facts.insert("object_id".into(), Value::String(f));
        }
        p = facts;
    }
    let id = text(&p, "object_id");
    let current = match &id {
        Some(i) => object(state, i)?,
        None => None,
    };
    let pick = |f: &str| text(&p, f).or_else(|| current.as_ref().and_then(|o| text(&o.record, f)));
    let trust = record(state, Entity::Actor, d.actor.as_str())?
        .and_then(|a| text(&a.record, "trust_level"));
    Ok(Some(crate::policy::PolicyRequest {
        action,
        actor: d.actor.to_string(),
        actor_trust_level: trust,
        object_id: id,
        profile: pick("profile_id").unwrap_or_else(|| profile.to_string()),
        privacy_class: pick("privacy_class"),
        sync_visibility: pick("sync_visibility"),
    }))
}

fn admit_proposal(
    state: &Staging,
    p: &Map<String, Value>,
) -> Result<Result<(), String>, ProjectionError> {
    let t = text(p, "transaction_id").unwrap_or_default();
    if txn(state, &t)?.is_some() {
        return Ok(Err(format!("transaction {t} already exists")));
    }
    admit_proposal_objects(state, p, false)
}

/// Checks the objects of a proposal against the registry: updates and
/// deletes need existing objects, creations need new ids and registered
/// schemas.
fn admit_proposal_objects(
    state: &Staging,
    p: &Map<String, Value>,
    applying: bool,
) -> Result<Result<(), String>, ProjectionError> {
    let Ok(prop) = serde_json::from_value::<crate::agent_txn::Proposal>(Value::Object(p.clone()))
    else {
        return Ok(Err("the proposal does not decode".into()));
    };
    for id in &prop.object_ids {
        let existing = object(state, id)?;
        match prop.operation {
            crate::agent_txn::TxnOperation::Create => {
                if existing.is_some() {
                    return Ok(Err(format!("object {id} already exists")));
                }
                let schema = prop
                    .changes
                    .get(id)
                    .and_then(|c| c.get("schema_id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if record(state, Entity::Schema, schema)?.is_none() {
                    return Ok(Err(format!(
                        "object {id} names schema {schema:?}, which is not registered"
                    )));
                }
            }
            _ => {
                if existing.is_none() {
                    return Ok(Err(format!(
                        "unknown object {id}{}",
                        if applying {
                            " (gone since the proposal)"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
    }
    Ok(Ok(()))
}
