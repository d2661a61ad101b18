//! `syncd lifecycle`: the daemon's lifecycle state and recent history, as
//! recorded in the log. In the JSON form `current` and each entry of
//! `history` are upstream `HostRuntimeLifecycleState` documents (our own
//! states mapped to the nearest upstream state); `native` keeps our states,
//! the events that moved them, and the latest shutdown's step outcomes.

use std::path::Path;

use sourceos_syncd as core;

use crate::cli::{Cli, LifecycleArgs};
use crate::commands::{close, open};
use crate::output::Out;
use crate::{exit, Failure};

/// The JSON form: upstream documents plus syncd's own view.
pub(crate) fn document(view: &core::LifecycleView, device: &str) -> serde_json::Value {
    serde_json::json!({
        "current": view.current.as_ref().map(|c| c.upstream_document(device)),
        "history": view
            .history
            .iter()
            .map(|r| r.upstream_document(device))
            .collect::<Vec<_>>(),
        "native": {
            "state": view.state().as_str(),
            "transitions": view.transitions,
            "history": view.history,
            "shutdown_run": view.shutdown_run,
            "shutdown_steps": view.shutdown_steps,
        },
    })
}

pub(crate) fn lifecycle(cli: &Cli, home: &Path, a: &LifecycleArgs) -> Result<u8, Failure> {
    let store = open(cli, home, true)?;
    let view = core::lifecycle(&store).map_err(|e| Failure::store(&e));
    let device = store.meta().device.to_string();
    close(store)?;
    let view = view?;
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&document(&view, &device))?;
    } else {
        out.line(&format!(
            "lifecycle  {} ({} moves recorded)",
            view.state().as_str(),
            view.transitions
        ))?;
        for r in &view.history {
            let t = &r.transition;
            out.line(&format!(
                "  {:>8}  {}  {:<22} -> {:<22} {}{}",
                r.seq,
                r.at,
                t.from.as_str(),
                t.to.as_str(),
                t.event.as_str(),
                t.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ))?;
        }
        if let Some(run) = &view.shutdown_run {
            out.line(&format!("latest shutdown ({run}):"))?;
            for s in &view.shutdown_steps {
                out.line(&format!(
                    "  {:<20} {:<34} {:>6} ms (timeout {} ms){}",
                    s.step.step,
                    s.step.outcome.as_str(),
                    s.step.duration_ms,
                    s.step.timeout_ms,
                    s.step
                        .reason
                        .as_deref()
                        .map(|x| format!(" {x}"))
                        .unwrap_or_default()
                ))?;
            }
        }
    }
    out.flush()?;
    Ok(exit::OK)
}
