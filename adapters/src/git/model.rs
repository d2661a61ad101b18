//! The vocabulary of Git workspace classification, as the
//! GitWorkspaceState contract spells it: states, severities, operations,
//! actionability, remote state and command classes, plus what each
//! operation needs from a repository and the severity discipline that
//! follows from it ([`assess`]).

use serde::{Deserialize, Serialize};

/// What a path is, as far as Git is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitState {
    /// Neither the path nor any parent holds a repository.
    NotARepo,
    /// The top level of a repository's main working tree, on a branch,
    /// with a remote.
    RepoRoot,
    /// Below the top level of a working tree, or anywhere in a linked
    /// worktree (`git worktree add`), on a branch, with a remote.
    InsideWorktree,
    /// Inside the `.git` directory of a non-bare repository.
    InsideGitDir,
    /// A bare repository (no working tree).
    BareRepo,
    /// A working tree on a branch, without any remote.
    WorktreeNoRemote,
    /// A working tree whose HEAD names a commit instead of a branch.
    DetachedHead,
    /// A Git marker is present but Git cannot use the repository (damaged
    /// HEAD, unreadable objects, an invalid `.git` file).
    CorruptRepo,
    /// The path, or the repository, cannot be read.
    PermissionDenied,
    /// A newer request for the same path made this one moot.
    OperationSuperseded,
}

impl GitState {
    /// All states, in contract order.
    pub const ALL: [GitState; 10] = [
        GitState::NotARepo,
        GitState::RepoRoot,
        GitState::InsideWorktree,
        GitState::InsideGitDir,
        GitState::BareRepo,
        GitState::WorktreeNoRemote,
        GitState::DetachedHead,
        GitState::CorruptRepo,
        GitState::PermissionDenied,
        GitState::OperationSuperseded,
    ];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            GitState::NotARepo => "not_a_repo",
            GitState::RepoRoot => "repo_root",
            GitState::InsideWorktree => "inside_worktree",
            GitState::InsideGitDir => "inside_git_dir",
            GitState::BareRepo => "bare_repo",
            GitState::WorktreeNoRemote => "worktree_no_remote",
            GitState::DetachedHead => "detached_head",
            GitState::CorruptRepo => "corrupt_repo",
            GitState::PermissionDenied => "permission_denied",
            GitState::OperationSuperseded => "operation_superseded",
        }
    }

    /// Whether the path is in a working tree.
    pub fn in_worktree(self) -> bool {
        matches!(
            self,
            GitState::RepoRoot
                | GitState::InsideWorktree
                | GitState::WorktreeNoRemote
                | GitState::DetachedHead
        )
    }
}

impl std::fmt::Display for GitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How loudly a classification should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Only for tracing (a superseded request).
    Debug,
    /// Expected, nothing to do.
    Info,
    /// Something the operation needs is missing, or the repository is
    /// damaged or unreadable.
    Warning,
    /// Reserved by the contract; the classifier does not emit it.
    Error,
}

impl Severity {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Why Git state is being asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// A shell or pane looking around (prompt, status line).
    PassiveDiscovery,
    /// A file watcher refreshing what it shows.
    WatcherRefresh,
    /// A person asked for a Git command here.
    UserRequestedCommand,
    /// An agent asked for a Git command here.
    AgentRequestedCommand,
    /// Continuous-integration validation of a checkout.
    CiValidation,
}

impl Operation {
    /// All operations, in contract order.
    pub const ALL: [Operation; 5] = [
        Operation::PassiveDiscovery,
        Operation::WatcherRefresh,
        Operation::UserRequestedCommand,
        Operation::AgentRequestedCommand,
        Operation::CiValidation,
    ];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::PassiveDiscovery => "passive_discovery",
            Operation::WatcherRefresh => "watcher_refresh",
            Operation::UserRequestedCommand => "user_requested_command",
            Operation::AgentRequestedCommand => "agent_requested_command",
            Operation::CiValidation => "ci_validation",
        }
    }

    /// Parses the contract's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// What the operation needs from the repository by default. Looking
    /// around needs nothing; a person's command needs a working tree; an
    /// agent commits, so it also needs a branch (work on a detached HEAD is
    /// easily lost); CI validates a checkout against its upstream, so it
    /// needs a remote (CI checkouts are often detached, so no branch).
    pub fn default_needs(self) -> Needs {
        match self {
            Operation::PassiveDiscovery | Operation::WatcherRefresh => Needs::NOTHING,
            Operation::UserRequestedCommand => Needs {
                worktree: true,
                branch: false,
                remote: false,
            },
            Operation::AgentRequestedCommand => Needs {
                worktree: true,
                branch: true,
                remote: false,
            },
            Operation::CiValidation => Needs {
                worktree: true,
                branch: false,
                remote: true,
            },
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller should do about a classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actionability {
    /// Nothing.
    None,
    /// The failure reason says how to supply what the operation needs.
    RemediationHint,
    /// The operation cannot go ahead here (damage, denied access).
    Blocked,
    /// Reserved by the contract; the classifier does not emit it.
    Quarantined,
}

impl Actionability {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Actionability::None => "none",
            Actionability::RemediationHint => "remediation_hint",
            Actionability::Blocked => "blocked",
            Actionability::Quarantined => "quarantined",
        }
    }
}

/// Whether the repository has a remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteState {
    /// At least one remote is configured (nothing is contacted).
    Available,
    /// No remote is configured.
    Missing,
    /// Not a working tree, so remotes were not asked about.
    NotApplicable,
    /// `git remote` failed.
    Error,
    /// The probe stopped before asking (superseded).
    Unknown,
}

