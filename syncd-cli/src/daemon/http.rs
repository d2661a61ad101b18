//! A deliberately small HTTP/1.1 over Unix domain sockets, for the local
//! API: one request per connection (`Connection: close`), a bounded head
//! and a bounded `Content-Length` body, no chunked encoding. The peers are
//! local processes of the same user; the bounds keep a confused peer from
//! costing more than a few kilobytes of memory or a thread for long.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest request or response head, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;
/// Largest body accepted, in bytes (an ingest forwarded by the CLI).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How long a peer may take to send its request or read a response.
pub const IO_TIMEOUT_MS: u64 = 30_000;

/// A connection to the local API: the Unix socket, or loopback TCP when
/// enabled.
#[derive(Debug)]
pub enum Conn {
    /// The Unix domain socket (full API).
    Unix(UnixStream),
    /// Loopback TCP (read-only API).
    Tcp(std::net::TcpStream),
}

impl Conn {
    /// Whether it came over TCP.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }

    /// Sets both I/O timeouts.
    pub fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => {
                let mut s: &UnixStream = s;
                s.read(buf)
            }
            Conn::Tcp(s) => {
                let mut s: &std::net::TcpStream = s;
                s.read(buf)
            }
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => {
                let mut s: &UnixStream = s;
                s.write(buf)
            }
            Conn::Tcp(s) => {
                let mut s: &std::net::TcpStream = s;
                s.write(buf)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                let mut s: &UnixStream = s;
                s.flush()
            }
            Conn::Tcp(s) => {
                let mut s: &std::net::TcpStream = s;
                s.flush()
            }
        }
    }
}

/// A bad request, or a failed read or write.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed.
    #[error("local API socket")]
    Io(#[from] std::io::Error),
    /// The peer sent something this server does not accept.
    #[error("bad request: {0}")]
    Bad(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {0} bytes is larger than {MAX_BODY_BYTES}")]
    TooLarge(usize),
}

/// One request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path without the query, percent-decoded.
    pub path: String,
    /// Query pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes (and `+` in queries); bad escapes stay as they are.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|c| (*c as char).to_digit(16))
                .map(|d| d as u8)
        };
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b),
            },
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a path segment.
#[cfg(test)]
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the head (status or request line and headers), bounded.
fn read_head<R: BufRead>(r: &mut R) -> Result<Vec<String>, HttpError> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD_BYTES - total) as u64 + 1;
        let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(HttpError::Bad(
                "connection closed before the head ended".into(),
            ));
        }
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(HttpError::Bad(format!(
                "head longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        let text =
            String::from_utf8(line).map_err(|_| HttpError::Bad("head is not UTF-8".into()))?;
        let text = text.trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            return Ok(lines);
        }
        if lines.len() > MAX_HEADERS {
            return Err(HttpError::Bad(format!("more than {MAX_HEADERS} headers")));
        }
        lines.push(text);
    }
}

fn headers(lines: &[String]) -> Result<Vec<(String, String)>, HttpError> {
    lines
        .iter()
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| HttpError::Bad(format!("malformed header {l:?}")))?;
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

fn read_body<R: BufRead>(r: &mut R, headers: &[(String, String)]) -> Result<Vec<u8>, HttpError> {
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::Bad(
            "chunked bodies are not accepted; send Content-Length".into(),
        ));
    }
    let len = match headers.iter().find(|(n, _)| n == "content-length") {
        None => 0,
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| HttpError::Bad(format!("bad Content-Length {v:?}")))?,
    };
    if len > MAX_BODY_BYTES {
        return Err(HttpError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one request from a connection.
pub fn read_request(stream: &Conn) -> Result<Request, HttpError> {
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r)?;
    let (first, rest) = head
        .split_first()
        .ok_or_else(|| HttpError::Bad("empty request".into()))?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad(format!("malformed request line {first:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Bad(format!("unsupported version {version}")));
    }
    let headers = headers(rest)?;
    let body = read_body(&mut r, &headers)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect();
    Ok(Request {
        method: method.to_owned(),
        path: percent_decode(path, false),
        query,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response and ends the exchange.
pub fn respond(stream: &Conn, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    respond_with(stream, status, content_type, None, body)
}

/// Writes a whole response, with a `Retry-After` header (seconds) when
/// given, and ends the exchange.
pub fn respond_with(
    mut stream: &Conn,
    status: u16,
    content_type: &str,
    retry_after_s: Option<u64>,
    body: &[u8],
) -> std::io::Result<()> {
    let retry = retry_after_s
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Writes a JSON response.
pub fn respond_json(stream: &Conn, status: u16, value: &serde_json::Value) -> std::io::Result<()> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    respond(stream, status, "application/json", &body)
}

/// A response read by a client.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// Sends one request over the socket and reads the whole response.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<Response, HttpError> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(timeout_ms)))?;
    stream.set_write_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: syncd\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra_headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut r = BufReader::new(&stream);
    let lines = read_head(&mut r)?;
    let (first, rest) = lines
        .split_first()
        .ok_or_else(|| HttpError::Bad("empty response".into()))?;
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Bad(format!("malformed status line {first:?}")))?;
    let headers = headers(rest)?;
    let body = read_body(&mut r, &headers)?;
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        let s = "object:a b/ç%";
        assert_eq!(percent_decode(&percent_encode(s), false), s);
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let w = std::thread::spawn(move || {
            let mut b = b;
            let _ = b.write_all(b"POST /x HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n");
        });
        assert!(matches!(
            read_request(&Conn::Unix(a)),
            Err(HttpError::TooLarge(_))
        ));
        w.join().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let w = std::thread::spawn(move || {
            let mut b = b;
            let _ = b.write_all(b"GARBAGE\r\n\r\n");
        });
        assert!(matches!(
            read_request(&Conn::Unix(a)),
            Err(HttpError::Bad(_))
        ));
        w.join().unwrap();
    }
}
