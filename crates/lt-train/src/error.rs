//! The error type of the crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while configuring, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The experiment config is invalid (the message names the file and key).
    #[error("config error: {0}")]
    Config(String),
    /// A learning-rate schedule value is invalid (the message names the key).
    #[error("schedule: {0}")]
    Schedule(String),
    /// Optimiser misuse or a bad saved optimiser state.
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "non-finite loss {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         training stopped, the last good checkpoint was kept"
    )]
    NonFiniteLoss {
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
        /// Global optimiser step (1-based).
        global_step: u64,
        /// The offending value.
        loss: f32,
    },
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something the run needs is missing or inconsistent (e.g. evaluating a
    /// head that was never trained).
    #[error("{0}")]
    Invalid(String),
    /// A collective of data-parallel training failed or timed out (the
    /// message names the rank and the collective).
    #[error("distributed: {0}")]
    Dist(String),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
