//! The workspace planner and submitter: compares a scan with the file
//! objects the registry holds for the workspace, turns the differences
//! into event drafts, and appends them in bounded chunks.
//!
//! The planner is a pure function of (scan, tracked state, alias), so the
//! same inputs always give the same drafts and the same idempotency keys.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;
use serde_json::{json, Map, Value};
use sourceos_syncd::{
    self as core, ActorId, AppendOutcome, EventDraft, EventKind, IdempotencyKey, Payload, Store,
    MAX_PAYLOAD_BYTES, MAX_SUBMISSION_EVENTS,
};

use super::{
    Scan, SkipReason, Skipped, TrackError, WorkspaceAlias, FILE_OBJECT_TYPE, FILE_SCHEMA_ID,
    FILE_SCHEMA_VERSION, TRACK_ACTOR,
};

/// Skipped paths listed at most in a report; the rest are counted.
pub const MAX_SKIPS_LISTED: usize = 1_000;

/// Lifecycle state of a tracked object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Present.
    Active,
    /// Deleted (a later update brings it back).
    Deleted,
    /// Tombstoned: may not change any more.
    Tombstoned,
    /// A state this adapter does not know; left alone.
    Other(String),
}

impl Lifecycle {
    fn parse(s: &str) -> Self {
        match s {
            "active" => Lifecycle::Active,
            "deleted" => Lifecycle::Deleted,
            "tombstoned" => Lifecycle::Tombstoned,
            other => Lifecycle::Other(other.to_owned()),
        }
    }
}

/// What the registry holds about one file object of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedFile {
    /// Object id.
    pub object_id: String,
    /// Recorded `path`.
    pub path: Option<String>,
    /// Recorded `size`.
    pub size: Option<u64>,
    /// Recorded `content_hash` (`blake3:<hex>`).
    pub content_hash: Option<String>,
    /// Current version: the next change names it as `base_version`.
    pub version: String,
    /// Lifecycle state.
    pub state: Lifecycle,
}

/// What the registry holds about a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackedState {
    /// Whether [`FILE_SCHEMA_ID`] is registered.
    pub schema_registered: bool,
    /// The workspace's file objects, by object id.
    pub files: BTreeMap<String, TrackedFile>,
}

/// Kinds of planned changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new file: `object.created`.
    Created,
    /// Changed content or size, or a deleted file that is back:
    /// `object.updated`.
    Updated,
    /// A file that disappeared: `object.deleted`.
    Deleted,
}

impl ChangeKind {
    fn event_kind(self) -> &'static str {
        match self {
            ChangeKind::Created => "object.created",
            ChangeKind::Updated => "object.updated",
            ChangeKind::Deleted => "object.deleted",
        }
    }
}

/// One planned change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    /// What kind.
    pub kind: ChangeKind,
    /// The object.
    pub object_id: String,
    /// The file's path.
    pub path: String,
    /// New size (absent for a deletion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// New content hash (absent for a deletion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// The version changed from (absent for a creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_version: Option<String>,
    /// The event to append.
    #[serde(skip)]
    pub draft: EventDraft,
}

/// The plan of one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The workspace.
    pub alias: WorkspaceAlias,
    /// Its directory.
    pub root: std::path::PathBuf,
    /// Registration of the file schema, when it is not registered yet.
    pub schema: Option<EventDraft>,
    /// Changes, in path order (creations and updates), then deletions.
    pub changes: Vec<PlannedChange>,
    /// Files whose record already matches.
    pub unchanged: u64,
    /// Paths not recorded, and why.
    pub skipped: Vec<Skipped>,
    /// Paths that are not UTF-8 and were converted lossily.
    pub lossy_paths: u64,
}

