//! The daemon's configuration (`HOME/daemon.toml`) and its identity and org
//! policy providers.
//!
//! A provider is a file or a command, each with a timeout. It answers with
//! one JSON object: `{"identity_ref": "urn:…"}` for identity,
//! `{"org_policy_ref": "urn:…"}` for org policy. The answer is classified,
//! never trusted: a provider that cannot be read, exits non-zero or does
//! not answer within its timeout is *unreachable* (the daemon goes on
//! offline); one that answers something that is not a valid document is
//! *invalid* (for org policy: the policy failed to load). With no provider
//! configured the device is local-only and its own identity and local
//! policy count as confirmed and ready.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::load_settings;

/// The daemon's configuration file in the home.
pub const DAEMON_CONFIG_FILE: &str = "daemon.toml";
/// Largest provider answer read, in bytes.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Default provider timeout.
pub const DEFAULT_PROVIDER_TIMEOUT_MS: u64 = 5_000;
/// Longest provider timeout allowed.
pub const MAX_PROVIDER_TIMEOUT_MS: u64 = 600_000;
/// Default pause between retries of an unreachable provider.
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 30_000;
/// Most arguments of a provider or hook command.
pub const MAX_COMMAND_ARGS: usize = 64;
/// How often a running command is checked for exit.
const POLL_INTERVAL_MS: u64 = 10;

/// Reading or parsing the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read daemon configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("daemon configuration {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where a provider answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSource {
    /// A file holding the answer (relative paths are under the home).
    File(PathBuf),
    /// A command printing the answer on stdout (no shell involved).
    Command(Vec<String>),
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Where it answers from.
    pub source: ProviderSource,
    /// How long to wait for it.
    pub timeout_ms: u64,
}

/// An external command run as part of a shutdown step (stopping a PTY
/// host, an MCP server…), bounded by the step's timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepHook {
    /// The step.
    pub step: String,
    /// The command.
    pub command: Vec<String>,
    /// The step's timeout, when it differs from the default.
    pub timeout_ms: Option<u64>,
}

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Identity provider; none: local-only.
    pub identity: Option<Provider>,
    /// Org policy provider; none: the local policy.
    pub org_policy: Option<Provider>,
    /// Pause between retries of an unreachable or failing provider.
    pub retry_interval_ms: u64,
    /// Default timeout of a shutdown step.
    pub step_timeout_ms: u64,
    /// Shutdown step hooks.
    pub hooks: Vec<StepHook>,
}

/// Default timeout of a shutdown step.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 5_000;

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            identity: None,
            org_policy: None,
            retry_interval_ms: DEFAULT_RETRY_INTERVAL_MS,
            step_timeout_ms: DEFAULT_STEP_TIMEOUT_MS,
            hooks: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    identity: Option<ProviderFile>,
    org_policy: Option<ProviderFile>,
    retry_interval_ms: Option<u64>,
    shutdown: Option<ShutdownFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    file: Option<PathBuf>,
    command: Option<Vec<String>>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownFile {
    step_timeout_ms: Option<u64>,
    #[serde(default)]
    hooks: std::collections::BTreeMap<String, HookFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    command: Vec<String>,
    timeout_ms: Option<u64>,
}

fn timeout(what: &str, v: Option<u64>, default: u64) -> Result<u64, String> {
    match v {
        None => Ok(default),
        Some(0) => Err(format!("{what}: timeout_ms must be at least 1")),
        Some(t) if t > MAX_PROVIDER_TIMEOUT_MS => Err(format!(
            "{what}: timeout_ms {t} is above {MAX_PROVIDER_TIMEOUT_MS}"
        )),
        Some(t) => Ok(t),
    }
}

fn command(what: &str, c: Vec<String>) -> Result<Vec<String>, String> {
    if c.is_empty() || c.first().is_some_and(String::is_empty) {
        return Err(format!("{what}: command must name a program"));
    }
    if c.len() > MAX_COMMAND_ARGS {
        return Err(format!("{what}: at most {MAX_COMMAND_ARGS} arguments"));
    }
    Ok(c)
}

