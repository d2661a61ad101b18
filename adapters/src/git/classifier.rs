//! The classifier: resolves a path, answers from a bounded per-path cache
//! when it can, otherwise probes (see `probe.rs`) and applies the
//! operation's severity discipline. A newer probe of the same resolved
//! path supersedes an older one still in flight: the older one stops at
//! its next step and answers `operation_superseded`, and only the newest
//! result is cached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sourceos_syncd::{Clock, Timestamp};

use super::evidence::{sha256_ref, PathEvidence, Redactor};
use super::fs::FileSystem;
use super::model::{
    assess, Actionability, CommandClass, GitState, Needs, Operation, RemoteState, Severity,
};
use super::probe::{resolve, Outcome, Probe, Prober, Resolved};
use super::runner::{GitRunner, RunError};

/// Resolved paths the cache holds at most by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// Largest cache a classifier accepts.
pub const MAX_CACHE_CAPACITY: usize = 65_536;
/// Paths that may be probed at the same time.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Git facts, as the GitWorkspaceState contract names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitFacts {
    /// The checked-out branch.
    pub branch: Option<String>,
    /// The commit HEAD names.
    pub head_sha: Option<String>,
    /// Whether a remote is configured.
    pub remote_state: RemoteState,
    /// Digest of the working tree's top level.
    pub worktree_root_digest: Option<String>,
    /// Digest of the Git directory.
    pub git_dir_digest: Option<String>,
    /// Why the state is what it is (scrubbed of paths).
    pub failure_reason: Option<String>,
    /// Class of the Git command that decided the state.
    pub command_class: Option<CommandClass>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The state.
    pub state: GitState,
    /// The operation it was asked for.
    pub operation: Operation,
    /// How loudly to report it.
    pub severity: Severity,
    /// What to do about it.
    pub actionability: Actionability,
    /// A normal negative answer for this operation.
    pub expected_negative_state: bool,
    /// Evidence about the path (never the path).
    pub path: PathEvidence,
    /// Git facts.
    pub facts: GitFacts,
    /// A linked worktree (`git worktree add`).
    pub linked_worktree: bool,
    /// When the facts were observed (for a cached answer: when it was
    /// probed).
    pub captured_at: Timestamp,
    /// `sha256:` digest of everything the probe observed.
    pub transcript_digest: String,
    /// Served from the cache.
    pub from_cache: bool,
    /// Git commands this answer cost (0 when cached, or when the
    /// filesystem alone decided).
    pub git_commands: u32,
}

/// A classification request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The path (relative paths are taken against the working directory).
    pub path: &'a Path,
    /// Why the state is wanted.
    pub operation: Operation,
    /// Probe again even when a cached answer exists.
    pub refresh: bool,
    /// What the operation needs; `None` for the operation's default.
    pub needs: Option<Needs>,
}

impl<'a> Request<'a> {
    /// A request for `path` under `operation`, cached answers allowed.
    pub fn new(path: &'a Path, operation: Operation) -> Self {
        Self {
            path,
            operation,
            refresh: false,
            needs: None,
        }
    }

    /// The same request, probing again.
    pub fn refreshed(self) -> Self {
        Self {
            refresh: true,
            ..self
        }
    }

    /// The same request with explicit needs.
    pub fn needing(self, needs: Needs) -> Self {
        Self {
            needs: Some(needs),
            ..self
        }
    }
}

/// Classification could not produce an answer at all. (Every state of the
/// path, including damage and denied access, is an answer, not an error.)
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// Git could not be run, or did not finish in time.
    #[error("cannot run git")]
    Git(#[from] RunError),
    /// Too many paths are being probed at once.
    #[error("{limit} paths are already being probed; try again")]
    Busy {
        /// The bound.
        limit: usize,
    },
    /// An earlier failure poisoned the classifier's state.
    #[error("the classifier's state was poisoned by an earlier failure")]
    Poisoned,
}

/// Options of a classifier.
#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    /// Resolved paths cached at most (least recently used go first);
    /// clamped to 1..=[`MAX_CACHE_CAPACITY`].
    pub cache_capacity: usize,
    /// Makes path evidence and scrubs messages.
    pub redactor: Redactor,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        Self {
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            redactor: Redactor::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    probe: Arc<Probe>,
    captured_at: Timestamp,
    used: u64,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<PathBuf, Cached>,
    tick: u64,
}

#[derive(Debug, Default)]
struct InFlight {
    /// The newest ticket per resolved path being probed.
    latest: HashMap<PathBuf, u64>,
    next: u64,
}

