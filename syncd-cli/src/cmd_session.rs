//! `syncd sessions`, `syncd session ID` and `syncd orphans [sweep]`: the
//! session DAG, its turns and the orphan queue. Argument checking and
//! rendering only; the work is in the core's `session_dag`.
//!
//! Exit 0 on success, 2 for bad arguments (a TTL out of range), 4 when the
//! store or its configuration cannot be read, 65 for an unknown session or
//! when a sweep could not quarantine an expired orphan.

use std::path::Path;

use sourceos_syncd as core;

use crate::cli::{Cli, ListArgs, OrphansArgs, OrphansCommand, SessionArgs, SweepArgs};
use crate::output::Out;
use crate::{exit, Failure};

fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn keys(k: &core::CorrelationKeys) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("conversation", &k.conversation_id),
        ("parent", &k.parent_id),
        ("workspace", &k.workspace_ref),
        ("task", &k.task_ref),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

fn lease(s: &core::SessionView) -> String {
    match (s.lease_epoch, &s.lease_holder) {
        (Some(e), Some(h)) => format!("epoch {e} ({h})"),
        (Some(e), None) => format!("epoch {e}"),
        _ => "no lease".to_owned(),
    }
}

/// Runs `syncd sessions`.
pub fn sessions(cli: &Cli, home: &Path, a: &ListArgs) -> Result<u8, Failure> {
    crate::commands::listing(
        cli,
        home,
        a.json,
        |store| core::sessions(store).map_err(|e| Failure::store(&e)),
        |s| {
            format!(
                "{}  {}  {} turn(s), {} live  {}  {} event(s)  opened {} by {}",
                s.session_ref,
                s.state,
                s.turns,
                s.live_turns,
                lease(s),
                s.events,
                s.opened_at,
                s.opened_by
            )
        },
        Some("no sessions"),
    )
}

