//! The crate's error type.
//!
//! Every variant that comes from a file names the file, and, where the input is
//! line-oriented (split lists, CIFAR records), the line or record number, so a
//! bad input can be found and fixed without a debugger.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a sample came from: a split-list line, a CIFAR record, or nothing
/// (samples built in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The list or binary file the sample was read from.
    pub file: PathBuf,
    /// 1-based line (split lists) or record (CIFAR binaries) number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Formats an optional origin as `" (listed at FILE:LINE)"` or nothing.
fn listed_at(origin: &Option<Origin>) -> String {
    match origin {
        Some(o) => format!(" (listed at {o})"),
        None => String::new(),
    }
}

/// Errors of `lt-data`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be written or read as a whole (atomic writes, hashing).
    #[error(transparent)]
    Fs(#[from] lt_core::fs::FsError),

    /// An I/O error on a named file or directory (the OS error is the
    /// source, printed once by whoever prints the chain).
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A malformed line in a line-oriented file (split list, label names).
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },

    /// The same image listed twice in a split list.
    #[error("{}:{line}: `{image}` is already listed at line {first}", path.display())]
    DuplicateEntry {
        /// The list file.
        path: PathBuf,
        /// 1-based line of the repeat.
        line: usize,
        /// 1-based line where it was first listed.
        first: usize,
        /// The image path as listed.
        image: String,
    },

    /// A label outside `0..num_classes`.
    #[error("{}:{line}: label {label} is out of range: the dataset has {num_classes} classes (labels 0..={})", path.display(), num_classes.saturating_sub(1))]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// 1-based line or record number.
        line: usize,
        /// The offending label.
        label: u64,
        /// Number of classes.
        num_classes: usize,
    },

    /// A class with no images, which breaks the contiguous-label contract.
    #[error("{}: class {class}{} has no images (labels must be contiguous 0..{num_classes} and every class needs at least one image)", path.display(), name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    EmptyClass {
        /// The list file or image folder.
        path: PathBuf,
        /// The class id.
        class: usize,
        /// The class name, when known.
        name: Option<String>,
        /// Number of classes.
        num_classes: usize,
    },

    /// A split with no samples at all.
    #[error("{}: the split is empty (no images)", path.display())]
    EmptySplit {
        /// The list file or image folder.
        path: PathBuf,
    },

    /// A listed image that does not exist.
    #[error("image {} does not exist{}", path.display(), listed_at(origin))]
    MissingImage {
        /// The image path.
        path: PathBuf,
        /// The list line that names it.
        origin: Option<Origin>,
    },

    /// An image that exists but cannot be decoded (corrupt, truncated, unsupported).
    #[error("cannot decode image {what}{}", listed_at(origin))]
    Decode {
        /// The image (a path, or a description of an in-memory image).
        what: String,
        /// Where it was listed.
        origin: Option<Origin>,
        /// Why (with the decoder's own error as its source).
        #[source]
        source: Box<crate::decode::DecodeError>,
    },

    /// A malformed CIFAR binary file.
    #[error("{}: not a valid CIFAR binary file: {message}", path.display())]
    CifarFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A checksum mismatch.
    #[error("{}: sha256 mismatch: expected {expected}, got {actual}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Expected hex digest.
        expected: String,
        /// Actual hex digest.
        actual: String,
    },

    /// An archive or dataset layout that is not what was expected.
    #[error("{}: {message}", path.display())]
    Layout {
        /// The archive, file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A JSON file that does not parse or has the wrong shape.
    #[error("{}: invalid JSON", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error (it carries line and column).
        #[source]
        source: serde_json::Error,
    },

    /// A bad configuration value.
    #[error("invalid setting `{key}`: {message}")]
    Config {
        /// The configuration key.
        key: String,
        /// What is wrong.
        message: String,
    },

    /// A dataset index passed to the loader that is out of range.
    #[error("batch {batch}: dataset index {index} is out of range (dataset has {len} samples)")]
    IndexOutOfRange {
        /// Batch number within the epoch.
        batch: usize,
        /// The index.
        index: usize,
        /// Dataset length.
        len: usize,
    },

    /// A failing external command (the downloader).
    #[error("command `{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What happened.
        message: String,
    },

    /// An error from candle while building tensors.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A layout error on `path`.
    pub fn layout(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// A configuration error on `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Whether this error means "this one image cannot be read" (missing or
    /// undecodable) as opposed to a problem with the run itself. The loader's
    /// `on_unreadable = skip` setting skips exactly these.
    pub fn is_unreadable_image(&self) -> bool {
        matches!(
            self,
            DataError::MissingImage { .. } | DataError::Decode { .. }
        )
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
