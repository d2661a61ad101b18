//! The host runtime lifecycle: the states a syncd daemon moves through, the
//! transition function that decides which moves are allowed, the
//! `lifecycle.transitioned` kind that records each move in the log, the
//! readiness gates that subsystems wait on, and the mapping of our states
//! onto the published `HostRuntimeLifecycleState` document.
//!
//! The state machine is the upstream one (BOOT … CLEANUP_RUNNING, HALTED,
//! RECOVERY) with three states of our own: `QUIT_READY` (cleanup finished,
//! the process may exit), `DEGRADED_OFFLINE` (an identity or org policy
//! provider is unreachable: local work goes on) and
//! `DEGRADED_POLICY_FAILED` (the org policy answered but could not be
//! loaded: org-bound subsystems stay blocked). Upstream documents allow no
//! extra states, so [`LifecycleState::upstream`] maps ours onto the nearest
//! upstream state by what is actually available in it.

use serde::{Deserialize, Serialize};

use crate::event::{EventDraft, Payload};
use crate::ids::{ActorId, EventKind, InvalidValue, Timestamp};
use crate::kinds::{payload_as, KindSpec};

/// The kind of a recorded lifecycle move.
pub const LIFECYCLE_KIND: &str = "lifecycle.transitioned";
/// The reserved actor that records lifecycle moves.
pub const LIFECYCLE_ACTOR: &str = "actor:syncd-lifecycle";
/// Longest reason or reference text kept in a transition, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Version of the upstream `HostRuntimeLifecycleState` documents we emit.
pub const LIFECYCLE_SPEC_VERSION: &str = "0.1.0";

/// The kinds of this module.
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: LIFECYCLE_KIND,
        validate: transitioned,
    },
    KindSpec {
        kind: SHUTDOWN_STEP_KIND,
        validate: shutdown_step,
    },
];

/// The kind of a recorded shutdown step outcome.
pub const SHUTDOWN_STEP_KIND: &str = "lifecycle.shutdown_step";
/// Longest shutdown step name, in bytes.
pub const MAX_STEP_NAME_BYTES: usize = 64;
/// Most dependencies one shutdown step may name.
pub const MAX_STEP_DEPENDENCIES: usize = 16;

/// A state of the host runtime lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleState {
    /// Process started; nothing is open yet.
    Boot,
    /// The local store is open: local work can proceed.
    LocalReady,
    /// Waiting for the identity provider.
    IdentityPending,
    /// Identity confirmed (or the device's own identity, local-only).
    IdentityConfirmed,
    /// Loading the org policy.
    OrgPolicyLoading,
    /// Org policy loaded (or the local policy, local-only).
    OrgPolicyReady,
    /// Capabilities negotiated.
    CapabilityGraphReady,
    /// Sessions restored.
    SessionReady,
    /// Every subsystem may run.
    Running,
    /// Ours: a provider is unreachable; local work only.
    DegradedOffline,
    /// Ours: the org policy failed to load; org-bound work is blocked.
    DegradedPolicyFailed,
    /// Shutting down: no new work is accepted.
    Draining,
    /// Shutdown steps are running.
    CleanupRunning,
    /// Ours: shutdown finished; the process may exit.
    QuitReady,
    /// Stopped by a fault.
    Halted,
    /// Recovering from an unclean end of the previous run.
    Recovery,
}

/// Every state, in declaration order.
pub const LIFECYCLE_STATES: [LifecycleState; 16] = [
    LifecycleState::Boot,
    LifecycleState::LocalReady,
    LifecycleState::IdentityPending,
    LifecycleState::IdentityConfirmed,
    LifecycleState::OrgPolicyLoading,
    LifecycleState::OrgPolicyReady,
    LifecycleState::CapabilityGraphReady,
    LifecycleState::SessionReady,
    LifecycleState::Running,
    LifecycleState::DegradedOffline,
    LifecycleState::DegradedPolicyFailed,
    LifecycleState::Draining,
    LifecycleState::CleanupRunning,
    LifecycleState::QuitReady,
    LifecycleState::Halted,
    LifecycleState::Recovery,
];

