//! Replication settings: `[replication]` in `HOME/config.toml`.
//!
//! ```toml
//! [replication]
//! enabled = true                      # off by default
//! servers = ["nats://10.0.0.2:4222"]  # one server or a cluster, at most 16
//! credentials_file = "/home/me/.config/nats/syncd.creds"
//! tls_ca_file = "ca.pem"              # trust servers signed by this CA too
//! tls_cert_file = "device.pem"        # a client certificate, with its key,
//! tls_key_file = "device-key.pem"     # for servers that verify clients
//! stream = "SYNCD"                    # JetStream stream name
//! stream_replicas = 1                 # 1, or 3 on a cluster
//! stale_after_seconds = 3600          # a peer not heard from for longer is stale
//! interval_ms = 1000                  # the daemon's pause between passes
//! ```
//!
//! Relative file names are under the home. Any `tls_*` key makes TLS
//! required: a server that does not offer it is not used in plain text.
//!
//! Other sections of the file belong to their own owners and are ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Servers listed at most.
pub const MAX_SERVERS: usize = 16;
/// Longest staleness accepted, in seconds (30 days).
pub const MAX_STALE_AFTER_SECONDS: u64 = 30 * 24 * 3600;
/// Staleness when the file does not set one, in seconds.
pub const DEFAULT_STALE_AFTER_SECONDS: u64 = 3600;
/// The daemon's pause between passes when the file does not set one.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Shortest and longest pause between passes accepted, in milliseconds.
pub const INTERVAL_MS_RANGE: (u64, u64) = (50, 3_600_000);
/// Stream name when the file does not set one.
pub const DEFAULT_STREAM: &str = "SYNCD";

/// The replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Replication runs only when enabled (or servers are given for one run).
    pub enabled: bool,
    /// Server URLs (`nats://` or `tls://`, host and port).
    pub servers: Vec<String>,
    /// NATS credentials file, when the servers need one.
    pub credentials_file: Option<PathBuf>,
    /// Certificate authorities (PEM) trusted for the servers' certificates,
    /// besides the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The JetStream stream.
    pub stream: String,
    /// Replicas of the stream: 1, or 3 on a cluster.
    pub stream_replicas: usize,
    /// After how long without news a peer is stale.
    pub stale_after_seconds: u64,
    /// The daemon's pause between replication passes.
    pub interval_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            servers: Vec::new(),
            credentials_file: None,
            tls_ca_file: None,
            tls_client: None,
            stream: DEFAULT_STREAM.to_owned(),
            stream_replicas: 1,
            stale_after_seconds: DEFAULT_STALE_AFTER_SECONDS,
            interval_ms: DEFAULT_INTERVAL_MS,
        }
    }
}

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file or a value in it is invalid.
    #[error("{path}: [replication] {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    replication: Option<Section>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    servers: Option<Vec<String>>,
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    stream_replicas: Option<usize>,
    #[serde(default)]
    stale_after_seconds: Option<u64>,
    #[serde(default)]
    interval_ms: Option<u64>,
}

/// Checks one server URL: `nats://` or `tls://`, then a host and a port.
pub fn check_server(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("server {url:?} must start with nats:// or tls://"))?;
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("server {url:?} must name a port (host:port)"))?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("server {url:?} has no usable host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("server {url:?} has no usable port")),
    }
}

/// Checks a stream name: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn check_stream(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "stream {name:?} must be 1 to 64 ASCII letters, digits, - or _"
        ));
    }
    Ok(())
}

