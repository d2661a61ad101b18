//! The status document (`syncd status --json`) that status panes read. Its
//! keys are a published contract (PRODUCT.md §7): keep them, add freely.
//! Status reads the head and projections only; its cost does not grow with
//! the length of the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::projection::ProjectionHealth;
use crate::store::Store;

/// Version of the status document's shape.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// Overall health, most severe first in the order they are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Everything is consistent.
    Clean,
    /// Usable, but something needs attention.
    Degraded,
    /// Unresolved conflicts exist.
    Conflicted,
    /// Policy blocks something that was asked for.
    PolicyBlocked,
    /// Working locally only, no peer reachable.
    OfflineLocalOnly,
    /// Derived state is damaged or behind: run `syncd doctor --repair`.
    RepairRecommended,
    /// The daemon should answer but does not.
    DaemonUnavailable,
}

impl Health {
    /// The text used in documents and status lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Clean => "clean",
            Health::Degraded => "degraded",
            Health::Conflicted => "conflicted",
            Health::PolicyBlocked => "policy_blocked",
            Health::OfflineLocalOnly => "offline_local_only",
            Health::RepairRecommended => "repair_recommended",
            Health::DaemonUnavailable => "daemon_unavailable",
        }
    }
}

/// The log section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// Last sequence number (0 when empty).
    pub head_seq: u64,
    /// Hash of the last event (the genesis value when empty).
    pub head_hash: String,
    /// Number of events.
    pub event_count: u64,
}

/// One projection's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionState {
    /// Checkpoint sequence.
    pub checkpoint_seq: u64,
    /// `current`, `behind` or `damaged`.
    pub state: String,
    /// Why, when not current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDocument {
    /// Shape version.
    pub schema_version: u32,
    /// One line for people.
    pub summary: String,
    /// When this document was made.
    pub generated_at: String,
    /// Overall health.
    pub health: Health,
    /// Whether a daemon answered.
    pub daemon_available: bool,
    /// The daemon's lifecycle state, or how the store was reached.
    pub daemon_state: String,
    /// Profile of the store.
    pub active_profile: String,
    /// Active workspace, when one is set.
    pub active_workspace: Option<String>,
    /// This device.
    pub active_device: String,
    /// Usable with reduced guarantees.
    pub degraded: bool,
    /// Policy blocks something.
    pub policy_blocked: bool,
    /// Unresolved conflicts.
    pub conflict_count: u64,
    /// Objects whose latest policy decision denies or holds them.
    pub policy_blocked_objects: u64,
    /// Objects registered.
    pub object_count: u64,
    /// `syncd doctor --repair` is recommended.
    pub repair_needed: bool,
    /// Why writes are refused, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_blocked_reason: Option<String>,
    /// The log.
    pub log: LogStatus,
    /// Distinct subjects, when the subject index is current.
    pub subject_count: Option<u64>,
    /// Events per kind, when the summary is current.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Projections by name.
    pub projections: BTreeMap<String, ProjectionState>,
    /// The daemon that answered, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonSection>,
}

/// What a running daemon adds to the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSection {
    /// The daemon's run.
    pub run_id: String,
    /// Its process id.
    pub pid: u32,
    /// Its lifecycle state (syncd's own name).
    pub state: String,
    /// The nearest upstream lifecycle state.
    pub upstream_state: String,
    /// Why it is in that state, when it is degraded or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Subsystems started.
    pub started_subsystems: Vec<String>,
    /// Subsystems refused, each with the gate it is missing.
    pub blocked_subsystems: BTreeMap<String, String>,
    /// Whether it is local-only or offline.
    pub offline: bool,
    /// Why org-bound subsystems are blocked by policy, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_blocked_reason: Option<String>,
}

impl StatusDocument {
    /// The document when a daemon was expected (it named itself for this
    /// home) but did not answer, so the store was read directly.
    pub fn with_daemon_unavailable(mut self, why: &str) -> Self {
        self.daemon_available = false;
        self.daemon_state = "unavailable".to_owned();
        if self.health == Health::Clean {
            self.health = Health::DaemonUnavailable;
            self.summary = format!("daemon unavailable: {why}; the store was read directly");
        }
        self
    }

