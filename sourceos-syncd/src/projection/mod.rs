//! The projection engine.
//!
//! A projection is a deterministic fold over events into one derived sled
//! tree (`p.<name>`). It reads nothing but the events handed to it and its
//! own records; it never reads the clock. Every record is stored framed with
//! a checksum over tree name, key and payload, so that damage to derived
//! state is detectable record by record. The projection's checkpoint (how
//! far it has folded, and the hash of that event) lives in the same tree, so
//! records and checkpoint are written by one atomic batch.
//!
//! Writes are staged in memory and flushed when the staging holds more than
//! a bounded number of dirty records, or when the store closes. A crash only
//! loses staged writes; the checkpoint then lags the log and the next open
//! folds the missing events again.

pub(crate) mod git_state;
pub(crate) mod idempotency;
pub(crate) mod ledger;
pub(crate) mod lifecycle;
pub(crate) mod origins;
pub(crate) mod registry;
pub(crate) mod sessions;
pub(crate) mod subjects;
pub(crate) mod summary;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};
use crate::event::Envelope;
use crate::ids::{Digest, Seq};
use crate::storage::{DerivedTree, StorageError, DERIVED_PREFIX};

/// A record as key and payload.
pub(crate) type RawRecord = (Vec<u8>, Vec<u8>);

/// Key of the checkpoint record inside every projection tree.
pub(crate) const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";
/// Length of the checksum appended to every derived record.
pub(crate) const CHECKSUM_LEN: usize = 8;
/// Dirty records a projection may stage before it must flush.
pub(crate) const MAX_STAGED_RECORDS: usize = 16_384;
/// Records written per batch during a rebuild.
const REBUILD_BATCH_RECORDS: usize = 8_192;

/// Why a derived record or tree is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A stored record failed its checksum or did not decode.
    #[error("derived record damaged in {tree} at key {key}: {reason}")]
    Damaged {
        /// The tree.
        tree: String,
        /// The key, hex-encoded.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An event handed to the fold could not be read.
    #[error("event {seq} cannot be folded: {reason}")]
    BadEvent {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// A deterministic fold over events into records of one derived tree.
pub(crate) trait Projection: Send + Sync {
    /// Stable name; the tree is `p.<name>`.
    fn name(&self) -> &'static str;
    /// Format version of the records; a change forces a rebuild.
    fn version(&self) -> u32;
    /// Folds one event into the staged state.
    fn apply(&self, event: &Envelope, state: &mut Staging) -> Result<(), ProjectionError>;
    /// Checks that a record's payload decodes as this projection's record.
    fn check_record(&self, key: &[u8], payload: &[u8]) -> Result<(), String>;
}

/// How far a projection has folded the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Record format version of the projection.
    pub version: u32,
    /// Last folded sequence number; 0 before the first event.
    pub seq: u64,
    /// Hash of that event (the genesis value when `seq` is 0).
    pub head: Digest,
}

/// Hex of a key, for messages.
pub(crate) fn key_hex(key: &[u8]) -> String {
    const SHOW_BYTES: usize = 48;
    let mut out = String::new();
    for b in key.iter().take(SHOW_BYTES) {
        out.push_str(&format!("{b:02x}"));
    }
    if key.len() > SHOW_BYTES {
        out.push('…');
    }
    out
}

fn checksum(tree: &str, key: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(tree.as_bytes());
    h.update(&[0]);
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(
        h.finalize()
            .as_bytes()
            .get(..CHECKSUM_LEN)
            .unwrap_or(&[0; 8]),
    );
    out
}

/// Frames a payload for storage: payload followed by its checksum.
pub(crate) fn frame(tree: &str, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + CHECKSUM_LEN);
    v.extend_from_slice(payload);
    v.extend_from_slice(&checksum(tree, key, payload));
    v
}

/// Checks a stored record's checksum and returns its payload.
pub(crate) fn unframe<'a>(tree: &str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    let split = value.len().checked_sub(CHECKSUM_LEN).ok_or_else(|| {
        format!(
            "record of {} bytes is shorter than its checksum",
            value.len()
        )
    })?;
    let (payload, sum) = value.split_at(split);
    if sum != checksum(tree, key, payload) {
        return Err("checksum mismatch".to_owned());
    }
    Ok(payload)
}

