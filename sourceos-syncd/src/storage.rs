//! The storage boundary: the only module that touches sled.
//!
//! It exposes a narrow surface (the durable `events` and `meta` trees, named
//! derived trees, and a durable sync) so that another embedded engine could
//! replace sled without touching the log, the projections or the doctor.
//! Every sled call that is known to panic on damaged files runs inside
//! `catch_unwind` here and comes back as a typed error.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the durable event tree.
pub const EVENTS_TREE: &str = "events";
/// Name of the durable metadata tree.
pub const META_TREE: &str = "meta";
/// Prefix of every derived (projection) tree.
pub const DERIVED_PREFIX: &str = "p.";

/// How many times opening retries a lock that looks held (a fresh
/// directory can briefly report its own lock as held).
const LOCK_RETRIES: u32 = 6;
const LOCK_RETRY_BASE_MS: u64 = 15;

/// A failure of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the database lock.
    #[error("the store at {path} is locked by another process")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The engine found its own files damaged (not a record: the files
    /// sled keeps them in).
    #[error("the database files in {path} are damaged and cannot be read ({detail}); the log cannot be reached: restore the home from a backup or bundle")]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What the engine said.
        detail: String,
    },
    /// The engine reported an I/O error.
    #[error("storage engine error on {path}: {source}")]
    Engine {
        /// The database directory.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: sled::Error,
    },
    /// The engine panicked; the files are probably damaged.
    #[error("storage engine failed while {doing} {path} (the database files are probably damaged): {message}")]
    Panicked {
        /// What was being done.
        doing: &'static str,
        /// The database directory.
        path: PathBuf,
        /// The panic message.
        message: String,
    },
    /// Making data durable failed at the file system level.
    #[error("cannot make {path} durable: {source}")]
    Sync {
        /// The file that failed to sync.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Options for opening the database.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Upper bound of sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// The open database: durable trees, derived trees and the files to fsync.
#[derive(Clone)]
pub(crate) struct Storage {
    db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    dir: PathBuf,
}

/// One derived tree, by name.
#[derive(Clone)]
pub(crate) struct DerivedTree {
    name: String,
    tree: sled::Tree,
    dir: PathBuf,
}

/// A raw key/value pair read from a tree.
pub(crate) type RawPair = (Vec<u8>, Vec<u8>);

/// A record's bytes as the engine returned them, read in place rather than
/// copied: reading the whole log copied every event once more for nothing.
pub(crate) struct StoredBytes(sled::IVec);

impl std::ops::Deref for StoredBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// New events for one atomic write to `events`, gathered as they are
/// sealed: each envelope is copied once, from the sealing buffer into the
/// engine's own record, instead of into a buffer of its own first.
#[derive(Default)]
pub(crate) struct EventRows {
    batch: sled::Batch,
    len: usize,
}

impl EventRows {
    /// Adds one event's key and stored bytes.
    pub(crate) fn push(&mut self, key: [u8; 8], value: &[u8]) {
        self.batch.insert(&key, value);
        self.len += 1;
    }

    /// True when no event was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events added.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Key and value of a stored event.
pub(crate) type StoredPair = (StoredBytes, StoredBytes);

fn copied((k, v): (sled::IVec, sled::IVec)) -> RawPair {
    (k.to_vec(), v.to_vec())
}

fn in_place((k, v): (sled::IVec, sled::IVec)) -> StoredPair {
    (StoredBytes(k), StoredBytes(v))
}

impl Storage {
    /// Opens the database in `dir`, creating it if absent.
    pub(crate) fn open(dir: &Path, options: &StorageOptions) -> Result<Self, StorageError> {
        let mut attempt = 0;
        loop {
            match Self::open_once(dir, options) {
                Err(StorageError::Locked { .. }) if attempt < LOCK_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(LOCK_RETRY_BASE_MS << attempt.min(4)));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path, options: &StorageOptions) -> Result<Self, StorageError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .create_new(false);
        let opened = catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|p| {
            StorageError::Panicked {
                doing: "opening",
                path: dir.to_path_buf(),
                message: panic_message(p.as_ref()),
            }
        })?;
        let db = opened.map_err(|e| classify(dir, e))?;
        let events = guarded(dir, "opening the events tree of", || {
            db.open_tree(EVENTS_TREE)
        })?;
        let meta = guarded(dir, "opening the meta tree of", || db.open_tree(META_TREE))?;
        Ok(Self {
            db,
            events,
            meta,
            dir: dir.to_path_buf(),
        })
    }

    /// Makes everything written so far durable: sled's flush (which only
    /// calls `sync_file_range`) followed by `fsync` of the database file and
    /// of any blob files.
    pub(crate) fn sync_durable(&self) -> Result<(), StorageError> {
        guarded(&self.dir, "flushing", || self.db.flush())?;
        let db_file = self.dir.join("db");
        let f = File::open(&db_file).map_err(|source| StorageError::Sync {
            path: db_file.clone(),
            source,
        })?;
        f.sync_all().map_err(|source| StorageError::Sync {
            path: db_file,
            source,
        })?;
        // sled writes pages larger than a quarter segment as separate blob
        // files without syncing them. Event size bounds keep event pages
        // below that, but sync any blob that exists rather than trust it.
        // The directory itself is synced only when it holds blobs: sled
        // always creates it, and an fsync per commit of an empty directory
        // measured as a large share of a single append's latency.
        let blobs = self.dir.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut any = false;
            for entry in entries.flatten() {
                any = true;
                let path = entry.path();
                let synced = File::open(&path).and_then(|f| f.sync_all());
                synced.map_err(|source| StorageError::Sync { path, source })?;
            }
            if any {
                sync_dir(&blobs)?;
            }
        }
        Ok(())
    }

    // ---- events (durable, append-only) ----

    pub(crate) fn event_get(&self, key: [u8; 8]) -> Result<Option<Vec<u8>>, StorageError> {
        guarded(&self.dir, "reading events of", || self.events.get(key))
            .map(|v| v.map(|v| v.to_vec()))
    }

    pub(crate) fn event_last(&self) -> Result<Option<RawPair>, StorageError> {
        guarded(&self.dir, "reading the last event of", || {
            self.events.last()
        })
        .map(|v| v.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    /// Iterates events with keys at or after `from`.
    pub(crate) fn events_from(
        &self,
        from: [u8; 8],
    ) -> impl Iterator<Item = Result<StoredPair, StorageError>> + '_ {
        GuardedIter {
            inner: self.events.range(from..),
            dir: &self.dir,
            done: false,
            convert: in_place,
        }
    }

    /// Inserts new events. The caller guarantees the keys are new and
    /// contiguous; nothing else in the crate writes to `events`.
    pub(crate) fn events_append(&self, rows: EventRows) -> Result<(), StorageError> {
        guarded(&self.dir, "appending events to", || {
            self.events.apply_batch(rows.batch)
        })
    }

    // ---- meta (durable) ----

    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        guarded(&self.dir, "reading meta of", || self.meta.get(key)).map(|v| v.map(|v| v.to_vec()))
    }

    pub(crate) fn meta_put_all(&self, entries: Vec<(&str, Vec<u8>)>) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in entries {
            b.insert(k.as_bytes(), v);
        }
        guarded(&self.dir, "writing meta of", || self.meta.apply_batch(b))
    }

    /// Adds a meta key if it is absent; one already present keeps its
    /// value (meta is never overwritten).
    pub(crate) fn meta_add(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        guarded(&self.dir, "writing meta of", || {
            self.meta
                .compare_and_swap(key, None::<&[u8]>, Some(value))
                .map(|_| ())
        })
    }

    /// The meta keys that start with `prefix`, without it.
    pub(crate) fn meta_keys(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        guarded(&self.dir, "reading meta of", || {
            let mut out = Vec::new();
            for item in self.meta.scan_prefix(prefix) {
                let (k, _) = item?;
                if let Some(rest) = k.strip_prefix(prefix.as_bytes()) {
                    out.push(String::from_utf8_lossy(rest).into_owned());
                }
            }
            Ok(out)
        })
    }

    pub(crate) fn meta_is_empty(&self) -> Result<bool, StorageError> {
        guarded(&self.dir, "reading meta of", || Ok(self.meta.is_empty()))
    }

    // ---- derived trees ----

    /// Names of all derived trees present in the database.
    pub(crate) fn derived_tree_names(&self) -> Vec<String> {
        self.tree_names()
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .filter(|n| n.starts_with(DERIVED_PREFIX))
            .collect()
    }

    pub(crate) fn has_tree(&self, name: &str) -> bool {
        self.tree_names()
            .iter()
            .any(|n| n.as_slice() == name.as_bytes())
    }

    /// Names of all trees; empty if the engine fails (a later call that
    /// needs the tree reports the failure).
    fn tree_names(&self) -> Vec<Vec<u8>> {
        guarded(&self.dir, "listing the trees of", || {
            Ok(self
                .db
                .tree_names()
                .into_iter()
                .map(|n| n.to_vec())
                .collect())
        })
        .unwrap_or_default()
    }

    /// Opens (creating if absent) a derived tree.
    pub(crate) fn derived(&self, name: &str) -> Result<DerivedTree, StorageError> {
        let tree = guarded(&self.dir, "opening a derived tree of", || {
            self.db.open_tree(name)
        })?;
        Ok(DerivedTree {
            name: name.to_owned(),
            tree,
            dir: self.dir.clone(),
        })
    }

    /// Replaces a derived tree with an empty one. Dropping the tree frees
    /// its pages at once, which is much faster than removing its records
    /// one by one. Refuses durable trees.
    pub(crate) fn recreate_derived(&self, name: &str) -> Result<DerivedTree, StorageError> {
        if name.starts_with(DERIVED_PREFIX) {
            guarded(&self.dir, "dropping a derived tree of", || {
                self.db.drop_tree(name)
            })?;
        }
        self.derived(name)
    }

    /// Drops a derived tree entirely. Refuses durable trees.
    pub(crate) fn drop_derived(&self, name: &str) -> Result<bool, StorageError> {
        if !name.starts_with(DERIVED_PREFIX) {
            return Ok(false);
        }
        guarded(&self.dir, "dropping a derived tree of", || {
            self.db.drop_tree(name)
        })
    }
}