/// Classifies paths. Share it (`&Classifier` is `Sync`) between the
/// watchers and commands of one process so that they share the cache and
/// supersede each other.
pub struct Classifier<F: FileSystem, G: GitRunner> {
    fs: F,
    git: G,
    clock: Arc<dyn Clock>,
    redactor: Redactor,
    capacity: usize,
    cache: Mutex<Cache>,
    in_flight: Mutex<InFlight>,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, ClassifyError> {
    m.lock().map_err(|_| ClassifyError::Poisoned)
}

impl<F: FileSystem, G: GitRunner> Classifier<F, G> {
    /// A classifier over `fs` and `git`, reading time from `clock`.
    pub fn new(fs: F, git: G, clock: Arc<dyn Clock>, options: ClassifierOptions) -> Self {
        Self {
            fs,
            git,
            clock,
            redactor: options.redactor,
            capacity: options.cache_capacity.clamp(1, MAX_CACHE_CAPACITY),
            cache: Mutex::new(Cache::default()),
            in_flight: Mutex::new(InFlight::default()),
        }
    }

    /// The redactor in use.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Classifies one path for one operation.
    pub fn classify(&self, req: &Request<'_>) -> Result<Classification, ClassifyError> {
        let needs = req.needs.unwrap_or_else(|| req.operation.default_needs());
        let (canonical, kind) = match resolve(&self.fs, req.path) {
            Resolved::Found { canonical, kind } => (canonical, kind),
            Resolved::Unusable {
                absolute,
                state,
                reason,
            } => {
                let still = || true;
                let probe = Prober::new(&self.fs, &self.git, &self.redactor, &still)
                    .unusable(&absolute, state, reason);
                return Ok(finish(
                    &probe,
                    req.operation,
                    needs,
                    self.clock.now(),
                    false,
                ));
            }
        };
        if !req.refresh {
            if let Some(hit) = self.cache_get(&canonical)? {
                return Ok(finish(
                    &hit.probe,
                    req.operation,
                    needs,
                    hit.captured_at,
                    true,
                ));
            }
        }
        let ticket = self.take_ticket(&canonical)?;
        let still_wanted = || {
            self.in_flight
                .lock()
                .map(|f| f.latest.get(&canonical) == Some(&ticket))
                .unwrap_or(false)
        };
        let outcome =
            Prober::new(&self.fs, &self.git, &self.redactor, &still_wanted).run(&canonical, kind);
        let now = self.clock.now();
        // Retire the ticket and cache the result under one lock, so that
        // an older probe can never overwrite a newer one's answer.
        let mut flight = lock(&self.in_flight)?;
        let current = flight.latest.get(&canonical) == Some(&ticket);
        if current {
            flight.latest.remove(&canonical);
        }
        match outcome? {
            Outcome::Done(probe) if current => {
                let probe = Arc::new(probe);
                self.cache_put(canonical, Arc::clone(&probe), now)?;
                drop(flight);
                Ok(finish(&probe, req.operation, needs, now, false))
            }
            Outcome::Done(probe) => Ok(superseded(
                &self.redactor,
                &canonical,
                req.operation,
                probe.command_class,
                probe.git_commands,
                probe.transcript_digest,
                now,
            )),
            Outcome::Superseded {
                last_class,
                git_commands,
                transcript_digest,
            } => Ok(superseded(
                &self.redactor,
                &canonical,
                req.operation,
                last_class,
                git_commands,
                transcript_digest,
                now,
            )),
        }
    }

    /// Drops the cached answer for a path (explicit refresh); the next
    /// request probes again. Returns whether there was one.
    pub fn invalidate(&self, path: &Path) -> Result<bool, ClassifyError> {
        let key = match resolve(&self.fs, path) {
            Resolved::Found { canonical, .. } => canonical,
            Resolved::Unusable { .. } => return Ok(false),
        };
        Ok(lock(&self.cache)?.entries.remove(&key).is_some())
    }

    /// Drops every cached answer.
    pub fn clear(&self) -> Result<(), ClassifyError> {
        lock(&self.cache)?.entries.clear();
        Ok(())
    }

    /// Answers cached now.
    pub fn cached_len(&self) -> Result<usize, ClassifyError> {
        Ok(lock(&self.cache)?.entries.len())
    }

    fn cache_get(&self, key: &Path) -> Result<Option<Cached>, ClassifyError> {
        let mut cache = lock(&self.cache)?;
        cache.tick = cache.tick.saturating_add(1);
        let tick = cache.tick;
        Ok(cache.entries.get_mut(key).map(|e| {
            e.used = tick;
            e.clone()
        }))
    }

