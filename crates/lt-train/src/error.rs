//! The error type of the crate.
//!
//! Errors of the crates below are wrapped with `#[from]`, so that
//! [`std::error::Error::source`] leads from the training failure down to the
//! root cause (an unreadable image, a malformed split line, an OS error);
//! a binary printing the chain (`anyhow`'s `{:#}`) shows each level once.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Everything that can go wrong while configuring, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The experiment config is invalid (the message names the file and key).
    #[error("config error: {0}")]
    Config(Box<ConfigError>),
    /// A learning-rate schedule value is invalid (the message names the key).
    #[error("schedule: {0}")]
    Schedule(String),
    /// Optimiser misuse or a bad saved optimiser state.
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The loss became NaN or infinite; the last good checkpoint, if any, is
    /// kept.
    #[error(
        "non-finite loss {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         training stopped, {}",
        kept_note(.kept)
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
        /// Epoch of the last checkpoint of the stage, kept as it was; `None`
        /// when the stage has none yet.
        kept: Option<usize>,
    },
    /// The evaluation at the end of an epoch failed (diverged weights show
    /// up here as non-finite logits); the last good checkpoint, if any, is
    /// kept.
    #[error(
        "{stage}, epoch {epoch}: evaluation on {} failed{}; training stopped, {}",
        .split.as_str(),
        diverged_note(.source),
        kept_note(.kept)
    )]
    EpochEvaluation {
        /// The stage being trained.
        stage: lt_core::Stage,
        /// Epoch (1-based).
        epoch: usize,
        /// The evaluated split.
        split: lt_core::Split,
        /// Epoch of the last checkpoint of the stage, kept as it was.
        kept: Option<usize>,
        /// What failed.
        #[source]
        source: Box<TrainError>,
    },
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A whole-file read or atomic write failed.
    #[error(transparent)]
    Fs(#[from] lt_core::fs::FsError),
    /// Reading or loading data failed.
    #[error("data")]
    Data(#[source] Box<lt_data::DataError>),
    /// Building or loading a backbone failed.
    #[error("model")]
    Model(#[source] Box<lt_models::ModelError>),
    /// Building, fitting or loading a classifier head failed.
    #[error("head")]
    Head(#[source] Box<lt_heads::HeadError>),
    /// Computing metrics failed.
    #[error("metrics")]
    Metrics(#[source] Box<lt_metrics::MetricsError>),
    /// A run artefact (results, metrics log, checkpoint metadata) is bad.
    #[error("run directory")]
    Run(#[source] Box<lt_run::RunError>),
    /// A sampler could not be built or restored (the message names the key
    /// or checkpoint).
    #[error("{context}")]
    Sampler {
        /// Where: the config key or the checkpoint.
        context: String,
        /// The cause.
        #[source]
        source: lt_samplers::SamplerError,
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

/// The wrapped errors are boxed: `TrainError` stays small on the happy path.
macro_rules! boxed_from {
    ($($ty:ty => $var:ident),* $(,)?) => {
        $(impl From<$ty> for TrainError {
            fn from(e: $ty) -> Self {
                TrainError::$var(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    ConfigError => Config,
    lt_data::DataError => Data,
    lt_models::ModelError => Model,
    lt_heads::HeadError => Head,
    lt_metrics::MetricsError => Metrics,
    lt_run::RunError => Run,
);

/// What a stopped stage left on disk.
fn kept_note(kept: &Option<usize>) -> String {
    match *kept {
        Some(epoch) => format!("the last good checkpoint (epoch {epoch}) was kept"),
        None => "there is no checkpoint of this stage to keep (it failed in its first epoch)"
            .to_string(),
    }
}

/// A hint when an evaluation failed on a NaN or infinite logit.
fn diverged_note(e: &TrainError) -> &'static str {
    match e {
        TrainError::Metrics(m)
            if matches!(**m, lt_metrics::MetricsError::NonFiniteLogit { .. }) =>
        {
            " (the weights diverged: lower the learning rate)"
        }
        _ => "",
    }
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
