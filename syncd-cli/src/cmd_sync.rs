//! `syncd sync`: one replication pass (publish, then receive) over NATS
//! JetStream. Argument checking, the runtime and rendering only; the work
//! is in `sourceos_syncd_adapters::replication`.

use std::path::Path;

use serde::Serialize;
use sourceos_syncd_adapters::replication::{
    PeerReport, PublishReport, ReplicationConfig, ReplicationError, Replicator,
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
        ReplicationError::Credentials { .. } => exit::USAGE,
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
    let store = crate::commands::open(cli, home, true)?;
    let result = runtime.block_on(async {
        let r = Replicator::connect(store.clone(), &config).await?;
        let published = r.publish().await?;
        let peers = if a.publish_only {
            Vec::new()
        } else {
            r.receive().await?
        };
        Ok::<_, ReplicationError>((published, peers))
    });
    let meta = store.meta().clone();
    crate::commands::close(store)?;
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

fn render(r: &SyncReport, json: bool) -> Result<(), Failure> {
    let mut out = Out::new();
    if json {
        out.json_pretty(r)?;
        out.flush()?;
        return Ok(());
    }
    let p = &r.published;
    if p.from_seq == 0 {
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
