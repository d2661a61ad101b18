//! The local API's routes. Every answer is JSON except the event stream
//! (Server-Sent Events). Reads go to projections; submissions go through
//! the same ingest path as `syncd ingest` and only while the ingest lanes
//! are started; a refusal names the gate that is missing.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use sourceos_syncd as core;

use super::http::{self, Conn, Request};
use crate::daemon::client::{CommandRequest, CommandResponse};

/// Most events one log request returns.
pub const MAX_LOG_LIMIT: usize = 1_000;
/// Events read per poll of the event stream.
const STREAM_BATCH: usize = 256;
/// Pause of the event stream when nothing new is in the log.
const STREAM_POLL_MS: u64 = 50;
/// Keep-alive comment interval of the event stream.
const STREAM_KEEPALIVE_MS: u64 = 15_000;

/// What every connection shares.
pub struct Shared {
    /// The lifecycle coordinator (and through it, the store).
    pub coordinator: core::Coordinator,
    /// The home.
    pub home: PathBuf,
    /// Whether the Workspace pane (`GET /pane`) is served.
    pub pane: bool,
    /// Set when shutdown starts: no new work.
    pub draining: AtomicBool,
    /// Submissions and served commands running now (the local runtime
    /// lanes); shutdown waits for them before receipts are flushed.
    pub in_flight: std::sync::Arc<AtomicUsize>,
    /// The ingest lanes every submission goes through.
    pub lanes: std::sync::Arc<super::lanes::Lanes>,
    /// The surfaces that called, by their `X-Syncd-Surface` header.
    pub surfaces: super::surfaces::Surfaces,
}

/// One unit of work in a lane; leaving the lane when dropped.
pub struct Lane(std::sync::Arc<AtomicUsize>);

impl Drop for Lane {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn store(&self) -> &core::Store {
        self.coordinator.store()
    }

    /// Enters a lane, unless the daemon drains. The count goes up before
    /// the flag is read, so shutdown, which sets the flag and then waits
    /// for the count to reach zero, never misses work that got in.
    pub fn enter_lane(&self) -> Option<Lane> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let lane = Lane(self.in_flight.clone());
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        Some(lane)
    }

    /// The daemon's section of the status document.
    pub fn daemon_section(&self) -> core::DaemonSection {
        let state = self
            .coordinator
            .state()
            .unwrap_or(core::LifecycleState::Halted);
        let reason = self.coordinator.reason().ok().flatten();
        let mut started = Vec::new();
        let mut blocked = std::collections::BTreeMap::new();
        for s in self.coordinator.subsystems().unwrap_or_default() {
            if s.started {
                started.push(s.subsystem.as_str().to_owned());
            } else if let core::Readiness::Refused { needs_state, .. } = s.readiness {
                blocked.insert(
                    s.subsystem.as_str().to_owned(),
                    needs_state.as_str().to_owned(),
                );
            }
        }
        let (surfaces, surface_requests_not_listed) = self.surfaces.view();
        core::DaemonSection {
            run_id: self.coordinator.run_id().to_owned(),
            pid: std::process::id(),
            state: state.as_str().to_owned(),
            upstream_state: state.upstream().to_owned(),
            offline: state == core::LifecycleState::DegradedOffline,
            policy_blocked_reason: (state == core::LifecycleState::DegradedPolicyFailed).then(
                || {
                    reason
                        .clone()
                        .unwrap_or_else(|| "org policy failed to load".into())
                },
            ),
            reason,
            started_subsystems: started,
            blocked_subsystems: blocked,
            lanes: Some(self.lanes.view()),
            surfaces,
            surface_requests_not_listed,
        }
    }
}

/// The request header naming the calling surface (names are lower-cased
/// when read).
const SURFACE_HEADER: &str = "x-syncd-surface";

fn error(stream: &Conn, status: u16, code: &str, message: &str) -> std::io::Result<()> {
    http::respond_json(
        stream,
        status,
        &json!({ "error": code, "message": message }),
    )
}

