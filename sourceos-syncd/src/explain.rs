//! Answers about one object, from projections only: what it is, which
//! schema governs it, who last changed it, which device and profile own it,
//! whether it may leave this device (the sync plan) and why not, which
//! conflicts exist, what can be repaired automatically, what needs a
//! person, what is durable and what is rebuildable, and how to prove a
//! restore.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::projection::registry::{self, ConflictState, Entity, ObjectState, RecordState, Step};
use crate::projection::{ProjectionError, Staging};
use crate::store::Store;

/// Objects listed at most by one listing call.
pub const MAX_LISTED: usize = 10_000;

/// Why an object may not leave this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// Stable code: `policy_denied`, `policy_review_required`,
    /// `local_only`, `revoked_actor`, `quarantined_device`,
    /// `unresolved_conflict`, `unknown_schema`.
    pub code: &'static str,
    /// Explanation naming the decision, actor, device, conflict or schema.
    pub reason: String,
}

/// The sync plan of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncPlan {
    /// Whether the object may leave this device.
    pub may_sync: bool,
    /// To which scope (its sync visibility), when it may.
    pub scope: Option<String>,
    /// Why not, when it may not.
    pub blocked_by: Vec<Blocker>,
}

/// A conflict as shown to people and programs.
pub type ConflictView = ConflictState;

/// The answers about one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The object id.
    pub object_id: String,
    /// What it is: its record as last written.
    pub record: Map<String, Value>,
    /// Its type.
    pub object_type: Option<String>,
    /// `active`, `deleted` or `tombstoned`.
    pub state: String,
    /// Opaque current version; updates name it as `base_version`.
    pub version: String,
    /// Which schema governs it, and whether that schema is registered.
    pub schema: SchemaAnswer,
    /// Who created it.
    pub created_by: String,
    /// Who or what last changed it, on which device, at which event.
    pub last_changed: LastChange,
    /// Which device and profile own it.
    pub owner_device: String,
    /// Owning profile.
    pub owner_profile: Option<String>,
    /// Privacy class.
    pub privacy_class: Option<String>,
    /// Sync visibility.
    pub sync_visibility: Option<String>,
    /// Retention class.
    pub retention_class: Option<String>,
    /// Content hash, when given.
    pub content_hash: Option<String>,
    /// Is it safe to sync, and if not, why.
    pub sync_plan: SyncPlan,
    /// The latest policy decision about it.
    pub policy_decision: Option<Map<String, Value>>,
    /// Conflicts involving it.
    pub conflicts: Vec<ConflictView>,
    /// What syncd can repair by itself.
    pub repairable_automatically: Vec<String>,
    /// What needs a person.
    pub needs_human_review: Vec<String>,
    /// What is durable and what is rebuildable.
    pub durability: Durability,
    /// How to prove a restore.
    pub restore_proof: RestoreProof,
    /// Recent changes, oldest first.
    pub history: Vec<Step>,
}

/// The schema answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaAnswer {
    /// Schema id named by the object.
    pub schema_id: Option<String>,
    /// Whether it is registered here.
    pub registered: bool,
    /// Its version, when registered.
    pub schema_version: Option<String>,
}

/// The last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastChange {
    /// Actor.
    pub actor: String,
    /// Device.
    pub device: String,
    /// Local event sequence.
    pub seq: u64,
}

/// Durable versus rebuildable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Durability {
    /// Durable: the events about the object, in the hash-chained log.
    pub durable: String,
    /// Rebuildable: everything shown here, from the log.
    pub rebuildable: String,
}

