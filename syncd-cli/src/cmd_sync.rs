//! `syncd sync`: one replication pass (publish, then receive) over NATS
//! JetStream. Argument checking, the runtime and rendering only; the work
//! is in `sourceos_syncd_adapters::replication`.

use std::path::Path;

use serde::Serialize;
use sourceos_syncd as core;
use sourceos_syncd_adapters::replication::{
    Confirmed, PeerReport, PublishReport, ReplicationConfig, ReplicationError, Replicator,
};

use crate::cli::{Cli, SyncArgs};
use crate::output::Out;
use crate::{exit, Failure};

/// What one pass did.
#[derive(Debug, Serialize)]
struct SyncReport {
    device: String,
    profile: String,
    published: PublishReport,
    peers: Vec<PeerReport>,
}

fn replication_failure(e: &ReplicationError) -> Failure {
    let code = match e {
        ReplicationError::Unreachable { .. } => exit::UNAVAILABLE,
        ReplicationError::Store(_) => exit::STORE,
        ReplicationError::Credentials { .. }
        | ReplicationError::TlsFile { .. }
        | ReplicationError::Stream { .. } => exit::USAGE,
        _ => exit::DATA,
    };
    Failure {
        code,
        message: crate::chain(e),
    }
}

/// Runs `syncd sync`.
pub fn sync(cli: &Cli, home: &Path, a: &SyncArgs) -> Result<u8, Failure> {
    let mut config = ReplicationConfig::load(home).map_err(|e| Failure::store(&e))?;
    if !a.nats.is_empty() {
        config
            .set_servers(a.nats.clone())
            .map_err(|e| Failure::usage(format!("--nats: {e}")))?;
        config.enabled = true;
    }
    if !config.enabled {
        return Err(Failure::usage(
            "replication is off: set [replication] enabled = true and servers in HOME/config.toml, or pass --nats URL",
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::store(&e))?;
    // Where earlier passes got to (holes after it are published again).
    // An unreadable file only loses that hint.
    let confirmed = confirmed_by_earlier_passes(home);
    let store = crate::commands::open(cli, home, true)?;
    let result = runtime.block_on(async {
        let r = Replicator::connect(store.clone(), &config).await?;
        let published = r.publish(confirmed).await?;
        let peers = if a.publish_only {
            Vec::new()
        } else {
            r.receive().await?
        };
        Ok::<_, ReplicationError>((published, peers))
    });
    let meta = store.meta().clone();
    let now = store.now();
    crate::commands::close(store)?;
    record_observations(home, &config, now, &result)?;
    let (published, peers) = result.map_err(|e| replication_failure(&e))?;
    let report = SyncReport {
        device: meta.device.to_string(),
        profile: meta.profile.to_string(),
        published,
        peers,
    };
    render(&report, a.json)?;
    let troubled = report
        .peers
        .iter()
        .any(|p| !p.refused.is_empty() || p.missing.is_some());
    Ok(if troubled { exit::DATA } else { exit::OK })
}

/// What earlier passes confirmed of this device's log in the stream, as
/// `HOME/replication/peers.json` records it (nothing when it cannot be
/// read: the next pass then trusts only what the stream holds).
pub(crate) fn confirmed_by_earlier_passes(home: &Path) -> Option<Confirmed> {
    let file = core::PeersFile::load(home).ok().flatten()?;
    Some(Confirmed {
        through: file.published_through?,
        last_message: file.published_last_message,
    })
}

/// What a pass's result says earlier passes confirmed, for the next one;
/// `None` when it says nothing new (it failed before publishing).
pub(crate) fn confirmed_after(
    result: &Result<(PublishReport, Vec<PeerReport>), ReplicationError>,
) -> Option<Confirmed> {
    match result {
        Ok((published, _)) => Some(Confirmed {
            through: published.confirmed_seq,
            last_message: published.last_message,
        }),
        Err(ReplicationError::PublishInterrupted { confirmed_seq, .. }) => Some(Confirmed {
            through: *confirmed_seq,
            last_message: None,
        }),
        Err(_) => None,
    }
}

/// Updates `HOME/replication/peers.json` with what this pass observed, so
/// that `syncd peers` and `syncd status` can tell staleness and offline
/// operation without a server.
pub(crate) fn record_observations(
    home: &Path,
    config: &ReplicationConfig,
    now: core::Timestamp,
    result: &Result<(PublishReport, Vec<PeerReport>), ReplicationError>,
) -> Result<(), Failure> {
    // A damaged file holds only observations: it is replaced.
    let mut file = core::PeersFile::load(home)
        .ok()
        .flatten()
        .unwrap_or_default();
    let at = now.to_string();
    file.last_attempt_at = Some(at.clone());
    file.stale_after_seconds = config.stale_after_seconds;
    if let Some(c) = confirmed_after(result) {
        file.published_through = Some(c.through);
        file.published_last_message = c.last_message;
    }
    match result {
        Err(e @ ReplicationError::Unreachable { .. }) => {
            file.last_attempt_reached_server = false;
            file.last_error = Some(crate::chain(e));
        }
        Err(e) => {
            file.last_attempt_reached_server = true;
            file.last_error = Some(crate::chain(e));
        }
        Ok((_, peers)) => {
            file.last_attempt_reached_server = true;
            file.last_error = None;
            for p in peers {
                let in_sync = p.lag == 0 && p.refused.is_empty() && p.missing.is_none();
                let entry = match file.peers.iter_mut().find(|s| s.device == p.device) {
                    Some(e) => e,
                    None => {
                        if file.peers.len() >= core::MAX_PEERS_KEPT {
                            continue;
                        }
                        file.peers.push(core::PeerState {
                            device: p.device.clone(),
                            applied_through: 0,
                            stream_head: 0,
                            lag: 0,
                            last_sync_at: at.clone(),
                            last_confirmed_at: None,
                            last_received_at: None,
                            refused_total: 0,
                            missing: None,
                        });
                        match file.peers.last_mut() {
                            Some(e) => e,
                            None => continue,
                        }
                    }
                };
                entry.applied_through = p.applied_through;
                entry.stream_head = p.stream_head;
                entry.lag = p.lag;
                entry.last_sync_at = at.clone();
                entry.missing = p.missing;
                entry.refused_total = entry.refused_total.saturating_add(p.refused.len() as u64);
                if in_sync {
                    entry.last_confirmed_at = Some(at.clone());
                }
                if p.appended > 0 {
                    entry.last_received_at = Some(at.clone());
                }
            }
            file.peers.sort_by(|a, b| a.device.cmp(&b.device));
        }
    }
    file.save(home).map_err(|e| Failure::store(&e))
}

/// Runs `syncd peers`.
pub fn peers(cli: &Cli, home: &Path, a: &crate::cli::ListArgs) -> Result<u8, Failure> {
    let config = ReplicationConfig::load(home).map_err(|e| Failure::store(&e))?;
    let store = crate::commands::open(cli, home, false)?;
    let now = store.now();
    crate::commands::close(store)?;
    let file = core::PeersFile::load(home).map_err(|e| Failure::store(&e))?;
    #[derive(Serialize)]
    struct PeerView<'a> {
        #[serde(flatten)]
        state: &'a core::PeerState,
        stale: bool,
    }
    #[derive(Serialize)]
    struct PeersView<'a> {
        replication_enabled: bool,
        last_attempt_at: Option<&'a str>,
        reached_server: bool,
        last_error: Option<&'a str>,
        stale_after_seconds: u64,
        peers: Vec<PeerView<'a>>,
    }
    let empty = core::PeersFile::default();
    let f = file.as_ref().unwrap_or(&empty);
    let view = PeersView {
        replication_enabled: config.enabled,
        last_attempt_at: f.last_attempt_at.as_deref(),
        reached_server: f.last_attempt_reached_server,
        last_error: f.last_error.as_deref(),
        stale_after_seconds: f.stale_after_seconds,
        peers: f
            .peers
            .iter()
            .map(|p| PeerView {
                state: p,
                stale: f.is_stale(p, now),
            })
            .collect(),
    };
    let mut out = Out::new();
    if a.json {
        out.json_pretty(&view)?;
        out.flush()?;
        return Ok(exit::OK);
    }
    match &f.last_attempt_at {
        None => out.line("no replication pass yet (syncd sync)")?,
        Some(at) if !f.last_attempt_reached_server => out.line(&format!(
            "last pass {at}: no server reachable, working offline ({})",
            f.last_error.as_deref().unwrap_or("")
        ))?,
        Some(at) => out.line(&format!("last pass {at}"))?,
    }
    for p in &view.peers {
        out.line(&format!(
            "{}  applied through {} of {} (lag {})  last in sync {}  last received {}{}{}",
            p.state.device,
            p.state.applied_through,
            p.state.stream_head,
            p.state.lag,
            p.state.last_confirmed_at.as_deref().unwrap_or("never"),
            p.state.last_received_at.as_deref().unwrap_or("never"),
            if p.stale { "  STALE" } else { "" },
            p.state
                .missing
                .map(|m| format!("  missing position {m}"))
                .unwrap_or_default()
        ))?;
    }
    out.flush()?;
    Ok(exit::OK)
}

