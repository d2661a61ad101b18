//! Command-line arguments, parsed by clap into typed commands before any
//! work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// syncd: the state integrity service of SourceOS.
///
/// An append-only, hash-chained event log is the only source of truth;
/// everything else is derived from it and can be rebuilt. Exit codes: 0
/// success, 1 doctor found repairable damage, 2 usage error, 3 doctor found
/// durable damage, 4 store cannot be opened or read, 65 ingest rejected
/// lines.
#[derive(Debug, Parser)]
#[command(name = "syncd", version, about, long_about)]
pub struct Cli {
    /// Home directory of the store [default: $SYNCD_HOME, else
    /// $XDG_DATA_HOME/sourceos-syncd, else ~/.local/share/sourceos-syncd].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Upper bound of the storage engine's page cache, in MiB.
    #[arg(long, global = true, default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(8..=65536))]
    pub cache_mib: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty store in the home directory.
    Init(InitArgs),
    /// Append events from JSON Lines (stdin, or --file); one JSON result
    /// line per input line, printed once the event is durable.
    Ingest(IngestArgs),
    /// Show events, oldest first.
    Log(LogArgs),
    /// Show the state of the store (health, head, projections; with a
    /// daemon, its ingest lanes: depths, capacities, shed and deferred
    /// events).
    Status(StatusArgs),
    /// Check the log and all derived state; with --repair, rebuild damaged
    /// derived state from the log.
    Doctor(DoctorArgs),
    /// Drop and refold projections from the log.
    Rebuild(RebuildArgs),
    /// Verify the whole hash chain and print the head hash. Exit 3 when the
    /// chain is damaged or the head differs from --expect-head.
    Verify(VerifyArgs),
    /// Answer everything about one object: what it is, its schema, who last
    /// changed it, owner, whether it may sync and why not, conflicts, what
    /// is repairable, what needs review, durability, restore proof.
    Explain(ExplainArgs),
    /// List objects.
    Objects(ListArgs),
    /// List actors.
    Actors(ListArgs),
    /// List schemas.
    Schemas(ListArgs),
    /// List devices.
    Devices(ListArgs),
    /// List profiles.
    Profiles(ListArgs),
    /// List conflicts with their decision cards.
    Conflicts(ListArgs),
    /// Agent object transactions: list, show, approve, reject, apply.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Write events to a self-verifying bundle (all, or those after --since).
    Export(ExportArgs),
    /// Append a peer's bundle; events keep their origin; re-importing is a
    /// no-op. Exit 65 when the bundle is invalid or refused.
    Import(ImportArgs),
    /// Recreate a store from a full bundle in an empty home, byte for byte.
    Restore(RestoreArgs),
    /// Fault-injection drills for practising recovery (derived state only).
    #[command(subcommand)]
    Drill(DrillCommand),
    /// Record the files of a workspace directory as objects (path, size,
    /// blake3); later runs record only what changed. Exit 65 when the store
    /// refused some changes or the directory holds too many files.
    Track(TrackArgs),
    /// Classify what a path is to Git (not a repository, repository root,
    /// inside a working tree or a Git directory, bare, no remote, detached,
    /// corrupt, permission denied) before any Git command runs there, as a
    /// GitWorkspaceState document; the path itself is never printed or
    /// stored, only its sha256 digest and a redacted hint.
    GitState(GitStateArgs),
    /// List sessions: state, writer lease epoch, turns, recovered orphans.
    Sessions(ListArgs),
    /// A live terminal dashboard of the daemon: health, lifecycle, lanes,
    /// peers, conflicts, orphans and recent events, fed by its event
    /// stream; it resumes after a daemon restart. Tab moves between
    /// panels, arrows scroll the events, q leaves.
    Top(TopArgs),
    /// Show one session (`urn:srcos:session:<id>` or the bare id): its
    /// correlation keys, writer lease, every turn with its moves and
    /// outcome, and the orphans recovered into it. Exit 65 when the
    /// session is unknown.
    Session(SessionArgs),
    /// Events that named a session syncd did not know, as SourceOS
    /// OrphanEventReceipt documents (queued, recovered, quarantined,
    /// discarded_duplicate); `orphans sweep` quarantines the queued ones
    /// whose TTL has passed (a running daemon also sweeps every
    /// `[orphans] sweep_interval_ms` of HOME/config.toml).
    Orphans(OrphansArgs),
    /// One replication pass over NATS JetStream: publish this device's
    /// log after what the stream holds (objects that must stay on this
    /// device are sent as chain positions only), then append what the
    /// other devices of the profile published, verifying every link.
    /// Servers come from [replication] in HOME/config.toml, or --nats.
    /// Exit 69 when no server is reachable (local work is unaffected), 65
    /// when a received message was refused or a gap could not be refilled.
    Sync(SyncArgs),
    /// What the last replication passes observed of each peer: applied
    /// position, lag, when last in sync and last received, stale after
    /// [replication] stale_after_seconds (default 3600).
    Peers(ListArgs),
    /// The JSON Schemas (draft 2020-12) of every document syncd reads or
    /// writes: list them, print one, or validate files against them (exit
    /// 65 when any document is invalid, each problem with its JSON path).
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// The evidence store (HOME/evidence/<blake3 hex>): content-addressed
    /// files that events reference from `evidenceRefs` as blake3:<hex>.
    /// `syncd doctor` checks every referenced file.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// The capability ledger: per capability, which planes declared,
    /// negotiated or rejected it and its effective state (enabled only when
    /// every required plane agreed and policy allowed it); split-brain
    /// (a plane says enabled while another rejects) is listed in
    /// conflictRefs. --json prints CapabilityLedger documents.
    Capabilities(ListArgs),
    /// Receipts of browser automation sessions and runtime installs, as
    /// SourceOS documents with --json; `syncd receipts revoke ID` ends an
    /// active automation session.
    Receipts(ReceiptsArgs),
    /// Show the daemon's lifecycle state and its recent moves, as recorded
    /// in the log. With --json, `current` and each `history` entry are
    /// HostRuntimeLifecycleState documents (QUIT_READY is shown as HALTED,
    /// DEGRADED_OFFLINE as LOCAL_READY, DEGRADED_POLICY_FAILED as
    /// IDENTITY_CONFIRMED); `native` keeps syncd's own states.
    Lifecycle(LifecycleArgs),
    /// Run the daemon: lifecycle coordinator, readiness gates, local API on
    /// a Unix domain socket (health, readiness, status, lifecycle, log,
    /// explain, event submission through prioritised ingest lanes, event
    /// stream), a periodic orphan sweeper, shutdown graph on SIGTERM
    /// or SIGINT (a second signal forces the exit). While it runs, every
    /// other `syncd` command goes through it. Exit 0 after a clean
    /// shutdown (QUIT_READY), 1 when a second signal cut it short.
    Daemon(DaemonArgs),
    /// Diagnostics for support, redacted.
    #[command(subcommand)]
    Diagnostics(DiagnosticsCommand),
}

