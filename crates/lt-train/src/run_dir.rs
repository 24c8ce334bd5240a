//! Layout of a run directory and its per-epoch metrics log.
//!
//! ```text
//! <run_dir>/
//!   config.toml                  resolved config of the last command
//!   data.json                    per-class counts and sha256 of every split
//!   metrics.jsonl                one JSON object per evaluated epoch and stage
//!   checkpoints/stage1_last.safetensors (+ .json)   every epoch
//!   checkpoints/stage1_best.safetensors (+ .json)   best validation epoch
//!   checkpoints/crt_last.safetensors, crt_best..., lws_last..., lws_best...
//!   results.json                 `eval` output (all heads)
//!   tau_sweep.json               `tau-sweep` output
//!   features/<split>.safetensors `features` output
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Paths inside a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run directory rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory tree.
    pub fn create(&self) -> Result<(), TrainError> {
        let ck = self.checkpoints_dir();
        std::fs::create_dir_all(&ck).map_err(|e| TrainError::io(&ck, e))
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `data.json`.
    pub fn data_info(&self) -> PathBuf {
        self.root.join("data.json")
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Last-epoch checkpoint of a stage (`stage1`, `crt`, `lws`).
    pub fn last_checkpoint(&self, stage: &str) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{stage}_last.safetensors"))
    }

    /// Best-validation checkpoint of a stage.
    pub fn best_checkpoint(&self, stage: &str) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{stage}_best.safetensors"))
    }

    /// `results.json`.
    pub fn results(&self) -> PathBuf {
        self.root.join("results.json")
    }

    /// `tau_sweep.json`.
    pub fn tau_sweep(&self) -> PathBuf {
        self.root.join("tau_sweep.json")
    }

    /// `features/<split>.safetensors`.
    pub fn features(&self, split: &str) -> PathBuf {
        self.root
            .join("features")
            .join(format!("{split}.safetensors"))
    }
}

/// Metrics of one split at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Top-1 accuracy (micro).
    pub top1: f64,
    /// Many-shot accuracy (mean of per-class accuracies), if the group is not empty.
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    pub few: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// `stage1`, `crt` or `lws`.
    pub stage: String,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimiser steps so far.
    pub global_step: u64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training top-1 over the epoch (on the sampled, augmented batches).
    pub train_top1: f64,
    /// Images per second over the epoch.
    pub images_per_sec: f64,
    /// Validation metrics, when evaluated this epoch.
    pub val: Option<SplitMetrics>,
    /// Test metrics, when evaluated this epoch.
    pub test: Option<SplitMetrics>,
    /// Whether this epoch is the best so far on validation.
    pub is_best: bool,
}

/// Appends one record to `metrics.jsonl`.
pub fn append_record(path: &Path, record: &EpochRecord) -> Result<(), TrainError> {
    let mut line = serde_json::to_string(record)
        .map_err(|e| TrainError::Invalid(format!("serialising metrics: {e}")))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| TrainError::io(path, e))
}

/// Reads every record of `metrics.jsonl` (an absent file is empty).
pub fn read_records(path: &Path) -> Result<Vec<EpochRecord>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                TrainError::Invalid(format!(
                    "{}:{}: bad metrics line: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Keeps only the records a resumed or restarted run has not redone: those of
/// other stages, and of `stage` up to epoch `keep_through` (0 drops them all).
pub fn truncate_records(path: &Path, stage: &str, keep_through: usize) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<EpochRecord> = read_records(path)?
        .into_iter()
        .filter(|r| r.stage != stage || r.epoch <= keep_through)
        .collect();
    let mut text = String::new();
    for r in &kept {
        text.push_str(
            &serde_json::to_string(r)
                .map_err(|e| TrainError::Invalid(format!("serialising metrics: {e}")))?,
        );
        text.push('\n');
    }
    crate::checkpoint::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stage: &str, epoch: usize) -> EpochRecord {
        EpochRecord {
            stage: stage.into(),
            epoch,
            global_step: epoch as u64 * 10,
            lr: 0.1,
            train_loss: 1.0,
            train_top1: 0.5,
            images_per_sec: 100.0,
            val: None,
            test: None,
            is_best: false,
        }
    }

    #[test]
    fn append_read_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        for r in [
            rec("stage1", 1),
            rec("stage1", 2),
            rec("crt", 1),
            rec("stage1", 3),
        ] {
            append_record(&p, &r).unwrap();
        }
        assert_eq!(read_records(&p).unwrap().len(), 4);
        truncate_records(&p, "stage1", 1).unwrap();
        let left = read_records(&p).unwrap();
        assert_eq!(left, vec![rec("stage1", 1), rec("crt", 1)]);
        std::fs::write(&p, "{not json}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:1"), "{e}");
    }
}
