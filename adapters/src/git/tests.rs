//! Classifier tests against real `git` repositories made by the tests, in
//! every state: a plain directory, a repository root and a subdirectory,
//! inside `.git`, a bare repository, a repository without a remote, a
//! detached HEAD, a linked worktree, corrupted repositories (damaged HEAD,
//! damaged commit object, invalid `.git` file), permission failures
//! (through the filesystem trait, since tests may run as root), and
//! supersession (a Git runner that holds the first command in flight).
//! Every document is checked against the published GitWorkspaceState
//! schema and for the absence of the raw path.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use serde_json::Value;
use sourceos_syncd::{SteppingClock, Timestamp};

use super::*;

/// A temporary directory holding the test's repositories, resolved.
struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        Self { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A repository with one commit on `main` and, optionally, a remote
    /// (never contacted).
    fn repo(&self, rel: &str, remote: bool) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        git(&p, &["init", "-q", "-b", "main"]);
        std::fs::write(p.join("README"), "hello\n").unwrap();
        std::fs::create_dir_all(p.join("src/deep")).unwrap();
        std::fs::write(p.join("src/deep/lib.rs"), "//! x\n").unwrap();
        git(&p, &["add", "."]);
        git(&p, &["commit", "-q", "-m", "first"]);
        if remote {
            git(
                &p,
                &["remote", "add", "origin", "https://example.invalid/r.git"],
            );
        }
        p
    }
}

/// Runs the real git with an isolated configuration.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Counts the Git commands run through it.
struct Counting<G> {
    inner: G,
    calls: Arc<AtomicU32>,
}

impl<G: GitRunner> GitRunner for Counting<G> {
    fn run(&self, cmd: &GitCommand<'_>) -> Result<GitOutput, RunError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.run(cmd)
    }
}

fn classifier_with<F: FileSystem>(
    fs: F,
    lab: &Lab,
) -> (Classifier<F, Counting<ProcessGit>>, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let git = Counting {
        inner: ProcessGit::default(),
        calls: Arc::clone(&calls),
    };
    let clock = Arc::new(SteppingClock::new(
        Timestamp::from_unix_micros(1_800_000_000_000_000),
        1_000,
    ));
    let options = ClassifierOptions {
        cache_capacity: 16,
        redactor: Redactor::new(Some(lab.root.clone()), vec![]),
    };
    (Classifier::new(fs, git, clock, options), calls)
}

fn classifier(lab: &Lab) -> Classifier<RealFs, Counting<ProcessGit>> {
    classifier_with(RealFs, lab).0
}

fn schema() -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/schemas/GitWorkspaceState.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("the SourceOS spec must sit beside the repository: {p:?}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&v)
        .unwrap()
}

