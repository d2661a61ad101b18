//! sourceos-syncd: the local-first state integrity service of SourceOS.
//!
//! An append-only, hash-chained event log in sled is the only source of
//! truth; every other piece of state is a projection folded from it and can
//! be thrown away and rebuilt. This file is the crate's contract: modules
//! are private and what other crates may use is re-exported here.

mod agent_txn;
mod bundle;
mod capability;
mod clock;
mod codec;
mod config;
mod contract;
mod coordinator;
mod diagnostics;
mod doctor;
mod event;
mod evidence;
mod explain;
mod gitstate;
mod host;
mod ids;
mod ingest;
mod kinds;
mod lanes;
mod lifecycle;
mod model;
mod pipeline;
mod policy;
mod projection;
mod providers;
mod receipt;
mod replication;
mod session;
mod session_dag;
mod shutdown;
mod status;
mod storage;
mod store;

pub use agent_txn::{
    transition as txn_transition, InvalidTransition, Proposal, TxnEvent, TxnOperation, TxnStatus,
    MAX_TXN_OBJECTS,
};
pub use bundle::{
    export, import, restore, verify_bundle, BundleError, BundleManifest, ImportReport,
    BUNDLE_FORMAT, BUNDLE_MAGIC,
};
pub use capability::{
    capabilities, split_brain_capabilities, CapabilityLedger, CapabilityRef, CapabilityState,
    DeclaredState, EffectiveState, Plane, PolicyEffect, Report as PlaneReport, Verdict,
    CAPABILITY_PREFIX, LEDGER_SPEC_VERSION,
};
pub use clock::{
    Clock, CountingIdGenerator, IdGenerator, SteppingClock, SystemClock, UuidV7Generator,
};
pub use codec::{DecodeError, EncodeError};
pub use config::{load_settings, read_config_file, ConfigFileError, CONFIG_FILE, MAX_CONFIG_BYTES};
pub use contract::{
    choose as choose_schema, schema_info, validate_document, Checked, ContractError, SchemaInfo,
    SetRules, Violation, MAX_SET_DOCUMENTS, MAX_VIOLATIONS, SCHEMAS,
};
pub use coordinator::{
    lifecycle, Coordinator, CoordinatorError, LifecycleView, MoveDetails, MoveOutcome,
    SubsystemView,
};
pub use diagnostics::{
    diagnostics_bundle, DiagnosticsInput, Redactor, DIAGNOSTICS_BUNDLE_VERSION,
    DIAGNOSTICS_SPEC_VERSION,
};
pub use doctor::{
    damage, doctor, verify, DamageTarget, DoctorError, DoctorOptions, DoctorReport, Finding,
    FindingClass, RepairSummary, Severity, VerifyReport,
};
pub use event::{
    genesis, Envelope, EventDamage, EventDocument, EventDraft, OriginRef, Payload, SealError,
    GENESIS_DOMAIN, MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES,
};
pub use evidence::{
    check as check_evidence, put as put_evidence, put_file as put_evidence_file,
    read as read_evidence, EvidenceError, EvidenceRef, EvidenceState, Stored as StoredEvidence,
    EVIDENCE_DIR, MAX_EVIDENCE_BYTES,
};
pub use explain::{
    conflicts, explain, objects, records, transaction, transactions, Blocker, ConflictView,
    Explanation, ObjectSummary, RecordKind, SyncPlan, MAX_LISTED,
};
pub use gitstate::{git_state, git_states, GitStateRecord, GIT_STATES, GIT_STATE_KIND};
pub use host::{
    sanitise, DaemonHost, EventRequest, FacadeKey, Host, HostError, HostRequest, InvalidInput,
    LocalHost, Outcome, SanitisedMessage, ScriptedHost, SessionRequest, SurfaceVersion,
    TurnRequest, TxnRequest, MAX_FACADE_KEY_BYTES, MAX_RECORDED_REQUESTS,
};
pub use ids::{
    ActorId, DeviceId, Digest, EventId, EventKind, IdempotencyKey, InvalidValue, ProfileId, Seq,
    SessionRef, Subject, Timestamp,
};
pub use ingest::{
    parse_line, Appender, IngestError, IngestResult, IngestSummary, Ingestor, LineOutcome,
    MAX_LINE_BYTES,
};
pub use kinds::{known_kinds, validate as validate_kind};
pub use lanes::{
    admit as lane_admission, classify as classify_lane, items as lane_items, parse_submission,
    record_shed, Admission, Depths as LaneDepths, Lane, LaneConfigError, LaneCounters, LaneLimits,
    LaneQueues, LaneStatus, LaneView, ShedEpisode, ShedTracker, SubmittedLine, INGEST_ACTOR,
    MAX_LANE_BATCH_EVENTS, MAX_LANE_CAPACITY_EVENTS, MAX_LANE_ITEM_EVENTS, MAX_RETRY_AFTER_MS,
    MAX_TELEMETRY_ITEM_EVENTS, TELEMETRY_SHED_KIND,
};
pub use lifecycle::{
    readiness, transition as lifecycle_transition, Gate, InvalidLifecycleTransition,
    LifecycleEvent, LifecycleState, Readiness, RunId, ShutdownStep, StepOutcome, Subsystem,
    Transition, TransitionRecord, LIFECYCLE_ACTOR, LIFECYCLE_EVENTS, LIFECYCLE_KIND,
    LIFECYCLE_SPEC_VERSION, LIFECYCLE_STATES, RUN_ID_PREFIX, SHUTDOWN_STEP_KIND, SUBSYSTEMS,
};
pub use model::{ConflictOption, DeviceState, Effect};
pub use policy::{
    Action, LocalPolicy, PolicyError, PolicyHook, PolicyRequest, PolicyVerdict, Rule, MAX_RULES,
    POLICY_FILE,
};
pub use projection::lifecycle::ShutdownStepRecord;
pub use projection::registry::{ConflictState, Counters as RegistryCounters, Step, TxnState};
pub use projection::sessions::{
    LeaseRecord, OrphanState, SessionCounters, TurnStep, MAX_QUEUED_PER_SESSION, MAX_TURN_STEPS,
};
pub use projection::summary::SummaryView;
pub use projection::{Checkpoint, ProjectionError, ProjectionHealth, ProjectionStatus};
pub use providers::{
    answer_ref, ask, run_bounded, CommandOutcome, ConfigError, DaemonConfig, Provider,
    ProviderAnswer, ProviderSource, StepHook, DAEMON_CONFIG_FILE, DEFAULT_PROVIDER_TIMEOUT_MS,
    DEFAULT_RETRY_INTERVAL_MS, DEFAULT_STEP_TIMEOUT_MS, MAX_ANSWER_BYTES,
};
pub use receipt::{
    automation_transition, install_transition, receipt, receipts, AutomationEvent,
    AutomationRecord, AutomationState, InstallRecord, InstallState, InvalidReceiptTransition,
    ReceiptState, AUTOMATION_ENDED, AUTOMATION_PREFIX, AUTOMATION_STARTED, INSTALL_PREFIX,
    INSTALL_PROGRESSED, INSTALL_REQUESTED, RECEIPT_SPEC_VERSION,
};
pub use replication::{
    PeerState, PeersFile, PeersFileError, Release, ReleaseCache, ReleaseError, Withheld,
    MAX_CACHED_OBJECTS, MAX_PEERS_KEPT, PEERS_FILE,
};
pub use session::{
    transition as turn_transition, CorrelationKeys, InvalidTransition as InvalidTurnTransition,
    QuarantinePayload, TurnEvent, TurnState, MAX_CANDIDATES, ORPHAN_SWEEPER_ACTOR,
};
pub use session_dag::{
    orphans, session, session_ref, session_totals, sessions, sweep, Orphan, OrphanConfig,
    OrphanEventReceipt, SessionDagError, SessionDetail, SessionView, SweepReport, TurnView,
    DEFAULT_ORPHAN_TTL_SECONDS, DEFAULT_SWEEP_INTERVAL_MS, MAX_ORPHAN_TTL_SECONDS,
    ORPHAN_RECEIPT_SPEC_VERSION, SWEEP_INTERVAL_RANGE_MS,
};
pub use shutdown::{run_graph, GraphError, StepAction, StepResult, StepSpec, MAX_SHUTDOWN_STEPS};
pub use status::{
    status, DaemonSection, Health, LogStatus, ProjectionState, ReplicationStatus, SessionStatus,
    StatusDocument, SurfaceSeen, MAX_SPLIT_BRAIN_LISTED, STATUS_SCHEMA_VERSION,
};
pub use storage::{StorageError, StorageOptions, DERIVED_PREFIX, EVENTS_TREE, META_TREE};
pub use store::{
    db_dir, AppendError, AppendOutcome, Holder, InitOptions, OpenError, OpenOptions, Progress,
    ReadError, RebuildError, RebuildReport, Store, StoreMeta, FORMAT_VERSION, MAX_COMMIT_EVENTS,
    MAX_QUEUED_EVENTS, MAX_SUBMISSION_EVENTS, POLICY_ACTOR,
};