fn render(r: &SyncReport, json: bool) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(r)?;
        out.flush()?;
        return Ok(());
    }
    let p = &r.published;
    if p.from_seq == 0 && p.confirmed_seq == 0 {
        out.line(&format!(
            "published: nothing; {} has no events yet",
            r.device
        ))?;
    } else if p.from_seq == 0 {
        out.line(&format!(
            "published: nothing new; the stream holds {} through event {}",
            r.device, p.confirmed_seq
        ))?;
    } else {
        let withheld: Vec<String> = p.withheld.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.line(&format!(
            "published: events {}..{} of {}: {} sent whole, {} as positions only{}",
            p.from_seq,
            p.confirmed_seq,
            r.device,
            p.events,
            p.withheld.values().sum::<u64>(),
            if withheld.is_empty() {
                String::new()
            } else {
                format!(" ({})", withheld.join(", "))
            }
        ))?;
        if let Some(first) = p.restored_from {
            out.line(&format!(
                "the stream had lost events it confirmed, from event {first}: published again"
            ))?;
        }
        if p.already_in_stream > 0 {
            out.line(&format!(
                "{} of them the stream already held",
                p.already_in_stream
            ))?;
        }
    }
    for peer in &r.peers {
        out.line(&format!(
            "peer {}: applied through {} of {} (lag {}): {} appended, {} already here, {} positions only{}",
            peer.device,
            peer.applied_through,
            peer.stream_head,
            peer.lag,
            peer.appended,
            peer.duplicates,
            peer.stubs,
            if peer.refilled > 0 {
                format!(", {} refilled", peer.refilled)
            } else {
                String::new()
            }
        ))?;
        for refusal in &peer.refused {
            out.line(&format!(
                "  refused message {} (position {}): {}",
                refusal.stream_seq,
                refusal
                    .seq
                    .map_or_else(|| "unreadable".to_owned(), |s| s.to_string()),
                refusal.reason
            ))?;
        }
        if let Some(m) = peer.missing {
            out.line(&format!(
                "  position {m} is missing from the stream; it waits until the peer publishes it again"
            ))?;
        }
    }
    if r.peers.is_empty() {
        out.line("no other device of this profile has published")?;
    }
    out.flush()?;
    Ok(())
}
