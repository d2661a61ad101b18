//! The replicator: publishes this device's log to JetStream and appends
//! what the other devices of the profile published, verifying every link.
//!
//! Publishing resumes after the last position of this device confirmed
//! present in the stream (read back from the stream, and checked against
//! the local log, so a server that lost its unsynced tail gets it again).
//! A long pass publishes without replies and confirms each group of
//! positions by the stream's count of this device's messages; a group the
//! count does not confirm is published again, awaiting every answer.
//! Receiving uses one durable pull consumer per peer; a message is
//! acknowledged only after what it carries is durable in the local log, in
//! delivery order (acknowledging one acknowledges those before it), so after a restart of either side the consumer's ack
//! floor is the last applied position and its message is the anchor the
//! next one must link to. A position that arrives before the one it
//! follows is refilled from the stream (bounded look-ahead); one that does
//! not link, or whose bytes do not verify, is refused and reported, and
//! never becomes an anchor.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::Serialize;
use sourceos_syncd::{self as core, AppendOutcome, Digest, Release, ReleaseCache, Seq, Store};

use super::config::ReplicationConfig;
use super::wire::{self, FrameError, Position};

/// Verified positions made durable together (one group commit).
pub const MAX_PENDING: usize = 1_024;
/// Events read from the local log per step of publishing.
pub const PUBLISH_CHUNK_EVENTS: usize = 256;
/// Publications awaiting their acknowledgement at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Positions published without replies between two confirmations at
/// most (see `Replicator::publish`). Fewer, larger groups cost the server
/// less: groups of 1,024 took it about 40% more CPU than groups of 4,096
/// in the replication bench, and 16,384 gained nothing more.
pub const CONFIRM_GROUP_EVENTS: usize = 4_096;
/// Bytes of event bodies a group keeps for a republication at most.
pub const CONFIRM_GROUP_BYTES: usize = 4 << 20;
/// Positions read back at most when the stream is found to have lost
/// confirmed ones (a bitmap of 2 MiB).
pub const MAX_AUDITED_POSITIONS: u64 = 1 << 24;
/// Publishing goes by groups when a pass has more positions to publish
/// than this; fewer are each published awaiting their answer.
pub const GROUPED_FROM_EVENTS: u64 = 64;
/// Messages fetched from a consumer per request. One request is
/// outstanding at a time (two would share the messages between their
/// inboxes out of order), so with a full pending batch and one
/// committing, at most `FETCH_BATCH + 2 * MAX_PENDING` messages are
/// delivered and not yet acknowledged: below the consumer's
/// `max_ack_pending`.
pub const FETCH_BATCH: usize = 1_024;
/// Messages a consumer delivers without acknowledgement at most (the
/// value consumers were created with from the start).
const MAX_ACK_PENDING: i64 = 4_096;
/// Positions one call to [`Replicator::receive`] applies per peer at most.
pub const MAX_RECEIVE_PER_PEER: usize = 100_000;
/// Stream messages examined when refilling a gap.
pub const MAX_REFILL_LOOKUPS: usize = 4_096;
/// Peers followed at most.
pub const MAX_PEERS: usize = 256;
/// How long a fetch may go without delivering anything (a message or its
/// end) before the pass stops waiting for it. A fetch asks for what is
/// there now and the server answers at once, so this only bounds a server
/// that stopped answering; what it delivers afterwards to the abandoned
/// request is redelivered after `ACK_WAIT_MS`, or read from the stream at
/// the end of the pass.
const FETCH_STALL_MS: u64 = 5_000;
/// Connection timeout.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// JetStream request timeout.
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Redelivery delay of an unacknowledged message.
const ACK_WAIT_MS: u64 = 10_000;
/// JetStream duplicate window.
const DUPLICATE_WINDOW_MS: u64 = 120_000;

/// Replication failed as a whole (outcomes per message are in the reports).
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// No server could be reached: local work is unaffected.
    #[error("no replication server reachable ({servers}): {reason}")]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// The last error.
        reason: String,
    },
    /// The credentials file cannot be used.
    #[error("cannot use the credentials file {path}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key file cannot be read.
    #[error("cannot use the TLS file {path}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JetStream request failed.
    #[error("JetStream {what}: {reason}")]
    JetStream {
        /// What was asked.
        what: &'static str,
        /// The error.
        reason: String,
    },
    /// The stream holds a different history for this device than its log.
    #[error("the stream's copy of this device's log differs at event {seq}: the stream has {stream}, the log {local}; refusing to publish over it")]
    Diverged {
        /// The position.
        seq: u64,
        /// The stream's hash.
        stream: String,
        /// The local hash.
        local: String,
    },
    /// Publishing stopped part-way (a server went away, an acknowledgement
    /// timed out); positions through `confirmed_seq` were acknowledged in
    /// order.
    #[error("publishing stopped after event {confirmed_seq}: {reason}")]
    PublishInterrupted {
        /// Last position acknowledged in order.
        confirmed_seq: u64,
        /// Why.
        reason: String,
    },
    /// The stream exists but not as the configuration asks, and cannot be
    /// made so.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// What differs, and why it was not changed.
        reason: String,
    },
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
}

fn js<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> ReplicationError {
    move |e| ReplicationError::JetStream {
        what,
        reason: e.to_string(),
    }
}

fn store_err<E: std::error::Error>(e: E) -> ReplicationError {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    ReplicationError::Store(text)
}

/// What one publishing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// First position published in this pass (0 when nothing was).
    pub from_seq: u64,
    /// Last position confirmed in the stream after the pass.
    pub confirmed_seq: u64,
    /// Events sent whole.
    pub events: u64,
    /// Positions sent as stubs, by reason.
    pub withheld: BTreeMap<String, u64>,
    /// Positions the stream already held when they were published (a
    /// pass resuming before what an interrupted one stored).
    pub already_in_stream: u64,
    /// The stream sequence of this device's last message in the stream
    /// when the pass ended (none when it holds none): the next pass's
    /// [`Confirmed::last_message`].
    pub last_message: Option<u64>,
    /// The first position the stream had confirmed and then lost (a server
    /// that lost its tail): the pass published again from it.
    pub restored_from: Option<u64>,
}