/// Answers one connection.
pub fn handle(shared: &Shared, stream: &Conn) -> std::io::Result<()> {
    let req = match http::read_request(stream) {
        Ok(r) => r,
        Err(http::HttpError::TooLarge(n)) => {
            return error(
                stream,
                413,
                "too_large",
                &format!("body of {n} bytes; at most {}", http::MAX_BODY_BYTES),
            )
        }
        Err(http::HttpError::Io(e)) => return Err(e),
        Err(e) => return error(stream, 400, "bad_request", &e.to_string()),
    };
    let path = req.path.clone();
    // A surface names itself on every request; a name that is not a valid
    // surface version is refused before anything is done for it.
    if let Some(raw) = req.header(SURFACE_HEADER) {
        match core::SurfaceVersion::new(raw) {
            Ok(surface) => shared.surfaces.note(&surface, shared.store().now()),
            Err(e) => return error(stream, 400, "bad_surface", &format!("X-Syncd-Surface: {e}")),
        }
    }
    // Over TCP, any local user can connect: only reads are served.
    if stream.is_tcp() && req.method != "GET" {
        return error(
            stream,
            403,
            "read_only",
            "loopback TCP serves reads only; use the Unix socket",
        );
    }
    match (req.method.as_str(), path.as_str()) {
        ("GET", "/pane") if shared.pane => http::respond(
            stream,
            200,
            "text/html; charset=utf-8",
            super::pane::PAGE.as_bytes(),
        ),
        ("GET", "/v1/health") => health(shared, stream),
        ("GET", "/v1/readiness") => readiness(shared, stream),
        ("GET", "/v1/status") => status(shared, stream),
        ("GET", "/v1/lifecycle") => lifecycle(shared, stream),
        ("GET", "/v1/log") => log(shared, stream, &req),
        ("GET", "/v1/events/stream") => event_stream(shared, stream, &req),
        ("POST", "/v1/events") => submit(shared, stream, &req),
        ("POST", "/v1/cli") => cli(shared, stream, &req),
        ("GET", p) if p.starts_with("/v1/objects/") => {
            explain(shared, stream, p.trim_start_matches("/v1/objects/"))
        }
        (_, p) if p.starts_with("/v1/") => error(stream, 404, "not_found", p),
        _ => error(stream, 404, "not_found", &path),
    }
}

fn health(shared: &Shared, stream: &Conn) -> std::io::Result<()> {
    let doc = core::status(shared.store()).map(|d| d.with_daemon(shared.daemon_section()));
    match doc {
        Ok(d) => http::respond_json(
            stream,
            200,
            &json!({
                "status": "ok",
                "state": d.daemon_state,
                "health": d.health.as_str(),
                "pid": std::process::id(),
            }),
        ),
        Err(e) => error(stream, 500, "status_failed", &e),
    }
}

fn readiness(shared: &Shared, stream: &Conn) -> std::io::Result<()> {
    let state = shared.coordinator.state().ok().map(|s| s.as_str());
    let subs = shared.coordinator.subsystems().unwrap_or_default();
    http::respond_json(stream, 200, &json!({ "state": state, "subsystems": subs }))
}

fn status(shared: &Shared, stream: &Conn) -> std::io::Result<()> {
    match core::status(shared.store()) {
        Ok(d) => {
            let d = d.with_daemon(shared.daemon_section());
            http::respond_json(stream, 200, &serde_json::to_value(d).unwrap_or_default())
        }
        Err(e) => error(stream, 500, "status_failed", &e),
    }
}

fn lifecycle(shared: &Shared, stream: &Conn) -> std::io::Result<()> {
    match core::lifecycle(shared.store()) {
        Ok(v) => {
            let device = shared.store().meta().device.to_string();
            http::respond_json(stream, 200, &crate::cmd_lifecycle::document(&v, &device))
        }
        Err(e) => error(stream, 500, "lifecycle_failed", &e.to_string()),
    }
}

