//! Commands served by the daemon on behalf of a `syncd` client: while a
//! command runs on a daemon connection thread, its store is the daemon's
//! open store, its stdin is the request body, and what it writes is
//! captured and sent back. Thread-local, so concurrent clients never see
//! each other's output.

use std::cell::RefCell;

use sourceos_syncd as core;

/// The context of one served command.
struct Served {
    store: core::Store,
    lanes: Option<std::sync::Arc<crate::daemon::lanes::Lanes>>,
    daemon: Option<core::DaemonSection>,
    stdin: Option<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

thread_local! {
    static SERVED: RefCell<Option<Served>> = const { RefCell::new(None) };
    /// Input already read from stdin for a daemon that then refused the
    /// command (it was shutting down): the command runs here with it.
    static REPLAYED_STDIN: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Hands input already read from stdin to the command that runs here.
pub(crate) fn replay_stdin(bytes: Vec<u8>) {
    REPLAYED_STDIN.with(|r| *r.borrow_mut() = Some(bytes));
}

/// What a served command printed.
pub(crate) struct Captured {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// Runs `f` as a command served by the daemon over `store`.
pub(crate) fn run<R>(
    store: core::Store,
    lanes: Option<std::sync::Arc<crate::daemon::lanes::Lanes>>,
    daemon: core::DaemonSection,
    stdin: Vec<u8>,
    f: impl FnOnce() -> R,
) -> (R, Captured) {
    SERVED.with(|s| {
        *s.borrow_mut() = Some(Served {
            store,
            lanes,
            daemon: Some(daemon),
            stdin: Some(stdin),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    });
    let r = f();
    let served = SERVED.with(|s| s.borrow_mut().take());
    let captured = match served {
        Some(s) => Captured {
            stdout: s.stdout,
            stderr: s.stderr,
        },
        None => Captured {
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
    };
    (r, captured)
}

/// Whether the current command is served by the daemon.
pub(crate) fn active() -> bool {
    SERVED.with(|s| s.borrow().is_some())
}

/// The daemon's store, when served.
pub(crate) fn store() -> Option<core::Store> {
    SERVED.with(|s| s.borrow().as_ref().map(|x| x.store.clone()))
}

/// The daemon's ingest lanes, when served.
pub(crate) fn lanes() -> Option<std::sync::Arc<crate::daemon::lanes::Lanes>> {
    SERVED.with(|s| s.borrow().as_ref().and_then(|x| x.lanes.clone()))
}

/// The serving daemon's section of the status document, when served.
pub(crate) fn daemon() -> Option<core::DaemonSection> {
    SERVED.with(|s| s.borrow().as_ref().and_then(|x| x.daemon.clone()))
}

/// The client's stdin (once) when served, or input replayed after a
/// draining daemon refused the command.
pub(crate) fn take_stdin() -> Option<Vec<u8>> {
    SERVED
        .with(|s| s.borrow_mut().as_mut().and_then(|x| x.stdin.take()))
        .or_else(|| REPLAYED_STDIN.with(|r| r.borrow_mut().take()))
}

/// Appends to the captured stdout; false when not served.
pub(crate) fn stdout(bytes: &[u8]) -> bool {
    SERVED.with(|s| match s.borrow_mut().as_mut() {
        Some(x) => {
            x.stdout.extend_from_slice(bytes);
            true
        }
        None => false,
    })
}

/// Appends a line to the captured stderr; false when not served.
pub(crate) fn stderr_line(text: &str) -> bool {
    SERVED.with(|s| match s.borrow_mut().as_mut() {
        Some(x) => {
            x.stderr.extend_from_slice(text.as_bytes());
            x.stderr.push(b'\n');
            true
        }
        None => false,
    })
}