/// The staged state of one projection: dirty records over an optional base
/// tree. With no base (a fresh fold) the staging is the whole state.
pub struct Staging {
    tree_name: String,
    base: Option<DerivedTree>,
    /// Staged writes by key (`None` deletes). A hash map: folding looks
    /// up several records per event, and ordered lookups over thousands of
    /// keys with long common prefixes measured as the largest cost of a
    /// fold; the few readers that need key order sort what they take.
    dirty: hashbrown::HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Records read from the base tree (including absent ones), so that
    /// hot records (an actor, an idempotency bucket, a subject's tail) are
    /// not fetched, checksummed and copied again for every event. Every
    /// write to the base goes through this staging, so the cache cannot go
    /// stale; it is bounded by bytes and emptied when full.
    cache: std::cell::RefCell<ReadCache>,
}

/// Bytes of records a staging may keep cached.
const READ_CACHE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Default)]
struct ReadCache {
    records: hashbrown::HashMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl ReadCache {
    fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + 64;
        if self.bytes + size > READ_CACHE_BYTES {
            self.records.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.records.insert(key, value);
    }
}

impl Staging {
    fn new(tree_name: String, base: Option<DerivedTree>) -> Self {
        Self {
            tree_name,
            base,
            dirty: hashbrown::HashMap::new(),
            cache: std::cell::RefCell::new(ReadCache::default()),
        }
    }

    /// A base record, through the read cache.
    fn cached(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        if let Some(hit) = self.cache.borrow().records.get(key) {
            return Ok(hit.clone());
        }
        let loaded = self.load(key)?;
        if self.base.is_some() {
            self.cache.borrow_mut().insert(key.to_vec(), loaded.clone());
        }
        Ok(loaded)
    }

    fn load(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        load(self.base.as_ref(), &self.tree_name, key)
    }