fn seq_param(req: &Request, name: &str, default: u64) -> Result<u64, String> {
    match req.param(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name} must be a number, not {v:?}")),
    }
}

fn log(shared: &Shared, stream: &Conn, req: &Request) -> std::io::Result<()> {
    let (from, limit) = match (seq_param(req, "from", 1), seq_param(req, "limit", 100)) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), _) | (_, Err(e)) => return error(stream, 400, "bad_request", &e),
    };
    let Ok(from) = core::Seq::new(from.max(1)) else {
        return error(stream, 400, "bad_request", "from must be at least 1");
    };
    let limit = usize::try_from(limit)
        .unwrap_or(MAX_LOG_LIMIT)
        .clamp(1, MAX_LOG_LIMIT);
    match shared.store().range(from, limit) {
        Ok(events) => {
            let docs: Vec<_> = events.iter().map(|e| e.to_document()).collect();
            http::respond_json(stream, 200, &serde_json::to_value(docs).unwrap_or_default())
        }
        Err(e) => error(stream, 500, "read_failed", &crate::chain(&e)),
    }
}

fn explain(shared: &Shared, stream: &Conn, object: &str) -> std::io::Result<()> {
    match core::explain(shared.store(), object) {
        Ok(Some(x)) => {
            http::respond_json(stream, 200, &serde_json::to_value(x).unwrap_or_default())
        }
        Ok(None) => error(stream, 404, "unknown_object", object),
        Err(e) => error(stream, 500, "explain_failed", &e.to_string()),
    }
}

/// The refusal when a subsystem's gate is closed, or the daemon drains.
fn gate_refusal(shared: &Shared, subsystem: core::Subsystem) -> Option<serde_json::Value> {
    if shared.draining.load(Ordering::SeqCst) {
        return Some(json!({
            "error": "draining",
            "message": "the daemon is shutting down and accepts no new work",
        }));
    }
    match shared.coordinator.start_subsystem(subsystem) {
        Ok(core::Readiness::Ready { .. }) => None,
        Ok(refused) => Some(json!({ "error": "gate_closed", "refusal": refused })),
        Err(e) => Some(json!({ "error": "lifecycle", "message": e.to_string() })),
    }
}

fn outcome_line(line: u64, outcome: &core::AppendOutcome) -> serde_json::Value {
    match outcome {
        core::AppendOutcome::Appended { seq, hash, id } => {
            json!({"line": line, "result": "appended", "seq": seq.get(), "hash": hash.to_string(), "id": id.to_string()})
        }
        core::AppendOutcome::Duplicate { seq, hash } => {
            json!({"line": line, "result": "duplicate", "seq": seq.get(), "hash": hash.to_string()})
        }
        core::AppendOutcome::Rejected { reason } => {
            json!({"line": line, "result": "rejected", "reason": reason})
        }
        core::AppendOutcome::PolicyBlocked {
            decision_id,
            decision_seq,
            reason,
            ..
        } => {
            json!({"line": line, "result": "policy_blocked", "decision_id": decision_id, "decision_seq": decision_seq.get(), "reason": reason})
        }
    }
}

