//! Git workspace classifier: what a path is to Git, decided before any Git
//! command a watcher, a person or an agent wants to run there, reported as
//! a GitWorkspaceState document with quiet severities for expected
//! negative answers and path evidence that never holds the raw path.
//!
//! - [`Classifier::classify`] takes a path and an [`Operation`] and returns
//!   a [`Classification`]: one of the ten [`GitState`]s, the Git facts
//!   (branch, head commit, remote state, digests of the working tree and
//!   Git directory, failure reason, command class), a [`Severity`] and an
//!   [`Actionability`]. Probing is cheapest first: the filesystem decides
//!   missing, unreadable and marker-less paths without starting Git; see
//!   `probe.rs` for the steps.
//! - Severity discipline ([`assess`]): healthy and expected negative states
//!   are `info`, a superseded request is `debug`, an expected negative
//!   state becomes `warning` only when the operation needs what is missing
//!   ([`Operation::default_needs`]); damage and denied access are always
//!   `warning`.
//! - Path evidence ([`Redactor`]): `sha256:` of the resolved path and a
//!   hint with the home directory as `~` or a workspace root as its alias;
//!   Git's messages are scrubbed of paths before they become a reason.
//! - Answers are cached per resolved path (bounded, least recently used
//!   out first); [`Request::refreshed`] and [`Classifier::invalidate`]
//!   refresh explicitly. A newer probe of the same path makes an older one
//!   still in flight answer `operation_superseded`.
//! - The filesystem ([`FileSystem`]) and Git ([`GitRunner`]) are traits, so
//!   tests can deny access even as root, count Git commands and hold one
//!   in flight; [`RealFs`] and [`ProcessGit`] are the real ones. Time comes
//!   from an injected [`sourceos_syncd::Clock`].
//! - [`Classification::to_document`] makes the contract document;
//!   [`record`] appends it as a `git.workspace_state_recorded` event.
//!
//! Invariants (named in the tests that check them):
//!
//! - INV-GIT-01: no Git command runs before the path is known to exist and
//!   be readable, nor when no Git marker is found above it.
//! - INV-GIT-02: no document, reason or hint contains the raw path;
//!   `rawPathStored` is always false and `redaction` is never `none`.
//! - INV-GIT-03: only the newest probe of a path is cached; an older one in
//!   flight answers `operation_superseded` (`debug`).
//! - INV-GIT-04: every document validates against the GitWorkspaceState
//!   schema.

mod classifier;
mod document;
mod evidence;
mod fs;
mod model;
mod probe;
mod runner;

#[cfg(test)]
mod tests;

pub use classifier::{
    Classification, Classifier, ClassifierOptions, ClassifyError, GitFacts, Request,
    DEFAULT_CACHE_CAPACITY, MAX_CACHE_CAPACITY, MAX_IN_FLIGHT,
};
pub use document::{
    record, Attach, ContextError, DocumentContext, DraftError, GitWorkspaceState, PathEvidenceDoc,
    RecordError, RecordOutcome, DOCUMENT_TYPE, GIT_STATE_ACTOR, ID_PREFIX, SPEC_VERSION,
};
pub use evidence::{
    is_sha256_ref, path_digest, sha256_ref, BadAlias, PathEvidence, Redaction, Redactor,
    WorkspaceRoot, PATH_PLACEHOLDER,
};
pub use fs::{EntryKind, FileSystem, RealFs};
pub use model::{
    assess, Actionability, Assessment, CommandClass, GitState, Needs, Operation, RemoteState,
    Severity,
};
pub use probe::MAX_ANCESTORS;
pub use runner::{
    GitCommand, GitOutput, GitRunner, ProcessGit, RunError, DEFAULT_GIT_TIMEOUT, MAX_OUTPUT_BYTES,
};
