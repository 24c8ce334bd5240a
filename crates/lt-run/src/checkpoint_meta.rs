//! The metadata of a training checkpoint.
//!
//! A checkpoint is one safetensors file (written by the training crate)
//! holding the model tensors, the optimiser state and a [`CheckpointMeta`] as
//! JSON in the safetensors header under [`META_KEY`]. A copy sits next to it
//! as `<name>.json` ([`crate::layout::checkpoint_meta_path`]) for people and
//! tools; loading trusts only the copy inside the safetensors file.
//!
//! [`CheckpointMeta::tensors_sha256`] is a checksum of the tensors, verified
//! on load: the SHA-256 of, for every tensor in name order, its name, dtype,
//! shape and bytes ([`tensor_digest_record`] gives each tensor's part).
//! Checkpoints written before it existed have none and are still read (the
//! format version did not change: the field is optional).

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
    /// SHA-256 (lower-case hex) of the tensors, as described in the module
    /// docs; filled in when the checkpoint is written, absent from older
    /// checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors_sha256: Option<String>,
}

/// The bytes one tensor contributes to [`CheckpointMeta::tensors_sha256`],
/// in front of its data: the name's length (u64, little-endian) and the
/// name, the dtype's length and name (safetensors' spelling, e.g. `F32`),
/// the number of dimensions and each dimension (u64 LE), and the data's
/// length (u64 LE). The data bytes follow.
pub fn tensor_digest_record(name: &str, dtype: &str, shape: &[usize], data_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + dtype.len() + 8 * (shape.len() + 4));
    fn u64_le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    u64_le(&mut out, name.len());
    out.extend_from_slice(name.as_bytes());
    u64_le(&mut out, dtype.len());
    out.extend_from_slice(dtype.as_bytes());
    u64_le(&mut out, shape.len());
    for &d in shape {
        u64_le(&mut out, d);
    }
    u64_le(&mut out, data_len);
    out
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
    /// Parses the metadata JSON of a checkpoint (with or without
    /// [`tensors_sha256`](Self::tensors_sha256)).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sum: Option<&str>) -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            stage: Stage::Stage1,
            epoch: 2,
            global_step: 20,
            sampler: None,
            rng: RngState {
                seed: 1,
                next_epoch: 2,
            },
            best: None,
            config_hash: "h".into(),
            lr: 0.1,
            tensors_sha256: sum.map(str::to_string),
        }
    }

    #[test]
    fn the_checksum_is_optional_both_ways() {
        // Written before checksums: no field, still read, same version.
        let old = r#"{"format_version":1,"stage":"stage1","epoch":2,"global_step":20,
            "sampler":null,"rng":{"seed":1,"next_epoch":2},"best":null,
            "config_hash":"h","lr":0.1}"#;
        assert_eq!(CheckpointMeta::from_json(old).unwrap(), meta(None));
        let none = serde_json::to_string(&meta(None)).unwrap();
        assert!(!none.contains("sha256"), "{none}");
        let with = serde_json::to_string(&meta(Some("ab"))).unwrap();
        assert_eq!(CheckpointMeta::from_json(&with).unwrap(), meta(Some("ab")));
    }

    #[test]
    fn digest_records_separate_every_field() {
        let a = tensor_digest_record("fc.weight", "F32", &[2, 3], 24);
        assert_eq!(a.len(), 8 + 9 + 8 + 3 + 8 + 16 + 8);
        assert_ne!(a, tensor_digest_record("fc.weight", "F32", &[3, 2], 24));
        assert_ne!(a, tensor_digest_record("fc.weigh", "tF32", &[2, 3], 24));
    }
}
