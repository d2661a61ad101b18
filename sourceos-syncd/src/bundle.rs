//! Bundles: a self-verifying file of events, for exchange between devices
//! (`export` / `import`) and for backup (`export` / `restore`).
//!
//! Layout (see `docs/storage.md`): the 16-byte magic `SYNCD-BUNDLE\0v1\n`;
//! then each event as a 4-byte big-endian length followed by the event's
//! exact stored bytes; then a zero length; then the manifest as a 4-byte
//! length and JSON. The manifest names the source device and profile, the
//! range, the hash before the first event, the head hash, and the blake3
//! digest of the event frames. Every event's own hash, the links between
//! them, the counts and the digest are checked before anything is appended.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::{genesis, Envelope, MAX_ENVELOPE_BYTES};
use crate::ids::{DeviceId, Digest, ProfileId, Seq, Timestamp};
use crate::model::Effect;
use crate::policy::{Action, PolicyRequest};
use crate::store::{
    AppendError, AppendOutcome, InitOptions, OpenError, OpenOptions, Progress, ReadError, Store,
};

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8; 16] = b"SYNCD-BUNDLE\0v1\n";
/// Bundle format version.
pub const BUNDLE_FORMAT: u32 = 1;
/// Largest manifest accepted, in bytes.
const MAX_MANIFEST_BYTES: u32 = 64 * 1024;
/// Events appended per submission during import.
const IMPORT_CHUNK_EVENTS: usize = 1_024;

/// The manifest at the end of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Format version.
    pub format: u32,
    /// Device whose log the events were read from.
    pub source_device: String,
    /// Profile of that store.
    pub profile: String,
    /// Genesis value of that store's chain.
    pub genesis: String,
    /// When that store was created.
    pub store_created_at: String,
    /// When the bundle was written.
    pub exported_at: String,
    /// Sequence of the first event in the bundle.
    pub first_seq: u64,
    /// Sequence of the last event (first_seq - 1 when empty).
    pub last_seq: u64,
    /// Number of events.
    pub event_count: u64,
    /// Hash of the event before the first one (genesis when first is 1).
    pub prev_hash: String,
    /// Hash of the last event (prev_hash when empty).
    pub head_hash: String,
    /// blake3 of the event frames.
    pub content_digest: String,
}

/// Why a bundle was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read or written.
    #[error("cannot {doing} {path}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid bundle; nothing was appended.
    #[error("{path} is not a valid bundle: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// The bundle is valid but may not be imported here; nothing was
    /// appended.
    #[error("bundle {path} refused: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading the local log failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Creating the restored store failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Rebuilding projections of the restored store failed.
    #[error("restored events, but derived state could not be built: {0}")]
    Rebuild(String),
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Events in the bundle.
    pub events: u64,
    /// Newly appended.
    pub appended: u64,
    /// Already here (re-import, or this device's own events).
    pub duplicates: u64,
    /// Source device of the bundle.
    pub source_device: String,
    /// Local head after the import.
    pub head_seq: u64,
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the events after `since` (all when 0) to `out`, atomically
/// (temporary file, fsync, rename).
pub fn export(
    store: &Store,
    out: &Path,
    since: u64,
    progress: Progress<'_>,
) -> Result<BundleManifest, BundleError> {
    let (head, head_hash) = store.head().map_err(BundleError::Rebuild)?;
    if since > head {
        return Err(BundleError::Refused {
            path: out.to_path_buf(),
            reason: format!("--since {since} is beyond the head {head}"),
        });
    }
    let prev_hash = match Seq::new(since) {
        Err(_) => store.meta().genesis,
        Ok(s) => store
            .get(s)?
            .map(|e| e.hash())
            .ok_or_else(|| BundleError::Rebuild(format!("event {since} is missing")))?,
    };
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let mut w = BufWriter::new(file);
    w.write_all(BUNDLE_MAGIC).map_err(io("write", &tmp))?;
    let mut digest = blake3::Hasher::new();
    let mut count = 0u64;
    let mut last_hash = prev_hash;
    let first = since + 1;
    if let Ok(from) = Seq::new(first) {
        for item in store.scan_raw(from) {
            let (k, v) = item.map_err(ReadError::from)?;
            let seq = Seq::from_key(&k).map_err(ReadError::BadKey)?;
            if seq.get() > head {
                break;
            }
            // Only verified events leave the store.
            let env = Envelope::verify(&v).map_err(|damage| ReadError::Damaged {
                seq: seq.get(),
                damage,
            })?;
            let len = u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes();
            digest.update(&len);
            digest.update(&v);
            w.write_all(&len).map_err(io("write", &tmp))?;
            w.write_all(&v).map_err(io("write", &tmp))?;
            count += 1;
            last_hash = env.hash();
            if count % 65_536 == 0 {
                progress(count, head - since);
            }
        }
    }
    progress(count, head - since);
    if last_hash != head_hash && count > 0 {
        return Err(BundleError::Rebuild(
            "the head moved while exporting".into(),
        ));
    }
    let meta = store.meta();
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        source_device: meta.device.to_string(),
        profile: meta.profile.to_string(),
        genesis: meta.genesis.to_string(),
        store_created_at: meta.created_at.to_string(),
        exported_at: store.now().to_string(),
        first_seq: first,
        last_seq: since + count,
        event_count: count,
        prev_hash: prev_hash.to_string(),
        head_hash: last_hash.to_string(),
        content_digest: Digest::from_bytes(*digest.finalize().as_bytes()).to_string(),
    };
    let text = serde_json::to_vec(&manifest).map_err(|e| BundleError::Rebuild(e.to_string()))?;
    w.write_all(&0u32.to_be_bytes())
        .map_err(io("write", &tmp))?;
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    w.write_all(&len.to_be_bytes()).map_err(io("write", &tmp))?;
    w.write_all(&text).map_err(io("write", &tmp))?;
    let file = w.into_inner().map_err(|e| BundleError::Io {
        doing: "write",
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, out).map_err(io("rename into place", out))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(manifest)
}

