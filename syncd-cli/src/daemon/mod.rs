//! `syncd daemon`: the long-running process that holds the store, walks
//! the lifecycle (store → identity → org policy → capabilities → sessions
//! → RUNNING, or a degraded offline state), serves the local API on a Unix
//! domain socket, and on SIGTERM or SIGINT runs the shutdown graph and
//! ends in QUIT_READY. A second signal forces the exit after recording
//! what was cut short.

pub mod api;
pub mod client;
pub mod http;
pub mod lanes;
pub mod notify;
pub mod pane;
pub mod replication;
pub mod snapshot;
pub mod surfaces;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sourceos_syncd as core;
use sourceos_syncd::{LifecycleEvent as E, MoveDetails};

use crate::cli::{Cli, DaemonArgs};
use crate::{exit, Failure};
use api::Shared;
use client::{DaemonFile, DAEMON_FILE};

/// Most connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (out of descriptors, say), so that a
/// persistent failure does not spin.
const ACCEPT_RETRY_MS: u64 = 20;
/// How often the lanes step checks for work still running.
const LANE_POLL_MS: u64 = 10;
/// How long a forced exit may take to record what was cut short.
const FORCED_EXIT_GRACE_MS: u64 = 5_000;

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: exit::STORE,
        message: message.into(),
    }
}

/// The runtime directory of the socket.
fn runtime_dir(home: &Path, a: &DaemonArgs) -> PathBuf {
    if let Some(d) = &a.runtime_dir {
        return d.clone();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("sourceos-syncd"),
        None => home.join("run"),
    }
}

/// The socket's name: one per home, so that daemons of different homes
/// can share a runtime directory.
fn socket_path(dir: &Path, home: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let digest = blake3_hex(canonical.to_string_lossy().as_bytes());
    dir.join(format!(
        "syncd-{}.sock",
        digest.get(..16).unwrap_or(&digest)
    ))
}

fn blake3_hex(bytes: &[u8]) -> String {
    // The core's digest type prints as `blake3:<hex>`; only the hex is
    // wanted here.
    let d = core::Digest::of(bytes).to_string();
    d.trim_start_matches("blake3:").to_owned()
}

