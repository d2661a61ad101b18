//! Adapters between sourceos-syncd and the outside world: workspace
//! directories, git working trees, agents and browser automation receipts.
//!
//! Adapters depend on the core (`sourceos-syncd`) and turn outside
//! observations into event drafts through its public API; the core never
//! depends on them (`syncd-cli -> sourceos-syncd <- adapters`, enforced by
//! `tests/architecture.rs`).
//!
//! - [`workspace`]: `syncd track DIR`, workspace files as file objects.
//! - [`replication`]: `syncd sync`, replication between the devices of a
//!   profile over NATS JetStream.
//! - [`git`]: `syncd git-state PATH`, the Git workspace classifier: what a
//!   path is to Git before any Git command runs there, as a
//!   GitWorkspaceState document with redacted path evidence.

pub mod git;
pub mod replication;
pub mod workspace;

pub use git::{Classification, Classifier, GitState, GitWorkspaceState, Operation};
pub use workspace::{TrackError, TrackReport, WorkspaceAlias};
