//! The doctor: proves, or disproves, that derived state is what the log
//! says it should be, and that the log itself is intact.
//!
//! It reads the log once, verifying every event's hash, the chain and the
//! sequence, and folds it into fresh in-memory projection state on the way.
//! Each derived tree is then compared record by record with that fresh
//! state. Damage to derived state is `repairable`; damage to `events` or
//! `meta` is `needs_review` and is only ever reported. A repair rebuilds
//! damaged projections from the fold it already made, never writes to
//! `events` or `meta` beyond appending its own report event, and does
//! nothing at all when the log itself is damaged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::event::{genesis, Envelope, EventDamage, EventDraft, Payload};
use crate::evidence::{self, EvidenceRef, EvidenceState};
use crate::ids::{ActorId, Digest, EventKind, Seq};
use crate::pipeline;
use crate::projection::{
    self, builtin_named, key_hex, read_checkpoint, unframe, FreshState, CHECKPOINT_KEY,
};
use crate::storage::{StorageError, DERIVED_PREFIX, META_TREE};
use crate::store::{AppendError, AppendOutcome, Progress, ReadError, RebuildError, Store};

/// Findings of one code listed per tree before the rest are summarised.
const MAX_FINDINGS_PER_CODE: usize = 20;
/// Kind of the event that records a repair.
pub const REPAIR_EVENT_KIND: &str = "syncd.doctor.repaired";
/// Actor of the repair event.
pub const DOCTOR_ACTOR: &str = "actor:syncd-doctor";

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Expected after a crash or an upgrade; repaired by catching up or
    /// by the rebuild of the next writable open.
    Warning,
    /// Derived state is wrong.
    Error,
    /// Durable state is damaged.
    Critical,
}

/// Who can fix a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingClass {
    /// Nothing is damaged, but a person should look (a capability in
    /// split-brain). Does not change the exit code.
    Advisory,
    /// Derived state: `doctor --repair` rebuilds it from the log.
    Repairable,
    /// Durable state: a person must decide (restore, accept loss).
    NeedsReview,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id: `<code>:<tree>[:<seq or key>]`.
    pub id: String,
    /// What kind of problem.
    pub code: &'static str,
    /// How serious.
    pub severity: Severity,
    /// Who can fix it.
    pub class: FindingClass,
    /// The tree concerned.
    pub tree: String,
    /// The event concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The record key concerned (hex), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Explanation.
    pub message: String,
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairSummary {
    /// Finding ids that were repaired.
    pub failed: Vec<String>,
    /// Projections rebuilt, with records written.
    pub rebuilt: Vec<(String, u64)>,
    /// Derived trees dropped because no projection owns them.
    pub dropped: Vec<String>,
    /// What was kept untouched.
    pub preserved: Vec<String>,
    /// Finding ids left for a person.
    pub remains_for_human: Vec<String>,
    /// What to do next.
    pub next_action: String,
    /// Sequence of the repair event, when one was recorded.
    pub report_event_seq: Option<u64>,
    /// Evidence file holding this report, when written.
    pub report_file: Option<PathBuf>,
}

/// Everything the doctor found (and did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// Events examined.
    pub events_checked: u64,
    /// Head sequence of the log.
    pub head_seq: u64,
    /// Head hash of the log (`blake3:` text in JSON, as everywhere else).
    #[serde(serialize_with = "digest_text")]
    pub head_hash: Digest,
    /// Derived trees examined.
    pub trees_checked: Vec<String>,
    /// Evidence files checked (every distinct `blake3:` reference in the
    /// log, up to `MAX_EVIDENCE_CHECKED`).
    pub evidence_checked: u64,
    /// Findings, durable damage first.
    pub findings: Vec<Finding>,
    /// Findings not listed individually (beyond the per-code bound).
    pub findings_not_listed: u64,
    /// The repair, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairSummary>,
}

impl DoctorReport {
    /// True when some durable state needs a person.
    pub fn needs_review(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.class == FindingClass::NeedsReview)
    }

    /// True when derived state has problems (listed or not).
    pub fn repairable(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.class == FindingClass::Repairable)
    }
}

fn digest_text<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// Options of one doctor run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DoctorOptions {
    /// Rebuild damaged derived state.
    pub repair: bool,
}

