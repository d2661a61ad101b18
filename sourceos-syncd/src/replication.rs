//! What the core decides for replication, whatever carries the events: which
//! of this device's events may leave it (and the recorded decision when a
//! policy rule withholds one), and the entry point through which events
//! received from peers join the log with their origin kept.
//!
//! The transport (NATS JetStream, in the adapters crate) never inspects
//! payloads or calls the policy hook itself: it asks [`Release::of`] per
//! event and hands what it receives to [`Store::append_replicated`].

use std::collections::HashMap;

use crate::event::{Envelope, EventDraft};
use crate::explain::explain;
use crate::ids::Seq;
use crate::ids::{IdempotencyKey, InvalidValue};
use crate::model::Effect;
use crate::policy::{Action, PolicyRequest};
use crate::projection::ProjectionError;
use crate::store::{AppendError, AppendOutcome, ReadError, Store};

/// Objects whose release verdict one [`ReleaseCache`] remembers; the cache
/// is emptied when full (a publisher run sees few distinct objects).
pub const MAX_CACHED_OBJECTS: usize = 4_096;

/// Sync visibilities that keep an object on this device.
const DEVICE_ONLY: [&str; 3] = ["local_only", "local", "device"];

/// Why one of this device's events does not leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Withheld {
    /// It was received from another device: its origin publishes it.
    Imported,
    /// It concerns an object whose sync visibility keeps it on this device
    /// (`local_only`, `local` or `device`).
    LocalOnly,
    /// A policy decision denies the object's sync.
    PolicyDenied,
    /// A policy decision requires review before the object may sync.
    PolicyReviewRequired,
    /// It records this device's own runtime (its daemon's lifecycle),
    /// which no other device folds.
    DeviceLocal,
}

/// Kinds that describe the recording device's own runtime.
const DEVICE_LOCAL_PREFIXES: [&str; 1] = ["lifecycle."];

impl Withheld {
    /// Stable code, as carried on the wire and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::Imported => "imported",
            Withheld::LocalOnly => "local_only",
            Withheld::PolicyDenied => "policy_denied",
            Withheld::PolicyReviewRequired => "policy_review_required",
            Withheld::DeviceLocal => "device_local",
        }
    }

    /// The reason of a code.
    pub fn parse(code: &str) -> Option<Self> {
        [
            Withheld::Imported,
            Withheld::LocalOnly,
            Withheld::PolicyDenied,
            Withheld::PolicyReviewRequired,
            Withheld::DeviceLocal,
        ]
        .into_iter()
        .find(|w| w.as_str() == code)
    }
}

/// Whether one of this device's events may be sent to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Send it whole.
    Send,
    /// Send only its position in the chain (sequence and hashes), so that
    /// peers can still verify the links around it.
    Withhold(Withheld),
}

/// Release verdicts per object, for one publisher run.
#[derive(Debug, Default)]
pub struct ReleaseCache {
    objects: HashMap<String, Option<Withheld>>,
}

