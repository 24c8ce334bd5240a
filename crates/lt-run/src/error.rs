//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading or writing a run artefact. Every variant names
/// the file; causes are kept as sources.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file could not be read or written.
    #[error(transparent)]
    Fs(#[from] lt_core::fs::FsError),
    /// The file is not JSON of the expected shape.
    #[error("{}: not a valid {what}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Which artefact (`results.json`, `cell.json`, ...).
        what: &'static str,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A versioned file of a version this build cannot read.
    #[error("{}: {what} schema version {found}; this build reads versions {supported}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Which artefact.
        what: &'static str,
        /// The version in the file.
        found: u32,
        /// The versions this build reads.
        supported: String,
    },
    /// Another process holds the run directory's lock.
    #[error(
        "{}: another process is writing to this run directory (its lock is held); \
         wait for it to finish, or use another run_dir",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A line of an append-only log is not a record.
    #[error("{}:{line}: bad metrics line", path.display())]
    BadLine {
        /// The log.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file without the metadata of an exported model.
    #[error(
        "{}: not an exported model (no `lt_export` metadata in its header); write one with \
         `lt-cli export`",
        path.display()
    )]
    NotExported {
        /// The file.
        path: PathBuf,
    },
}
