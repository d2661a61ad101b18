//! Probing one path, cheapest step first:
//!
//! 1. resolve it through the [`FileSystem`] (does it exist, what is it,
//!    its resolved form) — a missing or denied path ends here;
//! 2. check that it (and, for a file, its directory) can be read — a
//!    denied one ends here, before any Git command;
//! 3. walk up the parents looking for a Git marker (`.git`, or a directory
//!    laid out like a Git directory) — none ends here as `not_a_repo`,
//!    without running Git;
//! 4. one `git rev-parse` for what Git thinks of the place (bare, inside
//!    the Git directory, inside a working tree, its Git directories, the
//!    prefix below the top level);
//! 5. in a working tree only: `git symbolic-ref` (branch or detached),
//!    `git rev-parse --verify HEAD^{commit}` (the head commit, which reads
//!    the commit object and so finds damage), and `git remote` (whether any
//!    remote is configured; nothing is contacted).
//!
//! Between Git commands the prober asks whether its request is still
//! wanted, and stops (superseded) when it is not. Everything observed is
//! hashed into a transcript digest, which the document cites as evidence.
//! Nothing here stores or reports a raw path: Git's messages are scrubbed.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::evidence::{path_bytes, path_digest, path_from_bytes, sha256_ref, Redactor};
use super::fs::{EntryKind, FileSystem};
use super::model::{CommandClass, GitState, RemoteState};
use super::runner::{GitCommand, GitOutput, GitRunner, RunError};
use super::PathEvidence;

/// Parent directories examined at most when looking for a Git marker.
pub const MAX_ANCESTORS: usize = 256;

/// What probing a path found, before the operation is taken into account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The state (never `operation_superseded`).
    pub state: GitState,
    /// Evidence about the path.
    pub path: PathEvidence,
    /// The checked-out branch (`main`; a full ref name outside
    /// `refs/heads/`).
    pub branch: Option<String>,
    /// The commit HEAD names (40 hex digits).
    pub head_sha: Option<String>,
    /// Whether a remote is configured.
    pub remote_state: RemoteState,
    /// Digest of the working tree's top level.
    pub worktree_root_digest: Option<String>,
    /// Digest of the Git directory in use.
    pub git_dir_digest: Option<String>,
    /// The working tree is a linked worktree (`git worktree add`).
    pub linked_worktree: bool,
    /// Why the state is what it is, scrubbed of paths.
    pub reason: Option<String>,
    /// The class of the Git command that decided the state; `None` when
    /// no Git command ran.
    pub command_class: Option<CommandClass>,
    /// Git commands run.
    pub git_commands: u32,
    /// `sha256:` digest of everything observed.
    pub transcript_digest: String,
}

/// A path as the filesystem resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// It exists.
    Found {
        /// Its resolved form.
        canonical: PathBuf,
        /// What it is.
        kind: EntryKind,
    },
    /// It cannot be used; probing ends with this state and reason.
    Unusable {
        /// The absolute, unresolved path (only its digest leaves).
        absolute: PathBuf,
        /// `not_a_repo` or `permission_denied`.
        state: GitState,
        /// Why.
        reason: &'static str,
    },
}

/// Resolves `path` (made absolute against the working directory).
pub(crate) fn resolve(fs: &dyn FileSystem, path: &Path) -> Resolved {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let unusable = |e: std::io::Error| {
        let (state, reason) = match e.kind() {
            ErrorKind::PermissionDenied => (
                GitState::PermissionDenied,
                "the path cannot be examined (permission denied); Git was not run",
            ),
            ErrorKind::NotFound | ErrorKind::NotADirectory => (
                GitState::NotARepo,
                "the path does not exist; Git was not run",
            ),
            _ => (
                GitState::NotARepo,
                "the path cannot be resolved (a loop of symbolic links, or an I/O error); Git was not run",
            ),
        };
        Resolved::Unusable {
            absolute: absolute.clone(),
            state,
            reason,
        }
    };
    let kind = match fs.kind(&absolute) {
        Ok(k) => k,
        Err(e) => return unusable(e),
    };
    match fs.canonicalize(&absolute) {
        Ok(canonical) => Resolved::Found { canonical, kind },
        Err(e) => unusable(e),
    }
}