/// What earlier passes confirmed of this device's log in the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// The last position confirmed in order (every one before it too).
    pub through: u64,
    /// The stream sequence of this device's last message in the stream
    /// when a pass that ended whole confirmed `through`.
    pub last_message: Option<u64>,
}

/// A refused message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The stream sequence of the message.
    pub stream_seq: u64,
    /// The position it claimed, when readable.
    pub seq: Option<u64>,
    /// Why it was refused.
    pub reason: String,
}

/// What receiving from one peer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerReport {
    /// The peer device.
    pub device: String,
    /// Positions of the peer's log now applied here (its chain is
    /// verified up to this one).
    pub applied_through: u64,
    /// The peer's last position in the stream.
    pub stream_head: u64,
    /// `stream_head - applied_through`.
    pub lag: u64,
    /// Events appended to the local log.
    pub appended: u64,
    /// Events already here.
    pub duplicates: u64,
    /// Stub positions passed over.
    pub stubs: u64,
    /// Positions refilled from the stream out of delivery order.
    pub refilled: u64,
    /// Refused messages.
    pub refused: Vec<Refusal>,
    /// A gap that could not be refilled: the position still missing.
    pub missing: Option<u64>,
}

/// A connected replicator for one store.
pub struct Replicator {
    store: Store,
    context: jetstream::Context,
    stream: stream::Stream,
    profile: String,
    device: String,
}

/// A position published and not yet confirmed: kept until its group is,
/// to publish it again if the stream does not hold it.
struct Outgoing {
    position: Position,
    body: bytes::Bytes,
}

/// The headers of the message carrying `p`.
fn headers_of(p: &Position) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in wire::headers(p) {
        headers.insert(name, value.as_str());
    }
    headers
}

/// The last applied position of a peer: what the next one must link to.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    seq: u64,
    hash: Digest,
}

