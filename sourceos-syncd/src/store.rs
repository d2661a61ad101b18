//! The store: a home directory holding the sled database, opened for use.
//!
//! It owns the append path (sealing, group commit, durability), the read
//! paths over the log, and the projection engine. Appends are durable before
//! they are acknowledged: the events batch is applied, sled is flushed and
//! the database file is fsynced, then projections fold the new events and
//! every waiting submitter gets its outcome. Concurrent submitters are
//! group-committed: whichever thread takes the commit lock first commits
//! everything queued at that moment with one flush and one fsync.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, IdGenerator, SystemClock, UuidV7Generator};
use crate::codec;
use crate::event::{genesis, Envelope, EventDamage, EventDraft, OriginRef, SealContext};
use crate::ids::{
    DeviceId, Digest, IdempotencyKey, InvalidValue, ProfileId, Seq, Subject, Timestamp,
};
use crate::model::Effect;
use crate::pipeline;
use crate::policy::{LocalPolicy, PolicyHook};
use crate::projection::{
    self, idempotency, origins, registry, subjects, summary, Engine, FreshFold, Head,
    ProjectionError, ProjectionHealth, ProjectionStatus,
};
use crate::storage::{EventRows, Storage, StorageError, StorageOptions};

/// On-disk format version written to `meta`.
pub const FORMAT_VERSION: u32 = 1;
/// Events one submission may carry.
pub const MAX_SUBMISSION_EVENTS: usize = 4_096;
/// Events one group commit may take.
pub const MAX_COMMIT_EVENTS: usize = 4_096;
/// Events that may wait in the commit queue; submitters beyond it block.
pub const MAX_QUEUED_EVENTS: usize = 16_384;
/// Events folded per step while catching up or rebuilding.
const FOLD_CHUNK_EVENTS: usize = 4_096;

const META_FORMAT: &str = "format_version";
const META_DEVICE: &str = "device_id";
const META_PROFILE: &str = "profile";
const META_GENESIS: &str = "genesis";
const META_CREATED: &str = "created_at";
/// One key per projection this store has held a tree for
/// (`projection:<name>`, value CBOR `true`), so that a missing tree tells
/// damage (held) from a projection new to the store (not held).
const META_HELD_PREFIX: &str = "projection:";
const OWNER_FILE: &str = "owner.json";

/// Durable metadata of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMeta {
    /// Format version.
    pub format_version: u32,
    /// This device.
    pub device: DeviceId,
    /// The profile this store belongs to.
    pub profile: ProfileId,
    /// The chain's starting value.
    pub genesis: Digest,
    /// When the store was created.
    pub created_at: Timestamp,
}

/// Options for creating a store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Device id; generated when absent.
    pub device: Option<DeviceId>,
    /// Profile.
    pub profile: ProfileId,
    /// Creation time to record (a restore keeps the original's); now when
    /// absent.
    pub created_at: Option<Timestamp>,
}

/// Options for opening a store.
#[derive(Clone)]
pub struct OpenOptions {
    /// Fold events that projections have not seen yet (after a crash).
    /// The doctor opens without it so that it sees the state as it is.
    pub catch_up: bool,
    /// Storage engine options.
    pub storage: StorageOptions,
    /// Time source for recording times.
    pub clock: Arc<dyn Clock>,
    /// Event id source.
    pub ids: Arc<dyn IdGenerator>,
    /// Decides mutations; its blocking decisions are recorded in the log.
    pub policy: Arc<dyn PolicyHook>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            catch_up: true,
            storage: StorageOptions::default(),
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Generator::new()),
            policy: Arc::new(LocalPolicy::default()),
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("catch_up", &self.catch_up)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// Who holds a store, as recorded in `HOME/owner.json` by the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// What it was running.
    pub command: String,
    /// Since when.
    pub since: String,
}

/// Opening a store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// There is no store in the home.
    #[error("no store at {home}: run `syncd init` first")]
    NotInitialized {
        /// The home directory.
        home: PathBuf,
    },
    /// A store already exists where one was to be created.
    #[error("a store already exists at {home}")]
    AlreadyInitialized {
        /// The home directory.
        home: PathBuf,
    },
    /// Another process holds the store.
    #[error("the store at {home} is in use by {}", holder.as_ref().map_or_else(|| "another process".to_owned(), |h| format!("process {} ({}) since {}", h.pid, h.command, h.since)))]
    Locked {
        /// The home directory.
        home: PathBuf,
        /// The holder, if it left its name.
        holder: Option<Holder>,
    },
    /// Durable metadata is missing or unreadable.
    #[error("store metadata in {home} is damaged: {reason}")]
    MetaDamaged {
        /// The home directory.
        home: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by a newer or unknown format.
    #[error(
        "store at {home} has format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedFormat {
        /// The home directory.
        home: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The home directory cannot be created or used.
    #[error("cannot use home directory {home}: {source}")]
    Home {
        /// The home directory.
        home: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Catching projections up failed.
    #[error("cannot bring derived state up to date: {0}")]
    CatchUp(#[source] ProjectionError),
    /// Building projections new to the store or written in an older
    /// record format could not even start (the store's state lock was
    /// poisoned). A rebuild that meets damage does not fail the open: it
    /// leaves those projections damaged, for the doctor to report.
    #[error(
        "cannot rebuild derived state written by an older syncd: {source}; run `syncd doctor`"
    )]
    Upgrade {
        /// Why the rebuild failed.
        #[source]
        source: RebuildError,
    },
}

/// What happened to one submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Recorded and durable.
    Appended {
        /// Its sequence number.
        seq: Seq,
        /// Its hash.
        hash: Digest,
        /// Its id.
        id: crate::ids::EventId,
    },
    /// Its idempotency key was seen before; nothing was recorded.
    Duplicate {
        /// Sequence number of the original.
        seq: Seq,
        /// Hash of the original.
        hash: Digest,
    },
    /// It cannot be recorded as submitted; nothing was recorded.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Policy did not allow it: the decision was recorded (as event
    /// `decision_seq`), the submitted event was not.
    PolicyBlocked {
        /// `urn:srcos:decision:<id>`.
        decision_id: String,
        /// Sequence of the recorded decision.
        decision_seq: Seq,
        /// Deny or review required.
        effect: Effect,
        /// Why, naming the rule.
        reason: String,
    },
}

/// Appending failed as a whole; nothing in the failed submission was
/// acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Too many events in one submission.
    #[error("a submission may carry at most {MAX_SUBMISSION_EVENTS} events, got {0}")]
    TooMany(usize),
    /// The log is damaged at its head; appending would extend a broken chain.
    #[error("the log is damaged ({0}); run `syncd doctor`")]
    LogDamaged(String),
    /// The idempotency index is unusable, so duplicates cannot be detected.
    #[error("derived state is damaged ({0}); run `syncd doctor --repair`")]
    DerivedDamaged(String),
    /// An earlier write failed; the store refuses writes until reopened.
    #[error("the store refused writes after an earlier failure: {0}")]
    Poisoned(String),
    /// The storage engine failed; the submission was not acknowledged.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The sequence space is exhausted.
    #[error("the log has reached the largest sequence number")]
    Exhausted,
}

/// Reading the log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored event is damaged.
    #[error("event at sequence {seq} is damaged: {damage}")]
    Damaged {
        /// Where.
        seq: u64,
        /// What.
        #[source]
        damage: EventDamage,
    },
    /// A stored key is not a sequence number.
    #[error("events tree holds a key that is not a sequence number: {0}")]
    BadKey(#[source] InvalidValue),
    /// The subject index is not usable.
    #[error("subject index unavailable: {0}")]
    Index(String),
}

/// Rebuilding projections failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No projection has that name.
    #[error("no projection named {name:?}; known: {known}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
    /// The log is damaged; a rebuild from it would carry the damage over.
    #[error("the log is damaged, refusing to rebuild from it: {0}")]
    LogDamaged(String),
    /// Reading the log failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the projection failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The store's state lock is unusable.
    #[error("the store is unusable after an earlier failure: {0}")]
    Poisoned(String),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Events folded.
    pub events: u64,
    /// Per projection: records written.
    pub projections: Vec<(String, u64)>,
}

/// Actor of the decisions the policy hook records.
pub const POLICY_ACTOR: &str = "actor:syncd-policy";
/// Actors whose names start with this are syncd's own; submitters may not
/// use them.
pub const RESERVED_ACTOR_PREFIX: &str = "actor:syncd-";

/// What the policy hook said about a draft.
enum Gate {
    /// Not a gated action, or allowed by default: nothing recorded.
    Pass,
    /// A rule decided: record `decision`; `blocks` when it is not allowed.
    Decided {
        decision: Box<EventDraft>,
        blocks: Option<(Effect, String)>,
    },
}

/// The approval syncd records for a transaction that policy allows.
fn approval(txn: &str, decision: Option<&str>) -> Result<EventDraft, AppendError> {
    let bad = |e: InvalidValue| AppendError::DerivedDamaged(format!("approval: {e}"));
    let mut d = EventDraft::new(
        crate::ids::ActorId::new(POLICY_ACTOR).map_err(bad)?,
        crate::ids::EventKind::new("agent.transaction.approved").map_err(bad)?,
    );
    d.subject = Some(Subject::new(txn).map_err(bad)?);
    let mut payload = serde_json::json!({ "transaction_id": txn });
    if let (Some(id), Some(m)) = (decision, payload.as_object_mut()) {
        m.insert("policy_decision_ref".into(), id.into());
    }
    d.payload = crate::event::Payload::new(payload).map_err(bad)?;
    Ok(d)
}

fn decision_id_of(d: &EventDraft) -> String {
    d.subject
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Events sealed in one group commit, not yet durable.
struct Batch {
    head: Head,
    rows: EventRows,
    /// Reused for each envelope sealed in the group.
    scratch: Vec<u8>,
    in_batch: hashbrown::HashMap<IdempotencyKey, (Seq, Digest)>,
    in_batch_origins: HashMap<(DeviceId, Seq), (Seq, Digest)>,
    /// Where sealed parts of a large group go to be written while the rest
    /// is sealed ([`Store::seal_while_writing`]).
    writer: Option<std::sync::mpsc::SyncSender<EventRows>>,
    /// Events handed to the writer.
    sent: usize,
}

/// State of the log's head as found on open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LogState {
    Sound,
    Damaged(String),
}

/// One event to commit: submitted here, or recorded on another device and
/// imported (verified, with its origin kept).
pub(crate) enum Submission {
    Local(EventDraft),
    /// Recorded by syncd itself (reports, decisions): may use reserved
    /// kinds and actors.
    System(EventDraft),
    Foreign(Envelope),
}

struct Request {
    drafts: Mutex<Option<Vec<Submission>>>,
    result: Mutex<Option<Result<Vec<AppendOutcome>, String>>>,
    len: usize,
}

