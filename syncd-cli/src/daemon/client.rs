//! The CLI side of the local API: find the daemon that serves a home, and
//! run a command through it. sled admits one process per store, so while
//! a daemon runs every command goes through it; when none answers, the
//! command opens the store itself.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::http;
use crate::{exit, Failure};

/// The file in the home that names the running daemon's socket.
pub const DAEMON_FILE: &str = "daemon.json";
/// How long a health probe may take.
const PROBE_TIMEOUT_MS: u64 = 2_000;
/// How long a served command may take.
const COMMAND_TIMEOUT_MS: u64 = 3_600_000;
/// How long to wait for a draining daemon to let go of the store.
const DRAIN_WAIT_MS: u64 = 30_000;
/// How long to wait for a daemon that holds the store but is not serving
/// yet (it opens the store before it binds its socket).
const STARTUP_WAIT_MS: u64 = 5_000;

/// What `daemon.json` says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonFile {
    /// The daemon's process id.
    pub pid: u32,
    /// Its socket.
    pub socket: PathBuf,
    /// Its run.
    pub run_id: String,
    /// Its loopback TCP address, when enabled (read-only API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
}

/// The socket of the daemon serving `home`, when one answers.
pub fn discover(home: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(home.join(DAEMON_FILE)).ok()?;
    let f: DaemonFile = serde_json::from_str(&text).ok()?;
    let r = http::request(&f.socket, "GET", "/v1/health", &[], &[], PROBE_TIMEOUT_MS).ok()?;
    (r.status == 200).then_some(f.socket)
}

/// Waits for a daemon that holds the store to start serving.
pub fn wait_for_daemon(home: &Path) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_millis(STARTUP_WAIT_MS);
    // Only a daemon that named itself is waited for; a plain lock held by
    // another command is reported at once.
    while Instant::now() < deadline && home.join(DAEMON_FILE).exists() {
        if let Some(s) = discover(home) {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// What running a command through the daemon came to.
pub enum Proxied {
    /// It ran; this is its exit code.
    Done(u8),
    /// The daemon is shutting down and has let go of the store: run here,
    /// with the input already read from stdin, if any.
    RunLocally(Option<Vec<u8>>),
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct CommandRequest {
    pub args: Vec<String>,
    pub cwd: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct CommandResponse {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// Runs this process's command line through the daemon at `socket`.
pub fn proxy(home: &Path, socket: &Path, reads_stdin: bool) -> Result<Proxied, Failure> {
    let mut args = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(_) => return Err(Failure::usage(
                "a daemon holds the store and arguments that are not UTF-8 cannot be sent to it",
            )),
        }
    }
    let cwd =
        std::env::current_dir().map_err(|e| Failure::usage(format!("current directory: {e}")))?;
    let mut body =
        serde_json::to_vec(&CommandRequest { args, cwd }).map_err(|e| Failure::store(&e))?;
    body.push(b'\n');
    let mut consumed = None;
    if reads_stdin {
        let mut input = Vec::new();
        std::io::stdin()
            .lock()
            .take(http::MAX_BODY_BYTES as u64)
            .read_to_end(&mut input)
            .map_err(|e| Failure {
                code: exit::DATA,
                message: format!("cannot read input: {e}"),
            })?;
        if body.len() + input.len() >= http::MAX_BODY_BYTES {
            return Err(Failure {
                code: exit::DATA,
                message: format!(
                    "the daemon holds the store and input larger than {} MiB cannot be sent to it; use --file",
                    http::MAX_BODY_BYTES >> 20
                ),
            });
        }
        body.extend_from_slice(&input);
        consumed = Some(input);
    }
    let r =
        http::request(socket, "POST", "/v1/cli", &[], &body, COMMAND_TIMEOUT_MS).map_err(|e| {
            Failure {
                code: exit::STORE,
                message: format!(
                    "the daemon serving {} did not answer: {}",
                    home.display(),
                    crate::chain(&e)
                ),
            }
        })?;
    if r.status == 503 {
        wait_until_gone(home, socket);
        return Ok(Proxied::RunLocally(consumed));
    }
    let resp: CommandResponse = serde_json::from_slice(&r.body).map_err(|e| Failure {
        code: exit::STORE,
        message: format!(
            "the daemon answered with status {} and no result: {e}",
            r.status
        ),
    })?;
    {
        use std::io::Write;
        // A reader that went away (`syncd log | head`) ends the command
        // quietly, as it does without a daemon.
        let _ = std::io::stderr().write_all(resp.stderr.as_bytes());
    }
    let mut out = crate::output::Out::new();
    let written = out.raw(resp.stdout.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = written {
        let f = Failure::from(e);
        if f.code == exit::OK && f.message.is_empty() {
            return Ok(Proxied::Done(exit::OK));
        }
        return Err(f);
    }
    Ok(Proxied::Done(resp.code))
}

/// Waits until the daemon has exited (its socket stops answering).
fn wait_until_gone(home: &Path, socket: &Path) {
    let deadline = Instant::now() + Duration::from_millis(DRAIN_WAIT_MS);
    while Instant::now() < deadline {
        let alive = std::os::unix::net::UnixStream::connect(socket).is_ok()
            || home.join(DAEMON_FILE).exists();
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