/// What a scan did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackReport {
    /// `workspace:<alias>`.
    pub workspace_id: String,
    /// The workspace directory.
    pub root: String,
    /// Whether this is a plan only: nothing was appended.
    pub dry_run: bool,
    /// Whether the file schema was (or would be) registered by this run.
    pub schema_registered: bool,
    /// Files created.
    pub created: u64,
    /// Files updated.
    pub updated: u64,
    /// Files deleted.
    pub deleted: u64,
    /// Files unchanged.
    pub unchanged: u64,
    /// Changes already in the log under the same idempotency key (a rerun
    /// after an interrupted run); nothing was appended for them.
    pub already_recorded: u64,
    /// Paths skipped, in all.
    pub skipped_count: u64,
    /// Paths skipped, with reasons (at most [`MAX_SKIPS_LISTED`]).
    pub skipped: Vec<Skipped>,
    /// Paths that are not UTF-8, recorded with U+FFFD in `path` and
    /// `path_lossy: true`.
    pub lossy_paths: u64,
    /// The planned changes (dry run only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<PlannedChange>,
    /// Log head after the run.
    pub head_seq: u64,
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Reads what the registry holds about the workspace `alias`.
///
/// Objects are found in the object listing; when that listing is full
/// ([`core::MAX_LISTED`]), the log is read for creations of this
/// workspace's objects as well, so that no deletion is missed.
pub fn load_tracked(store: &Store, alias: &WorkspaceAlias) -> Result<TrackedState, TrackError> {
    let schemas = core::records(store, core::RecordKind::Schemas)?;
    let schema_registered = schemas
        .iter()
        .any(|r| text(r, "schema_id").as_deref() == Some(FILE_SCHEMA_ID));
    let prefix = alias.object_prefix();
    let listed = core::objects(store)?;
    let mut ids: BTreeSet<String> = listed
        .iter()
        .filter(|o| o.object_id.starts_with(&prefix))
        .map(|o| o.object_id.clone())
        .collect();
    if listed.len() >= core::MAX_LISTED {
        let first = core::Seq::new(1).map_err(|e| TrackError::Head(e.to_string()))?;
        for ev in store.scan(first) {
            let ev = ev?;
            if ev.kind().as_str() != "object.created" {
                continue;
            }
            if let Some(s) = ev.subject().filter(|s| s.as_str().starts_with(&prefix)) {
                ids.insert(s.as_str().to_owned());
            }
        }
    }
    let mut files = BTreeMap::new();
    for id in ids {
        let Some(x) = core::explain(store, &id)? else {
            continue;
        };
        files.insert(
            id.clone(),
            TrackedFile {
                object_id: id,
                path: text(&x.record, "path"),
                size: x.record.get("size").and_then(Value::as_u64),
                content_hash: x.content_hash.clone(),
                version: x.version.clone(),
                state: Lifecycle::parse(&x.state),
            },
        );
    }
    Ok(TrackedState {
        schema_registered,
        files,
    })
}

/// The idempotency key of one change: blake3 over the length-prefixed
/// (workspace, change kind, path key, content hash, base version).
fn idempotency_key(
    alias: &WorkspaceAlias,
    kind: &str,
    object_id: &str,
    content: Option<&str>,
    base: Option<&str>,
) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        "sourceos-syncd/workspace-track/v1",
        alias.as_str(),
        kind,
        object_id,
        content.unwrap_or("-"),
        base.unwrap_or("-"),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("workspace-track:{}", h.finalize().to_hex())
}

/// Builds and validates one draft.
fn draft(kind: &str, payload: Map<String, Value>, key: String) -> Result<EventDraft, SkipReason> {
    let bytes = serde_json::to_string(&payload).map_or(usize::MAX, |t| t.len());
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(SkipReason::PayloadTooLarge { bytes });
    }
    let invalid = |e: core::InvalidValue| SkipReason::Invalid {
        reason: e.to_string(),
    };
    let mut d = EventDraft::new(
        ActorId::new(TRACK_ACTOR).map_err(invalid)?,
        EventKind::new(kind).map_err(invalid)?,
    );
    d.idempotency_key = Some(IdempotencyKey::new(key).map_err(invalid)?);
    d.payload = Payload::new(Value::Object(payload)).map_err(|e| match e {
        core::InvalidValue::TooLong { len, .. } => SkipReason::PayloadTooLarge { bytes: len },
        other => invalid(other),
    })?;
    core::validate_kind(&mut d).map_err(|reason| SkipReason::Invalid { reason })?;
    Ok(d)
}