/// The doctor could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The repair failed.
    #[error("repair failed: {0}")]
    Rebuild(#[from] RebuildError),
    /// The repair report could not be recorded.
    #[error("repair done, but its report could not be recorded: {0}")]
    Report(#[from] AppendError),
    /// Writing the report file failed.
    #[error("cannot write the repair report to {path}: {source}")]
    ReportFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store is unusable.
    #[error("{0}")]
    Unusable(String),
}

struct Findings {
    listed: Vec<Finding>,
    per_code: BTreeMap<(String, &'static str), usize>,
    not_listed: u64,
}

impl Findings {
    fn new() -> Self {
        Self {
            listed: Vec::new(),
            per_code: BTreeMap::new(),
            not_listed: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        code: &'static str,
        severity: Severity,
        class: FindingClass,
        tree: &str,
        seq: Option<u64>,
        key: Option<String>,
        message: String,
    ) {
        let n = self.per_code.entry((tree.to_owned(), code)).or_insert(0);
        *n += 1;
        if *n > MAX_FINDINGS_PER_CODE {
            self.not_listed += 1;
            return;
        }
        let mut id = format!("{code}:{tree}");
        if let Some(s) = seq {
            id.push_str(&format!(":{s}"));
        } else if let Some(k) = &key {
            id.push(':');
            id.push_str(k);
        }
        self.listed.push(Finding {
            id,
            code,
            severity,
            class,
            tree: tree.to_owned(),
            seq,
            key,
            message,
        });
    }

    fn log(&mut self, code: &'static str, seq: Option<u64>, message: String) {
        self.add(
            code,
            Severity::Critical,
            FindingClass::NeedsReview,
            crate::storage::EVENTS_TREE,
            seq,
            None,
            message,
        );
    }

    fn derived(&mut self, code: &'static str, tree: &str, key: Option<&[u8]>, message: String) {
        // Lagging or written by an older syncd: expected states that the
        // next writable open repairs by itself, not damage.
        let severity = if code == "derived.behind" || code == "derived.outdated" {
            Severity::Warning
        } else {
            Severity::Error
        };
        self.add(
            code,
            severity,
            FindingClass::Repairable,
            tree,
            None,
            key.map(key_hex),
            message,
        );
    }
}

/// Result of scanning the log.
#[derive(Debug, PartialEq, Eq)]
struct LogScan {
    events: u64,
    head_seq: u64,
    head_hash: Digest,
    sound: bool,
}

/// Scans the whole log: keys, hashes, chain, contiguity. Feeds sound events
/// to `each` until the first damage.
///
/// With two cores the calling thread reads the log and recomputes each
/// event's hash while a second thread decodes, checks and folds, as a
/// rebuild does (`pipeline`). Findings are the same either way, in log
/// order.
fn scan_log(
    store: &Store,
    findings: &mut Findings,
    progress: Progress<'_>,
    each: impl FnMut(&Envelope) -> Result<(), String> + Send,
) -> Result<LogScan, StorageError> {
    scan_log_on(store, store.cores(), findings, progress, each)
}

/// [`scan_log`] on one thread, or two when `cores` allows.
fn scan_log_on(
    store: &Store,
    cores: usize,
    findings: &mut Findings,
    progress: Progress<'_>,
    mut each: impl FnMut(&Envelope) -> Result<(), String> + Send,
) -> Result<LogScan, StorageError> {
    let (head_seq, _) = store.head().map_err(|reason| StorageError::Panicked {
        doing: "locking",
        path: store.home().to_path_buf(),
        message: reason,
    })?;
    let mut check = LogCheck::new(store.meta().genesis);
    let mut read = 0u64;
    if cores < 2 {
        for item in store.scan_raw(Seq::FIRST) {
            let (k, v) = item?;
            let hash = Envelope::check_hash(&v);
            check.record(&k, &v, hash, findings, &mut each);
            read += 1;
            if read % PROGRESS_EVENTS == 0 {
                progress(read, head_seq);
            }
        }
    } else {
        let found = &mut *findings;
        let (read_all, checked) = pipeline::run(
            "syncd-doctor",
            |feed| {
                for item in store.scan_raw(Seq::FIRST) {
                    let (k, v) = item?;
                    let hash = Envelope::check_hash(&v);
                    read += 1;
                    if !feed.push((k, v, hash)) {
                        break;
                    }
                    if read % PROGRESS_EVENTS == 0 {
                        progress(read, head_seq);
                    }
                }
                Ok::<(), StorageError>(())
            },
            move |scanned: &mut dyn Iterator<Item = Scanned>| {
                for (k, v, hash) in scanned {
                    check.record(&k, &v, hash, found, &mut each);
                }
                check
            },
        )
        .map_err(|e| StorageError::Panicked {
            doing: "checking the log of",
            path: store.home().to_path_buf(),
            message: e.full_text(),
        })?;
        read_all?;
        check = checked;
    }
    progress(check.events, head_seq);
    if check.events != head_seq && check.sound {
        findings.log(
            "log.count_mismatch",
            None,
            format!("{} events stored but the head is {head_seq}", check.events),
        );
        check.sound = false;
    }
    Ok(LogScan {
        events: check.events,
        head_seq,
        head_hash: check.last_hash,
        sound: check.sound,
    })
}

/// Events between progress reports of a log scan.
const PROGRESS_EVENTS: u64 = 65_536;

/// A stored record as the reading thread hands it to the checking one: its
/// key, its bytes and what recomputing its hash said.
type Scanned = (
    crate::storage::StoredBytes,
    crate::storage::StoredBytes,
    Result<Digest, EventDamage>,
);

/// The checks of a log scan, record by record in log order.
struct LogCheck {
    /// The hash the next event must link to.
    prev: Digest,
    expect: u64,
    events: u64,
    sound: bool,
    last_hash: Digest,
}

impl LogCheck {
    fn new(genesis: Digest) -> Self {
        Self {
            prev: genesis,
            expect: 1,
            events: 0,
            sound: true,
            last_hash: genesis,
        }
    }

    /// Checks one record; `hash` is what [`Envelope::check_hash`] said of
    /// `v`. Sound events go to `each` until the first damage.
    fn record(
        &mut self,
        k: &[u8],
        v: &[u8],
        hash: Result<Digest, EventDamage>,
        findings: &mut Findings,
        each: &mut impl FnMut(&Envelope) -> Result<(), String>,
    ) {
        self.events += 1;
        let seq = match Seq::from_key(k) {
            Ok(s) => s.get(),
            Err(e) => {
                findings.log(
                    "log.bad_key",
                    None,
                    format!("key {} is not a sequence number: {e}", key_hex(k)),
                );
                self.sound = false;
                return;
            }
        };
        if seq != self.expect {
            findings.log(
                "log.gap",
                Some(seq),
                format!(
                    "expected event {} but the next stored event is {seq}",
                    self.expect
                ),
            );
            self.sound = false;
        }
        self.expect = seq.saturating_add(1);
        // Exactly `Envelope::verify`, its hashing done by the reader.
        let verified = match &hash {
            Ok(stored) => Envelope::verify_hashed(v, *stored),
            Err(d) => Err(d.clone()),
        };
        match verified {
            Err(d) => {
                let code = match d {
                    EventDamage::HashMismatch { .. } => "log.hash_mismatch",
                    _ => "log.undecodable",
                };
                findings.log(code, Some(seq), format!("event {seq}: {d}"));
                self.sound = false;
                // The next event's link cannot be checked against a hash we
                // could not trust; take the stored hash if it is readable.
                self.prev = hash.unwrap_or(self.prev);
                self.last_hash = self.prev;
            }
            Ok(env) => {
                if env.seq().get() != seq {
                    findings.log(
                        "log.seq_mismatch",
                        Some(seq),
                        format!("event stored at {seq} says it is event {}", env.seq()),
                    );
                    self.sound = false;
                }
                if env.prev_hash() != self.prev {
                    findings.log(
                        "log.chain_break",
                        Some(seq),
                        format!(
                            "event {seq} links to {} but the previous event hashes to {}",
                            env.prev_hash(),
                            self.prev
                        ),
                    );
                    self.sound = false;
                }
                if self.sound {
                    if let Err(reason) = each(&env) {
                        findings.log("log.unfoldable", Some(seq), reason);
                        self.sound = false;
                    }
                }
                self.prev = env.hash();
                self.last_hash = self.prev;
            }
        }
    }
}

fn check_meta(store: &Store, findings: &mut Findings) {
    if store.meta().genesis != genesis() {
        findings.add(
            "meta.genesis_mismatch",
            Severity::Critical,
            FindingClass::NeedsReview,
            META_TREE,
            None,
            None,
            format!(
                "meta records genesis {} but this format starts chains at {}",
                store.meta().genesis,
                genesis()
            ),
        );
    }
}

/// Compares one derived tree with its fresh state.
fn check_tree(
    store: &Store,
    name: &'static str,
    fresh: Option<&FreshState>,
    head_seq: u64,
    findings: &mut Findings,
) -> Result<bool, StorageError> {
    let tree_name = projection::tree_name(name);
    let storage = store.storage();
    if !storage.has_tree(&tree_name) {
        if store.held_before(name) == Some(false) {
            findings.derived(
                "derived.outdated",
                &tree_name,
                None,
                format!("{tree_name} is new in this build: the next writable open or a repair builds it"),
            );
        } else {
            findings.derived(
                "derived.tree_missing",
                &tree_name,
                None,
                format!("tree {tree_name} is missing"),
            );
        }
        return Ok(true);
    }
    let Some(projection) = builtin_named(name) else {
        return Ok(false);
    };
    let tree = storage.derived(&tree_name)?;
    let before = findings.listed.len() as u64 + findings.not_listed;
    // Checkpoint first: a projection that is merely behind cannot be
    // compared record by record, it is caught up by a repair.
    let mut comparable = true;
    match read_checkpoint(&tree) {
        Err(e) => {
            findings.derived(
                "derived.checkpoint_damaged",
                &tree_name,
                Some(CHECKPOINT_KEY),
                format!("checkpoint of {tree_name} is unreadable: {e}"),
            );
            comparable = false;
        }
        Ok(None) => {
            findings.derived(
                "derived.checkpoint_missing",
                &tree_name,
                Some(CHECKPOINT_KEY),
                format!("{tree_name} has no checkpoint"),
            );
            comparable = false;
        }
        Ok(Some(cp)) => {
            if cp.version < projection.version() {
                findings.derived(
                    "derived.outdated",
                    &tree_name,
                    Some(CHECKPOINT_KEY),
                    format!(
                        "{tree_name} has record format {} but this build writes {}: the next writable open or a repair rebuilds it",
                        cp.version,
                        projection.version()
                    ),
                );
                comparable = false;
            } else if cp.version != projection.version() {
                findings.derived(
                    "derived.version_mismatch",
                    &tree_name,
                    Some(CHECKPOINT_KEY),
                    format!(
                        "{tree_name} has record format {}, newer than the {} this build writes",
                        cp.version,
                        projection.version()
                    ),
                );
                comparable = false;
            } else if cp.seq > head_seq {
                findings.derived(
                    "derived.checkpoint_ahead",
                    &tree_name,
                    Some(CHECKPOINT_KEY),
                    format!(
                        "checkpoint of {tree_name} is at {} but the log ends at {head_seq}",
                        cp.seq
                    ),
                );
                comparable = false;
            } else if cp.seq < head_seq {
                findings.derived(
                    "derived.behind",
                    &tree_name,
                    Some(CHECKPOINT_KEY),
                    format!(
                        "{tree_name} has folded up to {} of {head_seq} events",
                        cp.seq
                    ),
                );
                comparable = false;
            }
        }
    }
    let mut expected = fresh.map(|f| f.records.iter().peekable());
    for item in tree.iter() {
        let (k, v) = item?;
        let payload = match unframe(&tree_name, &k, &v) {
            Ok(p) => Some(p),
            Err(reason) => {
                findings.derived(
                    "derived.record_damaged",
                    &tree_name,
                    Some(&k),
                    format!("record in {tree_name}: {reason}"),
                );
                None
            }
        };
        if let Some(p) = payload {
            if k.as_slice() != CHECKPOINT_KEY {
                if let Err(reason) = projection.check_record(&k, p) {
                    findings.derived(
                        "derived.record_undecodable",
                        &tree_name,
                        Some(&k),
                        format!("record in {tree_name} does not decode: {reason}"),
                    );
                }
            }
        }
        let (Some(exp), true) = (expected.as_mut(), comparable) else {
            continue;
        };
        // Records the fresh fold has and the tree lacks come before `k`.
        while let Some((ek, _)) = exp.next_if(|(ek, _)| ek.as_slice() < k.as_slice()) {
            findings.derived(
                "derived.record_missing",
                &tree_name,
                Some(ek),
                format!("{tree_name} lacks a record the log implies"),
            );
        }
        match exp.next_if(|(ek, _)| ek.as_slice() == k.as_slice()) {
            None => {
                if payload.is_some() {
                    findings.derived(
                        "derived.record_stray",
                        &tree_name,
                        Some(&k),
                        format!("{tree_name} holds a record the log does not imply"),
                    );
                }
            }
            Some((_, ev)) => {
                if payload.is_some_and(|p| p != ev.as_slice()) {
                    findings.derived(
                        "derived.record_differs",
                        &tree_name,
                        Some(&k),
                        format!("record in {tree_name} differs from a fresh fold of the log"),
                    );
                }
            }
        }
    }
    if let (Some(exp), true) = (expected.as_mut(), comparable) {
        for (ek, _) in exp {
            findings.derived(
                "derived.record_missing",
                &tree_name,
                Some(ek),
                format!("{tree_name} lacks a record the log implies"),
            );
        }
    }
    Ok(findings.listed.len() as u64 + findings.not_listed > before)
}

/// Runs the doctor. The store should be opened without catch-up so that
/// lagging projections are seen as they are.
pub fn doctor(
    store: &Store,
    options: DoctorOptions,
    progress: Progress<'_>,
) -> Result<DoctorReport, DoctorError> {
    // Staged derived writes of this handle belong to what is checked.
    store
        .flush()
        .map_err(|e| DoctorError::Unusable(e.to_string()))?;
    let mut findings = Findings::new();
    let names = store.projection_names().map_err(DoctorError::Unusable)?;
    let mut fold = projection::FreshFold::new(&names, store.meta().genesis);
    let mut evidence = EvidenceSeen::default();
    let scan = scan_log(store, &mut findings, progress, |env| {
        evidence.note(env);
        fold.apply(env).map_err(|e| e.to_string())
    })?;
    check_meta(store, &mut findings);
    let evidence_checked = check_evidence(store, &evidence, &mut findings);
    let fresh: BTreeMap<&'static str, FreshState> = if scan.sound {
        fold.finish()
            .map_err(|e| DoctorError::Unusable(e.to_string()))?
            .into_iter()
            .collect()
    } else {
        BTreeMap::new()
    };
    if let Some(f) = fresh.get(projection::ledger::NAME) {
        for cap in projection::ledger::split_brain_in(&f.records) {
            findings.add(
                "capability.split_brain",
                Severity::Warning,
                FindingClass::Advisory,
                "capabilities",
                None,
                Some(cap.clone()),
                format!("{cap}: a plane reports it enabled while another rejects it; see `syncd capabilities`"),
            );
        }
    }
    let mut damaged: BTreeSet<&'static str> = BTreeSet::new();
    let mut trees_checked = Vec::new();
    for name in &names {
        trees_checked.push(projection::tree_name(name));
        if check_tree(store, name, fresh.get(name), scan.head_seq, &mut findings)? {
            damaged.insert(name);
        }
    }
    let known: BTreeSet<String> = names.iter().map(|n| projection::tree_name(n)).collect();
    let mut unknown = Vec::new();
    for t in store.storage().derived_tree_names() {
        if !known.contains(&t) {
            findings.derived(
                "derived.unknown_tree",
                &t,
                None,
                format!("{t} is a derived tree no projection owns"),
            );
            unknown.push(t);
        }
    }
    let mut report = DoctorReport {
        events_checked: scan.events,
        head_seq: scan.head_seq,
        head_hash: scan.head_hash,
        trees_checked,
        evidence_checked,
        findings: Vec::new(),
        findings_not_listed: findings.not_listed,
        repair: None,
    };
    let mut listed = findings.listed;
    listed.sort_by(|a, b| {
        a.class
            .cmp(&b.class)
            .reverse()
            .then(b.severity.cmp(&a.severity))
    });
    report.findings = listed;
    if options.repair {
        report.repair = Some(repair(store, &report, fresh, &damaged, &unknown)?);
    }
    Ok(report)
}

/// Distinct evidence references checked per doctor run; the rest are
/// counted as not checked.
const MAX_EVIDENCE_CHECKED: usize = 100_000;

/// Evidence references met while scanning the log, with the first event
/// that made each.
#[derive(Default)]
struct EvidenceSeen {
    refs: BTreeMap<EvidenceRef, u64>,
    not_checked: u64,
}

impl EvidenceSeen {
    fn note(&mut self, env: &Envelope) {
        let Some(payload) = env.payload().as_map() else {
            return;
        };
        for r in evidence::refs_in(payload) {
            if self.refs.contains_key(&r) {
                continue;
            }
            if self.refs.len() >= MAX_EVIDENCE_CHECKED {
                self.not_checked += 1;
            } else {
                self.refs.insert(r, env.seq().get());
            }
        }
    }
}

/// Checks every referenced evidence file. A missing, altered or unreadable
/// file is durable damage: the log promises content that is not there.
fn check_evidence(store: &Store, seen: &EvidenceSeen, findings: &mut Findings) -> u64 {
    for (r, seq) in &seen.refs {
        let (code, what) = match evidence::check(store.home(), r) {
            EvidenceState::Present => continue,
            EvidenceState::Missing => ("evidence.missing", "is missing".to_owned()),
            EvidenceState::Altered { actual: Some(a) } => (
                "evidence.altered",
                format!("was altered (it hashes to {a})"),
            ),
            EvidenceState::Altered { actual: None } => (
                "evidence.altered",
                "was altered (it is larger than any evidence file)".to_owned(),
            ),
            EvidenceState::Unreadable { reason } => {
                ("evidence.unreadable", format!("cannot be read: {reason}"))
            }
        };
        findings.add(
            code,
            Severity::Critical,
            FindingClass::NeedsReview,
            evidence::EVIDENCE_DIR,
            None,
            Some(r.digest().to_hex()),
            format!("evidence {r}, referenced by event {seq}, {what}"),
        );
    }
    if seen.not_checked > 0 {
        tracing::warn!(
            not_checked = seen.not_checked,
            "more evidence references than one doctor run checks"
        );
    }
    seen.refs.len() as u64
}

fn repair(
    store: &Store,
    report: &DoctorReport,
    mut fresh: BTreeMap<&'static str, FreshState>,
    damaged: &BTreeSet<&'static str>,
    unknown: &[String],
) -> Result<RepairSummary, DoctorError> {
    let needs_review: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.class == FindingClass::NeedsReview)
        .map(|f| f.id.clone())
        .collect();
    let failed: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.class == FindingClass::Repairable)
        .map(|f| f.id.clone())
        .collect();
    let preserved = vec![
        format!("events (head {} {})", report.head_seq, report.head_hash),
        "meta".to_owned(),
    ];
    if !needs_review.is_empty() {
        let first = report
            .findings
            .iter()
            .find(|f| f.class == FindingClass::NeedsReview)
            .map_or_else(String::new, |f| f.message.clone());
        return Ok(RepairSummary {
            failed,
            rebuilt: Vec::new(),
            dropped: Vec::new(),
            preserved,
            remains_for_human: needs_review,
            next_action: format!(
                "durable state is damaged ({first}); nothing was changed. Restore the home from a verified backup or bundle, or keep it for inspection; derived state will be rebuilt once the log is sound"
            ),
            report_event_seq: None,
            report_file: None,
        });
    }
    if failed.is_empty() {
        return Ok(RepairSummary {
            failed,
            rebuilt: Vec::new(),
            dropped: Vec::new(),
            preserved,
            remains_for_human: Vec::new(),
            next_action: "nothing to repair".to_owned(),
            report_event_seq: None,
            report_file: None,
        });
    }
    let mut rebuilt = Vec::new();
    for name in damaged {
        let Some(state) = fresh.remove(name) else {
            continue;
        };
        let tree = store
            .storage()
            .recreate_derived(&projection::tree_name(name))?;
        let written = store
            .install_fresh(name, state, tree)
            .map_err(|e| DoctorError::Rebuild(RebuildError::Projection(e)))?;
        rebuilt.push(((*name).to_owned(), written));
    }
    let mut dropped = Vec::new();
    for t in unknown {
        if store.storage().drop_derived(t)? {
            dropped.push(t.clone());
        }
    }
    let mut summary = RepairSummary {
        failed,
        rebuilt,
        dropped,
        preserved,
        remains_for_human: Vec::new(),
        next_action: "run `syncd doctor` again to confirm; it should report no findings".to_owned(),
        report_event_seq: None,
        report_file: None,
    };
    let (file, digest) = write_report_file(store, report, &summary)?;
    summary.report_file = Some(file);
    summary.report_event_seq = record_repair(store, &summary, digest)?;
    Ok(summary)
}

