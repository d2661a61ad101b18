//! One function per command: open the store, call the core, render.

use std::io::BufReader;
use std::path::Path;

use sourceos_syncd as core;

use crate::cli::{Cli, Command, DamageMode, DrillCommand, TxnCommand};
use crate::output::{byte_progress, progress, Out};
use crate::{exit, Failure};

/// Buffer size for ingest input: large enough that a group commit covers
/// about a thousand typical lines.
const INGEST_BUFFER_BYTES: usize = 1 << 20;

fn options(cli: &Cli, home: &Path, catch_up: bool) -> Result<core::OpenOptions, Failure> {
    let policy = core::LocalPolicy::load(home).map_err(|e| Failure::store(&e))?;
    Ok(core::OpenOptions {
        catch_up,
        storage: core::StorageOptions {
            cache_capacity_bytes: cli.cache_mib.saturating_mul(1024 * 1024),
        },
        policy: std::sync::Arc::new(policy),
        ..core::OpenOptions::default()
    })
}

/// The id of the home's local policy (the default's when it cannot be read:
/// the daemon reports the read error through `status` instead).
pub(crate) fn policy_id(home: &Path) -> String {
    core::LocalPolicy::load(home)
        .map(|p| p.policy_id().to_owned())
        .unwrap_or_else(|_| core::LocalPolicy::default().policy_id().to_owned())
}

