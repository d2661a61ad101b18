//! The workspace scanner: walks a directory without following symbolic
//! links, skips `.git`, refuses trees larger than a bound, and hashes each
//! regular file with blake3 through one fixed-size buffer.
//!
//! The walk happens in two passes: first the tree is listed (cheap, and a
//! tree over the bound is refused before anything is hashed), then each
//! regular file is opened, checked to still be the file that was listed,
//! and hashed. The size recorded is the number of bytes hashed, so size
//! and hash always describe the same content.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{path_key, SkipReason, Skipped, DEFAULT_MAX_FILES};

/// Size of the buffer files are hashed through, in bytes.
pub const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// Options of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Most non-directory entries (regular files, symbolic links, other
    /// special files) accepted; the same bound applies to directories. A
    /// larger tree is refused with [`ScanError::TooManyFiles`] or
    /// [`ScanError::TooManyDirectories`], never silently truncated.
    pub max_files: usize,
    /// Directories not to enter (the store's own home when it lies inside
    /// the workspace). Paths that do not exist or lie outside are ignored.
    pub exclude: Vec<PathBuf>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            max_files: DEFAULT_MAX_FILES,
            exclude: Vec::new(),
        }
    }
}

/// One regular file found by a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScannedFile {
    /// Path relative to the workspace, `/`-separated. Names that are not
    /// UTF-8 are converted lossily (U+FFFD) and flagged in `path_lossy`.
    pub path: String,
    /// Whether `path` was converted lossily.
    pub path_lossy: bool,
    /// First hex digits of blake3 over the raw path bytes (the object id's
    /// last part).
    pub path_key: String,
    /// Bytes hashed.
    pub size: u64,
    /// blake3 of the content, lowercase hex (64 digits).
    pub blake3: String,
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The canonical workspace directory.
    pub root: PathBuf,
    /// Regular files, ordered by raw path bytes.
    pub files: Vec<ScannedFile>,
    /// Entries not recorded, and why.
    pub skipped: Vec<Skipped>,
}

/// A scan could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The directory does not exist.
    #[error("workspace directory {} does not exist", path.display())]
    NotFound {
        /// As given.
        path: PathBuf,
    },
    /// It is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// As given.
        path: PathBuf,
    },
    /// The directory itself cannot be read.
    #[error("cannot read workspace directory {}", path.display())]
    Root {
        /// As given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Too many non-directory entries.
    #[error(
        "{} holds more than {max} files (symbolic links and special files count, .git is not \
         entered); refusing to scan: raise the limit or track a smaller directory",
        path.display()
    )]
    TooManyFiles {
        /// The workspace.
        path: PathBuf,
        /// The bound.
        max: usize,
    },
    /// Too many directories.
    #[error(
        "{} holds more than {max} directories; refusing to scan: raise the limit or track a \
         smaller directory",
        path.display()
    )]
    TooManyDirectories {
        /// The workspace.
        path: PathBuf,
        /// The bound.
        max: usize,
    },
}

/// The raw bytes of a file name (on Unix exactly; elsewhere its lossy
/// UTF-8).
#[cfg(unix)]
fn name_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn name_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    name.to_string_lossy().into_owned().into_bytes()
}

