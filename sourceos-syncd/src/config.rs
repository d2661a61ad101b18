//! The home's settings files (`config.toml`, by section, and
//! `daemon.toml`): read with a size bound, a missing file meaning the
//! defaults. Each section's owner parses and checks its own keys and names
//! the file in its own errors.

use std::path::{Path, PathBuf};

/// Settings by section (`[orphans]`, `[lanes]`, `[replication]`), under
/// the home.
pub const CONFIG_FILE: &str = "config.toml";
/// Largest settings file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// A settings file exists but cannot be had as text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Reading it failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is larger than any settings file needs to be.
    #[error("{path} is {bytes} bytes; at most {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// Reads the settings file `name` under `home` and parses its text with
/// `parse`; no such file is `T::default()`. Errors become the owner's own,
/// so that every owner says the same thing the same way: `read` for a
/// file that cannot be read, `invalid` (naming the file) for one too large
/// or whose text `parse` refuses.
pub fn load_settings<T: Default, E>(
    home: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
    read: impl FnOnce(PathBuf, std::io::Error) -> E,
    invalid: impl FnOnce(PathBuf, String) -> E,
) -> Result<T, E> {
    let text = match read_config_file(home, name) {
        Ok(None) => return Ok(T::default()),
        Ok(Some(text)) => text,
        Err(ConfigFileError::Read { path, source }) => return Err(read(path, source)),
        Err(ConfigFileError::TooLarge { path, bytes }) => {
            return Err(invalid(
                path,
                format!("{bytes} bytes; at most {MAX_CONFIG_BYTES}"),
            ))
        }
    };
    parse(&text).map_err(|reason| invalid(home.join(name), reason))
}

/// The text of the settings file `name` under `home`; `None` when there is
/// no such file.
pub fn read_config_file(home: &Path, name: &str) -> Result<Option<String>, ConfigFileError> {
    let path = home.join(name);
    let meta = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigFileError::Read { path, source }),
        Ok(m) => m,
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge {
            path,
            bytes: meta.len(),
        });
    }
    // Read through a bound as well: the file may grow after the check.
    let mut text = String::new();
    let file = std::fs::File::open(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    use std::io::Read;
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ConfigFileError::Read {
            path: path.clone(),
            source,
        })?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge {
            path,
            bytes: text.len() as u64,
        });
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn missing_is_the_default_large_or_refused_text_is_the_owners_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_config_file(dir.path(), CONFIG_FILE).unwrap().is_none());
        std::fs::write(dir.path().join(CONFIG_FILE), "[orphans]\n").unwrap();
        assert_eq!(
            read_config_file(dir.path(), CONFIG_FILE)
                .unwrap()
                .as_deref(),
            Some("[orphans]\n")
        );
        let big = "#".repeat(MAX_CONFIG_BYTES as usize + 1);
        std::fs::write(dir.path().join(CONFIG_FILE), big).unwrap();
        let e = read_config_file(dir.path(), CONFIG_FILE).unwrap_err();
        assert!(
            matches!(e, ConfigFileError::TooLarge { bytes, .. } if bytes == MAX_CONFIG_BYTES + 1)
        );
        type Owned = Result<usize, (PathBuf, String)>;
        let load = |home: &Path| -> Owned {
            load_settings(
                home,
                CONFIG_FILE,
                |t| {
                    if t.starts_with('x') {
                        Err("no x".into())
                    } else {
                        Ok(t.len())
                    }
                },
                |p, e| (p, e.to_string()),
                |p, r| (p, r),
            )
        };
        let (path, reason) = load(dir.path()).unwrap_err();
        assert_eq!(path, dir.path().join(CONFIG_FILE));
        assert_eq!(
            reason,
            format!("{} bytes; at most {MAX_CONFIG_BYTES}", MAX_CONFIG_BYTES + 1)
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "x").unwrap();
        assert_eq!(
            load(dir.path()),
            Err((dir.path().join(CONFIG_FILE), "no x".into()))
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "abc").unwrap();
        assert_eq!(load(dir.path()), Ok(3));
        std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(load(dir.path()), Ok(0));
        std::fs::write(dir.path().join(CONFIG_FILE), "abc").unwrap();
        // A directory where the file should be cannot be read as text.
        std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(matches!(
            read_config_file(dir.path(), CONFIG_FILE),
            Err(ConfigFileError::Read { .. })
        ));
        let (path, _) = load(dir.path()).unwrap_err();
        assert_eq!(path, dir.path().join(CONFIG_FILE));
    }
}