/// `POST /v1/events`: each line is classified into a lane (`?lane=` is a
/// hint for the whole submission) and its runs go through the lanes in
/// input order. Shed telemetry lines say so; once a run is deferred, it
/// and every later line are answered `deferred` and the answer is 429
/// with `Retry-After`, so that a retry resubmits the rest in order.
fn submit(shared: &Shared, stream: &Conn, req: &Request) -> std::io::Result<()> {
    let Some(_lane) = shared.enter_lane() else {
        return error(
            stream,
            503,
            "draining",
            "the daemon is shutting down and accepts no new work",
        );
    };
    if let Some(refusal) = gate_refusal(shared, core::Subsystem::IngestLanes) {
        return http::respond_json(stream, 503, &refusal);
    }
    let hint = match req.param("lane") {
        None => None,
        Some(v) => match core::Lane::parse(v) {
            Some(l) => Some(l),
            None => {
                return error(
                    stream,
                    400,
                    "bad_request",
                    &format!("lane must be control, data or telemetry, not {v:?}"),
                )
            }
        },
    };
    let lines = core::parse_submission(&req.body, hint);
    let runs = core::lane_items(&lines);
    let mut results: Vec<Option<serde_json::Value>> = Vec::with_capacity(lines.len());
    let mut drafts: Vec<Option<core::EventDraft>> = Vec::with_capacity(lines.len());
    let mut numbers = Vec::with_capacity(lines.len());
    for l in lines {
        numbers.push(l.line);
        match l.parsed {
            Ok((_, d)) => {
                results.push(None);
                drafts.push(Some(d));
            }
            Err(reason) => {
                results.push(Some(
                    json!({"line": l.line, "result": "rejected", "reason": reason}),
                ));
                drafts.push(None);
            }
        }
    }
    let number = |i: usize| numbers.get(i).copied().unwrap_or_default();
    let mut retry_after_ms: Option<u64> = None;
    for (lane, idx) in runs {
        let deferred = |i: usize, ms: u64, why: &str| {
            json!({"line": number(i), "result": "deferred", "error": "resource_blocked",
                "lane": lane.as_str(), "retry_after_ms": ms, "reason": why})
        };
        if let Some(ms) = retry_after_ms {
            for i in idx {
                let d = deferred(i, ms, "an earlier line of this submission was deferred");
                if let Some(r) = results.get_mut(i) {
                    *r = Some(d);
                }
            }
            continue;
        }
        let run: Vec<_> = idx
            .iter()
            .filter_map(|i| drafts.get_mut(*i).and_then(Option::take))
            .collect();
        let answers: Vec<serde_json::Value> = match shared.lanes.submit(lane, run) {
            super::lanes::Submitted::Done(Ok(outcomes)) => idx
                .iter()
                .zip(outcomes.iter())
                .map(|(i, o)| outcome_line(number(*i), o))
                .collect(),
            super::lanes::Submitted::Done(Err(e)) => {
                return error(stream, 500, "ingest_failed", &e);
            }
            super::lanes::Submitted::Shed => idx
                .iter()
                .map(|i| json!({"line": number(*i), "result": "shed", "lane": lane.as_str()}))
                .collect(),
            super::lanes::Submitted::Deferred { retry_after_ms: ms } => {
                retry_after_ms = Some(ms);
                let why = format!("the {} lane is full", lane.as_str());
                idx.iter().map(|i| deferred(*i, ms, &why)).collect()
            }
            super::lanes::Submitted::Stopped => {
                retry_after_ms = Some(super::lanes::SHED_QUIET_MS);
                idx.iter()
                    .map(|i| {
                        deferred(
                            *i,
                            super::lanes::SHED_QUIET_MS,
                            "the daemon is shutting down",
                        )
                    })
                    .collect()
            }
        };
        for (i, a) in idx.iter().zip(answers) {
            if let Some(r) = results.get_mut(*i) {
                *r = Some(a);
            }
        }
    }
    // Before answering: a status line read right after sees the events.
    super::snapshot::refresh(shared, false);
    let mut body = Vec::new();
    for l in results.into_iter().flatten() {
        body.extend_from_slice(l.to_string().as_bytes());
        body.push(b'\n');
    }
    match retry_after_ms {
        None => http::respond(stream, 200, "application/x-ndjson", &body),
        Some(ms) => http::respond_with(
            stream,
            429,
            "application/x-ndjson",
            Some(ms.div_ceil(1_000)),
            &body,
        ),
    }
}

