//! Atomic file writes and SHA-256 hashing: the workspace's one implementation.
//!
//! Every file a run produces (checkpoints, `results.json`, reports, split
//! lists, sweep state) is written with [`write_atomic`]: a temp file in the
//! same directory, flushed and synced, then renamed over the target. A crash
//! leaves either the old file or the new one, never a torn one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O error on a named file. The path is in the message; the OS error is
/// the [`source`](std::error::Error::source), so that a report printing the
/// chain (`anyhow`'s `{:#}`) shows it once.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct FsError {
    /// What was being done (`writing`, `reading`, ...).
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    /// An error of `what` on `path`.
    pub fn new(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        FsError {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically (see the module docs), creating the
/// parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| FsError::new("creating directory", &dir, e))?;
    let Some(name) = path.file_name() else {
        return Err(FsError::new(
            "writing",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        ));
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(FsError::new("writing", path, e));
    }
    // Persist the rename itself; not every platform can open a directory.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a whole file; the error names it.
pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    std::fs::read(path).map_err(|e| FsError::new("reading", path, e))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, calling `progress(n)` after every chunk of
/// `n` bytes read.
pub fn sha256_file(path: &Path, mut progress: impl FnMut(u64)) -> Result<String, FsError> {
    let mut f = std::fs::File::open(path).map_err(|e| FsError::new("reading", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| FsError::new("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        let mut total = 0;
        let h = sha256_file(&p, |n| total += n).unwrap();
        assert_eq!(h, sha256_hex(b"two"));
        assert_eq!(total, 3);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_names_the_path_once() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way makes the rename fail.
        let p = dir.path().join("blocked");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"keep").unwrap();
        let e = write_atomic(&p, b"new").unwrap_err();
        assert_eq!(std::fs::read(p.join("x")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let shown = e.to_string();
        assert!(
            shown.contains("blocked") && !shown.contains("os error"),
            "{shown}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
