//! `results.json`: the evaluation of every head of one run.
//!
//! Written by the training crate's evaluation (`lt-cli eval`), read by the
//! report and the sweep through [`Results::read`], which checks the
//! [`schema_version`](Results::schema_version). Version history:
//!
//! * **2**: each head records its classifier weight norms
//!   ([`HeadResult::weight_norms`]), its own settings and its tau sweep
//!   ([`HeadResult::tau_sweep`]); the stage-1 model selection is typed.
//!   Optional, added within version 2 (absent from earlier files, ignored by
//!   earlier readers): the accuracies on shifted test distributions
//!   ([`Results::shifted_test`]).
//! * **1**: the tau-norm sweep at the top level, no weight norms. Read and
//!   converted to version 2 (without weight norms).

use std::path::Path;

use lt_core::stats::GroupRule;
use lt_core::{HeadId, ModelSelect, Split, TauBias, TauSelect};
use lt_metrics::Evaluation;
use lt_samplers::{Strategy, TestShift};
use serde::{Deserialize, Serialize};

use crate::{BestMetric, RunError, SplitMetrics};

/// The version this build writes.
pub const RESULTS_SCHEMA_VERSION: u32 = 2;

/// The versions this build reads.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// One point of a tau sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauPoint {
    /// The tau.
    pub tau: f64,
    /// Metrics on the selection split (val by default).
    pub select: SplitMetrics,
    /// Metrics on the reported split (when it differs from the selection split).
    pub report: Option<SplitMetrics>,
}

/// The tau sweep of a head with a tau (tau-norm, and later heads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauSweep {
    /// Split tau is chosen on.
    pub select_split: Split,
    /// Reported split.
    pub report_split: Split,
    /// What happens to the bias.
    pub bias: TauBias,
    /// How tau is chosen.
    pub selection: TauSelect,
    /// The chosen tau.
    pub chosen: f64,
    /// Every tau of the grid with its metrics.
    pub curve: Vec<TauPoint>,
}

/// The result of one head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    /// Which head.
    pub head: HeadId,
    /// Name in tables (`Joint`, `NCM`, `cRT`, `τ-norm`, `LWS`, ...).
    pub label: String,
    /// Checkpoint the head (and backbone) came from.
    pub checkpoint: String,
    /// Epoch of that checkpoint.
    pub epoch: usize,
    /// Split of `evaluation`.
    pub split: Split,
    /// The full evaluation (per-class accuracies included).
    pub evaluation: Evaluation,
    /// Validation evaluation, when the reported split is another one.
    pub val: Option<Evaluation>,
    /// The head's tau, when it has one (tau-norm: the chosen tau).
    pub tau: Option<f64>,
    /// The head's tau sweep, when it chose its tau on a split.
    #[serde(default)]
    pub tau_sweep: Option<TauSweep>,
    /// The head's own settings, as its config section gave them (version 1
    /// wrote NCM's as `ncm`).
    #[serde(default, alias = "ncm")]
    pub settings: Option<serde_json::Value>,
    /// Euclidean norm of each class's effective classifier weight (the row
    /// of the weight matrix the logits are a dot product with), for heads
    /// that have one; recorded so reports never open checkpoints.
    #[serde(default)]
    pub weight_norms: Option<Vec<f64>>,
}

/// One shifted test set: its class distribution and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftedSet {
    /// Direction and imbalance.
    pub shift: TestShift,
    /// Number of images.
    pub images: usize,
    /// Images per class (by class id).
    pub class_counts: Vec<usize>,
}

/// Top-1 accuracy of one method on every shifted test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftedRow {
    /// The head (`HeadId`), or [`KNOWN_PRIOR_LA`] for the reference.
    pub head: String,
    /// Name in tables.
    pub label: String,
    /// Top-1 accuracy on each set, in the order of [`ShiftedTest::sets`].
    pub top1: Vec<f64>,
}

/// The `head` of the reference row of [`ShiftedTest::reference`].
pub const KNOWN_PRIOR_LA: &str = "la_known_prior";

