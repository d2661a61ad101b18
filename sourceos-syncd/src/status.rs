//! The status document (`syncd status --json`) that status panes read. Its
//! keys are a published contract (PRODUCT.md §7): keep them, add freely.
//! Status reads the head and projections only; its cost does not grow with
//! the length of the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lanes::LaneStatus;
use crate::projection::sessions::SessionCounters;
use crate::projection::ProjectionHealth;
use crate::store::Store;

/// Version of the status document's shape.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// Split-brain capabilities named in the status document.
pub const MAX_SPLIT_BRAIN_LISTED: usize = 16;

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
    /// Capabilities that a plane reports enabled while another rejects
    /// (at most [`MAX_SPLIT_BRAIN_LISTED`]); any makes the store degraded.
    pub split_brain_capabilities: Vec<String>,
    /// The log head.
    pub log: LogStatus,
    /// Distinct subjects, when the subject index is current.
    pub subject_count: Option<u64>,
    /// Events per kind, when the summary is current.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Projections by name.
    pub projections: BTreeMap<String, ProjectionState>,
    /// Sessions, turns and orphans, when the session DAG is current.
    #[serde(default)]
    pub sessions: Option<SessionStatus>,
    /// Replication, once a pass was attempted.
    #[serde(default)]
    pub replication: Option<ReplicationStatus>,
    /// The daemon that answered, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonSection>,
    /// The daemon's ingest lanes (depths, limits, counters), when a daemon
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<LaneStatus>,
}

/// Replication in the status document, from the last `syncd sync` pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// When the last pass was attempted.
    pub last_attempt_at: Option<String>,
    /// Whether it reached a server (false: offline, local only).
    pub reached_server: bool,
    /// Why it failed, when it did.
    pub last_error: Option<String>,
    /// Peers seen.
    pub peers: u64,
    /// Peers not confirmed in sync within the configured time.
    pub stale_peers: u64,
    /// The largest lag, in events, at the last pass.
    pub max_lag: u64,
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
    /// Its ingest lanes; moved to the document's top-level `lanes` by
    /// [`StatusDocument::with_daemon`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<LaneStatus>,
    /// The surfaces (`X-Syncd-Surface`) that called it since it started,
    /// most requests first.
    #[serde(default)]
    pub surfaces: Vec<SurfaceSeen>,
    /// Requests of surfaces beyond those listed (the list is bounded).
    #[serde(default)]
    pub surface_requests_not_listed: u64,
}

/// One calling surface as the daemon saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurfaceSeen {
    /// Its version text, e.g. `turtleterm/0.4.1`.
    pub surface: String,
    /// Its requests since the daemon started.
    pub requests: u64,
    /// When it last called (RFC 3339).
    pub last_seen_at: String,
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
    pub fn with_daemon(mut self, mut daemon: DaemonSection) -> Self {
        self.daemon_available = true;
        self.lanes = daemon.lanes.take();
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

/// The session DAG in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Totals of the session DAG projection.
    #[serde(flatten)]
    pub totals: SessionCounters,
    /// Local events refused since this process opened the store because
    /// their writer's lease epoch was stale (they never reach the log).
    pub stale_epoch_refusals_since_open: u64,
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
            ProjectionHealth::New => Some(
                "new in this build: built from the log when the store is next opened for writing"
                    .to_owned(),
            ),
            ProjectionHealth::Outdated { found, current } => Some(format!(
                "record format {found}, this build writes {current}: rebuilt from the log when the store is next opened for writing"
            )),
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
    // A damaged or lagging ledger is already `repair_needed`; its
    // split-brain list is then unknown rather than an error.
    let split_brain = crate::capability::split_brain_capabilities(store, MAX_SPLIT_BRAIN_LISTED)
        .unwrap_or_default();
    // Replication observations are advisory: an unreadable peers file is
    // reported in the document, never a reason for status to fail.
    let replication = match crate::replication::PeersFile::load(store.home()) {
        Ok(None) => None,
        Ok(Some(f)) => {
            let now = store.now();
            Some(ReplicationStatus {
                last_attempt_at: f.last_attempt_at.clone(),
                reached_server: f.last_attempt_reached_server,
                last_error: f.last_error.clone(),
                peers: f.peers.len() as u64,
                stale_peers: f.peers.iter().filter(|p| f.is_stale(p, now)).count() as u64,
                max_lag: f.peers.iter().map(|p| p.lag).max().unwrap_or(0),
            })
        }
        Err(e) => Some(ReplicationStatus {
            last_attempt_at: None,
            reached_server: false,
            last_error: Some(e.to_string()),
            peers: 0,
            stale_peers: 0,
            max_lag: 0,
        }),
    };
    let offline = replication.as_ref().is_some_and(|r| !r.reached_server);
    let degraded = write_blocked_reason.is_some() || !split_brain.is_empty();
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
    } else if offline {
        Health::OfflineLocalOnly
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
        Health::OfflineLocalOnly => format!(
            "offline, local only: the last `syncd sync` reached no server ({}); local work is unaffected",
            replication
                .as_ref()
                .and_then(|r| r.last_error.clone())
                .unwrap_or_default()
        ),
        _ => match &write_blocked_reason {
            Some(r) => format!("degraded: {r}"),
            None => format!(
                "degraded: capability split-brain ({}); see `syncd capabilities`",
                split_brain.join(", ")
            ),
        },
    };
    // Status reads the session DAG only when it is current: a lagging or
    // damaged projection is already reported above, with its reason.
    let sessions_current = projections.iter().any(|p| {
        p.name == crate::projection::sessions::NAME && p.health == ProjectionHealth::Current
    });
    let sessions = if sessions_current {
        Some(SessionStatus {
            totals: crate::session_dag::session_totals(store).map_err(|e| e.to_string())?,
            stale_epoch_refusals_since_open: store.stale_epoch_refusals(),
        })
    } else {
        None
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
        split_brain_capabilities: split_brain,
        log: LogStatus {
            head_seq,
            head_hash: head_hash.to_string(),
            event_count: head_seq,
        },
        subject_count,
        events_by_kind: summary.map(|s| s.by_kind).unwrap_or_default(),
        projections: map,
        sessions,
        replication,
        daemon: None,
        lanes: None,
    })
}

fn short(hash: &str) -> String {
    hash.chars().take(7 + 12).collect()
}
