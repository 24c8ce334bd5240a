//! `cell.json`: where a run sits in a sweep grid.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// Where a run sits in a sweep grid (`cell.json`, written by the sweep into
/// each run directory). Runs without one are grouped by their results:
/// dataset = config name, sampler = stage-1 sampler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInfo {
    /// Dataset key of the grid (e.g. `cifar100_lt_r100`).
    pub dataset: String,
    /// Position of the dataset in the grid (table order).
    #[serde(default)]
    pub dataset_order: usize,
    /// Sampler key of the grid (e.g. `ib`).
    pub sampler: String,
    /// Sampler name in tables and plots (e.g. `IB`); default: the key.
    #[serde(default)]
    pub sampler_label: Option<String>,
    /// Position of the sampler in the grid (table order).
    #[serde(default)]
    pub sampler_order: usize,
    /// Seed of the run.
    pub seed: u64,
}

impl CellInfo {
    /// Reads a `cell.json`.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        crate::read_json(path, "cell.json")
    }

    /// Writes a `cell.json` atomically.
    pub fn write(&self, path: &Path) -> Result<(), RunError> {
        crate::write_json(path, "cell.json", self)
    }
}