/// How probing ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A state was found.
    Done(Probe),
    /// The request stopped being wanted between two steps.
    Superseded {
        /// The class of the last Git command that ran.
        last_class: Option<CommandClass>,
        /// Git commands run before stopping.
        git_commands: u32,
        /// Digest of what was observed until then.
        transcript_digest: String,
    },
}

/// Marker search result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// A `.git` entry or a Git directory layout was found.
    Found,
    /// Nothing was found, but some parent could not be examined.
    Unknown,
    /// Nothing anywhere up to the root.
    None,
}

/// What `git rev-parse` said about a directory.
struct Discovery {
    bare: bool,
    inside_git_dir: bool,
    inside_worktree: bool,
    git_dir: PathBuf,
    common_dir: PathBuf,
    /// Normal components below the top level.
    depth: usize,
}

/// One probe in progress.
pub(crate) struct Prober<'a> {
    fs: &'a dyn FileSystem,
    git: &'a dyn GitRunner,
    redactor: &'a Redactor,
    still_wanted: &'a dyn Fn() -> bool,
    transcript: Sha256,
    commands: u32,
    last_class: Option<CommandClass>,
    /// Paths that must not appear in reasons.
    known: Vec<PathBuf>,
}

/// A step either continues or ends the probe.
type Step<T> = Result<T, End>;

/// Why a probe ended early.
enum End {
    /// With a state.
    Done(Box<Probe>),
    /// Superseded.
    Superseded,
    /// Git could not be run.
    Failed(RunError),
}

impl<'a> Prober<'a> {
    pub(crate) fn new(
        fs: &'a dyn FileSystem,
        git: &'a dyn GitRunner,
        redactor: &'a Redactor,
        still_wanted: &'a dyn Fn() -> bool,
    ) -> Self {
        Self {
            fs,
            git,
            redactor,
            still_wanted,
            transcript: Sha256::new(),
            commands: 0,
            last_class: None,
            known: Vec::new(),
        }
    }

    fn note(&mut self, what: &str, data: &[u8]) {
        self.transcript.update((what.len() as u64).to_be_bytes());
        self.transcript.update(what.as_bytes());
        self.transcript.update((data.len() as u64).to_be_bytes());
        self.transcript.update(data);
    }

    fn transcript_digest(&self) -> String {
        let digest = self.transcript.clone().finalize();
        sha256_ref(&digest)
    }

    /// A finished probe with everything but the Git facts defaulted.
    fn probe(&self, state: GitState, path: PathEvidence, reason: Option<String>) -> Probe {
        Probe {
            state,
            path,
            branch: None,
            head_sha: None,
            remote_state: RemoteState::NotApplicable,
            worktree_root_digest: None,
            git_dir_digest: None,
            linked_worktree: false,
            reason,
            command_class: self.last_class,
            git_commands: self.commands,
            transcript_digest: self.transcript_digest(),
        }
    }

    fn scrub(&self, text: &str) -> String {
        let known: Vec<&Path> = self.known.iter().map(PathBuf::as_path).collect();
        self.redactor.scrub(text, &known)
    }

    /// Probes a path that could not be resolved.
    pub(crate) fn unusable(mut self, absolute: &Path, state: GitState, reason: &str) -> Probe {
        self.note("unusable", reason.as_bytes());
        // Only the digest is kept; the redactor can still make a hint.
        let path = self.redactor.evidence(absolute);
        self.probe(state, path, Some(reason.to_owned()))
    }

    /// Probes a resolved path.
    pub(crate) fn run(mut self, canonical: &Path, kind: EntryKind) -> Result<Outcome, RunError> {
        self.note("path", &path_bytes(canonical));
        self.known.push(canonical.to_path_buf());
        let evidence = self.redactor.evidence(canonical);
        match self.steps(canonical, kind, &evidence) {
            Ok(p) | Err(End::Done(p)) => {
                let mut p = *p;
                p.transcript_digest = self.transcript_digest();
                p.git_commands = self.commands;
                Ok(Outcome::Done(p))
            }
            Err(End::Superseded) => Ok(Outcome::Superseded {
                last_class: self.last_class,
                git_commands: self.commands,
                transcript_digest: self.transcript_digest(),
            }),
            Err(End::Failed(e)) => Err(e),
        }
    }