/// Runs `syncd session ID`.
pub fn session(cli: &Cli, home: &Path, a: &SessionArgs) -> Result<u8, Failure> {
    if a.id.is_empty() {
        return Err(Failure::usage("the session id must not be empty"));
    }
    let store = crate::commands::open(cli, home, true)?;
    let found = core::session(&store, &a.id).map_err(|e| Failure::store(&e));
    crate::commands::close(store)?;
    let Some(d) = found? else {
        return Err(Failure {
            code: exit::DATA,
            message: format!("unknown session {}", core::session_ref(&a.id)),
        });
    };
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&d)?;
        out.flush()?;
        return Ok(exit::OK);
    }
    let s = &d.session;
    out.line(&format!("{}  ({})", s.session_ref, s.state))?;
    out.line(&format!("  dag node        {}", s.dag_node_ref))?;
    out.line(&format!("  correlation     {}", keys(&s.correlation_keys)))?;
    out.line(&format!("  writer lease    {}", lease(s)))?;
    out.line(&format!(
        "  opened          {} by {} on {} (event {})",
        s.opened_at, s.opened_by, s.origin_device, s.opened_seq
    ))?;
    if let Some(at) = &s.closed_at {
        out.line(&format!(
            "  closed          {at}{}",
            s.close_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))?;
    }
    out.line(&format!(
        "  events          {} attached, {} from stale epochs, {} refused by the rules",
        s.events, s.stale_events, s.ignored_events
    ))?;
    out.line(&format!(
        "  turns           {} ({} live)",
        s.turns, s.live_turns
    ))?;
    for t in &d.turns {
        let outcome = t.outcome.map_or("-", |o| o.as_str());
        out.line(&format!(
            "    {}  {}  outcome {}",
            t.turn_id,
            t.state.as_str(),
            outcome
        ))?;
        if t.steps_dropped > 0 {
            out.line(&format!("      ({} older moves not kept)", t.steps_dropped))?;
        }
        for step in &t.steps {
            out.line(&format!(
                "      {:>8}  {} -> {}  {} by {}{}{}",
                step.seq,
                step.event.kind(),
                step.to.as_str(),
                step.at,
                step.actor,
                step.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                if step.recovered {
                    "  (recovered orphan)"
                } else {
                    ""
                }
            ))?;
        }
    }
    out.line(&format!(
        "  recovered       {} orphan(s)",
        d.recovered_orphans.len()
    ))?;
    for r in &d.recovered_orphans {
        out.line(&format!("    {r}"))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn config(home: &Path) -> Result<core::OrphanConfig, Failure> {
    core::OrphanConfig::load(home).map_err(|e| Failure::store(&e))
}

/// Runs `syncd orphans` and `syncd orphans sweep`.
pub fn orphans(cli: &Cli, home: &Path, a: &OrphansArgs) -> Result<u8, Failure> {
    match &a.command {
        Some(OrphansCommand::Sweep(s)) => sweep(cli, home, s),
        None => list(cli, home, a.json),
    }
}

fn list(cli: &Cli, home: &Path, json: bool) -> Result<u8, Failure> {
    let ttl = config(home)?.ttl_seconds;
    let store = crate::commands::open(cli, home, true)?;
    let now = store.now();
    let found = core::orphans(&store, ttl, now).map_err(|e| Failure::store(&e));
    crate::commands::close(store)?;
    let found = found?;
    let mut out = Out::new();
    if json {
        let receipts: Vec<&core::OrphanEventReceipt> = found.iter().map(|o| &o.receipt).collect();
        out.json_pretty(&receipts)?;
        out.flush()?;
        return Ok(exit::OK);
    }
    for o in &found {
        let r = &o.receipt;
        let res = &r.session_resolution;
        let detail = match res.state {
            "recovered" => format!("into {}", opt(res.recovered_session_ref.as_deref())),
            "quarantined" => format!(
                "at {}{}",
                opt(res.quarantined_at.as_deref()),
                o.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ),
            "discarded_duplicate" => o.reason.clone().unwrap_or_default(),
            _ => format!(
                "expires {}{}",
                r.ttl.expires_at,
                if r.ttl.expired {
                    " (expired: run `syncd orphans sweep`)"
                } else {
                    ""
                }
            ),
        };
        out.line(&format!(
            "{:>8}  {}  {}  {}  named {}  {}",
            o.seq, r.event_ref, res.state, o.kind, o.named_session, detail
        ))?;
    }
    if found.is_empty() {
        out.line("no orphans")?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn sweep(cli: &Cli, home: &Path, a: &SweepArgs) -> Result<u8, Failure> {
    let ttl = match a.ttl {
        Some(t) if t == 0 || t > core::MAX_ORPHAN_TTL_SECONDS => {
            return Err(Failure::usage(format!(
                "--ttl {t}: out of range (1 to {} seconds)",
                core::MAX_ORPHAN_TTL_SECONDS
            )))
        }
        Some(t) => t,
        None => config(home)?.ttl_seconds,
    };
    let store = crate::commands::open(cli, home, true)?;
    let report = core::sweep(&store, ttl);
    crate::commands::close(store)?;
    let report = report.map_err(|e| match e {
        core::SessionDagError::BadTtl(_) => Failure::usage(crate::chain(&e)),
        other => Failure::store(&other),
    })?;
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&report)?;
    } else {
        out.line(&format!(
            "swept at {} with a TTL of {} s: {} examined, {} quarantined, {} still queued",
            report.swept_at,
            report.ttl_seconds,
            report.examined,
            report.quarantined.len(),
            report.still_queued
        ))?;
        for q in &report.quarantined {
            out.line(&format!(
                "  quarantined {}  expired {}  decision {} (event {})",
                q.event_ref, q.expires_at, q.decision_id, q.decision_seq
            ))?;
        }
        for r in &report.refused {
            out.line(&format!("  not quarantined {}: {}", r.event_ref, r.reason))?;
        }
    }
    out.flush()?;
    // An expired orphan left queued is something a person must look at.
    if report.refused.is_empty() {
        Ok(exit::OK)
    } else {
        Ok(exit::DATA)
    }
}
