//! The metadata of a training checkpoint.
//!
//! A checkpoint is one safetensors file (written by the training crate)
//! holding the model tensors, the optimiser state and a [`CheckpointMeta`] as
//! JSON in the safetensors header under [`META_KEY`]. A copy sits next to it
//! as `<name>.json` ([`crate::layout::checkpoint_meta_path`]) for people and
//! tools; loading trusts only the copy inside the safetensors file.

use std::path::Path;

use lt_core::Stage;
use serde::{Deserialize, Serialize};

use crate::RunError;

/// Header metadata key of the checkpoint JSON.
pub const META_KEY: &str = "lt_train";

/// Current checkpoint format version.
pub const FORMAT_VERSION: u32 = 1;

/// The best evaluation seen so far (for `model_select = best_val`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    /// Epoch (1-based) at which it was reached.
    pub epoch: usize,
    /// Name of the metric (e.g. `val_top1`).
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// State needed to continue a run exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Which training produced it (`stage1`, `crt`, `lws`, ...).
    pub stage: Stage,
    /// Number of completed epochs.
    pub epoch: usize,
    /// Number of completed optimiser steps.
    pub global_step: u64,
    /// Serialised sampler state (`lt_samplers::SamplerState`).
    pub sampler: Option<serde_json::Value>,
    /// Random state. Every random choice is derived from `(seed, purpose,
    /// epoch, index)`, so the seed and the epoch reached are the whole state.
    pub rng: RngState,
    /// Best validation result so far.
    pub best: Option<BestMetric>,
    /// Hash of what determines the stage's result (resuming with another
    /// config is refused).
    pub config_hash: String,
    /// Learning rate of the last step (informational).
    pub lr: f64,
}

/// Seed-derived random state (see [`CheckpointMeta::rng`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Run seed.
    pub seed: u64,
    /// Next epoch whose streams will be derived.
    pub next_epoch: u64,
}

impl CheckpointMeta {
    /// Reads the JSON copy next to a checkpoint.
    pub fn read_sidecar(checkpoint: &Path) -> Result<Self, RunError> {
        crate::read_json(
            &crate::layout::checkpoint_meta_path(checkpoint),
            "checkpoint metadata",
        )
    }

    /// Writes the JSON copy next to a checkpoint.
    pub fn write_sidecar(&self, checkpoint: &Path) -> Result<(), RunError> {
        crate::write_json(
            &crate::layout::checkpoint_meta_path(checkpoint),
            "checkpoint metadata",
            self,
        )
    }
}
