//! The metadata of an exported model (`lt-cli export`).
//!
//! An exported model is one safetensors file: the backbone's tensors under
//! their torchvision names, the chosen head folded into a plain linear layer
//! `fc.weight` `(C, d)` and `fc.bias` `(C)`, and this metadata as JSON under
//! the header key [`EXPORT_METADATA_KEY`]. The logits of an image are
//! `backbone(x) . fc.weight^T + fc.bias`, with the backbone's BN in eval mode
//! and the image preprocessed by [`ExportMeta::eval_preset`] and
//! [`ExportMeta::normalization`].

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// The safetensors header key holding the [`ExportMeta`] JSON.
pub const EXPORT_METADATA_KEY: &str = "lt_export";

/// The format version this build writes and reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// Per-channel normalisation applied after the eval preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportNormalization {
    /// Its config name (`cifar`, `imagenet`, ...).
    pub name: String,
    /// Per-channel mean (RGB, pixels in `[0, 1]`).
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// What an exported model is and how to feed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMeta {
    /// [`EXPORT_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// Backbone architecture (`model.arch`, e.g. `resnet32`).
    pub arch: String,
    /// Mixed-precision mode of the backbone (`model.precision`).
    pub precision: String,
    /// Feature dimension `d`.
    pub feature_dim: usize,
    /// Number of classes `C`.
    pub num_classes: usize,
    /// The name of each class, by class id.
    pub class_names: Vec<String>,
    /// The evaluation preprocessing preset (`data.eval_preset`).
    pub eval_preset: String,
    /// The normalisation (`data.normalization`); none: pixels in `[0, 1]`.
    pub normalization: Option<ExportNormalization>,
    /// The head folded into `fc` (a registry name: `joint`, `tau_norm`, ...).
    pub head: String,
    /// Its table label (`τ-norm`, ...).
    pub head_label: String,
    /// Its tau, when it has one (tau-norm and post-hoc LA: as evaluation
    /// chose it).
    pub tau: Option<f64>,
    /// The run directory it was exported from.
    pub source_run: String,
    /// The checkpoint the head (and its backbone) came from.
    pub checkpoint: String,
    /// That checkpoint's epoch.
    pub epoch: usize,
    /// SHA-256 of the run's resolved config.
    pub config_hash: String,
}

impl ExportMeta {
    /// The safetensors header metadata holding this.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        HashMap::from([(EXPORT_METADATA_KEY.to_string(), json)])
    }

    /// Reads it from a file's header metadata; `path` names the file in
    /// errors (not an exported model, or of another format version).
    pub fn from_metadata(
        metadata: Option<&HashMap<String, String>>,
        path: &Path,
    ) -> Result<Self, RunError> {
        let json = metadata
            .and_then(|m| m.get(EXPORT_METADATA_KEY))
            .ok_or_else(|| RunError::NotExported {
                path: path.to_path_buf(),
            })?;
        let meta: ExportMeta = serde_json::from_str(json).map_err(|source| RunError::Json {
            path: path.to_path_buf(),
            what: "exported model metadata",
            source,
        })?;
        if meta.format_version != EXPORT_FORMAT_VERSION {
            return Err(RunError::Version {
                path: path.to_path_buf(),
                what: "exported model",
                found: meta.format_version,
                supported: EXPORT_FORMAT_VERSION.to_string(),
            });
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_header_metadata() {
        let meta = ExportMeta {
            format_version: EXPORT_FORMAT_VERSION,
            arch: "resnet8".into(),
            precision: "f32".into(),
            feature_dim: 64,
            num_classes: 2,
            class_names: vec!["cat".into(), "dog".into()],
            eval_preset: "cifar_eval".into(),
            normalization: None,
            head: "tau_norm".into(),
            head_label: "τ-norm".into(),
            tau: Some(0.7),
            source_run: "runs/x".into(),
            checkpoint: "runs/x/checkpoints/stage1_best.safetensors".into(),
            epoch: 3,
            config_hash: "ab".into(),
        };
        let p = Path::new("m.safetensors");
        let back = ExportMeta::from_metadata(Some(&meta.to_metadata()), p).unwrap();
        assert_eq!(back, meta);
        let e = ExportMeta::from_metadata(None, p).unwrap_err().to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("lt-cli export"),
            "{e}"
        );
        let old = ExportMeta {
            format_version: 99,
            ..meta
        };
        let e = ExportMeta::from_metadata(Some(&old.to_metadata()), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("99"), "{e}");
    }
}