/// The document of `c`: valid against the schema, accepted by the core's
/// kind validation, and free of every raw path under the lab (INV-GIT-02,
/// INV-GIT-04).
fn document(c: &Classification, lab: &Lab) -> Value {
    let doc = c.to_document(&DocumentContext::local("lab")).unwrap();
    let v = serde_json::to_value(&doc).unwrap();
    let errors: Vec<String> = schema().iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{v:#}");
    let text = v.to_string();
    assert!(
        !text.contains(lab.root.to_str().unwrap()),
        "raw path in {text}"
    );
    assert!(!text.contains(lab._dir.path().to_str().unwrap()));
    assert_ne!(v["pathEvidence"]["redaction"], "none");
    assert_eq!(v["pathEvidence"]["rawPathStored"], false);
    doc.to_draft(GIT_STATE_ACTOR, Attach::Session).unwrap();
    v
}

fn classify<F: FileSystem, G: GitRunner>(
    c: &Classifier<F, G>,
    path: &Path,
    op: Operation,
) -> Classification {
    c.classify(&Request::new(path, op).refreshed()).unwrap()
}

#[test]
fn plain_directory_is_not_a_repo_and_git_never_runs() {
    let lab = Lab::new();
    let plain = lab.path("plain/inner");
    std::fs::create_dir_all(&plain).unwrap();
    let (c, calls) = classifier_with(RealFs, &lab);
    let r = classify(&c, &plain, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::NotARepo);
    assert_eq!(r.severity, Severity::Info);
    assert_eq!(r.actionability, Actionability::None);
    assert!(r.expected_negative_state);
    assert_eq!(r.facts.command_class, None);
    assert_eq!(r.facts.remote_state, RemoteState::NotApplicable);
    // INV-GIT-01: the filesystem decided; Git never ran.
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(r.git_commands, 0);
    let doc = document(&r, &lab);
    assert_eq!(doc["pathEvidence"]["redactedPathHint"], "~/plain/inner");
    assert_eq!(doc["pathEvidence"]["redaction"], "user_home_redacted");
    assert_eq!(doc["pathEvidence"]["pathDigest"], path_digest(&plain));

    // A person's command needs a working tree: now it is a warning.
    let r = classify(&c, &plain, Operation::UserRequestedCommand);
    assert_eq!(r.severity, Severity::Warning);
    assert_eq!(r.actionability, Actionability::RemediationHint);
    assert!(!r.expected_negative_state);
    assert!(r
        .facts
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("needs a working tree"));
    document(&r, &lab);

    // A path that does not exist: not a repository, no Git either.
    let r = classify(&c, &lab.path("missing/x"), Operation::WatcherRefresh);
    assert_eq!(r.state, GitState::NotARepo);
    assert_eq!(r.severity, Severity::Info);
    document(&r, &lab);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn repo_root_subdirectory_and_file() {
    let lab = Lab::new();
    let repo = lab.repo("work/app", true);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let c = classifier(&lab);

    let root = classify(&c, &repo, Operation::PassiveDiscovery);
    assert_eq!(root.state, GitState::RepoRoot, "{root:?}");
    assert_eq!(root.severity, Severity::Info);
    assert!(!root.expected_negative_state);
    assert_eq!(root.facts.branch.as_deref(), Some("main"));
    assert_eq!(root.facts.head_sha.as_deref(), Some(head.as_str()));
    assert_eq!(root.facts.remote_state, RemoteState::Available);
    assert_eq!(root.facts.failure_reason, None);
    assert_eq!(root.facts.command_class, Some(CommandClass::RevParse));
    assert_eq!(
        root.facts.worktree_root_digest.as_deref(),
        Some(path_digest(&repo).as_str())
    );
    assert_eq!(
        root.facts.git_dir_digest.as_deref(),
        Some(path_digest(&repo.join(".git")).as_str())
    );
    assert!(!root.linked_worktree);
    document(&root, &lab);

    for (sub, op) in [
        ("README", Operation::PassiveDiscovery),
        ("src", Operation::UserRequestedCommand),
        ("src/deep", Operation::AgentRequestedCommand),
        ("src/deep/lib.rs", Operation::CiValidation),
    ] {
        let r = classify(&c, &repo.join(sub), op);
        assert_eq!(r.state, GitState::InsideWorktree, "{sub}");
        assert_eq!(r.severity, Severity::Info, "{sub}");
        assert_eq!(
            r.facts.worktree_root_digest,
            root.facts.worktree_root_digest
        );
        assert_eq!(r.facts.head_sha, root.facts.head_sha);
        let doc = document(&r, &lab);
        assert_eq!(
            doc["pathEvidence"]["redactedPathHint"],
            format!("~/work/app/{sub}")
        );
    }
}

#[test]
fn inside_git_dir_and_bare_repo() {
    let lab = Lab::new();
    let repo = lab.repo("r", true);
    let c = classifier(&lab);
    for sub in [".git", ".git/refs/heads", ".git/HEAD"] {
        let r = classify(&c, &repo.join(sub), Operation::WatcherRefresh);
        assert_eq!(r.state, GitState::InsideGitDir, "{sub}");
        assert_eq!(r.severity, Severity::Info);
        assert!(r.expected_negative_state);
        assert_eq!(
            r.facts.git_dir_digest.as_deref(),
            Some(path_digest(&repo.join(".git")).as_str())
        );
        document(&r, &lab);
    }
    let r = classify(&c, &repo.join(".git"), Operation::AgentRequestedCommand);
    assert_eq!(
        (r.state, r.severity),
        (GitState::InsideGitDir, Severity::Warning)
    );

    let bare = lab.path("srv/b.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    for p in [bare.clone(), bare.join("refs")] {
        let r = classify(&c, &p, Operation::PassiveDiscovery);
        assert_eq!(r.state, GitState::BareRepo, "{p:?}");
        assert_eq!(r.severity, Severity::Info);
        assert_eq!(r.facts.remote_state, RemoteState::NotApplicable);
        assert_eq!(
            r.facts.git_dir_digest.as_deref(),
            Some(path_digest(&bare).as_str())
        );
        document(&r, &lab);
    }
    let r = classify(&c, &bare, Operation::CiValidation);
    assert_eq!(
        (r.state, r.severity, r.actionability),
        (
            GitState::BareRepo,
            Severity::Warning,
            Actionability::RemediationHint
        )
    );
    document(&r, &lab);
}

#[test]
fn repo_without_remote() {
    let lab = Lab::new();
    let repo = lab.repo("solo", false);
    let c = classifier(&lab);
    let r = classify(&c, &repo, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::WorktreeNoRemote);
    assert_eq!(r.severity, Severity::Info);
    assert!(r.expected_negative_state);
    assert_eq!(r.facts.remote_state, RemoteState::Missing);
    assert_eq!(r.facts.command_class, Some(CommandClass::Remote));
    assert_eq!(r.facts.branch.as_deref(), Some("main"));
    document(&r, &lab);
    // Neither a person's nor an agent's command needs a remote...
    for op in [
        Operation::UserRequestedCommand,
        Operation::AgentRequestedCommand,
    ] {
        assert_eq!(classify(&c, &repo, op).severity, Severity::Info);
    }
    // ...CI validation does.
    let r = classify(&c, &repo, Operation::CiValidation);
    assert_eq!(r.severity, Severity::Warning);
    assert!(r
        .facts
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("git remote add"));
    document(&r, &lab);
    // Explicit needs override the operation's defaults.
    let r = c
        .classify(
            &Request::new(&repo, Operation::PassiveDiscovery).needing(Needs {
                remote: true,
                ..Needs::NOTHING
            }),
        )
        .unwrap();
    assert_eq!(r.severity, Severity::Warning);
}

#[test]
fn detached_head() {
    let lab = Lab::new();
    let repo = lab.repo("d", true);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["checkout", "-q", "--detach"]);
    let c = classifier(&lab);
    let r = classify(&c, &repo.join("src"), Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::DetachedHead);
    assert_eq!(r.severity, Severity::Info);
    assert_eq!(r.facts.branch, None);
    assert_eq!(r.facts.head_sha.as_deref(), Some(head.as_str()));
    assert_eq!(r.facts.command_class, Some(CommandClass::SymbolicRef));
    document(&r, &lab);
    // CI checkouts are detached: fine. An agent needs a branch.
    assert_eq!(
        classify(&c, &repo, Operation::CiValidation).severity,
        Severity::Info
    );
    let r = classify(&c, &repo, Operation::AgentRequestedCommand);
    assert_eq!(r.severity, Severity::Warning);
    assert!(r
        .facts
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("git switch"));
    document(&r, &lab);
}

#[test]
fn linked_worktree() {
    let lab = Lab::new();
    let repo = lab.repo("main-repo", true);
    let wt = lab.path("feature-wt");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature",
            wt.to_str().unwrap(),
        ],
    );
    let c = classifier(&lab);
    let main = classify(&c, &repo, Operation::PassiveDiscovery);
    assert_eq!(main.state, GitState::RepoRoot);
    for p in [wt.clone(), wt.join("src/deep")] {
        let r = classify(&c, &p, Operation::AgentRequestedCommand);
        assert_eq!(r.state, GitState::InsideWorktree, "{p:?}");
        assert_eq!(r.severity, Severity::Info);
        assert!(r.linked_worktree);
        assert_eq!(r.facts.branch.as_deref(), Some("feature"));
        assert_eq!(r.facts.remote_state, RemoteState::Available);
        assert_eq!(
            r.facts.worktree_root_digest.as_deref(),
            Some(path_digest(&wt).as_str())
        );
        assert_eq!(
            r.facts.git_dir_digest.as_deref(),
            Some(path_digest(&repo.join(".git/worktrees/feature-wt")).as_str())
        );
        assert_ne!(r.facts.git_dir_digest, main.facts.git_dir_digest);
        document(&r, &lab);
    }
}