#[derive(Default)]
struct Queue {
    requests: Vec<Arc<Request>>,
    queued_events: usize,
}

struct WriteState {
    head: Head,
    engine: Engine,
    log: LogState,
    poisoned: Option<String>,
}

struct Inner {
    home: PathBuf,
    storage: Storage,
    meta: StoreMeta,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    policy: Arc<dyn PolicyHook>,
    queue: Mutex<Queue>,
    queue_space: Condvar,
    state: Mutex<WriteState>,
    /// Local drafts refused for a stale writer lease epoch since open.
    stale_epoch_refusals: std::sync::atomic::AtomicU64,
    /// Cores available, asked once: large groups are written while sealed
    /// only with two or more.
    cores: usize,
    /// The projections the store had held trees for when it was opened
    /// (`None`: a store that did not record them).
    held: Option<BTreeSet<String>>,
}

/// An open store. Cheap to clone; clones share one database handle, one
/// commit queue and one projection engine.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Progress callback for long operations: (done, total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// What sealing a group gives: per submission, its outcomes.
type SealResult = Result<Vec<Vec<AppendOutcome>>, AppendError>;

/// Groups of at least this many events are sealed while their first
/// parts are written.
const PIPELINED_GROUP_EVENTS: usize = 512;
/// Events per part handed to the writer thread.
const PIPELINE_ROWS: usize = 256;
/// Parts sealed ahead of the writer at most.
const WRITE_AHEAD_PARTS: usize = 2;

/// An event read by a rebuild's reader thread: its sequence, its stored
/// bytes and the hash they recompute to.
type Hashed = (Seq, crate::storage::StoredBytes, Digest);

/// The database directory inside a home.
pub fn db_dir(home: &Path) -> PathBuf {
    home.join("db")
}

fn is_initialized(home: &Path) -> bool {
    db_dir(home).join("conf").is_file()
}

fn read_holder(home: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(home.join(OWNER_FILE)).ok()?;
    let holder: Holder = serde_json::from_str(&text).ok()?;
    // Only report a holder that is still alive.
    if Path::new(&format!("/proc/{}", holder.pid)).exists() {
        Some(holder)
    } else {
        None
    }
}

/// The running command line, program by file name, bounded in length.
fn holder_command() -> String {
    const MAX_CHARS: usize = 200;
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| {
            Path::new(&p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let line = std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    line.chars().take(MAX_CHARS).collect()
}

fn write_holder(home: &Path, now: Timestamp) {
    let holder = Holder {
        pid: std::process::id(),
        command: holder_command(),
        since: now.to_string(),
    };
    if let Ok(text) = serde_json::to_string(&holder) {
        // Best effort: the holder file only improves a lock message.
        if let Err(e) = std::fs::write(home.join(OWNER_FILE), text) {
            tracing::debug!(error = %e, "cannot write holder file");
        }
    }
}

fn map_open(home: &Path, e: StorageError) -> OpenError {
    match e {
        StorageError::Locked { .. } => OpenError::Locked {
            home: home.to_path_buf(),
            holder: read_holder(home),
        },
        other => OpenError::Storage(other),
    }
}

fn lock<'a, T>(m: &'a Mutex<T>) -> Result<MutexGuard<'a, T>, String> {
    m.lock()
        .map_err(|_| "internal state lock poisoned by an earlier failure".to_owned())
}

fn generated_device() -> Result<DeviceId, InvalidValue> {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    // A random suffix keeps two machines with the same host name apart.
    let random = uuid::Uuid::now_v7().simple().to_string();
    let suffix = random.get(random.len().saturating_sub(8)..).unwrap_or("0");
    DeviceId::new(format!("device:{host}-{suffix}"))
}

impl Store {
    /// Creates a new store in `home` and opens it.
    pub fn init(home: &Path, init: InitOptions, options: OpenOptions) -> Result<Store, OpenError> {
        if is_initialized(home) {
            return Err(OpenError::AlreadyInitialized {
                home: home.to_path_buf(),
            });
        }
        std::fs::create_dir_all(home).map_err(|source| OpenError::Home {
            home: home.to_path_buf(),
            source,
        })?;
        let storage =
            Storage::open(&db_dir(home), &options.storage).map_err(|e| map_open(home, e))?;
        if !storage.meta_is_empty()? || storage.event_last()?.is_some() {
            return Err(OpenError::AlreadyInitialized {
                home: home.to_path_buf(),
            });
        }
        let meta = StoreMeta {
            format_version: FORMAT_VERSION,
            device: match init.device {
                Some(d) => d,
                None => generated_device().map_err(|e| OpenError::MetaDamaged {
                    home: home.to_path_buf(),
                    reason: format!("cannot derive a device id: {e}"),
                })?,
            },
            profile: init.profile,
            genesis: genesis(),
            created_at: init.created_at.unwrap_or_else(|| options.clock.now()),
        };
        let enc = |what, v: &dyn erased::Enc| v.enc(what);
        let held: Vec<String> = projection::builtin()
            .iter()
            .map(|p| format!("{META_HELD_PREFIX}{}", p.name()))
            .collect();
        let mut entries = vec![
            (META_FORMAT, enc("format version", &meta.format_version)?),
            (META_DEVICE, enc("device id", &meta.device)?),
            (META_PROFILE, enc("profile", &meta.profile)?),
            (META_GENESIS, enc("genesis", &meta.genesis)?),
            (META_CREATED, enc("creation time", &meta.created_at)?),
        ];
        for key in &held {
            entries.push((key.as_str(), enc("held projection", &true)?));
        }
        storage.meta_put_all(entries)?;
        // Empty projections with checkpoints at 0, so that a missing tree
        // later is recognisably damage.
        let names: Vec<&'static str> = projection::builtin().iter().map(|p| p.name()).collect();
        let fresh = FreshFold::new(&names, meta.genesis)
            .finish()
            .map_err(OpenError::CatchUp)?;
        for (name, state) in fresh {
            let tree = storage.derived(&projection::tree_name(name))?;
            projection::write_fresh(&tree, state).map_err(OpenError::CatchUp)?;
        }
        storage.sync_durable()?;
        crate::storage::sync_dir(&db_dir(home))?;
        crate::storage::sync_dir(home)?;
        drop(storage);
        Store::open(home, options)
    }