/// Streams a bundle's events, verifying everything; calls `each` for every
/// event in order. Returns the manifest once all checks passed.
fn read_bundle(
    path: &Path,
    mut each: impl FnMut(Envelope) -> Result<(), BundleError>,
) -> Result<BundleManifest, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)
        .map_err(|_| invalid("shorter than the bundle header".into()))?;
    if &magic != BUNDLE_MAGIC {
        return Err(invalid("does not start with the bundle header".into()));
    }
    let mut digest = blake3::Hasher::new();
    let mut prev: Option<(u64, Digest)> = None;
    let mut first: Option<(u64, Digest)> = None;
    let mut count = 0u64;
    let mut buf = Vec::with_capacity(MAX_ENVELOPE_BYTES);
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|_| invalid(format!("truncated after {count} events")))?;
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            break;
        }
        if n > MAX_ENVELOPE_BYTES {
            return Err(invalid(format!(
                "frame {} claims {n} bytes; events are at most {MAX_ENVELOPE_BYTES}",
                count + 1
            )));
        }
        buf.resize(n, 0);
        r.read_exact(&mut buf)
            .map_err(|_| invalid(format!("truncated inside event {}", count + 1)))?;
        digest.update(&len);
        digest.update(&buf);
        let env = Envelope::verify(&buf)
            .map_err(|d| invalid(format!("event {} of the bundle: {d}", count + 1)))?;
        let seq = env.seq().get();
        match prev {
            Some((p, h)) => {
                if seq != p + 1 {
                    return Err(invalid(format!("event sequence jumps from {p} to {seq}")));
                }
                if env.prev_hash() != h {
                    return Err(invalid(format!("chain broken at source event {seq}")));
                }
            }
            None => first = Some((seq, env.prev_hash())),
        }
        prev = Some((seq, env.hash()));
        count += 1;
        each(env)?;
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| invalid("manifest missing".into()))?;
    let n = u32::from_be_bytes(len);
    if n > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "manifest of {n} bytes exceeds {MAX_MANIFEST_BYTES}"
        )));
    }
    let mut text = vec![0u8; n as usize];
    r.read_exact(&mut text)
        .map_err(|_| invalid("manifest truncated".into()))?;
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(io("read", path))? != 0 {
        return Err(invalid("bytes after the manifest".into()));
    }
    let m: BundleManifest =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("manifest: {e}")))?;
    if m.format != BUNDLE_FORMAT {
        return Err(invalid(format!(
            "format {} (this build reads {BUNDLE_FORMAT})",
            m.format
        )));
    }
    let content = Digest::from_bytes(*digest.finalize().as_bytes());
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(format!(
                "manifest disagrees with the content: {what}"
            )))
        }
    };
    check(m.content_digest == content.to_string(), "content digest")?;
    check(m.event_count == count, "event count")?;
    check(
        m.last_seq == m.first_seq.saturating_add(count).saturating_sub(1),
        "last sequence",
    )?;
    if let Some((fseq, fprev)) = first {
        check(fseq == m.first_seq, "first sequence")?;
        check(
            fprev.to_string() == m.prev_hash,
            "hash before the first event",
        )?;
    }
    let head = prev.map_or(m.prev_hash.clone(), |(_, h)| h.to_string());
    check(head == m.head_hash, "head hash")?;
    Ok(m)
}

/// Verifies a bundle without touching any store.
pub fn verify_bundle(path: &Path) -> Result<BundleManifest, BundleError> {
    read_bundle(path, |_| Ok(()))
}

