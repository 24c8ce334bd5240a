//! What a report reads: the results of each run and the grid cell it belongs
//! to, and how runs are found in a results directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::ReportError;

/// File name of a run's results, written by `lt-cli eval`.
pub const RESULTS_FILE: &str = "results.json";

/// File name of the grid-cell description `cargo xtask sweep` writes into each
/// run directory.
pub const CELL_FILE: &str = "cell.json";

/// Directories never searched for runs: report output and bulky run contents.
const SKIP_DIRS: [&str; 4] = ["report", "checkpoints", "features", "logs"];

/// Where a run sits in a sweep grid (`cell.json`). Runs without one are
/// grouped by their results: dataset = config name, sampler = stage-1 sampler.
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

/// A run's `results.json`, reduced to what the report needs.
///
/// It mirrors the schema `lt-cli eval` writes (`schema_version` 1); every other
/// field is ignored, and every field here but `heads` may be absent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResultsFile {
    /// Version of the results schema.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Name of the run's config.
    #[serde(default)]
    pub config_name: Option<String>,
    /// Seed of the run.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stage-1 sampler in words (e.g. `square_root`).
    #[serde(default)]
    pub sampler: Option<String>,
    /// Stage-1 sampler as configured (`{ "kind": "square_root" }`).
    #[serde(default)]
    pub sampler_config: Option<serde_json::Value>,
    /// The split `heads[].evaluation` was measured on (`test` or `val`).
    #[serde(default)]
    pub split: Option<String>,
    /// The many / medium / few rule, in words.
    #[serde(default)]
    pub group_rule: Option<String>,
    /// Training images per class.
    #[serde(default)]
    pub train_class_counts: Option<Vec<usize>>,
    /// One entry per evaluated head.
    pub heads: Vec<HeadEntry>,
    /// The tau sweep of the tau-normalised head, when it was evaluated.
    #[serde(default)]
    pub tau_sweep: Option<TauSweepEntry>,
}

/// One head of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HeadEntry {
    /// `joint`, `ncm`, `crt`, `tau_norm` or `lws` (others are reported as
    /// they are named).
    pub head: String,
    /// Name in tables (default: the paper's name of `head`).
    #[serde(default)]
    pub label: Option<String>,
    /// Checkpoint the head came from (read for the classifier weight norms).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Metrics on the reported split.
    pub evaluation: HeadMetrics,
    /// The chosen tau (tau-norm only).
    #[serde(default)]
    pub tau: Option<f64>,
    /// Norm of each class's classifier weight, when the results carry it
    /// (otherwise it is read from `checkpoint`).
    #[serde(default)]
    pub weight_norms: Option<Vec<f64>>,
}

/// The fields of an [`crate::Evaluation`] a report uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HeadMetrics {
    /// Micro top-1 ("All").
    pub top1: f64,
    /// Top-5.
    #[serde(default)]
    pub top5: Option<f64>,
    /// Mean per-class accuracy.
    #[serde(default)]
    pub macro_acc: Option<f64>,
    /// Many-shot accuracy.
    #[serde(default)]
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    #[serde(default)]
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    #[serde(default)]
    pub few: Option<f64>,
    /// Per-class accuracy; `null` (a class without test samples) reads as NaN.
    #[serde(default, deserialize_with = "null_as_nan")]
    pub per_class: Vec<f64>,
    /// Expected calibration error.
    #[serde(default)]
    pub ece: Option<f64>,
}

/// The tau sweep of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TauSweepEntry {
    /// The chosen tau.
    #[serde(default)]
    pub chosen: Option<f64>,
    /// Split tau was chosen on.
    #[serde(default)]
    pub select_split: Option<String>,
    /// Reported split.
    #[serde(default)]
    pub report_split: Option<String>,
    /// One point per tau of the grid.
    pub curve: Vec<TauPointEntry>,
}

/// One tau of the sweep.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TauPointEntry {
    /// The tau.
    pub tau: f64,
    /// Metrics on the selection split.
    pub select: GroupMetrics,
    /// Metrics on the reported split, when it differs from the selection split.
    #[serde(default)]
    pub report: Option<GroupMetrics>,
}

/// Top-1 and group accuracies of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct GroupMetrics {
    /// Micro top-1.
    pub top1: f64,
    /// Many-shot accuracy.
    #[serde(default)]
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    #[serde(default)]
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    #[serde(default)]
    pub few: Option<f64>,
}

fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// Reads and parses a JSON file; errors name the file (and the line).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(|error| ReportError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReportError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every directory under `root` (itself included) holding a
/// [`RESULTS_FILE`], in sorted order. Report output, checkpoint, feature,
/// log and hidden directories are not searched.
pub fn find_runs(root: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReportError::NoRuns(root.to_path_buf()))
        }
        Err(error) => {
            return Err(ReportError::Io {
                path: root.to_path_buf(),
                error,
            })
        }
    };
    if !meta.is_dir() {
        return Err(ReportError::Io {
            path: root.to_path_buf(),
            error: std::io::Error::other("not a directory"),
        });
    }
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join(RESULTS_FILE).is_file() {
            found.push(dir.clone());
        }
        let entries = std::fs::read_dir(&dir).map_err(|error| ReportError::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| ReportError::Io {
                path: dir.clone(),
                error,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || SKIP_DIRS.contains(&name.as_ref()) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_tolerate_extra_fields_and_null_accuracies() {
        let text = r#"{
            "schema_version": 1, "config_name": "c", "seed": 3, "extra": [1, 2],
            "heads": [{
                "head": "joint", "label": "Joint", "epoch": 5,
                "evaluation": {"top1": 0.5, "many": 0.7, "medium": null, "few": 0.1,
                               "per_class": [1.0, null, 0.0], "confusion": {"x": 1}}
            }],
            "tau_sweep": {"chosen": 1.0, "curve": [{"tau": 0.0, "select": {"top1": 0.4, "loss": 1.0}}]}
        }"#;
        let r: ResultsFile = serde_json::from_str(text).unwrap();
        assert_eq!(r.seed, Some(3));
        let e = &r.heads[0].evaluation;
        assert_eq!((e.top1, e.many, e.medium), (0.5, Some(0.7), None));
        assert!(e.per_class[1].is_nan() && e.per_class[2] == 0.0);
        let tau = r.tau_sweep.unwrap();
        assert_eq!(tau.curve[0].select.top1, 0.4);
        assert!(tau.curve[0].report.is_none());
    }

    #[test]
    fn bad_json_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RESULTS_FILE);
        std::fs::write(&p, "{\n \"heads\": 3\n}").unwrap();
        let e = read_json::<ResultsFile>(&p).unwrap_err().to_string();
        assert!(e.contains("results.json") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn runs_are_found_recursively_and_report_dirs_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a/s1/seed0", "a/s1/seed1", "report/x", "b/checkpoints", "b"] {
            let p = dir.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(RESULTS_FILE), "{}").unwrap();
        }
        let runs = find_runs(dir.path()).unwrap();
        let rel: Vec<_> = runs
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            rel,
            ["a/s1/seed0", "a/s1/seed1", "b"]
                .map(PathBuf::from)
                .to_vec()
        );
        let e = find_runs(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, ReportError::NoRuns(_)), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