fn write_report_file(
    store: &Store,
    report: &DoctorReport,
    summary: &RepairSummary,
) -> Result<(PathBuf, Digest), DoctorError> {
    #[derive(Serialize)]
    struct Full<'a> {
        report: &'a DoctorReport,
        repair: &'a RepairSummary,
    }
    let text = serde_json::to_vec_pretty(&Full {
        report,
        repair: summary,
    })
    .map_err(|e| DoctorError::Unusable(e.to_string()))?;
    let r = evidence::put(store.home(), &text).map_err(|e| match e {
        evidence::EvidenceError::Io { path, source } => DoctorError::ReportFile { path, source },
        other => DoctorError::Unusable(other.to_string()),
    })?;
    let digest = r.digest();
    let path = r.path(store.home());
    Ok((path, digest))
}

fn record_repair(
    store: &Store,
    summary: &RepairSummary,
    report_digest: Digest,
) -> Result<Option<u64>, DoctorError> {
    const LIST_BOUND: usize = 16;
    let bounded = |v: &[String]| -> Vec<String> { v.iter().take(LIST_BOUND).cloned().collect() };
    let payload = serde_json::json!({
        "findings_repaired": summary.failed.len(),
        "failed": bounded(&summary.failed),
        "rebuilt": summary.rebuilt.iter().map(|(n, w)| serde_json::json!({"projection": n, "records": w})).collect::<Vec<_>>(),
        "dropped": summary.dropped,
        "preserved": summary.preserved,
        "remains_for_human": bounded(&summary.remains_for_human),
        "report_ref": format!("evidence/{}", report_digest.to_hex()),
        "report_digest": report_digest.to_string(),
    });
    let bad = |e: crate::ids::InvalidValue| DoctorError::Unusable(e.to_string());
    let mut draft = EventDraft::new(
        ActorId::new(DOCTOR_ACTOR).map_err(bad)?,
        EventKind::new(REPAIR_EVENT_KIND).map_err(bad)?,
    );
    draft.payload = Payload::new(payload).map_err(bad)?;
    match store.append_system(draft)? {
        AppendOutcome::Appended { seq, .. } => Ok(Some(seq.get())),
        AppendOutcome::Duplicate { seq, .. } => Ok(Some(seq.get())),
        AppendOutcome::Rejected { reason } | AppendOutcome::PolicyBlocked { reason, .. } => Err(
            DoctorError::Unusable(format!("repair event rejected: {reason}")),
        ),
    }
}