impl Command {
    /// Makes relative paths absolute against `cwd`: a command served by the
    /// daemon runs in the daemon's directory, not the client's.
    pub fn absolutize(&mut self, cwd: &std::path::Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        match self {
            Command::Ingest(a) => {
                if let Some(f) = a.file.as_mut() {
                    fix(f)
                }
            }
            Command::Export(a) => fix(&mut a.out),
            Command::Import(a) => fix(&mut a.file),
            Command::Restore(a) => fix(&mut a.file),
            Command::Track(a) => fix(&mut a.dir),
            Command::GitState(a) => {
                fix(&mut a.path);
                if let Some(r) = a.workspace_root.as_mut() {
                    fix(r)
                }
            }
            Command::Diagnostics(DiagnosticsCommand::Export(a)) => fix(&mut a.out),
            Command::Schema(SchemaCommand::Validate(a)) => a.files.iter_mut().for_each(fix),
            Command::Evidence(EvidenceCommand::Add(a)) => fix(&mut a.file),
            _ => {}
        }
    }

    /// Whether this command may go through a running daemon (the daemon
    /// itself does not).
    pub fn goes_through_daemon(&self) -> bool {
        !matches!(self, Command::Daemon(_) | Command::Top(_))
    }

    /// Whether it reads events from stdin.
    pub fn reads_stdin(&self) -> bool {
        matches!(self, Command::Ingest(a) if a.file.is_none())
    }
}