fn event_stream(shared: &Shared, mut stream: &Conn, req: &Request) -> std::io::Result<()> {
    // Resume after the last event the client saw; otherwise from `from`,
    // otherwise only what comes next.
    let head = shared.store().head().map(|(s, _)| s).unwrap_or(0);
    let next = match req.header("last-event-id").map(str::parse::<u64>) {
        Some(Ok(id)) => id.saturating_add(1),
        Some(Err(_)) => {
            return error(
                stream,
                400,
                "bad_request",
                "Last-Event-ID must be a sequence number",
            )
        }
        None => match seq_param(req, "from", head.saturating_add(1)) {
            Ok(f) => f.max(1),
            Err(e) => return error(stream, 400, "bad_request", &e),
        },
    };
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
    )?;
    stream.flush()?;
    stream_from(shared, stream, next, &shared.draining)
}

fn stream_from(
    shared: &Shared,
    mut stream: &Conn,
    mut next: u64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut last_write = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let Ok(from) = core::Seq::new(next) else {
            return Ok(());
        };
        let events = shared
            .store()
            .range(from, STREAM_BATCH)
            .map_err(|e| std::io::Error::other(crate::chain(&e)))?;
        if events.is_empty() {
            if last_write.elapsed() >= Duration::from_millis(STREAM_KEEPALIVE_MS) {
                stream.write_all(b": keep-alive\n\n")?;
                stream.flush()?;
                last_write = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(STREAM_POLL_MS));
            continue;
        }
        for e in &events {
            let data = serde_json::to_string(&e.to_document()).unwrap_or_default();
            let frame = format!("id: {}\nevent: {}\ndata: {data}\n\n", e.seq(), e.kind());
            stream.write_all(frame.as_bytes())?;
            next = e.seq().get().saturating_add(1);
        }
        stream.flush()?;
        last_write = Instant::now();
    }
    Ok(())
}

fn cli(shared: &Shared, stream: &Conn, req: &Request) -> std::io::Result<()> {
    let Some(_lane) = shared.enter_lane() else {
        return error(stream, 503, "draining", "the daemon is shutting down");
    };
    let split = req
        .body
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(req.body.len());
    let (head, rest) = req.body.split_at(split);
    let stdin = rest.get(1..).unwrap_or_default().to_vec();
    let parsed: CommandRequest = match serde_json::from_slice(head) {
        Ok(p) => p,
        Err(e) => return error(stream, 400, "bad_request", &format!("command: {e}")),
    };
    let reply = |code: u8, stdout: String, stderr: String| {
        let v = serde_json::to_value(CommandResponse {
            code,
            stdout,
            stderr,
        })
        .unwrap_or_default();
        http::respond_json(stream, 200, &v)
    };
    let mut cli = match crate::cli::Cli::try_parse_from(
        std::iter::once("syncd".to_owned()).chain(parsed.args),
    ) {
        Ok(c) => c,
        Err(e) => {
            let text = e.render().to_string();
            return if e.use_stderr() {
                reply(crate::exit::USAGE, String::new(), text)
            } else {
                reply(crate::exit::OK, text, String::new())
            };
        }
    };
    if !cli.command.goes_through_daemon() {
        return reply(
            crate::exit::STORE,
            String::new(),
            format!(
                "syncd: error: a daemon already runs for {} (pid {})\n",
                shared.home.display(),
                std::process::id()
            ),
        );
    }
    cli.command.absolutize(&parsed.cwd);
    let section = shared.daemon_section();
    let home = shared.home.clone();
    let (result, captured) = crate::served::run(
        shared.store().clone(),
        Some(shared.lanes.clone()),
        section,
        stdin,
        || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::commands::run(&cli, &home)
            }))
        },
    );
    let mut stderr = String::from_utf8_lossy(&captured.stderr).into_owned();
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(f)) => {
            if !f.message.is_empty() {
                stderr.push_str(&format!("syncd: error: {}\n", f.message));
            }
            f.code
        }
        Err(_) => {
            stderr.push_str("syncd: error: internal failure in the daemon while serving the command; run `syncd doctor`\n");
            crate::exit::STORE
        }
    };
    super::snapshot::refresh(shared, false);
    reply(
        code,
        String::from_utf8_lossy(&captured.stdout).into_owned(),
        stderr,
    )
}