/// Set when a command found the store held by another process, so that
/// `main` can look for a daemon that has just started and go through it.
pub(crate) static FOUND_LOCKED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Opens the store with the home's policy and the cache bound; a command
/// served by the daemon gets the daemon's open store.
pub(crate) fn open(cli: &Cli, home: &Path, catch_up: bool) -> Result<core::Store, Failure> {
    if let Some(store) = crate::served::store() {
        return Ok(store);
    }
    core::Store::open(home, options(cli, home, catch_up)?).map_err(|e| {
        if matches!(e, core::OpenError::Locked { .. }) {
            FOUND_LOCKED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Failure::store(&e)
    })
}

/// Flushes and closes the store (the daemon's store stays open).
pub(crate) fn close(store: core::Store) -> Result<(), Failure> {
    if crate::served::active() {
        return store.flush().map_err(|e| Failure::store(&e));
    }
    store.close().map_err(|e| Failure::store(&e))
}

/// Runs the parsed command; returns the exit code.
pub fn run(cli: &Cli, home: &Path) -> Result<u8, Failure> {
    let result = match &cli.command {
        Command::Init(a) => init(cli, home, a),
        Command::Ingest(a) => ingest(cli, home, a),
        Command::Log(a) => log(cli, home, a),
        Command::Status(a) => status(cli, home, a),
        Command::Doctor(a) => doctor(cli, home, a),
        Command::Rebuild(a) => rebuild(cli, home, a),
        Command::Verify(a) => verify(cli, home, a),
        Command::Explain(a) => explain(cli, home, a),
        Command::Objects(a) => list_objects(cli, home, a),
        Command::Actors(a) => list_records(cli, home, a, core::RecordKind::Actors, "actor_id"),
        Command::Schemas(a) => list_records(cli, home, a, core::RecordKind::Schemas, "schema_id"),
        Command::Devices(a) => list_records(cli, home, a, core::RecordKind::Devices, "device_id"),
        Command::Profiles(a) => {
            list_records(cli, home, a, core::RecordKind::Profiles, "profile_id")
        }
        Command::Conflicts(a) => list_conflicts(cli, home, a),
        Command::Txn(t) => txn(cli, home, t),
        Command::Export(a) => export(cli, home, a),
        Command::Import(a) => import(cli, home, a),
        Command::Restore(a) => restore(cli, home, a),
        Command::Drill(DrillCommand::DamageDerived(a)) => drill(cli, home, a),
        Command::Track(a) => crate::cmd_track::track(cli, home, a),
        Command::GitState(a) => crate::cmd_git::git_state(cli, home, a),
        Command::Sessions(a) => crate::cmd_session::sessions(cli, home, a),
        Command::Session(a) => crate::cmd_session::session(cli, home, a),
        Command::Orphans(a) => crate::cmd_session::orphans(cli, home, a),
        Command::Sync(a) => crate::cmd_sync::sync(cli, home, a),
        Command::Peers(a) => crate::cmd_sync::peers(cli, home, a),
        Command::Schema(c) => crate::cmd_schema::schema(c),
        Command::Evidence(crate::cli::EvidenceCommand::Add(a)) => evidence_add(home, a),
        Command::Capabilities(a) => crate::cmd_ledger::capabilities(cli, home, a),
        Command::Receipts(a) => crate::cmd_ledger::receipts(cli, home, a),
        Command::Lifecycle(a) => crate::cmd_lifecycle::lifecycle(cli, home, a),
        Command::Daemon(a) => crate::daemon::run(cli, home, a),
        Command::Top(a) => crate::top::top(home, a),
        Command::Diagnostics(crate::cli::DiagnosticsCommand::Export(a)) => {
            crate::cmd_diagnostics::export(cli, home, a)
        }
    };
    match result {
        // A closed stdout is reported as a failure with code 0 and no text.
        Err(f) if f.code == exit::OK && f.message.is_empty() => Ok(exit::OK),
        other => other,
    }
}

fn init(cli: &Cli, home: &Path, a: &crate::cli::InitArgs) -> Result<u8, Failure> {
    let device = match &a.device {
        Some(d) => Some(
            core::DeviceId::new(d.as_str())
                .map_err(|e| Failure::usage(format!("--device: {e}")))?,
        ),
        None => None,
    };
    let profile = core::ProfileId::new(a.profile.as_str())
        .map_err(|e| Failure::usage(format!("--profile: {e}")))?;
    let store = core::Store::init(
        home,
        core::InitOptions {
            device,
            profile,
            created_at: None,
        },
        options(cli, home, true)?,
    )
    .map_err(|e| Failure::store(&e))?;
    let meta = store.meta().clone();
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json(&serde_json::json!({
            "home": home,
            "device": meta.device.as_str(),
            "profile": meta.profile.as_str(),
            "format_version": meta.format_version,
            "genesis": meta.genesis.to_string(),
        }))?;
    } else {
        out.line(&format!("initialised store at {}", home.display()))?;
        out.line(&format!("  device   {}", meta.device))?;
        out.line(&format!("  profile  {}", meta.profile))?;
        out.line(&format!("  genesis  {}", meta.genesis))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

/// One ingest result line: `line` and `result` first, for people reading
/// the stream.
#[derive(serde::Serialize)]
struct ResultLine<'a> {
    line: u64,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn ingest(cli: &Cli, home: &Path, a: &crate::cli::IngestArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let (reader, total): (Box<dyn std::io::Read>, Option<u64>) = match &a.file {
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| Failure {
                code: exit::DATA,
                message: format!("cannot open input {}: {e}", path.display()),
            })?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        None => match crate::served::take_stdin() {
            Some(body) => (Box::new(std::io::Cursor::new(body)), None),
            None => (Box::new(std::io::stdin().lock()), None),
        },
    };
    let mut input = BufReader::with_capacity(INGEST_BUFFER_BYTES, reader);
    let bar = byte_progress(total);
    // Results are written by the sink and flushed after each durable group
    // (the progress callback), so a live producer sees its answers.
    let out = std::cell::RefCell::new(Out::new());
    let closed = std::cell::Cell::new(false);
    let mut sink = |r: &core::IngestResult| -> std::io::Result<()> {
        let doc = match &r.outcome {
            core::LineOutcome::Appended { seq, hash, id } => ResultLine {
                line: r.line,
                result: "appended",
                seq: Some(*seq),
                hash: Some(hash.to_string()),
                id: Some(id),
                decision_id: None,
                decision_seq: None,
                reason: None,
            },
            core::LineOutcome::Duplicate { seq, hash } => ResultLine {
                line: r.line,
                result: "duplicate",
                seq: Some(*seq),
                hash: Some(hash.to_string()),
                id: None,
                decision_id: None,
                decision_seq: None,
                reason: None,
            },
            core::LineOutcome::Rejected { reason } => ResultLine {
                line: r.line,
                result: "rejected",
                seq: None,
                hash: None,
                id: None,
                decision_id: None,
                decision_seq: None,
                reason: Some(reason),
            },
            core::LineOutcome::Blocked {
                decision_id,
                decision_seq,
                reason,
            } => ResultLine {
                line: r.line,
                result: "policy_blocked",
                seq: None,
                hash: None,
                id: None,
                decision_id: Some(decision_id),
                decision_seq: Some(*decision_seq),
                reason: Some(reason),
            },
        };
        match out.borrow_mut().json(&doc) {
            Ok(()) => Ok(()),
            Err(crate::output::OutError::Closed) => {
                closed.set(true);
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            Err(crate::output::OutError::Failed(e)) => Err(e),
        }
    };
    let mut on_progress = |bytes: u64| {
        bar.set_position(bytes);
        if let Err(crate::output::OutError::Closed) = out.borrow_mut().flush() {
            closed.set(true);
        }
    };
    // Served by a daemon, the lines go through its ingest lanes like any
    // other submission: priority by lane, back-pressure as waiting.
    let lanes = crate::served::lanes();
    let through_lanes = |drafts: Vec<core::EventDraft>| match &lanes {
        Some(l) => crate::daemon::lanes::append_waiting(l, drafts),
        None => store.append_many(drafts),
    };
    let result = core::Ingestor::with_appender(&store, &through_lanes).run(
        &mut input,
        &mut sink,
        &mut on_progress,
    );
    bar.finish_and_clear();
    let flushed = out.borrow_mut().flush();
    close(store)?;
    let summary = match result {
        Ok(s) => s,
        Err(core::IngestError::Output(_)) if closed.get() => return Ok(exit::OK),
        Err(e) => return Err(Failure::store(&e)),
    };
    flushed?;
    crate::output::note(&format!(
        "syncd: ingest: {} appended, {} duplicate, {} rejected",
        summary.appended, summary.duplicates, summary.rejected
    ));
    Ok(if summary.rejected > 0 {
        exit::DATA
    } else {
        exit::OK
    })
}

fn log(cli: &Cli, home: &Path, a: &crate::cli::LogArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let from = core::Seq::new(a.from).map_err(|e| Failure::usage(format!("--from: {e}")))?;
    let limit = usize::try_from(a.limit).unwrap_or(usize::MAX);
    let events = match &a.subject {
        Some(s) => {
            let subject = core::Subject::new(s.as_str())
                .map_err(|e| Failure::usage(format!("--subject: {e}")))?;
            store.by_subject(&subject, from.get() - 1, limit)
        }
        None => store.range(from, limit),
    }
    .map_err(|e| Failure::store(&e))?;
    close(store)?;
    let mut out = Out::new();
    for e in &events {
        if a.json {
            out.json(&e.to_document())?;
        } else {
            let hash = e.hash().to_string();
            out.line(&format!(
                "{:>8}  {}  {:<24} {:<24} {:<24} {}",
                e.seq(),
                e.recorded_at(),
                e.kind(),
                e.actor(),
                e.subject().map_or("-", |s| s.as_str()),
                hash.get(..19).unwrap_or(&hash),
            ))?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// The one-line status for a shell prompt. It starts with `syncd` and a
/// health state, so it never reads like git's dirty state beside it.
pub(crate) fn status_line(doc: &core::StatusDocument) -> String {
    format!(
        "syncd {} · {} · {} · {} conflicts · head {}",
        doc.health.as_str(),
        doc.active_profile,
        doc.active_device,
        doc.conflict_count,
        doc.log.head_seq
    )
}

fn status(cli: &Cli, home: &Path, a: &crate::cli::StatusArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let mut doc = core::status(&store).map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    if let Some(d) = crate::served::daemon() {
        doc = doc.with_daemon(d);
    } else if home.join(crate::daemon::client::DAEMON_FILE).exists() {
        // A daemon named itself for this home and did not answer (it was
        // killed, or it is still starting): say so.
        doc = doc.with_daemon_unavailable(&format!(
            "{} names a daemon that does not answer",
            crate::daemon::client::DAEMON_FILE
        ));
    }
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&doc)?;
    } else if a.line {
        out.line(&status_line(&doc))?;
    } else {
        out.line(&doc.summary)?;
        out.line(&format!("  health     {}", doc.health.as_str()))?;
        out.line(&format!("  device     {}", doc.active_device))?;
        out.line(&format!("  profile    {}", doc.active_profile))?;
        out.line(&format!("  daemon     {}", doc.daemon_state))?;
        if let Some(l) = &doc.lanes {
            let lanes: Vec<String> = l
                .lanes
                .iter()
                .map(|v| {
                    format!(
                        "{} {}/{} (shed {}, deferred {})",
                        v.lane.as_str(),
                        v.depth_events,
                        v.capacity_events,
                        v.counters.shed_events,
                        v.counters.deferred_events
                    )
                })
                .collect();
            out.line(&format!("  lanes      {}", lanes.join(" · ")))?;
        }
        out.line(&format!(
            "  log        {} events, head {}",
            doc.log.event_count, doc.log.head_hash
        ))?;
        if let Some(n) = doc.subject_count {
            out.line(&format!("  subjects   {n}"))?;
        }
        for (name, p) in &doc.projections {
            let reason = p
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            out.line(&format!(
                "  projection {name:<12} {} at {}{reason}",
                p.state, p.checkpoint_seq
            ))?;
        }
        if doc.conflict_count > 0 {
            out.line(&format!(
                "  conflicts  {} unresolved (`syncd conflicts`)",
                doc.conflict_count
            ))?;
        }
        if let Some(r) = &doc.replication {
            out.line(&format!("  replication {}", replication_line(r)))?;
        }
        if let Some(r) = &doc.write_blocked_reason {
            out.line(&format!("  writes     refused: {r}"))?;
        }
        if let Some(d) = &doc.daemon {
            if let Some(r) = &d.reason {
                out.line(&format!("  lifecycle  {} ({r})", d.state))?;
            }
            for (sub, gate) in &d.blocked_subsystems {
                out.line(&format!("  blocked    {sub}: needs {gate}"))?;
            }
            if let Some(r) = &d.policy_blocked_reason {
                out.line(&format!("  org policy failed to load: {r}"))?;
            }
            if !d.surfaces.is_empty() {
                out.line(&format!("  surfaces   {}", surfaces_line(d)))?;
            }
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// The replication block of status in one line: whether the last pass
/// reached a server, and the peers as it left them.
fn replication_line(r: &core::ReplicationStatus) -> String {
    let when = r.last_attempt_at.as_deref().unwrap_or("never");
    if !r.reached_server {
        let why = r
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return format!("offline, working locally (last pass {when}{why})");
    }
    let stale = if r.stale_peers > 0 {
        format!(", {} STALE", r.stale_peers)
    } else {
        String::new()
    };
    // A pass can reach a server and still fail (a stream unlike its
    // configuration, an interrupted publication).
    let failed = r
        .last_error
        .as_deref()
        .map(|e| format!(" failed: {e}"))
        .unwrap_or_default();
    format!(
        "{} peer(s), lag at most {} event(s){stale}; last pass {when}{failed}",
        r.peers, r.max_lag
    )
}

/// The daemon's calling surfaces in one line, most requests first.
fn surfaces_line(d: &core::DaemonSection) -> String {
    let mut seen: Vec<String> = d
        .surfaces
        .iter()
        .map(|s| {
            let unit = if s.requests == 1 {
                "request"
            } else {
                "requests"
            };
            format!("{} ({} {unit})", s.surface, s.requests)
        })
        .collect();
    if d.surface_requests_not_listed > 0 {
        seen.push(format!(
            "others ({} requests)",
            d.surface_requests_not_listed
        ));
    }
    seen.join(", ")
}

fn doctor(cli: &Cli, home: &Path, a: &crate::cli::DoctorArgs) -> Result<u8, Failure> {
    let store = open(cli, home, false)?;
    let (head, _) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    let bar = progress(head, "events");
    let mut on_progress = |done: u64, total: u64| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    };
    let report = core::doctor(
        &store,
        core::DoctorOptions { repair: a.repair },
        &mut on_progress,
    );
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure::store(&e))?;
    close(store)?;
    let code = if report.needs_review() {
        exit::NEEDS_REVIEW
    } else if report.repairable()
        && report
            .repair
            .as_ref()
            .is_none_or(|r| r.rebuilt.is_empty() && r.dropped.is_empty())
    {
        exit::REPAIRABLE
    } else {
        exit::OK
    };
    let outcome = match code {
        exit::NEEDS_REVIEW => "needs_review",
        exit::REPAIRABLE => "repairable",
        _ if report.repair.is_some() && report.repairable() => "repaired",
        _ => "healthy",
    };
    let mut out = Out::new();
    if a.json {
        let mut doc = serde_json::to_value(&report).map_err(|e| Failure::store(&e))?;
        if let Some(m) = doc.as_object_mut() {
            m.insert("outcome".into(), outcome.into());
            m.insert("exit_code".into(), code.into());
        }
        out.json_pretty(&doc)?;
    } else {
        render_doctor(&mut out, &report, outcome)?;
    }
    out.flush()?;
    Ok(code)
}

fn render_doctor(
    out: &mut Out,
    r: &core::DoctorReport,
    outcome: &str,
) -> Result<(), crate::output::OutError> {
    out.line(&format!(
        "doctor: {} events checked, head {} {}; trees {}",
        r.events_checked,
        r.head_seq,
        r.head_hash,
        r.trees_checked.join(", ")
    ))?;
    if r.findings.is_empty() {
        out.line("no findings")?;
    } else {
        out.line(&format!(
            "findings ({}):",
            r.findings.len() as u64 + r.findings_not_listed
        ))?;
        for f in &r.findings {
            let sev = match f.severity {
                core::Severity::Warning => "WARNING",
                core::Severity::Error => "ERROR",
                core::Severity::Critical => "CRITICAL",
            };
            let class = match f.class {
                core::FindingClass::Repairable => "repairable",
                core::FindingClass::NeedsReview => "needs_review",
                core::FindingClass::Advisory => "advisory",
            };
            out.line(&format!("  {sev:<8} {class:<12} {}  {}", f.id, f.message))?;
        }
        if r.findings_not_listed > 0 {
            out.line(&format!(
                "  … and {} more of the same kinds",
                r.findings_not_listed
            ))?;
        }
    }
    if let Some(rep) = &r.repair {
        out.line("repair:")?;
        for (name, written) in &rep.rebuilt {
            out.line(&format!("  rebuilt    p.{name} ({written} records)"))?;
        }
        for t in &rep.dropped {
            out.line(&format!("  dropped    {t}"))?;
        }
        for p in &rep.preserved {
            out.line(&format!("  preserved  {p}"))?;
        }
        for h in &rep.remains_for_human {
            out.line(&format!("  for review {h}"))?;
        }
        if let Some(seq) = rep.report_event_seq {
            out.line(&format!("  recorded   repair report as event {seq}"))?;
        }
        if let Some(f) = &rep.report_file {
            out.line(&format!("  report     {}", f.display()))?;
        }
        out.line(&format!("  next       {}", rep.next_action))?;
    }
    let verdict = match outcome {
        "needs_review" => "durable state is damaged and needs review (exit 3); `--repair` changes nothing while the log is damaged",
        "repairable" => "derived state is damaged, all of it repairable: run `syncd doctor --repair` (exit 1)",
        "repaired" => "derived state repaired from the log",
        _ => "healthy",
    };
    out.line(&format!("result: {verdict}"))
}

fn rebuild(cli: &Cli, home: &Path, a: &crate::cli::RebuildArgs) -> Result<u8, Failure> {
    let store = open(cli, home, false)?;
    let (head, _) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    let bar = progress(head, "events");
    let mut on_progress = |done: u64, total: u64| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    };
    let report = store.rebuild(&a.projections, &mut on_progress);
    bar.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(core::RebuildError::UnknownProjection { name, known }) => {
            return Err(Failure::usage(format!(
                "no projection named {name:?}; known: {known}"
            )))
        }
        Err(e) => return Err(Failure::store(&e)),
    };
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json(&report)?;
    } else {
        for (name, written) in &report.projections {
            out.line(&format!(
                "rebuilt p.{name}: {written} records from {} events",
                report.events
            ))?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

fn verify(cli: &Cli, home: &Path, a: &crate::cli::VerifyArgs) -> Result<u8, Failure> {
    let expect = match &a.expect_head {
        Some(h) => Some(
            core::Digest::parse(h).map_err(|e| Failure::usage(format!("--expect-head: {e}")))?,
        ),
        None => None,
    };
    let store = open(cli, home, false)?;
    let (head, _) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    let bar = progress(head, "events");
    let mut on_progress = |done: u64, total: u64| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    };
    let report = core::verify(&store, expect, &mut on_progress);
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure::store(&e))?;
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json(&report)?;
    } else {
        for d in &report.damage {
            out.line(&format!("damaged  {}  {}", d.id, d.message))?;
        }
        out.line(&format!(
            "{} events verified; head {} {}",
            report.events, report.head_seq, report.head_hash
        ))?;
        match report.expected_head_matches {
            Some(true) => out.line("head matches the expected hash")?,
            Some(false) => out.line("head DOES NOT match the expected hash")?,
            None => {}
        }
    }
    out.flush()?;
    if !report.damage.is_empty() {
        return Ok(exit::NEEDS_REVIEW);
    }
    // A different head means this log is not the one it was expected to
    // be: durable state for a person to look at, like damage.
    if report.expected_head_matches == Some(false) {
        return Ok(exit::NEEDS_REVIEW);
    }
    Ok(exit::OK)
}

fn drill(cli: &Cli, home: &Path, a: &crate::cli::DamageArgs) -> Result<u8, Failure> {
    let store = open(cli, home, false)?;
    let target = match a.mode {
        DamageMode::Garble => core::DamageTarget::Garble,
        DamageMode::Delete => core::DamageTarget::Delete,
        DamageMode::Add => core::DamageTarget::Add,
        DamageMode::Drop => core::DamageTarget::Drop,
        DamageMode::Outdated => core::DamageTarget::Outdate,
    };
    let done =
        core::damage(&store, &a.tree, target).map_err(|e| Failure::usage(crate::chain(&e)))?;
    close(store)?;
    let mut out = Out::new();
    out.line(&format!("drill: {done}; now run `syncd doctor`"))?;
    out.flush()?;
    Ok(exit::OK)
}

/// Maps a bundle error: bad or refused bundles are bad input (65), the rest
/// is the store's (4).
fn bundle_failure(e: &core::BundleError) -> Failure {
    let code = match e {
        core::BundleError::Invalid { .. } | core::BundleError::Refused { .. } => exit::DATA,
        core::BundleError::Io { .. } => exit::DATA,
        _ => exit::STORE,
    };
    Failure {
        code,
        message: crate::chain(e),
    }
}

fn export(cli: &Cli, home: &Path, a: &crate::cli::ExportArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let (head, _) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    let bar = progress(head.saturating_sub(a.since), "events");
    let mut on_progress = |done: u64, total: u64| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    };
    let manifest = core::export(&store, &a.out, a.since, &mut on_progress);
    bar.finish_and_clear();
    let manifest = manifest.map_err(|e| bundle_failure(&e))?;
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json(&manifest)?;
    } else {
        out.line(&format!(
            "exported events {}..={} ({} events) of {} to {}",
            manifest.first_seq,
            manifest.last_seq,
            manifest.event_count,
            manifest.source_device,
            a.out.display()
        ))?;
        out.line(&format!("  head     {}", manifest.head_hash))?;
        out.line(&format!("  content  {}", manifest.content_digest))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn import(cli: &Cli, home: &Path, a: &crate::cli::ImportArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let report = core::import(&store, &a.file);
    close(store)?;
    let report = report.map_err(|e| bundle_failure(&e))?;
    let mut out = Out::new();
    if a.json {
        out.json(&report)?;
    } else {
        out.line(&format!(
            "imported {} events from {}: {} appended, {} already here; head {}",
            report.events,
            report.source_device,
            report.appended,
            report.duplicates,
            report.head_seq
        ))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn restore(cli: &Cli, home: &Path, a: &crate::cli::RestoreArgs) -> Result<u8, Failure> {
    let (store, manifest) =
        core::restore(home, &a.file, options(cli, home, true)?).map_err(|e| bundle_failure(&e))?;
    let (head, hash) = store.head().map_err(|e| Failure {
        code: exit::STORE,
        message: e,
    })?;
    close(store)?;
    let mut out = Out::new();
    if a.json {
        out.json(&serde_json::json!({
            "home": home,
            "device": manifest.source_device,
            "profile": manifest.profile,
            "head_seq": head,
            "head_hash": hash.to_string(),
        }))?;
    } else {
        out.line(&format!(
            "restored {head} events of {} into {}",
            manifest.source_device,
            home.display()
        ))?;
        out.line(&format!("  head  {hash}"))?;
        out.line(&format!(
            "  prove it: syncd --home {} verify --expect-head {hash}",
            home.display()
        ))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn explain(cli: &Cli, home: &Path, a: &crate::cli::ExplainArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let answer = core::explain(&store, &a.object).map_err(|e| Failure::store(&e))?;
    close(store)?;
    let Some(x) = answer else {
        return Err(Failure {
            code: exit::DATA,
            message: format!("unknown object {}", a.object),
        });
    };
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&x)?;
        out.flush()?;
        return Ok(exit::OK);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    out.line(&format!(
        "{}  ({}, {}, version {})",
        x.object_id,
        opt(&x.object_type),
        x.state,
        x.version
    ))?;
    out.line(&format!(
        "  schema          {}{}",
        opt(&x.schema.schema_id),
        if x.schema.registered {
            ""
        } else {
            " (NOT registered)"
        }
    ))?;
    out.line(&format!("  created by      {}", x.created_by))?;
    out.line(&format!(
        "  last changed    by {} on {} (event {})",
        x.last_changed.actor, x.last_changed.device, x.last_changed.seq
    ))?;
    out.line(&format!(
        "  owner           {} / {}",
        x.owner_device,
        opt(&x.owner_profile)
    ))?;
    out.line(&format!(
        "  privacy         {}, visibility {}, retention {}",
        opt(&x.privacy_class),
        opt(&x.sync_visibility),
        opt(&x.retention_class)
    ))?;
    if x.sync_plan.may_sync {
        out.line(&format!(
            "  sync            allowed, scope {}",
            opt(&x.sync_plan.scope)
        ))?;
    } else {
        out.line("  sync            BLOCKED")?;
        for b in &x.sync_plan.blocked_by {
            out.line(&format!("    - {}: {}", b.code, b.reason))?;
        }
    }
    if let Some(d) = &x.policy_decision {
        let get = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
        out.line(&format!(
            "  policy          {} {} ({})",
            get("decision_id"),
            get("effect"),
            get("policy_id")
        ))?;
    }
    for c in &x.conflicts {
        let state = match (&c.selected_option, c.resolved_seq) {
            (Some(o), Some(_)) => format!("resolved: {o:?}").to_lowercase(),
            _ => format!("OPEN, recommended {:?}", c.recommended_option).to_lowercase(),
        };
        out.line(&format!(
            "  conflict        {} between {} on {} ({state})",
            c.conflict_id,
            c.actors.join(" and "),
            c.devices.join(" and ")
        ))?;
    }
    for r in &x.needs_human_review {
        out.line(&format!("  needs review    {r}"))?;
    }
    for r in &x.repairable_automatically {
        out.line(&format!("  repairable      {r}"))?;
    }
    out.line(&format!("  durable         {}", x.durability.durable))?;
    out.line(&format!("  rebuildable     {}", x.durability.rebuildable))?;
    out.line(&format!(
        "  restore proof   {}",
        x.restore_proof.verify_with
    ))?;
    out.flush()?;
    Ok(exit::OK)
}

/// Runs a listing command: reads the list from the store, which is closed
/// again before anything is printed whether or not the read succeeded,
/// then prints it as JSON, or one line per item (`empty` when there is
/// none).
pub(crate) fn listing<T: serde::Serialize>(
    cli: &Cli,
    home: &Path,
    json: bool,
    read: impl FnOnce(&core::Store) -> Result<Vec<T>, Failure>,
    line: impl Fn(&T) -> String,
    empty: Option<&str>,
) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let list = read(&store);
    close(store)?;
    let list = list?;
    let mut out = Out::new();
    if json {
        out.json_pretty(&list)?;
    } else {
        for item in &list {
            out.line(&line(item))?;
        }
        if let (true, Some(text)) = (list.is_empty(), empty) {
            out.line(text)?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

fn list_objects(cli: &Cli, home: &Path, a: &crate::cli::ListArgs) -> Result<u8, Failure> {
    listing(
        cli,
        home,
        a.json,
        |store| core::objects(store).map_err(|e| Failure::store(&e)),
        |o| {
            format!(
                "{:<32} {:<14} {:<10} {:<20} {:<8} {}",
                o.object_id,
                o.object_type.as_deref().unwrap_or("-"),
                o.state,
                o.version,
                if o.may_sync { "sync" } else { "BLOCKED" },
                o.last_modified_by
            )
        },
        None,
    )
}

fn list_records(
    cli: &Cli,
    home: &Path,
    a: &crate::cli::ListArgs,
    kind: core::RecordKind,
    id_field: &str,
) -> Result<u8, Failure> {
    listing(
        cli,
        home,
        a.json,
        |store| core::records(store, kind).map_err(|e| Failure::store(&e)),
        |r| {
            let id = r.get(id_field).and_then(|v| v.as_str()).unwrap_or("-");
            let name = r.get("display_name").and_then(|v| v.as_str()).unwrap_or("");
            let revoked = r.get("revoked").and_then(|v| v.as_bool()) == Some(true);
            format!(
                "{id:<36} {name}{}",
                if revoked { "  (revoked)" } else { "" }
            )
        },
        None,
    )
}

fn list_conflicts(cli: &Cli, home: &Path, a: &crate::cli::ListArgs) -> Result<u8, Failure> {
    listing(
        cli,
        home,
        a.json,
        |store| core::conflicts(store).map_err(|e| Failure::store(&e)),
        |c| {
            let state = match &c.selected_option {
                Some(o) => format!("resolved ({o:?})").to_lowercase(),
                None => format!("open, recommended {:?}", c.recommended_option).to_lowercase(),
            };
            format!(
                "{}  {}  {} vs {} on {}  {state}",
                c.conflict_id,
                c.object_id,
                c.actors.first().map_or("-", String::as_str),
                c.actors.get(1).map_or("-", String::as_str),
                c.devices.join(", ")
            )
        },
        None,
    )
}

fn txn(cli: &Cli, home: &Path, t: &TxnCommand) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let result = txn_inner(&store, t);
    close(store)?;
    result
}

fn txn_inner(store: &core::Store, t: &TxnCommand) -> Result<u8, Failure> {
    let mut out = Out::new();
    let (kind, id, actor, reason) = match t {
        TxnCommand::List(a) => {
            let list = core::transactions(store).map_err(|e| Failure::store(&e))?;
            if a.json {
                out.json_pretty(&list)?;
            } else {
                for x in &list {
                    out.line(&format!(
                        "{:<32} {:<9} by {}{}",
                        x.transaction_id,
                        format!("{:?}", x.status).to_lowercase(),
                        x.proposed_by,
                        x.policy_decision_ref
                            .as_deref()
                            .map(|d| format!("  ({d})"))
                            .unwrap_or_default()
                    ))?;
                }
            }
            out.flush()?;
            return Ok(exit::OK);
        }
        TxnCommand::Show(a) => {
            let x = core::transaction(store, &a.id).map_err(|e| Failure::store(&e))?;
            let Some(x) = x else {
                return Err(Failure {
                    code: exit::DATA,
                    message: format!("unknown transaction {}", a.id),
                });
            };
            out.json_pretty(&x)?;
            out.flush()?;
            return Ok(exit::OK);
        }
        TxnCommand::Approve(a) => ("agent.transaction.approved", &a.id, &a.actor, None),
        TxnCommand::Apply(a) => ("agent.transaction.applied", &a.id, &a.actor, None),
        TxnCommand::Reject(a) => (
            "agent.transaction.rejected",
            &a.id,
            &a.actor,
            Some(a.reason.clone()),
        ),
    };
    let usage = |e: core::InvalidValue| Failure::usage(e.to_string());
    let mut draft = core::EventDraft::new(
        core::ActorId::new(actor.as_str()).map_err(usage)?,
        core::EventKind::new(kind).map_err(usage)?,
    );
    let mut payload = serde_json::json!({ "transaction_id": id });
    if let (Some(r), Some(m)) = (reason, payload.as_object_mut()) {
        m.insert("reason".into(), r.into());
    }
    draft.payload = core::Payload::new(payload).map_err(usage)?;
    core::validate_kind(&mut draft).map_err(|e| Failure {
        code: exit::DATA,
        message: e,
    })?;
    match store.append(draft).map_err(|e| Failure::store(&e))? {
        core::AppendOutcome::Appended { seq, .. } => {
            out.line(&format!("{kind} {id} recorded as event {seq}"))?;
            out.flush()?;
            Ok(exit::OK)
        }
        core::AppendOutcome::Duplicate { seq, .. } => {
            out.line(&format!("already recorded as event {seq}"))?;
            out.flush()?;
            Ok(exit::OK)
        }
        core::AppendOutcome::Rejected { reason }
        | core::AppendOutcome::PolicyBlocked { reason, .. } => Err(Failure {
            code: exit::DATA,
            message: reason,
        }),
    }
}

fn evidence_add(home: &Path, a: &crate::cli::EvidenceAddArgs) -> Result<u8, Failure> {
    // Evidence belongs to a store: refuse a home without one rather than
    // create a stray directory.
    if !core::db_dir(home).join("conf").is_file() {
        return Err(Failure {
            code: exit::STORE,
            message: format!("no store at {}: run `syncd init` first", home.display()),
        });
    }
    let stored = core::put_evidence_file(home, &a.file).map_err(|e| Failure {
        code: match e {
            core::EvidenceError::Sync(_) => exit::STORE,
            _ => exit::DATA,
        },
        message: crate::chain(&e),
    })?;
    let mut out = Out::new();
    let r = stored.reference;
    if a.json {
        out.json(&serde_json::json!({
            "evidence_ref": r.to_string(),
            "path": r.path(home),
            "size_bytes": stored.size_bytes,
            "sha256": stored.sha256,
        }))?;
    } else {
        out.line(&r.to_string())?;
    }
    out.flush()?;
    Ok(exit::OK)
}