/// `syncd lifecycle`.
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// Print one JSON document: `current` and `history` as
    /// HostRuntimeLifecycleState documents, `native` with syncd's states.
    #[arg(long)]
    pub json: bool,
}

/// `syncd sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Servers for this run (nats://host:port, comma-separated for a
    /// cluster); turns replication on for this run.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// Only publish; receive nothing.
    #[arg(long)]
    pub publish_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd session`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The session: `urn:srcos:session:<id>` or `<id>`.
    pub id: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd orphans`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OrphansArgs {
    /// What to do; without one, list the orphans.
    #[command(subcommand)]
    pub command: Option<OrphansCommand>,
    /// Print the receipts as one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `syncd receipts`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReceiptsArgs {
    /// Revoke instead of listing.
    #[command(subcommand)]
    pub action: Option<ReceiptsAction>,
    /// Only this kind of receipt.
    #[arg(long, value_enum, value_name = "K")]
    pub kind: Option<ReceiptKind>,
    /// Print BrowserAutomationReceipt / RuntimeInstallReceipt documents as
    /// one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `syncd orphans` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrphansCommand {
    /// Quarantine every queued orphan older than the TTL (from
    /// `[orphans] ttl_seconds` in HOME/config.toml, 300 s by default),
    /// recording each decision in the log as an `orphan.quarantined`
    /// event so that a rebuild reproduces it.
    Sweep(SweepArgs),
}

/// `syncd orphans sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// TTL for this sweep only, in seconds (1 to one year); overrides the
    /// home's configuration.
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u64>,
    /// Print the sweep report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Kinds of receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReceiptKind {
    /// Browser automation sessions.
    BrowserAutomation,
    /// Runtime installs.
    RuntimeInstall,
}

/// `syncd receipts revoke`.
#[derive(Debug, Subcommand)]
pub enum ReceiptsAction {
    /// End an active browser automation session as revoked (terminal).
    /// Exit 65 when the receipt is unknown or no longer active.
    Revoke(RevokeArgs),
}

/// `syncd receipts revoke ID`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The receipt id (urn:srcos:receipt:browser-automation:...).
    pub id: String,
    /// Why it is revoked.
    #[arg(long, default_value = "revoked by the user", value_name = "TEXT")]
    pub reason: String,
    /// Who revokes it.
    #[arg(long, default_value = "actor:local-user", value_name = "ACTOR")]
    pub actor: String,
    /// The policy decision under which it is revoked [default: the one
    /// the session started under].
    #[arg(long, value_name = "REF")]
    pub policy_decision: Option<String>,
}

/// `syncd evidence`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Store a file (at most 64 MiB) and print its reference; storing the
    /// same content again writes nothing. Exit 65 when the file cannot be
    /// read or is too large.
    Add(EvidenceAddArgs),
}

