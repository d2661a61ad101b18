//! End-to-end tests of `syncd git-state PATH` through the binary, against
//! real `git` repositories made here in every state the binary can meet:
//! a plain directory, a repository root and a subdirectory, inside `.git`,
//! a bare repository, no remote, a detached HEAD, a linked worktree, and
//! corrupted repositories. Every JSON document is validated against the
//! published GitWorkspaceState schema (`../shared/spec`), and no output,
//! human or JSON, nor the log after `--record`, contains the raw path.
//! Permission failures and supersession cannot be produced through one
//! process run as root; the adapter's tests cover them through its
//! filesystem and Git traits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{stderr, stdout, Home};

/// Where the repositories live; it stands in for the user's home so that
/// hints read `~/…`.
struct Lab {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    root: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().to_path_buf();
        let root = std::fs::canonicalize(&raw).unwrap();
        Self {
            _dir: dir,
            raw,
            root,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn repo(&self, rel: &str, remote: bool) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.join("src")).unwrap();
        git(&p, &["init", "-q", "-b", "main"]);
        std::fs::write(p.join("src/main.rs"), "fn main() {}\n").unwrap();
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

    /// Fails the test if `text` holds a raw path of the lab.
    fn assert_no_raw_path(&self, text: &str) {
        for p in [&self.raw, &self.root] {
            let p = p.to_str().unwrap();
            assert!(!text.contains(p), "raw path {p} in:\n{text}");
        }
    }
}

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

fn schema() -> jsonschema::Validator {
    support::spec_schema("schemas/GitWorkspaceState.json")
}

