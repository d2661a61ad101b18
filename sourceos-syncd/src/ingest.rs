//! Event input in JSON Lines (PRODUCT.md §5), shared by `syncd ingest` and
//! the daemon's API.
//!
//! Each line is parsed and validated on its own: a bad line is rejected with
//! its line number and a reason, and appends nothing; lines before and after
//! it are unaffected. Valid lines are submitted in groups so that one flush
//! and fsync covers many of them, and a group's results are reported only
//! once the group is durable.

use std::io::{BufRead, BufReader, Read};

use serde::Deserialize;
use serde_json::Value;

use crate::event::{EventDraft, Payload};
use crate::ids::{ActorId, Digest, EventKind, IdempotencyKey, SessionRef, Subject};
use crate::store::{AppendError, AppendOutcome, Store};

/// Longest accepted input line, in bytes (the payload bound is smaller;
/// this only stops unbounded reads).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Valid lines submitted together.
const GROUP_LINES: usize = 1_024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    kind: Option<Value>,
    actor: Option<Value>,
    #[serde(default)]
    subject: Option<Value>,
    #[serde(default)]
    idempotency_key: Option<Value>,
    #[serde(default)]
    session: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
}

fn text_field<'a>(name: &str, v: &'a Value) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("`{name}` must be a string"))
}

fn optional<T>(
    name: &str,
    v: Option<Value>,
    make: impl FnOnce(&str) -> Result<T, crate::ids::InvalidValue>,
) -> Result<Option<T>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = text_field(name, &v)?;
            make(s).map(Some).map_err(|e| format!("`{name}`: {e}"))
        }
    }
}

/// Parses and validates one input line into a draft, or says why not.
pub fn parse_line(line: &str) -> Result<EventDraft, String> {
    // serde would also read a JSON array positionally; an event is an
    // object.
    if !line.trim_start().starts_with('{') {
        return Err("not a valid event line: expected a JSON object".to_owned());
    }
    let input: InputLine =
        serde_json::from_str(line).map_err(|e| format!("not a valid event line: {e}"))?;
    let kind = input.kind.ok_or("missing required field `kind`")?;
    let kind = EventKind::new(text_field("kind", &kind)?).map_err(|e| format!("`kind`: {e}"))?;
    if kind.is_reserved() {
        return Err(format!(
            "`kind`: {kind} is in the reserved `syncd.` namespace, which only syncd records"
        ));
    }
    let actor = input.actor.ok_or("missing required field `actor`")?;
    let actor = ActorId::new(text_field("actor", &actor)?).map_err(|e| format!("`actor`: {e}"))?;
    if actor
        .as_str()
        .starts_with(crate::store::RESERVED_ACTOR_PREFIX)
    {
        return Err(format!("`actor`: {actor} is reserved for syncd itself"));
    }
    let mut draft = EventDraft::new(actor, kind);
    draft.subject = optional("subject", input.subject, |s| Subject::new(s))?;
    draft.session = optional("session", input.session, |s| SessionRef::new(s))?;
    draft.idempotency_key = optional("idempotency_key", input.idempotency_key, |s| {
        IdempotencyKey::new(s)
    })?;
    if let Some(p) = input.payload {
        draft.payload = Payload::new(p).map_err(|e| format!("`payload`: {e}"))?;
    }
    crate::kinds::validate(&mut draft)?;
    Ok(draft)
}

/// The result for one input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// Recorded and durable.
    Appended {
        /// Sequence number.
        seq: u64,
        /// Hash.
        hash: Digest,
        /// Event id.
        id: String,
    },
    /// Seen before; nothing recorded.
    Duplicate {
        /// The original's sequence number.
        seq: u64,
        /// The original's hash.
        hash: Digest,
    },
    /// Not recorded.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Not recorded: policy decided against it (the decision was recorded).
    Blocked {
        /// The recorded decision.
        decision_id: String,
        /// Its sequence number.
        decision_seq: u64,
        /// Why.
        reason: String,
    },
}

/// One input line's result, with its line number (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestResult {
    /// Line number in the input.
    pub line: u64,
    /// What happened.
    pub outcome: LineOutcome,
}