fn provider(what: &str, home: &Path, p: Option<ProviderFile>) -> Result<Option<Provider>, String> {
    let Some(p) = p else { return Ok(None) };
    let timeout_ms = timeout(what, p.timeout_ms, DEFAULT_PROVIDER_TIMEOUT_MS)?;
    let source = match (p.file, p.command) {
        (Some(f), None) => ProviderSource::File(home.join(f)),
        (None, Some(c)) => ProviderSource::Command(command(what, c)?),
        _ => return Err(format!("{what}: give exactly one of `file` or `command`")),
    };
    Ok(Some(Provider { source, timeout_ms }))
}

impl DaemonConfig {
    /// Reads `HOME/daemon.toml`; a missing file is the default (local-only).
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        load_settings(
            home,
            DAEMON_CONFIG_FILE,
            |text| Self::parse(home, text),
            |path, source| ConfigError::Read { path, source },
            |path, reason| ConfigError::Invalid { path, reason },
        )
    }

    /// Parses configuration text; relative provider files are under `home`.
    pub fn parse(home: &Path, text: &str) -> Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let shutdown = f.shutdown;
        let step_timeout_ms = timeout(
            "shutdown",
            shutdown.as_ref().and_then(|s| s.step_timeout_ms),
            DEFAULT_STEP_TIMEOUT_MS,
        )?;
        let mut hooks = Vec::new();
        for (step, h) in shutdown.map(|s| s.hooks).unwrap_or_default() {
            let what = format!("shutdown.hooks.{step}");
            hooks.push(StepHook {
                timeout_ms: h
                    .timeout_ms
                    .map(|t| timeout(&what, Some(t), t))
                    .transpose()?,
                command: command(&what, h.command)?,
                step,
            });
        }
        Ok(Self {
            identity: provider("identity", home, f.identity)?,
            org_policy: provider("org_policy", home, f.org_policy)?,
            retry_interval_ms: timeout(
                "retry_interval_ms",
                f.retry_interval_ms,
                DEFAULT_RETRY_INTERVAL_MS,
            )?,
            step_timeout_ms,
            hooks,
        })
    }
}

/// What a provider said.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderAnswer {
    /// A JSON object.
    Answered(serde_json::Map<String, serde_json::Value>),
    /// No answer: not readable, failed, or too slow.
    Unreachable(String),
    /// An answer that is not a JSON object.
    Invalid(String),
}