/// `syncd git-state` with the lab as `$HOME`.
fn run(home: &Home, lab: &Lab, args: &[&str]) -> Output {
    let mut all = vec!["git-state"];
    all.extend_from_slice(args);
    let out = home
        .cmd(&all)
        .env("HOME", &lab.root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    lab.assert_no_raw_path(&stdout(&out));
    lab.assert_no_raw_path(&stderr(&out));
    out
}

/// The document for `path` under `op`: exit 0, valid against the schema.
fn state(home: &Home, lab: &Lab, path: &Path, op: &str) -> Value {
    let out = run(
        home,
        lab,
        &[path.to_str().unwrap(), "--operation", op, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<String> = schema()
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
    assert_eq!(doc["pathEvidence"]["rawPathStored"], false);
    doc
}

fn expect(doc: &Value, state: &str, severity: &str) {
    assert_eq!(
        (doc["state"].as_str(), doc["severity"].as_str()),
        (Some(state), Some(severity)),
        "{doc:#}"
    );
}

#[test]
fn every_state_through_the_binary() {
    let lab = Lab::new();
    // No store is needed to classify.
    let home = Home::empty();

    let plain = lab.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let d = state(&home, &lab, &plain, "passive_discovery");
    expect(&d, "not_a_repo", "info");
    assert_eq!(d["expectedNegativeState"], true);
    assert_eq!(d["gitFacts"]["commandClass"], Value::Null);
    assert_eq!(d["pathEvidence"]["redactedPathHint"], "~/plain");
    assert_eq!(d["pathEvidence"]["redaction"], "user_home_redacted");
    let d = state(&home, &lab, &plain, "agent_requested_command");
    expect(&d, "not_a_repo", "warning");
    assert_eq!(d["actionability"], "remediation_hint");
    let d = state(&home, &lab, &lab.path("missing"), "watcher_refresh");
    expect(&d, "not_a_repo", "info");

    let repo = lab.repo("app", true);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let d = state(&home, &lab, &repo, "user_requested_command");
    expect(&d, "repo_root", "info");
    assert_eq!(d["gitFacts"]["branch"], "main");
    assert_eq!(d["gitFacts"]["headSha"], head.as_str());
    assert_eq!(d["gitFacts"]["remoteState"], "available");
    let root_digest = d["pathEvidence"]["pathDigest"].clone();
    assert_eq!(d["gitFacts"]["worktreeRootDigest"], root_digest);
    let d = state(&home, &lab, &repo.join("src"), "ci_validation");
    expect(&d, "inside_worktree", "info");
    assert_eq!(d["gitFacts"]["worktreeRootDigest"], root_digest);
    assert_eq!(d["pathEvidence"]["redactedPathHint"], "~/app/src");

    let d = state(&home, &lab, &repo.join(".git/refs"), "watcher_refresh");
    expect(&d, "inside_git_dir", "info");

    let bare = lab.path("b.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    expect(
        &state(&home, &lab, &bare, "passive_discovery"),
        "bare_repo",
        "info",
    );
    expect(
        &state(&home, &lab, &bare, "user_requested_command"),
        "bare_repo",
        "warning",
    );

    let solo = lab.repo("solo", false);
    let d = state(&home, &lab, &solo, "passive_discovery");
    expect(&d, "worktree_no_remote", "info");
    assert_eq!(d["gitFacts"]["remoteState"], "missing");
    expect(
        &state(&home, &lab, &solo, "ci_validation"),
        "worktree_no_remote",
        "warning",
    );

    let det = lab.repo("det", true);
    git(&det, &["checkout", "-q", "--detach"]);
    let d = state(&home, &lab, &det, "watcher_refresh");
    expect(&d, "detached_head", "info");
    assert_eq!(d["gitFacts"]["branch"], Value::Null);
    expect(
        &state(&home, &lab, &det, "agent_requested_command"),
        "detached_head",
        "warning",
    );

    let wt = lab.path("app-feature");
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
    let d = state(&home, &lab, &wt, "agent_requested_command");
    expect(&d, "inside_worktree", "info");
    assert_eq!(d["gitFacts"]["branch"], "feature");
    assert_eq!(
        d["gitFacts"]["worktreeRootDigest"],
        d["pathEvidence"]["pathDigest"]
    );
    assert!(d["gitFacts"]["failureReason"]
        .as_str()
        .unwrap()
        .contains("linked worktree"));

    let broken = lab.repo("broken-head", true);
    std::fs::write(broken.join(".git/HEAD"), "garbage\n").unwrap();
    let d = state(&home, &lab, &broken, "passive_discovery");
    expect(&d, "corrupt_repo", "warning");
    assert_eq!(d["actionability"], "blocked");

    let damaged = lab.repo("broken-object", true);
    let head = git(&damaged, &["rev-parse", "HEAD"]);
    let obj = damaged
        .join(".git/objects")
        .join(&head[..2])
        .join(&head[2..]);
    std::fs::remove_file(&obj).unwrap();
    std::fs::write(&obj, b"damaged").unwrap();
    let d = state(&home, &lab, &damaged.join("src"), "watcher_refresh");
    expect(&d, "corrupt_repo", "warning");
    assert_eq!(d["gitFacts"]["headSha"], head.as_str());

    let gitfile = lab.path("bad-gitfile");
    std::fs::create_dir_all(&gitfile).unwrap();
    std::fs::write(gitfile.join(".git"), "gitdir: /nowhere/at/all\n").unwrap();
    let d = state(&home, &lab, &gitfile, "passive_discovery");
    expect(&d, "corrupt_repo", "warning");

    // Relative paths and symbolic links resolve to the same evidence.
    let link = lab.path("link-to-app");
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    let d = state(&home, &lab, &link, "passive_discovery");
    assert_eq!(d["pathEvidence"]["pathDigest"], root_digest);
    let out = home
        .cmd(&["git-state", "src", "--json"])
        .current_dir(&repo)
        .env("HOME", &lab.root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&d, "inside_worktree", "info");
}

#[test]
fn human_output_names_the_state_and_never_the_path() {
    let lab = Lab::new();
    let home = Home::empty();
    let repo = lab.repo("proj", false);
    let out = run(&home, &lab, &[repo.join("src").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("worktree_no_remote  info  (passive_discovery)"),
        "{text}"
    );
    assert!(text.contains("~/proj/src"), "{text}");
    assert!(text.contains("branch    main"), "{text}");

    // Outside $HOME, a workspace alias stands for the root; without one,
    // only the digest is shown.
    let out = home
        .cmd(&[
            "git-state",
            repo.join("src").to_str().unwrap(),
            "--workspace",
            "proj",
            "--workspace-root",
            repo.to_str().unwrap(),
            "--json",
        ])
        .env("HOME", "/nonexistent-home")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    lab.assert_no_raw_path(&stdout(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["pathEvidence"]["redaction"], "workspace_alias");
    assert_eq!(d["pathEvidence"]["redactedPathHint"], "proj/src");
    assert_eq!(d["workspaceRef"], "urn:srcos:workspace:proj");
    let out = home
        .cmd(&["git-state", repo.to_str().unwrap(), "--json"])
        .env("HOME", "/nonexistent-home")
        .output()
        .unwrap();
    lab.assert_no_raw_path(&stdout(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["pathEvidence"]["redaction"], "digest_only");
    assert_eq!(d["pathEvidence"]["redactedPathHint"], Value::Null);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let lab = Lab::new();
    let home = Home::empty();
    let p = lab.root.to_str().unwrap().to_owned();
    for args in [
        vec![p.as_str(), "--operation", "push"],
        vec![p.as_str(), "--session", "session:1"],
        vec![
            p.as_str(),
            "--policy-decision",
            "urn:srcos:policy-decision:x",
        ],
        vec![p.as_str(), "--workspace", "has space"],
        vec![
            p.as_str(),
            "--workspace-root",
            "/nonexistent/root",
            "--workspace",
            "w",
        ],
    ] {
        let out = run(&home, &lab, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // --record needs a store.
    let out = run(&home, &lab, &[p.as_str(), "--record"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn record_appends_an_event_and_the_projection_keeps_the_latest_per_path() {
    let lab = Lab::new();
    let home = Home::new();
    let repo = lab.repo("tracked", true);
    let p = repo.to_str().unwrap();

    let out = run(&home, &lab, &[p, "--record", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&first, "repo_root", "info");
    let digest = first["pathEvidence"]["pathDigest"]
        .as_str()
        .unwrap()
        .to_owned();

    git(&repo, &["checkout", "-q", "--detach"]);
    let out = run(
        &home,
        &lab,
        &[p, "--record", "--operation", "agent_requested_command"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("recorded  event 2"),
        "{}",
        stdout(&out)
    );
    let out = run(
        &home,
        &lab,
        &[repo.join("src").to_str().unwrap(), "--record"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = home.run(&["log", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stdout(&out);
    lab.assert_no_raw_path(&log);
    let events = support::json_lines(&out);
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e["kind"], "git.workspace_state_recorded", "{e:#}");
        assert_eq!(e["actor"], "actor:git-classifier");
    }
    assert_eq!(events[0]["subject"], digest.as_str());
    assert_eq!(events[1]["subject"], digest.as_str());
    assert_ne!(events[2]["subject"], digest.as_str());
    // Probes made outside a session join none: no orphan waits for the
    // document's placeholder session.
    for e in &events {
        assert!(e.get("session").is_none_or(Value::is_null), "{e:#}");
    }
    let orphans: Value = serde_json::from_slice(&home.run(&["orphans", "--json"]).stdout).unwrap();
    assert_eq!(orphans, serde_json::json!([]));

    let status = home.status_json();
    assert_eq!(status["projections"]["git_state"]["state"], "current");
    assert_eq!(status["projections"]["git_state"]["checkpoint_seq"], 3);
    // The projection is derived state like any other: the doctor checks
    // it against a fresh fold, and a rebuild reproduces it.
    let out = home.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = home.run(&["rebuild", "--projection", "git_state"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = home.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    for mode in ["garble", "drop"] {
        let out = home.run(&[
            "drill",
            "damage-derived",
            "--tree",
            "p.git_state",
            "--mode",
            mode,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let out = home.run(&["doctor"]);
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", stdout(&out));
        assert!(stdout(&out).contains("p.git_state"), "{}", stdout(&out));
        let out = home.run(&["doctor", "--repair"]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stdout(&out));
        assert_eq!(
            home.status_json()["projections"]["git_state"]["state"],
            "current"
        );
    }
}

#[test]
fn ingest_validates_git_state_documents() {
    let home = Home::new();
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/spec/examples/gitworkspacestate.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let line = |payload: &Value| {
        serde_json::json!({
            "kind": "git.workspace_state_recorded",
            "actor": "actor:agent-one",
            "payload": payload,
        })
        .to_string()
    };
    let out = home.ingest(&[line(&example)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let mut raw = example.clone();
    raw["pathEvidence"]["rawPathStored"] = true.into();
    raw["id"] = "urn:srcos:git-workspace-state:2".into();
    let mut absolute = example.clone();
    absolute["pathEvidence"]["redactedPathHint"] = "/home/ada/project".into();
    absolute["id"] = "urn:srcos:git-workspace-state:3".into();
    for bad in [raw, absolute] {
        let out = home.ingest(&[line(&bad)]);
        assert_eq!(out.status.code(), Some(65), "{}", stdout(&out));
        assert!(stdout(&out).contains("pathEvidence"), "{}", stdout(&out));
    }
    assert_eq!(home.head(), 1);
}

/// A `git` on `PATH` that logs each call and runs the real one.
fn logging_git(lab: &Lab) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let real = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_owned();
    assert!(!real.is_empty(), "git is installed");
    let bin = lab.path("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = lab.path("git-calls.log");
    let script = bin.join("git");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (PathBuf::from(path), log)
}

/// INV-GIT-01 through the binary: a missing path and a directory with no
/// Git marker above it are classified without starting Git at all; a
/// repository is probed with read-only commands.
#[test]
fn git_runs_only_where_a_repository_may_be() {
    let lab = Lab::new();
    let home = Home::empty();
    let (path, log) = logging_git(&lab);
    let plain = lab.path("plain/deeper");
    std::fs::create_dir_all(&plain).unwrap();
    let repo = lab.repo("repo", true);
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    for p in [plain.clone(), lab.path("does/not/exist")] {
        let out = home
            .cmd(&["git-state", p.to_str().unwrap(), "--json"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let d: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(d["state"], "not_a_repo");
        assert_eq!(calls(), "", "git ran for {p:?}");
    }
    let out = home
        .cmd(&["git-state", repo.to_str().unwrap(), "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let commands: Vec<String> = calls()
        .lines()
        .map(|l| {
            // "-C <dir> -c core.fsmonitor=false <subcommand> ..."
            l.split_whitespace().nth(4).unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        commands,
        ["rev-parse", "symbolic-ref", "rev-parse", "remote"],
        "{}",
        calls()
    );
}

/// A real permission failure, where the tests do not run as root (root
/// reads everything; the adapter's tests cover that case through the
/// filesystem trait).
#[test]
fn unreadable_directory_is_permission_denied_when_not_root() {
    use std::os::unix::fs::PermissionsExt;
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return;
    }
    let lab = Lab::new();
    let home = Home::empty();
    let repo = lab.repo("locked", true);
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = run(&home, &lab, &[repo.to_str().unwrap(), "--json"]);
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&d, "permission_denied", "warning");
}

#[test]
fn a_state_recorded_in_a_session_joins_that_session() {
    let lab = Lab::new();
    let home = Home::new();
    let repo = lab.repo("in-session", true);
    let p = repo.to_str().unwrap();
    let open = serde_json::json!({"kind": "session.opened", "actor": "actor:agent-one",
        "session": "urn:srcos:session:work", "payload": {}});
    assert_eq!(home.ingest(&[open.to_string()]).status.code(), Some(0));
    let out = run(
        &home,
        &lab,
        &[
            p,
            "--record",
            "--session",
            "urn:srcos:session:work",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sessionRef"], "urn:srcos:session:work");
    let session: Value =
        serde_json::from_slice(&home.run(&["session", "work", "--json"]).stdout).unwrap();
    // The opening and the recorded state.
    assert_eq!(session["session"]["events"], 2, "{session:#}");
    let orphans: Value = serde_json::from_slice(&home.run(&["orphans", "--json"]).stdout).unwrap();
    assert_eq!(orphans, serde_json::json!([]));
}