impl LifecycleState {
    /// The name used in documents and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boot => "BOOT",
            Self::LocalReady => "LOCAL_READY",
            Self::IdentityPending => "IDENTITY_PENDING",
            Self::IdentityConfirmed => "IDENTITY_CONFIRMED",
            Self::OrgPolicyLoading => "ORG_POLICY_LOADING",
            Self::OrgPolicyReady => "ORG_POLICY_READY",
            Self::CapabilityGraphReady => "CAPABILITY_GRAPH_READY",
            Self::SessionReady => "SESSION_READY",
            Self::Running => "RUNNING",
            Self::DegradedOffline => "DEGRADED_OFFLINE",
            Self::DegradedPolicyFailed => "DEGRADED_POLICY_FAILED",
            Self::Draining => "DRAINING",
            Self::CleanupRunning => "CLEANUP_RUNNING",
            Self::QuitReady => "QUIT_READY",
            Self::Halted => "HALTED",
            Self::Recovery => "RECOVERY",
        }
    }

    /// Parses a state name.
    pub fn parse(text: &str) -> Option<Self> {
        LIFECYCLE_STATES.into_iter().find(|s| s.as_str() == text)
    }

    /// The nearest state of the upstream schema. Our own states map by what
    /// is available in them: offline work is local-only (LOCAL_READY); a
    /// failed policy load has identity but no policy (IDENTITY_CONFIRMED);
    /// a finished shutdown is stopped (HALTED).
    pub fn upstream(self) -> &'static str {
        match self {
            Self::DegradedOffline => "LOCAL_READY",
            Self::DegradedPolicyFailed => "IDENTITY_CONFIRMED",
            Self::QuitReady => "HALTED",
            other => other.as_str(),
        }
    }

    /// Gates that are open in this state. Draining and later open none:
    /// nothing new starts while the daemon shuts down.
    pub fn open_gates(self) -> &'static [Gate] {
        use Gate as G;
        const LOCAL: &[Gate] = &[G::LocalStore];
        const IDENTITY: &[Gate] = &[G::LocalStore, G::Identity];
        const POLICY: &[Gate] = &[G::LocalStore, G::Identity, G::OrgPolicy];
        const CAPS: &[Gate] = &[G::LocalStore, G::Identity, G::OrgPolicy, G::CapabilityGraph];
        const SESSIONS: &[Gate] = &[
            G::LocalStore,
            G::Identity,
            G::OrgPolicy,
            G::CapabilityGraph,
            G::Sessions,
        ];
        const ALL: &[Gate] = &[
            G::LocalStore,
            G::Identity,
            G::OrgPolicy,
            G::CapabilityGraph,
            G::Sessions,
            G::Running,
        ];
        match self {
            Self::Boot | Self::Draining | Self::CleanupRunning | Self::QuitReady | Self::Halted => {
                &[]
            }
            Self::LocalReady | Self::IdentityPending | Self::DegradedOffline | Self::Recovery => {
                LOCAL
            }
            Self::IdentityConfirmed | Self::OrgPolicyLoading | Self::DegradedPolicyFailed => {
                IDENTITY
            }
            Self::OrgPolicyReady => POLICY,
            Self::CapabilityGraphReady => CAPS,
            Self::SessionReady => SESSIONS,
            Self::Running => ALL,
        }
    }
}

