//! What one replication message carries, and the subjects it is published
//! on. Kept free of any NATS type so that it can be tested alone.
//!
//! Every position of a device's log is published, in order, on that
//! device's subject `syncd.ev.<profile>.<device>` (ids escaped as subject
//! tokens). A position is either the event itself (the exact stored bytes,
//! which carry its sequence, its link and, once verified, its hash) or,
//! when the event does not leave the device (received from another
//! device, or withheld by visibility or policy), a stub with only its
//! sequence and hashes in headers, so that receivers can still check every
//! link of the chain. Headers:
//!
//! | header | on | value |
//! |---|---|---|
//! | `Nats-Msg-Id` | every message | the event hash (`blake3:<hex>`): JetStream's duplicate window |
//! | `Syncd-Seq` | stubs | the event's sequence in the publishing device's log |
//! | `Syncd-Hash` | stubs | the event hash |
//! | `Syncd-Prev` | stubs | the hash of the event before it (the chain link) |
//! | `Syncd-Withheld` | stubs | why (`imported`, `local_only`, `policy_denied`, `policy_review_required`, `device_local`) |
//!
//! An event message that also carries `Syncd-Seq`, `Syncd-Hash` and
//! `Syncd-Prev` (as earlier versions published them) is read by those
//! headers, and its bytes must agree with them. Events go without them
//! because every header is parsed by the server and every receiver, and
//! the bytes already say the same.

use sourceos_syncd::{Digest, Envelope, Withheld};

/// Prefix of every replication subject.
pub const SUBJECT_PREFIX: &str = "syncd.ev";

/// Header names.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The sequence header.
pub const SEQ: &str = "Syncd-Seq";
/// The hash header.
pub const HASH: &str = "Syncd-Hash";
/// The link header.
pub const PREV: &str = "Syncd-Prev";
/// The stub header.
pub const WITHHELD: &str = "Syncd-Withheld";

/// Escapes an id into one subject token: ASCII letters, digits, `-`, `_`
/// and `:` stay; every other byte becomes `%XX`. (`.`, `*`, `>` and
/// whitespace would change the subject's meaning.)
pub fn token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`token`]; `None` for a malformed token.
pub fn untoken(t: &str) -> Option<String> {
    let mut out = Vec::with_capacity(t.len());
    let mut bytes = t.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of a device of a profile.
pub fn subject(profile: &str, device: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.{}", token(profile), token(device))
}

/// The wildcard covering every device of a profile.
pub fn profile_filter(profile: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.*", token(profile))
}

/// The device of a subject of `profile`, when it is one.
pub fn device_of(profile: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(&format!("{SUBJECT_PREFIX}.{}.", token(profile)))?;
    if rest.contains('.') {
        return None;
    }
    untoken(rest)
}

/// One position of a device's log as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Sequence in the publishing device's log.
    pub seq: u64,
    /// The event hash.
    pub hash: Digest,
    /// The link to the event before.
    pub prev: Digest,
    /// Why the content is not carried, for a stub.
    pub withheld: Option<Withheld>,
}

/// A message that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header is missing or unreadable.
    #[error("header {name}: {reason}")]
    Header {
        /// The header.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The event bytes do not verify, or disagree with the headers.
    #[error("event at position {seq}: {reason}")]
    Event {
        /// The position named by the headers.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// An event message that names no position in headers, and whose bytes
    /// do not verify (so its position is unknown).
    #[error("event: {reason}")]
    Unreadable {
        /// What is wrong.
        reason: String,
    },
}

/// Whether a message names its position in headers: stubs always do, and
/// events published by earlier versions did.
pub fn names_position<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> bool {
    get(SEQ).is_some() || get(WITHHELD).is_some()
}

/// Reads an event message that names no position in headers: its bytes
/// must verify, and be an event of `device`'s own log. The position is
/// the event's.
pub fn read_event(device: &str, payload: &[u8]) -> Result<(Position, Envelope), FrameError> {
    let env = Envelope::verify(payload).map_err(|e| FrameError::Unreadable {
        reason: format!("does not verify: {e}"),
    })?;
    let p = Position {
        seq: env.seq().get(),
        hash: env.hash(),
        prev: env.prev_hash(),
        withheld: None,
    };
    check_origin(&p, device, &env)?;
    Ok((p, env))
}

fn check_origin(p: &Position, device: &str, env: &Envelope) -> Result<(), FrameError> {
    if env.origin().as_str() != device || env.is_imported() {
        return Err(FrameError::Event {
            seq: p.seq,
            reason: format!(
                "published on {device}'s subject but its origin is {}",
                env.origin_ref().device
            ),
        });
    }
    Ok(())
}

/// Reads the position headers through `get` (a header lookup).
pub fn read_position<'a>(
    get: impl Fn(&'static str) -> Option<&'a str>,
) -> Result<Position, FrameError> {
    let need = |name: &'static str| {
        get(name).ok_or(FrameError::Header {
            name,
            reason: "missing".into(),
        })
    };
    let digest = |name: &'static str| -> Result<Digest, FrameError> {
        Digest::parse(need(name)?).map_err(|e| FrameError::Header {
            name,
            reason: e.to_string(),
        })
    };
    let seq = need(SEQ)?
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or(FrameError::Header {
            name: SEQ,
            reason: "not a sequence number".into(),
        })?;
    let withheld = match get(WITHHELD) {
        None => None,
        Some(code) => Some(Withheld::parse(code).ok_or(FrameError::Header {
            name: WITHHELD,
            reason: format!("unknown reason {code:?}"),
        })?),
    };
    Ok(Position {
        seq,
        hash: digest(HASH)?,
        prev: digest(PREV)?,
        withheld,
    })
}

