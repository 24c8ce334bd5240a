//! One writer per run directory: an exclusive advisory lock on
//! `<run_dir>/lock`, held for as long as the [`RunLock`] lives.
//!
//! The lock is the operating system's (`flock` on Unix, `LockFileEx` on
//! Windows, through `std::fs::File::try_lock`), so it is released when the
//! process exits, however it exits: a crash never leaves a stale lock that a
//! person would have to delete. Within one process the lock is shared: a
//! second [`RunLock::acquire`] on the same directory succeeds while the
//! first is alive (a program that opens the same run twice is still one
//! writer).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use lt_core::fs::FsError;

use crate::RunError;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = "lock";

#[derive(Debug)]
struct Held {
    _file: File,
}

/// The held lock of one run directory; dropping the last handle of a
/// process releases it.
#[derive(Debug, Clone)]
pub struct RunLock {
    _held: Arc<Held>,
    path: PathBuf,
}

fn held_here() -> &'static Mutex<HashMap<PathBuf, Weak<Held>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<Held>>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

impl RunLock {
    /// Takes the lock of the run directory `root` (which must exist), or
    /// fails with [`RunError::Locked`] naming it when another process holds
    /// it.
    pub fn acquire(root: &Path) -> Result<RunLock, RunError> {
        let path = root.join(LOCK_FILE);
        let key = std::fs::canonicalize(root)
            .map_err(|e| FsError::new("resolving the run directory", root, e))?;
        let mut held = held_here().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.get(&key).and_then(Weak::upgrade) {
            return Ok(RunLock { _held: h, path });
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FsError::new("opening the lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(RunError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(FsError::new("locking", &path, e).into())
            }
        }
        let h = Arc::new(Held { _file: file });
        held.insert(key, Arc::downgrade(&h));
        Ok(RunLock { _held: h, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shares_the_lock_and_releases_it_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunLock::acquire(dir.path()).unwrap();
        let b = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(a.path(), b.path());
        // Another open file description (as another process would have)
        // cannot take it while it is held ...
        let other = File::options().write(true).open(a.path()).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(a);
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(b);
        // ... and can once every handle is gone.
        other.try_lock().unwrap();
        // Held elsewhere: a clear error naming the lock file.
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("lock") && e.contains("another process"), "{e}");
        drop(other);
        RunLock::acquire(dir.path()).unwrap();
    }
}
