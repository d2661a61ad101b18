//! Workspace file adapter: records the regular files of a workspace
//! directory as `file` objects (relative path, size, blake3 content hash),
//! so that each later scan records only what changed.
//!
//! Three steps, each usable on its own:
//!
//! 1. [`scan`] walks the directory (symlinks are not followed, `.git` is
//!    skipped, the number of entries is bounded) and hashes every regular
//!    file with blake3 through one fixed-size buffer.
//! 2. [`load_tracked`] reads what the registry already knows about the
//!    workspace, and [`plan`] compares the two into event drafts:
//!    `object.created` for a new file, `object.updated` (naming the
//!    object's current version as `base_version`) for changed content or
//!    size, `object.deleted` for a file that disappeared, nothing for an
//!    unchanged one. The first plan also registers the file schema.
//! 3. [`submit`] appends the drafts in chunks of at most
//!    [`sourceos_syncd::MAX_SUBMISSION_EVENTS`] and counts the outcomes.
//!
//! Object ids do not contain the path (paths may hold any character and
//! be long): they are `object:file:<alias>:<first 24 hex of blake3(path)>`
//! and the path is kept in the payload field `path`. Every draft carries an
//! idempotency key derived from (workspace, path hash, content hash, base
//! version), so rerunning after a crash does not record anything twice.
//!
//! Invariants (named in the tests that check them):
//!
//! - INV-TRACK-01: a scan never follows a symbolic link, never enters
//!   `.git` or the store's own home, and refuses a tree over its bound
//!   instead of recording part of it.
//! - INV-TRACK-02: object ids never contain the path; a record whose
//!   payload would exceed `MAX_PAYLOAD_BYTES` is skipped and reported.
//! - INV-TRACK-03: each difference is exactly one event (updates and
//!   deletions name the current version as `base_version`); an unchanged
//!   workspace, or a plan submitted twice, appends nothing.
//! - INV-TRACK-04: an object is deleted only when its file is known to be
//!   gone: paths that could not be read keep their records, and objects
//!   beyond the bounded registry listing are found in the log.

mod plan;
mod scan;

use std::path::Path;

use serde::Serialize;

pub use plan::{
    load_tracked, plan, submit, ChangeKind, Lifecycle, Plan, PlannedChange, TrackReport,
    TrackedFile, TrackedState, MAX_SKIPS_LISTED,
};
pub use scan::{scan, Scan, ScanError, ScanOptions, ScannedFile, HASH_BUFFER_BYTES};

/// Schema every tracked file names.
pub const FILE_SCHEMA_ID: &str = "schema:workspace-file:v1";
/// Object type of tracked files.
pub const FILE_OBJECT_TYPE: &str = "file";
/// Version of [`FILE_SCHEMA_ID`].
pub const FILE_SCHEMA_VERSION: &str = "v1";
/// Actor that records the events of a scan.
pub const TRACK_ACTOR: &str = "actor:workspace-tracker";
/// Most entries (regular files and other non-directory entries) a scan
/// accepts unless told otherwise; more is refused, not truncated.
pub const DEFAULT_MAX_FILES: usize = 100_000;
/// Longest workspace alias, in bytes (keeps object ids far below the
/// 256-byte identifier limit).
pub const MAX_ALIAS_BYTES: usize = 64;
/// Hex digits of blake3(path) in an object id (96 bits).
pub const PATH_KEY_HEX: usize = 24;

/// Why one path was not recorded. The scan and the plan go on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum SkipReason {
    /// A symbolic link: links are not followed and not recorded.
    Symlink,
    /// Not a regular file (FIFO, socket, device).
    Special,
    /// The store's own home directory, inside the workspace.
    Excluded,
    /// It could not be read; what is recorded about it (and anything
    /// under it) is kept as it was, never deleted.
    Unreadable {
        /// The I/O error.
        detail: String,
    },
    /// It was replaced between listing and hashing; its record is kept.
    ChangedDuringScan,
    /// Its record would exceed the payload bound (a very long path).
    PayloadTooLarge {
        /// Bytes of JSON it would take.
        bytes: usize,
    },
    /// Its object is tombstoned: nothing may change it any more.
    Tombstoned {
        /// The object.
        object_id: String,
    },
    /// Its object id is taken by another path (a 96-bit hash collision).
    IdCollision {
        /// The object.
        object_id: String,
        /// The path that object records.
        recorded_path: String,
    },
    /// The event could not be built (never expected).
    Invalid {
        /// Why.
        reason: String,
    },
    /// The store refused the event.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Local policy did not allow the change; the decision is in the log.
    PolicyBlocked {
        /// The recorded decision.
        decision_id: String,
        /// Why.
        reason: String,
    },
}