    fn cache_put(
        &self,
        key: PathBuf,
        probe: Arc<Probe>,
        captured_at: Timestamp,
    ) -> Result<(), ClassifyError> {
        let mut cache = lock(&self.cache)?;
        cache.tick = cache.tick.saturating_add(1);
        let used = cache.tick;
        if !cache.entries.contains_key(&key) && cache.entries.len() >= self.capacity {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.entries.remove(&k);
            }
        }
        cache.entries.insert(
            key,
            Cached {
                probe,
                captured_at,
                used,
            },
        );
        Ok(())
    }

    fn take_ticket(&self, key: &Path) -> Result<u64, ClassifyError> {
        let mut flight = lock(&self.in_flight)?;
        if !flight.latest.contains_key(key) && flight.latest.len() >= MAX_IN_FLIGHT {
            return Err(ClassifyError::Busy {
                limit: MAX_IN_FLIGHT,
            });
        }
        flight.next = flight.next.saturating_add(1);
        let ticket = flight.next;
        flight.latest.insert(key.to_path_buf(), ticket);
        Ok(ticket)
    }
}

/// What the operation lacks at a probed path.
fn lacks(p: &Probe) -> Needs {
    let in_worktree = p.state.in_worktree();
    Needs {
        worktree: !in_worktree,
        branch: !in_worktree || p.branch.is_none(),
        remote: p.remote_state != RemoteState::Available,
    }
}

fn remedy(what: &str) -> &'static str {
    match what {
        "a working tree" => "run it inside a working tree (git init, git clone)",
        "a branch" => "switch to a branch (git switch)",
        _ => "add a remote (git remote add)",
    }
}

/// A probe under an operation's needs.
fn finish(
    p: &Probe,
    operation: Operation,
    needs: Needs,
    captured_at: Timestamp,
    from_cache: bool,
) -> Classification {
    let lacking = lacks(p);
    let a = assess(p.state, needs, lacking);
    let mut reason = p.reason.clone();
    if a.actionability == Actionability::RemediationHint {
        let unmet = needs.unmet(lacking);
        let remedies: Vec<&str> = unmet.iter().map(|w| remedy(w)).collect();
        let extra = format!(
            "{operation} needs {}: {}",
            unmet.join(" and "),
            remedies.join("; ")
        );
        reason = Some(match reason {
            Some(r) => format!("{r}; {extra}"),
            None => extra,
        });
    } else if a.expected_negative && a.severity == Severity::Info {
        reason = reason.map(|r| format!("{r}; expected for {operation}, no warning is required"));
    }
    Classification {
        state: p.state,
        operation,
        severity: a.severity,
        actionability: a.actionability,
        expected_negative_state: a.expected_negative,
        path: p.path.clone(),
        facts: GitFacts {
            branch: p.branch.clone(),
            head_sha: p.head_sha.clone(),
            remote_state: p.remote_state,
            worktree_root_digest: p.worktree_root_digest.clone(),
            git_dir_digest: p.git_dir_digest.clone(),
            failure_reason: reason,
            command_class: p.command_class,
        },
        linked_worktree: p.linked_worktree,
        captured_at,
        transcript_digest: p.transcript_digest.clone(),
        from_cache,
        git_commands: if from_cache { 0 } else { p.git_commands },
    }
}

fn superseded(
    redactor: &Redactor,
    canonical: &Path,
    operation: Operation,
    last_class: Option<CommandClass>,
    git_commands: u32,
    transcript_digest: String,
    captured_at: Timestamp,
) -> Classification {
    let a = assess(
        GitState::OperationSuperseded,
        Needs::NOTHING,
        Needs::NOTHING,
    );
    Classification {
        state: GitState::OperationSuperseded,
        operation,
        severity: a.severity,
        actionability: a.actionability,
        expected_negative_state: a.expected_negative,
        path: redactor.evidence(canonical),
        facts: GitFacts {
            branch: None,
            head_sha: None,
            remote_state: RemoteState::Unknown,
            worktree_root_digest: None,
            git_dir_digest: None,
            failure_reason: Some(
                "a newer request for the same path superseded this one; its result was discarded"
                    .to_owned(),
            ),
            command_class: last_class,
        },
        linked_worktree: false,
        captured_at,
        transcript_digest: if transcript_digest.is_empty() {
            sha256_ref(b"superseded")
        } else {
            transcript_digest
        },
        from_cache: false,
        git_commands,
    }
}