/// Deciding a release failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The registry could not be read.
    #[error("cannot read the object registry")]
    Registry(#[source] ProjectionError),
    /// Recording a policy decision failed.
    #[error("cannot record the sync decision")]
    Record(#[source] AppendError),
    /// A decision could not be built.
    #[error("cannot build the sync decision: {0}")]
    Draft(#[source] InvalidValue),
}

/// The object an event concerns, for the kinds that name one.
fn object_of(env: &Envelope) -> Option<String> {
    let kind = env.kind().as_str();
    // The kind first: most events name no object, and their payload is
    // then never parsed.
    if kind.starts_with("object.") || kind == "policy.decided" || kind == "conflict.resolved" {
        return env
            .payload()
            .as_map()?
            .get("object_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
    }
    None
}

impl Release {
    /// Decides for an event of this store's log. Events received from
    /// other devices are withheld (their origin publishes them), and so
    /// are the kinds about this device's own runtime (`lifecycle.*`). For an
    /// event about an object: withheld when the object's visibility keeps
    /// it here, when a recorded decision denies or holds its sync, or when
    /// the policy hook does so now; a rule's verdict is recorded as a
    /// `policy.decided` event (once per event: its idempotency key is
    /// `sync-release:<event id>`).
    pub fn of(
        store: &Store,
        env: &Envelope,
        cache: &mut ReleaseCache,
    ) -> Result<Release, ReleaseError> {
        if env.origin() != &store.meta().device {
            return Ok(Release::Withhold(Withheld::Imported));
        }
        let kind = env.kind().as_str();
        if DEVICE_LOCAL_PREFIXES.iter().any(|p| kind.starts_with(p)) {
            return Ok(Release::Withhold(Withheld::DeviceLocal));
        }
        let Some(object) = object_of(env) else {
            return Ok(Release::Send);
        };
        if let Some(known) = cache.objects.get(&object) {
            return Ok(known.map_or(Release::Send, Release::Withhold));
        }
        let verdict = Self::decide_object(store, env, &object)?;
        if cache.objects.len() >= MAX_CACHED_OBJECTS {
            cache.objects.clear();
        }
        cache.objects.insert(object, verdict);
        Ok(verdict.map_or(Release::Send, Release::Withhold))
    }

    fn decide_object(
        store: &Store,
        env: &Envelope,
        object: &str,
    ) -> Result<Option<Withheld>, ReleaseError> {
        let Some(x) = explain(store, object).map_err(ReleaseError::Registry)? else {
            // Not in the registry (a decision about an object never
            // created here): nothing keeps it on this device.
            return Ok(None);
        };
        if x.sync_visibility
            .as_deref()
            .is_some_and(|v| DEVICE_ONLY.contains(&v))
        {
            return Ok(Some(Withheld::LocalOnly));
        }
        for b in &x.sync_plan.blocked_by {
            match b.code {
                "policy_denied" => return Ok(Some(Withheld::PolicyDenied)),
                "policy_review_required" => return Ok(Some(Withheld::PolicyReviewRequired)),
                _ => {}
            }
        }
        let request = PolicyRequest {
            action: Action::Sync,
            actor: env.actor().to_string(),
            actor_trust_level: None,
            object_id: Some(object.to_owned()),
            profile: x
                .owner_profile
                .clone()
                .unwrap_or_else(|| store.meta().profile.to_string()),
            privacy_class: x.privacy_class.clone(),
            sync_visibility: x.sync_visibility.clone(),
        };
        let verdict = store.policy().decide(&request);
        let withheld = match verdict.effect {
            Effect::Allow => None,
            Effect::Deny => Some(Withheld::PolicyDenied),
            Effect::ReviewRequired => Some(Withheld::PolicyReviewRequired),
        };
        if withheld.is_some() && verdict.rule.is_some() {
            let mut draft: EventDraft = store
                .decision_draft(&request, &verdict)
                .map_err(ReleaseError::Record)?;
            draft.idempotency_key = Some(
                IdempotencyKey::new(format!("sync-release:{}", env.id()))
                    .map_err(ReleaseError::Draft)?,
            );
            store.append_system(draft).map_err(ReleaseError::Record)?;
        }
        Ok(withheld)
    }
}

impl Store {
    /// Events from `from` on, verified, each with its exact stored bytes
    /// (what replication sends; no re-encoding), at most `limit`.
    pub fn range_with_bytes(
        &self,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<(Envelope, Vec<u8>)>, ReadError> {
        let mut out = Vec::new();
        for item in self.scan_raw(from) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let seq = Seq::from_key(&k).map_err(ReadError::BadKey)?;
            let env = Envelope::verify(&v).map_err(|damage| ReadError::Damaged {
                seq: seq.get(),
                damage,
            })?;
            out.push((env, v.to_vec()));
        }
        Ok(out)
    }

    /// Appends events received from peers, each keeping its origin device,
    /// sequence and hash. An event already here (same origin slot, same
    /// hash) is a `Duplicate`; one whose origin slot holds a different
    /// hash is `Rejected` as forked or forged history. The caller verifies
    /// each event's own hash and its chain before handing it over.
    pub fn append_replicated(
        &self,
        events: Vec<Envelope>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        self.append_foreign(events)
    }
}

/// Where the replicator keeps what it last observed of each peer, under
/// the home: transport observations, not state (deleting the file loses
/// only the "last confirmed" times, which the next pass sets again).
pub const PEERS_FILE: &str = "replication/peers.json";
/// Peers kept in the file at most.
pub const MAX_PEERS_KEPT: usize = 256;
/// Largest peers file read, in bytes.
const MAX_PEERS_FILE_BYTES: u64 = 1 << 20;

/// What the last replication passes observed of one peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerState {
    /// The peer device.
    pub device: String,
    /// Positions of its log verified and applied here.
    pub applied_through: u64,
    /// Its last position in the stream at the last pass.
    pub stream_head: u64,
    /// `stream_head - applied_through` at the last pass.
    pub lag: u64,
    /// When a pass last reached it (RFC 3339).
    pub last_sync_at: String,
    /// When a pass last ended with nothing of it left to apply.
    pub last_confirmed_at: Option<String>,
    /// When a pass last appended one of its events.
    pub last_received_at: Option<String>,
    /// Messages refused from it, in all passes.
    pub refused_total: u64,
    /// A position missing from its chain at the last pass.
    pub missing: Option<u64>,
}

/// The peers file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeersFile {
    /// When the last pass was attempted (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// Whether it reached a server.
    pub last_attempt_reached_server: bool,
    /// Why it failed, when it did.
    pub last_error: Option<String>,
    /// After how long without confirmation a peer is stale, in seconds.
    pub stale_after_seconds: u64,
    /// The last position of this device's log acknowledged in order by
    /// the stream: the next pass publishes at least from after it.
    #[serde(default)]
    pub published_through: Option<u64>,
    /// The stream sequence of this device's last message in the stream
    /// when a pass that ended whole recorded `published_through`: while
    /// the stream's last message is still that one, it lost nothing since.
    #[serde(default)]
    pub published_last_message: Option<u64>,
    /// The peers, by device.
    pub peers: Vec<PeerState>,
}

/// The peers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeersFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a peers file.
    #[error("{path} is damaged: {reason}; delete it, the next `syncd sync` writes it again")]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl PeersFile {
    /// Reads `HOME/replication/peers.json`; `None` when no pass ran yet.
    pub fn load(home: &std::path::Path) -> Result<Option<Self>, PeersFileError> {
        let path = home.join(PEERS_FILE);
        let io = |source| PeersFileError::Io {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io)?,
        };
        if meta.len() > MAX_PEERS_FILE_BYTES {
            return Err(PeersFileError::Damaged {
                path,
                reason: format!("{} bytes; at most {MAX_PEERS_FILE_BYTES}", meta.len()),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let file: Self = serde_json::from_str(&text).map_err(|e| PeersFileError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.peers.len() > MAX_PEERS_KEPT {
            return Err(PeersFileError::Damaged {
                path,
                reason: format!("{} peers; at most {MAX_PEERS_KEPT}", file.peers.len()),
            });
        }
        Ok(Some(file))
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, home: &std::path::Path) -> Result<(), PeersFileError> {
        let path = home.join(PEERS_FILE);
        let io = |source| PeersFileError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(home);
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| PeersFileError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = dir.join(format!(".peers.{}.tmp", std::process::id()));
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&text).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// Whether a peer is stale at `now`: never confirmed in sync, or not
    /// for longer than `stale_after_seconds`.
    pub fn is_stale(&self, peer: &PeerState, now: crate::ids::Timestamp) -> bool {
        let Some(at) = peer
            .last_confirmed_at
            .as_deref()
            .and_then(|t| crate::ids::Timestamp::parse(t).ok())
        else {
            return true;
        };
        let limit = i64::try_from(self.stale_after_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        now.unix_micros().saturating_sub(at.unix_micros()) > limit
    }
}