    /// Reads a record's payload.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        match self.dirty.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.cached(key),
        }
    }

    /// Runs `f` on a record's payload where it lies (staged, cached or
    /// just loaded), without copying it out: lookups in large records (an
    /// idempotency bucket) run for every appended event.
    pub(crate) fn with_record<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, ProjectionError> {
        if let Some(v) = self.dirty.get(key) {
            return Ok(f(v.as_deref()));
        }
        if let Some(hit) = self.cache.borrow().records.get(key) {
            return Ok(f(hit.as_deref()));
        }
        let loaded = self.load(key)?;
        let out = f(loaded.as_deref());
        if self.base.is_some() {
            self.cache.borrow_mut().insert(key.to_vec(), loaded);
        }
        Ok(out)
    }

    /// A mutable slot for a record, loaded from the base on first use.
    /// Setting it to `None` deletes the record.
    pub(crate) fn entry(&mut self, key: &[u8]) -> Result<&mut Option<Vec<u8>>, ProjectionError> {
        let Self {
            tree_name,
            base,
            dirty,
            cache,
        } = self;
        match dirty.entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(o) => Ok(o.into_mut()),
            hashbrown::hash_map::EntryRef::Vacant(v) => {
                // A record about to change leaves the cache; it comes back,
                // as written, when the staging is flushed.
                let loaded = match cache.get_mut().records.remove(key) {
                    Some(cached) => cached,
                    None => load(base.as_ref(), tree_name, key)?,
                };
                Ok(v.insert(loaded))
            }
        }
    }

    /// Stages a record.
    pub(crate) fn put(&mut self, key: Vec<u8>, payload: Vec<u8>) {
        self.dirty.insert(key, Some(payload));
    }

    /// A record stored as CBOR (`what` names its type in errors), decoded.
    /// One that does not decode is damage, reported with the tree and key.
    pub(crate) fn get_cbor<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, ProjectionError> {
        self.with_record(key, |b| {
            b.map(|b| crate::codec::decode(what, b)).transpose()
        })?
        .map_err(|e| ProjectionError::Damaged {
            tree: self.tree_name.clone(),
            key: key_hex(key),
            reason: e.to_string(),
        })
    }

    /// Stages a record as CBOR.
    pub(crate) fn put_cbor<T: serde::Serialize>(
        &mut self,
        key: Vec<u8>,
        what: &'static str,
        value: &T,
    ) -> Result<(), ProjectionError> {
        let bytes = crate::codec::encode(what, value).map_err(|e| ProjectionError::Damaged {
            tree: self.tree_name.clone(),
            key: key_hex(&key),
            reason: e.to_string(),
        })?;
        self.put(key, bytes);
        Ok(())
    }

    /// Every record of the projection (base merged with staged writes).
    /// Only for projections whose size does not grow with the log.
    pub(crate) fn scan_all(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ProjectionError> {
        let mut out = BTreeMap::new();
        if let Some(base) = &self.base {
            for pair in base.iter() {
                let (k, v) = pair?;
                if k.as_slice() == CHECKPOINT_KEY {
                    continue;
                }
                let payload = unframe(&self.tree_name, &k, &v).map_err(|reason| {
                    ProjectionError::Damaged {
                        tree: self.tree_name.clone(),
                        key: key_hex(&k),
                        reason,
                    }
                })?;
                out.insert(k.clone(), payload.to_vec());
            }
        }
        for (k, v) in &self.dirty {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    /// Records whose key starts with `prefix` (base merged with staged
    /// writes), in key order, at most `limit`.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<RawRecord>, ProjectionError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if let Some(base) = &self.base {
            for pair in base.scan_prefix(prefix) {
                let (k, v) = pair?;
                if self.dirty.contains_key(&k) {
                    continue;
                }
                let payload = unframe(&self.tree_name, &k, &v).map_err(|reason| {
                    ProjectionError::Damaged {
                        tree: self.tree_name.clone(),
                        key: key_hex(&k),
                        reason,
                    }
                })?;
                out.insert(k, payload.to_vec());
                // Staged records may still sort before these; keep a margin.
                if out.len() > limit.saturating_add(self.dirty.len()) {
                    break;
                }
            }
        }
        for (k, v) in self.dirty.iter().filter(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().take(limit).collect())
    }

    fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Takes the staged writes, framed for storage. The written values stay
    /// readable through the cache.
    fn take_framed(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let tree = self.tree_name.clone();
        let cache = self.cache.get_mut();
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(k, v)| {
                let framed = v.as_ref().map(|p| frame(&tree, &k, p));
                cache.insert(k.clone(), v);
                (k, framed)
            })
            .collect()
    }

    /// For a fresh fold: the complete state as key -> payload.
    fn into_state(self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.dirty
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

/// A record's payload from a base tree, checksum verified.
fn load(
    base: Option<&DerivedTree>,
    tree_name: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, ProjectionError> {
    let Some(base) = base else {
        return Ok(None);
    };
    match base.get(key)? {
        None => Ok(None),
        Some(raw) => unframe(tree_name, key, &raw)
            .map(|p| Some(p.to_vec()))
            .map_err(|reason| ProjectionError::Damaged {
                tree: tree_name.to_owned(),
                key: key_hex(key),
                reason,
            }),
    }
}

/// Health of one projection as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionHealth {
    /// Folded up to the log head.
    Current,
    /// Consistent but behind the log (after a crash, or in a read-only
    /// inspection).
    Behind {
        /// Checkpoint sequence.
        at: u64,
    },
    /// Written in an older record format than this build's: unusable
    /// until rebuilt, which a writable open does by itself (an upgrade is
    /// not damage).
    Outdated {
        /// The format version the checkpoint names.
        found: u32,
        /// The format version this build writes.
        current: u32,
    },
    /// Folded by this build but not by the syncd that wrote the store, so
    /// it has no tree yet: built from the log by the next writable open.
    New,
    /// Unusable until rebuilt.
    Damaged {
        /// Why.
        reason: String,
    },
}

impl ProjectionHealth {
    /// Short label for status documents.
    pub fn label(&self) -> &'static str {
        match self {
            ProjectionHealth::Current => "current",
            ProjectionHealth::Behind { .. } => "behind",
            ProjectionHealth::Outdated { .. } => "outdated",
            ProjectionHealth::New => "new",
            ProjectionHealth::Damaged { .. } => "damaged",
        }
    }

    /// Whether events can be folded into it (otherwise only a rebuild
    /// makes it usable again).
    pub fn is_foldable(&self) -> bool {
        matches!(
            self,
            ProjectionHealth::Current | ProjectionHealth::Behind { .. }
        )
    }
}

