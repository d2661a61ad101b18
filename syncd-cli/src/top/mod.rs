//! `syncd top`: a terminal dashboard fed by the daemon's event stream.
//! A feed thread follows `GET /v1/events/stream` and refreshes the status
//! document; when the daemon goes away it retries, and resumes after the
//! last event it saw (`Last-Event-ID`), so a restart loses nothing and
//! repeats nothing. The terminal side only draws and reads keys.

mod model;
mod view;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sourceos_syncd as core;

use crate::daemon::http;
use crate::{exit, Failure};
use model::{Dashboard, Key, Link};

/// Messages from the feed to the dashboard.
enum Msg {
    Status(Box<core::StatusDocument>),
    Event(u64, Value),
    Link(Link),
}

/// Messages that may wait for the dashboard.
const FEED_QUEUE_MESSAGES: usize = 1_024;
/// Events shown from before the dashboard started.
const BACKLOG_EVENTS: u64 = 50;
/// Pause between attempts to reach a daemon that does not answer.
const RETRY_MS: u64 = 250;
/// How long a read of the stream waits before the status is refreshed.
const STREAM_READ_MS: u64 = 1_000;
/// Status refreshes at most this often while events arrive.
const STATUS_REFRESH_MS: u64 = 300;
/// Longest stream line accepted, in bytes.
const MAX_FRAME_LINE_BYTES: usize = 1 << 20;
/// Size of the frame printed by `--headless-until`.
const HEADLESS_COLUMNS: u16 = 110;
const HEADLESS_ROWS: u16 = 70;
/// How long `--headless-until` waits for its event.
const HEADLESS_WAIT_MS: u64 = 30_000;

fn socket_of(home: &Path) -> Option<PathBuf> {
    crate::daemon::client::discover(home)
}

fn fetch_status(socket: &Path) -> Option<core::StatusDocument> {
    let r = http::request(socket, "GET", "/v1/status", &[], &[], 5_000).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// Follows the daemon of `home` until `stop` is set.
fn feed(home: &Path, tx: &SyncSender<Msg>, stop: &AtomicBool) {
    let mut last: Option<u64> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(socket) = socket_of(home) else {
            if tx
                .send(Msg::Link(Link::Reconnecting("no daemon answers".into())))
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(RETRY_MS));
            continue;
        };
        let why = follow(&socket, &mut last, tx, stop);
        if tx.send(Msg::Link(Link::Reconnecting(why))).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(RETRY_MS));
    }
}

