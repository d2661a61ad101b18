//! The host facade as a client of the daemon's local API: HTTP/1.1 over
//! its Unix socket, one request per connection, with std only (the core
//! depends on no network stack). It uses the same routes as any client:
//! `POST /v1/events`, `GET /v1/status`, `GET /v1/objects/<id>`, and
//! `POST /v1/cli` for what has no route of its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::inputs::SurfaceVersion;
use super::steps::{self, at, Raw, Transport};
use super::{Host, HostError};
use crate::status::StatusDocument;

/// Longest answer read, in bytes.
const MAX_ANSWER_BYTES: u64 = 64 << 20;
/// Read and write timeout of one request.
const TIMEOUT_MS: u64 = 30_000;

/// The facade over a running daemon.
pub struct DaemonHost {
    socket: PathBuf,
    surface: SurfaceVersion,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn protocol(what: impl std::fmt::Display) -> HostError {
    HostError::Protocol(what.to_string())
}

impl DaemonHost {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: PathBuf, surface: SurfaceVersion) -> Self {
        Self { socket, surface }
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer, HostError> {
        let mut s = UnixStream::connect(&self.socket).map_err(HostError::Unreachable)?;
        let t = Some(Duration::from_millis(TIMEOUT_MS));
        s.set_read_timeout(t).map_err(HostError::Unreachable)?;
        s.set_write_timeout(t).map_err(HostError::Unreachable)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: syncd\r\nX-Syncd-Surface: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.surface.as_str(),
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(body))
            .map_err(HostError::Unreachable)?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER_BYTES)
            .read_to_end(&mut raw)
            .map_err(HostError::Unreachable)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| protocol("no end of headers"))?;
        let (head, rest) = raw.split_at(split);
        let status = std::str::from_utf8(head)
            .ok()
            .and_then(|h| h.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| protocol("no status line"))?;
        Ok(Answer {
            status,
            body: rest.get(4..).unwrap_or_default().to_vec(),
        })
    }

    fn json(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value), HostError> {
        let a = self.request(method, path, body)?;
        let v = serde_json::from_slice(&a.body).map_err(protocol)?;
        Ok((a.status, v))
    }

    /// Runs a `syncd` command in the daemon; its stdout when it succeeds.
    fn command(&self, args: &[&str]) -> Result<Option<Value>, HostError> {
        let mut body =
            serde_json::to_vec(&json!({ "args": args, "cwd": "/" })).map_err(protocol)?;
        body.push(b'\n');
        let (status, v) = self.json("POST", "/v1/cli", &body)?;
        if status != 200 {
            return Err(protocol(format!("status {status} for a command")));
        }
        if at(&v, "code").as_u64() != Some(0) {
            return Ok(None);
        }
        let out = at(&v, "stdout").as_str().unwrap_or_default();
        serde_json::from_str(out).map(Some).map_err(protocol)
    }
}

fn text(v: &Value, k: &str) -> String {
    at(v, k).as_str().unwrap_or_default().to_owned()
}

/// What the daemon's answer to one submitted line means. A closed gate or
/// a draining daemon (503), and lane pressure (429 with the line
/// `deferred`, or the line `shed`), are resource blocks: retry later.
fn submission_answer(status: u16, body: &[u8]) -> Result<Raw, HostError> {
    if status == 503 {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let lane = match at(&v, "error").as_str() {
            Some("gate_closed") => "ingest_lanes",
            Some("draining") => "draining",
            _ => "unavailable",
        };
        return Ok(Raw::Refused { lane: lane.into() });
    }
    if status != 200 && status != 429 {
        return Err(protocol(format!("status {status} for a submission")));
    }
    let first = body
        .split(|b| *b == b'\n')
        .next()
        .ok_or_else(|| protocol("empty answer"))?;
    let v: Value = serde_json::from_slice(first).map_err(protocol)?;
    let seq = at(&v, "seq").as_u64().unwrap_or(0);
    Ok(match at(&v, "result").as_str() {
        Some("appended") => Raw::Appended {
            seq,
            hash: text(&v, "hash"),
        },
        Some("duplicate") => Raw::Duplicate {
            seq,
            hash: text(&v, "hash"),
        },
        Some("rejected") => Raw::Rejected(text(&v, "reason")),
        Some("policy_blocked") => Raw::Blocked {
            reason: text(&v, "reason"),
        },
        Some("deferred") | Some("shed") => Raw::Refused {
            lane: match at(&v, "lane").as_str() {
                Some(l) if !l.is_empty() => l.to_owned(),
                _ => "ingest_lanes".to_owned(),
            },
        },
        other => return Err(protocol(format!("unknown result {other:?}"))),
    })
}

impl Transport for DaemonHost {
    fn submit(&self, line: &str) -> Result<Raw, HostError> {
        let a = self.request("POST", "/v1/events", line.as_bytes())?;
        submission_answer(a.status, &a.body)
    }

    fn explain(&self, object: &str) -> Result<Option<Value>, HostError> {
        // Ids are restricted to characters that need no escaping in a path
        // except these two.
        if object.contains(['/', '?', '#', ' ']) {
            return Ok(None);
        }
        let (status, v) = self.json("GET", &format!("/v1/objects/{object}"), &[])?;
        match status {
            200 => Ok(Some(v)),
            404 => Ok(None),
            s => Err(protocol(format!("status {s} for explain"))),
        }
    }

    fn txn(&self, id: &str) -> Result<Option<Value>, HostError> {
        self.command(&["txn", "show", id])
    }

    fn session_known(&self, session: &str) -> Result<bool, HostError> {
        Ok(self.command(&["session", session, "--json"])?.is_some())
    }

    fn orphans(&self) -> Result<Value, HostError> {
        Ok(self
            .command(&["orphans", "--json"])?
            .unwrap_or(Value::Array(Vec::new())))
    }
}

impl Host for DaemonHost {
    steps::transport_requests!();
    fn status(&self) -> Result<StatusDocument, HostError> {
        let (status, v) = self.json("GET", "/v1/status", &[])?;
        if status != 200 {
            return Err(protocol(format!("status {status} for status")));
        }
        serde_json::from_value(v).map_err(protocol)
    }
    fn explain(&self, object: &str) -> Result<Option<Value>, HostError> {
        Transport::explain(self, object)
    }
    fn capabilities(&self) -> Result<Value, HostError> {
        self.command(&["capabilities", "--json"])?
            .ok_or_else(|| protocol("capabilities failed in the daemon"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_pressure_and_closed_gates_are_resource_blocks() {
        let refused = |status, body: &str| match submission_answer(status, body.as_bytes()) {
            Ok(Raw::Refused { lane }) => lane,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(
                429,
                r#"{"line":1,"result":"deferred","lane":"data","retry_after_ms":250}"#
            ),
            "data"
        );
        assert_eq!(
            refused(200, r#"{"line":1,"result":"shed","lane":"telemetry"}"#),
            "telemetry"
        );
        assert_eq!(refused(503, r#"{"error":"gate_closed"}"#), "ingest_lanes");
        assert_eq!(refused(503, r#"{"error":"draining"}"#), "draining");
        assert!(matches!(
            submission_answer(200, br#"{"line":1,"result":"appended","seq":3,"hash":"h"}"#),
            Ok(Raw::Appended { seq: 3, .. })
        ));
        assert!(submission_answer(500, b"").is_err());
        assert!(submission_answer(200, b"not json").is_err());
        assert!(submission_answer(200, br#"{"result":"odd"}"#).is_err());
    }
}