/// One projection with its tree and staged state.
struct Slot {
    projection: Box<dyn Projection>,
    staging: Staging,
    tree: Option<DerivedTree>,
    applied: Checkpoint,
    /// The checkpoint last written to the tree.
    persisted: Checkpoint,
    health: ProjectionHealth,
}

/// What opening reports about a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Projection name.
    pub name: &'static str,
    /// Tree name.
    pub tree: String,
    /// Applied checkpoint (in memory, may be ahead of what is flushed).
    pub checkpoint_seq: u64,
    /// Health.
    pub health: ProjectionHealth,
}

/// Reads a checkpoint record from a tree.
pub(crate) fn read_checkpoint(tree: &DerivedTree) -> Result<Option<Checkpoint>, String> {
    let raw = tree.get(CHECKPOINT_KEY).map_err(|e| e.to_string())?;
    let Some(raw) = raw else { return Ok(None) };
    let payload = unframe(tree.name(), CHECKPOINT_KEY, &raw)?;
    codec::decode::<Checkpoint>("checkpoint", payload)
        .map(Some)
        .map_err(|e: DecodeError| e.to_string())
}

/// Writes a tree's checkpoint by itself (the drill that leaves a tree as
/// an older syncd did, and tests).
pub(crate) fn write_checkpoint(tree: &DerivedTree, cp: &Checkpoint) -> Result<(), ProjectionError> {
    let payload = checkpoint_payload(cp)?;
    tree.raw_insert(
        CHECKPOINT_KEY,
        &frame(tree.name(), CHECKPOINT_KEY, &payload),
    )?;
    Ok(())
}

/// Rewrites a tree's checkpoint as if an older (or newer) syncd had
/// written it in record format `version`: what an upgrade finds.
#[cfg(test)]
pub(crate) fn set_checkpoint_version(tree: &DerivedTree, version: u32) {
    #![allow(clippy::unwrap_used)]
    let mut cp = read_checkpoint(tree).unwrap().unwrap();
    cp.version = version;
    write_checkpoint(tree, &cp).unwrap();
}

fn checkpoint_payload(cp: &Checkpoint) -> Result<Vec<u8>, ProjectionError> {
    codec::encode("checkpoint", cp).map_err(|e| ProjectionError::BadEvent {
        seq: cp.seq,
        reason: e.to_string(),
    })
}

/// Tree name of a projection.
pub(crate) fn tree_name(projection: &str) -> String {
    format!("{DERIVED_PREFIX}{projection}")
}

/// The built-in projections, in fold order.
pub(crate) fn builtin() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(idempotency::IdempotencyIndex),
        Box::new(subjects::SubjectIndex),
        Box::new(summary::Summary),
        Box::new(origins::OriginsIndex),
        Box::new(registry::Registry),
        Box::new(git_state::GitStateIndex),
        Box::new(sessions::Sessions),
        Box::new(ledger::Ledger),
        Box::new(lifecycle::LifecycleIndex),
    ]
}

/// The set of projections of an open store.
pub(crate) struct Engine {
    slots: Vec<Slot>,
}

/// The log head as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: Digest,
}

impl Engine {
    /// Attaches the projections to their trees without folding anything.
    /// `hash_at` returns the stored hash of an event, to check that a
    /// checkpoint names an event that is really in the log. `held` names
    /// the projections the store is known to have had trees for (`None`
    /// for a store that did not record them): a missing tree of one of
    /// those is damage, of any other a projection new to this store.
    pub(crate) fn attach(
        projections: Vec<Box<dyn Projection>>,
        trees: impl Fn(&str) -> Result<Option<DerivedTree>, StorageError>,
        head: Head,
        hash_at: impl Fn(u64) -> Option<Digest>,
        genesis: Digest,
        held: Option<&BTreeSet<String>>,
    ) -> Result<Self, StorageError> {
        let mut slots = Vec::with_capacity(projections.len());
        for projection in projections {
            let name = tree_name(projection.name());
            let tree = trees(&name)?;
            let new = held.is_some_and(|h| !h.contains(projection.name()));
            let (applied, health) = match &tree {
                None => (
                    Checkpoint {
                        version: projection.version(),
                        seq: 0,
                        head: genesis,
                    },
                    if new {
                        ProjectionHealth::New
                    } else {
                        ProjectionHealth::Damaged {
                            reason: format!("tree {name} is missing"),
                        }
                    },
                ),
                Some(t) => assess(projection.as_ref(), t, head, &hash_at, genesis),
            };
            slots.push(Slot {
                staging: Staging::new(name, tree.clone()),
                projection,
                tree,
                applied,
                persisted: applied,
                health,
            });
        }
        Ok(Self { slots })
    }