impl SkipReason {
    /// Whether the path's state is unknown, so that its record (and every
    /// record under it) must be kept rather than deleted.
    pub fn keeps_record(&self) -> bool {
        matches!(
            self,
            SkipReason::Unreadable { .. } | SkipReason::ChangedDuringScan
        )
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Symlink => f.write_str("symbolic link, not followed"),
            SkipReason::Special => f.write_str("not a regular file"),
            SkipReason::Excluded => f.write_str("the store's own home directory"),
            SkipReason::Unreadable { detail } => {
                write!(f, "cannot be read ({detail}); its record is kept as it was")
            }
            SkipReason::ChangedDuringScan => {
                f.write_str("replaced while scanning; its record is kept as it was")
            }
            SkipReason::PayloadTooLarge { bytes } => write!(
                f,
                "its record would take {bytes} bytes of JSON; at most {} (path too long)",
                sourceos_syncd::MAX_PAYLOAD_BYTES
            ),
            SkipReason::Tombstoned { object_id } => {
                write!(f, "object {object_id} is tombstoned")
            }
            SkipReason::IdCollision {
                object_id,
                recorded_path,
            } => write!(
                f,
                "object {object_id} already records path {recorded_path:?} (path hash collision)"
            ),
            SkipReason::Invalid { reason } => write!(f, "cannot build its event: {reason}"),
            SkipReason::Rejected { reason } => write!(f, "refused by the store: {reason}"),
            SkipReason::PolicyBlocked {
                decision_id,
                reason,
            } => write!(f, "blocked by policy ({decision_id}): {reason}"),
        }
    }
}