/// Totals of an ingest run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Lines appended.
    pub appended: u64,
    /// Lines that were duplicates.
    pub duplicates: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Bytes of input consumed.
    pub bytes_read: u64,
}

/// Ingest stopped before the end of the input.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading the input failed.
    #[error("cannot read input: {0}")]
    Input(#[source] std::io::Error),
    /// Appending failed; results already reported stay valid.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The result sink failed (e.g. stdout closed).
    #[error("cannot write results: {0}")]
    Output(#[source] std::io::Error),
}

/// How a group of drafts is appended: one group commit of a store, or
/// whatever path the caller routes them through (a daemon's ingest
/// lanes). Outcomes come back in the drafts' order.
pub type Appender<'a> = &'a dyn Fn(Vec<EventDraft>) -> Result<Vec<AppendOutcome>, AppendError>;

/// Reads JSON Lines and appends them to a store.
pub struct Ingestor<'a> {
    store: &'a Store,
    appender: Option<Appender<'a>>,
}

enum Pending {
    Draft(u64),
    Rejected(u64, String),
}

impl<'a> Ingestor<'a> {
    /// An ingestor over `store`.
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            appender: None,
        }
    }

    /// An ingestor that appends each group through `appender` instead of
    /// the store's group commit.
    pub fn with_appender(store: &'a Store, appender: Appender<'a>) -> Self {
        Self {
            store,
            appender: Some(appender),
        }
    }

    /// Ingests every line of `input`, calling `sink` with each line's result
    /// in input order, only after the line's group is durable, and
    /// `progress` with the bytes consumed so far.
    pub fn run<R: Read>(
        &self,
        input: &mut BufReader<R>,
        sink: &mut dyn FnMut(&IngestResult) -> std::io::Result<()>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<IngestSummary, IngestError> {
        let mut summary = IngestSummary::default();
        let mut line_no = 0u64;
        let mut pending: Vec<Pending> = Vec::new();
        let mut drafts: Vec<EventDraft> = Vec::new();
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            let (n, complete) = read_bounded_line(input, &mut buf).map_err(IngestError::Input)?;
            if n == 0 {
                break;
            }
            summary.bytes_read += n as u64;
            line_no += 1;
            if !complete {
                pending.push(Pending::Rejected(
                    line_no,
                    format!("line is longer than {MAX_LINE_BYTES} bytes"),
                ));
            } else {
                match std::str::from_utf8(&buf) {
                    Err(e) => pending.push(Pending::Rejected(
                        line_no,
                        format!("line is not UTF-8: {e}"),
                    )),
                    Ok(text) => {
                        let text = text.trim();
                        // Blank lines carry nothing and get no result line.
                        if !text.is_empty() {
                            match parse_line(text) {
                                Ok(d) => {
                                    drafts.push(d);
                                    pending.push(Pending::Draft(line_no));
                                }
                                Err(reason) => pending.push(Pending::Rejected(line_no, reason)),
                            }
                        }
                    }
                }
            }
            // Submit when the group is full, or when no more input is
            // buffered (so that a live producer gets timely answers).
            if pending.len() >= GROUP_LINES || input.buffer().is_empty() {
                self.submit(&mut pending, &mut drafts, &mut summary, sink)?;
                progress(summary.bytes_read);
            }
        }
        self.submit(&mut pending, &mut drafts, &mut summary, sink)?;
        progress(summary.bytes_read);
        Ok(summary)
    }

    fn submit(
        &self,
        pending: &mut Vec<Pending>,
        drafts: &mut Vec<EventDraft>,
        summary: &mut IngestSummary,
        sink: &mut dyn FnMut(&IngestResult) -> std::io::Result<()>,
    ) -> Result<(), IngestError> {
        if pending.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(drafts);
        let outcomes = match self.appender {
            Some(append) => append(group)?,
            None => self.store.append_many(group)?,
        };
        let mut outcomes = outcomes.into_iter();
        for p in pending.drain(..) {
            let result = match p {
                Pending::Rejected(line, reason) => IngestResult {
                    line,
                    outcome: LineOutcome::Rejected { reason },
                },
                Pending::Draft(line) => {
                    let outcome = match outcomes.next() {
                        Some(AppendOutcome::Appended { seq, hash, id }) => LineOutcome::Appended {
                            seq: seq.get(),
                            hash,
                            id: id.to_string(),
                        },
                        Some(AppendOutcome::Duplicate { seq, hash }) => LineOutcome::Duplicate {
                            seq: seq.get(),
                            hash,
                        },
                        Some(AppendOutcome::PolicyBlocked {
                            decision_id,
                            decision_seq,
                            reason,
                            ..
                        }) => LineOutcome::Blocked {
                            decision_id,
                            decision_seq: decision_seq.get(),
                            reason,
                        },
                        Some(AppendOutcome::Rejected { reason }) => {
                            LineOutcome::Rejected { reason }
                        }
                        None => LineOutcome::Rejected {
                            reason: "no outcome was returned for this line".into(),
                        },
                    };
                    IngestResult { line, outcome }
                }
            };
            match &result.outcome {
                LineOutcome::Appended { .. } => summary.appended += 1,
                LineOutcome::Duplicate { .. } => summary.duplicates += 1,
                LineOutcome::Rejected { .. } | LineOutcome::Blocked { .. } => summary.rejected += 1,
            }
            sink(&result).map_err(IngestError::Output)?;
        }
        Ok(())
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`] into `buf` (without the
/// newline). Returns bytes consumed and whether the line was within bounds;
/// an over-long line is consumed to its end and reported incomplete.
fn read_bounded_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0usize;
    let mut within = true;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((consumed, within));
        }
        let (chunk, found_newline) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (available.get(..i).unwrap_or_default(), true),
            None => (available, false),
        };
        if within {
            if buf.len() + chunk.len() > MAX_LINE_BYTES {
                within = false;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(found_newline);
        consumed += used;
        input.consume(used);
        if found_newline {
            return Ok((consumed, within));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_full_lines_parse() {
        let d = parse_line(r#"{"kind":"note.added","actor":"actor:a"}"#).unwrap();
        assert_eq!(d.kind.as_str(), "note.added");
        let d = parse_line(
            r#"{"kind":"note.added","actor":"actor:agent-one","subject":"object:alpha","idempotency_key":"k-001","session":"urn:srcos:session:s1","payload":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(d.idempotency_key.unwrap().as_str(), "k-001");
        assert!(!d.payload.is_empty());
    }

    #[test]
    fn bad_lines_say_why() {
        let cases = [
            ("{", "not a valid event line"),
            (r#"{"actor":"actor:a"}"#, "missing required field `kind`"),
            (r#"{"kind":"x.y"}"#, "missing required field `actor`"),
            (r#"{"kind":"x.y","actor":"a b"}"#, "`actor`"),
            (r#"{"kind":"X","actor":"a"}"#, "`kind`"),
            (
                r#"{"kind":"x","actor":"a","idempotency_key":""}"#,
                "`idempotency_key`",
            ),
            (
                r#"{"kind":"x","actor":"a","idempotency_key":5}"#,
                "must be a string",
            ),
            (r#"{"kind":"x","actor":"a","payload":[1]}"#, "`payload`"),
            (r#"{"kind":"x","actor":"a","extra":1}"#, "unknown field"),
            (
                r#"{"kind":"syncd.doctor.repaired","actor":"a"}"#,
                "reserved",
            ),
        ];
        for (line, want) in cases {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn bounded_reader_splits_and_bounds() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("a\n{long}\nb");
        let mut r = std::io::BufReader::with_capacity(16, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_bounded_line(&mut r, &mut buf).unwrap(), (2, true));
        assert_eq!(buf, b"a");
        buf.clear();
        let (n, ok) = read_bounded_line(&mut r, &mut buf).unwrap();
        assert_eq!((n, ok), (long.len() + 1, false));
        buf.clear();
        assert_eq!(read_bounded_line(&mut r, &mut buf).unwrap(), (1, true));
        assert_eq!(buf, b"b");
        buf.clear();
        assert_eq!(read_bounded_line(&mut r, &mut buf).unwrap(), (0, true));
    }
}
