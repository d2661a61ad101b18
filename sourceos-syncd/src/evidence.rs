//! The evidence store: durable files under `HOME/evidence/`, named by the
//! blake3 hex of their content, for documents too large or too detailed to
//! live in the log (install manifests, doctor reports). The log keeps only
//! a reference, `blake3:<64 hex>`, in a payload's `evidenceRefs` (or, for
//! the doctor's repair event, `report_digest`).
//!
//! Files are written atomically (temporary name, fsync, rename, fsync of
//! the directory) and never rewritten: the same content has the same name.
//! Because the name is the content's hash, any change to a file is visible;
//! the doctor checks every file the log references (missing or altered
//! evidence is durable damage).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ids::{Digest, InvalidValue};

/// Directory of the evidence store inside a home.
pub const EVIDENCE_DIR: &str = "evidence";
/// Largest evidence file syncd writes or reads back.
pub const MAX_EVIDENCE_BYTES: u64 = 64 << 20;
/// Read buffer when hashing a file.
const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// A reference to an evidence file: `blake3:` and 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EvidenceRef(Digest);

impl EvidenceRef {
    /// Parses a reference; only the canonical form is accepted, so one
    /// file has exactly one reference.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let d = Digest::parse(text)?;
        if d.to_string() != text {
            return Err(InvalidValue::Malformed {
                what: "evidence reference",
                value: crate::ids::truncated(text),
                reason: "expected blake3: followed by 64 lowercase hex digits",
            });
        }
        Ok(Self(d))
    }

    /// The reference of some content.
    pub fn of(content: &[u8]) -> Self {
        Self(Digest::of(content))
    }

    /// The digest.
    pub fn digest(&self) -> Digest {
        self.0
    }

    /// The file's path inside a home.
    pub fn path(&self, home: &Path) -> PathBuf {
        home.join(EVIDENCE_DIR).join(self.0.to_hex())
    }
}

impl std::fmt::Display for EvidenceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why evidence could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A file operation failed.
    #[error("evidence file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The content is over [`MAX_EVIDENCE_BYTES`].
    #[error("{path} is larger than {max_bytes} bytes, the bound of one evidence file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        max_bytes: u64,
    },
    /// The file's content does not hash to its name.
    #[error("evidence file {path} does not match its reference (it hashes to {actual})")]
    Altered {
        /// The file.
        path: PathBuf,
        /// What it hashes to.
        actual: Digest,
    },
    /// The directory could not be made durable.
    #[error(transparent)]
    Sync(#[from] crate::storage::StorageError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stores content; returns its reference. Storing the same content again
/// writes nothing.
pub fn put(home: &Path, content: &[u8]) -> Result<EvidenceRef, EvidenceError> {
    let r = EvidenceRef::of(content);
    let dir = home.join(EVIDENCE_DIR);
    let path = r.path(home);
    if content.len() as u64 > MAX_EVIDENCE_BYTES {
        return Err(EvidenceError::TooLarge {
            path,
            max_bytes: MAX_EVIDENCE_BYTES,
        });
    }
    if matches!(check(home, &r), EvidenceState::Present) {
        return Ok(r);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // One temporary name per writer, so that two writers never share one.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        r.digest().to_hex(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(content).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    crate::storage::sync_dir(&dir)?;
    Ok(r)
}

/// What storing a file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its reference.
    pub reference: EvidenceRef,
    /// Its size.
    pub size_bytes: u64,
    /// `sha256:<64 hex>` of the same content, for SourceOS fields that
    /// name content by sha256 (a manifest's `manifestDigest`).
    pub sha256: String,
}

/// Reads a file (at most [`MAX_EVIDENCE_BYTES`]) and stores its content.
pub fn put_file(home: &Path, file: &Path) -> Result<Stored, EvidenceError> {
    use sha2::Digest as _;
    let content = read_bounded(file)?;
    let sha = sha2::Sha256::digest(&content);
    let mut hex = String::with_capacity(64);
    for b in sha.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok(Stored {
        size_bytes: content.len() as u64,
        reference: put(home, &content)?,
        sha256: format!("sha256:{hex}"),
    })
}

fn read_bounded(file: &Path) -> Result<Vec<u8>, EvidenceError> {
    let f = std::fs::File::open(file).map_err(io(file))?;
    let mut content = Vec::new();
    f.take(MAX_EVIDENCE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(io(file))?;
    if content.len() as u64 > MAX_EVIDENCE_BYTES {
        return Err(EvidenceError::TooLarge {
            path: file.to_path_buf(),
            max_bytes: MAX_EVIDENCE_BYTES,
        });
    }
    Ok(content)
}

/// Reads evidence back, verified against its reference.
pub fn read(home: &Path, r: &EvidenceRef) -> Result<Vec<u8>, EvidenceError> {
    let path = r.path(home);
    let content = read_bounded(&path)?;
    let actual = Digest::of(&content);
    if actual != r.digest() {
        return Err(EvidenceError::Altered { path, actual });
    }
    Ok(content)
}

/// What the store holds for a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceState {
    /// The file is there and hashes to its name.
    Present,
    /// No file.
    Missing,
    /// The file hashes to something else (or is over the bound).
    Altered {
        /// What it hashes to (None when over the bound).
        actual: Option<Digest>,
    },
    /// The file cannot be read.
    Unreadable {
        /// Why.
        reason: String,
    },
}

/// Checks one reference by hashing its file through a bounded buffer.
pub fn check(home: &Path, r: &EvidenceRef) -> EvidenceState {
    let path = r.path(home);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return EvidenceState::Missing,
        Err(e) => {
            return EvidenceState::Unreadable {
                reason: e.to_string(),
            }
        }
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    let mut total: u64 = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if total > MAX_EVIDENCE_BYTES {
                    return EvidenceState::Altered { actual: None };
                }
                hasher.update(buf.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return EvidenceState::Unreadable {
                    reason: e.to_string(),
                }
            }
        }
    }
    let actual = Digest::from_bytes(*hasher.finalize().as_bytes());
    if actual == r.digest() {
        EvidenceState::Present
    } else {
        EvidenceState::Altered {
            actual: Some(actual),
        }
    }
}