fn write_daemon_file(home: &Path, f: &DaemonFile) -> std::io::Result<()> {
    let tmp = home.join(format!("{DAEMON_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(f).unwrap_or_default())?;
    std::fs::rename(&tmp, home.join(DAEMON_FILE))
}

/// Runs the daemon until it has shut down. Whatever ends it early, the
/// `daemon.json` it wrote does not stay behind.
pub fn run(cli: &Cli, home: &Path, a: &DaemonArgs) -> Result<u8, Failure> {
    let result = serve(cli, home, a);
    if result.is_err() {
        remove_own_daemon_file(home);
    }
    result
}

fn serve(cli: &Cli, home: &Path, a: &DaemonArgs) -> Result<u8, Failure> {
    if let Some(addr) = a.tcp.filter(|a| !a.ip().is_loopback()) {
        return Err(Failure::usage(format!(
            "--tcp {addr}: only a loopback address is allowed"
        )));
    }
    let config = core::DaemonConfig::load(home).map_err(|e| Failure::store(&e))?;
    // Replication: off unless the home's config or --nats turns it on.
    let mut replication_config =
        sourceos_syncd_adapters::replication::ReplicationConfig::load(home)
            .map_err(|e| Failure::store(&e))?;
    if !a.nats.is_empty() {
        replication_config
            .set_servers(a.nats.clone())
            .map_err(|e| Failure::usage(format!("--nats: {e}")))?;
        replication_config.enabled = true;
    }
    // The sweeper's TTL and interval and the lanes' limits: a bad
    // `config.toml` stops the start here, before anything is recorded.
    let orphan_config = core::OrphanConfig::load(home).map_err(|e| Failure::store(&e))?;
    let lane_limits = core::LaneLimits::load(home).map_err(|e| Failure::store(&e))?;
    if let Some(socket) = client::discover(home) {
        return Err(fail(format!(
            "a daemon already runs for {} (socket {})",
            home.display(),
            socket.display()
        )));
    }
    let dir = runtime_dir(home, a);
    create_private_dir(&dir)?;
    let socket = socket_path(&dir, home);
    let run_id = format!(
        "urn:srcos:runtime:{}",
        core::IdGenerator::next_id(&core::UuidV7Generator::new())
    );
    // Loopback TCP, off unless asked for; never another interface.
    let (tcp, tcp_addr) = match a.tcp {
        None => (None, None),
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| fail(format!("cannot listen on {addr}: {e}")))?;
            let bound = l
                .local_addr()
                .map_err(|e| fail(format!("cannot listen on {addr}: {e}")))?;
            (Some(l), Some(bound))
        }
    };
    // Named before the store is opened: a command that finds the store
    // held in the moment before the socket answers knows to wait for it.
    write_daemon_file(
        home,
        &DaemonFile {
            pid: std::process::id(),
            socket: socket.clone(),
            run_id: run_id.clone(),
            tcp: tcp_addr.map(|a| a.to_string()),
        },
    )
    .map_err(|e| {
        fail(format!(
            "cannot write {}: {e}",
            home.join(DAEMON_FILE).display()
        ))
    })?;
    let store = crate::commands::open(cli, home, true)?;
    let run = core::RunId::new(run_id.as_str()).map_err(|e| fail(e.to_string()))?;
    let coordinator =
        core::Coordinator::start(store.clone(), run).map_err(|e| fail(crate::chain(&e)))?;
    apply(&coordinator, E::LocalStoreOpened, MoveDetails::default())?;
    coordinator
        .start_ready()
        .map_err(|e| fail(crate::chain(&e)))?;

    // A socket file left by a daemon that died is removed; one that
    // answers was caught by `discover` above.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", socket.display())))?;
    let lanes = lanes::Lanes::start(store.clone(), lane_limits)
        .map_err(|e| fail(format!("cannot start the ingest lanes: {e}")))?;
    let shared = Arc::new(Shared {
        pane: a.pane,
        coordinator,
        home: home.to_path_buf(),
        draining: AtomicBool::new(false),
        in_flight: Arc::new(AtomicUsize::new(0)),
        lanes,
        surfaces: surfaces::Surfaces::default(),
    });
    let snapshots = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("status-snapshot".into())
            .spawn(move || snapshot::keep(&shared))
            .map_err(|e| fail(format!("cannot start the snapshot thread: {e}")))?
    };
    let stop_accepting = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let accept = {
        let shared = shared.clone();
        let stop = stop_accepting.clone();
        let active = active.clone();
        std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                let next = || listener.accept().map(|(s, _)| http::Conn::Unix(s));
                accept_loop(next, &shared, &stop, &active)
            })
            .map_err(|e| fail(format!("cannot start the API thread: {e}")))?
    };
    let accept_tcp = match tcp {
        None => None,
        Some(l) => {
            let shared = shared.clone();
            let stop = stop_accepting.clone();
            let active = active.clone();
            let handle = std::thread::Builder::new()
                .name("api-accept-tcp".into())
                .spawn(move || {
                    let next = || l.accept().map(|(s, _)| http::Conn::Tcp(s));
                    accept_loop(next, &shared, &stop, &active)
                })
                .map_err(|e| fail(format!("cannot start the TCP API thread: {e}")))?;
            Some(handle)
        }
    };

    let replicator = if replication_config.enabled {
        Some(
            replication::spawn(shared.clone(), home.to_path_buf(), replication_config)
                .map_err(|e| fail(format!("cannot start the replicator: {e}")))?,
        )
    } else {
        None
    };

    // Signals: the first starts the shutdown, the second forces it.
    let (shutdown_tx, shutdown_rx) = mpsc::sync_channel::<String>(1);
    let forced = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(shutdown_tx, forced.clone())?;

    notify::notify(&format!(
        "READY=1\nSTATUS=local API on {}",
        socket.display()
    ));
    tracing::info!(socket = %socket.display(), run_id, "daemon serving");

    {
        let shared = shared.clone();
        let config = config.clone();
        let device = store.meta().device.to_string();
        let policy_id = crate::commands::policy_id(home);
        let _ = std::thread::Builder::new()
            .name("lifecycle".into())
            .spawn(move || startup(&shared, &config, &device, &policy_id));
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("orphan-sweeper".into())
            .spawn(move || sweeper(&shared, orphan_config))
            .map_err(|e| fail(format!("cannot start the orphan sweeper: {e}")))?;
    }

    // Wait for a signal, pinging the watchdog when systemd asks for it.
    let watchdog_ms = notify::watchdog_interval_ms();
    let ping = watchdog_ms.unwrap_or(1_000);
    let reason = loop {
        match shutdown_rx.recv_timeout(Duration::from_millis(ping)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if watchdog_ms.is_some() {
                    notify::notify("WATCHDOG=1");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break "signal handler ended".into(),
        }
    };
    notify::notify("STOPPING=1");
    shared.draining.store(true, Ordering::SeqCst);
    let code = shutdown(&shared, &config, &reason, &forced, replicator);
    // The accept loop blocks in accept(); a connection of our own wakes it
    // to see the flag.
    stop_accepting.store(true, Ordering::SeqCst);
    let _ = std::os::unix::net::UnixStream::connect(&socket);
    let _ = accept.join();
    if let (Some(h), Some(addr)) = (accept_tcp, tcp_addr) {
        let _ = std::net::TcpStream::connect(addr);
        let _ = h.join();
    }
    // The snapshot thread sees the drain flag and removes its file.
    let _ = snapshots.join();
    remove_own_daemon_file(home);
    let _ = std::fs::remove_file(&socket);
    drop(shared);
    crate::commands::close(store)?;
    code
}

