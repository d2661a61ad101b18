//! Path evidence without the path: a `sha256:` digest of the resolved
//! path's bytes, a redacted hint (the home directory written as `~`, or a
//! workspace alias in place of the workspace root), and a scrubber that
//! takes paths out of any text (Git's messages) before it is reported.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// How the path hint was redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redaction {
    /// No redaction. Never emitted: it would store the raw path.
    None,
    /// The home directory is written as `~`.
    UserHomeRedacted,
    /// The workspace root is written as its alias.
    WorkspaceAlias,
    /// No hint; only the digest.
    DigestOnly,
}

impl Redaction {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Redaction::None => "none",
            Redaction::UserHomeRedacted => "user_home_redacted",
            Redaction::WorkspaceAlias => "workspace_alias",
            Redaction::DigestOnly => "digest_only",
        }
    }
}

/// What is reported about a path instead of the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathEvidence {
    /// `sha256:` and 64 lowercase hex digits of the resolved path's bytes.
    pub path_digest: String,
    /// `~/…` or `<alias>/…`; `None` when neither applies.
    pub redacted_path_hint: Option<String>,
    /// How the hint was made.
    pub redaction: Redaction,
}

/// Longest hint, in characters; longer ones keep their end.
pub const MAX_HINT_CHARS: usize = 256;
/// Longest scrubbed message, in characters.
pub const MAX_REASON_CHARS: usize = 400;
/// What a scrubbed path becomes.
pub const PATH_PLACEHOLDER: &str = "<path>";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The bytes of a path (its OS bytes on Unix, UTF-8 text elsewhere).
pub fn path_bytes(path: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        path.to_string_lossy().as_bytes().to_vec()
    }
}

/// A path from OS bytes (Git prints paths as raw bytes).
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// `sha256:` and the lowercase hex SHA-256 of `data`.
pub fn sha256_ref(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

/// The digest of a path, as path evidence and in Git facts.
pub fn path_digest(path: &Path) -> String {
    sha256_ref(&path_bytes(path))
}

/// Whether `text` is `sha256:` followed by 64 hex digits.
pub fn is_sha256_ref(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A workspace root and the alias that stands for it in hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRoot {
    /// Alias: ASCII letters, digits, `.`, `_`, `-`; at most 64 bytes.
    pub alias: String,
    /// The root directory.
    pub root: PathBuf,
}

/// An alias that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace alias {alias:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-', not starting with '.'")]
pub struct BadAlias {
    /// The alias given.
    pub alias: String,
}

impl WorkspaceRoot {
    /// Checks the alias.
    pub fn new(alias: &str, root: PathBuf) -> Result<Self, BadAlias> {
        let ok = !alias.is_empty()
            && alias.len() <= 64
            && !alias.starts_with('.')
            && alias
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(Self {
                alias: alias.to_owned(),
                root,
            })
        } else {
            Err(BadAlias {
                alias: alias.to_owned(),
            })
        }
    }
}

/// Turns resolved paths into evidence and scrubs paths out of text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// The user's home directory (and its resolved form, when it differs).
    homes: Vec<PathBuf>,
    /// Workspace roots, longest first.
    workspaces: Vec<WorkspaceRoot>,
}

impl Redactor {
    /// A redactor for `home` (ignored when it is not absolute or is `/`)
    /// and the given workspace roots. Give resolved paths: hints are made
    /// from resolved paths, and both the given and the resolved home are
    /// recognised.
    pub fn new(home: Option<PathBuf>, workspaces: Vec<WorkspaceRoot>) -> Self {
        let mut homes = Vec::new();
        if let Some(h) = home.filter(|h| h.is_absolute() && h.parent().is_some()) {
            if let Ok(c) = std::fs::canonicalize(&h) {
                if c != h && c.parent().is_some() {
                    homes.push(c);
                }
            }
            homes.push(h);
        }
        let mut workspaces: Vec<WorkspaceRoot> = workspaces
            .into_iter()
            .flat_map(|w| {
                let resolved = std::fs::canonicalize(&w.root)
                    .ok()
                    .filter(|c| *c != w.root)
                    .map(|c| WorkspaceRoot {
                        alias: w.alias.clone(),
                        root: c,
                    });
                std::iter::once(w).chain(resolved)
            })
            .filter(|w| w.root.is_absolute() && w.root.parent().is_some())
            .collect();
        workspaces.sort_by_key(|w| std::cmp::Reverse(w.root.components().count()));
        Self { homes, workspaces }
    }