/// What makes the lifecycle move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// A new process starts after a clean end (QUIT_READY or HALTED).
    ProcessStarted,
    /// A new process finds the previous run ended without QUIT_READY.
    CrashDetected,
    /// Recovery checks passed; start again from BOOT.
    RecoveryCompleted,
    /// The store is open.
    LocalStoreOpened,
    /// The identity provider is asked.
    IdentityRequested,
    /// The identity provider answered.
    IdentityConfirmed,
    /// The identity provider did not answer in time or failed.
    IdentityUnreachable,
    /// The org policy provider is asked.
    PolicyLoadStarted,
    /// The org policy loaded.
    PolicyLoaded,
    /// The org policy provider did not answer in time or failed.
    PolicyUnreachable,
    /// The org policy answered but is not a valid policy.
    PolicyFailed,
    /// The capability graph is ready.
    CapabilitiesReady,
    /// Sessions are restored.
    SessionsRestored,
    /// All subsystems may start.
    Started,
    /// Shutdown was asked for.
    DrainRequested,
    /// Shutdown steps begin.
    CleanupStarted,
    /// Shutdown steps ended (each with its recorded outcome).
    CleanupFinished,
    /// A fault stops the runtime.
    Fault,
}

/// Every event, in declaration order.
pub const LIFECYCLE_EVENTS: [LifecycleEvent; 18] = [
    LifecycleEvent::ProcessStarted,
    LifecycleEvent::CrashDetected,
    LifecycleEvent::RecoveryCompleted,
    LifecycleEvent::LocalStoreOpened,
    LifecycleEvent::IdentityRequested,
    LifecycleEvent::IdentityConfirmed,
    LifecycleEvent::IdentityUnreachable,
    LifecycleEvent::PolicyLoadStarted,
    LifecycleEvent::PolicyLoaded,
    LifecycleEvent::PolicyUnreachable,
    LifecycleEvent::PolicyFailed,
    LifecycleEvent::CapabilitiesReady,
    LifecycleEvent::SessionsRestored,
    LifecycleEvent::Started,
    LifecycleEvent::DrainRequested,
    LifecycleEvent::CleanupStarted,
    LifecycleEvent::CleanupFinished,
    LifecycleEvent::Fault,
];

impl LifecycleEvent {
    /// The name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProcessStarted => "process_started",
            Self::CrashDetected => "crash_detected",
            Self::RecoveryCompleted => "recovery_completed",
            Self::LocalStoreOpened => "local_store_opened",
            Self::IdentityRequested => "identity_requested",
            Self::IdentityConfirmed => "identity_confirmed",
            Self::IdentityUnreachable => "identity_unreachable",
            Self::PolicyLoadStarted => "policy_load_started",
            Self::PolicyLoaded => "policy_loaded",
            Self::PolicyUnreachable => "policy_unreachable",
            Self::PolicyFailed => "policy_failed",
            Self::CapabilitiesReady => "capabilities_ready",
            Self::SessionsRestored => "sessions_restored",
            Self::Started => "started",
            Self::DrainRequested => "drain_requested",
            Self::CleanupStarted => "cleanup_started",
            Self::CleanupFinished => "cleanup_finished",
            Self::Fault => "fault",
        }
    }
}

/// The id of one daemon run: `urn:srcos:runtime:` and 1 to 128 ASCII
/// letters, digits or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

/// Prefix of every run id.
pub const RUN_ID_PREFIX: &str = "urn:srcos:runtime:";
/// Longest run id suffix, in bytes.
const MAX_RUN_SUFFIX_BYTES: usize = 128;