    pub(crate) fn statuses(&self) -> Vec<ProjectionStatus> {
        self.slots
            .iter()
            .map(|s| ProjectionStatus {
                name: s.projection.name(),
                tree: s.staging.tree_name.clone(),
                checkpoint_seq: s.applied.seq,
                health: s.health.clone(),
            })
            .collect()
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.projection.name()).collect()
    }

    /// Projections written in an older record format or new to the store:
    /// what a writable open builds from the log.
    pub(crate) fn outdated(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| {
                matches!(
                    s.health,
                    ProjectionHealth::Outdated { .. } | ProjectionHealth::New
                )
            })
            .map(|s| s.projection.name().to_owned())
            .collect()
    }

    /// Lowest checkpoint among usable projections that are behind.
    pub(crate) fn lowest_behind(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| match s.health {
                ProjectionHealth::Behind { at } => Some(at),
                _ => None,
            })
            .min()
    }

    /// Folds committed events into every usable projection whose checkpoint
    /// is below them, flushing staged writes when they exceed the bound.
    pub(crate) fn apply(
        &mut self,
        events: &[Envelope],
        log_head: u64,
    ) -> Result<(), ProjectionError> {
        self.fold(events, log_head)?;
        self.flush_over_bound()
    }

    /// Writes staged records of projections whose staging exceeds the bound.
    /// Called only once the folded events are durable, so that no derived
    /// checkpoint ever gets ahead of the durable log.
    pub(crate) fn flush_over_bound(&mut self) -> Result<(), ProjectionError> {
        for slot in &mut self.slots {
            if slot.health.is_foldable() && slot.staging.dirty_len() >= MAX_STAGED_RECORDS {
                flush_slot(slot)?;
            }
        }
        Ok(())
    }

    /// Folds events into staged state without writing anything.
    pub(crate) fn fold(
        &mut self,
        events: &[Envelope],
        log_head: u64,
    ) -> Result<(), ProjectionError> {
        for slot in &mut self.slots {
            if !slot.health.is_foldable() {
                continue;
            }
            for ev in events {
                if ev.seq().get() <= slot.applied.seq {
                    continue;
                }
                // Folds are contiguous: a projection that has not seen the
                // events before this one stays behind (catch-up or a
                // rebuild brings it forward) instead of skipping them.
                if ev.seq().get() != slot.applied.seq + 1 {
                    break;
                }
                if let Err(e) = slot.projection.apply(ev, &mut slot.staging) {
                    slot.health = ProjectionHealth::Damaged {
                        reason: e.to_string(),
                    };
                    return Err(e);
                }
                slot.applied.seq = ev.seq().get();
                slot.applied.head = ev.hash();
            }
            slot.health = if slot.applied.seq >= log_head {
                ProjectionHealth::Current
            } else {
                ProjectionHealth::Behind {
                    at: slot.applied.seq,
                }
            };
        }
        Ok(())
    }

    /// Writes all staged records and checkpoints.
    pub(crate) fn flush(&mut self) -> Result<(), ProjectionError> {
        for slot in &mut self.slots {
            if !slot.health.is_foldable() {
                continue;
            }
            flush_slot(slot)?;
        }
        Ok(())
    }

    /// The staged state of a projection, for typed queries.
    pub(crate) fn staging(&self, name: &str) -> Option<&Staging> {
        self.slots
            .iter()
            .find(|s| s.projection.name() == name && s.health == ProjectionHealth::Current)
            .map(|s| &s.staging)
    }

    /// Marks every projection still outdated or new as damaged, for `why`
    /// (building it from the log failed: now it takes the doctor).
    pub(crate) fn outdated_to_damaged(&mut self, why: &str) {
        for slot in &mut self.slots {
            let was = match slot.health {
                ProjectionHealth::Outdated { found, current } => {
                    format!("record format {found} (this build writes {current})")
                }
                ProjectionHealth::New => "new to this store".to_owned(),
                _ => continue,
            };
            slot.health = ProjectionHealth::Damaged {
                reason: format!("{was} and building it from the log failed: {why}"),
            };
        }
    }

    /// Health of one projection.
    pub(crate) fn health(&self, name: &str) -> Option<&ProjectionHealth> {
        self.slots
            .iter()
            .find(|s| s.projection.name() == name)
            .map(|s| &s.health)
    }

    /// Replaces the named projections' trees with a fresh fold. `fold`
    /// yields the fresh state per projection. The checkpoint is removed
    /// first and written last, so a crash in between leaves a projection
    /// that the next open reports as damaged rather than a half-written one
    /// that claims to be current.
    pub(crate) fn install_fresh(
        &mut self,
        name: &str,
        fresh: FreshState,
        tree: DerivedTree,
    ) -> Result<u64, ProjectionError> {
        let Some(slot) = self.slots.iter_mut().find(|s| s.projection.name() == name) else {
            return Ok(0);
        };
        let checkpoint = fresh.checkpoint;
        let written = write_fresh(&tree, fresh)?;
        let tree_name = slot.staging.tree_name.clone();
        slot.staging = Staging::new(tree_name, Some(tree.clone()));
        slot.tree = Some(tree);
        slot.applied = checkpoint;
        slot.persisted = checkpoint;
        slot.health = ProjectionHealth::Current;
        Ok(written)
    }
}