impl DerivedTree {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        guarded(&self.dir, "reading a derived tree of", || {
            self.tree.get(key)
        })
        .map(|v| v.map(|v| v.to_vec()))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<RawPair, StorageError>> + '_ {
        GuardedIter {
            inner: self.tree.iter(),
            dir: &self.dir,
            done: false,
            convert: copied,
        }
    }

    /// Records whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<RawPair, StorageError>> + '_ {
        GuardedIter {
            inner: self.tree.scan_prefix(prefix),
            dir: &self.dir,
            done: false,
            convert: copied,
        }
    }

    /// Applies puts (`Some`) and deletes (`None`) atomically.
    pub(crate) fn apply(
        &self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        guarded(&self.dir, "writing a derived tree of", || {
            self.tree.apply_batch(b)
        })
    }

    #[cfg(test)]
    pub(crate) fn clear(&self) -> Result<(), StorageError> {
        guarded(&self.dir, "clearing a derived tree of", || {
            self.tree.clear()
        })
    }

    /// Raw write for damage-injection tools and tests: no framing applied.
    pub(crate) fn raw_insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        guarded(&self.dir, "writing a derived tree of", || {
            self.tree.insert(key, value).map(|_| ())
        })
    }

    pub(crate) fn raw_remove(&self, key: &[u8]) -> Result<(), StorageError> {
        guarded(&self.dir, "writing a derived tree of", || {
            self.tree.remove(key).map(|_| ())
        })
    }
}