#[test]
fn corrupt_repositories() {
    let lab = Lab::new();
    let c = classifier(&lab);

    // Damaged HEAD: Git no longer recognises the directory.
    let bad_head = lab.repo("bad-head", true);
    std::fs::write(bad_head.join(".git/HEAD"), "garbage\n").unwrap();
    let r = classify(&c, &bad_head, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::CorruptRepo, "{r:?}");
    assert_eq!(r.severity, Severity::Warning);
    assert_eq!(r.actionability, Actionability::Blocked);
    assert!(!r.expected_negative_state);
    assert_eq!(r.facts.command_class, Some(CommandClass::RevParse));
    document(&r, &lab);

    // Damaged commit object: HEAD names a commit that cannot be read.
    let bad_obj = lab.repo("bad-object", true);
    let head = git(&bad_obj, &["rev-parse", "HEAD"]);
    let (dir, file) = head.split_at(2);
    let obj = bad_obj.join(".git/objects").join(dir).join(file);
    let mut perms = std::fs::metadata(&obj).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&obj, perms).unwrap();
    std::fs::write(&obj, b"not a zlib stream").unwrap();
    let r = classify(&c, &bad_obj.join("src"), Operation::WatcherRefresh);
    assert_eq!(r.state, GitState::CorruptRepo, "{r:?}");
    assert_eq!(r.severity, Severity::Warning);
    assert_eq!(r.facts.head_sha.as_deref(), Some(head.as_str()));
    let reason = r.facts.failure_reason.clone().unwrap();
    assert!(reason.contains("missing or damaged"), "{reason}");
    document(&r, &lab);

    // Missing commit object.
    std::fs::remove_file(&obj).unwrap();
    let r = classify(&c, &bad_obj, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::CorruptRepo, "{r:?}");
    document(&r, &lab);

    // An invalid .git file; its message names the absolute path, which
    // must not come through.
    let gitfile = lab.path("bad-gitfile");
    std::fs::create_dir_all(&gitfile).unwrap();
    std::fs::write(gitfile.join(".git"), "nonsense\n").unwrap();
    let r = classify(&c, &gitfile, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::CorruptRepo, "{r:?}");
    let reason = r.facts.failure_reason.clone().unwrap();
    assert!(reason.contains("invalid gitfile format"), "{reason}");
    assert!(reason.contains("~/bad-gitfile/.git"), "{reason}");
    document(&r, &lab);
}