impl RemoteState {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Available => "available",
            RemoteState::Missing => "missing",
            RemoteState::NotApplicable => "not_applicable",
            RemoteState::Error => "error",
            RemoteState::Unknown => "unknown",
        }
    }
}

/// The class of a Git command the classifier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandClass {
    /// `git config`.
    Config,
    /// `git rev-parse`.
    RevParse,
    /// `git symbolic-ref`.
    SymbolicRef,
    /// `git for-each-ref`.
    ForEachRef,
    /// `git status`.
    Status,
    /// `git remote`.
    Remote,
    /// A file watcher's own probe.
    Watcher,
}

impl CommandClass {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandClass::Config => "config",
            CommandClass::RevParse => "rev_parse",
            CommandClass::SymbolicRef => "symbolic_ref",
            CommandClass::ForEachRef => "for_each_ref",
            CommandClass::Status => "status",
            CommandClass::Remote => "remote",
            CommandClass::Watcher => "watcher",
        }
    }
}

/// What an operation needs from the repository at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Needs {
    /// A working tree.
    pub worktree: bool,
    /// A branch checked out (not a detached HEAD).
    pub branch: bool,
    /// At least one remote.
    pub remote: bool,
}

impl Needs {
    /// Needs nothing.
    pub const NOTHING: Needs = Needs {
        worktree: false,
        branch: false,
        remote: false,
    };

    /// Names of what is needed and missing, in a fixed order.
    pub fn unmet(self, lacks: Needs) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.worktree && lacks.worktree {
            out.push("a working tree");
        }
        if self.branch && lacks.branch {
            out.push("a branch");
        }
        if self.remote && lacks.remote {
            out.push("a remote");
        }
        out
    }
}

/// The severity discipline's verdict for one classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// Severity.
    pub severity: Severity,
    /// What to do.
    pub actionability: Actionability,
    /// The state is a normal negative answer for this operation.
    pub expected_negative: bool,
}

/// Severity discipline. Healthy states are `info`. Expected negative
/// states (not a repository, inside `.git`, bare, no remote, detached) are
/// `info`, and become `warning` with a remediation hint only when `needs`
/// asks for what the path `lacks`. A superseded request is `debug`.
/// Damage and denied access are always `warning`, and block the operation.
pub fn assess(state: GitState, needs: Needs, lacks: Needs) -> Assessment {
    let quiet = |expected_negative| Assessment {
        severity: Severity::Info,
        actionability: Actionability::None,
        expected_negative,
    };
    match state {
        GitState::CorruptRepo | GitState::PermissionDenied => Assessment {
            severity: Severity::Warning,
            actionability: Actionability::Blocked,
            expected_negative: false,
        },
        GitState::OperationSuperseded => Assessment {
            severity: Severity::Debug,
            actionability: Actionability::None,
            expected_negative: true,
        },
        _ if !needs.unmet(lacks).is_empty() => Assessment {
            severity: Severity::Warning,
            actionability: Actionability::RemediationHint,
            expected_negative: false,
        },
        GitState::RepoRoot | GitState::InsideWorktree => quiet(false),
        GitState::NotARepo
        | GitState::InsideGitDir
        | GitState::BareRepo
        | GitState::WorktreeNoRemote
        | GitState::DetachedHead => quiet(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lacks_of(state: GitState) -> Needs {
        match state {
            GitState::WorktreeNoRemote => Needs {
                worktree: false,
                branch: false,
                remote: true,
            },
            GitState::DetachedHead => Needs {
                worktree: false,
                branch: true,
                remote: false,
            },
            s if s.in_worktree() => Needs::NOTHING,
            _ => Needs {
                worktree: true,
                branch: true,
                remote: true,
            },
        }
    }

    /// Every (state, operation) pair against the discipline written out
    /// as a table.
    #[test]
    fn severity_table() {
        use GitState as S;
        use Operation as O;
        for state in GitState::ALL {
            for op in Operation::ALL {
                let a = assess(state, op.default_needs(), lacks_of(state));
                let expected = match (state, op) {
                    (S::CorruptRepo | S::PermissionDenied, _) => Severity::Warning,
                    (S::OperationSuperseded, _) => Severity::Debug,
                    (S::RepoRoot | S::InsideWorktree, _) => Severity::Info,
                    (_, O::PassiveDiscovery | O::WatcherRefresh) => Severity::Info,
                    (S::NotARepo | S::InsideGitDir | S::BareRepo, _) => Severity::Warning,
                    (S::WorktreeNoRemote, O::CiValidation) => Severity::Warning,
                    (S::DetachedHead, O::AgentRequestedCommand) => Severity::Warning,
                    (S::WorktreeNoRemote | S::DetachedHead, _) => Severity::Info,
                };
                assert_eq!(a.severity, expected, "{state} under {op}");
                let blocked = matches!(state, S::CorruptRepo | S::PermissionDenied);
                assert_eq!(a.actionability == Actionability::Blocked, blocked);
                if a.severity == Severity::Info {
                    assert_eq!(a.actionability, Actionability::None, "{state} {op}");
                }
                if a.severity == Severity::Warning && !blocked {
                    assert_eq!(a.actionability, Actionability::RemediationHint);
                    assert!(!a.expected_negative);
                }
            }
        }
    }

    #[test]
    fn names_round_trip_through_serde() {
        for s in GitState::ALL {
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(v, s.as_str());
        }
        for o in Operation::ALL {
            assert_eq!(Operation::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(Operation::parse("nope"), None);
    }
}