/// Removes `daemon.json` if it names this process (never another daemon's).
fn remove_own_daemon_file(home: &Path) {
    let path = home.join(DAEMON_FILE);
    let ours = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<DaemonFile>(&t).ok())
        .is_some_and(|f| f.pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            fail(format!(
                "cannot create runtime directory {}: {e}",
                dir.display()
            ))
        })
}

fn apply(
    c: &core::Coordinator,
    event: core::LifecycleEvent,
    details: MoveDetails,
) -> Result<core::MoveOutcome, Failure> {
    c.apply(event, details).map_err(|e| fail(crate::chain(&e)))
}

fn spawn_signal_thread(
    shutdown: mpsc::SyncSender<String>,
    forced: Arc<AtomicBool>,
) -> Result<(), Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0u32;
            for sig in signals.forever() {
                seen += 1;
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if seen == 1 {
                    let _ = shutdown.try_send(format!("{name} received"));
                } else {
                    tracing::warn!("second signal: forcing the exit");
                    forced.store(true, Ordering::SeqCst);
                    // The shutdown records what was cut short and exits;
                    // if it cannot within the grace period, exit anyway.
                    std::thread::sleep(Duration::from_millis(FORCED_EXIT_GRACE_MS));
                    std::process::exit(i32::from(exit::REPAIRABLE));
                }
            }
        })
        .map_err(|e| fail(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Accepts connections until `stop`; `active` counts connections of every
/// listener, so the bound holds for the socket and TCP together.
fn accept_loop(
    accept: impl Fn() -> std::io::Result<http::Conn>,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
    active: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let stream = match accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let timeout = Some(Duration::from_millis(http::IO_TIMEOUT_MS));
        if stream.set_timeouts(timeout).is_err() {
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = http::respond_json(
                &stream,
                503,
                &serde_json::json!({"error": "busy", "message": "too many connections"}),
            );
            continue;
        }
        let shared = shared.clone();
        let active2 = active.clone();
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                if let Err(e) = api::handle(&shared, &stream) {
                    tracing::debug!(error = %e, "connection ended");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Identity, then org policy, then capabilities, sessions and RUNNING.
/// Providers that do not answer are retried quietly (no move is recorded
/// per attempt); once one answers, the walk goes on from where it stopped.
fn startup(shared: &Shared, config: &core::DaemonConfig, device: &str, policy_id: &str) {
    let c = &shared.coordinator;
    let retry = Duration::from_millis(config.retry_interval_ms);
    let moved = |event, details| match c.apply(event, details) {
        Ok(core::MoveOutcome::Moved(_)) => {
            let _ = c.start_ready();
            snapshot::refresh(shared, false);
            if let Ok(s) = c.state() {
                notify::notify(&format!("STATUS={}", s.as_str()));
            }
            true
        }
        Ok(core::MoveOutcome::Refused(r)) => {
            tracing::debug!(%r, "lifecycle move refused");
            false
        }
        Err(e) => {
            tracing::error!(error = %crate::chain(&e), "recording a lifecycle move failed");
            false
        }
    };
    let draining = || shared.draining.load(Ordering::SeqCst);
    let reason = |r: String| MoveDetails {
        reason: Some(r),
        ..MoveDetails::default()
    };

    // Identity.
    let identity_ref = match &config.identity {
        None => {
            let slug = device.strip_prefix("device:").unwrap_or(device);
            moved(E::IdentityRequested, MoveDetails::default());
            let id = format!("urn:srcos:device:{slug}");
            moved(
                E::IdentityConfirmed,
                MoveDetails {
                    reason: Some("local-only device: its own identity".into()),
                    identity_ref: Some(id.clone()),
                    org_policy_ref: None,
                },
            );
            id
        }
        Some(p) => {
            let mut first = true;
            loop {
                if draining() {
                    return;
                }
                if first {
                    moved(E::IdentityRequested, MoveDetails::default());
                }
                let answer = core::ask(p, &shared.draining);
                let failure = match answer {
                    core::ProviderAnswer::Answered(m) => match core::answer_ref(&m, "identity_ref")
                    {
                        Ok(id) => {
                            if !first {
                                moved(E::IdentityRequested, MoveDetails::default());
                            }
                            moved(
                                E::IdentityConfirmed,
                                MoveDetails {
                                    identity_ref: Some(id.clone()),
                                    ..MoveDetails::default()
                                },
                            );
                            break id;
                        }
                        Err(e) => format!("identity provider answered badly: {e}"),
                    },
                    core::ProviderAnswer::Unreachable(r) => {
                        format!("identity provider unreachable: {r}")
                    }
                    core::ProviderAnswer::Invalid(r) => {
                        format!("identity provider answered badly: {r}")
                    }
                };
                if first {
                    moved(E::IdentityUnreachable, reason(failure));
                    first = false;
                }
                if sleep_unless(retry, &shared.draining) {
                    return;
                }
            }
        }
    };
    let _ = identity_ref;

    // Org policy.
    match &config.org_policy {
        None => {
            moved(E::PolicyLoadStarted, MoveDetails::default());
            moved(
                E::PolicyLoaded,
                MoveDetails {
                    reason: Some("local-only device: the local policy".into()),
                    org_policy_ref: Some(format!("urn:srcos:policy:local:{policy_id}")),
                    identity_ref: None,
                },
            );
        }
        Some(p) => {
            // ORG_POLICY_LOADING while the provider is asked; after a
            // failure the next attempt is quiet until its outcome is known.
            let loading = || {
                if c.state().ok() != Some(core::LifecycleState::OrgPolicyLoading) {
                    moved(E::PolicyLoadStarted, MoveDetails::default());
                }
            };
            loading();
            let mut last_failure: Option<core::LifecycleEvent> = None;
            loop {
                if draining() {
                    return;
                }
                let answer = core::ask(p, &shared.draining);
                let (event, why) = match answer {
                    core::ProviderAnswer::Answered(m) => {
                        match core::answer_ref(&m, "org_policy_ref") {
                            Ok(r) => {
                                loading();
                                moved(
                                    E::PolicyLoaded,
                                    MoveDetails {
                                        org_policy_ref: Some(r),
                                        ..MoveDetails::default()
                                    },
                                );
                                break;
                            }
                            Err(e) => (E::PolicyFailed, format!("org policy failed to load: {e}")),
                        }
                    }
                    core::ProviderAnswer::Invalid(r) => {
                        (E::PolicyFailed, format!("org policy failed to load: {r}"))
                    }
                    core::ProviderAnswer::Unreachable(r) => (
                        E::PolicyUnreachable,
                        format!("org policy provider unreachable: {r}"),
                    ),
                };
                // Only a change of failure is recorded, not every retry.
                if last_failure != Some(event) {
                    loading();
                    moved(event, reason(why));
                    last_failure = Some(event);
                }
                if sleep_unless(retry, &shared.draining) {
                    return;
                }
            }
        }
    }
    if draining() {
        return;
    }
    moved(E::CapabilitiesReady, MoveDetails::default());
    moved(E::SessionsRestored, MoveDetails::default());
    moved(E::Started, MoveDetails::default());
}

/// The orphan sweeper: every `sweep_interval_ms`, while its gate
/// (`scheduled_tasks`, open from LOCAL_READY) is open, quarantines the
/// orphans past their TTL through `session_dag::sweep`, which records each
/// decision as an event. A sweep counts as work in the lanes, so shutdown
/// waits for one that runs.
fn sweeper(shared: &Shared, config: core::OrphanConfig) {
    let interval = Duration::from_millis(config.sweep_interval_ms);
    loop {
        if sleep_unless(interval, &shared.draining) {
            return;
        }
        let ready = matches!(
            shared
                .coordinator
                .start_subsystem(core::Subsystem::ScheduledTasks),
            Ok(core::Readiness::Ready { .. })
        );
        if !ready {
            continue;
        }
        let Some(_work) = shared.enter_lane() else {
            return;
        };
        match core::sweep(shared.coordinator.store(), config.ttl_seconds) {
            Ok(r) if !r.quarantined.is_empty() || !r.refused.is_empty() => tracing::info!(
                quarantined = r.quarantined.len(),
                refused = r.refused.len(),
                still_queued = r.still_queued,
                "orphan sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %crate::chain(&e), "orphan sweep failed"),
        }
    }
}

/// Sleeps, waking early when `stop` is set; true when it was.
fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left = left.saturating_sub(s);
    }
    stop.load(Ordering::SeqCst)
}

/// The shutdown graph's steps, in a fixed order. Receipt flushing comes
/// after every other step whatever their outcome: receipts are never lost
/// because something before them hung.
const STEPS: [(&str, &[&str], &[&str]); 7] = [
    ("sessions", &[], &[]),
    ("ptys", &[], &["sessions"]),
    ("mcp_servers", &["sessions"], &[]),
    ("file_watchers", &[], &[]),
    (
        "local_runtime_lanes",
        &[],
        &["ptys", "mcp_servers", "file_watchers"],
    ),
    ("replication", &["local_runtime_lanes"], &[]),
    (
        "receipt_flushing",
        &[],
        &[
            "sessions",
            "ptys",
            "mcp_servers",
            "file_watchers",
            "local_runtime_lanes",
            "replication",
        ],
    ),
];

fn shutdown(
    shared: &Arc<Shared>,
    config: &core::DaemonConfig,
    why: &str,
    forced: &Arc<AtomicBool>,
    replicator: Option<Arc<replication::ReplicationTask>>,
) -> Result<u8, Failure> {
    let c = &shared.coordinator;
    apply(
        c,
        E::DrainRequested,
        MoveDetails {
            reason: Some(why.to_owned()),
            ..MoveDetails::default()
        },
    )?;
    apply(c, E::CleanupStarted, MoveDetails::default())?;
    let mut steps = Vec::with_capacity(STEPS.len());
    for (name, requires, after) in STEPS {
        let hook = config.hooks.iter().find(|h| h.step == name).cloned();
        let timeout_ms = hook
            .as_ref()
            .and_then(|h| h.timeout_ms)
            .unwrap_or(config.step_timeout_ms);
        let store = c.store().clone();
        let in_flight = shared.in_flight.clone();
        let replicator = replicator.clone();
        let lanes = shared.lanes.clone();
        let action: core::StepAction = Box::new(move |abandoned| {
            if name == "replication" {
                // The pass in progress finishes (what it received is
                // durable and acknowledged); no new one starts.
                if let Some(r) = &replicator {
                    r.stop();
                    while !r.is_done() {
                        if abandoned.load(Ordering::SeqCst) {
                            return Err("the replication pass did not finish".into());
                        }
                        std::thread::sleep(Duration::from_millis(LANE_POLL_MS));
                    }
                }
            }
            if name == "local_runtime_lanes" {
                // Submissions and served commands that got in before the
                // drain finish (their events become durable) first.
                while in_flight.load(Ordering::SeqCst) > 0 {
                    if abandoned.load(Ordering::SeqCst) {
                        return Err("work in the lanes did not finish".into());
                    }
                    std::thread::sleep(Duration::from_millis(LANE_POLL_MS));
                }
                // Nothing is queued any more; an open shedding episode is
                // summarised before the dispatcher ends.
                lanes.stop();
            }
            if let Some(h) = hook {
                // The hook gets the whole step's time; the graph decides
                // whether that was too long.
                // Killed as soon as the graph stops waiting for it.
                match core::run_bounded(
                    &h.command,
                    Duration::from_millis(timeout_ms.saturating_mul(2)),
                    abandoned,
                ) {
                    core::CommandOutcome::Exited { code: 0, .. } => {}
                    core::CommandOutcome::Exited { code, .. } => {
                        return Err(format!("stop command exited with status {code}"))
                    }
                    core::CommandOutcome::TimedOut | core::CommandOutcome::Cancelled => {
                        return Err("stop command hung".into())
                    }
                    core::CommandOutcome::Failed(e) => return Err(format!("stop command: {e}")),
                }
            }
            if name == "receipt_flushing" {
                store.flush().map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        steps.push(core::StepSpec {
            name: name.to_owned(),
            requires: requires.iter().map(|s| (*s).to_owned()).collect(),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms,
            action,
        });
    }
    let run_id = c.run_id().to_owned();
    let mut record = |r: &core::StepResult| {
        let step = core::ShutdownStep {
            run_id: run_id.clone(),
            step: r.name.clone(),
            depends_on: r.depends_on.clone(),
            outcome: r.outcome,
            duration_ms: r.duration_ms,
            timeout_ms: r.timeout_ms,
            reason: r.reason.clone(),
        };
        if let Err(e) = c.record_step(&step) {
            tracing::error!(error = %crate::chain(&e), step = %r.name, "recording a shutdown step failed");
        }
    };
    core::run_graph(steps, forced, &mut record).map_err(|e| fail(crate::chain(&e)))?;
    let was_forced = forced.load(Ordering::SeqCst);
    apply(
        c,
        E::CleanupFinished,
        MoveDetails {
            reason: was_forced.then(|| "a second signal cut the shutdown short".to_owned()),
            ..MoveDetails::default()
        },
    )?;
    Ok(if was_forced {
        exit::REPAIRABLE
    } else {
        exit::OK
    })
}
