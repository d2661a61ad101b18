//! The filesystem as the classifier sees it: a narrow trait, so that tests
//! can deny access to a path even when they run as root (where every
//! permission check passes), and the real implementation over `std::fs`.

use std::io;
use std::path::{Path, PathBuf};

/// What a path is (symbolic links followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else (FIFO, socket, device).
    Other,
}

/// The filesystem operations the classifier uses, and nothing more.
pub trait FileSystem: Send + Sync {
    /// What `path` is, following symbolic links.
    fn kind(&self, path: &Path) -> io::Result<EntryKind>;
    /// The absolute path with every symbolic link and `.`/`..` resolved.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// Succeeds when a directory can be listed and entered, or a file
    /// opened for reading.
    fn check_readable(&self, path: &Path, kind: EntryKind) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl FileSystem for RealFs {
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        let m = std::fs::metadata(path)?;
        Ok(if m.is_dir() {
            EntryKind::Dir
        } else if m.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    fn check_readable(&self, path: &Path, kind: EntryKind) -> io::Result<()> {
        match kind {
            EntryKind::Dir => {
                // Listing needs read permission; `dir/.` needs search
                // (execute) permission, which entering the directory needs.
                let mut entries = std::fs::read_dir(path)?;
                if let Some(Err(e)) = entries.next() {
                    return Err(e);
                }
                std::fs::metadata(path.join(".")).map(|_| ())
            }
            EntryKind::File => std::fs::File::open(path).map(|_| ()),
            // Opening a FIFO for reading would block; existing is enough.
            EntryKind::Other => std::fs::metadata(path).map(|_| ()),
        }
    }
}

impl<T: FileSystem + ?Sized> FileSystem for std::sync::Arc<T> {
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        (**self).kind(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        (**self).canonicalize(path)
    }
    fn check_readable(&self, path: &Path, kind: EntryKind) -> io::Result<()> {
        (**self).check_readable(path, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fs_reports_kinds_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let fs = RealFs;
        assert_eq!(fs.kind(dir.path()).unwrap(), EntryKind::Dir);
        assert_eq!(fs.kind(&file).unwrap(), EntryKind::File);
        assert_eq!(
            fs.kind(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        fs.check_readable(dir.path(), EntryKind::Dir).unwrap();
        fs.check_readable(&file, EntryKind::File).unwrap();
        let c = fs.canonicalize(&dir.path().join("./f")).unwrap();
        assert!(c.is_absolute() && c.ends_with("f"));
    }
}