impl Replicator {
    /// Connects to the configured servers and makes sure the stream exists.
    pub async fn connect(
        store: Store,
        config: &ReplicationConfig,
    ) -> Result<Self, ReplicationError> {
        let servers = config.servers.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .request_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .max_reconnects(Some(3));
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|source| {
                ReplicationError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        // The files are opened here first: the client would only say that
        // TLS failed, not which file it could not use.
        let readable = |path: &std::path::Path| {
            std::fs::File::open(path)
                .map(drop)
                .map_err(|source| ReplicationError::TlsFile {
                    path: path.to_path_buf(),
                    source,
                })
        };
        if let Some(ca) = &config.tls_ca_file {
            readable(ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.tls_client {
            readable(cert)?;
            readable(key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls_required() {
            options = options.require_tls(true);
        }
        let mut addrs = Vec::with_capacity(config.servers.len());
        for s in &config.servers {
            addrs.push(s.parse::<async_nats::ServerAddr>().map_err(|e| {
                ReplicationError::Unreachable {
                    servers: servers.clone(),
                    reason: format!("{s}: {e}"),
                }
            })?);
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| ReplicationError::Unreachable {
                servers: servers.clone(),
                reason: e.to_string(),
            })?;
        let context = jetstream::new(client);
        let subjects = format!("{}.>", wire::SUBJECT_PREFIX);
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            num_replicas: config.stream_replicas,
            duplicate_window: Duration::from_millis(DUPLICATE_WINDOW_MS),
            max_message_size: i32::try_from(core::MAX_ENVELOPE_BYTES + 1024).unwrap_or(i32::MAX),
            ..Default::default()
        };
        let stream = match context.get_or_create_stream(wanted).await {
            Ok(s) => s,
            // Another device connecting at the same moment may have created
            // it between this one's lookup and its creation (the server then
            // refuses the second as overlapping the first): use that one.
            Err(refused) => context
                .get_stream(&config.stream)
                .await
                .map_err(|_| js("stream")(refused))?,
        };
        let stream = Self::as_configured(&context, stream, &subjects, config).await?;
        let meta = store.meta();
        let profile = meta.profile.to_string();
        let device = meta.device.to_string();
        Ok(Self {
            store,
            context,
            stream,
            profile,
            device,
        })
    }

    /// Makes an existing stream what the configuration asks: it must carry
    /// the replication subjects, and a replica count that differs from
    /// `stream_replicas` is changed (a cluster scales a stream up or down
    /// in place). The copies the servers actually hold must then be as
    /// many as configured: a server outside a cluster accepts any count
    /// and keeps one. What cannot be made so is an error naming the stream,
    /// rather than replication running with fewer copies than configured.
    async fn as_configured(
        context: &jetstream::Context,
        mut stream: stream::Stream,
        subjects: &str,
        config: &ReplicationConfig,
    ) -> Result<stream::Stream, ReplicationError> {
        let wanted = config.stream_replicas;
        let mismatch = |reason: String| ReplicationError::Stream {
            stream: config.stream.clone(),
            reason,
        };
        let found = stream.cached_info().config.clone();
        if !found.subjects.iter().any(|s| s == subjects) {
            return Err(mismatch(format!(
                "it exists for the subjects {:?}, not {subjects}; name another stream in [replication] stream",
                found.subjects
            )));
        }
        // A stream created without a count has one replica.
        let has = found.num_replicas.max(1);
        if has != wanted {
            let mut changed = found;
            changed.num_replicas = wanted;
            context.update_stream(&changed).await.map_err(|e| {
                mismatch(format!(
                    "it has {has} replica(s) and [replication] stream_replicas asks for {wanted}; the server refused the change: {e}"
                ))
            })?;
            tracing::info!(
                stream = %config.stream,
                from = has,
                to = wanted,
                "stream replicas changed as configured"
            );
            stream = context
                .get_stream(&config.stream)
                .await
                .map_err(js("stream"))?;
        }
        let copies = 1 + stream
            .cached_info()
            .cluster
            .as_ref()
            .map_or(0, |c| c.replicas.len());
        if copies < wanted {
            return Err(mismatch(format!(
                "[replication] stream_replicas asks for {wanted} copies but the servers hold {copies} (a server outside a cluster holds one)"
            )));
        }
        Ok(stream)
    }

    /// The position carried by `device`'s last message in the stream.
    async fn stream_head(&self, device: &str) -> Result<Option<Position>, ReplicationError> {
        Ok(self.stream_last(device).await?.map(|(p, _)| p))
    }

    /// `device`'s last message in the stream: the position it carries and
    /// its stream sequence.
    async fn stream_last(&self, device: &str) -> Result<Option<(Position, u64)>, ReplicationError> {
        let subject = wire::subject(&self.profile, device);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(Some((
                read_message(Some(&m.headers), &m.payload, device)
                    .map(|(p, _)| p)
                    .map_err(js("stream head"))?,
                m.sequence,
            ))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js("stream head")(e)),
        }
    }

    /// Publishes this device's log after the last position the stream
    /// holds. Each position is decided by [`Release::of`]: whole, or a stub.
    ///
    /// `confirmed` is what earlier passes saw confirmed in order: a pass
    /// interrupted with publications in flight can leave later positions
    /// stored and earlier ones lost, so publishing resumes after it when it
    /// is behind what the stream holds. When it is ahead (a position
    /// published again after a loss was stored after later ones, or the
    /// server lost its tail), publishing resumes after it only if the
    /// stream's last message of this device is still the one seen when it
    /// was confirmed; otherwise after that last message.
    ///
    /// Up to `GROUPED_FROM_EVENTS` positions are each published awaiting
    /// their acknowledgement. More go out without replies, in groups of at
    /// most `CONFIRM_GROUP_EVENTS` positions and `CONFIRM_GROUP_BYTES`,
    /// each confirmed as `confirm_group` says: one reply and
    /// one stream request per group instead of one reply per position,
    /// which halves what publishing costs this process and the server.
    pub async fn publish(
        &self,
        confirmed: Option<Confirmed>,
    ) -> Result<PublishReport, ReplicationError> {
        let mut report = PublishReport::default();
        match self.publish_inner(confirmed, &mut report).await {
            Ok(()) => Ok(report),
            Err(e @ ReplicationError::Diverged { .. }) => Err(e),
            Err(e) => Err(ReplicationError::PublishInterrupted {
                confirmed_seq: report.confirmed_seq,
                reason: e.to_string(),
            }),
        }
    }

    async fn publish_inner(
        &self,
        confirmed: Option<Confirmed>,
        report: &mut PublishReport,
    ) -> Result<(), ReplicationError> {
        let last = self.stream_last(&self.device).await?;
        report.last_message = last.as_ref().map(|(_, s)| *s);
        let stream_resume = match last.map(|(p, _)| p) {
            None => 1,
            Some(p) => {
                let local = self
                    .store
                    .get(Seq::new(p.seq).map_err(store_err)?)
                    .map_err(store_err)?;
                match local {
                    Some(env) if env.hash() == p.hash => p.seq + 1,
                    other => {
                        return Err(ReplicationError::Diverged {
                            seq: p.seq,
                            stream: p.hash.to_string(),
                            local: other.map_or("nothing".into(), |e| e.hash().to_string()),
                        })
                    }
                }
            }
        };
        let mut resume = match confirmed {
            Some(c) if c.through + 1 < stream_resume => c.through + 1,
            // The stream's last message of this device is an earlier
            // position, and the very message it was when `through` was
            // confirmed: nothing was lost since (a server losing its tail
            // loses that message first).
            Some(c) if report.last_message.is_some() && c.last_message == report.last_message => {
                c.through + 1
            }
            _ => stream_resume,
        };
        let (head, _) = self.store.head().map_err(ReplicationError::Store)?;
        if let Some(c) = confirmed {
            // That last message is gone: the stream lost or dropped
            // messages since `through` was confirmed. Resuming after the
            // last one it holds is not enough when positions were stored
            // out of order (a group published again after a loss), so
            // the first position it no longer holds is looked for.
            if c.last_message.is_some() && c.last_message != report.last_message {
                let through = c.through.min(head);
                if let Some(first) = self.first_lost(through).await? {
                    tracing::warn!(
                        first,
                        through,
                        "the stream lost positions it had confirmed; publishing again from the first"
                    );
                    report.restored_from = Some(first);
                    resume = resume.min(first);
                }
            }
        }
        report.confirmed_seq = resume - 1;
        if resume > head {
            return Ok(());
        }
        report.from_seq = resume;
        let subject = async_nats::Subject::from(wire::subject(&self.profile, &self.device));
        let client = self.context.client();
        // A few positions are published each awaiting its answer: that is
        // fewer requests than confirming a group by the stream's count.
        let grouped = head - resume >= GROUPED_FROM_EVENTS;
        let mut held = if grouped {
            self.messages_of(&subject).await?
        } else {
            0
        };
        let mut cache = ReleaseCache::default();
        let mut group: Vec<Outgoing> =
            Vec::with_capacity(if grouped { CONFIRM_GROUP_EVENTS } else { 0 });
        let mut group_bytes = 0usize;
        let mut in_flight: VecDeque<(u64, jetstream::context::PublishAckFuture)> =
            VecDeque::with_capacity(if grouped { 0 } else { MAX_IN_FLIGHT });
        let mut next = resume;
        while next <= head {
            let chunk = self
                .store
                .range_with_bytes(Seq::new(next).map_err(store_err)?, PUBLISH_CHUNK_EVENTS)
                .map_err(store_err)?;
            if chunk.is_empty() {
                break;
            }
            for (env, stored) in chunk {
                let release = Release::of(&self.store, &env, &mut cache).map_err(store_err)?;
                let withheld = match release {
                    Release::Send => None,
                    Release::Withhold(w) => Some(w),
                };
                let position = Position {
                    seq: env.seq().get(),
                    hash: env.hash(),
                    prev: env.prev_hash(),
                    withheld,
                };
                let body = match withheld {
                    None => {
                        report.events += 1;
                        bytes::Bytes::from(stored)
                    }
                    Some(w) => {
                        *report.withheld.entry(w.as_str().to_owned()).or_default() += 1;
                        bytes::Bytes::new()
                    }
                };
                next = position.seq + 1;
                if !grouped {
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        if let Some((seq, ack)) = in_flight.pop_front() {
                            Self::confirm(seq, ack, Some(report)).await?;
                        }
                    }
                    let ack = self
                        .context
                        .publish_with_headers(subject.clone(), headers_of(&position), body)
                        .await
                        .map_err(js("publish"))?;
                    in_flight.push_back((position.seq, ack));
                    continue;
                }
                // Sent at once, without a reply: the group's confirmation
                // below proves it arrived, or publishes it again.
                client
                    .publish_with_headers(subject.clone(), headers_of(&position), body.clone())
                    .await
                    .map_err(js("publish"))?;
                group_bytes += body.len();
                group.push(Outgoing { position, body });
                if group.len() >= CONFIRM_GROUP_EVENTS || group_bytes >= CONFIRM_GROUP_BYTES {
                    group_bytes = 0;
                    held = self.confirm_group(&subject, &group, held, report).await?;
                    group.clear();
                }
            }
        }
        while let Some((seq, ack)) = in_flight.pop_front() {
            Self::confirm(seq, ack, Some(report)).await?;
        }
        if !group.is_empty() {
            self.confirm_group(&subject, &group, held, report).await?;
        }
        report.last_message = self.stream_last(&self.device).await?.map(|(_, s)| s);
        Ok(())
    }

    /// The first position through `through` of this device's log that the
    /// stream does not hold, if any: when it holds fewer messages of the
    /// device than that, every one of them is read once (an ordered
    /// consumer) to find it among the last `MAX_AUDITED_POSITIONS`.
    async fn first_lost(&self, through: u64) -> Result<Option<u64>, ReplicationError> {
        let subject = wire::subject(&self.profile, &self.device);
        let held = self
            .messages_of(&async_nats::Subject::from(subject.clone()))
            .await?;
        if through == 0 || held >= through {
            return Ok(None);
        }
        if held == 0 {
            return Ok(Some(1));
        }
        // A server loses its newest messages: the positions looked for are
        // the last ones confirmed, at most MAX_AUDITED_POSITIONS of them.
        let from = through.saturating_sub(MAX_AUDITED_POSITIONS - 1).max(1);
        let words = usize::try_from((through - from) / 64 + 1)
            .map_err(|_| ReplicationError::Store("the log is too long to audit".into()))?;
        let mut seen = vec![0u64; words];
        let audit = |e: String| ReplicationError::JetStream {
            what: "audit of the stream",
            reason: e,
        };
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| audit(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| audit(e.to_string()))?;
        loop {
            let stall = Duration::from_millis(FETCH_STALL_MS);
            let next = tokio::time::timeout(stall, messages.next())
                .await
                .map_err(|_| audit("the server stopped delivering".into()))?;
            let Some(m) = next else { break };
            let m = m.map_err(|e| audit(e.to_string()))?;
            let pending = m.info().map_err(|e| audit(e.to_string()))?.pending;
            // A message that cannot be read holds no position here.
            if let Ok((p, _)) =
                read_message(m.message.headers.as_ref(), &m.message.payload, &self.device)
            {
                if (from..=through).contains(&p.seq) {
                    let (word, bit) = ((p.seq - from) / 64, (p.seq - from) % 64);
                    if let Some(w) = usize::try_from(word).ok().and_then(|i| seen.get_mut(i)) {
                        *w |= 1 << bit;
                    }
                }
            }
            if pending == 0 {
                break;
            }
        }
        let first = (from..=through).find(|q| {
            usize::try_from((q - from) / 64)
                .ok()
                .and_then(|i| seen.get(i))
                .is_none_or(|w| w & (1 << ((q - from) % 64)) == 0)
        });
        if first.is_none() {
            tracing::warn!(
                held,
                through,
                from,
                "the stream holds fewer messages of this device than positions confirmed, yet every one audited is there"
            );
        }
        Ok(first)
    }

    /// How many messages of `subject` the stream holds.
    async fn messages_of(&self, subject: &async_nats::Subject) -> Result<u64, ReplicationError> {
        let mut subjects = self
            .stream
            .info_with_subjects(subject.as_str())
            .await
            .map_err(js("stream subject count"))?;
        let mut count = 0;
        while let Some(item) = subjects.next().await {
            let (name, n) = item.map_err(js("stream subject count"))?;
            if name == subject.as_str() {
                count = u64::try_from(n).unwrap_or(u64::MAX);
            }
        }
        Ok(count)
    }

    /// Confirms a group of publications sent without replies, given that
    /// the stream held `held` messages of this device before it. The
    /// group's last message is published again with a reply: the server
    /// handles one connection's publications to a stream in order, so its
    /// answer comes after every earlier one of the group was stored or
    /// dropped, and its message id makes it a duplicate when the first
    /// copy arrived. When the stream then holds exactly one more message
    /// per position, every one arrived. Otherwise (a publication refused
    /// or lost, or positions the stream already held) the whole group is
    /// published again, each awaiting its acknowledgement: the stream's
    /// duplicate window makes what arrived a duplicate, and a refusal is
    /// reported as the error it is. Returns the count to expect next.
    async fn confirm_group(
        &self,
        subject: &async_nats::Subject,
        group: &[Outgoing],
        held: u64,
        report: &mut PublishReport,
    ) -> Result<u64, ReplicationError> {
        let Some(last) = group.last() else {
            return Ok(held);
        };
        let barrier = self
            .context
            .publish_with_headers(
                subject.clone(),
                headers_of(&last.position),
                last.body.clone(),
            )
            .await
            .map_err(js("publish"))?;
        barrier.await.map_err(js("publish acknowledgement"))?;
        let now = self.messages_of(subject).await?;
        let expected = held.saturating_add(u64::try_from(group.len()).unwrap_or(u64::MAX));
        if now == expected {
            report.confirmed_seq = last.position.seq;
            return Ok(now);
        }
        tracing::debug!(
            from = group.first().map_or(0, |o| o.position.seq),
            through = last.position.seq,
            held,
            now,
            expected,
            "a publication group was not confirmed whole; publishing it again acknowledged"
        );
        let mut in_flight: VecDeque<(u64, jetstream::context::PublishAckFuture)> =
            VecDeque::with_capacity(MAX_IN_FLIGHT);
        for o in group {
            if in_flight.len() >= MAX_IN_FLIGHT {
                if let Some((seq, ack)) = in_flight.pop_front() {
                    report.confirmed_seq = Self::confirm(seq, ack, None).await?;
                }
            }
            let ack = self
                .context
                .publish_with_headers(subject.clone(), headers_of(&o.position), o.body.clone())
                .await
                .map_err(js("publish"))?;
            in_flight.push_back((o.position.seq, ack));
        }
        while let Some((seq, ack)) = in_flight.pop_front() {
            report.confirmed_seq = Self::confirm(seq, ack, None).await?;
        }
        // Every position is now in the stream: those that added no message
        // to it since the group began were there before it (the stream's
        // own duplicate answers would also count those that the first
        // sending stored).
        let now = self.messages_of(subject).await?;
        let added = now.saturating_sub(held);
        report.already_in_stream = report.already_in_stream.saturating_add(
            u64::try_from(group.len())
                .unwrap_or(u64::MAX)
                .saturating_sub(added),
        );
        Ok(now)
    }

    /// Awaits the acknowledgement of the publication of position `seq`,
    /// published once in this pass when a `report` is given: it then
    /// records the confirmation, and a duplicate as a position the stream
    /// already held. Returns `seq`.
    async fn confirm(
        seq: u64,
        ack: jetstream::context::PublishAckFuture,
        report: Option<&mut PublishReport>,
    ) -> Result<u64, ReplicationError> {
        let answer = ack.await.map_err(js("publish acknowledgement"))?;
        if let Some(report) = report {
            if answer.duplicate {
                report.already_in_stream += 1;
            }
            report.confirmed_seq = seq;
        }
        Ok(seq)
    }

    /// The other devices of this profile that have published.
    pub async fn peers(&self) -> Result<Vec<String>, ReplicationError> {
        let mut subjects = self
            .stream
            .info_with_subjects(wire::profile_filter(&self.profile))
            .await
            .map_err(js("stream subjects"))?;
        let mut out = Vec::new();
        while let Some(item) = subjects.next().await {
            let (subject, _) = item.map_err(js("stream subjects"))?;
            if let Some(d) = wire::device_of(&self.profile, &subject) {
                if d != self.device && !out.contains(&d) {
                    out.push(d);
                }
            }
            if out.len() >= MAX_PEERS {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Receives from every peer of the profile.
    pub async fn receive(&self) -> Result<Vec<PeerReport>, ReplicationError> {
        let mut out = Vec::new();
        for peer in self.peers().await? {
            out.push(self.receive_from(&peer).await?);
        }
        Ok(out)
    }

    fn consumer_name(&self, peer: &str) -> String {
        let mut h = blake3::Hasher::new();
        for part in ["syncd-replication/v1", &self.profile, &self.device, peer] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let hex = h.finalize().to_hex();
        format!("syncd-{}", hex.get(..32).unwrap_or_default())
    }

    /// Receives what `peer` published since this device's consumer last
    /// acknowledged, verifying every link.
    pub async fn receive_from(&self, peer: &str) -> Result<PeerReport, ReplicationError> {
        let subject = wire::subject(&self.profile, peer);
        let name = self.consumer_name(peer);
        let mut consumer: consumer::Consumer<consumer::pull::Config> = self
            .stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject.clone(),
                    ack_policy: consumer::AckPolicy::All,
                    ack_wait: Duration::from_millis(ACK_WAIT_MS),
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(js("consumer"))?;
        let floor = consumer
            .info()
            .await
            .map_err(js("consumer info"))?
            .ack_floor
            .stream_sequence;
        let anchor = if floor == 0 {
            Anchor {
                seq: 0,
                hash: core::genesis(),
            }
        } else {
            let m = self
                .stream
                .get_raw_message(floor)
                .await
                .map_err(js("anchor message"))?;
            let (p, _) =
                read_message(Some(&m.headers), &m.payload, peer).map_err(js("anchor message"))?;
            Anchor {
                seq: p.seq,
                hash: p.hash,
            }
        };
        let mut report = PeerReport {
            device: peer.to_owned(),
            ..PeerReport::default()
        };
        let mut applied = 0usize;
        let mut pending = Pending::new(anchor, floor);
        let mut rounds = 0usize;
        loop {
            rounds += 1;
            let (delivered, stalled) = self
                .round(
                    &mut consumer,
                    peer,
                    &subject,
                    &mut pending,
                    &mut report,
                    &mut applied,
                )
                .await?;
            report.stream_head = self.stream_head(peer).await?.map_or(0, |p| p.seq);
            if report.missing.is_some()
                || !report.refused.is_empty()
                || report.stream_head <= pending.tip().seq
                || applied >= MAX_RECEIVE_PER_PEER
            {
                break;
            }
            // The stream holds positions beyond the applied tip.
            let held = Self::delivers_the_rest(&mut consumer).await?;
            match after_round(held, delivered, rounds) {
                // A server that stopped answering a fetch ends the pass.
                AfterRound::Fetch if !stalled => continue,
                AfterRound::Fetch | AfterRound::Leave => break,
                AfterRound::Refill => {
                    let until = report
                        .stream_head
                        .min(pending.tip().seq + MAX_PENDING as u64)
                        + 1;
                    if self
                        .fill(&subject, peer, &mut pending, until, &mut report)
                        .await?
                    {
                        self.commit_confirmed(&mut pending, &mut report).await?;
                    }
                    break;
                }
            }
        }
        report.applied_through = pending.tip().seq;
        report.lag = report.stream_head.saturating_sub(report.applied_through);
        Ok(report)
    }

    /// One round of a pass: fetches and applies until a fetch comes back
    /// empty or stalls (or the pass's bound is reached, or a position is
    /// refused or missing), then makes everything verified durable and has
    /// the last acknowledgement confirmed. Returns the messages delivered
    /// to it and whether a fetch stalled.
    async fn round(
        &self,
        consumer: &mut consumer::Consumer<consumer::pull::Config>,
        peer: &str,
        subject: &str,
        pending: &mut Pending,
        report: &mut PeerReport,
        applied: &mut usize,
    ) -> Result<(usize, bool), ReplicationError> {
        let mut delivered = 0usize;
        let mut stalled = false;
        // One group commit runs on a blocking thread while the next
        // positions are fetched and verified: the fsync of one batch
        // overlaps the network and hashing work of the next.
        let mut committing: Option<Commit> = None;
        'fetch: while *applied < MAX_RECEIVE_PER_PEER {
            // No expiry: a fetch without one ends as soon as the server has
            // delivered what it holds. With one, nats-server 2.9 holds an
            // unanswerable fetch until it expires, which made every pass
            // that caught up (a daemon's usual pass) wait that long.
            let mut batch = consumer
                .fetch()
                .max_messages(FETCH_BATCH)
                .messages()
                .await
                .map_err(js("fetch"))?;
            let mut got = 0usize;
            loop {
                let stall = Duration::from_millis(FETCH_STALL_MS);
                let Ok(next) = tokio::time::timeout(stall, batch.next()).await else {
                    tracing::warn!(peer, "a fetch stopped answering; ending the pass");
                    stalled = true;
                    break;
                };
                let Some(msg) = next else { break };
                let msg = msg.map_err(js("fetch"))?;
                got += 1;
                let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
                let (position, verified) =
                    match read_message(msg.message.headers.as_ref(), &msg.message.payload, peer) {
                        Ok(read) => read,
                        Err(e) => {
                            let seq = match &e {
                                FrameError::Event { seq, .. } => Some(*seq),
                                _ => None,
                            };
                            Self::refuse(stream_seq, seq, e.to_string(), report);
                            continue;
                        }
                    };
                let tip = pending.tip();
                if position.seq == tip.seq && position.hash != tip.hash {
                    let reason = format!(
                        "position {} arrives with hash {} but {} was applied there: forked history",
                        position.seq, position.hash, tip.hash
                    );
                    Self::refuse(stream_seq, Some(position.seq), reason, report);
                    continue;
                }
                if position.seq <= tip.seq {
                    // Already applied (a redelivery, or a copy refilled
                    // earlier): acknowledged with the next applied one.
                    continue;
                }
                if position.seq > tip.seq + 1
                    && !self
                        .fill(subject, peer, pending, position.seq, report)
                        .await?
                {
                    break 'fetch;
                }
                match Self::verify_next(
                    peer,
                    &position,
                    &msg.message.payload,
                    verified,
                    pending.tip(),
                ) {
                    Ok(env) => pending.push(&position, env, msg, stream_seq),
                    Err(reason) => {
                        Self::refuse(stream_seq, Some(position.seq), reason, report);
                    }
                }
                if pending.len() >= MAX_PENDING {
                    let (n, stopped) = self.settle(&mut committing, pending, report, false).await?;
                    *applied += n;
                    if stopped {
                        break 'fetch;
                    }
                    committing = self.start_commit(pending);
                }
            }
            delivered += got;
            if got == 0 || stalled {
                break;
            }
            // Between fetches: start committing what is verified unless a
            // commit is still running (then keep fetching, up to
            // MAX_PENDING more).
            if committing.as_ref().is_some_and(Commit::is_finished) || committing.is_none() {
                let (n, stopped) = self.settle(&mut committing, pending, report, false).await?;
                *applied += n;
                if stopped {
                    break;
                }
                committing = self.start_commit(pending);
            }
        }
        // Whatever was verified before stopping is made durable too, and
        // the last acknowledgement of the round is confirmed by the server.
        let (_, stopped) = self.settle(&mut committing, pending, report, false).await?;
        if !stopped {
            self.commit_confirmed(pending, report).await?;
        }
        Ok((delivered, stalled))
    }

    /// Makes what is pending durable in one group commit and acknowledges
    /// its last message, waiting for the server to confirm it.
    async fn commit_confirmed(
        &self,
        pending: &mut Pending,
        report: &mut PeerReport,
    ) -> Result<(), ReplicationError> {
        let mut commit = self.start_commit(pending);
        self.settle(&mut commit, pending, report, true)
            .await
            .map(|_| ())
    }

    /// Whether the consumer will deliver what lies beyond the applied tip
    /// by itself: it holds undelivered messages and none of those it
    /// delivered awaits an acknowledgement.
    async fn delivers_the_rest(
        consumer: &mut consumer::Consumer<consumer::pull::Config>,
    ) -> Result<bool, ReplicationError> {
        let info = consumer.info().await.map_err(js("consumer info"))?;
        Ok(info.num_pending > 0 && info.num_ack_pending == 0)
    }

    fn refuse(stream_seq: u64, seq: Option<u64>, reason: String, report: &mut PeerReport) {
        tracing::warn!(peer = %report.device, stream_seq, ?seq, %reason, "replicated message refused");
        report.refused.push(Refusal {
            stream_seq,
            seq,
            reason,
        });
    }

    /// Verifies the position after `anchor`: it must link to it, and an
    /// event's bytes must verify (`verified`: they already did, read
    /// without position headers). `Ok(None)` for a stub; `Err` is the
    /// reason for refusing it.
    fn verify_next(
        peer: &str,
        p: &Position,
        payload: &[u8],
        verified: Option<core::Envelope>,
        anchor: Anchor,
    ) -> Result<Option<core::Envelope>, String> {
        if p.seq != anchor.seq + 1 || p.prev != anchor.hash {
            return Err(format!(
                "position {} claims to follow {} but the chain is at {} ({}): broken or forged chain",
                p.seq, p.prev, anchor.seq, anchor.hash
            ));
        }
        match verified {
            Some(env) => Ok(Some(env)),
            None => wire::verify_event(p, peer, payload).map_err(|e| e.to_string()),
        }
    }

    /// Hands the pending positions to a blocking thread that makes their
    /// events durable here in one group commit. `None` when nothing is
    /// pending.
    fn start_commit(&self, pending: &mut Pending) -> Option<Commit> {
        if pending.items.is_empty() {
            return None;
        }
        // Two buffers of MAX_PENDING items take turns: allocating one
        // (hundreds of KiB) per commit costs the allocator more than the
        // commit's own work.
        let spare = pending
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(MAX_PENDING));
        let mut items = std::mem::replace(&mut pending.items, spare);
        let mut envelopes = Vec::with_capacity(items.len());
        for item in &mut items {
            if let Some(env) = item.env.take() {
                envelopes.push(env);
                item.event = true;
            }
        }
        let tip = items.last().map(|i| (i.at, i.stream_seq));
        pending.committing = tip;
        let store = self.store.clone();
        let task = tokio::task::spawn_blocking(move || store.append_replicated(envelopes));
        Some(Commit { items, task })
    }

    /// Waits for the running commit, then acknowledges the last message
    /// among its applied positions (and with it every one before;
    /// `confirm` waits for the server to confirm it). An event the store
    /// refuses (its origin slot holds another hash) stops the chain there:
    /// what follows it, committed or only verified, stays pending on the
    /// server. Returns the positions applied and whether it stopped.
    async fn settle(
        &self,
        committing: &mut Option<Commit>,
        pending: &mut Pending,
        report: &mut PeerReport,
        confirm: bool,
    ) -> Result<(usize, bool), ReplicationError> {
        let Some(Commit { mut items, task }) = committing.take() else {
            return Ok((0, false));
        };
        pending.committing = None;
        let outcomes = match task.await {
            Ok(r) => r.map_err(store_err)?,
            Err(e) => {
                // Nothing after the durable tip can be trusted to link now.
                pending.items.clear();
                return Err(ReplicationError::Store(format!(
                    "the commit task failed: {e}"
                )));
            }
        };
        let mut outcomes = outcomes.into_iter();
        let mut applied = 0usize;
        let mut last_msg: Option<jetstream::Message> = None;
        let mut stopped = false;
        for item in items.drain(..) {
            if item.event {
                match outcomes.next() {
                    Some(AppendOutcome::Appended { .. }) => report.appended += 1,
                    Some(AppendOutcome::Duplicate { .. }) => report.duplicates += 1,
                    Some(AppendOutcome::Rejected { reason })
                    | Some(AppendOutcome::PolicyBlocked { reason, .. }) => {
                        Self::refuse(item.stream_seq, Some(item.at.seq), reason, report);
                        stopped = true;
                        break;
                    }
                    None => {
                        pending.items.clear();
                        return Err(ReplicationError::Store(
                            "fewer outcomes than events appended".into(),
                        ));
                    }
                }
            } else {
                report.stubs += 1;
            }
            applied += 1;
            pending.durable = item.at;
            pending.durable_stream_seq = item.stream_seq;
            if item.msg.is_some() {
                last_msg = item.msg;
            }
        }
        pending.spare = Some(items);
        if stopped {
            // Verified against a tip that is not durable: fetched again.
            pending.items.clear();
        }
        // With `AckPolicy::All`, acknowledging a message acknowledges every
        // one delivered before it. Only a message whose position is durable
        // here is acknowledged, so the consumer's ack floor is always an
        // applied position: the anchor after a restart. A lost
        // acknowledgement only means redelivery, which is deduplicated.
        // Refused messages and copies are acknowledged with the next
        // applied one; until then they are delivered, and reported, again.
        if let Some(m) = last_msg {
            if confirm {
                m.double_ack().await.map_err(js("ack"))?;
            } else {
                m.ack().await.map_err(js("ack"))?;
            }
        }
        Ok((applied, stopped))
    }

    /// Reads the positions between the pending tip and `until`
    /// (exclusive) from the stream and queues them verified. `false` when
    /// one is missing or refused (reported).
    async fn fill(
        &self,
        subject: &str,
        peer: &str,
        pending: &mut Pending,
        until: u64,
        report: &mut PeerReport,
    ) -> Result<bool, ReplicationError> {
        let tip = pending.tip();
        let Some(found) = self
            .refill(subject, peer, pending.tip_stream_seq(), tip, until)
            .await?
        else {
            report.missing = Some(tip.seq + 1);
            return Ok(false);
        };
        for (p, bytes, verified, stream_seq) in found {
            match Self::verify_next(peer, &p, &bytes, verified, pending.tip()) {
                Ok(env) => {
                    report.refilled += 1;
                    pending.push_refilled(&p, env, stream_seq);
                }
                Err(reason) => {
                    Self::refuse(stream_seq, Some(p.seq), reason, report);
                    report.missing = Some(p.seq);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Looks ahead in the stream, after `from_stream_seq`, for the
    /// positions between the anchor and `until` (exclusive). Returns them
    /// in order, or `None` when one is missing.
    async fn refill(
        &self,
        subject: &str,
        peer: &str,
        from_stream_seq: u64,
        anchor: Anchor,
        until: u64,
    ) -> Result<Option<Vec<Refilled>>, ReplicationError> {
        let mut found: BTreeMap<u64, Refilled> = BTreeMap::new();
        let wanted = usize::try_from(until.saturating_sub(anchor.seq + 1)).unwrap_or(usize::MAX);
        // After the tip's message first; then, because a publisher that
        // resumed after a failover may have put copies earlier in the
        // stream than where this consumer stands, from the subject's start.
        let starts = if from_stream_seq > 0 {
            vec![from_stream_seq + 1, 1]
        } else {
            vec![1]
        };
        'scan: for start in starts {
            let mut cursor = start;
            for _ in 0..MAX_REFILL_LOOKUPS {
                let m = match self
                    .stream
                    .get_first_raw_message_by_subject(subject, cursor)
                    .await
                {
                    Ok(m) => m,
                    Err(_) => break,
                };
                cursor = m.sequence + 1;
                // A message that cannot be read is passed over here; if its
                // position is needed, the gap is reported as missing.
                if let Ok((p, verified)) = read_message(Some(&m.headers), &m.payload, peer) {
                    if p.seq > anchor.seq && p.seq < until {
                        found
                            .entry(p.seq)
                            .or_insert((p, m.payload.to_vec(), verified, m.sequence));
                    }
                }
                if found.len() >= wanted {
                    break 'scan;
                }
            }
        }
        let mut out = Vec::new();
        for s in anchor.seq + 1..until {
            match found.remove(&s) {
                Some(x) => out.push(x),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// What a pass does after a round when the stream holds positions beyond
/// the applied tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRound {
    /// Fetch again: the consumer holds them (published after the round's
    /// last fetch).
    Fetch,
    /// Read them from the stream: the consumer will not deliver them.
    Refill,
    /// End the pass; the next one goes on from here.
    Leave,
}

/// Rounds one pass runs at most, so that a peer that keeps publishing does
/// not hold the pass (and the peers after it) for long.
const MAX_ROUNDS_PER_PASS: usize = 16;

/// The decision after round `rounds` of a pass, which was delivered
/// `delivered` messages, when the stream holds positions beyond the
/// applied tip; `held` is whether the consumer reports holding undelivered
/// messages with none awaiting an acknowledgement.
fn after_round(held: bool, delivered: usize, rounds: usize) -> AfterRound {
    if !held {
        // Delivered to a pass that died before acknowledging them, or
        // passed over: not delivered again before their acknowledgement
        // times out, if ever.
        return AfterRound::Refill;
    }
    if delivered == 0 && rounds > 1 {
        // This round started after the stream was seen to hold them, and
        // the consumer delivered nothing: it is not delivering what it
        // reports; read them from the stream rather than wait on it.
        return AfterRound::Refill;
    }
    if rounds >= MAX_ROUNDS_PER_PASS {
        return AfterRound::Leave;
    }
    AfterRound::Fetch
}

/// A position read back from the stream to fill a gap: its position, its
/// bytes, its envelope when already verified, and its stream sequence.
type Refilled = (Position, Vec<u8>, Option<core::Envelope>, u64);

/// A verified position waiting to be made durable.
struct PendingItem {
    at: Anchor,
    env: Option<core::Envelope>,
    /// Whether it carries an event (its envelope handed to a commit).
    event: bool,
    msg: Option<jetstream::Message>,
    stream_seq: u64,
}

/// A group commit running on a blocking thread, with the positions it
/// covers in chain order.
struct Commit {
    items: Vec<PendingItem>,
    task: tokio::task::JoinHandle<Result<Vec<AppendOutcome>, core::AppendError>>,
}

impl Commit {
    fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Verified positions not yet durable here, in chain order.
struct Pending {
    durable: Anchor,
    /// The stream sequence of the durable tip's message (0: unknown).
    durable_stream_seq: u64,
    /// The tip of the commit running, and its message's stream sequence.
    committing: Option<(Anchor, u64)>,
    items: Vec<PendingItem>,
    /// An emptied buffer of items, reused for the next batch.
    spare: Option<Vec<PendingItem>>,
}

impl Pending {
    fn new(durable: Anchor, durable_stream_seq: u64) -> Self {
        Self {
            durable,
            durable_stream_seq,
            committing: None,
            items: Vec::with_capacity(MAX_PENDING),
            spare: None,
        }
    }

    /// The position the next one must follow.
    fn tip(&self) -> Anchor {
        match (self.items.last(), self.committing) {
            (Some(i), _) => i.at,
            (None, Some((at, _))) => at,
            (None, None) => self.durable,
        }
    }

    /// Where in the stream the tip's message is: the next position is
    /// after it.
    fn tip_stream_seq(&self) -> u64 {
        match (self.items.last(), self.committing) {
            (Some(i), _) => i.stream_seq,
            (None, Some((_, s))) => s,
            (None, None) => self.durable_stream_seq,
        }
    }

    fn push_refilled(&mut self, p: &Position, env: Option<core::Envelope>, stream_seq: u64) {
        self.items.push(PendingItem {
            at: Anchor {
                seq: p.seq,
                hash: p.hash,
            },
            env,
            event: false,
            msg: None,
            stream_seq,
        });
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues a delivered position; `stream_seq` was read from the
    /// message's reply subject already (parsing it is not free).
    fn push(
        &mut self,
        p: &Position,
        env: Option<core::Envelope>,
        msg: jetstream::Message,
        stream_seq: u64,
    ) {
        self.items.push(PendingItem {
            at: Anchor {
                seq: p.seq,
                hash: p.hash,
            },
            env,
            event: false,
            msg: Some(msg),
            stream_seq,
        });
    }
}

/// What a message says about its position: read from its headers (its
/// bytes are verified later, against them) or, for an event that names
/// none, from its bytes, verified here as an event of `device`.
fn read_message(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    device: &str,
) -> Result<(Position, Option<core::Envelope>), FrameError> {
    let get = |name: &'static str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    if wire::names_position(get) {
        Ok((wire::read_position(get)?, None))
    } else {
        let (p, env) = wire::read_event(device, payload)?;
        Ok((p, Some(env)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_round_with_the_stream_ahead_every_case_has_one_answer() {
        use AfterRound::{Fetch, Leave, Refill};
        // (held by the consumer, delivered to the round, round) -> decision
        let cases = [
            // Not held: delivered to a dead pass or passed over.
            (false, 0, 1, Refill),
            (false, 5, 1, Refill),
            (false, 0, 3, Refill),
            (false, 5, MAX_ROUNDS_PER_PASS, Refill),
            // Held, first round: published after its last fetch, or the
            // first round found nothing yet.
            (true, 0, 1, Fetch),
            (true, 5, 1, Fetch),
            // Held, later rounds: going on while rounds deliver...
            (true, 5, 2, Fetch),
            (true, 5, MAX_ROUNDS_PER_PASS - 1, Fetch),
            // ...but not past the bound...
            (true, 5, MAX_ROUNDS_PER_PASS, Leave),
            // ...and a round that started with the stream ahead and got
            // nothing means the consumer is not delivering.
            (true, 0, 2, Refill),
            (true, 0, MAX_ROUNDS_PER_PASS, Refill),
        ];
        for (held, delivered, rounds, want) in cases {
            assert_eq!(
                after_round(held, delivered, rounds),
                want,
                "held {held}, delivered {delivered}, round {rounds}"
            );
        }
    }
}