/// Result of a full chain verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events verified.
    pub events: u64,
    /// Head sequence.
    pub head_seq: u64,
    /// Head hash: equal heads prove equal logs.
    #[serde(serialize_with = "digest_text")]
    pub head_hash: Digest,
    /// Damage found (empty when the chain is intact).
    pub damage: Vec<Finding>,
    /// Whether the head matched the expected one, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_head_matches: Option<bool>,
}

/// Verifies the whole chain and reports the head hash.
pub fn verify(
    store: &Store,
    expect_head: Option<Digest>,
    progress: Progress<'_>,
) -> Result<VerifyReport, DoctorError> {
    let mut findings = Findings::new();
    let scan = scan_log(store, &mut findings, progress, |_| Ok(()))?;
    check_meta(store, &mut findings);
    Ok(VerifyReport {
        events: scan.events,
        head_seq: scan.head_seq,
        head_hash: scan.head_hash,
        damage: findings.listed,
        expected_head_matches: expect_head.map(|h| h == scan.head_hash),
    })
}

/// What a damage drill does to a derived tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageTarget {
    /// Flip bits in one record's value.
    Garble,
    /// Delete one record.
    Delete,
    /// Add a record no fold would produce.
    Add,
    /// Drop the whole tree.
    Drop,
    /// Mark the tree as written in the record format before this build's,
    /// as an older syncd left it (rehearses an upgrade).
    Outdate,
}