/// Writes a fresh fold's state into an empty tree (see
/// `Storage::recreate_derived`). The checkpoint is written in the last
/// batch, so a crash in between leaves a tree without checkpoint, which the
/// next open reports as damaged.
pub(crate) fn write_fresh(tree: &DerivedTree, fresh: FreshState) -> Result<u64, ProjectionError> {
    let tree_name = tree.name().to_owned();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(REBUILD_BATCH_RECORDS);
    for (k, v) in fresh.records {
        if k.as_slice() == CHECKPOINT_KEY {
            continue;
        }
        let framed = frame(&tree_name, &k, &v);
        batch.push((k, Some(framed)));
        if batch.len() >= REBUILD_BATCH_RECORDS {
            written += batch.len() as u64;
            tree.apply(std::mem::take(&mut batch))?;
        }
    }
    let cp = checkpoint_payload(&fresh.checkpoint)?;
    batch.push((
        CHECKPOINT_KEY.to_vec(),
        Some(frame(&tree_name, CHECKPOINT_KEY, &cp)),
    ));
    written += batch.len() as u64;
    tree.apply(batch)?;
    Ok(written)
}

fn flush_slot(slot: &mut Slot) -> Result<(), ProjectionError> {
    let Some(tree) = &slot.tree else {
        return Ok(());
    };
    // Nothing folded since the last write: leave the tree alone (it may be
    // under inspection, or damaged on purpose by a drill).
    if slot.staging.dirty_len() == 0 && slot.applied == slot.persisted {
        return Ok(());
    }
    let mut writes = slot.staging.take_framed();
    let cp = checkpoint_payload(&slot.applied)?;
    writes.push((
        CHECKPOINT_KEY.to_vec(),
        Some(frame(tree.name(), CHECKPOINT_KEY, &cp)),
    ));
    tree.apply(writes)?;
    slot.persisted = slot.applied;
    Ok(())
}

