//! The status snapshot: a running daemon keeps `HOME/status.snapshot.json`
//! up to date (written to a temporary name and renamed, so a reader sees
//! a whole document or the previous one), so that a shell prompt's
//! `syncd status --line` reads one small file instead of asking the
//! daemon. The snapshot names the daemon's run; it counts only while that
//! daemon is alive and still names itself in `daemon.json`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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

/// The key of the last snapshot written (log head, lifecycle state and
/// reason); the lock also keeps two writers from sharing the temporary
/// file.
static LAST_WRITTEN: Mutex<Option<(u64, String)>> = Mutex::new(None);

/// Rewrites the snapshot when the log head or the lifecycle state moved
/// since the last one (or always, with `force`). Called before the daemon
/// answers a submission or a served command and after each lifecycle
/// move, so a `status --line` that follows them sees them; the thread in
/// [`keep`] catches everything else.
pub fn refresh(shared: &Shared, force: bool) {
    let mut last = LAST_WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    if shared.draining.load(Ordering::SeqCst) {
        return;
    }
    let head = shared
        .coordinator
        .store()
        .head()
        .map(|(s, _)| s)
        .unwrap_or(0);
    let section = shared.daemon_section();
    let key = (head, format!("{}|{:?}", section.state, section.reason));
    if !force && last.as_ref() == Some(&key) {
        return;
    }
    let Ok(doc) = core::status(shared.coordinator.store()) else {
        return;
    };
    let snap = Snapshot {
        run_id: section.run_id.clone(),
        pid: section.pid,
        status: doc.with_daemon(section),
    };
    match write(&shared.home.join(SNAPSHOT_FILE), &snap) {
        Ok(()) => *last = Some(key),
        Err(e) => tracing::warn!(error = %e, "cannot write the status snapshot"),
    }
}

/// Keeps the snapshot current until the daemon drains; then removes it.
pub fn keep(shared: &Arc<Shared>) {
    let mut written = Instant::now();
    while !shared.draining.load(Ordering::SeqCst) {
        let stale = written.elapsed() >= Duration::from_millis(REFRESH_MS);
        refresh(shared, stale);
        if stale {
            written = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    // Under the lock, so that no refresh in flight writes it again.
    let _guard = LAST_WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(shared.home.join(SNAPSHOT_FILE));
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