/// Restore proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreProof {
    /// Head sequence now.
    pub head_seq: u64,
    /// Head hash now: a restored home proves itself by the same hash.
    pub head_hash: String,
    /// The command that proves it.
    pub verify_with: String,
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Computes the sync plan of an object from registered state.
pub(crate) fn plan(state: &Staging, o: &ObjectState) -> Result<SyncPlan, ProjectionError> {
    let mut blocked_by = Vec::new();
    let id = text(&o.record, "object_id").unwrap_or_default();
    let about_sync =
        |d: &RecordState| matches!(text(&d.record, "action").as_deref(), None | Some("sync"));
    if let Some(d) = registry::object_decision(state, &id)?.filter(about_sync) {
        let decision = text(&d.record, "decision_id").unwrap_or_default();
        match text(&d.record, "effect").as_deref() {
            Some("deny") => blocked_by.push(Blocker {
                code: "policy_denied",
                reason: format!("policy decision {decision} denies it"),
            }),
            Some("review_required") => blocked_by.push(Blocker {
                code: "policy_review_required",
                reason: format!("policy decision {decision} requires review first"),
            }),
            _ => {}
        }
    }
    let visibility = text(&o.record, "sync_visibility");
    if matches!(
        visibility.as_deref(),
        Some("local_only") | Some("local") | Some("device")
    ) {
        blocked_by.push(Blocker {
            code: "local_only",
            reason: format!(
                "its sync visibility is {}",
                visibility.clone().unwrap_or_default()
            ),
        });
    }
    if let Some(a) = registry::record(state, Entity::Actor, &o.last_modified_by)? {
        if let Some(at) = a.revoked_seq {
            blocked_by.push(Blocker {
                code: "revoked_actor",
                reason: format!(
                    "its last change is by {}, revoked at event {at}",
                    o.last_modified_by
                ),
            });
        }
    }
    for device in [&o.owner_device, &o.last_device] {
        if let Some(d) = registry::record(state, Entity::Device, device)? {
            let st = text(&d.record, "device_state");
            if matches!(st.as_deref(), Some("quarantined") | Some("revoked")) {
                blocked_by.push(Blocker {
                    code: "quarantined_device",
                    reason: format!("device {device} is {}", st.unwrap_or_default()),
                });
                break;
            }
        }
    }
    for c in &o.conflicts {
        if let Some(cs) = registry::conflict(state, c)? {
            if cs.resolved_seq.is_none() {
                blocked_by.push(Blocker {
                    code: "unresolved_conflict",
                    reason: format!("conflict {c} is not resolved"),
                });
            }
        }
    }
    let schema = text(&o.record, "schema_id").unwrap_or_default();
    if registry::record(state, Entity::Schema, &schema)?.is_none() {
        blocked_by.push(Blocker {
            code: "unknown_schema",
            reason: format!("schema {schema} is not registered here"),
        });
    }
    Ok(SyncPlan {
        may_sync: blocked_by.is_empty(),
        scope: if blocked_by.is_empty() {
            Some(visibility.unwrap_or_else(|| "profile".into()))
        } else {
            None
        },
        blocked_by,
    })
}