/// A filesystem that refuses access under one path, the way a
/// permission error would (tests may run as root, where none occurs).
struct Denying {
    under: PathBuf,
    at_resolve: bool,
}

impl Denying {
    fn denied(&self, p: &Path) -> bool {
        p.starts_with(&self.under)
    }
}

fn eacces() -> io::Error {
    io::Error::from(io::ErrorKind::PermissionDenied)
}

impl FileSystem for Denying {
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        RealFs.kind(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        if self.at_resolve && self.denied(path) {
            return Err(eacces());
        }
        RealFs.canonicalize(path)
    }
    fn check_readable(&self, path: &Path, kind: EntryKind) -> io::Result<()> {
        if self.denied(path) {
            return Err(eacces());
        }
        RealFs.check_readable(path, kind)
    }
}

#[test]
fn permission_denied_through_the_filesystem_trait() {
    let lab = Lab::new();
    let repo = lab.repo("locked", true);
    for at_resolve in [false, true] {
        let (c, calls) = classifier_with(
            Denying {
                under: repo.clone(),
                at_resolve,
            },
            &lab,
        );
        for p in [repo.clone(), repo.join("src"), repo.join("README")] {
            for op in Operation::ALL {
                let r = classify(&c, &p, op);
                assert_eq!(r.state, GitState::PermissionDenied, "{p:?} {op}");
                assert_eq!(r.severity, Severity::Warning);
                assert_eq!(r.actionability, Actionability::Blocked);
                assert_eq!(r.facts.command_class, None);
                document(&r, &lab);
            }
        }
        // INV-GIT-01: nothing readable, so Git never ran.
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
    // The directory of a file is unreadable.
    let (c, calls) = classifier_with(
        Denying {
            under: repo.join("src/deep"),
            at_resolve: false,
        },
        &lab,
    );
    let r = classify(
        &c,
        &repo.join("src/deep/lib.rs"),
        Operation::PassiveDiscovery,
    );
    assert_eq!(r.state, GitState::PermissionDenied);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Elsewhere the same classifier still works.
    let r = classify(&c, &repo, Operation::PassiveDiscovery);
    assert_eq!(r.state, GitState::RepoRoot);
}

/// A Git runner that holds its first command in flight (after it ran)
/// until released.
struct Gated {
    inner: ProcessGit,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl GitRunner for Gated {
    fn run(&self, cmd: &GitCommand<'_>) -> Result<GitOutput, RunError> {
        let gate = self.gate.lock().unwrap().take();
        let out = self.inner.run(cmd);
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        out
    }
}

#[test]
fn a_newer_request_supersedes_an_older_one_in_flight() {
    let lab = Lab::new();
    let repo = lab.repo("busy", true);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let c = Classifier::new(
        RealFs,
        Gated {
            inner: ProcessGit::default(),
            gate: Mutex::new(Some((entered_tx, release_rx))),
        },
        Arc::new(SteppingClock::new(
            Timestamp::from_unix_micros(1_800_000_000_000_000),
            1_000,
        )),
        ClassifierOptions {
            cache_capacity: 4,
            redactor: Redactor::new(Some(lab.root.clone()), vec![]),
        },
    );
    let (older, newer) = std::thread::scope(|s| {
        let older = s.spawn(|| classify(&c, &repo, Operation::WatcherRefresh));
        entered_rx.recv().unwrap();
        // The older probe is between its first and second Git command.
        let newer = classify(&c, &repo, Operation::UserRequestedCommand);
        release_tx.send(()).unwrap();
        (older.join().unwrap(), newer)
    });
    assert_eq!(newer.state, GitState::RepoRoot);
    assert_eq!(older.state, GitState::OperationSuperseded);
    assert_eq!(older.severity, Severity::Debug);
    assert_eq!(older.actionability, Actionability::None);
    assert!(older.expected_negative_state);
    assert_eq!(older.facts.remote_state, RemoteState::Unknown);
    assert_eq!(older.facts.command_class, Some(CommandClass::RevParse));
    assert_eq!(older.git_commands, 1);
    assert_eq!(older.path, newer.path);
    document(&older, &lab);
    // INV-GIT-03: the newer answer is the cached one.
    let cached = c
        .classify(&Request::new(&repo, Operation::PassiveDiscovery))
        .unwrap();
    assert!(cached.from_cache);
    assert_eq!(cached.state, GitState::RepoRoot);
    assert_eq!(cached.captured_at, newer.captured_at);
}

#[test]
fn requests_for_other_paths_do_not_supersede() {
    let lab = Lab::new();
    let a = lab.repo("a", true);
    let b = lab.repo("b", false);
    let c = classifier(&lab);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| classify(&c, &a, Operation::PassiveDiscovery));
        let tb = s.spawn(|| classify(&c, &b, Operation::PassiveDiscovery));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(ra.state, GitState::RepoRoot);
    assert_eq!(rb.state, GitState::WorktreeNoRemote);
}

#[test]
fn cache_per_resolved_path_with_explicit_refresh_and_a_bound() {
    let lab = Lab::new();
    let repo = lab.repo("cached", true);
    let (c, calls) = classifier_with(RealFs, &lab);
    let first = c
        .classify(&Request::new(&repo, Operation::PassiveDiscovery))
        .unwrap();
    assert!(!first.from_cache);
    let spent = calls.load(Ordering::SeqCst);
    assert!(spent > 0);
    // Another spelling of the same resolved path hits the cache, under
    // any operation (severity is recomputed for the operation).
    let again = c
        .classify(&Request::new(
            &repo.join("src/../."),
            Operation::AgentRequestedCommand,
        ))
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.git_commands, 0);
    assert_eq!(again.operation, Operation::AgentRequestedCommand);
    assert_eq!(calls.load(Ordering::SeqCst), spent);

    // The repository changes; the cache answers the old state until a
    // refresh is asked for.
    git(&repo, &["checkout", "-q", "--detach"]);
    let stale = c
        .classify(&Request::new(&repo, Operation::PassiveDiscovery))
        .unwrap();
    assert_eq!(stale.state, GitState::RepoRoot);
    let fresh = c
        .classify(&Request::new(&repo, Operation::PassiveDiscovery).refreshed())
        .unwrap();
    assert_eq!(fresh.state, GitState::DetachedHead);
    git(&repo, &["checkout", "-q", "main"]);
    assert!(c.invalidate(&repo).unwrap());
    assert!(!c.invalidate(&repo).unwrap());
    let after = c
        .classify(&Request::new(&repo, Operation::PassiveDiscovery))
        .unwrap();
    assert_eq!((after.state, after.from_cache), (GitState::RepoRoot, false));

    // Bounded: 16 entries here, least recently used out first.
    for i in 0..40 {
        let p = lab.path(&format!("many/{i}"));
        std::fs::create_dir_all(&p).unwrap();
        c.classify(&Request::new(&p, Operation::PassiveDiscovery))
            .unwrap();
        assert!(c.cached_len().unwrap() <= 16);
    }
    assert_eq!(c.cached_len().unwrap(), 16);
    c.clear().unwrap();
    assert_eq!(c.cached_len().unwrap(), 0);
}