impl ReplicationConfig {
    /// Loads the `[replication]` section of `HOME/config.toml`; a missing
    /// file or section is the default (replication off).
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let mut c = sourceos_syncd::load_settings(
            home,
            sourceos_syncd::CONFIG_FILE,
            Self::parse,
            |path, source| ConfigError::Read { path, source },
            |path, reason| ConfigError::Invalid { path, reason },
        )?;
        c.resolve_under(home);
        Ok(c)
    }

    /// Makes relative file names absolute under `home`: a daemon started
    /// by a service manager does not run in the home.
    fn resolve_under(&mut self, home: &Path) {
        let under = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = home.join(&*p);
            }
        };
        if let Some(p) = &mut self.credentials_file {
            under(p);
        }
        if let Some(p) = &mut self.tls_ca_file {
            under(p);
        }
        if let Some((cert, key)) = &mut self.tls_client {
            under(cert);
            under(key);
        }
    }

    /// Whether TLS is asked for (by a `tls_*` setting).
    pub fn tls_required(&self) -> bool {
        self.tls_ca_file.is_some() || self.tls_client.is_some()
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Self::default();
        let Some(s) = file.replication else {
            return Ok(c);
        };
        c.enabled = s.enabled.unwrap_or(false);
        if let Some(servers) = s.servers {
            c.set_servers(servers)?;
        }
        c.credentials_file = s.credentials_file;
        c.tls_ca_file = s.tls_ca_file;
        c.tls_client = match (s.tls_cert_file, s.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(
                    "tls_cert_file and tls_key_file go together: give both or neither".into(),
                )
            }
        };
        if let Some(stream) = s.stream {
            check_stream(&stream)?;
            c.stream = stream;
        }
        if let Some(r) = s.stream_replicas {
            if r != 1 && r != 3 {
                return Err(format!("stream_replicas is {r}; it must be 1 or 3"));
            }
            c.stream_replicas = r;
        }
        if let Some(t) = s.stale_after_seconds {
            if t == 0 || t > MAX_STALE_AFTER_SECONDS {
                return Err(format!(
                    "stale_after_seconds is {t}; it must be 1 to {MAX_STALE_AFTER_SECONDS}"
                ));
            }
            c.stale_after_seconds = t;
        }
        if let Some(ms) = s.interval_ms {
            let (lo, hi) = INTERVAL_MS_RANGE;
            if !(lo..=hi).contains(&ms) {
                return Err(format!("interval_ms is {ms}; it must be {lo} to {hi}"));
            }
            c.interval_ms = ms;
        }
        if c.enabled && c.servers.is_empty() {
            return Err("enabled = true needs at least one entry in servers".into());
        }
        Ok(c)
    }

    /// Replaces the servers (checked), e.g. from `--nats URL[,URL...]`.
    pub fn set_servers(&mut self, servers: Vec<String>) -> Result<(), String> {
        if servers.is_empty() || servers.len() > MAX_SERVERS {
            return Err(format!("servers must list 1 to {MAX_SERVERS} URLs"));
        }
        for s in &servers {
            check_server(s)?;
        }
        self.servers = servers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bounds_and_errors() {
        let c = ReplicationConfig::parse("").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.stream, "SYNCD");
        assert_eq!(c.stream_replicas, 1);
        let c = ReplicationConfig::parse(
            "[orphans]\nttl_seconds = 5\n[replication]\nenabled = true\nservers = [\"nats://127.0.0.1:4222\", \"tls://n2:4223\"]\nstream_replicas = 3\n",
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.stream_replicas, 3);
        for bad in [
            "[replication]\nenabled = true\n",
            "[replication]\nservers = [\"http://x:1\"]\n",
            "[replication]\nservers = [\"nats://x\"]\n",
            "[replication]\nservers = [\"nats://x:0\"]\n",
            "[replication]\nservers = []\n",
            "[replication]\nstream_replicas = 2\n",
            "[replication]\nstream = \"a.b\"\n",
            "[replication]\nstale_after_seconds = 0\n",
            "[replication]\ninterval_ms = 10\n",
            "[replication]\nserver = [\"nats://x:1\"]\n",
            "[replication]\ntls_cert_file = \"c.pem\"\n",
            "[replication]\ntls_key_file = \"k.pem\"\n",
        ] {
            assert!(ReplicationConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_files_are_read_and_relative_names_are_under_the_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join(sourceos_syncd::CONFIG_FILE),
            "[replication]\ncredentials_file = \"syncd.creds\"\ntls_ca_file = \"/etc/ca.pem\"\ntls_cert_file = \"d.pem\"\ntls_key_file = \"d-key.pem\"\n",
        )
        .unwrap();
        let c = ReplicationConfig::load(home.path()).unwrap();
        assert_eq!(c.credentials_file, Some(home.path().join("syncd.creds")));
        assert_eq!(c.tls_ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            c.tls_client,
            Some((home.path().join("d.pem"), home.path().join("d-key.pem")))
        );
        assert!(c.tls_required());
        assert!(!ReplicationConfig::default().tls_required());
    }
}