/// Reads one connection's stream; returns why it ended.
fn follow(
    socket: &Path,
    last: &mut Option<u64>,
    tx: &SyncSender<Msg>,
    stop: &AtomicBool,
) -> String {
    let Some(status) = fetch_status(socket) else {
        return "the daemon does not answer".into();
    };
    let head = status.log.head_seq;
    if tx.send(Msg::Status(Box::new(status))).is_err() {
        return "closed".into();
    }
    let (target, resume) = match last {
        Some(id) => ("/v1/events/stream".to_owned(), Some(id.to_string())),
        None => (
            format!(
                "/v1/events/stream?from={}",
                head.saturating_sub(BACKLOG_EVENTS).max(1)
            ),
            None,
        ),
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: syncd\r\n");
    if let Some(id) = resume {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    let setup = stream
        .set_read_timeout(Some(Duration::from_millis(STREAM_READ_MS)))
        .and_then(|()| stream.write_all(request.as_bytes()));
    if let Err(e) = setup {
        return format!("cannot ask for the stream: {e}");
    }
    if tx.send(Msg::Link(Link::Connected)).is_err() {
        return "closed".into();
    }
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let (mut id, mut data): (Option<u64>, Option<Value>) = (None, None);
    let mut refreshed = Instant::now();
    let mut dirty = false;
    while !stop.load(Ordering::SeqCst) {
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return "the daemon closed the stream".into(),
            Ok(_) if buf.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                } else if line.is_empty() {
                    if let (Some(i), Some(d)) = (id.take(), data.take()) {
                        *last = Some(i);
                        dirty = true;
                        if tx.send(Msg::Event(i, d)).is_err() {
                            return "closed".into();
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return format!("stream failed: {e}"),
        }
        if buf.len() > MAX_FRAME_LINE_BYTES {
            return "a stream line is too long".into();
        }
        if dirty && refreshed.elapsed() >= Duration::from_millis(STATUS_REFRESH_MS) {
            if let Some(s) = fetch_status(socket) {
                if tx.send(Msg::Status(Box::new(s))).is_err() {
                    return "closed".into();
                }
            }
            refreshed = Instant::now();
            dirty = false;
        }
    }
    "stopped".into()
}

fn apply(d: &mut Dashboard, m: Msg) {
    match m {
        Msg::Status(s) => d.status = Some(*s),
        Msg::Event(id, data) => d.event(id, &data),
        Msg::Link(l) => d.link = l,
    }
}

fn start_feed(home: &Path) -> (Receiver<Msg>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::sync_channel(FEED_QUEUE_MESSAGES);
    let stop = Arc::new(AtomicBool::new(false));
    let home = home.to_path_buf();
    let flag = stop.clone();
    // Detached: it ends when it sees the flag or the receiver is gone.
    let _ = std::thread::Builder::new()
        .name("top-feed".into())
        .spawn(move || feed(&home, &tx, &flag));
    (rx, stop)
}

/// Renders the dashboard as text, one line per terminal row.
pub fn render_text(d: &Dashboard, columns: u16, rows: u16) -> Result<String, Failure> {
    let backend = ratatui::backend::TestBackend::new(columns, rows);
    let mut term = ratatui::Terminal::new(backend).map_err(|e| Failure::store(&e))?;
    term.draw(|f| view::draw(f, d))
        .map_err(|e| Failure::store(&e))?;
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..rows {
        for x in 0..columns {
            out.push_str(buf.cell((x, y)).map_or(" ", |c| c.symbol()));
        }
        out.push('\n');
    }
    Ok(out)
}

/// `syncd top`.
pub fn top(home: &Path, a: &crate::cli::TopArgs) -> Result<u8, Failure> {
    let (rx, stop) = start_feed(home);
    let result = match &a.headless_until {
        Some(subject) => headless(&rx, subject),
        None => interactive(&rx),
    };
    stop.store(true, Ordering::SeqCst);
    result
}

/// Follows the stream until an event about `subject` arrived, then
/// prints one frame: for tests and for scripts that want a picture of
/// the state.
fn headless(rx: &Receiver<Msg>, subject: &str) -> Result<u8, Failure> {
    let mut d = Dashboard::default();
    let deadline = Instant::now() + Duration::from_millis(HEADLESS_WAIT_MS);
    while !d.events.iter().any(|e| e.subject == subject) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) => apply(&mut d, m),
            Err(_) => {
                return Err(Failure {
                    code: exit::UNAVAILABLE,
                    message: format!("no event about {subject} arrived"),
                })
            }
        }
    }
    // The status that follows the last event, when it comes soon.
    let settle = Instant::now() + Duration::from_millis(STATUS_REFRESH_MS * 3);
    while let Ok(m) = rx.recv_timeout(settle.saturating_duration_since(Instant::now())) {
        apply(&mut d, m);
    }
    let mut out = crate::output::Out::new();
    out.raw(render_text(&d, HEADLESS_COLUMNS, HEADLESS_ROWS)?.as_bytes())?;
    out.flush()?;
    Ok(exit::OK)
}

/// Puts the terminal back however the dashboard ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
        let _ = crossterm::execute!(std::io::stdout(), crossterm::terminal::LeaveAlternateScreen);
    }
}

fn key_of(e: &crossterm::event::KeyEvent) -> Option<Key> {
    use crossterm::event::{KeyCode, KeyModifiers};
    match e.code {
        KeyCode::Tab | KeyCode::Right => Some(Key::Next),
        KeyCode::BackTab | KeyCode::Left => Some(Key::Previous),
        KeyCode::Up | KeyCode::Char('k') => Some(Key::Up),
        KeyCode::Down | KeyCode::Char('j') => Some(Key::Down),
        KeyCode::Char('q') | KeyCode::Esc => Some(Key::Quit),
        KeyCode::Char('c') if e.modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Quit),
        _ => None,
    }
}