/// The evidence-store references a payload makes: the `blake3:` entries of
/// its `evidenceRefs`, and a doctor report's `report_digest`. Other entries
/// of `evidenceRefs` (URNs, sha256 digests) name evidence kept elsewhere.
pub(crate) fn refs_in(payload: &serde_json::Map<String, Value>) -> Vec<EvidenceRef> {
    let mut out = Vec::new();
    if let Some(Value::Array(a)) = payload.get("evidenceRefs") {
        out.extend(
            a.iter()
                .filter_map(Value::as_str)
                .filter(|s| s.starts_with("blake3:"))
                .filter_map(|s| EvidenceRef::parse(s).ok()),
        );
    }
    if let Some(s) = payload
        .get("manifest")
        .and_then(|m| m.get("manifestRef"))
        .and_then(Value::as_str)
    {
        out.extend(EvidenceRef::parse(s).ok());
    }
    if let Some(Value::String(s)) = payload.get("report_digest") {
        out.extend(EvidenceRef::parse(s).ok());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn put_is_content_addressed_and_checked() {
        let home = tempfile::tempdir().unwrap();
        let r = put(home.path(), b"manifest").unwrap();
        assert_eq!(r, EvidenceRef::of(b"manifest"));
        assert_eq!(
            put(home.path(), b"manifest").unwrap(),
            r,
            "same content, same name"
        );
        assert_eq!(check(home.path(), &r), EvidenceState::Present);
        assert_eq!(read(home.path(), &r).unwrap(), b"manifest");
        std::fs::write(r.path(home.path()), b"changed").unwrap();
        assert!(matches!(
            check(home.path(), &r),
            EvidenceState::Altered { actual: Some(_) }
        ));
        assert!(matches!(
            read(home.path(), &r),
            Err(EvidenceError::Altered { .. })
        ));
        std::fs::remove_file(r.path(home.path())).unwrap();
        assert_eq!(check(home.path(), &r), EvidenceState::Missing);
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(home.path().join(EVIDENCE_DIR))
            .unwrap()
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn only_canonical_references_parse() {
        let r = EvidenceRef::of(b"x").to_string();
        assert!(EvidenceRef::parse(&r).is_ok());
        assert!(EvidenceRef::parse(&r.to_uppercase()).is_err());
        assert!(EvidenceRef::parse(r.trim_start_matches("blake3:")).is_err());
        assert!(EvidenceRef::parse("sha256:00").is_err());
    }
}