fn assess(
    projection: &dyn Projection,
    tree: &DerivedTree,
    head: Head,
    hash_at: &impl Fn(u64) -> Option<Digest>,
    genesis: Digest,
) -> (Checkpoint, ProjectionHealth) {
    let empty = Checkpoint {
        version: projection.version(),
        seq: 0,
        head: genesis,
    };
    let damaged = |reason: String| (empty, ProjectionHealth::Damaged { reason });
    let cp = match read_checkpoint(tree) {
        Err(e) => return damaged(format!("checkpoint unreadable: {e}")),
        Ok(None) => return damaged("checkpoint missing".to_owned()),
        Ok(Some(cp)) => cp,
    };
    if cp.version < projection.version() {
        return (
            empty,
            ProjectionHealth::Outdated {
                found: cp.version,
                current: projection.version(),
            },
        );
    }
    if cp.version != projection.version() {
        return damaged(format!(
            "record format {} is newer than the {} this build writes",
            cp.version,
            projection.version()
        ));
    }
    if cp.seq > head.seq {
        return damaged(format!(
            "checkpoint at {} is ahead of the log head {}",
            cp.seq, head.seq
        ));
    }
    let expected = if cp.seq == 0 {
        Some(genesis)
    } else {
        hash_at(cp.seq)
    };
    if expected != Some(cp.head) {
        return damaged(format!(
            "checkpoint names hash {} at {} but the log has {}",
            cp.head,
            cp.seq,
            expected.map_or_else(|| "no readable event".to_owned(), |h| h.to_string())
        ));
    }
    let health = if cp.seq == head.seq {
        ProjectionHealth::Current
    } else {
        ProjectionHealth::Behind { at: cp.seq }
    };
    (cp, health)
}

/// The complete state of a projection produced by a fresh fold.
pub(crate) struct FreshState {
    /// key -> payload, including the checkpoint record.
    pub records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The checkpoint of the fold.
    pub checkpoint: Checkpoint,
}

/// A fold of the whole log into fresh, in-memory state, for rebuild and for
/// the doctor's comparison. One pass over the events serves every
/// projection being folded.
pub(crate) struct FreshFold {
    parts: Vec<(Box<dyn Projection>, Staging, Checkpoint)>,
}

impl FreshFold {
    pub(crate) fn new(names: &[&str], genesis: Digest) -> Self {
        let parts = builtin()
            .into_iter()
            .filter(|p| names.contains(&p.name()))
            .map(|p| {
                let cp = Checkpoint {
                    version: p.version(),
                    seq: 0,
                    head: genesis,
                };
                let staging = Staging::new(tree_name(p.name()), None);
                (p, staging, cp)
            })
            .collect();
        Self { parts }
    }