struct GuardedIter<'a, T> {
    inner: sled::Iter,
    dir: &'a Path,
    done: bool,
    convert: fn((sled::IVec, sled::IVec)) -> T,
}

impl<T> Iterator for GuardedIter<'_, T> {
    type Item = Result<T, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = catch_unwind(AssertUnwindSafe(|| self.inner.next()));
        let item = match step {
            Ok(None) => None,
            Ok(Some(Ok(pair))) => Some(Ok((self.convert)(pair))),
            Ok(Some(Err(e))) => Some(Err(classify(self.dir, e))),
            Err(p) => Some(Err(StorageError::Panicked {
                doing: "iterating",
                path: self.dir.to_path_buf(),
                message: panic_message(p.as_ref()),
            })),
        };
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

fn guarded<T>(
    dir: &Path,
    doing: &'static str,
    f: impl FnOnce() -> sled::Result<T>,
) -> Result<T, StorageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(dir, e)),
        Err(p) => Err(StorageError::Panicked {
            doing,
            path: dir.to_path_buf(),
            message: panic_message(p.as_ref()),
        }),
    }
}

fn classify(dir: &Path, e: sled::Error) -> StorageError {
    let is_lock = match &e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    };
    if is_lock {
        StorageError::Locked {
            path: dir.to_path_buf(),
        }
    } else if let sled::Error::Corruption { at, .. } = &e {
        StorageError::Corrupt {
            path: dir.to_path_buf(),
            detail: match at {
                Some(ptr) => format!("corrupted data at {ptr:?}"),
                None => "corrupted data".to_owned(),
            },
        }
    } else {
        StorageError::Engine {
            path: dir.to_path_buf(),
            source: e,
        }
    }
}

/// `fsync` of a directory, so that new entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| StorageError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}
