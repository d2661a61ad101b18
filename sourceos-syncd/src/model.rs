//! The state integrity model: typed event kinds for actors, schemas,
//! devices, profiles, objects, policy decisions and conflict resolutions,
//! with the validation each payload gets before it is appended.
//!
//! Payload field names follow the SourceOS record shapes
//! (`shared/spec/syncd-contract-examples`): one of those records, minus its
//! `schema` key, is a valid payload for the matching kind. Fields this
//! module does not interpret are kept as they came.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{EventDraft, Payload};
use crate::ids::{InvalidValue, Subject};
use crate::kinds::{payload_as, KindSpec};

/// Longest identifier accepted inside a payload, in bytes.
const MAX_ID_BYTES: usize = 256;

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "actor.registered",
        validate: actor_registered,
    },
    KindSpec {
        kind: "actor.revoked",
        validate: actor_revoked,
    },
    KindSpec {
        kind: "schema.registered",
        validate: schema_registered,
    },
    KindSpec {
        kind: "device.registered",
        validate: device_registered,
    },
    KindSpec {
        kind: "device.state_changed",
        validate: device_state_changed,
    },
    KindSpec {
        kind: "profile.registered",
        validate: profile_registered,
    },
    KindSpec {
        kind: "object.created",
        validate: object_created,
    },
    KindSpec {
        kind: "object.updated",
        validate: object_changed,
    },
    KindSpec {
        kind: "object.deleted",
        validate: object_changed,
    },
    KindSpec {
        kind: "object.tombstoned",
        validate: object_tombstoned,
    },
    KindSpec {
        kind: "policy.decided",
        validate: policy_decided,
    },
    KindSpec {
        kind: "conflict.resolved",
        validate: conflict_resolved,
    },
];

/// Effects a policy decision can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// A person must review it first.
    ReviewRequired,
}

/// Options of a conflict's decision card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictOption {
    /// Combine both versions.
    Merge,
    /// Keep both as separate objects.
    Fork,
    /// Keep the current version, drop the other.
    Skip,
}

/// Device states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Trusted, syncs.
    Trusted,
    /// Registered, not yet trusted.
    Pending,
    /// Held apart: nothing syncs to or from it.
    Quarantined,
    /// No longer trusted.
    Revoked,
}

#[derive(Deserialize)]
struct ActorIn {
    actor_id: String,
    #[serde(default)]
    actor_type: Option<String>,
    #[serde(default)]
    trust_level: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly<T> {
    #[serde(flatten)]
    inner: T,
}

#[derive(Deserialize)]
struct ActorRevokedIn {
    actor_id: String,
}

#[derive(Deserialize)]
struct SchemaIn {
    schema_id: String,
    object_type: String,
    schema_version: String,
    #[serde(default)]
    required_fields: Vec<String>,
}

#[derive(Deserialize)]
struct DeviceIn {
    device_id: String,
    #[serde(default)]
    device_state: Option<DeviceState>,
}

#[derive(Deserialize)]
struct DeviceStateIn {
    device_id: String,
    device_state: DeviceState,
}

#[derive(Deserialize)]
struct ProfileIn {
    profile_id: String,
}

#[derive(Deserialize)]
struct ObjectIn {
    object_id: String,
    object_type: String,
    schema_id: String,
}

#[derive(Deserialize)]
struct ObjectChangeIn {
    object_id: String,
    base_version: String,
}

#[derive(Deserialize)]
struct ObjectTombIn {
    object_id: String,
}

#[derive(Deserialize)]
struct PolicyIn {
    decision_id: String,
    effect: Effect,
    policy_id: String,
}

#[derive(Deserialize)]
struct ResolutionIn {
    conflict_id: String,
    selected_option: ConflictOption,
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
        return Err(format!("payload.{field} contains {c:?}; identifiers use ASCII letters, digits and . _ - : / @ + #"));
    }
    Ok(())
}