/// One path that was not recorded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Path relative to the workspace (`/`-separated, lossy UTF-8).
    pub path: String,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// Tracking a workspace failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The directory could not be scanned.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The registry could not be read.
    #[error("cannot read the registry")]
    Registry(#[from] sourceos_syncd::ProjectionError),
    /// The log could not be read.
    #[error("cannot read the log")]
    Log(#[from] sourceos_syncd::ReadError),
    /// The log head could not be read.
    #[error("cannot read the log head: {0}")]
    Head(String),
    /// Appending failed; nothing of the failed chunk was recorded.
    #[error("cannot append")]
    Append(#[from] sourceos_syncd::AppendError),
    /// The file schema could not be registered, so no file can be.
    #[error("the store refused to register {FILE_SCHEMA_ID}: {reason}")]
    SchemaRefused {
        /// Why.
        reason: String,
    },
    /// The store answered a different number of outcomes than events sent.
    #[error("the store answered {got} outcomes for {sent} events")]
    Outcomes {
        /// Events sent.
        sent: usize,
        /// Outcomes received.
        got: usize,
    },
}

/// Why a workspace alias is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Empty.
    #[error("a workspace alias must not be empty")]
    Empty,
    /// Too long.
    #[error("workspace alias is {0} bytes; at most {MAX_ALIAS_BYTES}")]
    TooLong(usize),
    /// A character outside the alias set.
    #[error("workspace alias contains {0:?}; aliases use ASCII letters, digits, '.', '_' and '-'")]
    BadChar(char),
}

/// The short name of a workspace: `workspace:<alias>` is its id and
/// `object:file:<alias>:` the prefix of its file objects. ASCII letters,
/// digits, `.`, `_` and `-`, at most [`MAX_ALIAS_BYTES`] bytes (no `:`, so
/// one workspace's object prefix is never another's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspaceAlias(String);

fn alias_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl WorkspaceAlias {
    /// Validates an alias given by a person.
    pub fn new(raw: &str) -> Result<Self, AliasError> {
        if raw.is_empty() {
            return Err(AliasError::Empty);
        }
        if raw.len() > MAX_ALIAS_BYTES {
            return Err(AliasError::TooLong(raw.len()));
        }
        if let Some(c) = raw.chars().find(|c| !alias_char(*c)) {
            return Err(AliasError::BadChar(c));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The default alias of a directory: its file name with every other
    /// character replaced by `-`, runs of `-` collapsed, leading and
    /// trailing `-` and `.` removed, cut to [`MAX_ALIAS_BYTES`];
    /// `workspace` when nothing is left. Pass a canonical path, so that
    /// `.` has a name.
    pub fn from_dir(dir: &Path) -> Self {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut out = String::new();
        for c in name.chars() {
            let c = if alias_char(c) { c } else { '-' };
            if c == '-' && out.ends_with('-') {
                continue;
            }
            out.push(c);
        }
        let trimmed = out.trim_matches(['-', '.']);
        // Only ASCII is left, so any byte index is a character boundary.
        let cut = trimmed.get(..MAX_ALIAS_BYTES).unwrap_or(trimmed);
        let cut = cut.trim_end_matches(['-', '.']);
        if cut.is_empty() {
            Self("workspace".into())
        } else {
            Self(cut.to_owned())
        }
    }

    /// The alias.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `workspace:<alias>`.
    pub fn workspace_id(&self) -> String {
        format!("workspace:{}", self.0)
    }

    /// `object:file:<alias>:`, the prefix of this workspace's objects.
    pub fn object_prefix(&self) -> String {
        format!("object:file:{}:", self.0)
    }

    /// The object id of a file, from its path key.
    pub fn object_id(&self, path_key: &str) -> String {
        format!("{}{path_key}", self.object_prefix())
    }
}

impl std::fmt::Display for WorkspaceAlias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The path key of a relative path: the first [`PATH_KEY_HEX`] hex digits
/// of blake3 over its bytes (`/`-separated; on Unix the raw bytes, so two
/// names that are not UTF-8 never share a key even when they read alike).
pub fn path_key(raw_path: &[u8]) -> String {
    let hex = blake3::hash(raw_path).to_hex();
    hex.get(..PATH_KEY_HEX).unwrap_or(hex.as_str()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_validated() {
        assert!(WorkspaceAlias::new("my-repo_1.x").is_ok());
        assert_eq!(WorkspaceAlias::new(""), Err(AliasError::Empty));
        assert_eq!(WorkspaceAlias::new("a:b"), Err(AliasError::BadChar(':')));
        assert_eq!(WorkspaceAlias::new("é"), Err(AliasError::BadChar('é')));
        assert_eq!(
            WorkspaceAlias::new(&"a".repeat(65)),
            Err(AliasError::TooLong(65))
        );
    }

    #[test]
    fn default_alias_is_the_sanitised_directory_name() {
        let a = |p: &str| WorkspaceAlias::from_dir(Path::new(p)).0;
        assert_eq!(a("/home/me/my repo"), "my-repo");
        assert_eq!(a("/tmp/Über  Projekt!"), "ber-Projekt");
        assert_eq!(a("/tmp/.hidden"), "hidden");
        assert_eq!(a("/"), "workspace");
        assert_eq!(a("/tmp/日本"), "workspace");
        assert_eq!(a(&format!("/x/{}", "b".repeat(300))).len(), MAX_ALIAS_BYTES);
        for p in ["/a b/c:d@e", "/tmp/x.y_z-1"] {
            assert!(WorkspaceAlias::new(&a(p)).is_ok(), "{p}");
        }
    }

    /// INV-TRACK-02.
    #[test]
    fn object_ids_are_short_identifiers() {
        let alias = WorkspaceAlias::new(&"w".repeat(MAX_ALIAS_BYTES)).unwrap();
        let id = alias.object_id(&path_key("a/very/long/path/ü.txt".as_bytes()));
        assert!(id.starts_with("object:file:www"));
        assert!(id.len() <= 256);
        assert!(sourceos_syncd::Subject::new(id.as_str()).is_ok());
        assert_eq!(path_key(b"x").len(), PATH_KEY_HEX);
    }
}