    /// Opens an existing store.
    pub fn open(home: &Path, options: OpenOptions) -> Result<Store, OpenError> {
        if !is_initialized(home) {
            return Err(OpenError::NotInitialized {
                home: home.to_path_buf(),
            });
        }
        let storage =
            Storage::open(&db_dir(home), &options.storage).map_err(|e| map_open(home, e))?;
        let meta = read_meta(home, &storage)?;
        write_holder(home, options.clock.now());

        let (head, log) = match storage.event_last()? {
            None => (
                Head {
                    seq: 0,
                    hash: meta.genesis,
                },
                LogState::Sound,
            ),
            Some((k, v)) => match (Seq::from_key(&k), Envelope::verify(&v)) {
                (Ok(seq), Ok(env)) if env.seq() == seq => (
                    Head {
                        seq: seq.get(),
                        hash: env.hash(),
                    },
                    LogState::Sound,
                ),
                (Ok(seq), Ok(env)) => (
                    Head {
                        seq: seq.get(),
                        hash: env.hash(),
                    },
                    LogState::Damaged(format!("event stored at {seq} says it is {}", env.seq())),
                ),
                (Ok(seq), Err(d)) => (
                    Head {
                        seq: seq.get(),
                        hash: meta.genesis,
                    },
                    LogState::Damaged(format!("head event {seq}: {d}")),
                ),
                (Err(e), _) => (
                    Head {
                        seq: 0,
                        hash: meta.genesis,
                    },
                    LogState::Damaged(format!("last key: {e}")),
                ),
            },
        };

        let hash_at = |seq: u64| -> Option<Digest> {
            let s = Seq::new(seq).ok()?;
            let raw = storage.event_get(s.to_key()).ok()??;
            Envelope::check_hash(&raw).ok()
        };
        let trees = |name: &str| -> Result<_, StorageError> {
            if storage.has_tree(name) {
                storage.derived(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let held = read_held(&storage)?;
        let engine = Engine::attach(
            projection::builtin(),
            trees,
            head,
            hash_at,
            meta.genesis,
            held.as_ref(),
        )?;
        let store = Store {
            inner: Arc::new(Inner {
                home: home.to_path_buf(),
                storage,
                meta,
                clock: options.clock,
                ids: options.ids,
                policy: options.policy,
                queue: Mutex::new(Queue::default()),
                queue_space: Condvar::new(),
                state: Mutex::new(WriteState {
                    head,
                    engine,
                    log,
                    poisoned: None,
                }),
                stale_epoch_refusals: std::sync::atomic::AtomicU64::new(0),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                held,
            }),
        };
        if options.catch_up {
            store.upgrade()?;
            store.catch_up().map_err(OpenError::CatchUp)?;
        }
        Ok(store)
    }

    /// Builds from the log the projections written in an older record
    /// format or new to the store (after an upgrade of syncd): they are
    /// derived, so nothing is lost, and appends that depend on them work
    /// again without a manual repair. Not done over a damaged head event.
    /// A rebuild that fails (damage further back in the log) leaves them
    /// damaged for the doctor to report; the store still opens, so that
    /// status can say so. Then records the projections held.
    fn upgrade(&self) -> Result<(), OpenError> {
        let poisoned = |reason| OpenError::Upgrade {
            source: RebuildError::Poisoned(reason),
        };
        let (outdated, sound) = {
            let st = lock(&self.inner.state).map_err(poisoned)?;
            (st.engine.outdated(), st.log == LogState::Sound)
        };
        if outdated.is_empty() || !sound {
            return self.record_held();
        }
        let started = std::time::Instant::now();
        match self.rebuild(&outdated, &mut |_, _| {}) {
            Ok(report) => tracing::info!(
                projections = %outdated.join(", "),
                events = report.events,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "built projections new to this store or written in an older record format"
            ),
            Err(e) => {
                tracing::error!(
                    projections = %outdated.join(", "),
                    error = %e,
                    "projections new to this store or written in an older record format could not be built; run `syncd doctor`"
                );
                lock(&self.inner.state)
                    .map_err(poisoned)?
                    .engine
                    .outdated_to_damaged(&e.to_string());
            }
        }
        self.record_held()
    }

    /// Adds the projections whose trees are present to those the store
    /// records as held, when some are not recorded yet (a store made
    /// before they were recorded, or one that just built a projection new
    /// to it). A tree missing from a store that never recorded the set is
    /// not added: damage and novelty cannot be told apart there.
    fn record_held(&self) -> Result<(), OpenError> {
        let storage = &self.inner.storage;
        let held = self.inner.held.as_ref();
        let mut added = false;
        for p in projection::builtin() {
            let name = p.name();
            if held.is_some_and(|h| h.contains(name))
                || !storage.has_tree(&projection::tree_name(name))
            {
                continue;
            }
            let value = codec::encode("held projection", &true)?;
            storage.meta_add(&format!("{META_HELD_PREFIX}{name}"), value)?;
            added = true;
        }
        if added {
            storage.sync_durable()?;
        }
        Ok(())
    }

    /// Whether the store had held a tree for `projection` when it was
    /// opened; `None` when it did not record that.
    pub(crate) fn held_before(&self, projection: &str) -> Option<bool> {
        self.inner.held.as_ref().map(|h| h.contains(projection))
    }

    /// Folds events that usable projections have not seen yet.
    fn catch_up(&self) -> Result<(), ProjectionError> {
        let mut st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        if st.log != LogState::Sound {
            return Ok(());
        }
        let Some(lowest) = st.engine.lowest_behind() else {
            return Ok(());
        };
        let head = st.head.seq;
        let mut chunk = Vec::with_capacity(FOLD_CHUNK_EVENTS);
        let from = Seq::new(lowest + 1).map_err(|e| ProjectionError::BadEvent {
            seq: lowest + 1,
            reason: e.to_string(),
        })?;
        for item in self.inner.storage.events_from(from.to_key()) {
            let (k, v) = item?;
            let seq = Seq::from_key(&k).map(Seq::get).unwrap_or(0);
            let env = Envelope::verify(&v).map_err(|d| ProjectionError::BadEvent {
                seq,
                reason: d.to_string(),
            })?;
            chunk.push(env);
            if chunk.len() >= FOLD_CHUNK_EVENTS {
                st.engine.apply(&chunk, head)?;
                chunk.clear();
            }
        }
        st.engine.apply(&chunk, head)?;
        st.engine.flush()?;
        Ok(())
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Durable metadata.
    pub fn meta(&self) -> &StoreMeta {
        &self.inner.meta
    }

    /// The policy hook of this store.
    pub(crate) fn policy(&self) -> &dyn PolicyHook {
        self.inner.policy.as_ref()
    }

    /// The time source of this store (for documents that carry a time).
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Current head: sequence (0 when empty) and hash (genesis when empty).
    pub fn head(&self) -> Result<(u64, Digest), String> {
        let st = lock(&self.inner.state)?;
        Ok((st.head.seq, st.head.hash))
    }

    /// Appends one event and waits until it is durable.
    pub fn append(&self, draft: EventDraft) -> Result<AppendOutcome, AppendError> {
        let mut out = self.append_many(vec![draft])?;
        out.pop()
            .ok_or_else(|| AppendError::Poisoned("empty commit result".into()))
    }

    /// Appends events in order and waits until all of them are durable.
    /// Outcomes are returned in submission order. Concurrent callers share
    /// one flush and fsync.
    pub fn append_many(&self, drafts: Vec<EventDraft>) -> Result<Vec<AppendOutcome>, AppendError> {
        self.submit(drafts.into_iter().map(Submission::Local).collect())
    }

    /// Appends an event recorded by syncd itself (a repair report, a policy
    /// decision): it may use reserved kinds and actors.
    pub(crate) fn append_system(&self, draft: EventDraft) -> Result<AppendOutcome, AppendError> {
        let mut out = self.submit(vec![Submission::System(draft)])?;
        out.pop()
            .ok_or_else(|| AppendError::Poisoned("empty commit result".into()))
    }

    /// Appends events recorded on other devices (already verified), keeping
    /// their id, time, origin device, origin sequence and origin hash. An
    /// event whose origin slot is already here is a duplicate; a different
    /// event claiming the same slot is rejected.
    pub(crate) fn append_foreign(
        &self,
        events: Vec<Envelope>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        self.submit(events.into_iter().map(Submission::Foreign).collect())
    }

    fn submit(&self, drafts: Vec<Submission>) -> Result<Vec<AppendOutcome>, AppendError> {
        let n = drafts.len();
        if n > MAX_SUBMISSION_EVENTS {
            return Err(AppendError::TooMany(n));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let request = Arc::new(Request {
            drafts: Mutex::new(Some(drafts)),
            result: Mutex::new(None),
            len: n,
        });
        {
            let mut q = lock(&self.inner.queue).map_err(AppendError::Poisoned)?;
            while q.queued_events + n > MAX_QUEUED_EVENTS && !q.requests.is_empty() {
                q = self
                    .inner
                    .queue_space
                    .wait(q)
                    .map_err(|_| AppendError::Poisoned("commit queue lock poisoned".into()))?;
            }
            q.queued_events += n;
            q.requests.push(Arc::clone(&request));
        }
        loop {
            let mut st = lock(&self.inner.state).map_err(AppendError::Poisoned)?;
            if let Some(r) = lock(&request.result).map_err(AppendError::Poisoned)?.take() {
                return r.map_err(AppendError::Poisoned);
            }
            let batch = {
                let mut q = lock(&self.inner.queue).map_err(AppendError::Poisoned)?;
                let mut take = 0;
                let mut events = 0;
                for r in &q.requests {
                    if take > 0 && events + r.len > MAX_COMMIT_EVENTS {
                        break;
                    }
                    events += r.len;
                    take += 1;
                }
                let batch: Vec<Arc<Request>> = q.requests.drain(..take).collect();
                q.queued_events -= events;
                self.inner.queue_space.notify_all();
                batch
            };
            let my_turn = batch.iter().any(|r| Arc::ptr_eq(r, &request));
            let outcome = self.commit(&mut st, &batch);
            if let Err(e) = &outcome {
                for r in &batch {
                    if let Ok(mut slot) = lock(&r.result) {
                        *slot = Some(Err(e.to_string()));
                    }
                }
            }
            drop(st);
            if my_turn {
                if let Err(e) = outcome {
                    // Tell the caller the typed error; others got its text.
                    let _ = lock(&request.result).map(|mut s| s.take());
                    return Err(e);
                }
            }
        }
    }

    fn commit(&self, st: &mut WriteState, batch: &[Arc<Request>]) -> Result<(), AppendError> {
        if let Some(p) = &st.poisoned {
            return Err(AppendError::Poisoned(p.clone()));
        }
        if let LogState::Damaged(d) = &st.log {
            return Err(AppendError::LogDamaged(d.clone()));
        }
        match st.engine.health(idempotency::NAME) {
            Some(ProjectionHealth::Current) => {}
            Some(h) => {
                return Err(AppendError::DerivedDamaged(format!(
                    "idempotency index is {}",
                    h.label()
                )))
            }
            None => {
                return Err(AppendError::DerivedDamaged(
                    "idempotency index missing".into(),
                ))
            }
        }
        let mut b = Batch {
            head: st.head,
            rows: EventRows::default(),
            scratch: Vec::with_capacity(512),
            in_batch: hashbrown::HashMap::new(),
            in_batch_origins: HashMap::new(),
            writer: None,
            sent: 0,
        };
        let events: usize = batch.iter().map(|r| r.len).sum();
        let (sealed, written) = if events >= PIPELINED_GROUP_EVENTS && self.inner.cores >= 2 {
            self.seal_while_writing(st, &mut b, batch)
        } else {
            (self.seal_batch(st, &mut b, batch), Ok(()))
        };
        let outcomes = match sealed {
            Ok(o) => o,
            Err(e) => {
                // Events sealed before the failure were folded into staged
                // derived state but will never be written: this handle must
                // not write that state, nor reuse those sequence numbers.
                if (b.sent > 0 || !b.rows.is_empty()) && st.poisoned.is_none() {
                    st.poisoned = Some(format!("a group commit failed part-way: {e}"));
                }
                return Err(e);
            }
        };
        if let Err(e) = written {
            // Part of the group may be in sled (not synced): as below.
            st.poisoned = Some(e.to_string());
            return Err(e);
        }
        let Batch {
            head, rows, sent, ..
        } = b;
        if sent > 0 || !rows.is_empty() {
            let appended = if rows.is_empty() {
                Ok(())
            } else {
                self.inner.storage.events_append(rows)
            };
            let durable = appended.and_then(|()| self.inner.storage.sync_durable());
            if let Err(e) = durable {
                // The events may or may not reach the disk later; nothing
                // was acknowledged, and no further append may reuse their
                // sequence numbers in this process.
                st.poisoned = Some(e.to_string());
                return Err(AppendError::Storage(e));
            }
            st.head = head;
            if let Err(e) = st.engine.flush_over_bound() {
                // The events are durable and are acknowledged; the damaged
                // projection is reported and refused further writes.
                tracing::error!(error = %e, "projection failed after a durable append");
                st.poisoned = Some(format!("derived state failed after a durable append: {e}"));
            }
        }
        for (req, out) in batch.iter().zip(outcomes) {
            *lock(&req.result).map_err(AppendError::Poisoned)? = Some(Ok(out));
        }
        Ok(())
    }

    /// Seals a large group while a second thread writes what is sealed to
    /// sled, in order, [`PIPELINE_ROWS`] events at a time: sealing and
    /// folding take about half as long as sled's own insertion, and the
    /// two overlap on two cores. The flush and fsync that acknowledge the
    /// group still come after all of it. Returns what sealing returned and
    /// whether every part reached sled; on return nothing is left in
    /// `b.rows` unless the writer failed or could not start.
    fn seal_while_writing(
        &self,
        st: &mut WriteState,
        b: &mut Batch,
        batch: &[Arc<Request>],
    ) -> (SealResult, Result<(), AppendError>) {
        let storage = &self.inner.storage;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<EventRows>(WRITE_AHEAD_PARTS);
            let writer = std::thread::Builder::new()
                .name("syncd-event-writer".into())
                .spawn_scoped(scope, move || {
                    for rows in rx {
                        storage.events_append(rows)?;
                    }
                    Ok::<(), StorageError>(())
                });
            let Ok(writer) = writer else {
                // No thread: the caller writes the rows itself.
                return (self.seal_batch(st, b, batch), Ok(()));
            };
            b.writer = Some(tx);
            let sealed = self.seal_batch(st, b, batch);
            if let Some(tx) = b.writer.take() {
                if sealed.is_ok() && !b.rows.is_empty() {
                    let rest = std::mem::take(&mut b.rows);
                    let n = rest.len();
                    match tx.send(rest) {
                        Ok(()) => b.sent += n,
                        Err(std::sync::mpsc::SendError(back)) => b.rows = back,
                    }
                }
            }
            let written = match writer.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AppendError::Storage(e)),
                Err(_) => Err(AppendError::Poisoned(
                    "the event writer thread panicked".into(),
                )),
            };
            (sealed, written)
        })
    }

    /// Seals every submission of a group onto the batch, in order.
    fn seal_batch(
        &self,
        st: &mut WriteState,
        b: &mut Batch,
        batch: &[Arc<Request>],
    ) -> Result<Vec<Vec<AppendOutcome>>, AppendError> {
        let mut outcomes: Vec<Vec<AppendOutcome>> = Vec::with_capacity(batch.len());
        for req in batch {
            let drafts = lock(&req.drafts)
                .map_err(AppendError::Poisoned)?
                .take()
                .unwrap_or_default();
            let mut out = Vec::with_capacity(drafts.len());
            // Room for every key and origin slot of the request at once:
            // growing the maps while sealing rehashed them several times
            // per group. Received events come in requests of their own.
            b.in_batch.reserve(drafts.len());
            if matches!(drafts.first(), Some(Submission::Foreign(_))) {
                b.in_batch_origins.reserve(drafts.len());
            }
            for submission in drafts {
                let outcome = match submission {
                    Submission::Local(draft) => self.commit_local(st, b, draft, false)?,
                    Submission::System(draft) => self.commit_local(st, b, draft, true)?,
                    Submission::Foreign(env) => {
                        let o = env.origin_ref();
                        let known = match b.in_batch_origins.get(&(o.device.clone(), o.seq)) {
                            Some((seq, hash)) => Some((*hash, *seq)),
                            None => self.find_origin(&st.engine, &o)?,
                        };
                        match known {
                            Some((present, local)) => self.same_origin(o.hash, present, local, &o),
                            None => {
                                let origin = (env.id(), env.recorded_at(), o);
                                self.seal_into(st, b, env.into_draft(), Some(origin))?
                            }
                        }
                    }
                };
                out.push(outcome);
            }
            outcomes.push(out);
        }
        Ok(outcomes)
    }

    /// A local draft: kind rules, idempotency, admission, policy, then
    /// sealing. Only syncd itself (`system`) may record reserved kinds or
    /// act as a reserved actor.
    fn commit_local(
        &self,
        st: &mut WriteState,
        b: &mut Batch,
        mut draft: EventDraft,
        system: bool,
    ) -> Result<AppendOutcome, AppendError> {
        if !system {
            if draft.kind.is_reserved() {
                return Ok(AppendOutcome::Rejected {
                    reason: format!(
                        "kind {} is in the reserved `syncd.` namespace, which only syncd records",
                        draft.kind
                    ),
                });
            }
            if draft.actor.as_str().starts_with(RESERVED_ACTOR_PREFIX) {
                return Ok(AppendOutcome::Rejected {
                    reason: format!("actor {} is reserved for syncd itself", draft.actor),
                });
            }
        }
        if let Err(reason) = crate::kinds::validate(&mut draft) {
            return Ok(AppendOutcome::Rejected { reason });
        }
        if let Some(key) = &draft.idempotency_key {
            if let Some((seq, hash)) = b.in_batch.get(key) {
                return Ok(AppendOutcome::Duplicate {
                    seq: *seq,
                    hash: *hash,
                });
            }
            if let Some((seq, hash)) = self.find_duplicate(&st.engine, key)? {
                return Ok(AppendOutcome::Duplicate { seq, hash });
            }
        }
        if let Err(reason) = self.admit(&st.engine, &draft)? {
            return Ok(AppendOutcome::Rejected { reason });
        }
        let proposal = (draft.kind.as_str() == "agent.transaction.proposed")
            .then(|| draft.subject.as_ref().map(ToString::to_string))
            .flatten();
        match self.gate(&st.engine, &draft)? {
            Gate::Pass => {
                let out = self.seal_into(st, b, draft, None)?;
                if let (Some(txn), AppendOutcome::Appended { .. }) = (&proposal, &out) {
                    self.seal_into(st, b, approval(txn, None)?, None)?;
                }
                Ok(out)
            }
            Gate::Decided { decision, blocks } => {
                let decision_id = decision_id_of(&decision);
                let recorded = self.seal_into(st, b, *decision, None)?;
                let AppendOutcome::Appended {
                    seq: decision_seq, ..
                } = recorded
                else {
                    return Ok(recorded);
                };
                match (blocks, &proposal) {
                    // An explicit allow is recorded before what it allows.
                    (None, _) => {
                        let out = self.seal_into(st, b, draft, None)?;
                        if let (Some(txn), AppendOutcome::Appended { .. }) = (&proposal, &out) {
                            self.seal_into(st, b, approval(txn, Some(&decision_id))?, None)?;
                        }
                        Ok(out)
                    }
                    // A proposal that needs review waits, proposed, naming
                    // the decision.
                    (Some((Effect::ReviewRequired, _)), Some(_)) => {
                        let mut draft = draft;
                        let mut fields = draft.payload.to_value();
                        if let Some(m) = fields.as_object_mut() {
                            m.insert("policy_decision_ref".into(), decision_id.clone().into());
                        }
                        draft.payload = crate::event::Payload::new(fields)
                            .map_err(|e| AppendError::DerivedDamaged(format!("proposal: {e}")))?;
                        self.seal_into(st, b, draft, None)
                    }
                    (Some((effect, reason)), _) => Ok(AppendOutcome::PolicyBlocked {
                        decision_id,
                        decision_seq,
                        effect,
                        reason,
                    }),
                }
            }
        }
    }

    /// Seals one event onto the batch and folds it into staged derived
    /// state (nothing is written until the batch is durable).
    fn seal_into(
        &self,
        st: &mut WriteState,
        b: &mut Batch,
        draft: EventDraft,
        origin: Option<(crate::ids::EventId, Timestamp, OriginRef)>,
    ) -> Result<AppendOutcome, AppendError> {
        let seq = Seq::new(b.head.seq.checked_add(1).ok_or(AppendError::Exhausted)?)
            .map_err(|_| AppendError::Exhausted)?;
        let origin_slot = origin.as_ref().map(|(_, _, o)| (o.device.clone(), o.seq));
        let ctx = match origin {
            None => SealContext {
                seq,
                id: self.inner.ids.next_id(),
                at: self.inner.clock.now(),
                origin: self.inner.meta.device.clone(),
                foreign: None,
                prev: b.head.hash,
            },
            Some((id, at, o)) => SealContext {
                seq,
                id,
                at,
                origin: o.device,
                foreign: Some((o.seq, o.hash)),
                prev: b.head.hash,
            },
        };
        let env = match Envelope::seal_to(draft, ctx, &mut b.scratch) {
            Err(e) => {
                return Ok(AppendOutcome::Rejected {
                    reason: e.to_string(),
                })
            }
            Ok(env) => env,
        };
        b.head = Head {
            seq: seq.get(),
            hash: env.hash(),
        };
        if let Some(slot) = origin_slot {
            b.in_batch_origins
                .insert(slot, (seq, env.origin_ref().hash));
        }
        b.rows.push(seq.to_key(), &b.scratch);
        if b.rows.len() >= PIPELINE_ROWS {
            if let Some(tx) = &b.writer {
                let part = std::mem::take(&mut b.rows);
                let n = part.len();
                match tx.send(part) {
                    Ok(()) => b.sent += n,
                    // The writer stopped (its error is reported when the
                    // group ends): keep the rows, send nothing more.
                    Err(std::sync::mpsc::SendError(back)) => {
                        b.rows = back;
                        b.writer = None;
                    }
                }
            }
        }
        // Fold now (staged only, nothing written) so that later drafts of
        // this group are admitted against the state this one creates. If
        // the group does not become durable the store is poisoned and this
        // staged state is never written.
        if let Err(e) = st.engine.fold(std::slice::from_ref(&env), seq.get()) {
            st.poisoned = Some(format!("derived state failed while folding: {e}"));
            return Err(AppendError::Poisoned(e.to_string()));
        }
        let (hash, id) = (env.hash(), env.id());
        // The envelope is not needed any more: its key moves into the
        // group's index rather than being copied.
        if let Some(k) = env.into_idempotency_key() {
            b.in_batch.entry(k).or_insert((seq, hash));
        }
        Ok(AppendOutcome::Appended { seq, hash, id })
    }

    /// Asks the policy hook about an object mutation. Decisions of an
    /// explicit rule are recorded; the default allow is not.
    fn gate(&self, engine: &Engine, draft: &EventDraft) -> Result<Gate, AppendError> {
        let Some(state) = engine.staging(registry::NAME) else {
            return Err(AppendError::DerivedDamaged("registry unavailable".into()));
        };
        let fact = |e: ProjectionError| AppendError::DerivedDamaged(e.to_string());
        let Some(request) =
            registry::policy_request(state, draft, &self.inner.meta.profile).map_err(fact)?
        else {
            return Ok(Gate::Pass);
        };
        let verdict = self.inner.policy.decide(&request);
        if verdict.rule.is_none() && verdict.effect == Effect::Allow {
            return Ok(Gate::Pass);
        }
        let decision = self.decision_draft(&request, &verdict)?;
        let reason = format!(
            "{} {} {} by {}: {}",
            decision_id_of(&decision),
            match verdict.effect {
                Effect::Allow => "allows",
                Effect::Deny => "denies",
                Effect::ReviewRequired => "requires review for",
            },
            draft.kind,
            draft.actor,
            verdict.rationale
        );
        let blocks = match verdict.effect {
            Effect::Allow => None,
            effect => Some((effect, reason)),
        };
        Ok(Gate::Decided {
            decision: Box::new(decision),
            blocks,
        })
    }

    /// The `policy.decided` event that records a verdict, with a fresh
    /// `urn:srcos:decision:` id.
    pub(crate) fn decision_draft(
        &self,
        request: &crate::policy::PolicyRequest,
        verdict: &crate::policy::PolicyVerdict,
    ) -> Result<EventDraft, AppendError> {
        let decision_id = format!(
            "urn:srcos:decision:{}",
            self.inner.ids.next_id().to_string().replace('-', "")
        );
        let payload = serde_json::json!({
            "decision_id": decision_id,
            "effect": verdict.effect,
            "policy_id": verdict.policy_id,
            "policy_version": verdict.policy_version,
            "actor_id": request.actor,
            "object_id": request.object_id,
            "profile_id": request.profile,
            "action": request.action,
            "rationale": verdict.rationale,
            "decided_at": self.inner.clock.now().to_string(),
        });
        let bad = |e: InvalidValue| AppendError::DerivedDamaged(format!("policy decision: {e}"));
        let mut decision = EventDraft::new(
            crate::ids::ActorId::new(POLICY_ACTOR).map_err(bad)?,
            crate::ids::EventKind::new("policy.decided").map_err(bad)?,
        );
        decision.subject = Some(Subject::new(decision_id.as_str()).map_err(bad)?);
        decision.payload = crate::event::Payload::new(payload).map_err(bad)?;
        Ok(decision)
    }

    /// Outcome for a foreign event whose origin slot is already filled:
    /// the same event is a duplicate, a different one is refused.
    fn same_origin(
        &self,
        incoming: Digest,
        present: Digest,
        local: Seq,
        o: &OriginRef,
    ) -> AppendOutcome {
        if incoming == present {
            AppendOutcome::Duplicate {
                seq: local,
                hash: present,
            }
        } else {
            AppendOutcome::Rejected {
                reason: format!(
                    "{} event {} arrives with hash {incoming}, but the copy here (event {local}) has {present}: forked or forged history",
                    o.device, o.seq
                ),
            }
        }
    }

    /// Admission of a local draft against registered state.
    fn admit(
        &self,
        engine: &Engine,
        draft: &EventDraft,
    ) -> Result<Result<(), String>, AppendError> {
        let Some(state) = engine.staging(registry::NAME) else {
            return Err(AppendError::DerivedDamaged("registry unavailable".into()));
        };
        let verdict = registry::admit(state, draft)
            .map_err(|e| AppendError::DerivedDamaged(e.to_string()))?;
        if verdict.is_err() {
            return Ok(verdict);
        }
        let Some(state) = engine.staging(projection::ledger::NAME) else {
            return Err(AppendError::DerivedDamaged("ledger unavailable".into()));
        };
        let verdict = projection::ledger::admit(state, draft)
            .map_err(|e| AppendError::DerivedDamaged(e.to_string()))?;
        if verdict.is_err() || !projection::sessions::concerns(draft) {
            return Ok(verdict);
        }
        let Some(state) = engine.staging(projection::sessions::NAME) else {
            return Err(AppendError::DerivedDamaged(
                "session DAG unavailable".into(),
            ));
        };
        match projection::sessions::admit(state, draft)
            .map_err(|e| AppendError::DerivedDamaged(e.to_string()))?
        {
            Ok(()) => Ok(Ok(())),
            Err(refusal) => {
                if refusal.stale_scope.is_some() {
                    self.inner
                        .stale_epoch_refusals
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Err(refusal.reason))
            }
        }
    }

    /// Local drafts refused since this store was opened because their
    /// writer lease epoch was stale.
    pub fn stale_epoch_refusals(&self) -> u64 {
        self.inner
            .stale_epoch_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why a foreign event could not be imported here, if it could not:
    /// a different event already holds its origin slot.
    pub(crate) fn origin_conflict(&self, env: &Envelope) -> Result<Option<String>, AppendError> {
        let o = env.origin_ref();
        let st = lock(&self.inner.state).map_err(AppendError::Poisoned)?;
        match self.find_origin(&st.engine, &o)? {
            Some((present, local)) if present != o.hash => Ok(Some(format!(
                "{} event {} has hash {} in the bundle but {present} here (event {local}): forked or forged history",
                o.device, o.seq, o.hash
            ))),
            _ => Ok(None),
        }
    }

    /// Writes verified events of a full bundle into a freshly created store,
    /// byte for byte. Each must continue the chain exactly.
    pub(crate) fn restore_events(&self, events: Vec<Envelope>) -> Result<(), AppendError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut st = lock(&self.inner.state).map_err(AppendError::Poisoned)?;
        let mut head = st.head;
        let mut rows = EventRows::default();
        for env in &events {
            if env.seq().get() != head.seq + 1 || env.prev_hash() != head.hash {
                return Err(AppendError::LogDamaged(format!(
                    "restored event {} does not continue the chain at {}",
                    env.seq(),
                    head.seq
                )));
            }
            let bytes = env
                .to_stored_bytes()
                .map_err(|e| AppendError::LogDamaged(format!("event {}: {e}", env.seq())))?;
            rows.push(env.seq().to_key(), &bytes);
            head = Head {
                seq: env.seq().get(),
                hash: env.hash(),
            };
        }
        self.inner.storage.events_append(rows)?;
        self.inner.storage.sync_durable()?;
        st.head = head;
        Ok(())
    }

    /// The local copy of an origin slot: (origin hash, local sequence).
    /// Events recorded here are their own origin.
    fn find_origin(
        &self,
        engine: &Engine,
        o: &OriginRef,
    ) -> Result<Option<(Digest, Seq)>, AppendError> {
        if o.device == self.inner.meta.device {
            let raw = self.inner.storage.event_get(o.seq.to_key())?;
            return match raw.as_deref().map(Envelope::verify) {
                Some(Ok(env)) => Ok(Some((env.hash(), o.seq))),
                Some(Err(d)) => Err(AppendError::LogDamaged(format!("event {}: {d}", o.seq))),
                // Claims to be ours but we never recorded it.
                None => Ok(Some((Digest::from_bytes([0; 32]), o.seq))),
            };
        }
        let Some(state) = engine.staging(origins::NAME) else {
            return Err(AppendError::DerivedDamaged(
                "origins index unavailable".into(),
            ));
        };
        origins::lookup(state, &o.device, o.seq)
            .map_err(|e| AppendError::DerivedDamaged(e.to_string()))
    }

    fn find_duplicate(
        &self,
        engine: &Engine,
        key: &IdempotencyKey,
    ) -> Result<Option<(Seq, Digest)>, AppendError> {
        let Some(state) = engine.staging(idempotency::NAME) else {
            return Err(AppendError::DerivedDamaged(
                "idempotency index unavailable".into(),
            ));
        };
        let found = idempotency::lookup(state, key)
            .map_err(|e| AppendError::DerivedDamaged(e.to_string()))?;
        let Some(seq) = found else { return Ok(None) };
        // Confirm against the event itself: the index stores a truncated
        // digest of the key.
        let raw = self.inner.storage.event_get(seq.to_key())?;
        let env = raw.as_deref().map(Envelope::verify);
        match env {
            Some(Ok(env)) if env.idempotency_key() == Some(key) => Ok(Some((seq, env.hash()))),
            Some(Ok(_)) => Ok(None),
            Some(Err(d)) => Err(AppendError::LogDamaged(format!("event {seq}: {d}"))),
            None => Err(AppendError::DerivedDamaged(format!(
                "idempotency index names event {seq}, which is not in the log"
            ))),
        }
    }

    /// Writes staged derived state. Called on close; safe to call any time.
    pub fn flush(&self) -> Result<(), ProjectionError> {
        let mut st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        // A poisoned handle may hold staged folds of events that never
        // became durable: it writes no derived state; the next open folds
        // whatever the log really holds.
        if st.poisoned.is_none() {
            st.engine.flush()?;
        }
        drop(st);
        self.inner.storage.sync_durable()?;
        Ok(())
    }

    /// Flushes and closes this handle.
    pub fn close(self) -> Result<(), ProjectionError> {
        self.flush()?;
        let _ = std::fs::remove_file(self.inner.home.join(OWNER_FILE));
        Ok(())
    }

    /// One event by sequence number, verified.
    pub fn get(&self, seq: Seq) -> Result<Option<Envelope>, ReadError> {
        let Some(raw) = self.inner.storage.event_get(seq.to_key())? else {
            return Ok(None);
        };
        Envelope::verify(&raw)
            .map(Some)
            .map_err(|damage| ReadError::Damaged {
                seq: seq.get(),
                damage,
            })
    }

    /// Events from `from` on, verified, at most `limit`.
    pub fn range(&self, from: Seq, limit: usize) -> Result<Vec<Envelope>, ReadError> {
        let mut out = Vec::new();
        for item in self.scan(from) {
            if out.len() >= limit {
                break;
            }
            out.push(item?);
        }
        Ok(out)
    }

    /// Iterates events from `from` on, verifying each.
    pub fn scan(&self, from: Seq) -> impl Iterator<Item = Result<Envelope, ReadError>> + '_ {
        self.inner.storage.events_from(from.to_key()).map(|item| {
            let (k, v) = item?;
            let seq = Seq::from_key(&k).map_err(ReadError::BadKey)?;
            Envelope::verify(&v).map_err(|damage| ReadError::Damaged {
                seq: seq.get(),
                damage,
            })
        })
    }

