//! Redacted diagnostics bundles for support.
//!
//! A bundle is built from an allowlist of sections that the caller hands
//! in (status, lifecycle history, doctor report, compact recent log lines,
//! versions): nothing else can enter it, and event payloads never do. Every
//! string in it is then redacted: local paths, account, org, device,
//! profile, object, session and runtime ids, and values under keys that
//! name tokens or secrets are replaced by keyed-hash pseudonyms
//! (`<category>#<16 hex>`). The key is a salt fresh for each bundle and is
//! never written, so pseudonyms are consistent within one bundle and
//! cannot be linked across bundles. A manifest lists, per category, how
//! many distinct values were replaced; it never lists the values.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// `specVersion` of the upstream DiagnosticsExport record.
pub const DIAGNOSTICS_SPEC_VERSION: &str = "0.1.0";
/// Shape version of the bundle around that record.
pub const DIAGNOSTICS_BUNDLE_VERSION: u32 = 1;
/// Hex digits of a pseudonym.
const PSEUDONYM_HEX: usize = 16;
/// Deepest JSON nesting redacted; deeper values are dropped, not copied.
const MAX_DEPTH: usize = 64;

/// What goes into a bundle: the allowlisted sections.
#[derive(Debug, Clone)]
pub struct DiagnosticsInput {
    /// `urn:srcos:diag-export:<id>`.
    pub export_id: String,
    /// When the bundle is made (RFC 3339).
    pub exported_at: String,
    /// The status document.
    pub status: Value,
    /// The lifecycle (syncd's own view).
    pub lifecycle: Value,
    /// The doctor report.
    pub doctor: Value,
    /// Compact recent log lines (no payloads).
    pub recent: Vec<Value>,
    /// Versions of syncd and its formats.
    pub versions: Value,
    /// Literal local paths to redact wherever they appear (the home, the
    /// user's home directory), including inside longer strings.
    pub local_paths: Vec<String>,
}

/// Replaces identifying strings with keyed-hash pseudonyms.
pub struct Redactor {
    key: [u8; 32],
    literal_paths: Vec<String>,
    seen: BTreeMap<&'static str, BTreeMap<String, ()>>,
}

/// Prefixes of identifiers and the category each one is redacted as.
const ID_PREFIXES: [(&str, &str); 16] = [
    ("urn:srcos:session:", "session_id"),
    ("urn:srcos:runtime:", "runtime_id"),
    ("urn:srcos:identity:", "account_id"),
    ("urn:srcos:account:", "account_id"),
    ("urn:srcos:org:", "org_id"),
    ("urn:srcos:device:", "device_id"),
    ("urn:srcos:host-runtime-lifecycle:", "runtime_id"),
    ("urn:srcos:token:", "token_cache_key"),
    ("session:", "session_id"),
    ("actor:", "account_id"),
    ("account:", "account_id"),
    ("org:", "org_id"),
    ("device:", "device_id"),
    ("profile:", "profile_id"),
    ("object:", "object_id"),
    ("token:", "token_cache_key"),
];

/// Keys whose values are secrets or cache keys whatever they look like.
fn secret_key(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase();
    if k.contains("token") || k.contains("idempotency") || k.contains("cache_key") {
        Some("token_cache_key")
    } else if k.contains("secret") || k.contains("password") || k.contains("credential") {
        Some("secret")
    } else {
        None
    }
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ":/._-@+#~%".contains(c)
}

fn classify(token: &str) -> Option<&'static str> {
    if (token.starts_with('/') && token.len() > 1) || token.starts_with("~/") {
        return Some("local_path");
    }
    ID_PREFIXES
        .iter()
        .find(|(p, _)| token.len() > p.len() && token.starts_with(p))
        .map(|(_, c)| *c)
}

impl Redactor {
    /// A redactor keyed by a fresh per-bundle salt.
    pub fn new(salt: [u8; 32], literal_paths: Vec<String>) -> Self {
        let mut literal_paths: Vec<String> =
            literal_paths.into_iter().filter(|p| p.len() > 1).collect();
        // Longest first, so a path is replaced before a prefix of it.
        literal_paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self {
            key: salt,
            literal_paths,
            seen: BTreeMap::new(),
        }
    }

    fn pseudonym(&mut self, category: &'static str, value: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(category.as_bytes());
        h.update(&[0]);
        h.update(value.as_bytes());
        let hex = h.finalize().to_hex();
        let p = format!(
            "{category}#{}",
            hex.as_str().get(..PSEUDONYM_HEX).unwrap_or_default()
        );
        self.seen
            .entry(category)
            .or_default()
            .insert(value.to_owned(), ());
        p
    }

