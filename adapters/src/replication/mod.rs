//! Replication between the devices of a profile over NATS JetStream.
//!
//! - [`config`]: `[replication]` in `HOME/config.toml` (off by default).
//! - [`wire`]: subjects, headers and the checks on what a message carries.
//! - [`replicator`]: publishing this device's log and receiving the
//!   others', with every link of every chain verified.
//!
//! What may leave the device is the core's decision
//! ([`sourceos_syncd::Release`]); received events join the log through
//! [`sourceos_syncd::Store::append_replicated`], keeping their origin. The
//! local log stays the source of truth: a JetStream acknowledgement only
//! tells the publisher what the stream holds, and publishing always
//! resumes from what the stream is found to hold.

pub mod config;
mod replicator;
pub mod wire;

pub use config::{ConfigError, ReplicationConfig};
pub use replicator::{
    Confirmed, PeerReport, PublishReport, Refusal, ReplicationError, Replicator,
    CONFIRM_GROUP_BYTES, CONFIRM_GROUP_EVENTS, FETCH_BATCH, GROUPED_FROM_EVENTS, MAX_IN_FLIGHT,
    MAX_PEERS, MAX_PENDING, MAX_RECEIVE_PER_PEER, MAX_REFILL_LOOKUPS, PUBLISH_CHUNK_EVENTS,
};
