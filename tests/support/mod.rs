//! Shared helpers for the end-to-end tests: run the real `syncd` binary
//! against a temporary home, and touch the sled database directly when a
//! test needs to damage it the way a disk or a stray tool would.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

/// A raw key/value pair.
pub type Row = (Vec<u8>, Vec<u8>);

/// A temporary home with an initialised store.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self::device("device:test-a", "profile:local-dev")
    }

    /// A home initialised as the given device of the given profile.
    pub fn device(device: &str, profile: &str) -> Self {
        let home = Self::empty();
        let out = home.run(&["init", "--device", device, "--profile", profile]);
        assert_eq!(out.status.code(), Some(0), "init failed: {}", stderr(&out));
        home
    }

    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--home").arg(self.path()).args(args);
        c.env_remove("SYNCD_HOME");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run syncd")
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn syncd");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait syncd");
        writer.join().expect("writer");
        out
    }

    /// `syncd ingest` of the given lines; returns the output.
    pub fn ingest(&self, lines: &[String]) -> Output {
        let mut input = lines.join("\n");
        input.push('\n');
        self.run_stdin(&["ingest"], input.as_bytes())
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    pub fn head(&self) -> u64 {
        self.status_json()["log"]["head_seq"]
            .as_u64()
            .expect("head_seq")
    }

    /// Opens the sled database directly (no syncd process may be running).
    pub fn raw_db(&self) -> sled::Db {
        sled::Config::new()
            .path(self.path().join("db"))
            .cache_capacity(8 << 20)
            .open()
            .expect("open raw db")
    }

    /// Every tree's raw content, for "nothing was modified" checks.
    pub fn raw_dump(&self) -> Vec<(Vec<u8>, Vec<Row>)> {
        let db = self.raw_db();
        let mut names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = db.open_tree(&n).expect("tree");
                let rows = t
                    .iter()
                    .map(|r| r.expect("row"))
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect();
                (n, rows)
            })
            .collect()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses JSON Lines output.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A valid event line.
pub fn event(i: u64) -> String {
    format!(
        r#"{{"kind":"note.added","actor":"actor:agent-{}","subject":"object:{}","idempotency_key":"k-{i}","payload":{{"n":{i}}}}}"#,
        i % 3,
        i % 17
    )
}