    /// Redacts one string.
    pub fn text(&mut self, s: &str) -> String {
        let mut s = s.to_owned();
        for i in 0..self.literal_paths.len() {
            let Some(path) = self.literal_paths.get(i).cloned() else {
                continue;
            };
            if s.contains(&path) {
                let p = self.pseudonym("local_path", &path);
                s = s.replace(&path, &p);
            }
        }
        let mut out = String::with_capacity(s.len());
        let mut token = String::new();
        for c in s.chars().chain(std::iter::once('\u{0}')) {
            if c != '\u{0}' && token_char(c) {
                token.push(c);
                continue;
            }
            if !token.is_empty() {
                match classify(&token) {
                    Some(cat) => {
                        let p = self.pseudonym(cat, &token);
                        out.push_str(&p);
                    }
                    None => out.push_str(&token),
                }
                token.clear();
            }
            if c != '\u{0}' {
                out.push(c);
            }
        }
        out
    }

    /// Redacts every string of a JSON value, keys included.
    pub fn value(&mut self, v: &Value) -> Value {
        self.value_at(v, 0)
    }

    fn value_at(&mut self, v: &Value, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => {
                Value::Array(a.iter().map(|x| self.value_at(x, depth + 1)).collect())
            }
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, x) in m {
                    let key = self.text(k);
                    let value = match (secret_key(k), x) {
                        (Some(cat), Value::String(s)) => Value::String(self.pseudonym(cat, s)),
                        (Some(_), Value::Null) => Value::Null,
                        (Some(cat), other) => {
                            Value::String(self.pseudonym(cat, &other.to_string()))
                        }
                        (None, other) => self.value_at(other, depth + 1),
                    };
                    out.insert(key, value);
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    /// What was redacted: per category, the number of distinct values.
    pub fn manifest(&self) -> Value {
        let mut m = Map::new();
        for (cat, values) in &self.seen {
            m.insert((*cat).to_owned(), Value::from(values.len() as u64));
        }
        Value::Object(m)
    }
}

/// Builds the bundle: the upstream DiagnosticsExport record (which carries
/// only fields its schema defines), the redacted sections, and the
/// redaction manifest.
pub fn diagnostics_bundle(input: &DiagnosticsInput, salt: [u8; 32]) -> Value {
    let mut r = Redactor::new(salt, input.local_paths.clone());
    let sections = serde_json::json!({
        "status": r.value(&input.status),
        "lifecycle": r.value(&input.lifecycle),
        "doctor": r.value(&input.doctor),
        "recent_log": r.value(&Value::Array(input.recent.clone())),
        "versions": r.value(&input.versions),
    });
    let section_names = ["status", "lifecycle", "doctor", "recent_log", "versions"];
    let record = serde_json::json!({
        "exportId": input.export_id,
        "specVersion": DIAGNOSTICS_SPEC_VERSION,
        "exportedAt": input.exported_at,
        "actorRef": null,
        "sessionRef": null,
        "workspaceRef": null,
        "redactionApplied": true,
        "payloadMode": "redacted",
        "contentCaptureEnabled": false,
        "diagnosticClasses": ["operation-state", "sync-status", "device-identity"],
        "artifactRefs": section_names
            .iter()
            .map(|s| format!("{}#section={s}", input.export_id))
            .collect::<Vec<_>>(),
        "redactionRefs": [format!("{}#redaction-manifest", input.export_id)],
        "policyDecisionRefs": [],
    });
    serde_json::json!({
        "bundle_version": DIAGNOSTICS_BUNDLE_VERSION,
        "export": record,
        "redaction_manifest": {
            "method": "blake3 keyed hash, 64-bit pseudonyms, key fresh per bundle and not kept",
            "categories": [
                "local_path", "account_id", "org_id", "device_id", "profile_id",
                "object_id", "session_id", "runtime_id", "token_cache_key", "secret"
            ],
            "replaced_distinct_values": r.manifest(),
            "never_included": ["event payloads", "policy rules", "provider answers", "the pseudonym key"],
        },
        "sections": sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_consistent_within_a_bundle_and_differ_across_salts() {
        let mut a = Redactor::new([1; 32], vec!["/home/alice/syncd".into()]);
        let x = a.text("store at /home/alice/syncd/db used by actor:alice, session:s1");
        assert!(!x.contains("alice"), "{x}");
        assert!(!x.contains("s1"), "{x}");
        let again = a.text("actor:alice");
        assert!(x.contains(&again));
        let mut b = Redactor::new([2; 32], vec![]);
        assert_ne!(b.text("actor:alice"), again);
        let v = a.value(&serde_json::json!({"idempotency_key": "k-1", "device:x": 1, "n": 2}));
        assert!(!v.to_string().contains("k-1"));
        assert!(!v.to_string().contains("device:x"));
        assert_eq!(v["n"], 2);
        let m = a.manifest();
        assert_eq!(m["account_id"], 1);
        assert_eq!(
            m["local_path"], 1,
            "the home, replaced inside the longer path"
        );
        assert!(x.contains("/db used"), "the rest of the path stays: {x}");
    }
}