impl RunId {
    /// Validates a run id.
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidValue> {
        let raw = raw.into();
        let ok = raw.strip_prefix(RUN_ID_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= MAX_RUN_SUFFIX_BYTES
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if ok {
            Ok(Self(raw))
        } else {
            Err(InvalidValue::Malformed {
                what: "run id",
                value: raw.chars().take(64).collect(),
                reason: "must be urn:srcos:runtime: and 1 to 128 letters, digits or '-'",
            })
        }
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A move the lifecycle does not allow. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lifecycle cannot take {} in state {}", event.as_str(), from.as_str())]
pub struct InvalidLifecycleTransition {
    /// The state.
    pub from: LifecycleState,
    /// What was asked.
    pub event: LifecycleEvent,
}

/// The lifecycle's transition function. Pure: it decides, it changes
/// nothing.
pub fn transition(
    from: LifecycleState,
    event: LifecycleEvent,
) -> Result<LifecycleState, InvalidLifecycleTransition> {
    use LifecycleEvent as E;
    use LifecycleState as S;
    let to = match (from, event) {
        (S::QuitReady | S::Halted, E::ProcessStarted) => S::Boot,
        (S::QuitReady | S::Halted, E::CrashDetected) => return Err(refused(from, event)),
        (_, E::CrashDetected) => S::Recovery,
        (S::Recovery, E::RecoveryCompleted) => S::Boot,
        (S::Boot, E::LocalStoreOpened) => S::LocalReady,
        (S::LocalReady | S::DegradedOffline, E::IdentityRequested) => S::IdentityPending,
        (S::IdentityPending, E::IdentityConfirmed) => S::IdentityConfirmed,
        (S::IdentityPending, E::IdentityUnreachable) => S::DegradedOffline,
        (
            S::IdentityConfirmed | S::DegradedOffline | S::DegradedPolicyFailed,
            E::PolicyLoadStarted,
        ) => S::OrgPolicyLoading,
        (S::OrgPolicyLoading, E::PolicyLoaded) => S::OrgPolicyReady,
        (S::OrgPolicyLoading, E::PolicyUnreachable) => S::DegradedOffline,
        (S::OrgPolicyLoading, E::PolicyFailed) => S::DegradedPolicyFailed,
        (S::OrgPolicyReady, E::CapabilitiesReady) => S::CapabilityGraphReady,
        (S::CapabilityGraphReady, E::SessionsRestored) => S::SessionReady,
        (S::SessionReady, E::Started) => S::Running,
        (
            S::LocalReady
            | S::IdentityPending
            | S::IdentityConfirmed
            | S::OrgPolicyLoading
            | S::OrgPolicyReady
            | S::CapabilityGraphReady
            | S::SessionReady
            | S::Running
            | S::DegradedOffline
            | S::DegradedPolicyFailed
            | S::Recovery,
            E::DrainRequested,
        ) => S::Draining,
        (S::Draining, E::CleanupStarted) => S::CleanupRunning,
        (S::CleanupRunning, E::CleanupFinished) => S::QuitReady,
        (S::QuitReady | S::Halted, E::Fault) => return Err(refused(from, event)),
        (_, E::Fault) => S::Halted,
        _ => return Err(refused(from, event)),
    };
    Ok(to)
}

fn refused(from: LifecycleState, event: LifecycleEvent) -> InvalidLifecycleTransition {
    InvalidLifecycleTransition { from, event }
}

/// A condition a subsystem needs before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// The local store is open (LOCAL_READY).
    LocalStore,
    /// Identity confirmed (IDENTITY_CONFIRMED).
    Identity,
    /// Org policy loaded (ORG_POLICY_READY).
    OrgPolicy,
    /// Capability graph ready (CAPABILITY_GRAPH_READY).
    CapabilityGraph,
    /// Sessions restored (SESSION_READY).
    Sessions,
    /// Fully running (RUNNING).
    Running,
}

impl Gate {
    /// The state that opens this gate on the normal path.
    pub fn state(self) -> LifecycleState {
        match self {
            Self::LocalStore => LifecycleState::LocalReady,
            Self::Identity => LifecycleState::IdentityConfirmed,
            Self::OrgPolicy => LifecycleState::OrgPolicyReady,
            Self::CapabilityGraph => LifecycleState::CapabilityGraphReady,
            Self::Sessions => LifecycleState::SessionReady,
            Self::Running => LifecycleState::Running,
        }
    }
}

/// A subsystem of the daemon, with the gate it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subsystem {
    /// Appending submitted events.
    IngestLanes,
    /// Flushing receipts to the log.
    ReceiptFlushing,
    /// Watching workspace files.
    FileWatchers,
    /// Local scheduled tasks (sweeps, checks).
    ScheduledTasks,
    /// Restoring sessions.
    SessionRestore,
    /// Loading plugins (policy-governed).
    PluginLoading,
    /// Calls to org services.
    OrgServiceCalls,
    /// The marketplace.
    Marketplace,
    /// Replication between devices.
    Replication,
}

/// Every subsystem, in the order the daemon starts them.
pub const SUBSYSTEMS: [Subsystem; 9] = [
    Subsystem::IngestLanes,
    Subsystem::ReceiptFlushing,
    Subsystem::FileWatchers,
    Subsystem::ScheduledTasks,
    Subsystem::SessionRestore,
    Subsystem::PluginLoading,
    Subsystem::OrgServiceCalls,
    Subsystem::Marketplace,
    Subsystem::Replication,
];

impl Subsystem {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IngestLanes => "ingest_lanes",
            Self::ReceiptFlushing => "receipt_flushing",
            Self::FileWatchers => "file_watchers",
            Self::ScheduledTasks => "scheduled_tasks",
            Self::SessionRestore => "session_restore",
            Self::PluginLoading => "plugin_loading",
            Self::OrgServiceCalls => "org_service_calls",
            Self::Marketplace => "marketplace",
            Self::Replication => "replication",
        }
    }

    /// The gate it needs. Anything that reaches org services, loads code
    /// the org governs, or sends state off the device needs the org policy.
    pub fn gate(self) -> Gate {
        match self {
            Self::IngestLanes | Self::ReceiptFlushing | Self::FileWatchers => Gate::LocalStore,
            Self::ScheduledTasks => Gate::LocalStore,
            Self::SessionRestore => Gate::CapabilityGraph,
            Self::PluginLoading | Self::OrgServiceCalls | Self::Marketplace => Gate::OrgPolicy,
            Self::Replication => Gate::OrgPolicy,
        }
    }

    /// Whether it talks to the org.
    pub fn org_bound(self) -> bool {
        self.gate() == Gate::OrgPolicy
    }
}

