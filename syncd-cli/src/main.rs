//! The `syncd` binary: parses arguments into typed commands, calls the
//! sourceos-syncd core, renders the result and maps it to an exit code.
//! Nothing else happens here.

mod cli;
mod cmd_diagnostics;
mod cmd_git;
mod cmd_ledger;
mod cmd_lifecycle;
mod cmd_schema;
mod cmd_session;
mod cmd_sync;
mod cmd_track;
mod commands;
mod daemon;
mod output;
mod served;
mod top;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Exit codes (PRODUCT.md §6).
pub mod exit {
    /// Success, healthy.
    pub const OK: u8 = 0;
    /// Doctor: derived state damaged, all repairable.
    pub const REPAIRABLE: u8 = 1;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// Doctor: durable state damaged, needs review.
    pub const NEEDS_REVIEW: u8 = 3;
    /// Store cannot be opened or read.
    pub const STORE: u8 = 4;
    /// Ingest: lines rejected.
    pub const DATA: u8 = 65;
    /// A service syncd needs is unreachable (the replication servers).
    pub const UNAVAILABLE: u8 = 69;
}

/// An error that ends the command, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Message (the cause chain is appended when printed).
    pub message: String,
}

impl Failure {
    /// A failure to open or read the store.
    pub fn store(e: &dyn std::error::Error) -> Self {
        Self {
            code: exit::STORE,
            message: chain(e),
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

/// An error and its sources, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The home directory: `--home`, else `$SYNCD_HOME`, else the XDG data dir.
fn resolve_home(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(h) = flag {
        return Ok(h);
    }
    if let Some(h) = std::env::var_os("SYNCD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(x).join("sourceos-syncd"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/sourceos-syncd")),
        None => Err(Failure::usage(
            "no home directory: pass --home DIR or set SYNCD_HOME",
        )),
    }
}

/// Runs the command: through the daemon when one serves the home, else
/// here. A command that finds the store held by a daemon that has only
/// just started waits for it and goes through it, so the user never sees
/// a lock error while a daemon runs.
fn run(cli: &cli::Cli, home: &std::path::Path) -> Result<u8, Failure> {
    if !cli.command.goes_through_daemon() {
        return commands::run(cli, home);
    }
    // A prompt's status line reads the running daemon's snapshot: one
    // small file, no round trip, no store.
    if let cli::Command::Status(cli::StatusArgs { line: true, .. }) = &cli.command {
        if let Some(doc) = daemon::snapshot::read(home) {
            let mut out = output::Out::new();
            out.line(&commands::status_line(&doc))?;
            out.flush()?;
            return Ok(exit::OK);
        }
    }
    if let Some(socket) = daemon::client::discover(home) {
        match daemon::client::proxy(home, &socket, cli.command.reads_stdin())? {
            daemon::client::Proxied::Done(code) => return Ok(code),
            daemon::client::Proxied::RunLocally(input) => {
                if let Some(bytes) = input {
                    served::replay_stdin(bytes);
                }
            }
        }
    }
    let local = commands::run(cli, home);
    if local.is_err() && commands::FOUND_LOCKED.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(socket) = daemon::client::wait_for_daemon(home) {
            if let daemon::client::Proxied::Done(code) =
                daemon::client::proxy(home, &socket, cli.command.reads_stdin())?
            {
                return Ok(code);
            }
        }
    }
    local
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with exit 0; the rest is usage.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // The storage engine is known to panic on some damaged files. Those
    // calls are contained in the core; this is the last line of defence,
    // so that no input or on-disk state ends in a panic message.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("SYNCD_PANIC_TRACE").is_some() {
            previous(info);
        }
    }));
    let outcome = std::panic::catch_unwind(|| {
        let home = resolve_home(cli.home.clone())?;
        run(&cli, &home)
    });
    let code = match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(f)) => {
            if !f.message.is_empty() {
                eprintln!("syncd: error: {}", f.message);
            }
            f.code
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".to_owned());
            eprintln!(
                "syncd: error: internal failure while working on the store ({msg}); \
                 the store may be damaged: run `syncd doctor`"
            );
            exit::STORE
        }
    };
    ExitCode::from(code)
}