/// Explains one object; `None` when it is unknown.
pub fn explain(store: &Store, object_id: &str) -> Result<Option<Explanation>, ProjectionError> {
    let (head_seq, head_hash) = store
        .head()
        .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
    store.with_registry(|state| {
        let Some(o) = registry::object(state, object_id)? else {
            return Ok(None);
        };
        let schema_id = text(&o.record, "schema_id");
        let schema: Option<RecordState> = match &schema_id {
            Some(s) => registry::record(state, Entity::Schema, s)?,
            None => None,
        };
        let sync_plan = plan(state, &o)?;
        let mut conflicts = Vec::new();
        for c in &o.conflicts {
            if let Some(cs) = registry::conflict(state, c)? {
                conflicts.push(cs);
            }
        }
        let mut needs_human_review: Vec<String> = conflicts
            .iter()
            .filter(|c| c.resolved_seq.is_none())
            .map(|c| format!("resolve {} (recommended: {:?})", c.conflict_id, c.recommended_option).to_lowercase())
            .collect();
        for b in &sync_plan.blocked_by {
            if matches!(b.code, "policy_review_required" | "policy_denied" | "revoked_actor" | "quarantined_device") {
                needs_human_review.push(b.reason.clone());
            }
        }
        let policy_decision = registry::object_decision(state, object_id)?.map(|d| d.record);
        let last = o.history.last();
        Ok(Some(Explanation {
            object_id: object_id.to_owned(),
            object_type: text(&o.record, "object_type"),
            privacy_class: text(&o.record, "privacy_class"),
            sync_visibility: text(&o.record, "sync_visibility"),
            retention_class: text(&o.record, "retention_class"),
            content_hash: text(&o.record, "content_hash"),
            owner_profile: text(&o.record, "profile_id"),
            state: o.state.clone(),
            version: o.version.clone(),
            schema: SchemaAnswer {
                registered: schema.is_some(),
                schema_version: schema.as_ref().and_then(|s| text(&s.record, "schema_version")),
                schema_id,
            },
            created_by: o.created_by.clone(),
            last_changed: LastChange {
                actor: o.last_modified_by.clone(),
                device: o.last_device.clone(),
                seq: last.map_or(o.updated_seq, |s| s.seq),
            },
            owner_device: o.owner_device.clone(),
            sync_plan,
            policy_decision,
            conflicts,
            repairable_automatically: vec![
                "derived state about this object (registry, indexes) is rebuilt from the log by `syncd doctor --repair`".into(),
            ],
            needs_human_review,
            durability: Durability {
                durable: format!(
                    "the events about {object_id} in the hash-chained log (`syncd log --subject {object_id}`)"
                ),
                rebuildable: "this explanation and every registry record it is built from".into(),
            },
            restore_proof: RestoreProof {
                head_seq,
                head_hash: head_hash.to_string(),
                verify_with: format!("syncd verify --expect-head {head_hash}"),
            },
            history: o.history.clone(),
            record: o.record,
        }))
    })?
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectSummary {
    /// Id.
    pub object_id: String,
    /// Type.
    pub object_type: Option<String>,
    /// State.
    pub state: String,
    /// Version.
    pub version: String,
    /// Last changed by.
    pub last_modified_by: String,
    /// Whether it may sync.
    pub may_sync: bool,
    /// Open conflicts.
    pub open_conflicts: usize,
}

/// Lists objects (at most [`MAX_LISTED`]).
pub fn objects(store: &Store) -> Result<Vec<ObjectSummary>, ProjectionError> {
    store.with_registry(|state| {
        let mut out = Vec::new();
        for (id, bytes) in registry::list(state, Entity::Object, MAX_LISTED)? {
            let o: ObjectState = registry::decode(&bytes)?;
            let plan = plan(state, &o)?;
            let open = plan
                .blocked_by
                .iter()
                .filter(|b| b.code == "unresolved_conflict")
                .count();
            out.push(ObjectSummary {
                object_id: id,
                object_type: text(&o.record, "object_type"),
                state: o.state,
                version: o.version,
                last_modified_by: o.last_modified_by,
                may_sync: plan.may_sync,
                open_conflicts: open,
            });
        }
        Ok(out)
    })?
}

/// Which registry to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Actors.
    Actors,
    /// Schemas.
    Schemas,
    /// Devices.
    Devices,
    /// Profiles.
    Profiles,
}

/// Lists registered records of one kind, as their record fields plus
/// `revoked` for actors.
pub fn records(
    store: &Store,
    kind: RecordKind,
) -> Result<Vec<Map<String, Value>>, ProjectionError> {
    let entity = match kind {
        RecordKind::Actors => Entity::Actor,
        RecordKind::Schemas => Entity::Schema,
        RecordKind::Devices => Entity::Device,
        RecordKind::Profiles => Entity::Profile,
    };
    store.with_registry(|state| {
        let mut out = Vec::new();
        for (_, bytes) in registry::list(state, entity, MAX_LISTED)? {
            let r: RecordState = registry::decode(&bytes)?;
            let mut m = r.record;
            if entity == Entity::Actor {
                m.insert("revoked".into(), Value::Bool(r.revoked_seq.is_some()));
            }
            m.insert("registered_seq".into(), r.registered_seq.into());
            out.push(m);
        }
        Ok(out)
    })?
}

/// Lists conflicts.
pub fn conflicts(store: &Store) -> Result<Vec<ConflictView>, ProjectionError> {
    store.with_registry(|state| {
        let mut out = Vec::new();
        for (_, bytes) in registry::list(state, Entity::Conflict, MAX_LISTED)? {
            out.push(registry::decode::<ConflictState>(&bytes)?);
        }
        Ok(out)
    })?
}

/// Lists agent object transactions.
pub fn transactions(store: &Store) -> Result<Vec<registry::TxnState>, ProjectionError> {
    store.with_registry(|state| {
        let mut out = Vec::new();
        for (_, bytes) in registry::list(state, Entity::Transaction, MAX_LISTED)? {
            out.push(registry::decode::<registry::TxnState>(&bytes)?);
        }
        Ok(out)
    })?
}

/// One agent object transaction.
pub fn transaction(store: &Store, id: &str) -> Result<Option<registry::TxnState>, ProjectionError> {
    store.with_registry(|state| registry::txn(state, id))?
}