/// Fault injection for drills and tests: damages a derived tree (never
/// `events` or `meta`). Returns a description of what was done.
pub fn damage(store: &Store, tree: &str, target: DamageTarget) -> Result<String, DoctorError> {
    if !tree.starts_with(DERIVED_PREFIX) {
        return Err(DoctorError::Unusable(format!(
            "{tree} is not a derived tree; drills only damage trees named {DERIVED_PREFIX}*"
        )));
    }
    store
        .flush()
        .map_err(|e| DoctorError::Unusable(e.to_string()))?;
    let storage = store.storage();
    if !storage.has_tree(tree) {
        return Err(DoctorError::Unusable(format!(
            "no derived tree named {tree}"
        )));
    }
    let t = storage.derived(tree)?;
    // Prefer a data record over the checkpoint so that the drill exercises
    // record-level detection.
    let mut victim: Option<(Vec<u8>, Vec<u8>)> = None;
    for item in t.iter() {
        let (k, v) = item?;
        let is_cp = k.as_slice() == CHECKPOINT_KEY;
        if victim.is_none()
            || (!is_cp
                && victim
                    .as_ref()
                    .is_some_and(|(vk, _)| vk.as_slice() == CHECKPOINT_KEY))
        {
            victim = Some((k, v));
        }
        if !is_cp {
            break;
        }
    }
    match target {
        DamageTarget::Drop => {
            storage.drop_derived(tree)?;
            Ok(format!("dropped {tree}"))
        }
        DamageTarget::Outdate => {
            let name = tree.strip_prefix(DERIVED_PREFIX).unwrap_or(tree);
            let Some(projection) = builtin_named(name) else {
                return Err(DoctorError::Unusable(format!(
                    "{tree} belongs to no projection of this build"
                )));
            };
            let Some(mut cp) = read_checkpoint(&t).map_err(|reason| {
                DoctorError::Unusable(format!("checkpoint of {tree} is unreadable: {reason}"))
            })?
            else {
                return Err(DoctorError::Unusable(format!("{tree} has no checkpoint")));
            };
            let current = projection.version();
            let Some(older) = current.checked_sub(1) else {
                return Err(DoctorError::Unusable(format!(
                    "{tree} has no format older than {current}"
                )));
            };
            cp.version = older;
            projection::write_checkpoint(&t, &cp)
                .map_err(|e| DoctorError::Unusable(e.to_string()))?;
            Ok(format!(
                "marked {tree} as record format {older}, as a syncd older than this one (format {current}) left it"
            ))
        }
        DamageTarget::Add => {
            let key = b"\xfe drill stray record".to_vec();
            t.raw_insert(&key, b"not a framed record")?;
            Ok(format!("added a stray record {} to {tree}", key_hex(&key)))
        }
        DamageTarget::Garble | DamageTarget::Delete => {
            let Some((k, mut v)) = victim else {
                return Err(DoctorError::Unusable(format!(
                    "{tree} is empty; nothing to damage"
                )));
            };
            if target == DamageTarget::Delete {
                t.raw_remove(&k)?;
                return Ok(format!("deleted record {} of {tree}", key_hex(&k)));
            }
            if let Some(b) = v.first_mut() {
                *b ^= 0x5a;
            }
            t.raw_insert(&k, &v)?;
            Ok(format!("garbled record {} of {tree}", key_hex(&k)))
        }
    }
}

