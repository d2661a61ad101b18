//! Adapters between sourceos-syncd and the outside world: workspace
//! directories, git working trees, agents and browser automation receipts.
//!
//! Adapters depend on the core (`sourceos-syncd`) and turn outside
//! observations into event drafts; the core never depends on them. The
//! first adapters (workspace file tracking, git workspace classification)
//! arrive with the issues that need them; until then this crate holds no
//! code, only its place in the dependency direction
//! `syncd-cli -> sourceos-syncd <- adapters`, which `tests/architecture.rs`
//! enforces.
