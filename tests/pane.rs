//! The Workspace pane in headless Chromium, driven through chromedriver's
//! WebDriver HTTP API: the page served by `syncd daemon --tcp … --pane`
//! shows a conflict within a second of it being recorded. Chromium and
//! chromedriver are required (Debian `chromium`, `chromium-driver`;
//! `scripts/test` installs them): without them this test fails, it never
//! passes silently.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{stderr, Home};

const SETUP: [&str; 4] = [
    r#"{"kind":"schema.registered","actor":"actor:local-user","payload":{"schema_id":"schema:source-object:v1","object_type":"source_object","schema_version":"v1","required_fields":["object_id"]}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-one","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"actor.registered","actor":"actor:local-user","payload":{"actor_id":"actor:agent-two","actor_type":"agent","trust_level":"local"}}"#,
    r#"{"kind":"object.created","actor":"actor:agent-one","payload":{"object_id":"object:alpha","object_type":"file","schema_id":"schema:source-object:v1","privacy_class":"work"}}"#,
];

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for n in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// chromedriver, and the browser session it started: a failing test
/// still ends the browser (deleting the session) before the driver, so no
/// Chromium is left behind.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = s.read(&mut [0u8; 256]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver request; chromedriver answers JSON.
fn wd(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open: read the head, then
    // exactly Content-Length bytes.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "webdriver closed early");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("webdriver answer {:?}: {e}", String::from_utf8_lossy(&body)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text_of(port: u16, session: &str, id: &str) -> String {
    let v = wd(
        port,
        "POST",
        &format!("/session/{session}/execute/sync"),
        Some(
            &json!({"script": "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", "args": [id]}),
        ),
    );
    v["value"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn the_pane_shows_a_conflict_within_a_second() {
    let chromium = find(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
        panic!("chromium is required for the Workspace pane test: install the Debian packages `chromium` and `chromium-driver` (scripts/test does)")
    });
    let driver = find(&["chromedriver"]).unwrap_or_else(|| {
        panic!("chromedriver is required for the Workspace pane test: install the Debian package `chromium-driver` (scripts/test does)")
    });

    let home = Home::new();
    let out = home.ingest(&SETUP.map(str::to_owned));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _daemon = home.start_daemon_with(&["--tcp", "127.0.0.1:0", "--pane"], &[]);
    let named: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("daemon.json")).unwrap()).unwrap();
    let addr = named["tcp"].as_str().unwrap().to_owned();

    let port = free_port();
    let mut guard = Driver {
        child: Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        port,
        session: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir().unwrap();
    let created = wd(
        port,
        "POST",
        "/session",
        Some(
            &json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())]
            }}}}),
        ),
    );
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("chromium did not start: {created}"))
        .to_owned();
    guard.session = Some(session.clone());
    wd(
        port,
        "POST",
        &format!("/session/{session}/url"),
        Some(&json!({"url": format!("http://{addr}/pane")})),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while text_of(port, &session, "link") != "live" || text_of(port, &session, "health").is_empty()
    {
        assert!(Instant::now() < deadline, "the pane never went live");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(text_of(port, &session, "health"), "clean");
    assert_eq!(text_of(port, &session, "conflict-count"), "0");

    // Two agents change the same version of the object: a conflict.
    let x = home.run(&["explain", "object:alpha", "--json"]);
    let base = serde_json::from_slice::<Value>(&x.stdout).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let up = |actor: &str, title: &str| {
        format!(
            r#"{{"kind":"object.updated","actor":"{actor}","payload":{{"object_id":"object:alpha","base_version":"{base}","title":"{title}"}}}}"#
        )
    };
    let out = home.ingest(&[up("actor:agent-one", "a"), up("actor:agent-two", "b")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recorded = Instant::now();
    while text_of(port, &session, "conflict-count") != "1" {
        assert!(
            recorded.elapsed() < Duration::from_secs(1),
            "the pane did not show the conflict within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(text_of(port, &session, "health"), "conflicted");
}

#[test]
fn the_pane_needs_loopback_tcp_and_a_refusal_records_nothing() {
    let home = Home::new();
    let before = home.head();
    let out = home.run(&["daemon", "--pane"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tcp"), "{}", stderr(&out));
    assert_eq!(home.head(), before);
    assert!(!home.path().join("daemon.json").exists());
}