/// Accuracies on test sets sub-sampled from the balanced reported split to
/// be forward or backward long-tailed (`lt_samplers::shifted`), plus the
/// whole split (uniform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftedTest {
    /// The split the sets are drawn from.
    pub split: Split,
    /// Seed of the draw.
    pub seed: u64,
    /// Images per class available to the sets (n_max).
    pub per_class: usize,
    /// The sets, forward (most imbalanced first), uniform, backward.
    pub sets: Vec<ShiftedSet>,
    /// Every evaluated head, from its predictions on the split.
    pub heads: Vec<ShiftedRow>,
    /// The reference: post-hoc logit adjustment of the joint head with the
    /// known test prior, z − log π_train + log π_test (τ = 1); a class absent
    /// from a set is never predicted. `None` when a class has no training
    /// image.
    #[serde(default)]
    pub reference: Option<ShiftedRow>,
}

impl ShiftedTest {
    /// Every row: the heads, then the reference.
    pub fn rows(&self) -> impl Iterator<Item = &ShiftedRow> {
        self.heads.iter().chain(&self.reference)
    }
}

/// Stage-1 checkpoints behind the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage1Summary {
    /// `best_val` or `last`.
    pub model_select: ModelSelect,
    /// The selected checkpoint.
    pub checkpoint: String,
    /// Its epoch.
    pub epoch: usize,
    /// Last completed epoch.
    pub last_epoch: Option<usize>,
    /// Best validation epoch and value.
    pub best_val: Option<BestMetric>,
    /// Validation metrics of the last epoch, from `metrics.jsonl`, so that
    /// both the last and the best-validation epoch are reported.
    pub last_val: Option<SplitMetrics>,
    /// Test metrics of the last epoch, when stage 1 evaluated test.
    pub last_test: Option<SplitMetrics>,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`RESULTS_SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// Config name.
    pub config_name: String,
    /// SHA-256 of the resolved config.
    pub config_hash: String,
    /// Run seed.
    pub seed: u64,
    /// Backbone.
    pub arch: String,
    /// Stage-1 sampler, in words (e.g. `instance_balanced`).
    pub sampler: String,
    /// Stage-1 sampler, as configured.
    pub sampler_config: Strategy,
    /// Reported split.
    pub split: Split,
    /// Grouping rule, in words.
    pub group_rule: String,
    /// Grouping rule, as configured.
    pub group_rule_config: GroupRule,
    /// Many / medium / few class counts.
    pub group_sizes: [usize; 3],
    /// Training images per class.
    pub train_class_counts: Vec<usize>,
    /// SHA-256 of the training list.
    pub train_split_sha256: String,
    /// Stage-1 checkpoint information.
    pub stage1: Stage1Summary,
    /// One entry per evaluated head.
    pub heads: Vec<HeadResult>,
    /// Heads that were requested but not available (e.g. cRT not trained).
    pub skipped: Vec<String>,
    /// Accuracies on shifted test distributions (`eval.shifted_test`), when
    /// evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifted_test: Option<ShiftedTest>,
    /// Version 1 kept the tau-norm sweep here; [`Results::read`] moves it
    /// into the tau-norm head.
    #[serde(default, skip_serializing)]
    tau_sweep: Option<TauSweep>,
}

impl Results {
    /// Results of the current schema version.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_name: String,
        config_hash: String,
        seed: u64,
        arch: String,
        sampler_config: Strategy,
        split: Split,
        group_rule_config: GroupRule,
        group_sizes: [usize; 3],
        train_class_counts: Vec<usize>,
        train_split_sha256: String,
        stage1: Stage1Summary,
    ) -> Self {
        Results {
            schema_version: RESULTS_SCHEMA_VERSION,
            config_name,
            config_hash,
            seed,
            arch,
            sampler: sampler_config.to_string(),
            sampler_config,
            split,
            group_rule: group_rule_config.to_string(),
            group_rule_config,
            group_sizes,
            train_class_counts,
            train_split_sha256,
            stage1,
            heads: Vec::new(),
            skipped: Vec::new(),
            shifted_test: None,
            tau_sweep: None,
        }
    }

    /// Reads a `results.json` of any readable version (converted to the
    /// current one); an unknown version is an error naming the file.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        let mut r: Results = crate::read_json(path, "results.json")?;
        if !READABLE_VERSIONS.contains(&r.schema_version) {
            return Err(RunError::Version {
                path: path.to_path_buf(),
                what: "results.json",
                found: r.schema_version,
                supported: READABLE_VERSIONS.map(|v| v.to_string()).join(", "),
            });
        }
        if let Some(sweep) = r.tau_sweep.take() {
            if let Some(h) = r.heads.iter_mut().find(|h| h.head == "tau_norm") {
                h.tau_sweep.get_or_insert(sweep);
            }
        }
        r.schema_version = RESULTS_SCHEMA_VERSION;
        Ok(r)
    }

    /// Writes the results atomically.
    pub fn write(&self, path: &Path) -> Result<(), RunError> {
        crate::write_json(path, "results.json", self)
    }

    /// The result of a head, if evaluated.
    pub fn head(&self, head: &str) -> Option<&HeadResult> {
        self.heads.iter().find(|h| h.head == head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_text() -> &'static str {
        include_str!("../tests/fixtures/results_v1.json")
    }

    #[test]
    fn version_1_is_read_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        std::fs::write(&p, v1_text()).unwrap();
        let r = Results::read(&p).unwrap();
        assert_eq!(r.schema_version, RESULTS_SCHEMA_VERSION);
        let tau = r.head("tau_norm").unwrap();
        assert_eq!(tau.tau_sweep.as_ref().unwrap().chosen, tau.tau.unwrap());
        assert!(r.head("ncm").unwrap().settings.is_some());
        // Written back as version 2 and read again unchanged.
        r.write(&p).unwrap();
        assert_eq!(Results::read(&p).unwrap(), r);
    }

    #[test]
    fn an_unknown_version_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        let text = v1_text().replacen("\"schema_version\":1", "\"schema_version\":9", 1);
        std::fs::write(&p, text).unwrap();
        let e = Results::read(&p).unwrap_err().to_string();
        assert!(e.contains("results.json") && e.contains("version 9"), "{e}");
        std::fs::write(&p, "{\"heads\": 3}").unwrap();
        let e = Results::read(&p).unwrap_err();
        assert!(e.to_string().contains("results.json"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    /// The shifted-test accuracies are optional: absent from older files and
    /// not written when not evaluated; written and read back when present.
    #[test]
    fn shifted_test_is_optional_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        std::fs::write(&p, v1_text()).unwrap();
        let mut r = Results::read(&p).unwrap();
        assert_eq!(r.shifted_test, None);
        r.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("shifted_test"));

        let imbalance = lt_samplers::Imbalance::new(10.0).unwrap();
        let sets = vec![
            ShiftedSet {
                shift: TestShift::Forward { imbalance },
                images: 11,
                class_counts: vec![10, 1],
            },
            ShiftedSet {
                shift: TestShift::Uniform,
                images: 20,
                class_counts: vec![10, 10],
            },
        ];
        r.shifted_test = Some(ShiftedTest {
            split: Split::Test,
            seed: 3,
            per_class: 10,
            sets,
            heads: vec![ShiftedRow {
                head: "joint".into(),
                label: "Joint".into(),
                top1: vec![0.9, 0.6],
            }],
            reference: Some(ShiftedRow {
                head: KNOWN_PRIOR_LA.into(),
                label: "LA (known test prior)".into(),
                top1: vec![0.95, 0.65],
            }),
        });
        r.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"schema_version\": 2"), "{text}");
        assert!(text.contains("\"direction\": \"forward\""), "{text}");
        let back = Results::read(&p).unwrap();
        assert_eq!(back, r);
        let rows: Vec<&str> = back
            .shifted_test
            .as_ref()
            .unwrap()
            .rows()
            .map(|x| x.head.as_str())
            .collect();
        assert_eq!(rows, ["joint", KNOWN_PRIOR_LA]);
    }
}