/// Whether a subsystem may start in a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "readiness", rename_all = "snake_case")]
pub enum Readiness {
    /// It may start.
    Ready {
        /// The subsystem.
        subsystem: Subsystem,
    },
    /// It may not: the gate is closed.
    Refused {
        /// The subsystem.
        subsystem: Subsystem,
        /// The gate that is missing.
        missing_gate: Gate,
        /// The state that would open it.
        needs_state: LifecycleState,
        /// The current state.
        state: LifecycleState,
    },
}

/// Decides whether a subsystem may start in a state.
pub fn readiness(state: LifecycleState, subsystem: Subsystem) -> Readiness {
    let gate = subsystem.gate();
    if state.open_gates().contains(&gate) {
        Readiness::Ready { subsystem }
    } else {
        Readiness::Refused {
            subsystem,
            missing_gate: gate,
            needs_state: gate.state(),
            state,
        }
    }
}

/// The payload of a `lifecycle.transitioned` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The daemon run (`urn:srcos:runtime:<uuid>`).
    pub run_id: String,
    /// State before.
    pub from: LifecycleState,
    /// State after.
    pub to: LifecycleState,
    /// What made it move.
    pub event: LifecycleEvent,
    /// Why, in words (a provider error, a signal, a drain reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The confirmed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<String>,
    /// The loaded org policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_policy_ref: Option<String>,
}

impl Transition {
    /// The draft that records this move, by the lifecycle actor.
    pub(crate) fn draft(&self) -> Result<EventDraft, InvalidValue> {
        let mut d = EventDraft::new(
            ActorId::new(LIFECYCLE_ACTOR)?,
            EventKind::new(LIFECYCLE_KIND)?,
        );
        let value = serde_json::to_value(self).map_err(|_| InvalidValue::Malformed {
            what: "lifecycle payload",
            value: String::new(),
            reason: "does not serialise as JSON",
        })?;
        d.payload = Payload::new(value)?;
        Ok(d)
    }
}