fn interactive(rx: &Receiver<Msg>) -> Result<u8, Failure> {
    use crossterm::event::{self, Event, KeyEventKind};
    let io = |e: std::io::Error| Failure {
        code: exit::UNAVAILABLE,
        message: format!("terminal: {e}"),
    };
    crossterm::terminal::enable_raw_mode().map_err(io)?;
    let _restore = Restore;
    crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)
        .map_err(io)?;
    let mut term =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
            .map_err(io)?;
    let mut d = Dashboard::default();
    while !d.quit {
        while let Ok(m) = rx.try_recv() {
            apply(&mut d, m);
        }
        term.draw(|f| view::draw(f, &d)).map_err(io)?;
        if event::poll(Duration::from_millis(100)).map_err(io)? {
            if let Event::Key(k) = event::read().map_err(io)? {
                if k.kind == KeyEventKind::Press {
                    if let Some(key) = key_of(&k) {
                        d.key(key);
                    }
                }
            }
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::model::Panel;
    use super::*;

    fn status() -> core::StatusDocument {
        let text = r#"{"schema_version":1,"summary":"conflicted: 2 unresolved conflict(s)","generated_at":"2026-01-01T00:00:00Z",
          "health":"conflicted","daemon_available":true,"daemon_state":"RUNNING","active_profile":"profile:work",
          "active_workspace":null,"active_device":"device:laptop","degraded":false,"policy_blocked":false,
          "conflict_count":2,"policy_blocked_objects":1,"object_count":3,"repair_needed":false,
          "split_brain_capabilities":[],"log":{"head_seq":42,"head_hash":"blake3:00","event_count":42},
          "subject_count":3,"events_by_kind":{},"projections":{},
          "sessions":{"sessions":1,"open_sessions":1,"turns":0,"live_turns":0,"orphans_queued":4,"orphans_recovered":1,
            "orphans_quarantined":2,"orphans_discarded":0,"stale_events":0,"ignored_events":0,"stale_epoch_refusals_since_open":0},
          "replication":{"last_attempt_at":null,"reached_server":false,"last_error":"no server","peers":3,"stale_peers":1,"max_lag":7},
          "daemon":{"run_id":"urn:srcos:run:x","pid":1,"state":"RUNNING","upstream_state":"RUNNING",
            "started_subsystems":["ingest_lanes"],"blocked_subsystems":{},"offline":false}}"#;
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_lanes_panel_shows_pressure_when_status_has_it() {
        let mut s = status();
        let lane = |lane, depth, shed| core::LaneView {
            lane,
            depth_events: depth,
            capacity_events: 4_096,
            high_watermark_events: 4_096,
            counters: core::LaneCounters {
                shed_events: shed,
                ..core::LaneCounters::default()
            },
        };
        s.lanes = Some(core::LaneStatus {
            lanes: vec![
                lane(core::Lane::Control, 2, 0),
                lane(core::Lane::Telemetry, 9, 5),
            ],
            data_pressure_watermark_events: 4_096,
            shed_episodes: 1,
            shedding: true,
        });
        let d = Dashboard {
            status: Some(s),
            link: Link::Connected,
            ..Dashboard::default()
        };
        let text = render_text(&d, 120, 48).unwrap();
        for want in [
            "ingest_lanes started",
            "control 2/4096  telemetry 9/4096",
            "shed 5 deferred 0 (shedding now)",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(!text.contains("pressure n/a"), "{text}");
    }

    #[test]
    fn every_panel_is_rendered_with_what_status_and_the_stream_say() {
        let mut d = Dashboard {
            status: Some(status()),
            link: Link::Connected,
            ..Dashboard::default()
        };
        for i in 1..=3 {
            d.event(
                i,
                &serde_json::json!({"kind": "note.added", "actor": "actor:agent-one", "subject": format!("object:n{i}")}),
            );
        }
        let text = render_text(&d, 110, 30).unwrap();
        for want in [
            "Health",
            "health conflicted",
            "profile:work · device:laptop",
            "Lifecycle",
            "state RUNNING",
            "Lanes",
            "ingest_lanes started",
            "pressure n/a",
            "Peers",
            "peers 3 (stale 1)",
            "max lag 7",
            "Conflicts",
            "open 2",
            "Orphans",
            "queued 4",
            "quarantined 2",
            "Recent events",
            "object:n3",
            "live",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn without_a_daemon_the_panels_wait_and_say_so() {
        let d = Dashboard::default();
        let text = render_text(&d, 110, 30).unwrap();
        assert!(text.contains("waiting for the daemon"), "{text}");
        assert!(text.contains("reconnecting"), "{text}");
    }

    #[test]
    fn keys_move_focus_scroll_and_quit() {
        let mut d = Dashboard::default();
        d.key(Key::Previous);
        assert_eq!(d.focus, Panel::Events);
        for i in 1..=10 {
            d.event(i, &serde_json::json!({"kind": "note.added"}));
        }
        d.key(Key::Up);
        d.key(Key::Up);
        assert_eq!(d.scroll, 2);
        let text = render_text(&d, 110, 30).unwrap();
        assert!(!text.contains("       10  note.added"), "{text}");
        d.key(Key::Down);
        assert_eq!(d.scroll, 1);
        d.key(Key::Next);
        assert_eq!(d.focus, Panel::Health);
        d.key(Key::Up);
        assert_eq!(d.scroll, 1, "only the events panel scrolls");
        d.key(Key::Quit);
        assert!(d.quit);
    }

    #[test]
    fn a_resumed_stream_repeats_nothing_and_the_list_is_bounded() {
        let mut d = Dashboard::default();
        d.event(5, &serde_json::json!({}));
        d.event(5, &serde_json::json!({}));
        d.event(4, &serde_json::json!({}));
        assert_eq!(d.events.len(), 1);
        for i in 6..(6 + model::MAX_RECENT_EVENTS as u64) {
            d.event(i, &serde_json::json!({}));
        }
        assert_eq!(d.events.len(), model::MAX_RECENT_EVENTS);
        assert_eq!(d.last_event_id, Some(5 + model::MAX_RECENT_EVENTS as u64));
    }
}
