//! Adapters between sourceos-syncd and the outside world: workspace
//! directories, git working trees, agents and browser automation receipts.
//!
//! Adapters depend on the core (`sourceos-syncd`) and turn outside
//! observations into event drafts through its public API; the core never
//! depends on them (`syncd-cli -> sourceos-syncd <- adapters`, enforced by
//! `tests/architecture.rs`).
//!
//! - [`workspace`]: `syncd track DIR`, workspace files as file objects.

pub mod workspace;

pub use workspace::{TrackError, TrackReport, WorkspaceAlias};