/// The headers of a position, as (name, value) pairs: the message id
/// alone for an event, the whole position for a stub.
pub fn headers(p: &Position) -> Vec<(&'static str, String)> {
    let hash = p.hash.to_string();
    let Some(w) = p.withheld else {
        return vec![(MSG_ID, hash)];
    };
    vec![
        (MSG_ID, hash.clone()),
        (SEQ, p.seq.to_string()),
        (HASH, hash),
        (PREV, p.prev.to_string()),
        (WITHHELD, w.as_str().to_owned()),
    ]
}

/// Verifies the event carried at position `p` of `device`'s log: its bytes
/// decode and their hash recomputes, and sequence, hashes and origin agree
/// with the headers. A stub must carry no bytes.
pub fn verify_event(
    p: &Position,
    device: &str,
    payload: &[u8],
) -> Result<Option<Envelope>, FrameError> {
    let bad = |reason: String| FrameError::Event { seq: p.seq, reason };
    if p.withheld.is_some() {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(bad("a stub carries event bytes".into()))
        };
    }
    let env = Envelope::verify(payload).map_err(|e| bad(format!("does not verify: {e}")))?;
    if env.hash() != p.hash {
        return Err(bad(format!(
            "its bytes hash to {}, the header says {}",
            env.hash(),
            p.hash
        )));
    }
    if env.seq().get() != p.seq || env.prev_hash() != p.prev {
        return Err(bad(format!(
            "the event is {} after {}, the headers say {} after {}",
            env.seq(),
            env.prev_hash(),
            p.seq,
            p.prev
        )));
    }
    check_origin(p, device, &env)?;
    Ok(Some(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_contain_subject_syntax() {
        for id in [
            "device:laptop",
            "profile:local-dev",
            "device:a.b c*>%",
            "ünï",
        ] {
            let t = token(id);
            assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
            assert_eq!(untoken(&t).as_deref(), Some(id));
        }
        assert_eq!(untoken("%G0"), None);
        assert_eq!(untoken("%4"), None);
        let s = subject("profile:p", "device:a.b");
        assert_eq!(s, "syncd.ev.profile:p.device:a%2Eb");
        assert_eq!(device_of("profile:p", &s).as_deref(), Some("device:a.b"));
        assert_eq!(device_of("profile:q", &s), None);
        assert_eq!(profile_filter("profile:p"), "syncd.ev.profile:p.*");
    }

    #[test]
    fn positions_need_every_header() {
        let h = format!("blake3:{}", "ab".repeat(32));
        let full = |name: &str| -> Option<&str> {
            match name {
                SEQ => Some("7"),
                HASH | PREV => Some(h.as_str()),
                _ => None,
            }
        };
        let p = read_position(full).unwrap();
        assert_eq!(p.seq, 7);
        assert_eq!(p.withheld, None);
        assert!(names_position(full));
        assert!(!names_position(|n| if n == MSG_ID {
            Some("x")
        } else {
            None
        }));
        // An event names only its message id; a stub its whole position.
        assert_eq!(headers(&p), vec![(MSG_ID, h.clone())]);
        let stub_headers = headers(&Position {
            withheld: Some(Withheld::LocalOnly),
            ..p.clone()
        });
        assert_eq!(stub_headers.len(), 5);
        let back = read_position(|n| {
            stub_headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(back.seq, 7);
        assert_eq!(back.withheld, Some(Withheld::LocalOnly));
        for missing in [SEQ, HASH, PREV] {
            let e = read_position(|n| if n == missing { None } else { full(n) }).unwrap_err();
            assert!(matches!(e, FrameError::Header { name, .. } if name == missing));
        }
        assert!(read_position(|n| if n == SEQ { Some("0") } else { full(n) }).is_err());
        assert!(read_position(|n| if n == HASH {
            Some("blake3:zz")
        } else {
            full(n)
        })
        .is_err());
        assert!(read_position(|n| if n == WITHHELD {
            Some("because")
        } else {
            full(n)
        })
        .is_err());
        let stub = read_position(|n| {
            if n == WITHHELD {
                Some("local_only")
            } else {
                full(n)
            }
        })
        .unwrap();
        assert_eq!(stub.withheld, Some(Withheld::LocalOnly));
        assert!(verify_event(&stub, "device:a", b"").unwrap().is_none());
        assert!(verify_event(&stub, "device:a", b"x").is_err());
        assert!(verify_event(&p, "device:a", b"not cbor").is_err());
    }
}