    /// Raw stored pairs from `from` on (for the doctor and verify).
    pub(crate) fn scan_raw(
        &self,
        from: Seq,
    ) -> impl Iterator<Item = Result<crate::storage::StoredPair, StorageError>> + '_ {
        self.inner.storage.events_from(from.to_key())
    }

    /// Events about `subject` after sequence `after`, at most `limit`.
    pub fn by_subject(
        &self,
        subject: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, ReadError> {
        let seqs = {
            let st = lock(&self.inner.state).map_err(ReadError::Index)?;
            let state = st.engine.staging(subjects::NAME).ok_or_else(|| {
                ReadError::Index("subject index is not current; run `syncd doctor`".into())
            })?;
            subjects::seqs(state, subject, after, limit)
                .map_err(|e| ReadError::Index(e.to_string()))?
        };
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.get(seq)? {
                Some(e) => out.push(e),
                None => {
                    return Err(ReadError::Index(format!(
                        "subject index names event {seq}, which is not in the log"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Projection checkpoints and health.
    pub fn projections(&self) -> Result<Vec<ProjectionStatus>, String> {
        Ok(lock(&self.inner.state)?.engine.statuses())
    }

    /// Names of the projections.
    pub fn projection_names(&self) -> Result<Vec<&'static str>, String> {
        Ok(lock(&self.inner.state)?.engine.names())
    }

    /// The summary projection's view, when it is current.
    pub fn summary(&self) -> Result<Option<summary::SummaryView>, ProjectionError> {
        let st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        match st.engine.staging(summary::NAME) {
            Some(state) => summary::read(state).map(Some),
            None => Ok(None),
        }
    }

    /// Runs `f` over the registry's current state.
    pub(crate) fn with_registry<R>(
        &self,
        f: impl FnOnce(&projection::Staging) -> R,
    ) -> Result<R, ProjectionError> {
        let st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        let state = st
            .engine
            .staging(registry::NAME)
            .ok_or_else(|| ProjectionError::Damaged {
                tree: projection::tree_name(registry::NAME),
                key: String::new(),
                reason: "the registry is not current; run `syncd doctor`".into(),
            })?;
        Ok(f(state))
    }

    /// Runs `f` over the current state of the named projection.
    pub(crate) fn with_projection<R>(
        &self,
        name: &str,
        f: impl FnOnce(&projection::Staging) -> R,
    ) -> Result<R, ProjectionError> {
        let st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        let state = st
            .engine
            .staging(name)
            .ok_or_else(|| ProjectionError::Damaged {
                tree: projection::tree_name(name),
                key: String::new(),
                reason: format!("projection {name} is not current; run `syncd doctor`"),
            })?;
        Ok(f(state))
    }

    /// Open conflicts and policy-blocked objects, when the registry is
    /// current.
    pub fn registry_counters(&self) -> Result<Option<registry::Counters>, ProjectionError> {
        match self.with_registry(registry::status_counters) {
            Ok(c) => c.map(Some),
            Err(ProjectionError::Damaged { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Number of distinct subjects, when the subject index is current.
    pub fn subject_count(&self) -> Result<Option<u64>, ProjectionError> {
        let st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        match st.engine.staging(subjects::NAME) {
            Some(state) => subjects::count(state).map(Some),
            None => Ok(None),
        }
    }

    /// Why appends are refused, if they are.
    pub fn write_blocker(&self) -> Result<Option<String>, String> {
        let st = lock(&self.inner.state)?;
        if let Some(p) = &st.poisoned {
            return Ok(Some(p.clone()));
        }
        if let LogState::Damaged(d) = &st.log {
            return Ok(Some(format!("log damaged: {d}")));
        }
        Ok(None)
    }

    /// Drops and refolds projections from the log (all when `names` is
    /// empty). The log is verified while it is read.
    pub fn rebuild(
        &self,
        names: &[String],
        progress: Progress<'_>,
    ) -> Result<RebuildReport, RebuildError> {
        let mut st = lock(&self.inner.state).map_err(RebuildError::Poisoned)?;
        let known = st.engine.names();
        let mut selected: Vec<&'static str> = Vec::new();
        for n in names {
            match known.iter().find(|k| **k == n.as_str()) {
                Some(k) => selected.push(k),
                None => {
                    return Err(RebuildError::UnknownProjection {
                        name: n.clone(),
                        known: known.join(", "),
                    })
                }
            }
        }
        if selected.is_empty() {
            selected = known;
        }
        if let LogState::Damaged(d) = &st.log {
            return Err(RebuildError::LogDamaged(d.clone()));
        }
        let head = st.head;
        let started = std::time::Instant::now();
        let fold = self.fresh_fold(&selected, head.seq, progress)?;
        let folded_ms = started.elapsed().as_millis();
        let mut report = RebuildReport {
            events: head.seq,
            projections: Vec::new(),
        };
        for (name, state) in fold {
            let tree_name = projection::tree_name(name);
            let tree = self
                .inner
                .storage
                .recreate_derived(&tree_name)
                .map_err(|e| RebuildError::Projection(e.into()))?;
            let written = st.engine.install_fresh(name, state, tree)?;
            report.projections.push((name.to_owned(), written));
        }
        drop(st);
        tracing::debug!(
            events = head.seq,
            folded_ms,
            written_ms = started.elapsed().as_millis() - folded_ms,
            "rebuild"
        );
        self.inner
            .storage
            .sync_durable()
            .map_err(|e| RebuildError::Projection(e.into()))?;
        Ok(report)
    }

    /// Folds the whole log into fresh in-memory state for `names`,
    /// verifying every event and the chain on the way.
    pub(crate) fn fresh_fold(
        &self,
        names: &[&'static str],
        head_seq: u64,
        progress: Progress<'_>,
    ) -> Result<Vec<(&'static str, projection::FreshState)>, RebuildError> {
        let mut fold = FreshFold::new(names, self.inner.meta.genesis);
        let genesis = self.inner.meta.genesis;
        if self.inner.cores < 2 {
            let mut prev = genesis;
            let mut last = 0;
            for item in self.hashed_events() {
                let (seq, bytes, digest) = item?;
                let env = Self::link(&seq, &bytes, digest, prev)?;
                prev = env.hash();
                fold.apply(&env)?;
                last = seq.get();
                if last % pipeline::CHUNK_ITEMS as u64 == 0 {
                    progress(last, head_seq);
                }
            }
            progress(last, head_seq);
            return Ok(fold.finish()?);
        }
        // This thread reads and hashes while a second one decodes, checks
        // the chain and folds (`pipeline`).
        let (read, folded) = pipeline::run(
            "syncd-fold",
            |feed| self.hashed_scan(feed, head_seq, progress),
            move |events| {
                let mut prev = genesis;
                for (seq, bytes, digest) in events {
                    let env = Self::link(&seq, &bytes, digest, prev)?;
                    prev = env.hash();
                    fold.apply(&env)?;
                }
                Ok::<_, RebuildError>(fold)
            },
        )
        .map_err(|e| RebuildError::Poisoned(e.full_text()))?;
        // A fold error is the earlier finding in the log: the reader only
        // reads ahead of the fold (and stops once it is gone).
        let fold = folded?;
        read?;
        Ok(fold.finish()?)
    }

    /// The whole log in order, each event with the hash its stored bytes
    /// recompute to; sequences must be contiguous from 1. The first error
    /// ends what a caller reads.
    fn hashed_events(&self) -> impl Iterator<Item = Result<Hashed, RebuildError>> + '_ {
        let mut expect = 1u64;
        self.scan_raw(Seq::FIRST).map(move |item| {
            let (k, v) = item.map_err(ReadError::from)?;
            let seq = Seq::from_key(&k).map_err(ReadError::BadKey)?;
            if seq.get() != expect {
                return Err(RebuildError::LogDamaged(format!(
                    "expected event {expect}, found {seq}"
                )));
            }
            let digest = Envelope::check_hash(&v).map_err(|damage| ReadError::Damaged {
                seq: seq.get(),
                damage,
            })?;
            expect += 1;
            Ok((seq, v, digest))
        })
    }

    /// [`Store::hashed_events`] fed to a rebuild's fold thread. Stops
    /// quietly when the fold is gone.
    fn hashed_scan(
        &self,
        feed: &mut pipeline::Feeder<Hashed>,
        head_seq: u64,
        progress: Progress<'_>,
    ) -> Result<(), RebuildError> {
        let mut last = 0;
        for item in self.hashed_events() {
            let hashed = item?;
            last = hashed.0.get();
            if !feed.push(hashed) {
                return Ok(());
            }
            if last % pipeline::CHUNK_ITEMS as u64 == 0 {
                progress(last, head_seq);
            }
        }
        progress(last, head_seq);
        Ok(())
    }

    /// Decodes an event whose bytes hash to `digest` and checks that it is
    /// the one at `seq` following `prev`: what [`Envelope::verify`] and the
    /// chain check of a scan do, in two steps.
    fn link(
        seq: &Seq,
        bytes: &[u8],
        digest: Digest,
        prev: Digest,
    ) -> Result<Envelope, RebuildError> {
        let env = Envelope::decode_unverified(bytes).map_err(|damage| ReadError::Damaged {
            seq: seq.get(),
            damage,
        })?;
        if env.hash() != digest {
            return Err(ReadError::Damaged {
                seq: seq.get(),
                damage: EventDamage::Framing("decoded hash differs from the hash entry"),
            }
            .into());
        }
        if env.prev_hash() != prev || env.seq() != *seq {
            return Err(RebuildError::LogDamaged(format!(
                "chain broken at event {seq}"
            )));
        }
        Ok(env)
    }

    /// Installs a fresh fold's state as a projection's tree (doctor repair).
    pub(crate) fn install_fresh(
        &self,
        name: &str,
        state: projection::FreshState,
        tree: crate::storage::DerivedTree,
    ) -> Result<u64, ProjectionError> {
        let mut st = lock(&self.inner.state)
            .map_err(|reason| ProjectionError::BadEvent { seq: 0, reason })?;
        let written = st.engine.install_fresh(name, state, tree)?;
        drop(st);
        self.inner.storage.sync_durable()?;
        Ok(written)
    }

    /// The cores this process may use (a scan splits its work over two
    /// threads only when there are two).
    pub(crate) fn cores(&self) -> usize {
        self.inner.cores
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.inner.storage
    }
}

mod erased {
    //! Lets `init` encode meta values of different types in one list.
    use crate::codec::{self, EncodeError};
    use serde::Serialize;

    pub(super) trait Enc {
        fn enc(&self, what: &'static str) -> Result<Vec<u8>, EncodeError>;
    }

    impl<T: Serialize> Enc for T {
        fn enc(&self, what: &'static str) -> Result<Vec<u8>, EncodeError> {
            codec::encode(what, self)
        }
    }
}

impl From<codec::EncodeError> for OpenError {
    fn from(e: codec::EncodeError) -> Self {
        OpenError::MetaDamaged {
            home: PathBuf::new(),
            reason: e.to_string(),
        }
    }
}

/// The projections the store records as held (see [`META_HELD_PREFIX`]);
/// `None` for a store made before they were recorded.
fn read_held(storage: &Storage) -> Result<Option<BTreeSet<String>>, OpenError> {
    let names = storage.meta_keys(META_HELD_PREFIX)?;
    Ok((!names.is_empty()).then(|| names.into_iter().collect()))
}

fn read_meta(home: &Path, storage: &Storage) -> Result<StoreMeta, OpenError> {
    fn field<T: serde::de::DeserializeOwned>(
        home: &Path,
        storage: &Storage,
        key: &'static str,
    ) -> Result<T, OpenError> {
        let raw = storage
            .meta_get(key)?
            .ok_or_else(|| OpenError::MetaDamaged {
                home: home.to_path_buf(),
                reason: format!("`{key}` is missing"),
            })?;
        codec::decode(key, &raw).map_err(|e| OpenError::MetaDamaged {
            home: home.to_path_buf(),
            reason: e.to_string(),
        })
    }
    let format_version: u32 = field(home, storage, META_FORMAT)?;
    if format_version != FORMAT_VERSION {
        return Err(OpenError::UnsupportedFormat {
            home: home.to_path_buf(),
            found: format_version,
        });
    }
    Ok(StoreMeta {
        format_version,
        device: field(home, storage, META_DEVICE)?,
        profile: field(home, storage, META_PROFILE)?,
        genesis: field(home, storage, META_GENESIS)?,
        created_at: field(home, storage, META_CREATED)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::{CountingIdGenerator, SteppingClock};
    use crate::ids::{ActorId, EventKind};

    fn opts() -> OpenOptions {
        OpenOptions {
            clock: Arc::new(SteppingClock::new(
                Timestamp::from_unix_micros(1_700_000_000_000_000),
                1_000,
            )),
            ids: Arc::new(CountingIdGenerator::new(1_700_000_000_000)),
            ..OpenOptions::default()
        }
    }

    fn init(dir: &Path) -> Store {
        Store::init(
            dir,
            InitOptions {
                device: Some(DeviceId::new("device:test").unwrap()),
                profile: ProfileId::new("profile:test").unwrap(),
                created_at: None,
            },
            opts(),
        )
        .unwrap()
    }

    /// Raw content of every derived tree, after flushing staged writes.
    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn snapshot(store: &Store) -> BTreeMap<String, Rows> {
        store.flush().unwrap();
        let mut out = BTreeMap::new();
        for name in store.storage().derived_tree_names() {
            let rows = rows_of(store, &name);
            out.insert(name, rows);
        }
        out
    }

    /// Raw content of one derived tree as it is on disk.
    fn rows_of(store: &Store, tree: &str) -> Rows {
        let tree = store.storage().derived(tree).unwrap();
        tree.iter().map(|r| r.unwrap()).collect()
    }

    #[derive(Debug, Clone)]
    struct Spec {
        actor: u8,
        kind: u8,
        subject: Option<u16>,
        key: Option<u16>,
    }

    fn draft(s: &Spec) -> EventDraft {
        let mut d = EventDraft::new(
            ActorId::new(format!("actor:a{}", s.actor)).unwrap(),
            EventKind::new(format!("kind.k{}", s.kind)).unwrap(),
        );
        d.subject = s
            .subject
            .map(|n| Subject::new(format!("object:{n}")).unwrap());
        d.idempotency_key = s
            .key
            .map(|n| IdempotencyKey::new(format!("key-{n}")).unwrap());
        d
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0u8..4,
            0u8..5,
            proptest::option::of(0u16..40),
            proptest::option::weighted(0.4, 0u16..300),
        )
            .prop_map(|(actor, kind, subject, key)| Spec {
                actor,
                kind,
                subject,
                key,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// INV-PROJ-01: an incremental fold equals a full rebuild, and
        /// equals it again after a reopen.
        #[test]
        fn incremental_equals_rebuild(
            specs in proptest::collection::vec(spec(), 1..1_400),
            cuts in proptest::collection::vec(1usize..600, 1..8),
            reopen_after in 0usize..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = init(dir.path());
            let mut rest: &[Spec] = &specs;
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                let (now, later) = rest.split_at(n);
                store.append_many(now.iter().map(draft).collect()).unwrap();
                rest = later;
                if i == reopen_after {
                    store.close().unwrap();
                    store = Store::open(dir.path(), opts()).unwrap();
                }
                i += 1;
            }
            let incremental = snapshot(&store);
            store.rebuild(&[], &mut |_, _| {}).unwrap();
            let rebuilt = snapshot(&store);
            prop_assert_eq!(&incremental, &rebuilt);
            store.close().unwrap();
            let store = Store::open(dir.path(), opts()).unwrap();
            prop_assert_eq!(&snapshot(&store), &rebuilt);
        }
    }

    #[test]
    fn duplicates_report_the_original_within_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let s = Spec {
            actor: 0,
            kind: 0,
            subject: None,
            key: Some(7),
        };
        let out = store.append_many(vec![draft(&s), draft(&s)]).unwrap();
        let AppendOutcome::Appended { seq, hash, .. } = out[0].clone() else {
            panic!("{out:?}")
        };
        assert_eq!(out[1], AppendOutcome::Duplicate { seq, hash });
        assert_eq!(
            store.append(draft(&s)).unwrap(),
            AppendOutcome::Duplicate { seq, hash }
        );
        store.close().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(
            store.append(draft(&s)).unwrap(),
            AppendOutcome::Duplicate { seq, hash }
        );
        assert_eq!(store.head().unwrap().0, 1);
    }

    #[test]
    fn concurrent_appenders_share_commits_and_keep_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50u16 {
                        let s = Spec {
                            actor: t,
                            kind: 1,
                            subject: Some(i % 7),
                            key: None,
                        };
                        let out = store.append(draft(&s)).unwrap();
                        assert!(matches!(out, AppendOutcome::Appended { .. }));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.head().unwrap().0, 200);
        let report = crate::doctor::verify(&store, None, &mut |_, _| {}).unwrap();
        assert!(report.damage.is_empty(), "{:?}", report.damage);
        assert_eq!(report.events, 200);
        let by_subject = store
            .by_subject(&Subject::new("object:3").unwrap(), 0, 1_000)
            .unwrap();
        assert!(by_subject
            .iter()
            .all(|e| e.subject().map(Subject::as_str) == Some("object:3")));
        assert!(by_subject.windows(2).all(|w| w[0].seq() < w[1].seq()));
    }

    #[test]
    fn subject_posting_lists_span_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let n = crate::projection::subjects::CHUNK_SEQS * 2 + 17;
        let s = Spec {
            actor: 0,
            kind: 0,
            subject: Some(1),
            key: None,
        };
        store
            .append_many((0..n).map(|_| draft(&s)).collect())
            .unwrap();
        let all = store
            .by_subject(&Subject::new("object:1").unwrap(), 0, usize::MAX)
            .unwrap();
        assert_eq!(all.len(), n);
        let after = store
            .by_subject(&Subject::new("object:1").unwrap(), 600, 10)
            .unwrap();
        assert_eq!(after.first().map(|e| e.seq().get()), Some(601));
        assert_eq!(after.len(), 10);
    }

    /// A store holding one event of actor a0, reopened after the registry
    /// record of actor a3 was garbled: a draft by a0 (`good`) is admitted,
    /// one by a3 (`bad`) makes folding fail.
    fn with_garbled_actor_a3(dir: &Path) -> (Store, Spec, Spec) {
        let store = init(dir);
        let good = Spec {
            actor: 0,
            kind: 0,
            subject: Some(1),
            key: None,
        };
        store.append(draft(&good)).unwrap();
        store.close().unwrap();
        {
            let store = Store::open(
                dir,
                OpenOptions {
                    catch_up: false,
                    ..opts()
                },
            )
            .unwrap();
            let tree = store.storage().derived("p.registry").unwrap();
            let mut key = vec![0x02];
            key.extend_from_slice(b"actor:a3");
            tree.raw_insert(&key, b"garbage that fails its checksum")
                .unwrap();
            drop(store);
        }
        let store = Store::open(dir, opts()).unwrap();
        let bad = Spec {
            actor: 3,
            kind: 0,
            subject: Some(1),
            key: None,
        };
        (store, good, bad)
    }

    /// Flips one byte in the middle of the stored event `seq` of a closed
    /// store, as a disk might.
    fn flip_event_byte(dir: &Path, seq: u64) {
        let db = sled::open(db_dir(dir)).unwrap();
        let events = db.open_tree("events").unwrap();
        let key = Seq::new(seq).unwrap().to_key();
        let mut v = events.get(key).unwrap().unwrap().to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        events.insert(key, v).unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn rebuild_over_a_damaged_event_fails_naming_it_and_keeps_derived_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let specs: Vec<EventDraft> = (0..700u16)
            .map(|i| {
                draft(&Spec {
                    actor: (i % 3) as u8,
                    kind: (i % 2) as u8,
                    subject: Some(i % 5),
                    key: None,
                })
            })
            .collect();
        store.append_many(specs).unwrap();
        let before = snapshot(&store);
        store.close().unwrap();
        // Several reader chunks in.
        flip_event_byte(dir.path(), 300);
        let store = Store::open(dir.path(), opts()).unwrap();
        let e = store.rebuild(&[], &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("300"), "{e}");
        // Nothing derived was replaced by a partial fold.
        assert_eq!(snapshot(&store), before);
    }

    /// INV-STORE-03: a group that fails part-way (here: a damaged registry
    /// record met during admission of its second draft) poisons the handle,
    /// so that the folds of its first draft, which never became durable,
    /// are never written, and the next open is consistent.
    #[test]
    fn group_failing_part_way_leaves_no_phantom_derived_state() {
        let dir = tempfile::tempdir().unwrap();
        let (store, good, bad) = with_garbled_actor_a3(dir.path());
        assert!(store.append_many(vec![draft(&good), draft(&bad)]).is_err());
        assert!(matches!(
            store.append(draft(&good)),
            Err(AppendError::Poisoned(_))
        ));
        assert_eq!(store.head().unwrap().0, 1);
        store.close().unwrap();
        let store = Store::open(
            dir.path(),
            OpenOptions {
                catch_up: false,
                ..opts()
            },
        )
        .unwrap();
        for p in store.projections().unwrap() {
            assert!(
                p.checkpoint_seq <= 1,
                "{} claims {} with the log at 1",
                p.name,
                p.checkpoint_seq
            );
        }
        let report = crate::doctor::doctor(
            &store,
            crate::doctor::DoctorOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(
            report.findings.iter().all(|f| f.tree == "p.registry"),
            "only the garbled registry record may be reported: {:?}",
            report.findings
        );
    }

    /// A large group is written in parts while it is sealed. One that fails
    /// part-way acknowledges nothing and poisons the handle; parts already
    /// handed to sled may survive, as complete, chained events that the
    /// next open folds like any others.
    #[test]
    fn large_group_failing_part_way_leaves_a_sound_log() {
        let dir = tempfile::tempdir().unwrap();
        let (store, good, bad) = with_garbled_actor_a3(dir.path());
        // More than two parts are sealed and handed over before the bad one.
        let mut group: Vec<EventDraft> = (0..3 * PIPELINE_ROWS).map(|_| draft(&good)).collect();
        group.push(draft(&bad));
        const { assert!(PIPELINE_ROWS * 3 >= PIPELINED_GROUP_EVENTS) };
        assert!(store.append_many(group).is_err());
        assert!(matches!(
            store.append(draft(&good)),
            Err(AppendError::Poisoned(_))
        ));
        assert_eq!(store.head().unwrap().0, 1, "nothing was acknowledged");
        store.close().unwrap();
        let store = Store::open(
            dir.path(),
            OpenOptions {
                catch_up: false,
                ..opts()
            },
        )
        .unwrap();
        let head = store.head().unwrap().0;
        assert!(
            head == 1 || head as usize <= 1 + 3 * PIPELINE_ROWS,
            "{head}"
        );
        let report = crate::doctor::doctor(
            &store,
            crate::doctor::DoctorOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(
            report
                .findings
                .iter()
                .all(|f| f.tree != "events" && f.class == crate::doctor::FindingClass::Repairable),
            "the log must be sound: {:?}",
            report.findings
        );
        let repaired = crate::doctor::doctor(
            &store,
            crate::doctor::DoctorOptions { repair: true },
            &mut |_, _| {},
        )
        .unwrap();
        assert!(repaired.findings.iter().all(|f| f.tree != "events"));
        let again = crate::doctor::doctor(
            &store,
            crate::doctor::DoctorOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(again.findings.is_empty(), "{:?}", again.findings);
    }

    /// Groups large enough to be written while sealed give the same log and
    /// derived state as a rebuild, duplicates within the group included.
    #[test]
    fn large_groups_written_while_sealed_match_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let drafts: Vec<EventDraft> = (0..4000u16)
            .map(|i| {
                draft(&Spec {
                    actor: (i % 4) as u8,
                    kind: (i % 3) as u8,
                    subject: Some(i % 37),
                    // Keys repeat 700 positions apart, across parts.
                    key: (i % 2 == 0).then_some(i % 700),
                })
            })
            .collect();
        let out = store.append_many(drafts).unwrap();
        let appended = out
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Appended { .. }))
            .count();
        let duplicates = out
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Duplicate { .. }))
            .count();
        assert_eq!(appended + duplicates, 4000);
        assert_eq!(duplicates, 2000 - 350);
        assert_eq!(store.head().unwrap().0 as usize, appended);
        let incremental = snapshot(&store);
        store.close().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        store.rebuild(&[], &mut |_, _| {}).unwrap();
        assert_eq!(snapshot(&store), incremental);
        let events = store.range(Seq::FIRST, 10_000).unwrap();
        assert_eq!(events.len(), appended);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq().get() as usize, i + 1);
        }
    }

    /// INV-PROJ-02: a projection that is behind the log is never advanced
    /// past events it has not folded, even when new events are appended to
    /// a store opened without catch-up.
    #[test]
    fn behind_projection_is_not_advanced_over_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let s = Spec {
            actor: 0,
            kind: 0,
            subject: Some(1),
            key: None,
        };
        store
            .append_many((0..4).map(|_| draft(&s)).collect())
            .unwrap();
        store.flush().unwrap();
        // The subject index as it was at event 4 (records and checkpoint).
        let at4 = rows_of(&store, "p.subjects");
        store
            .append_many((0..6).map(|_| draft(&s)).collect())
            .unwrap();
        store.close().unwrap();
        {
            let store = Store::open(
                dir.path(),
                OpenOptions {
                    catch_up: false,
                    ..opts()
                },
            )
            .unwrap();
            let tree = store.storage().derived("p.subjects").unwrap();
            tree.clear().unwrap();
            for (k, v) in &at4 {
                tree.raw_insert(k, v).unwrap();
            }
            drop(store);
        }
        let store = Store::open(
            dir.path(),
            OpenOptions {
                catch_up: false,
                ..opts()
            },
        )
        .unwrap();
        store.append(draft(&s)).unwrap();
        let subjects = store
            .projections()
            .unwrap()
            .into_iter()
            .find(|p| p.name == "subjects")
            .unwrap();
        assert_eq!(subjects.checkpoint_seq, 4);
        assert_eq!(subjects.health, ProjectionHealth::Behind { at: 4 });
        store.close().unwrap();
        // Catch-up on a normal open folds 5..=11 in order.
        let store = Store::open(dir.path(), opts()).unwrap();
        let all = store
            .by_subject(&Subject::new("object:1").unwrap(), 0, 100)
            .unwrap();
        assert_eq!(all.len(), 11);
    }

    /// Opens without catching up or upgrading: the store as found.
    fn open_as_found(dir: &Path) -> Store {
        Store::open(
            dir,
            OpenOptions {
                catch_up: false,
                ..opts()
            },
        )
        .unwrap()
    }

    fn health_of(store: &Store, name: &str) -> ProjectionHealth {
        store
            .projections()
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
            .health
    }

    /// After an upgrade that changed record formats, the projections
    /// written by the older syncd are outdated (not damaged), appends that
    /// need them wait, and the first writable open rebuilds them from the
    /// log exactly as a rebuild would.
    #[test]
    fn projections_of_an_older_format_are_rebuilt_on_a_writable_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let specs: Vec<Spec> = (0..40u16)
            .map(|i| Spec {
                actor: (i % 3) as u8,
                kind: (i % 4) as u8,
                subject: Some(i % 5),
                key: Some(i),
            })
            .collect();
        store
            .append_many(specs.iter().map(draft).collect())
            .unwrap();
        let expected = snapshot(&store);
        store.close().unwrap();
        let outdated = [idempotency::NAME, registry::NAME];
        {
            let store = open_as_found(dir.path());
            for name in outdated {
                let tree = store
                    .storage()
                    .derived(&projection::tree_name(name))
                    .unwrap();
                let current = projection::builtin()
                    .into_iter()
                    .find(|p| p.name() == name)
                    .unwrap()
                    .version();
                projection::set_checkpoint_version(&tree, current - 1);
                // A record of the old format that the new one does not have.
                tree.raw_insert(b"\x7fold", b"old-format record").unwrap();
            }
        }
        {
            let store = open_as_found(dir.path());
            for name in outdated {
                assert!(
                    matches!(health_of(&store, name), ProjectionHealth::Outdated { found, current } if found + 1 == current),
                    "{name}"
                );
            }
            assert_eq!(health_of(&store, "subjects"), ProjectionHealth::Current);
            let refused = store.append(draft(&specs[0])).unwrap_err();
            assert!(refused.to_string().contains("outdated"), "{refused}");
        }
        let store = Store::open(dir.path(), opts()).unwrap();
        for p in store.projections().unwrap() {
            assert_eq!(p.health, ProjectionHealth::Current, "{}", p.name);
        }
        assert_eq!(snapshot(&store), expected);
        // The rebuilt idempotency index still knows every key.
        assert!(matches!(
            store.append(draft(&specs[7])).unwrap(),
            AppendOutcome::Duplicate { seq, .. } if seq.get() == 8
        ));
        let next = Spec {
            key: Some(1000),
            ..specs[0].clone()
        };
        assert!(matches!(
            store.append(draft(&next)).unwrap(),
            AppendOutcome::Appended { seq, .. } if seq.get() == 41
        ));
    }

    /// Leaves the store as a build without the `sessions` projection
    /// would have: no `p.sessions` tree, and (with `record`) a record of
    /// held projections without it; without `record`, as a build that
    /// recorded none.
    fn without_sessions(dir: &Path, record: bool) {
        let db = sled::open(db_dir(dir)).unwrap();
        let meta = db.open_tree("meta").unwrap();
        for p in projection::builtin() {
            if !record || p.name() == "sessions" {
                meta.remove(format!("{META_HELD_PREFIX}{}", p.name()))
                    .unwrap();
            }
        }
        db.drop_tree("p.sessions").unwrap();
        db.flush().unwrap();
    }

    fn held(dir: &Path) -> Option<BTreeSet<String>> {
        let store = open_as_found(dir);
        let held = read_held(store.storage()).unwrap();
        store.close().unwrap();
        held
    }

    fn seeded(dir: &Path) -> BTreeMap<String, Rows> {
        let store = init(dir);
        store
            .append_many(
                (0..30u16)
                    .map(|i| {
                        draft(&Spec {
                            actor: (i % 3) as u8,
                            kind: (i % 2) as u8,
                            subject: Some(i % 4),
                            key: Some(i),
                        })
                    })
                    .collect(),
            )
            .unwrap();
        let rows = snapshot(&store);
        store.close().unwrap();
        rows
    }

    /// A projection that the build which wrote the store did not have is
    /// new, not damaged, and the first writable open builds it from the
    /// log and records it as held.
    #[test]
    fn a_projection_new_to_the_store_is_built_by_a_writable_open() {
        let dir = tempfile::tempdir().unwrap();
        let expected = seeded(dir.path());
        let all: BTreeSet<String> = projection::builtin()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        assert_eq!(held(dir.path()).as_ref(), Some(&all));
        without_sessions(dir.path(), true);
        {
            let store = open_as_found(dir.path());
            assert_eq!(health_of(&store, "sessions"), ProjectionHealth::New);
            assert_eq!(store.held_before("sessions"), Some(false));
            assert_eq!(store.held_before("registry"), Some(true));
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), opts()).unwrap();
        for p in store.projections().unwrap() {
            assert_eq!(p.health, ProjectionHealth::Current, "{}", p.name);
        }
        assert_eq!(snapshot(&store), expected);
        store.close().unwrap();
        assert_eq!(held(dir.path()).as_ref(), Some(&all));
    }

    /// A store that never recorded its projections cannot tell a dropped
    /// tree from a new one: the tree stays damaged for the doctor, and the
    /// projections present are recorded; once repaired, it is recorded too.
    #[test]
    fn a_store_without_a_record_keeps_a_missing_tree_damaged_and_starts_one() {
        let dir = tempfile::tempdir().unwrap();
        let expected = seeded(dir.path());
        without_sessions(dir.path(), false);
        let store = Store::open(dir.path(), opts()).unwrap();
        assert!(matches!(
            health_of(&store, "sessions"),
            ProjectionHealth::Damaged { reason } if reason.contains("missing")
        ));
        assert_eq!(store.held_before("sessions"), None);
        store.close().unwrap();
        let recorded = held(dir.path()).unwrap();
        assert!(!recorded.contains("sessions"));
        assert!(recorded.contains("registry"));
        let store = open_as_found(dir.path());
        store
            .rebuild(&["sessions".to_owned()], &mut |_, _| {})
            .unwrap();
        store.close().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(snapshot(&store), expected);
        store.close().unwrap();
        assert!(held(dir.path()).unwrap().contains("sessions"));
    }

    /// An upgrade over a log damaged further back than its head cannot
    /// rebuild: the store still opens (status can report it), the outdated
    /// projection becomes damaged naming why, nothing is written, and
    /// appends that need it stay refused.
    #[test]
    fn an_upgrade_over_a_damaged_log_opens_and_reports_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        store
            .append_many(
                (0..40u16)
                    .map(|i| {
                        draft(&Spec {
                            actor: 0,
                            kind: 0,
                            subject: Some(i % 3),
                            key: Some(i),
                        })
                    })
                    .collect(),
            )
            .unwrap();
        store.close().unwrap();
        let before = {
            let store = open_as_found(dir.path());
            projection::set_checkpoint_version(
                &store.storage().derived("p.idempotency").unwrap(),
                0,
            );
            store.close().unwrap();
            flip_event_byte(dir.path(), 20);
            let store = open_as_found(dir.path());
            let rows = snapshot(&store);
            store.close().unwrap();
            rows
        };
        let store = Store::open(dir.path(), opts()).unwrap();
        let ProjectionHealth::Damaged { reason } = health_of(&store, idempotency::NAME) else {
            panic!("not damaged");
        };
        assert!(
            reason.contains("record format 0") && reason.contains("20"),
            "{reason}"
        );
        let refused = store
            .append(draft(&Spec {
                actor: 0,
                kind: 0,
                subject: None,
                key: Some(999),
            }))
            .unwrap_err();
        assert!(refused.to_string().contains("damaged"), "{refused}");
        assert_eq!(snapshot(&store), before);
    }

    /// A projection written by a newer syncd is not rewritten in the older
    /// format behind the user's back: it stays damaged, for the doctor.
    #[test]
    fn a_projection_of_a_newer_format_is_damaged_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        store
            .append(draft(&Spec {
                actor: 0,
                kind: 0,
                subject: Some(1),
                key: None,
            }))
            .unwrap();
        store.close().unwrap();
        let before = {
            let store = open_as_found(dir.path());
            let tree = store.storage().derived("p.subjects").unwrap();
            projection::set_checkpoint_version(&tree, 99);
            rows_of(&store, "p.subjects")
        };
        let store = Store::open(dir.path(), opts()).unwrap();
        let ProjectionHealth::Damaged { reason } = health_of(&store, "subjects") else {
            panic!("not damaged");
        };
        assert!(reason.contains("newer"), "{reason}");
        store.close().unwrap();
        let store = open_as_found(dir.path());
        assert_eq!(rows_of(&store, "p.subjects"), before);
    }

    #[test]
    fn init_twice_and_open_missing_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Store::open(&dir.path().join("nope"), opts());
        assert!(matches!(missing, Err(OpenError::NotInitialized { .. })));
        let store = init(dir.path());
        store.close().unwrap();
        let again = Store::init(
            dir.path(),
            InitOptions {
                device: None,
                profile: ProfileId::new("profile:x").unwrap(),
                created_at: None,
            },
            opts(),
        );
        assert!(matches!(again, Err(OpenError::AlreadyInitialized { .. })));
    }
}