/// Identity of a file, to tell that the file opened is the one listed.
#[cfg(unix)]
fn identity(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(_: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    out.extend_from_slice(parent);
    if !parent.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// A regular file listed by the first pass.
struct Listed {
    abs: PathBuf,
    raw: Vec<u8>,
    id: Option<(u64, u64)>,
}

/// Scans `dir`: every regular file with its size and blake3 hash.
pub fn scan(dir: &Path, options: &ScanOptions) -> Result<Scan, ScanError> {
    let root = match fs::canonicalize(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ScanError::NotFound {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ScanError::Root {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let meta = fs::metadata(&root).map_err(|source| ScanError::Root {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let excluded: Vec<Vec<u8>> = options
        .exclude
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .filter_map(|p| {
            let rel = p.strip_prefix(&root).ok()?;
            let mut raw = Vec::new();
            for c in rel.components() {
                raw = join(&raw, &name_bytes(c.as_os_str()));
            }
            (!raw.is_empty()).then_some(raw)
        })
        .collect();
    let (listed, mut skipped) = list(dir, &root, &excluded, options.max_files)?;
    let mut files = Vec::with_capacity(listed.len());
    let mut buf = vec![0u8; HASH_BUFFER_BYTES].into_boxed_slice();
    for l in listed {
        let path = text(&l.raw);
        match hash_file(&l, &mut buf) {
            Ok((size, blake3)) => files.push(ScannedFile {
                path_lossy: std::str::from_utf8(&l.raw).is_err(),
                path_key: path_key(&l.raw),
                path,
                size,
                blake3,
            }),
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    Ok(Scan {
        root,
        files,
        skipped,
    })
}

/// First pass: lists regular files (sorted by raw path) and skipped
/// entries, within the bounds.
fn list(
    dir: &Path,
    root: &Path,
    excluded: &[Vec<u8>],
    max: usize,
) -> Result<(Vec<Listed>, Vec<Skipped>), ScanError> {
    let mut listed = Vec::new();
    let mut skipped = Vec::new();
    let mut entries = 0usize;
    let mut dirs = 0usize;
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((abs, rel)) = stack.pop() {
        let reader = match fs::read_dir(&abs) {
            Ok(r) => r,
            Err(source) if rel.is_empty() => {
                return Err(ScanError::Root {
                    path: dir.to_path_buf(),
                    source,
                })
            }
            Err(e) => {
                skipped.push(Skipped {
                    path: text(&rel),
                    reason: SkipReason::Unreadable {
                        detail: e.to_string(),
                    },
                });
                continue;
            }
        };
        for entry in reader {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // The rest of this directory is unknown: keep what is
                    // recorded under it.
                    skipped.push(Skipped {
                        path: text(&rel),
                        reason: SkipReason::Unreadable {
                            detail: e.to_string(),
                        },
                    });
                    break;
                }
            };
            let name = entry.file_name();
            if name == ".git" {
                continue;
            }
            let raw = join(&rel, &name_bytes(&name));
            let kind = match entry.file_type() {
                Ok(k) => k,
                Err(e) => {
                    skipped.push(Skipped {
                        path: text(&raw),
                        reason: SkipReason::Unreadable {
                            detail: e.to_string(),
                        },
                    });
                    continue;
                }
            };
            if kind.is_dir() {
                if excluded.contains(&raw) {
                    skipped.push(Skipped {
                        path: text(&raw),
                        reason: SkipReason::Excluded,
                    });
                    continue;
                }
                dirs += 1;
                if dirs > max {
                    return Err(ScanError::TooManyDirectories {
                        path: dir.to_path_buf(),
                        max,
                    });
                }
                stack.push((entry.path(), raw));
                continue;
            }
            entries += 1;
            if entries > max {
                return Err(ScanError::TooManyFiles {
                    path: dir.to_path_buf(),
                    max,
                });
            }
            if kind.is_symlink() {
                skipped.push(Skipped {
                    path: text(&raw),
                    reason: SkipReason::Symlink,
                });
            } else if kind.is_file() {
                // `DirEntry::metadata` does not follow links.
                let id = entry.metadata().ok().map(|m| identity(&m));
                listed.push(Listed {
                    abs: entry.path(),
                    raw,
                    id,
                });
            } else {
                skipped.push(Skipped {
                    path: text(&raw),
                    reason: SkipReason::Special,
                });
            }
        }
    }
    listed.sort_by(|a, b| a.raw.cmp(&b.raw));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((listed, skipped))
}

/// Second pass for one file: its size and blake3 hex, read through `buf`.
fn hash_file(l: &Listed, buf: &mut [u8]) -> Result<(u64, String), SkipReason> {
    let unreadable = |e: std::io::Error| SkipReason::Unreadable {
        detail: e.to_string(),
    };
    let mut file = fs::File::open(&l.abs).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    // A file replaced by a link, directory or another file after listing
    // is not hashed: its state is unknown until the next scan.
    if !meta.is_file() || l.id.is_some_and(|id| id != identity(&meta)) {
        return Err(SkipReason::ChangedDuringScan);
    }
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(buf.get(..n).unwrap_or_default());
                size = size.saturating_add(n as u64);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(p, content).unwrap();
    }

    #[test]
    fn lists_nested_files_with_size_and_blake3() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"alpha");
        write(dir.path(), "empty", b"");
        write(dir.path(), "nested/deep/b.md", b"beta");
        write(dir.path(), "naïve 日本.txt", "ü".as_bytes());
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a.txt", "empty", "naïve 日本.txt", "nested/deep/b.md"]
        );
        let empty = &s.files[1];
        assert_eq!(empty.size, 0);
        // The published blake3 hash of empty input.
        assert_eq!(
            empty.blake3,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(s.files[0].size, 5);
        assert_eq!(
            s.files[0].blake3,
            blake3::hash(b"alpha").to_hex().to_string()
        );
        assert_eq!(s.files[3].path_key, path_key(b"nested/deep/b.md"));
        assert!(s.files.iter().all(|f| !f.path_lossy));
        assert!(s.skipped.is_empty());
        assert_eq!(s.root, fs::canonicalize(dir.path()).unwrap());
    }

    #[test]
    fn hashes_files_larger_than_the_buffer_by_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(HASH_BUFFER_BYTES * 3 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        write(dir.path(), "big.bin", &big);
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        assert_eq!(s.files[0].size, big.len() as u64);
        assert_eq!(s.files[0].blake3, blake3::hash(&big).to_hex().to_string());
    }

    /// INV-TRACK-01.
    #[test]
    fn skips_git_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", b"outside");
        write(dir.path(), ".git/HEAD", b"ref: refs/heads/main");
        write(dir.path(), "sub/.git/config", b"x");
        write(dir.path(), "sub/kept.txt", b"k");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), dir.path().join("link-dir")).unwrap();
            std::os::unix::fs::symlink(
                outside.path().join("secret.txt"),
                dir.path().join("link-file"),
            )
            .unwrap();
        }
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        let paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["sub/kept.txt"]);
        #[cfg(unix)]
        {
            let skipped: Vec<(&str, &SkipReason)> = s
                .skipped
                .iter()
                .map(|k| (k.path.as_str(), &k.reason))
                .collect();
            assert_eq!(
                skipped,
                [
                    ("link-dir", &SkipReason::Symlink),
                    ("link-file", &SkipReason::Symlink)
                ]
            );
        }
    }

    /// INV-TRACK-01.
    #[test]
    fn refuses_more_files_than_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write(dir.path(), &format!("d/f{i}"), b"x");
        }
        let at_bound = ScanOptions {
            max_files: 5,
            ..ScanOptions::default()
        };
        assert_eq!(scan(dir.path(), &at_bound).unwrap().files.len(), 5);
        let below = ScanOptions {
            max_files: 4,
            ..ScanOptions::default()
        };
        let err = scan(dir.path(), &below).unwrap_err();
        assert!(
            matches!(err, ScanError::TooManyFiles { max: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 4 files"), "{err}");
        let one_dir = ScanOptions {
            max_files: 0,
            ..ScanOptions::default()
        };
        assert!(matches!(
            scan(dir.path(), &one_dir).unwrap_err(),
            ScanError::TooManyDirectories { max: 0, .. }
        ));
    }

    #[test]
    fn missing_or_non_directory_roots_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = scan(&missing, &ScanOptions::default()).unwrap_err();
        assert!(matches!(err, ScanError::NotFound { .. }));
        assert!(err.to_string().contains("does not exist"), "{err}");
        write(dir.path(), "file", b"x");
        assert!(matches!(
            scan(&dir.path().join("file"), &ScanOptions::default()).unwrap_err(),
            ScanError::NotADirectory { .. }
        ));
    }

    /// INV-TRACK-01.
    #[test]
    fn excluded_directories_are_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "home/db/blob", b"x");
        write(dir.path(), "src/main.rs", b"fn main() {}");
        let options = ScanOptions {
            exclude: vec![dir.path().join("home"), PathBuf::from("/nonexistent/x")],
            ..ScanOptions::default()
        };
        let s = scan(dir.path(), &options).unwrap();
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.skipped[0].path, "home");
        assert_eq!(s.skipped[0].reason, SkipReason::Excluded);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names_are_converted_lossily_and_flagged() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let a = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
        let b = std::ffi::OsStr::from_bytes(b"bad\xfe.txt");
        if fs::write(dir.path().join(a), b"1").is_err() {
            return; // a file system that refuses such names
        }
        fs::write(dir.path().join(b), b"2").unwrap();
        let s = scan(dir.path(), &ScanOptions::default()).unwrap();
        assert_eq!(s.files.len(), 2);
        for f in &s.files {
            assert!(f.path_lossy);
            assert_eq!(f.path, "bad\u{fffd}.txt");
        }
        // Same text, different raw bytes: different keys.
        assert_ne!(s.files[0].path_key, s.files[1].path_key);
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_directories_are_reported_not_fatal() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "open/a", b"a");
        write(dir.path(), "locked/b", b"b");
        let locked = dir.path().join("locked");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let readable_anyway = fs::read_dir(&locked).is_ok(); // running as root
        let s = scan(dir.path(), &ScanOptions::default());
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        let s = s.unwrap();
        if readable_anyway {
            return;
        }
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.skipped[0].path, "locked");
        assert!(s.skipped[0].reason.keeps_record());
    }
}