#[test]
fn workspace_alias_hint_and_digest_only_outside_home() {
    let lab = Lab::new();
    let repo = lab.repo("ws/proj", true);
    let c = Classifier::new(
        RealFs,
        ProcessGit::default(),
        Arc::new(SteppingClock::new(Timestamp::from_unix_micros(0), 1)),
        ClassifierOptions {
            cache_capacity: 4,
            redactor: Redactor::new(
                Some(lab.root.clone()),
                vec![WorkspaceRoot::new("proj", lab.path("ws/proj")).unwrap()],
            ),
        },
    );
    let r = classify(&c, &repo.join("src"), Operation::PassiveDiscovery);
    let doc = document(&r, &lab);
    assert_eq!(doc["pathEvidence"]["redaction"], "workspace_alias");
    assert_eq!(doc["pathEvidence"]["redactedPathHint"], "proj/src");

    let bare = Classifier::new(
        RealFs,
        ProcessGit::default(),
        Arc::new(SteppingClock::new(Timestamp::from_unix_micros(0), 1)),
        ClassifierOptions::default(),
    );
    let r = classify(&bare, &repo, Operation::PassiveDiscovery);
    let doc = document(&r, &lab);
    assert_eq!(doc["pathEvidence"]["redaction"], "digest_only");
    assert_eq!(doc["pathEvidence"]["redactedPathHint"], Value::Null);
}