    fn done(&self, state: GitState, path: &PathEvidence, reason: impl Into<String>) -> End {
        End::Done(Box::new(self.probe(
            state,
            path.clone(),
            Some(reason.into()),
        )))
    }

    fn git(&mut self, class: CommandClass, dir: &Path, args: &[&str]) -> Step<GitOutput> {
        if !(self.still_wanted)() {
            return Err(End::Superseded);
        }
        let out = self
            .git
            .run(&GitCommand { class, dir, args })
            .map_err(End::Failed)?;
        self.commands = self.commands.saturating_add(1);
        self.last_class = Some(class);
        self.note("git", args.join(" ").as_bytes());
        self.note("code", &out.code.unwrap_or(-1).to_be_bytes());
        self.note("stdout", &out.stdout);
        self.note("stderr", out.stderr.as_bytes());
        Ok(out)
    }

    fn steps(&mut self, canonical: &Path, kind: EntryKind, ev: &PathEvidence) -> Step<Box<Probe>> {
        let denied = "the path cannot be read (permission denied); Git was not run";
        match self.fs.check_readable(canonical, kind) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                self.note("denied", b"path");
                return Err(self.done(GitState::PermissionDenied, ev, denied));
            }
            Err(_) => {
                self.note("unreadable", b"path");
                return Err(self.done(
                    GitState::NotARepo,
                    ev,
                    "the path cannot be read (it vanished, or an I/O error); Git was not run",
                ));
            }
        }
        let dir = match kind {
            EntryKind::Dir => canonical.to_path_buf(),
            _ => {
                let parent = canonical.parent().unwrap_or(canonical).to_path_buf();
                if let Err(e) = self.fs.check_readable(&parent, EntryKind::Dir) {
                    let state = if e.kind() == ErrorKind::PermissionDenied {
                        GitState::PermissionDenied
                    } else {
                        GitState::NotARepo
                    };
                    self.note("denied", b"parent");
                    return Err(self.done(
                        state,
                        ev,
                        "the directory holding the path cannot be read; Git was not run",
                    ));
                }
                parent
            }
        };
        let marker = self.marker(&dir);
        self.note("marker", format!("{marker:?}").as_bytes());
        if marker == Marker::None {
            return Err(self.done(
                GitState::NotARepo,
                ev,
                "no Git marker (.git, or a Git directory) in the path or any parent; Git was not run",
            ));
        }
        let discovery = self.discover(&dir, marker, ev)?;
        let git_dir_digest = Some(path_digest(&discovery.git_dir));
        if discovery.bare {
            let mut p = self.probe(
                GitState::BareRepo,
                ev.clone(),
                Some("a bare repository has no working tree".into()),
            );
            p.git_dir_digest = git_dir_digest;
            return Ok(Box::new(p));
        }
        if discovery.inside_git_dir {
            let mut p = self.probe(
                GitState::InsideGitDir,
                ev.clone(),
                Some("the path is inside a Git directory, not in its working tree".into()),
            );
            p.git_dir_digest = git_dir_digest;
            return Ok(Box::new(p));
        }
        if !discovery.inside_worktree {
            let mut p = self.probe(
                GitState::NotARepo,
                ev.clone(),
                Some("Git knows a repository here but the path is outside its working tree".into()),
            );
            p.git_dir_digest = git_dir_digest;
            return Ok(Box::new(p));
        }
        self.worktree(&dir, kind == EntryKind::Dir, discovery, ev)
    }

    /// Looks for a Git marker in `dir` and its parents.
    fn marker(&self, dir: &Path) -> Marker {
        let mut unknown = false;
        for d in dir.ancestors().take(MAX_ANCESTORS) {
            if d.file_name().is_some_and(|n| n == ".git") {
                return Marker::Found;
            }
            match self.fs.kind(&d.join(".git")) {
                Ok(EntryKind::Dir | EntryKind::File) => return Marker::Found,
                Ok(EntryKind::Other) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => unknown = true,
            }
            let layout = [
                ("HEAD", EntryKind::File),
                ("objects", EntryKind::Dir),
                ("refs", EntryKind::Dir),
            ];
            if layout
                .iter()
                .all(|(name, want)| self.fs.kind(&d.join(name)).ok() == Some(*want))
            {
                return Marker::Found;
            }
        }
        if unknown {
            Marker::Unknown
        } else {
            Marker::None
        }
    }

    fn discover(&mut self, dir: &Path, marker: Marker, ev: &PathEvidence) -> Step<Discovery> {
        let out = self.git(
            CommandClass::RevParse,
            dir,
            &[
                "rev-parse",
                "--is-bare-repository",
                "--is-inside-git-dir",
                "--is-inside-work-tree",
                "--absolute-git-dir",
                "--path-format=absolute",
                "--git-common-dir",
                "--show-prefix",
            ],
        )?;
        if !out.success() {
            let said = self.scrub(&out.stderr);
            let lower = out.stderr.to_ascii_lowercase();
            let (state, reason) = if lower.contains("dubious ownership") {
                (
                    GitState::PermissionDenied,
                    format!(
                        "Git refuses a repository owned by another user (safe.directory): {said}"
                    ),
                )
            } else if lower.contains("permission denied") {
                (
                    GitState::PermissionDenied,
                    format!("Git cannot read the repository: {said}"),
                )
            } else if lower.contains("cannot use bare repository") {
                (
                    GitState::BareRepo,
                    format!("a bare repository that this Git may not use implicitly: {said}"),
                )
            } else if marker == Marker::Unknown && lower.contains("not a git repository") {
                (
                    GitState::NotARepo,
                    "Git finds no repository here".to_owned(),
                )
            } else {
                (
                    GitState::CorruptRepo,
                    format!("a Git marker is present but Git cannot use the repository (damaged HEAD or .git): {said}"),
                )
            };
            return Err(self.done(state, ev, reason));
        }
        let lines = out.lines();
        let flag = |i: usize| lines.get(i).copied() == Some(&b"true"[..]);
        let (Some(git_dir), Some(common_dir), Some(prefix)) =
            (lines.get(3), lines.get(4), lines.get(5))
        else {
            return Err(self.done(
                GitState::CorruptRepo,
                ev,
                "git rev-parse answered with fewer facts than asked for",
            ));
        };
        let git_dir = path_from_bytes(git_dir);
        let common_dir = path_from_bytes(common_dir);
        self.known.push(git_dir.clone());
        self.known.push(common_dir.clone());
        let depth = path_from_bytes(prefix)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count();
        Ok(Discovery {
            bare: flag(0),
            inside_git_dir: flag(1),
            inside_worktree: flag(2),
            git_dir,
            common_dir,
            depth,
        })
    }

    /// `is_dir`: the path is the directory `dir` itself (not a file in it).
    fn worktree(
        &mut self,
        dir: &Path,
        is_dir: bool,
        d: Discovery,
        ev: &PathEvidence,
    ) -> Step<Box<Probe>> {
        let top = dir.ancestors().nth(d.depth).unwrap_or(dir).to_path_buf();
        self.known.push(top.clone());
        let same = |a: &Path, b: &Path| {
            a == b
                || matches!(
                    (self.fs.canonicalize(a), self.fs.canonicalize(b)),
                    (Ok(x), Ok(y)) if x == y
                )
        };
        let linked = !same(&d.git_dir, &d.common_dir);
        let mut facts = self.probe(GitState::InsideWorktree, ev.clone(), None);
        facts.worktree_root_digest = Some(path_digest(&top));
        facts.git_dir_digest = Some(path_digest(&d.git_dir));
        facts.linked_worktree = linked;
        facts.remote_state = RemoteState::Unknown;

        let sym = self.git(
            CommandClass::SymbolicRef,
            dir,
            &["symbolic-ref", "-q", "HEAD"],
        )?;
        match sym.code {
            Some(0) => {
                let name =
                    String::from_utf8_lossy(sym.lines().first().copied().unwrap_or_default())
                        .into_owned();
                let short = name.strip_prefix("refs/heads/").unwrap_or(&name).to_owned();
                facts.branch = Some(self.scrub(&short)).filter(|b| !b.is_empty());
            }
            Some(1) => {}
            _ => {
                let said = self.scrub(&sym.stderr);
                return Err(self.corrupt(facts, format!("HEAD cannot be read: {said}")));
            }
        }

        let head = self.git(
            CommandClass::RevParse,
            dir,
            &["rev-parse", "-q", "--verify", "HEAD^{commit}"],
        )?;
        if head.success() {
            let sha = String::from_utf8_lossy(head.lines().first().copied().unwrap_or_default())
                .into_owned();
            let Some(sha) = commit_id(&sha) else {
                return Err(self.corrupt(facts, "HEAD does not name a commit id".into()));
            };
            facts.head_sha = Some(sha);
        } else {
            let said = self.scrub(&head.stderr);
            let named = self.git(
                CommandClass::RevParse,
                dir,
                &["rev-parse", "-q", "--verify", "HEAD"],
            )?;
            let sha = String::from_utf8_lossy(named.lines().first().copied().unwrap_or_default())
                .into_owned();
            if let Some(sha) = commit_id(&sha).filter(|_| named.success()) {
                facts.head_sha = Some(sha);
                return Err(self.corrupt(
                    facts,
                    format!("HEAD names a commit whose object is missing or damaged: {said}"),
                ));
            }
            if facts.branch.is_none() {
                return Err(self.corrupt(
                    facts,
                    format!("a detached HEAD that names no readable commit: {said}"),
                ));
            }
            if !said.is_empty() {
                return Err(self.corrupt(facts, format!("HEAD cannot be resolved: {said}")));
            }
            // An unborn branch: a new repository without commits.
        }

        let remote = self.git(CommandClass::Remote, dir, &["remote"])?;
        facts.remote_state = if !remote.success() {
            facts.reason = Some(format!("git remote failed: {}", self.scrub(&remote.stderr)));
            RemoteState::Error
        } else if remote.lines().iter().any(|l| !l.is_empty()) {
            RemoteState::Available
        } else {
            RemoteState::Missing
        };

        let (state, class, reason) = if facts.branch.is_none() {
            (
                GitState::DetachedHead,
                CommandClass::SymbolicRef,
                Some("HEAD names a commit, not a branch (detached HEAD)".to_owned()),
            )
        } else if facts.remote_state == RemoteState::Missing {
            (
                GitState::WorktreeNoRemote,
                CommandClass::Remote,
                Some("the working tree has no remote configured".to_owned()),
            )
        } else if d.depth == 0 && is_dir && !linked {
            (GitState::RepoRoot, CommandClass::RevParse, None)
        } else {
            let why = linked.then(|| {
                "a linked worktree (git worktree add) of a repository whose root is elsewhere"
                    .to_owned()
            });
            (GitState::InsideWorktree, CommandClass::RevParse, why)
        };
        facts.state = state;
        facts.command_class = Some(class);
        facts.reason = match (reason, facts.reason.take()) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        Ok(Box::new(facts))
    }

    fn corrupt(&self, mut facts: Probe, reason: String) -> End {
        facts.state = GitState::CorruptRepo;
        facts.command_class = self.last_class;
        facts.remote_state = RemoteState::Unknown;
        facts.reason = Some(reason);
        End::Done(Box::new(facts))
    }
}

/// The commit id as the contract carries it (7 to 40 hex digits): Git
/// prints 40 digits, or 64 in a SHA-256 repository, whose first 40 are an
/// unambiguous abbreviation.
fn commit_id(text: &str) -> Option<String> {
    let ok = (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| text.chars().take(40).collect())
}