fn schema_draft() -> Result<EventDraft, SkipReason> {
    let payload = json!({
        "schema_id": FILE_SCHEMA_ID,
        "object_type": FILE_OBJECT_TYPE,
        "schema_version": FILE_SCHEMA_VERSION,
        "required_fields": ["object_id", "path", "size", "content_hash", "workspace_id"],
    });
    let Value::Object(map) = payload else {
        return Err(SkipReason::Invalid {
            reason: "schema payload is not an object".into(),
        });
    };
    draft(
        "schema.registered",
        map,
        format!("workspace-track:{FILE_SCHEMA_ID}"),
    )
}

/// Whether `path` is, or lies under, a path whose state is unknown.
fn protected(path: &str, unknown: &[&str]) -> bool {
    unknown.iter().any(|u| {
        u.is_empty()
            || path == *u
            || path
                .strip_prefix(*u)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Compares a scan with the tracked state of its workspace.
pub fn plan(scan: &Scan, tracked: &TrackedState, alias: &WorkspaceAlias) -> Plan {
    let mut skipped = scan.skipped.clone();
    let mut changes = Vec::new();
    let mut unchanged = 0u64;
    let mut lossy_paths = 0u64;
    let mut seen: HashSet<String> = HashSet::with_capacity(scan.files.len());
    let schema = if tracked.schema_registered {
        None
    } else {
        match schema_draft() {
            Ok(d) => Some(d),
            Err(reason) => {
                skipped.push(Skipped {
                    path: String::new(),
                    reason,
                });
                None
            }
        }
    };
    for f in &scan.files {
        let object_id = alias.object_id(&f.path_key);
        seen.insert(object_id.clone());
        if f.path_lossy {
            lossy_paths += 1;
        }
        let content_hash = format!("blake3:{}", f.blake3);
        let (kind, base) = match tracked.files.get(&object_id) {
            None => (ChangeKind::Created, None),
            Some(t) => match &t.state {
                Lifecycle::Tombstoned | Lifecycle::Other(_) => {
                    skipped.push(Skipped {
                        path: f.path.clone(),
                        reason: SkipReason::Tombstoned { object_id },
                    });
                    continue;
                }
                _ if t.path.as_deref() != Some(f.path.as_str()) => {
                    skipped.push(Skipped {
                        path: f.path.clone(),
                        reason: SkipReason::IdCollision {
                            object_id,
                            recorded_path: t.path.clone().unwrap_or_default(),
                        },
                    });
                    continue;
                }
                Lifecycle::Active
                    if t.size == Some(f.size)
                        && t.content_hash.as_deref() == Some(content_hash.as_str()) =>
                {
                    unchanged += 1;
                    continue;
                }
                Lifecycle::Active | Lifecycle::Deleted => {
                    (ChangeKind::Updated, Some(t.version.clone()))
                }
            },
        };
        let mut payload = Map::new();
        payload.insert("object_id".into(), object_id.clone().into());
        match &base {
            None => {
                payload.insert("object_type".into(), FILE_OBJECT_TYPE.into());
                payload.insert("schema_id".into(), FILE_SCHEMA_ID.into());
                payload.insert("workspace_id".into(), alias.workspace_id().into());
                payload.insert("path".into(), f.path.clone().into());
                if f.path_lossy {
                    payload.insert("path_lossy".into(), true.into());
                }
            }
            Some(b) => {
                payload.insert("base_version".into(), b.clone().into());
            }
        }
        payload.insert("size".into(), f.size.into());
        payload.insert("content_hash".into(), content_hash.clone().into());
        let key = idempotency_key(
            alias,
            kind.event_kind(),
            &object_id,
            Some(&content_hash),
            base.as_deref(),
        );
        match draft(kind.event_kind(), payload, key) {
            Ok(d) => changes.push(PlannedChange {
                kind,
                object_id,
                path: f.path.clone(),
                size: Some(f.size),
                content_hash: Some(content_hash),
                base_version: base,
                draft: d,
            }),
            Err(reason) => skipped.push(Skipped {
                path: f.path.clone(),
                reason,
            }),
        }
    }
    let unknown: Vec<&str> = scan
        .skipped
        .iter()
        .filter(|s| s.reason.keeps_record())
        .map(|s| s.path.as_str())
        .collect();
    for t in tracked.files.values() {
        if t.state != Lifecycle::Active || seen.contains(&t.object_id) {
            continue;
        }
        let path = t.path.clone().unwrap_or_default();
        if protected(&path, &unknown) {
            continue;
        }
        let mut payload = Map::new();
        payload.insert("object_id".into(), t.object_id.clone().into());
        payload.insert("base_version".into(), t.version.clone().into());
        let key = idempotency_key(
            alias,
            "object.deleted",
            &t.object_id,
            None,
            Some(&t.version),
        );
        match draft("object.deleted", payload, key) {
            Ok(d) => changes.push(PlannedChange {
                kind: ChangeKind::Deleted,
                object_id: t.object_id.clone(),
                path,
                size: None,
                content_hash: None,
                base_version: Some(t.version.clone()),
                draft: d,
            }),
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    Plan {
        alias: alias.clone(),
        root: scan.root.clone(),
        schema,
        changes,
        unchanged,
        skipped,
        lossy_paths,
    }
}

impl Plan {
    fn count(&self, kind: ChangeKind) -> u64 {
        self.changes.iter().filter(|c| c.kind == kind).count() as u64
    }

    /// The report of this plan as a dry run (nothing appended), at log
    /// head `head_seq`.
    pub fn dry_run_report(&self, head_seq: u64) -> TrackReport {
        let mut r = report_base(self, true, head_seq);
        r.schema_registered = self.schema.is_some();
        r.created = self.count(ChangeKind::Created);
        r.updated = self.count(ChangeKind::Updated);
        r.deleted = self.count(ChangeKind::Deleted);
        r.changes = self.changes.clone();
        r
    }
}

fn report_base(plan: &Plan, dry_run: bool, head_seq: u64) -> TrackReport {
    TrackReport {
        workspace_id: plan.alias.workspace_id(),
        root: plan.root.display().to_string(),
        dry_run,
        schema_registered: false,
        created: 0,
        updated: 0,
        deleted: 0,
        unchanged: plan.unchanged,
        already_recorded: 0,
        skipped_count: plan.skipped.len() as u64,
        skipped: plan
            .skipped
            .iter()
            .take(MAX_SKIPS_LISTED)
            .cloned()
            .collect(),
        lossy_paths: plan.lossy_paths,
        changes: Vec::new(),
        head_seq,
    }
}

fn head(store: &Store) -> Result<u64, TrackError> {
    store.head().map(|(seq, _)| seq).map_err(TrackError::Head)
}

/// Appends a plan: the schema registration first (alone, so that a
/// refusal stops before any file), then the changes in chunks of at most
/// [`MAX_SUBMISSION_EVENTS`]. A refused or policy-blocked change is
/// skipped and reported; the others are still recorded.
pub fn submit(store: &Store, plan: Plan) -> Result<TrackReport, TrackError> {
    let mut report = report_base(&plan, false, 0);
    let Plan {
        schema,
        changes,
        mut skipped,
        ..
    } = plan;
    if let Some(d) = schema {
        let out = store.append(d)?;
        match out {
            AppendOutcome::Appended { .. } => report.schema_registered = true,
            AppendOutcome::Duplicate { .. } => {}
            AppendOutcome::Rejected { reason } | AppendOutcome::PolicyBlocked { reason, .. } => {
                return Err(TrackError::SchemaRefused { reason })
            }
        }
    }
    let mut rest = changes.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<PlannedChange> = rest.by_ref().take(MAX_SUBMISSION_EVENTS).collect();
        let drafts: Vec<EventDraft> = chunk.iter().map(|c| c.draft.clone()).collect();
        let sent = drafts.len();
        let outcomes = store.append_many(drafts)?;
        if outcomes.len() != sent {
            return Err(TrackError::Outcomes {
                sent,
                got: outcomes.len(),
            });
        }
        for (c, out) in chunk.into_iter().zip(outcomes) {
            match out {
                AppendOutcome::Appended { .. } => match c.kind {
                    ChangeKind::Created => report.created += 1,
                    ChangeKind::Updated => report.updated += 1,
                    ChangeKind::Deleted => report.deleted += 1,
                },
                AppendOutcome::Duplicate { .. } => report.already_recorded += 1,
                AppendOutcome::Rejected { reason } => skipped.push(Skipped {
                    path: c.path,
                    reason: SkipReason::Rejected { reason },
                }),
                AppendOutcome::PolicyBlocked {
                    decision_id,
                    reason,
                    ..
                } => skipped.push(Skipped {
                    path: c.path,
                    reason: SkipReason::PolicyBlocked {
                        decision_id,
                        reason,
                    },
                }),
            }
        }
    }
    report.skipped_count = skipped.len() as u64;
    report.skipped = skipped.into_iter().take(MAX_SKIPS_LISTED).collect();
    report.head_seq = head(store)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{scan, ScanOptions};
    use std::fs;
    use std::path::Path;

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn alias() -> WorkspaceAlias {
        WorkspaceAlias::new("ws").unwrap()
    }

    fn store(home: &Path) -> Store {
        Store::init(
            home,
            core::InitOptions {
                device: Some(core::DeviceId::new("device:test-a").unwrap()),
                profile: core::ProfileId::new("profile:local-dev").unwrap(),
                created_at: None,
            },
            core::OpenOptions::default(),
        )
        .unwrap()
    }

    fn kinds(p: &Plan) -> Vec<(ChangeKind, &str)> {
        p.changes
            .iter()
            .map(|c| (c.kind, c.path.as_str()))
            .collect()
    }

    fn track(store: &Store, dir: &Path) -> TrackReport {
        let s = scan(dir, &ScanOptions::default()).unwrap();
        let t = load_tracked(store, &alias()).unwrap();
        submit(store, plan(&s, &t, &alias())).unwrap()
    }

    #[test]
    fn first_plan_registers_the_schema_and_creates_every_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", b"1");
        write(dir.path(), "d/b", b"");
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let p = plan(&s, &TrackedState::default(), &alias());
        assert!(p.schema.is_some());
        assert_eq!(
            kinds(&p),
            [(ChangeKind::Created, "a"), (ChangeKind::Created, "d/b")]
        );
        let c = &p.changes[0];
        assert_eq!(
            c.object_id,
            format!("object:file:ws:{}", super::super::path_key(b"a"))
        );
        let m = c.draft.payload.as_map().unwrap();
        assert_eq!(m["path"], "a");
        assert_eq!(m["size"], 1);
        assert_eq!(m["workspace_id"], "workspace:ws");
        assert_eq!(m["schema_id"], FILE_SCHEMA_ID);
        assert_eq!(m["object_type"], "file");
        assert_eq!(
            m["content_hash"],
            format!("blake3:{}", blake3::hash(b"1").to_hex())
        );
        assert_eq!(c.draft.subject.as_ref().unwrap().as_str(), c.object_id);
        // The same inputs give the same keys: a rerun is idempotent.
        let again = plan(&s, &TrackedState::default(), &alias());
        assert_eq!(
            again.changes[0].draft.idempotency_key,
            c.draft.idempotency_key
        );
    }

    fn tracked(path: &str, content: &[u8], state: Lifecycle) -> (String, TrackedFile) {
        let id = alias().object_id(&super::super::path_key(path.as_bytes()));
        (
            id.clone(),
            TrackedFile {
                object_id: id,
                path: Some(path.into()),
                size: Some(content.len() as u64),
                content_hash: Some(format!("blake3:{}", blake3::hash(content).to_hex())),
                version: "v:0123456789abcdef".into(),
                state,
            },
        )
    }

    #[test]
    fn plans_updates_deletions_and_nothing_for_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "same", b"s");
        write(dir.path(), "changed", b"new");
        write(dir.path(), "back", b"b");
        write(dir.path(), "dead", b"x");
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let t = TrackedState {
            schema_registered: true,
            files: BTreeMap::from([
                tracked("same", b"s", Lifecycle::Active),
                tracked("changed", b"old", Lifecycle::Active),
                tracked("back", b"b", Lifecycle::Deleted),
                tracked("dead", b"x", Lifecycle::Tombstoned),
                tracked("gone", b"g", Lifecycle::Active),
                tracked("gone-before", b"g", Lifecycle::Deleted),
            ]),
        };
        let p = plan(&s, &t, &alias());
        assert!(p.schema.is_none());
        assert_eq!(p.unchanged, 1);
        let mut got = kinds(&p);
        got.sort_by_key(|(_, path)| path.to_owned());
        assert_eq!(
            got,
            [
                (ChangeKind::Updated, "back"),
                (ChangeKind::Updated, "changed"),
                (ChangeKind::Deleted, "gone")
            ]
        );
        for c in &p.changes {
            assert_eq!(c.base_version.as_deref(), Some("v:0123456789abcdef"));
            let m = c.draft.payload.as_map().unwrap();
            assert_eq!(m["base_version"], "v:0123456789abcdef");
        }
        assert_eq!(p.skipped.len(), 1);
        assert!(matches!(p.skipped[0].reason, SkipReason::Tombstoned { .. }));
    }

    /// INV-TRACK-04.
    #[test]
    fn unreadable_paths_keep_their_records() {
        let t = TrackedState {
            schema_registered: true,
            files: BTreeMap::from([
                tracked("locked/a", b"a", Lifecycle::Active),
                tracked("locked-not/b", b"b", Lifecycle::Active),
                tracked("flaky", b"f", Lifecycle::Active),
            ]),
        };
        let s = Scan {
            root: "/w".into(),
            files: Vec::new(),
            skipped: vec![
                Skipped {
                    path: "locked".into(),
                    reason: SkipReason::Unreadable {
                        detail: "permission denied".into(),
                    },
                },
                Skipped {
                    path: "flaky".into(),
                    reason: SkipReason::ChangedDuringScan,
                },
            ],
        };
        let p = plan(&s, &t, &alias());
        assert_eq!(kinds(&p), [(ChangeKind::Deleted, "locked-not/b")]);
    }

    /// INV-TRACK-02.
    #[test]
    fn a_path_too_long_for_the_payload_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        // Control characters take six bytes each in JSON (`\u0001`): a
        // path the file system accepts whose record is still too large.
        // Nested so that each name stays under the 255-byte name limit.
        let name = "\u{1}".repeat(250);
        let long = [name.as_str(), name.as_str(), name.as_str()].join("/");
        write(dir.path(), &long, b"x");
        write(dir.path(), "short", b"y");
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let p = plan(&s, &TrackedState::default(), &alias());
        assert_eq!(kinds(&p), [(ChangeKind::Created, "short")]);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].path, long);
        assert!(
            matches!(p.skipped[0].reason, SkipReason::PayloadTooLarge { bytes } if bytes > MAX_PAYLOAD_BYTES)
        );
    }

    /// INV-TRACK-03.
    #[test]
    fn tracks_a_directory_into_a_real_store_and_records_only_changes() {
        let home = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = store(home.path());
        write(dir.path(), "keep", b"k");
        write(dir.path(), "edit", b"1");
        write(dir.path(), "drop", b"d");
        let first = track(&store, dir.path());
        assert!(first.schema_registered);
        assert_eq!((first.created, first.updated, first.deleted), (3, 0, 0));
        let head = first.head_seq;
        assert_eq!(head, 4);

        let again = track(&store, dir.path());
        assert_eq!(
            (again.created, again.updated, again.deleted, again.unchanged),
            (0, 0, 0, 3)
        );
        assert_eq!(
            again.head_seq, head,
            "an unchanged workspace appends nothing"
        );

        write(dir.path(), "edit", b"22");
        fs::remove_file(dir.path().join("drop")).unwrap();
        write(dir.path(), "new", b"n");
        let next = track(&store, dir.path());
        assert_eq!(
            (next.created, next.updated, next.deleted, next.unchanged),
            (1, 1, 1, 1)
        );
        let id = alias().object_id(&super::super::path_key(b"edit"));
        let x = core::explain(&store, &id).unwrap().unwrap();
        assert_eq!(x.record["size"], 2);
        assert_eq!(
            x.content_hash.unwrap(),
            format!("blake3:{}", blake3::hash(b"22").to_hex())
        );
        let gone = alias().object_id(&super::super::path_key(b"drop"));
        assert_eq!(
            core::explain(&store, &gone).unwrap().unwrap().state,
            "deleted"
        );

        // Back again: the deleted object is updated, not created twice.
        write(dir.path(), "drop", b"d");
        let back = track(&store, dir.path());
        assert_eq!((back.created, back.updated, back.deleted), (0, 1, 0));
        assert_eq!(
            core::explain(&store, &gone).unwrap().unwrap().state,
            "active"
        );
        store.close().unwrap();
    }

    /// INV-TRACK-03.
    #[test]
    fn resubmitting_a_recorded_plan_appends_nothing() {
        let home = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = store(home.path());
        write(dir.path(), "a", b"1");
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let before = load_tracked(&store, &alias()).unwrap();
        let p = plan(&s, &before, &alias());
        let first = submit(&store, p.clone()).unwrap();
        assert_eq!(first.created, 1);
        // As if the process died after the append and the same plan were
        // submitted again: every event is recognised by its key.
        let second = submit(&store, p).unwrap();
        assert_eq!((second.created, second.already_recorded), (0, 1));
        assert_eq!(second.head_seq, first.head_seq);
        store.close().unwrap();
    }

    /// INV-TRACK-04: deletions are found even when the object listing is
    /// full and the workspace's objects sort after its bound.
    #[test]
    fn deletions_are_found_beyond_the_bounded_object_listing() {
        let home = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = store(home.path());
        write(dir.path(), "stays", b"s");
        write(dir.path(), "goes", b"g");
        let first = track(&store, dir.path());
        assert_eq!(first.created, 2);
        // Fill the listing with objects whose ids sort before ours.
        let mut drafts = Vec::new();
        for i in 0..core::MAX_LISTED {
            let mut payload = Map::new();
            payload.insert("object_id".into(), format!("object:aaa-{i:05}").into());
            payload.insert("object_type".into(), "file".into());
            payload.insert("schema_id".into(), FILE_SCHEMA_ID.into());
            drafts.push(draft("object.created", payload, format!("fill-{i}")).unwrap());
        }
        for chunk in drafts.chunks(MAX_SUBMISSION_EVENTS) {
            let out = store.append_many(chunk.to_vec()).unwrap();
            assert!(out
                .iter()
                .all(|o| matches!(o, AppendOutcome::Appended { .. })));
        }
        let listed = core::objects(&store).unwrap();
        assert_eq!(listed.len(), core::MAX_LISTED);
        assert!(!listed
            .iter()
            .any(|o| o.object_id.starts_with("object:file:")));

        fs::remove_file(dir.path().join("goes")).unwrap();
        let next = track(&store, dir.path());
        assert_eq!(
            (next.created, next.updated, next.deleted, next.unchanged),
            (0, 0, 1, 1)
        );
        store.close().unwrap();
    }

    #[test]
    fn workspaces_do_not_see_each_others_files() {
        let home = tempfile::tempdir().unwrap();
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let store = store(home.path());
        write(one.path(), "a", b"1");
        write(two.path(), "b", b"2");
        let a1 = WorkspaceAlias::new("one").unwrap();
        let a2 = WorkspaceAlias::new("two").unwrap();
        for (dir, a) in [(one.path(), &a1), (two.path(), &a2)] {
            let s = scan(dir, &ScanOptions::default()).unwrap();
            let t = load_tracked(&store, a).unwrap();
            let r = submit(&store, plan(&s, &t, a)).unwrap();
            assert_eq!((r.created, r.deleted), (1, 0));
        }
        let t = load_tracked(&store, &a1).unwrap();
        assert_eq!(t.files.len(), 1);
        assert!(t.schema_registered);
        store.close().unwrap();
    }
}
