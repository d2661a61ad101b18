//! The status snapshot: a running daemon keeps `HOME/status.snapshot.json`
//! up to date (written to a temporary name and renamed, so a reader sees
//! a whole document or the previous one), so that a shell prompt's
//! `syncd status --line` reads one small file instead of asking the
//! daemon. The snapshot names the daemon's run; it counts only while that
//! daemon is alive and still names itself in `daemon.json`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sourceos_syncd as core;

use super::api::Shared;
use super::client::{DaemonFile, DAEMON_FILE};

/// The snapshot's file in the home.
pub const SNAPSHOT_FILE: &str = "status.snapshot.json";
/// How often the daemon looks for a change of the log head or its state.
const POLL_MS: u64 = 100;
/// A snapshot is rewritten at least this often, so its time stays fresh.
const REFRESH_MS: u64 = 5_000;
/// Largest snapshot a reader accepts, in bytes.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 20;

/// What the file holds.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// The daemon's run that wrote it.
    pub run_id: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The status document as the daemon answers it.
    pub status: core::StatusDocument,
}

/// Writes the snapshot whenever the head or the lifecycle state moves,
/// until the daemon drains; then removes it.
pub fn keep(shared: &Arc<Shared>) {
    let path = shared.home.join(SNAPSHOT_FILE);
    let mut last: Option<(u64, String)> = None;
    let mut written = Instant::now();
    while !shared.draining.load(Ordering::SeqCst) {
        let head = shared
            .coordinator
            .store()
            .head()
            .map(|(s, _)| s)
            .unwrap_or(0);
        let section = shared.daemon_section();
        let key = (head, format!("{}|{:?}", section.state, section.reason));
        let stale = written.elapsed() >= Duration::from_millis(REFRESH_MS);
        if last.as_ref() != Some(&key) || stale {
            if let Ok(doc) = core::status(shared.coordinator.store()) {
                let snap = Snapshot {
                    run_id: section.run_id.clone(),
                    pid: section.pid,
                    status: doc.with_daemon(section),
                };
                if let Err(e) = write(&path, &snap) {
                    tracing::warn!(error = %e, "cannot write the status snapshot");
                }
                last = Some(key);
                written = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    let _ = std::fs::remove_file(&path);
}

fn write(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// The status of `home` from the snapshot, when the daemon that wrote it
/// is the one `daemon.json` names and its process is alive.
pub fn read(home: &Path) -> Option<core::StatusDocument> {
    use std::io::Read;
    let named: DaemonFile =
        serde_json::from_slice(&std::fs::read(home.join(DAEMON_FILE)).ok()?).ok()?;
    if !Path::new(&format!("/proc/{}", named.pid)).exists() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(home.join(SNAPSHOT_FILE))
        .ok()?
        .take(MAX_SNAPSHOT_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    let snap: Snapshot = serde_json::from_slice(&bytes).ok()?;
    (snap.run_id == named.run_id && snap.pid == named.pid).then_some(snap.status)
}