impl From<ReadError> for DoctorError {
    fn from(e: ReadError) -> Self {
        DoctorError::Rebuild(RebuildError::Read(e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::ids::{DeviceId, ProfileId};
    use crate::store::{db_dir, InitOptions, OpenOptions};

    fn note(i: usize) -> EventDraft {
        let mut d = EventDraft::new(
            ActorId::new(format!("actor:t{}", i % 3)).unwrap(),
            EventKind::new("note.added").unwrap(),
        );
        d.payload = Payload::new(serde_json::json!({ "n": i })).unwrap();
        d
    }

    fn init(dir: &std::path::Path) -> Store {
        Store::init(
            dir,
            InitOptions {
                device: Some(DeviceId::new("device:test").unwrap()),
                profile: ProfileId::new("profile:test").unwrap(),
                created_at: None,
            },
            OpenOptions::default(),
        )
        .unwrap()
    }

    /// The log scan finds the same damage, in the same order, with the
    /// same outcome, whether it reads and checks on one thread or two.
    #[test]
    fn the_log_scan_finds_the_same_on_one_thread_and_two() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        store.append_many((0..700).map(note).collect()).unwrap();
        store.close().unwrap();
        {
            // Several chunks apart: a flipped byte (200), a missing event
            // (400), an event stored in another's place (500 holds 501's
            // bytes) and a key that is no sequence number.
            let db = sled::open(db_dir(dir.path())).unwrap();
            let events = db.open_tree("events").unwrap();
            let key = |n: u64| Seq::new(n).unwrap().to_key();
            let mut v = events.get(key(200)).unwrap().unwrap().to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x01;
            events.insert(key(200), v).unwrap();
            events.remove(key(400)).unwrap();
            let moved = events.get(key(501)).unwrap().unwrap();
            events.insert(key(500), moved).unwrap();
            events.insert(b"zz", b"not an event".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), OpenOptions::default()).unwrap();
        let scan = |cores: usize| {
            let mut findings = Findings::new();
            let mut folded = 0u64;
            let scan = scan_log_on(&store, cores, &mut findings, &mut |_, _| {}, |_| {
                folded += 1;
                Ok(())
            })
            .unwrap();
            (scan, findings.listed, folded)
        };
        let one = scan(1);
        let two = scan(2);
        assert_eq!(one, two);
        let (scan, listed, folded) = one;
        assert!(!scan.sound);
        // Sound events are folded up to the first damage only.
        assert_eq!(folded, 199);
        let found: Vec<(&str, Option<u64>)> = listed.iter().map(|f| (f.code, f.seq)).collect();
        for expected in [
            ("log.hash_mismatch", Some(200)),
            ("log.gap", Some(401)),
            ("log.seq_mismatch", Some(500)),
            ("log.chain_break", Some(501)),
            ("log.bad_key", None),
        ] {
            assert!(found.contains(&expected), "{expected:?} in {found:?}");
        }
    }

    /// Projections written by an older syncd are reported as outdated (a
    /// warning, not damage), and a repair rebuilds them.
    #[test]
    fn an_older_record_format_is_a_warning_that_repair_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        store.append_many((0..30).map(note).collect()).unwrap();
        store.close().unwrap();
        let as_found = || {
            Store::open(
                dir.path(),
                OpenOptions {
                    catch_up: false,
                    ..OpenOptions::default()
                },
            )
            .unwrap()
        };
        {
            let store = as_found();
            let tree = store.storage().derived("p.summary").unwrap();
            let version = builtin_named("summary").unwrap().version();
            crate::projection::set_checkpoint_version(&tree, version - 1);
        }
        let store = as_found();
        let report = doctor(&store, DoctorOptions { repair: false }, &mut |_, _| {}).unwrap();
        let codes: Vec<(&str, Severity, FindingClass)> = report
            .findings
            .iter()
            .map(|f| (f.code, f.severity, f.class))
            .collect();
        assert_eq!(
            codes,
            vec![(
                "derived.outdated",
                Severity::Warning,
                FindingClass::Repairable
            )]
        );
        let repaired = doctor(&store, DoctorOptions { repair: true }, &mut |_, _| {}).unwrap();
        let rebuilt: Vec<&str> = repaired
            .repair
            .as_ref()
            .unwrap()
            .rebuilt
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(rebuilt, vec!["summary"]);
        let after = doctor(&store, DoctorOptions { repair: false }, &mut |_, _| {}).unwrap();
        assert!(after.findings.is_empty(), "{:?}", after.findings);
    }
}