/// The subject of a record event is the record's id: filled in when
/// absent, and it must agree when present.
fn subject_is(draft: &mut EventDraft, field: &str, id: &str) -> Result<(), String> {
    check_id(field, id)?;
    match &draft.subject {
        Some(s) if s.as_str() != id => {
            Err(format!("subject {s} differs from payload.{field} {id}"))
        }
        Some(_) => Ok(()),
        None => {
            draft.subject = Some(Subject::new(id).map_err(|e: InvalidValue| e.to_string())?);
            Ok(())
        }
    }
}

fn actor_registered(d: &mut EventDraft) -> Result<(), String> {
    let p: IdOnly<ActorIn> = payload_as(d)?;
    for (f, v) in [
        ("actor_type", &p.inner.actor_type),
        ("trust_level", &p.inner.trust_level),
    ] {
        if let Some(v) = v {
            check_id(f, v)?;
        }
    }
    subject_is(d, "actor_id", &p.inner.actor_id)
}

fn actor_revoked(d: &mut EventDraft) -> Result<(), String> {
    let p: ActorRevokedIn = payload_as(d)?;
    subject_is(d, "actor_id", &p.actor_id)
}

fn schema_registered(d: &mut EventDraft) -> Result<(), String> {
    let p: SchemaIn = payload_as(d)?;
    check_id("object_type", &p.object_type)?;
    check_id("schema_version", &p.schema_version)?;
    for f in &p.required_fields {
        if f.is_empty() {
            return Err("payload.required_fields holds an empty name".into());
        }
    }
    subject_is(d, "schema_id", &p.schema_id)
}

fn device_registered(d: &mut EventDraft) -> Result<(), String> {
    let p: DeviceIn = payload_as(d)?;
    let _ = p.device_state;
    subject_is(d, "device_id", &p.device_id)
}

fn device_state_changed(d: &mut EventDraft) -> Result<(), String> {
    let p: DeviceStateIn = payload_as(d)?;
    let _ = p.device_state;
    subject_is(d, "device_id", &p.device_id)
}

fn profile_registered(d: &mut EventDraft) -> Result<(), String> {
    let p: ProfileIn = payload_as(d)?;
    subject_is(d, "profile_id", &p.profile_id)
}

fn object_created(d: &mut EventDraft) -> Result<(), String> {
    let p: ObjectIn = payload_as(d)?;
    check_id("object_type", &p.object_type)?;
    check_id("schema_id", &p.schema_id)?;
    subject_is(d, "object_id", &p.object_id)
}

fn object_changed(d: &mut EventDraft) -> Result<(), String> {
    let p: ObjectChangeIn = payload_as(d)?;
    check_id("base_version", &p.base_version)?;
    subject_is(d, "object_id", &p.object_id)
}

fn object_tombstoned(d: &mut EventDraft) -> Result<(), String> {
    let p: ObjectTombIn = payload_as(d)?;
    subject_is(d, "object_id", &p.object_id)
}

fn policy_decided(d: &mut EventDraft) -> Result<(), String> {
    let p: PolicyIn = payload_as(d)?;
    check_id("policy_id", &p.policy_id)?;
    if p.decision_id.starts_with("urn:srcos:policy-decision:") {
        return Err("payload.decision_id uses the prefix urn:srcos:policy-decision:; decisions are urn:srcos:decision:<id>".into());
    }
    let _ = p.effect;
    subject_is(d, "decision_id", &p.decision_id)
}

fn conflict_resolved(d: &mut EventDraft) -> Result<(), String> {
    let p: ResolutionIn = payload_as(d)?;
    let _ = p.selected_option;
    subject_is(d, "conflict_id", &p.conflict_id)
}

/// A payload's fields as a map (empty when there is none).
pub(crate) fn fields(p: &Payload) -> Map<String, Value> {
    p.as_map().cloned().unwrap_or_default()
}