fn transitioned(d: &mut EventDraft) -> Result<(), String> {
    if d.actor.as_str() != LIFECYCLE_ACTOR {
        return Err(format!("only {LIFECYCLE_ACTOR} records lifecycle moves"));
    }
    let t: Transition = payload_as(d)?;
    check_text("run_id", Some(&t.run_id))?;
    check_text("reason", t.reason.as_ref())?;
    check_text("identity_ref", t.identity_ref.as_ref())?;
    check_text("org_policy_ref", t.org_policy_ref.as_ref())?;
    RunId::new(t.run_id.as_str()).map_err(|e| e.to_string())?;
    match transition(t.from, t.event) {
        Ok(to) if to == t.to => Ok(()),
        Ok(to) => Err(format!(
            "{} from {} leads to {}, not {}",
            t.event.as_str(),
            t.from.as_str(),
            to.as_str(),
            t.to.as_str()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn check_text(field: &str, value: Option<&String>) -> Result<(), String> {
    match value {
        Some(v) if v.is_empty() => Err(format!("{field} is empty")),
        Some(v) if v.len() > MAX_REASON_BYTES => {
            Err(format!("{field} is longer than {MAX_REASON_BYTES} bytes"))
        }
        _ => Ok(()),
    }
}

/// How one shutdown step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It finished within its timeout.
    Completed,
    /// It did not finish within its timeout; shutdown went on without it.
    TimedOut,
    /// It reported a failure.
    Failed,
    /// It did not run because a step it depends on did not complete.
    SkippedBecauseDependencyFailed,
    /// It was still running, or had not started, when a second signal
    /// forced the exit.
    CutShort,
}

impl StepOutcome {
    /// The name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
            Self::SkippedBecauseDependencyFailed => "skipped_because_dependency_failed",
            Self::CutShort => "cut_short",
        }
    }
}

/// The payload of a `lifecycle.shutdown_step` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownStep {
    /// The daemon run.
    pub run_id: String,
    /// The step's name (`sessions`, `receipt_flushing`, …).
    pub step: String,
    /// Steps it waited for.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// How it ended.
    pub outcome: StepOutcome,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Its timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Why it failed, was skipped or cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ShutdownStep {
    /// The draft that records this outcome, by the lifecycle actor.
    pub(crate) fn draft(&self) -> Result<EventDraft, InvalidValue> {
        let mut d = EventDraft::new(
            ActorId::new(LIFECYCLE_ACTOR)?,
            EventKind::new(SHUTDOWN_STEP_KIND)?,
        );
        let value = serde_json::to_value(self).map_err(|_| InvalidValue::Malformed {
            what: "shutdown step payload",
            value: String::new(),
            reason: "does not serialise as JSON",
        })?;
        d.payload = Payload::new(value)?;
        Ok(d)
    }
}

fn shutdown_step(d: &mut EventDraft) -> Result<(), String> {
    if d.actor.as_str() != LIFECYCLE_ACTOR {
        return Err(format!("only {LIFECYCLE_ACTOR} records shutdown steps"));
    }
    let s: ShutdownStep = payload_as(d)?;
    RunId::new(s.run_id.as_str()).map_err(|e| e.to_string())?;
    check_text("reason", s.reason.as_ref())?;
    for name in std::iter::once(&s.step).chain(&s.depends_on) {
        if name.is_empty()
            || name.len() > MAX_STEP_NAME_BYTES
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(format!(
                "step name {name:?} must be 1 to {MAX_STEP_NAME_BYTES} lowercase letters or '_'"
            ));
        }
    }
    if s.depends_on.len() > MAX_STEP_DEPENDENCIES {
        return Err(format!(
            "a step may depend on at most {MAX_STEP_DEPENDENCIES} steps"
        ));
    }
    Ok(())
}

