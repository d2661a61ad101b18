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

/// A `syncd daemon` started by a test on a home, with its own runtime
/// directory. Dropping it kills the process, so a failing test never
/// leaves a daemon behind.
pub struct Daemon {
    pub child: Option<std::process::Child>,
    pub runtime: tempfile::TempDir,
    pub stderr_file: PathBuf,
}

impl Home {
    /// Starts the daemon and waits until its API answers.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[], &[])
    }

    /// Starts the daemon with extra arguments and environment variables.
    pub fn start_daemon_with(&self, args: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let runtime = tempfile::tempdir().expect("runtime dir");
        let stderr_file = runtime.path().join("daemon.stderr");
        let err = std::fs::File::create(&stderr_file).expect("stderr file");
        let mut all = vec!["daemon"];
        all.extend_from_slice(args);
        let mut cmd = self.cmd(&all);
        cmd.env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .env("SYNCD_RUNTIME_DIR", runtime.path())
            .env("SYNCD_LOG", "info")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn daemon");
        let d = Daemon {
            child: Some(child),
            runtime,
            stderr_file,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(sock) = self.daemon_socket() {
                if let Ok((200, _)) = http(&sock, "GET", "/v1/health", &[], b"") {
                    return d;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not start: {}",
                d.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// The socket named by `HOME/daemon.json`, while a daemon runs.
    pub fn daemon_socket(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.path().join("daemon.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["socket"].as_str().map(PathBuf::from)
    }

    /// Writes `HOME/daemon.toml`.
    pub fn daemon_config(&self, text: &str) {
        std::fs::write(self.path().join("daemon.toml"), text).expect("write daemon.toml");
    }

    /// Polls `syncd status --json` until `pred` holds; returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let s = self.status_json();
            if pred(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 exchange over a Unix socket; returns status and body.
pub fn http(
    socket: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, all[split + 4..].to_vec()))
}

/// A validator for a published SourceOS schema, by its path under
/// `shared/spec/` (which sits beside the repository), with formats checked.
pub fn spec_schema(relative: &str) -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec")
        .join(relative);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("the SourceOS spec must sit beside the repository: {p:?}: {e}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&serde_json::from_str(&text).expect("schema is JSON"))
        .expect("schema compiles")
}