    /// The document as a running daemon reports it: its state, and the
    /// health that follows from it when nothing more severe is wrong.
    pub fn with_daemon(mut self, daemon: DaemonSection) -> Self {
        self.daemon_available = true;
        self.daemon_state = daemon.state.clone();
        if self.health == Health::Clean {
            if let Some(r) = &daemon.policy_blocked_reason {
                self.health = Health::Degraded;
                self.degraded = true;
                self.summary = format!("degraded: org-bound subsystems blocked: {r}");
            } else if daemon.offline {
                self.health = Health::OfflineLocalOnly;
                self.degraded = true;
                self.summary = format!(
                    "offline, local only: {}",
                    daemon
                        .reason
                        .clone()
                        .unwrap_or_else(|| "provider unreachable".into())
                );
            }
        }
        self.daemon = Some(daemon);
        self
    }
}

/// Builds the status document of an open store that was reached directly
/// (no daemon).
pub fn status(store: &Store) -> Result<StatusDocument, String> {
    let (head_seq, head_hash) = store.head()?;
    let projections = store.projections()?;
    let write_blocked_reason = store.write_blocker()?;
    let summary = store.summary().map_err(|e| e.to_string())?;
    let subject_count = store.subject_count().map_err(|e| e.to_string())?;
    let counters = store
        .registry_counters()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let mut repair_needed = false;
    let mut map = BTreeMap::new();
    for p in &projections {
        let reason = match &p.health {
            ProjectionHealth::Current => None,
            ProjectionHealth::Behind { at } => Some(format!("folded up to {at} of {head_seq}")),
            ProjectionHealth::Damaged { reason } => Some(reason.clone()),
        };
        if p.health != ProjectionHealth::Current {
            repair_needed = true;
        }
        map.insert(
            p.name.to_owned(),
            ProjectionState {
                checkpoint_seq: p.checkpoint_seq,
                state: p.health.label().to_owned(),
                reason,
            },
        );
    }
    let degraded = write_blocked_reason.is_some();
    let conflict_count = counters.open_conflicts;
    let policy_blocked = counters.policy_blocked_objects > 0;
    let health = if repair_needed {
        Health::RepairRecommended
    } else if degraded {
        Health::Degraded
    } else if conflict_count > 0 {
        Health::Conflicted
    } else if policy_blocked {
        Health::PolicyBlocked
    } else {
        Health::Clean
    };
    let line = match health {
        Health::Clean => format!(
            "clean: {head_seq} events, head {}, {} projections current",
            short(&head_hash.to_string()),
            projections.len()
        ),
        Health::RepairRecommended => {
            let bad: Vec<&str> = projections
                .iter()
                .filter(|p| p.health != ProjectionHealth::Current)
                .map(|p| p.name)
                .collect();
            format!(
                "repair recommended: {} not current; run `syncd doctor --repair`",
                bad.join(", ")
            )
        }
        Health::Conflicted => {
            format!("conflicted: {conflict_count} unresolved conflict(s); see `syncd conflicts`")
        }
        Health::PolicyBlocked => format!(
            "policy blocked: {} object(s) held by policy; see `syncd objects`",
            counters.policy_blocked_objects
        ),
        _ => format!(
            "degraded: {}",
            write_blocked_reason.clone().unwrap_or_default()
        ),
    };
    let meta = store.meta();
    Ok(StatusDocument {
        schema_version: STATUS_SCHEMA_VERSION,
        summary: line,
        generated_at: store.now().to_string(),
        health,
        daemon_available: false,
        daemon_state: "not_running".to_owned(),
        active_profile: meta.profile.to_string(),
        active_workspace: None,
        active_device: meta.device.to_string(),
        degraded,
        policy_blocked,
        conflict_count,
        policy_blocked_objects: counters.policy_blocked_objects,
        object_count: counters.objects,
        repair_needed,
        write_blocked_reason,
        log: LogStatus {
            head_seq,
            head_hash: head_hash.to_string(),
            event_count: head_seq,
        },
        subject_count,
        events_by_kind: summary.map(|s| s.by_kind).unwrap_or_default(),
        projections: map,
        daemon: None,
    })
}

fn short(hash: &str) -> String {
    hash.chars().take(7 + 12).collect()
}