/// One recorded move, as the lifecycle projection keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Sequence number of the event.
    pub seq: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// The move.
    #[serde(flatten)]
    pub transition: Transition,
}

impl TransitionRecord {
    /// The upstream `HostRuntimeLifecycleState` document for the state this
    /// move entered. Our own states are mapped ([`LifecycleState::upstream`])
    /// and the document carries no field the schema does not define.
    pub fn upstream_document(&self, device: &str) -> serde_json::Value {
        let t = &self.transition;
        let device_slug = device.strip_prefix("device:").unwrap_or(device);
        let mut doc = serde_json::json!({
            "id": format!("urn:srcos:host-runtime-lifecycle:{device_slug}:{}", self.seq),
            "specVersion": LIFECYCLE_SPEC_VERSION,
            "state": t.to.upstream(),
            "previousState": t.from.upstream(),
            "deviceRef": format!("urn:srcos:device:{device_slug}"),
            "observedAt": self.at.to_string(),
            "transitionedAt": self.at.to_string(),
        });
        if let Some(m) = doc.as_object_mut() {
            if let Some(i) = &t.identity_ref {
                m.insert("identityRef".into(), i.clone().into());
            }
            if let Some(p) = &t.org_policy_ref {
                m.insert("orgPolicyRef".into(), p.clone().into());
            }
            if t.to == LifecycleState::Draining {
                let reason = t.reason.clone().unwrap_or_else(|| "shutdown".to_owned());
                m.insert("drainReason".into(), reason.into());
            }
            if t.to == LifecycleState::Recovery {
                m.insert(
                    "recoveryContext".into(),
                    serde_json::json!({ "lastSafeState": t.from.upstream() }),
                );
            }
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(from: LifecycleState, event: LifecycleEvent) -> Option<LifecycleState> {
        use LifecycleEvent as E;
        use LifecycleState as S;
        let live = [
            S::LocalReady,
            S::IdentityPending,
            S::IdentityConfirmed,
            S::OrgPolicyLoading,
            S::OrgPolicyReady,
            S::CapabilityGraphReady,
            S::SessionReady,
            S::Running,
            S::DegradedOffline,
            S::DegradedPolicyFailed,
            S::Recovery,
        ];
        let ended = [S::QuitReady, S::Halted];
        match event {
            E::ProcessStarted => ended.contains(&from).then_some(S::Boot),
            E::CrashDetected => (!ended.contains(&from)).then_some(S::Recovery),
            E::RecoveryCompleted => (from == S::Recovery).then_some(S::Boot),
            E::LocalStoreOpened => (from == S::Boot).then_some(S::LocalReady),
            E::IdentityRequested => {
                matches!(from, S::LocalReady | S::DegradedOffline).then_some(S::IdentityPending)
            }
            E::IdentityConfirmed => (from == S::IdentityPending).then_some(S::IdentityConfirmed),
            E::IdentityUnreachable => (from == S::IdentityPending).then_some(S::DegradedOffline),
            E::PolicyLoadStarted => matches!(
                from,
                S::IdentityConfirmed | S::DegradedOffline | S::DegradedPolicyFailed
            )
            .then_some(S::OrgPolicyLoading),
            E::PolicyLoaded => (from == S::OrgPolicyLoading).then_some(S::OrgPolicyReady),
            E::PolicyUnreachable => (from == S::OrgPolicyLoading).then_some(S::DegradedOffline),
            E::PolicyFailed => (from == S::OrgPolicyLoading).then_some(S::DegradedPolicyFailed),
            E::CapabilitiesReady => (from == S::OrgPolicyReady).then_some(S::CapabilityGraphReady),
            E::SessionsRestored => (from == S::CapabilityGraphReady).then_some(S::SessionReady),
            E::Started => (from == S::SessionReady).then_some(S::Running),
            E::DrainRequested => live.contains(&from).then_some(S::Draining),
            E::CleanupStarted => (from == S::Draining).then_some(S::CleanupRunning),
            E::CleanupFinished => (from == S::CleanupRunning).then_some(S::QuitReady),
            E::Fault => (!ended.contains(&from)).then_some(S::Halted),
        }
    }

    #[test]
    fn every_state_event_pair() {
        let mut allowed = 0;
        for from in LIFECYCLE_STATES {
            for event in LIFECYCLE_EVENTS {
                match (transition(from, event), expected(from, event)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from:?} + {event:?}");
                        allowed += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, InvalidLifecycleTransition { from, event });
                    }
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(allowed, 58, "allowed moves changed: update the docs table");
    }

    #[test]
    fn upstream_mapping_names_only_upstream_states() {
        let upstream = [
            "BOOT",
            "LOCAL_READY",
            "IDENTITY_PENDING",
            "IDENTITY_CONFIRMED",
            "ORG_POLICY_LOADING",
            "ORG_POLICY_READY",
            "CAPABILITY_GRAPH_READY",
            "SESSION_READY",
            "RUNNING",
            "DRAINING",
            "CLEANUP_RUNNING",
            "HALTED",
            "RECOVERY",
        ];
        for s in LIFECYCLE_STATES {
            assert!(upstream.contains(&s.upstream()), "{s:?}");
            assert_eq!(LifecycleState::parse(s.as_str()), Some(s));
            if upstream.contains(&s.as_str()) {
                assert_eq!(s.upstream(), s.as_str());
            }
        }
    }

    #[test]
    fn org_bound_subsystems_are_refused_before_org_policy_ready() {
        for s in LIFECYCLE_STATES {
            let policy_open = s.open_gates().contains(&Gate::OrgPolicy);
            for sub in SUBSYSTEMS.into_iter().filter(|x| x.org_bound()) {
                match readiness(s, sub) {
                    Readiness::Ready { .. } => assert!(policy_open, "{s:?} {sub:?}"),
                    Readiness::Refused { missing_gate, .. } => {
                        assert!(!policy_open);
                        assert_eq!(missing_gate, Gate::OrgPolicy);
                    }
                }
            }
        }
        assert!(matches!(
            readiness(LifecycleState::DegradedOffline, Subsystem::IngestLanes),
            Readiness::Ready { .. }
        ));
    }

    #[test]
    fn run_ids_are_validated() {
        assert!(RunId::new("urn:srcos:runtime:01a2-b3").is_ok());
        for bad in [
            "",
            "urn:srcos:runtime:",
            "runtime:x",
            "urn:srcos:runtime:a b",
            "urn:srcos:runtime:a/b",
        ] {
            assert!(RunId::new(bad).is_err(), "{bad:?}");
        }
        assert!(RunId::new(format!("urn:srcos:runtime:{}", "a".repeat(129))).is_err());
    }

    #[test]
    fn a_transition_payload_must_match_the_function() {
        let mut t = Transition {
            run_id: "urn:srcos:runtime:r1".into(),
            from: LifecycleState::Boot,
            to: LifecycleState::LocalReady,
            event: LifecycleEvent::LocalStoreOpened,
            reason: None,
            identity_ref: None,
            org_policy_ref: None,
        };
        let mut d = t.draft().unwrap();
        assert_eq!(transitioned(&mut d), Ok(()));
        t.to = LifecycleState::Running;
        let mut d = t.draft().unwrap();
        assert!(transitioned(&mut d).unwrap_err().contains("not RUNNING"));
        t.to = LifecycleState::Draining;
        t.event = LifecycleEvent::DrainRequested;
        let mut d = t.draft().unwrap();
        assert!(transitioned(&mut d).unwrap_err().contains("cannot take"));
        let mut d = t.draft().unwrap();
        d.actor = ActorId::new("actor:someone").unwrap();
        assert!(transitioned(&mut d).unwrap_err().contains("only"));
    }
}