#[test]
fn documents_record_and_project_latest_state_per_path() {
    let lab = Lab::new();
    let repo = lab.repo("rec", true);
    let home = lab.path("syncd-home");
    let store = sourceos_syncd::Store::init(
        &home,
        sourceos_syncd::InitOptions {
            device: Some(sourceos_syncd::DeviceId::new("device:t").unwrap()),
            profile: sourceos_syncd::ProfileId::new("profile:local-dev").unwrap(),
            created_at: None,
        },
        sourceos_syncd::OpenOptions::default(),
    )
    .unwrap();
    let c = classifier(&lab);
    let ctx = DocumentContext::local("lab");
    let first = classify(&c, &repo, Operation::PassiveDiscovery)
        .to_document(&ctx)
        .unwrap();
    assert!(matches!(
        record(&store, &first, GIT_STATE_ACTOR, Attach::Session).unwrap(),
        RecordOutcome::Appended { seq: 1 }
    ));
    // The same document again is a duplicate (its id is the key).
    assert!(matches!(
        record(&store, &first, GIT_STATE_ACTOR, Attach::Session).unwrap(),
        RecordOutcome::Duplicate { seq: 1 }
    ));
    git(&repo, &["checkout", "-q", "--detach"]);
    let second = classify(&c, &repo, Operation::PassiveDiscovery)
        .to_document(&ctx)
        .unwrap();
    assert!(matches!(
        record(&store, &second, GIT_STATE_ACTOR, Attach::Session).unwrap(),
        RecordOutcome::Appended { seq: 2 }
    ));
    let other = classify(&c, &lab.path("rec/src"), Operation::PassiveDiscovery)
        .to_document(&ctx)
        .unwrap();
    record(&store, &other, GIT_STATE_ACTOR, Attach::Session).unwrap();
    let states = sourceos_syncd::git_states(&store).unwrap();
    assert_eq!(states.len(), 2);
    let latest = sourceos_syncd::git_state(&store, &path_digest(&repo))
        .unwrap()
        .unwrap();
    assert_eq!(latest.state, "detached_head");
    assert_eq!(latest.seq, 2);
    assert_eq!(latest.document, serde_json::to_value(&second).unwrap());
}

