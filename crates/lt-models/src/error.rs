//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

/// Errors raised while building, running, saving or loading a backbone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The input batch does not have the layout the backbone expects.
    #[error("expected an input of shape (N, {expected_channels}, H, W) with N, H, W >= 1, got {shape:?}")]
    BadInput {
        /// Shape of the offending input.
        shape: Vec<usize>,
        /// Number of input channels the backbone was built for.
        expected_channels: usize,
    },

    /// Batch normalisation in training mode saw a single value per channel,
    /// so the (unbiased) batch variance is undefined. PyTorch rejects the same
    /// case; use a larger batch or input, or [`crate::BnMode::Eval`].
    #[error(
        "batch norm `{layer}` in training mode needs more than one value per channel, \
         got an input of shape {shape:?}"
    )]
    BatchTooSmall {
        /// Name prefix of the batch-norm layer (e.g. `layer4.0.bn1`).
        layer: String,
        /// Shape of the input the layer received.
        shape: Vec<usize>,
    },

    /// A string did not name a known architecture.
    #[error("unknown architecture `{name}`; expected one of: {expected}")]
    UnknownArch {
        /// The string that failed to parse.
        name: String,
        /// Comma-separated list of the accepted names.
        expected: String,
    },

    /// A configuration value is out of range.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),

    /// A weights file named in a config does not exist.
    #[error("weights file {} does not exist", path.display())]
    WeightsNotFound {
        /// The file.
        path: PathBuf,
    },

    /// An encoder configuration file is unreadable or describes another model.
    #[error("encoder config {}: {reason}", path.display())]
    EncoderConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The input batch does not fit an encoder.
    #[error("the encoder expects {expected}, got an input of shape {shape:?}")]
    BadEncoderInput {
        /// Shape of the offending input.
        shape: Vec<usize>,
        /// What the encoder takes.
        expected: String,
    },

    /// A checkpoint file could not be read or parsed.
    #[error("cannot read checkpoint {}", path.display())]
    ReadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: candle_core::Error,
    },

    /// A PyTorch checkpoint is damaged, is not a checkpoint, or holds no
    /// state dict (see [`crate::torch_import`]).
    #[error("cannot read PyTorch checkpoint {}: {reason}", path.display())]
    TorchCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint file could not be written (or renamed into place).
    #[error("cannot write checkpoint {}: {reason}", path.display())]
    WriteCheckpoint {
        /// The destination file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The tensors of a checkpoint do not fit the model.
    #[error("checkpoint {origin} does not fit the model: {mismatch}")]
    IncompatibleCheckpoint {
        /// Where the tensors came from (a file path or a caller-given label).
        origin: String,
        /// Every missing, unexpected or mis-shaped key.
        mismatch: StateDictMismatch,
    },
}

/// Crate-wide result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// All the ways a set of named tensors fails to fit a model, collected so a
/// single error names every offending key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictMismatch {
    /// Model keys with no tensor in the checkpoint.
    pub missing: Vec<String>,
    /// Checkpoint keys the model does not have (after the ignored keys and
    /// the `module.` prefix are removed). Only an error for strict loads.
    pub unexpected: Vec<String>,
    /// Keys present on both sides with different shapes.
    pub shape: Vec<ShapeMismatch>,
}

/// One key whose tensor has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The parameter or buffer name.
    pub key: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape found in the checkpoint.
    pub found: Vec<usize>,
}

impl StateDictMismatch {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape.is_empty()
    }
}

/// Lists at most this many keys per category in messages; the rest are counted.
const MAX_LISTED: usize = 12;

fn write_keys(f: &mut fmt::Formatter<'_>, what: &str, keys: &[String]) -> fmt::Result {
    write!(f, "{} {what} key(s) [", keys.len())?;
    for (i, k) in keys.iter().take(MAX_LISTED).enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{k}")?;
    }
    if keys.len() > MAX_LISTED {
        write!(f, ", ... and {} more", keys.len() - MAX_LISTED)?;
    }
    write!(f, "]")
}

impl fmt::Display for StateDictMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if !std::mem::replace(&mut first, false) {
                write!(f, "; ")?;
            }
            Ok::<(), fmt::Error>(())
        };
        if !self.missing.is_empty() {
            sep(f)?;
            write_keys(f, "missing", &self.missing)?;
        }
        if !self.unexpected.is_empty() {
            sep(f)?;
            write_keys(f, "unexpected", &self.unexpected)?;
        }
        if !self.shape.is_empty() {
            sep(f)?;
            write!(f, "{} shape mismatch(es) [", self.shape.len())?;
            for (i, m) in self.shape.iter().take(MAX_LISTED).enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(
                    f,
                    "{}: model {:?}, checkpoint {:?}",
                    m.key, m.expected, m.found
                )?;
            }
            if self.shape.len() > MAX_LISTED {
                write!(f, ", ... and {} more", self.shape.len() - MAX_LISTED)?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}
