//! `data.json`: the identity of every split a run used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// Identity of one split list: where it is, its hash and its class counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// The list file.
    pub list: String,
    /// SHA-256 of the list file.
    pub sha256: String,
    /// Number of images.
    pub total: usize,
    /// Images per class.
    pub counts: Vec<usize>,
}

/// `data.json` of a run: the identity of every split used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Number of classes.
    pub num_classes: usize,
    /// Training split.
    pub train: SplitSummary,
    /// Validation split.
    pub val: Option<SplitSummary>,
    /// Test split.
    pub test: Option<SplitSummary>,
    /// Imbalance ratio of the training split (largest / smallest class).
    pub imbalance_ratio: Option<f64>,
    /// Many / medium / few class counts under the configured rule.
    pub group_sizes: [usize; 3],
    /// The rule, in words.
    pub group_rule: String,
}

impl DataInfo {
    /// Reads a `data.json`.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        crate::read_json(path, "data.json")
    }

    /// Writes a `data.json` atomically.
    pub fn write(&self, path: &Path) -> Result<(), RunError> {
        crate::write_json(path, "data.json", self)
    }
}
