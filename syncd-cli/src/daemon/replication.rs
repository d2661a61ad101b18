//! The daemon's replicator: the `replication` subsystem. Once the
//! coordinator has started it (its gate is the org policy), it runs
//! replication passes — publish this device's log, receive the peers' —
//! every `interval_ms`, keeping its connection between passes. With no
//! server reachable it keeps the daemon working locally (status says
//! `offline_local_only` through the peers file) and retries with a bounded
//! exponential backoff. The shutdown graph's `replication` step stops it
//! between passes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sourceos_syncd as core;
use sourceos_syncd_adapters::replication::{ReplicationConfig, ReplicationError, Replicator};

use super::api::Shared;

/// First retry delay after a failed pass.
const BACKOFF_START_MS: u64 = 250;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// How often a sleeping replicator checks whether it must stop.
const STOP_POLL_MS: u64 = 20;

/// A running replicator.
pub struct ReplicationTask {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl ReplicationTask {
    /// Asks it to stop after the pass in progress.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether its thread has ended.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// The delay after `failures` consecutive failed passes.
pub fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_START_MS
        .saturating_mul(1u64 << shift)
        .min(BACKOFF_MAX_MS)
}

/// Starts the replicator thread.
pub fn spawn(
    shared: Arc<Shared>,
    home: PathBuf,
    config: ReplicationConfig,
) -> std::io::Result<Arc<ReplicationTask>> {
    let task = Arc::new(ReplicationTask {
        stop: Arc::new(AtomicBool::new(false)),
        done: Arc::new(AtomicBool::new(false)),
    });
    let t = task.clone();
    std::thread::Builder::new()
        .name("replication".into())
        .spawn(move || {
            run(&shared, &home, &config, &t.stop);
            t.done.store(true, Ordering::SeqCst);
        })?;
    Ok(task)
}

fn run(shared: &Shared, home: &std::path::Path, config: &ReplicationConfig, stop: &AtomicBool) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the replicator cannot start its runtime");
            return;
        }
    };
    let c = &shared.coordinator;
    let store = c.store().clone();
    runtime.block_on(async {
        let mut replicator: Option<Replicator> = None;
        let mut failures = 0u32;
        let mut confirmed = crate::cmd_sync::confirmed_by_earlier_passes(home);
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            // The gate: nothing replicates before the coordinator started
            // the subsystem (org policy ready).
            if !c.is_started(core::Subsystem::Replication).unwrap_or(false) {
                if sleep_unless(STOP_POLL_MS * 5, stop).await {
                    return;
                }
                continue;
            }
            let result = async {
                let r = match replicator.take() {
                    Some(r) => r,
                    None => Replicator::connect(store.clone(), config).await?,
                };
                let outcome = async {
                    let published = r.publish(confirmed).await?;
                    let peers = r.receive().await?;
                    Ok::<_, ReplicationError>((published, peers))
                }
                .await;
                // A working connection is kept for the next pass.
                if outcome.is_ok() {
                    replicator = Some(r);
                }
                outcome
            }
            .await;
            if let Some(c) = crate::cmd_sync::confirmed_after(&result) {
                confirmed = Some(c);
            }
            let now = store.now();
            if let Err(f) = crate::cmd_sync::record_observations(home, config, now, &result) {
                tracing::warn!(error = %f.message, "cannot record replication observations");
            }
            let pause_ms = match &result {
                Ok(_) => {
                    failures = 0;
                    config.interval_ms
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let ms = backoff_ms(failures);
                    tracing::info!(error = %crate::chain(e), retry_in_ms = ms, "replication pass failed; working locally");
                    ms
                }
            };
            if sleep_unless(pause_ms, stop).await {
                return;
            }
        }
    });
}

/// Sleeps (letting the connection's background work run), waking early
/// when `stop` is set; true when it was.
async fn sleep_unless(ms: u64, stop: &AtomicBool) -> bool {
    let mut left = ms;
    while left > 0 {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let step = left.min(STOP_POLL_MS);
        tokio::time::sleep(Duration::from_millis(step)).await;
        left -= step;
    }
    stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff_ms(1), 250);
        assert_eq!(backoff_ms(2), 500);
        assert_eq!(backoff_ms(3), 1_000);
        assert_eq!(backoff_ms(8), 30_000);
        assert_eq!(backoff_ms(u32::MAX), 30_000);
    }
}