#[test]
fn context_references_are_checked() {
    let mut ctx = DocumentContext::local("ok");
    assert!(ctx.check().is_ok());
    ctx.policy_decision_ref = "urn:srcos:policy-decision:x".into();
    assert!(ctx.check().is_err());
    let mut ctx = DocumentContext::local("bad alias");
    assert!(ctx.check().is_err());
    ctx = DocumentContext::local("ok");
    ctx.agent_machine_receipt_ref = Some("urn:srcos:session:x".into());
    assert!(ctx.check().is_err());
}

#[test]
fn the_schema_check_is_real_and_the_published_example_round_trips() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/examples/gitworkspacestate.json");
    let example: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let v = schema();
    assert!(v.is_valid(&example));
    for (field, value) in [
        ("rawPathStored", Value::Bool(true)),
        ("pathDigest", Value::from("sha256:abc")),
    ] {
        let mut bad = example.clone();
        bad["pathEvidence"][field] = value;
        assert!(!v.is_valid(&bad), "{field}");
    }
    let mut bad = example.clone();
    bad["capturedAt"] = "not a time".into();
    assert!(!v.is_valid(&bad), "formats are checked");
    let doc: GitWorkspaceState = serde_json::from_value(example.clone()).unwrap();
    assert_eq!(serde_json::to_value(&doc).unwrap(), example);
    doc.to_draft(GIT_STATE_ACTOR, Attach::Session).unwrap();
}