/// `syncd evidence add`.
#[derive(Debug, Args)]
pub struct EvidenceAddArgs {
    /// The file to store.
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd schema`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// List the embedded schemas.
    List(ListArgs),
    /// Print one schema.
    Show(SchemaShowArgs),
    /// Validate JSON files (one document, an array of documents, or JSON
    /// Lines each) against their
    /// schema and the SourceOS cross-field rules; a session claimed by two
    /// owners, or one id used by two documents, across all FILEs is
    /// refused too.
    Validate(SchemaValidateArgs),
}

/// `syncd schema show`.
#[derive(Debug, Args)]
pub struct SchemaShowArgs {
    /// The schema's name (see `syncd schema list`).
    pub name: String,
}

/// `syncd schema validate`.
#[derive(Debug, Args)]
pub struct SchemaValidateArgs {
    /// The files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Check against this schema [default: the SourceOS record named by
    /// each document's `type`].
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Directory of the local API socket [default: $SYNCD_RUNTIME_DIR, else
    /// $XDG_RUNTIME_DIR/sourceos-syncd, else HOME/run].
    #[arg(long, value_name = "DIR", env = "SYNCD_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Also serve the read-only API (GET routes) on this loopback TCP
    /// address, e.g. 127.0.0.1:7878 (port 0 picks one; it is written to
    /// HOME/daemon.json). Off by default; other addresses are refused.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<std::net::SocketAddr>,
    /// Replicate over NATS JetStream with these servers for this run
    /// (comma-separated for a cluster), whatever [replication] in
    /// HOME/config.toml says; the replicator runs once org policy is ready.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// Serve the Workspace pane, a self-contained web page that renders
    /// the status document live from the event stream, at /pane on the
    /// --tcp address (off by default).
    #[arg(long, requires = "tcp")]
    pub pane: bool,
}

/// `syncd diagnostics`.
#[derive(Debug, Subcommand)]
pub enum DiagnosticsCommand {
    /// Write a redacted diagnostics bundle: status, lifecycle history,
    /// doctor report, recent compact log lines and versions, with local
    /// paths and ids replaced by keyed-hash pseudonyms (fresh salt per
    /// bundle) and a manifest of what was redacted.
    Export(DiagnosticsExportArgs),
}

/// `syncd diagnostics export`.
#[derive(Debug, Args)]
pub struct DiagnosticsExportArgs {
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print the bundle instead of writing it.
    #[arg(long)]
    pub preview: bool,
    /// Recent log events to include, as compact lines.
    #[arg(long, default_value_t = 50, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub recent: u64,
}

/// `syncd git-state`.
#[derive(Debug, Args)]
pub struct GitStateArgs {
    /// The path to classify.
    pub path: PathBuf,
    /// Why the state is wanted; decides whether a missing working tree,
    /// branch or remote is worth a warning.
    #[arg(long, default_value = "passive_discovery", value_name = "OP",
          value_parser = clap::builder::PossibleValuesParser::new([
              "passive_discovery", "watcher_refresh", "user_requested_command",
              "agent_requested_command", "ci_validation"]))]
    pub operation: String,
    /// Print the GitWorkspaceState document as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also append the document to the log (`git.workspace_state_recorded`).
    #[arg(long)]
    pub record: bool,
    /// Workspace alias: the document's workspaceRef is
    /// urn:srcos:workspace:ALIAS.
    #[arg(long = "workspace", default_value = "local", value_name = "ALIAS")]
    pub workspace: String,
    /// The workspace's root directory: paths under it are hinted as
    /// ALIAS/... rather than ~/... .
    #[arg(long, value_name = "DIR")]
    pub workspace_root: Option<PathBuf>,
    /// Session the probe belongs to (urn:srcos:session:...). With
    /// --record, the event joins that session's DAG (or waits as an orphan
    /// until the session is opened). Without it the document names
    /// urn:srcos:session:local and the event joins no session.
    #[arg(long, value_name = "REF")]
    pub session: Option<String>,
    /// Capability ledger reference (urn:srcos:capability-ledger:...).
    #[arg(
        long,
        default_value = "urn:srcos:capability-ledger:local",
        value_name = "REF"
    )]
    pub capability_ledger: String,
    /// Policy decision that allows the probe (urn:srcos:decision:...).
    #[arg(
        long,
        default_value = "urn:srcos:decision:local-git-classification",
        value_name = "REF"
    )]
    pub policy_decision: String,
    /// Agent machine receipt, when an agent asks
    /// (urn:srcos:agent-machine-receipt:...).
    #[arg(long, value_name = "REF")]
    pub agent_receipt: Option<String>,
    /// Who records the event (with --record).
    #[arg(long, default_value = "actor:git-classifier", value_name = "ACTOR")]
    pub actor: String,
}

/// `syncd track`.
#[derive(Debug, Args)]
pub struct TrackArgs {
    /// The workspace directory.
    pub dir: PathBuf,
    /// Workspace alias (ASCII letters, digits, '.', '_', '-') [default: the
    /// directory's name, sanitised].
    #[arg(long = "workspace", value_name = "ALIAS")]
    pub workspace: Option<String>,
    /// Refuse directories with more files than this (symbolic links and
    /// special files count; directories are bounded by the same number).
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_files: u64,
    /// Print the plan without appending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Device id of this store [default: device:<hostname>-<random>].
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Profile this store belongs to.
    #[arg(long, default_value = "profile:local-dev", value_name = "ID")]
    pub profile: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Read events from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `syncd log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// First sequence number to show.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub from: u64,
    /// Most events to show.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub limit: u64,
    /// Only events about this subject.
    #[arg(long, value_name = "SUBJECT")]
    pub subject: Option<String>,
    /// One JSON document per line.
    #[arg(long)]
    pub json: bool,
}