    /// A redactor for `$HOME` and no workspaces.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("HOME").map(PathBuf::from), Vec::new())
    }

    /// Evidence for a resolved path: a workspace alias wins over the home
    /// directory; outside both, only the digest.
    pub fn evidence(&self, path: &Path) -> PathEvidence {
        let path_digest = path_digest(path);
        for w in &self.workspaces {
            if let Ok(rest) = path.strip_prefix(&w.root) {
                return PathEvidence {
                    path_digest,
                    redacted_path_hint: Some(hint(&w.alias, rest)),
                    redaction: Redaction::WorkspaceAlias,
                };
            }
        }
        for h in &self.homes {
            if let Ok(rest) = path.strip_prefix(h) {
                return PathEvidence {
                    path_digest,
                    redacted_path_hint: Some(hint("~", rest)),
                    redaction: Redaction::UserHomeRedacted,
                };
            }
        }
        PathEvidence {
            path_digest,
            redacted_path_hint: None,
            redaction: Redaction::DigestOnly,
        }
    }

    /// `text` with every path taken out: the `known` paths (longest first)
    /// and the home directory are written as their hints, and anything
    /// else that starts with `/` up to the next space or quote becomes
    /// [`PATH_PLACEHOLDER`]. Control characters become spaces; the result
    /// is at most [`MAX_REASON_CHARS`] characters.
    pub fn scrub(&self, text: &str, known: &[&Path]) -> String {
        let mut replacements: Vec<(String, String)> = Vec::new();
        for p in known {
            let raw = p.to_string_lossy().into_owned();
            if raw.len() > 1 {
                let ev = self.evidence(p);
                let with = ev
                    .redacted_path_hint
                    .unwrap_or_else(|| PATH_PLACEHOLDER.to_owned());
                replacements.push((raw, with));
            }
        }
        for h in &self.homes {
            replacements.push((h.to_string_lossy().into_owned(), "~".to_owned()));
        }
        replacements.sort_by_key(|(raw, _)| std::cmp::Reverse(raw.len()));
        let mut out: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        for (raw, with) in &replacements {
            out = out.replace(raw.as_str(), with);
        }
        let out = scrub_absolute(&out);
        let trimmed = out.trim();
        if trimmed.chars().count() > MAX_REASON_CHARS {
            let mut cut: String = trimmed.chars().take(MAX_REASON_CHARS - 1).collect();
            cut.push('…');
            cut
        } else {
            trimmed.to_owned()
        }
    }
}

/// `prefix` joined with a relative rest, `/`-separated, bounded.
fn hint(prefix: &str, rest: &Path) -> String {
    let mut out = prefix.to_owned();
    for c in rest.components() {
        out.push('/');
        out.extend(c.as_os_str().to_string_lossy().chars().map(|ch| {
            if ch.is_control() {
                '?'
            } else {
                ch
            }
        }));
    }
    let n = out.chars().count();
    if n > MAX_HINT_CHARS {
        let tail: String = out.chars().skip(n - (MAX_HINT_CHARS - 1)).collect();
        format!("…{tail}")
    } else {
        out
    }
}

/// Replaces every `/`-initial token with the placeholder. A token starts
/// at the beginning or after a space, quote, bracket, `:` or `=`, and ends
/// at a space, quote or closing bracket.
fn scrub_absolute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_path = false;
    let mut prev: Option<char> = None;
    for c in text.chars() {
        if in_path {
            if c.is_whitespace() || "'\"`)]>,;".contains(c) {
                in_path = false;
                out.push(c);
            }
        } else if c == '/' && prev.is_none_or(|p| p.is_whitespace() || "'\"`([<:=".contains(p)) {
            in_path = true;
            out.push_str(PATH_PLACEHOLDER);
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_of_the_path_bytes() {
        // sha256("abc"), a published test vector.
        assert_eq!(
            sha256_ref(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = path_digest(Path::new("/srv/x"));
        assert!(is_sha256_ref(&d), "{d}");
        assert!(!is_sha256_ref("sha256:abc"));
        assert!(!is_sha256_ref(&d.replace("sha256:", "sha1:")));
    }

    #[test]
    fn hints_never_show_the_raw_path() {
        let r = Redactor::new(
            Some(PathBuf::from("/home/ada")),
            vec![WorkspaceRoot::new("proj", PathBuf::from("/home/ada/src/proj")).unwrap()],
        );
        let e = r.evidence(Path::new("/home/ada/src/proj/lib/a"));
        assert_eq!(e.redaction, Redaction::WorkspaceAlias);
        assert_eq!(e.redacted_path_hint.as_deref(), Some("proj/lib/a"));
        let e = r.evidence(Path::new("/home/ada/Documents/New project"));
        assert_eq!(e.redaction, Redaction::UserHomeRedacted);
        assert_eq!(
            e.redacted_path_hint.as_deref(),
            Some("~/Documents/New project")
        );
        let e = r.evidence(Path::new("/home/ada"));
        assert_eq!(e.redacted_path_hint.as_deref(), Some("~"));
        let e = r.evidence(Path::new("/home/adam/x"));
        assert_eq!(e.redaction, Redaction::DigestOnly);
        assert_eq!(e.redacted_path_hint, None);
        // A home of "/" would make every hint the raw path: ignored.
        let e = Redactor::new(Some(PathBuf::from("/")), vec![]).evidence(Path::new("/etc"));
        assert_eq!(e.redaction, Redaction::DigestOnly);
    }

    #[test]
    fn scrub_takes_paths_out_of_messages() {
        let r = Redactor::new(Some(PathBuf::from("/home/ada")), vec![]);
        let repo = Path::new("/srv/my repo");
        let s = r.scrub(
            "fatal: invalid gitfile format: /srv/my repo/.git\nand '/etc/x y' (/opt/z)",
            &[repo],
        );
        assert_eq!(
            s,
            "fatal: invalid gitfile format: <path>/.git and '<path> y' (<path>)"
        );
        let s = r.scrub("fatal: detected dubious ownership in /home/ada/r", &[]);
        assert_eq!(s, "fatal: detected dubious ownership in ~/r");
        let s = r.scrub(
            "error: object file .git/objects/10/04ef is empty",
            &[Path::new("/")],
        );
        assert_eq!(s, "error: object file .git/objects/10/04ef is empty");
        let long = "x".repeat(2 * MAX_REASON_CHARS);
        assert_eq!(r.scrub(&long, &[]).chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn aliases_are_checked() {
        assert!(WorkspaceRoot::new("ok-1.x_y", PathBuf::from("/w")).is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                WorkspaceRoot::new(bad, PathBuf::from("/w")).is_err(),
                "{bad}"
            );
        }
    }
}
