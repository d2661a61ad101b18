//! What happened to a request sent through the host facade.

use serde::{Deserialize, Serialize};

/// Longest sanitised message, in bytes.
const MAX_MESSAGE_BYTES: usize = 240;
/// What a removed word becomes.
const REMOVED: &str = "[…]";

/// A failure message fit to show to anyone: plain words only. Paths, ids,
/// hashes, numbers, field names and quoted internals are removed, so a
/// message cannot leak where data lives or what it is called.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct SanitisedMessage(String);

impl SanitisedMessage {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SanitisedMessage {
    // Deserialising runs the sanitiser again: text from a daemon or a
    // script is never trusted to be clean.
    fn from(s: String) -> Self {
        sanitise(&s)
    }
}

impl From<SanitisedMessage> for String {
    fn from(m: SanitisedMessage) -> String {
        m.0
    }
}

impl std::fmt::Display for SanitisedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn plain_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        && w.chars().any(char::is_alphabetic)
}

/// Keeps the plain words of `text` and replaces every other word (a path,
/// an id, a number, a hash, a quoted name) with a marker.
pub fn sanitise(text: &str) -> SanitisedMessage {
    let mut out = String::new();
    let mut last_removed = false;
    for raw in text.split_whitespace() {
        let trimmed = raw.trim_end_matches([',', '.', ';', ')', '(']);
        let tail = raw.get(trimmed.len()..).unwrap_or_default();
        let tail: String = tail
            .chars()
            .filter(|c| matches!(c, ',' | '.' | ';'))
            .collect();
        let piece = if plain_word(trimmed) {
            last_removed = false;
            format!("{trimmed}{tail}")
        } else if last_removed {
            continue;
        } else {
            last_removed = true;
            format!("{REMOVED}{tail}")
        };
        if out.len() + piece.len() + 1 > MAX_MESSAGE_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    if out.is_empty() {
        out.push_str("the request failed");
    }
    SanitisedMessage(out)
}

/// What happened to a submission. Waits and refusals are outcomes; only
/// infrastructure faults are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Recorded and durable (for a request of several events: the last).
    Completed {
        /// Sequence number.
        seq: u64,
        /// Hash (`blake3:<hex>`).
        hash: String,
    },
    /// Its idempotency key was used before; nothing was recorded.
    Duplicate {
        /// The original's sequence number.
        seq: u64,
        /// The original's hash.
        hash: String,
    },
    /// Recorded, and waiting for a person to approve it.
    ApprovalRequired {
        /// The policy decision that asks for review.
        decision_id: String,
    },
    /// Policy refused it; the decision was recorded, the request was not.
    PolicyBlocked {
        /// Why, naming the rule.
        reason: String,
    },
    /// Recorded, and it conflicts with another change.
    Conflict {
        /// The conflict (`conflict:<hex>`).
        conflict_id: String,
    },
    /// Recorded and held in quarantine.
    Quarantined {
        /// The decision that quarantined it.
        decision_id: String,
    },
    /// Not accepted now: a lane is under pressure or closed; retry later.
    ResourceBlocked {
        /// Which lane or gate.
        lane: String,
    },
    /// The work was cancelled before it completed.
    Cancelled,
    /// Not recorded; the message is sanitised.
    Failed {
        /// Why, in plain words.
        message: SanitisedMessage,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sanitised_messages_hold_no_path_or_id() {
        let m = sanitise(
            "cannot read /home/ann/.local/share/sourceos-syncd/db: object:alpha \
             base_version v:0123456789abcdef at seq 42 (urn:srcos:session:s1), `payload.x`",
        );
        let t = m.as_str();
        for leak in [
            "/home",
            "object:",
            "urn:",
            "v:01",
            "42",
            "payload",
            "base_version",
        ] {
            assert!(!t.contains(leak), "{leak} leaked in {t}");
        }
        assert!(t.starts_with("cannot read"));
        assert_eq!(sanitise("").as_str(), "the request failed");
        assert!(sanitise(&"word ".repeat(500)).as_str().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn deserialising_sanitises_again() {
        let o: Outcome =
            serde_json::from_str(r#"{"outcome":"failed","message":"bad /etc/passwd"}"#).unwrap();
        assert_eq!(
            o,
            Outcome::Failed {
                message: sanitise("bad […]")
            }
        );
    }
}