/// `syncd top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Draw no terminal: follow the stream until an event about SUBJECT
    /// arrives, print one frame as text and exit (for scripts and tests;
    /// gives up after 30 s with exit 69).
    #[arg(long, value_name = "SUBJECT")]
    pub headless_until: Option<String>,
}

/// `syncd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status document as JSON.
    #[arg(long, conflicts_with = "line")]
    pub json: bool,
    /// Print one short line, for a shell prompt.
    #[arg(long)]
    pub line: bool,
}

/// `syncd doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Rebuild damaged derived state from the log (never touches the log).
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Rebuild only this projection (repeatable) [default: all].
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Fail unless the head hash equals this (proves a restore).
    #[arg(long, value_name = "HASH")]
    pub expect_head: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The object id (`object:alpha`).
    pub object: String,
    /// Print the answers as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The listing commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print as JSON (one array).
    #[arg(long)]
    pub json: bool,
}

/// `syncd txn`.
#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// List transactions.
    List(ListArgs),
    /// Show one transaction.
    Show(TxnIdArgs),
    /// Approve a proposed transaction (a person's review).
    Approve(TxnActArgs),
    /// Reject a proposed or approved transaction.
    Reject(TxnRejectArgs),
    /// Apply an approved transaction: only this changes the objects.
    Apply(TxnActArgs),
}

/// A transaction id.
#[derive(Debug, Args)]
pub struct TxnIdArgs {
    /// The transaction id.
    pub id: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Approve or apply.
#[derive(Debug, Args)]
pub struct TxnActArgs {
    /// The transaction id.
    pub id: String,
    /// Who acts.
    #[arg(long, default_value = "actor:local-user", value_name = "ACTOR")]
    pub actor: String,
}

/// Reject.
#[derive(Debug, Args)]
pub struct TxnRejectArgs {
    /// The transaction id.
    pub id: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// Who acts.
    #[arg(long, default_value = "actor:local-user", value_name = "ACTOR")]
    pub actor: String,
}

/// `syncd export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub since: u64,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file.
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The bundle file (a full export).
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `syncd drill`.
#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Damage one derived tree, to watch `syncd doctor` find and repair it.
    DamageDerived(DamageArgs),
}

/// `syncd drill damage-derived`.
#[derive(Debug, Args)]
pub struct DamageArgs {
    /// The derived tree (p.idempotency, p.subjects, p.summary, p.origins,
    /// p.registry, ...).
    #[arg(long, default_value = "p.summary", value_name = "TREE")]
    pub tree: String,
    /// What to do to it.
    #[arg(long, value_enum, default_value_t = DamageMode::Garble)]
    pub mode: DamageMode,
}

/// Kinds of drill damage.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DamageMode {
    /// Flip bits in one record.
    Garble,
    /// Delete one record.
    Delete,
    /// Add a stray record.
    Add,
    /// Drop the whole tree.
    Drop,
    /// Mark the tree as written in the record format before this build's,
    /// as an older syncd left it. Rehearses an upgrade: the next command
    /// other than doctor, rebuild, verify or drill (or a daemon start)
    /// rebuilds it from the log.
    Outdated,
}