    pub(crate) fn apply(&mut self, ev: &Envelope) -> Result<(), ProjectionError> {
        for (p, staging, cp) in &mut self.parts {
            p.apply(ev, staging)?;
            cp.seq = ev.seq().get();
            cp.head = ev.hash();
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Vec<(&'static str, FreshState)>, ProjectionError> {
        let mut out = Vec::with_capacity(self.parts.len());
        for (p, staging, cp) in self.parts {
            let mut records = staging.into_state();
            records.insert(CHECKPOINT_KEY.to_vec(), checkpoint_payload(&cp)?);
            out.push((
                p.name(),
                FreshState {
                    records,
                    checkpoint: cp,
                },
            ));
        }
        Ok(out)
    }
}

/// Looks up a built-in projection by name (for the doctor's record checks).
pub(crate) fn builtin_named(name: &str) -> Option<Box<dyn Projection>> {
    builtin().into_iter().find(|p| p.name() == name)
}

/// Concatenates `parts` into a key and hands it to `f`, on the stack when
/// it fits (every key a fold builds per event does: ids are bounded well
/// below this), so that folding an event does not allocate a key it only
/// looks up.
pub(crate) fn with_key<R>(parts: &[&[u8]], f: impl FnOnce(&[u8]) -> R) -> R {
    // Most keys are short, and zeroing a buffer sized for the longest one
    // cost as much as building the key: two sizes.
    const SHORT_KEY_BYTES: usize = 96;
    const STACK_KEY_BYTES: usize = 640;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= SHORT_KEY_BYTES {
        let mut buf = [0u8; SHORT_KEY_BYTES];
        return f(join_into(&mut buf, parts, len));
    }
    if len <= STACK_KEY_BYTES {
        let mut buf = [0u8; STACK_KEY_BYTES];
        return f(join_into(&mut buf, parts, len));
    }
    f(&parts.concat())
}

/// Copies `parts` (`len` bytes in all, at most `buf.len()`) into `buf`.
fn join_into<'a>(buf: &'a mut [u8], parts: &[&[u8]], len: usize) -> &'a [u8] {
    let mut at = 0;
    for p in parts {
        if let Some(dst) = buf.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    buf.get(..len).unwrap_or_default()
}

/// Adds one to an 8-byte big-endian counter record (absent reads as 0),
/// in place when the record is already there.
pub(crate) fn bump_counter(slot: &mut Option<Vec<u8>>) {
    match slot {
        Some(v) if v.len() == 8 => {
            let n = read_u64(v).unwrap_or(0).saturating_add(1);
            v.copy_from_slice(&n.to_be_bytes());
        }
        _ => {
            let n = slot.as_deref().and_then(read_u64).unwrap_or(0);
            *slot = Some(n.saturating_add(1).to_be_bytes().to_vec());
        }
    }
}

/// Parses the 8-byte big-endian numbers that several projections store.
pub(crate) fn read_u64(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// Sequence numbers packed as 8-byte big-endian values.
pub(crate) fn unpack_seqs(bytes: &[u8]) -> impl Iterator<Item = Option<Seq>> + '_ {
    bytes
        .chunks(8)
        .map(|c| read_u64(c).and_then(|n| Seq::new(n).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Storage, StorageOptions};

    #[test]
    fn keys_are_the_same_built_on_the_stack_or_not() {
        let long = vec![b'x'; 700];
        for parts in [
            vec![&[1u8][..], b"object:a", &[0], &u32::MAX.to_be_bytes()],
            vec![&[2u8][..], &long[..]],
            vec![&long[..600], &long[..40]],
            vec![&long[..600], &long[..41]],
            vec![],
        ] {
            assert_eq!(with_key(&parts, <[u8]>::to_vec), parts.concat());
        }
    }

    #[test]
    fn counters_count_from_absent_and_replace_what_is_not_a_counter() {
        let mut slot = None;
        bump_counter(&mut slot);
        bump_counter(&mut slot);
        assert_eq!(slot, Some(2u64.to_be_bytes().to_vec()));
        let mut long = Some([0, 0, 0, 0, 0, 0, 0, 7, 9].to_vec());
        bump_counter(&mut long);
        assert_eq!(long, Some(8u64.to_be_bytes().to_vec()));
    }

    /// Staged records sit in a hash map: readers that promise key order
    /// must still give it, with staged writes and deletions over the base.
    #[test]
    fn prefix_scans_merge_staged_records_over_the_base_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let tree = storage.recreate_derived("p.test").unwrap();
        let base: Vec<(Vec<u8>, Option<Vec<u8>>)> = [b"\x01b", b"\x01d", b"\x01f", b"\x02a"]
            .iter()
            .map(|k| (k.to_vec(), Some(frame("p.test", &k[..], b"base"))))
            .collect();
        tree.apply(base).unwrap();
        let mut staging = Staging::new("p.test".to_owned(), Some(tree));
        for k in [&b"\x01e"[..], b"\x01a", b"\x01c", b"\x02b"] {
            staging.put(k.to_vec(), b"staged".to_vec());
        }
        *staging.entry(b"\x01d").unwrap() = None;
        *staging.entry(b"\x01f").unwrap() = Some(b"changed".to_vec());
        let rows = staging.scan_prefix(&[0x01], 10).unwrap();
        let expected: Vec<RawRecord> = [
            (&b"\x01a"[..], &b"staged"[..]),
            (b"\x01b", b"base"),
            (b"\x01c", b"staged"),
            (b"\x01e", b"staged"),
            (b"\x01f", b"changed"),
        ]
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
        assert_eq!(rows, expected);
        assert_eq!(staging.scan_prefix(&[0x01], 2).unwrap(), expected[..2]);
        let all = staging.scan_all().unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(
            staging
                .with_record(b"\x01f", |v| v.map(<[u8]>::to_vec))
                .unwrap(),
            Some(b"changed".to_vec())
        );
        assert!(staging.with_record(b"\x01d", |v| v.is_none()).unwrap());
        assert_eq!(
            staging
                .with_record(b"\x02a", |v| v.map(<[u8]>::len))
                .unwrap(),
            Some(4)
        );
    }
}
