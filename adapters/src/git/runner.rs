//! Running Git: a narrow trait (so tests can count, gate or fake the
//! commands) and the real implementation, which runs the `git` binary with
//! a clean environment, no standard input, bounded output and a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::model::CommandClass;

/// Bytes of standard output or error kept per command; the rest is read
/// and dropped so that Git never blocks on a full pipe.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Default deadline of one Git command.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One Git command: run in `dir`, with `args` after the global options.
#[derive(Debug, Clone, Copy)]
pub struct GitCommand<'a> {
    /// What kind of command it is.
    pub class: CommandClass,
    /// The directory it runs in (`git -C dir`).
    pub dir: &'a Path,
    /// The arguments, e.g. `["symbolic-ref", "-q", "HEAD"]`.
    pub args: &'a [&'a str],
}

/// What a finished Git command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitOutput {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output (at most [`MAX_OUTPUT_BYTES`]).
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded (at most [`MAX_OUTPUT_BYTES`]).
    pub stderr: String,
}

impl GitOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output split into lines, without line ends.
    pub fn lines(&self) -> Vec<&[u8]> {
        let text = self.stdout.strip_suffix(b"\n").unwrap_or(&self.stdout);
        if text.is_empty() {
            return Vec::new();
        }
        text.split(|b| *b == b'\n').collect()
    }
}

/// Git could not be run to completion (as opposed to Git running and
/// reporting a failure, which is a [`GitOutput`] with a non-zero code).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not finish in time and was killed.
    #[error("git {} did not finish within {} ms and was stopped", class.as_str(), after.as_millis())]
    TimedOut {
        /// The command's class.
        class: CommandClass,
        /// The deadline.
        after: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for git failed: {source}")]
    Wait {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs Git commands.
pub trait GitRunner: Send + Sync {
    /// Runs one command to completion.
    fn run(&self, cmd: &GitCommand<'_>) -> Result<GitOutput, RunError>;
}

impl<T: GitRunner + ?Sized> GitRunner for std::sync::Arc<T> {
    fn run(&self, cmd: &GitCommand<'_>) -> Result<GitOutput, RunError> {
        (**self).run(cmd)
    }
}

/// Environment variables that would point Git somewhere other than the
/// directory it runs in, or change how it discovers a repository.
const CLEARED_ENV: [&str; 11] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CEILING_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_TRACE",
    "LANGUAGE",
];

/// The real `git` binary.
#[derive(Debug, Clone)]
pub struct ProcessGit {
    program: PathBuf,
    timeout: Duration,
}

impl Default for ProcessGit {
    fn default() -> Self {
        Self::new(PathBuf::from("git"), DEFAULT_GIT_TIMEOUT)
    }
}

impl ProcessGit {
    /// `program` (found on `PATH` when it has no directory part), each
    /// command stopped after `timeout`.
    pub fn new(program: PathBuf, timeout: Duration) -> Self {
        Self { program, timeout }
    }
}

fn drain<R: Read + Send + 'static>(mut from: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
                }
            }
        }
        kept
    })
}

impl GitRunner for ProcessGit {
    fn run(&self, cmd: &GitCommand<'_>) -> Result<GitOutput, RunError> {
        let mut c = Command::new(&self.program);
        c.arg("-C")
            .arg(cmd.dir)
            .args(["-c", "core.fsmonitor=false"])
            .args(cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in CLEARED_ENV {
            c.env_remove(var);
        }
        c.env("LC_ALL", "C")
            .env("GIT_DISCOVERY_ACROSS_FILESYSTEM", "1")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_PAGER", "cat");
        let mut child = c.spawn().map_err(|source| RunError::Spawn {
            program: self.program.to_string_lossy().into_owned(),
            source,
        })?;
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RunError::TimedOut {
                        class: cmd.class,
                        after: self.timeout,
                    });
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(source) => {
                    let _ = child.kill();
                    return Err(RunError::Wait { source });
                }
            }
        };
        let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Ok(GitOutput {
            code: status.code(),
            stdout: collect(out),
            stderr: String::from_utf8_lossy(&collect(err)).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_output() {
        let o = GitOutput {
            code: Some(0),
            stdout: b"a\n\nb\n".to_vec(),
            stderr: String::new(),
        };
        assert_eq!(o.lines(), vec![&b"a"[..], b"", b"b"]);
        let empty = GitOutput {
            stdout: Vec::new(),
            ..o
        };
        assert!(empty.lines().is_empty());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let g = ProcessGit::new(
            PathBuf::from("/nonexistent/git-binary"),
            Duration::from_secs(1),
        );
        let dir = tempfile::tempdir().unwrap();
        let e = g
            .run(&GitCommand {
                class: CommandClass::RevParse,
                dir: dir.path(),
                args: &["rev-parse"],
            })
            .unwrap_err();
        assert!(matches!(e, RunError::Spawn { .. }), "{e}");
    }

    #[test]
    #[cfg(unix)]
    fn slow_commands_are_stopped_at_the_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("slow-git");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 5\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let g = ProcessGit::new(script, Duration::from_millis(100));
        let started = Instant::now();
        let cmd = GitCommand {
            class: CommandClass::Status,
            dir: dir.path(),
            args: &["status"],
        };
        // A script just written may be briefly "busy" (ETXTBSY) while
        // another test thread forks; try again.
        let mut e = g.run(&cmd).unwrap_err();
        for _ in 0..20 {
            match &e {
                RunError::Spawn { source, .. } if source.raw_os_error() == Some(26) => {
                    std::thread::sleep(Duration::from_millis(20));
                    e = g.run(&cmd).unwrap_err();
                }
                _ => break,
            }
        }
        assert!(matches!(e, RunError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
