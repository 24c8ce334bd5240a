//! Atomic file writes and SHA-256 hashing: the workspace's one implementation.
//!
//! Every file a run produces (checkpoints, `results.json`, reports, split
//! lists, sweep state) is written with [`write_atomic`]: a temp file in the
//! same directory, flushed and synced, then renamed over the target. A crash
//! leaves either the old file or the new one, never a torn one. A process
//! killed between creating the temp file and renaming it leaves the temp file
//! (`.<name>.<pid>.tmp`); [`remove_atomic_temps`] cleans those of a directory
//! that nobody else is writing into.

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
    let tmp = dir.join(temp_name(&name.to_string_lossy(), std::process::id()));
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

/// The temp file name of [`write_atomic`] for `name`, written by process `pid`.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.tmp")
}

/// The process id in a temp file name of [`write_atomic`]
/// (`.<name>.<pid>.tmp`, `name` not empty), or `None` for any other name.
pub fn atomic_temp_pid(file_name: &str) -> Option<u32> {
    let inner = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, pid) = inner.rsplit_once('.')?;
    if name.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temp files that [`write_atomic`] left in `dir` (not in its
/// subdirectories) when a process was killed mid-write, and returns them.
/// Only names of its pattern (`.<name>.<pid>.tmp`) written by other
/// processes are touched. Call it only while no other process writes into
/// `dir` (a run directory's lock, for instance): a temp file of a live
/// writer would go too. A missing `dir` has nothing to clean.
pub fn remove_atomic_temps(dir: &Path) -> Result<Vec<PathBuf>, FsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("listing", dir, e)),
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new("listing", dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(atomic_temp_pid) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if pid == me || !is_file {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Gone in the meantime: nothing to clean.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::new("removing", &path, e)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Reads a whole file; the error names it.
pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    std::fs::read(path).map_err(|e| FsError::new("reading", path, e))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of the concatenation of `parts` (without
/// building it).
pub fn sha256_hex_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p);
    }
    hex(&hasher.finalize())
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
    fn sha256_of_parts_is_that_of_the_whole() {
        assert_eq!(
            sha256_hex_parts([&b"a"[..], b"", b"bc"]),
            sha256_hex(b"abc")
        );
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        let tmp = temp_name("stage1_last.safetensors", 4242);
        assert_eq!(tmp, ".stage1_last.safetensors.4242.tmp");
        assert_eq!(atomic_temp_pid(&tmp), Some(4242));
        assert_eq!(atomic_temp_pid(".a.1.tmp"), Some(1));
        for other in [
            "stage1_last.safetensors",
            ".tmp",
            "..1.tmp",
            ".a.tmp",
            ".a.x1.tmp",
            "a.1.tmp",
            ".a.1.tmp.json",
            ".a.-1.tmp",
        ] {
            assert_eq!(atomic_temp_pid(other), None, "{other}");
        }
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A write killed before its rename, by another process.
        let stale = d.join(temp_name("crt_last.safetensors", u32::MAX - 1));
        std::fs::write(&stale, b"half").unwrap();
        // This process's own temp file (a write in flight) and other files stay.
        let own = d.join(temp_name("x", std::process::id()));
        std::fs::write(&own, b"in flight").unwrap();
        for keep in ["crt_last.safetensors", "notes.tmp", ".hidden"] {
            std::fs::write(d.join(keep), b"keep").unwrap();
        }
        std::fs::create_dir(d.join(".sub.7.tmp")).unwrap();
        assert_eq!(remove_atomic_temps(d).unwrap(), vec![stale.clone()]);
        assert!(!stale.exists() && own.exists() && d.join(".sub.7.tmp").is_dir());
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 5);
        assert!(remove_atomic_temps(d).unwrap().is_empty());
        assert!(remove_atomic_temps(&d.join("absent")).unwrap().is_empty());
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