/// Asks a provider, waiting at most its timeout; a command is killed early
/// when `cancel` is set (the daemon is shutting down).
pub fn ask(provider: &Provider, cancel: &AtomicBool) -> ProviderAnswer {
    let bytes = match &provider.source {
        ProviderSource::File(path) => match read_bounded(path) {
            Ok(b) => b,
            Err(e) => return ProviderAnswer::Unreachable(format!("{}: {e}", path.display())),
        },
        ProviderSource::Command(cmd) => {
            match run_bounded(cmd, Duration::from_millis(provider.timeout_ms), cancel) {
                CommandOutcome::Exited { code: 0, stdout } => stdout,
                CommandOutcome::Exited { code, .. } => {
                    return ProviderAnswer::Unreachable(format!(
                        "provider command exited with status {code}"
                    ))
                }
                CommandOutcome::TimedOut => {
                    return ProviderAnswer::Unreachable(format!(
                        "provider command did not answer within {} ms",
                        provider.timeout_ms
                    ))
                }
                CommandOutcome::Cancelled => {
                    return ProviderAnswer::Unreachable("cancelled: shutting down".into())
                }
                CommandOutcome::Failed(e) => {
                    return ProviderAnswer::Unreachable(format!("provider command: {e}"))
                }
            }
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => ProviderAnswer::Answered(m),
        Ok(_) => ProviderAnswer::Invalid("the answer is not a JSON object".into()),
        Err(e) => ProviderAnswer::Invalid(format!("the answer is not JSON: {e}")),
    }
}

/// The reference a provider's answer names in `field`, when it names a
/// usable one.
pub fn answer_ref(
    answer: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, String> {
    match answer.get(field).and_then(|v| v.as_str()) {
        Some(r) if r.starts_with("urn:") && r.len() <= crate::lifecycle::MAX_REASON_BYTES => {
            Ok(r.to_owned())
        }
        Some(_) => Err(format!("`{field}` must be a urn: of at most 512 bytes")),
        None => Err(format!("the answer has no `{field}`")),
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_ANSWER_BYTES).read_to_end(&mut buf)?;
    Ok(buf)
}

/// How a bounded command ended.
#[derive(Debug)]
pub enum CommandOutcome {
    /// It exited (code -1 when killed by a signal).
    Exited {
        /// Exit code.
        code: i32,
        /// Its stdout, at most [`MAX_ANSWER_BYTES`].
        stdout: Vec<u8>,
    },
    /// It was still running at the deadline and was killed.
    TimedOut,
    /// It was killed because `cancel` was set.
    Cancelled,
    /// It could not be started.
    Failed(std::io::Error),
}

/// Runs a command with no stdin and waits at most `limit`; a command still
/// running then, or when `cancel` is set, is killed (never left behind).
pub fn run_bounded(cmd: &[String], limit: Duration, cancel: &AtomicBool) -> CommandOutcome {
    let Some((program, args)) = cmd.split_first() else {
        return CommandOutcome::Failed(std::io::Error::other("empty command"));
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return CommandOutcome::Failed(e),
    };
    // The reader runs apart so that a chatty command cannot block on a
    // full pipe while we wait for it to exit.
    let reader = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.take(MAX_ANSWER_BYTES).read_to_end(&mut buf);
            buf
        })
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if cancel.load(Ordering::SeqCst) => {
                let _ = child.kill();
                let _ = child.wait();
                return CommandOutcome::Cancelled;
            }
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
            Err(e) => return CommandOutcome::Failed(e),
        }
    };
    match status {
        Some(s) => {
            let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
            CommandOutcome::Exited {
                code: s.code().unwrap_or(-1),
                stdout,
            }
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            // Its stdout closes with it; the reader ends on its own.
            drop(reader);
            CommandOutcome::TimedOut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(p: &Provider) -> ProviderAnswer {
        super::ask(p, &AtomicBool::new(false))
    }

    #[test]
    fn a_cancelled_command_is_killed() {
        let cancel = AtomicBool::new(true);
        let cmd: Vec<String> = vec!["sleep".into(), "30".into()];
        let started = Instant::now();
        assert!(matches!(
            run_bounded(&cmd, Duration::from_secs(30), &cancel),
            CommandOutcome::Cancelled
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn sh(script: &str, timeout_ms: u64) -> Provider {
        Provider {
            source: ProviderSource::Command(vec!["sh".into(), "-c".into(), script.into()]),
            timeout_ms,
        }
    }

    #[test]
    fn answers_are_classified() {
        let ok = ask(&sh(
            r#"echo '{"identity_ref":"urn:srcos:identity:a"}'"#,
            2000,
        ));
        let ProviderAnswer::Answered(m) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(
            answer_ref(&m, "identity_ref").unwrap(),
            "urn:srcos:identity:a"
        );
        assert!(matches!(
            ask(&sh("exit 3", 2000)),
            ProviderAnswer::Unreachable(r) if r.contains("status 3")
        ));
        assert!(matches!(
            ask(&sh("sleep 5", 100)),
            ProviderAnswer::Unreachable(r) if r.contains("within 100 ms")
        ));
        assert!(matches!(
            ask(&sh("echo nope", 2000)),
            ProviderAnswer::Invalid(_)
        ));
        let missing = Provider {
            source: ProviderSource::File("/nonexistent/answer.json".into()),
            timeout_ms: 10,
        };
        assert!(matches!(ask(&missing), ProviderAnswer::Unreachable(_)));
    }

    #[test]
    fn bad_configuration_is_refused_with_the_reason() {
        let home = Path::new("/h");
        assert!(DaemonConfig::parse(home, "").unwrap().identity.is_none());
        let c = DaemonConfig::parse(
            home,
            "[identity]\nfile = \"id.json\"\n[shutdown.hooks.ptys]\ncommand = [\"true\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.identity.unwrap().source,
            ProviderSource::File("/h/id.json".into())
        );
        assert_eq!(c.hooks.len(), 1);
        for bad in [
            "[identity]\n",
            "[identity]\nfile = \"a\"\ncommand = [\"b\"]\n",
            "[identity]\ncommand = []\n",
            "[identity]\nfile = \"a\"\ntimeout_ms = 0\n",
            "[org_policy]\nfile = \"a\"\nbogus = 1\n",
            "unknown = 1\n",
        ] {
            assert!(DaemonConfig::parse(home, bad).is_err(), "{bad}");
        }
    }
}