/// Appends a peer's bundle to this store. The bundle is verified whole, and
/// checked against what is already here, before anything is appended.
/// Events keep their origin device, sequence and hash; re-importing is a
/// no-op.
pub fn import(store: &Store, path: &Path) -> Result<ImportReport, BundleError> {
    let refused = |reason: String| BundleError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    // Pass 1: integrity and conflicts, appending nothing.
    let mut conflict: Option<String> = None;
    let manifest = read_bundle(path, |env| {
        if conflict.is_none() {
            conflict = store.origin_conflict(&env)?;
        }
        Ok(())
    })?;
    let mut admitted_by: Option<crate::event::EventDraft> = None;
    if manifest.profile != store.meta().profile.as_str() {
        // Profiles are isolated unless a policy rule explicitly lets this
        // one in; the default allow does not.
        let request = PolicyRequest {
            action: Action::Sync,
            actor: manifest.source_device.clone(),
            actor_trust_level: None,
            object_id: None,
            profile: manifest.profile.clone(),
            privacy_class: None,
            sync_visibility: None,
        };
        let verdict = store.policy().decide(&request);
        let explicit_allow = verdict.effect == Effect::Allow && verdict.rule.is_some();
        if !explicit_allow {
            return Err(refused(format!(
                "it comes from profile {} and this store belongs to {}; profiles are isolated and {} ({})",
                manifest.profile,
                store.meta().profile,
                match verdict.effect {
                    Effect::Allow => "no policy rule admits that profile",
                    Effect::Deny => "policy denies it",
                    Effect::ReviewRequired => "policy requires review first",
                },
                verdict.rationale
            )));
        }
        admitted_by = Some(store.decision_draft(&request, &verdict)?);
    }
    if manifest.genesis != store.meta().genesis.to_string() {
        return Err(refused(format!(
            "its chain starts from {} and this store's from {}",
            manifest.genesis,
            store.meta().genesis
        )));
    }
    if let Some(c) = conflict {
        return Err(refused(c));
    }
    // The sync decision that admitted a foreign profile is recorded before
    // what it admitted (a refusal appends nothing).
    if let Some(decision) = admitted_by {
        store.append_system(decision)?;
    }
    // Pass 2: append in chunks.
    let mut report = ImportReport {
        events: manifest.event_count,
        source_device: manifest.source_device.clone(),
        ..ImportReport::default()
    };
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    let flush = |chunk: &mut Vec<Envelope>, report: &mut ImportReport| -> Result<(), BundleError> {
        for outcome in store.append_foreign(std::mem::take(chunk))? {
            match outcome {
                AppendOutcome::Appended { .. } => report.appended += 1,
                AppendOutcome::Duplicate { .. } => report.duplicates += 1,
                // Foreign events are not gated here (their origin decided);
                // only a concurrent writer can get here after pass 1.
                AppendOutcome::PolicyBlocked { reason, .. }
                | AppendOutcome::Rejected { reason } => {
                    return Err(BundleError::Refused {
                        path: path.to_path_buf(),
                        reason,
                    })
                }
            }
        }
        Ok(())
    };
    read_bundle(path, |env| {
        chunk.push(env);
        if chunk.len() >= IMPORT_CHUNK_EVENTS {
            flush(&mut chunk, &mut report)?;
        }
        Ok(())
    })?;
    flush(&mut chunk, &mut report)?;
    report.head_seq = store.head().map_err(BundleError::Rebuild)?.0;
    Ok(report)
}

/// Recreates a store from a full bundle (one that starts at event 1) in an
/// empty home: the same device, profile and events, byte for byte; then
/// builds derived state. `syncd verify --expect-head` proves the result.
pub fn restore(
    home: &Path,
    path: &Path,
    options: OpenOptions,
) -> Result<(Store, BundleManifest), BundleError> {
    let manifest = verify_bundle(path)?;
    let refused = |reason: String| BundleError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    if manifest.first_seq != 1 {
        return Err(refused(format!(
            "it starts at event {}; a restore needs a full export (without --since)",
            manifest.first_seq
        )));
    }
    if manifest.genesis != genesis().to_string() {
        return Err(refused(format!("unknown genesis {}", manifest.genesis)));
    }
    let device = DeviceId::new(manifest.source_device.as_str())
        .map_err(|e| refused(format!("source device: {e}")))?;
    let profile =
        ProfileId::new(manifest.profile.as_str()).map_err(|e| refused(format!("profile: {e}")))?;
    let created_at = Timestamp::parse(&manifest.store_created_at)
        .map_err(|e| refused(format!("creation time: {e}")))?;
    let store = Store::init(
        home,
        InitOptions {
            device: Some(device),
            profile,
            created_at: Some(created_at),
        },
        options,
    )?;
    let mut batch = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    read_bundle(path, |env| {
        batch.push(env);
        if batch.len() >= IMPORT_CHUNK_EVENTS {
            store.restore_events(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    store.restore_events(batch)?;
    store
        .rebuild(&[], &mut |_, _| {})
        .map_err(|e| BundleError::Rebuild(e.to_string()))?;
    Ok((store, manifest))
}
