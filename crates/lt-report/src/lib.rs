//! lt-report: tables and plots of a results directory: every run's metrics,
//! the paper's Many / Medium / Few / All table with mean ± std over seeds,
//! and the figures of the decoupling study. Metrics themselves are computed
//! by `lt-metrics`; the files read here are defined (typed) by `lt-run`.
//!
//! A *results directory* is any directory holding runs: directories with a
//! [`RESULTS_FILE`] (`results.json`, written by `lt-cli eval`), at any depth.
//! `cargo xtask sweep` adds a [`CELL_FILE`] (`cell.json`) to each run naming
//! its dataset, sampler and seed in the grid; a run without one is grouped by
//! its config name (as dataset) and its stage-1 sampler. [`regenerate`] reads
//! them all (a run whose files cannot be read is left out with a warning) and
//! writes into `<results dir>/report/`:
//!
//! | file | content |
//! |---|---|
//! | `runs.csv`, `runs.json` | one row per run and head: Many / Medium / Few / All, top-5, macro accuracy, ECE, tau |
//! | `summary.csv`, `summary.json` | mean and sample std over seeds per dataset, sampler and head |
//! | `summary.md` | the paper's tables (percent, mean ± std), the shifted-test tables, and links to the plots |
//! | `report.html` | everything on one self-contained page (see below) |
//! | `shifted.csv` | one row per run, method and shifted test set (runs evaluated with `eval.shifted_test`) |
//! | `plots/<dataset>/per_class_<sampler>.{png,svg}` | per-class accuracy against class rank by training count, one line per head |
//! | `plots/<dataset>/reliability_<sampler>.{png,svg}` | reliability diagram of every head: accuracy against confidence per bin, with the diagonal, ECE in each title |
//! | `plots/<dataset>/shifted_<sampler>.{png,svg}` | top-1 on the shifted test sets (forward-ρ … uniform … backward-ρ), one line per head and the known-prior logit-adjustment reference (runs with shifted-test results) |
//! | `plots/<dataset>/tau_<sampler>.{png,svg}` | tau-norm accuracy (many / medium / few / all) against tau |
//! | `plots/<dataset>/weight_norms_<sampler>.{png,svg}` | classifier weight norm per class for joint, cRT, tau-norm and LWS |
//! | `plots/<dataset>/samplers.{png,svg}` | stage-1 sampler x head, one panel per group |
//!
//! Plots average over seeds (per class, per tau, per shifted set; a
//! reliability diagram pools the seeds' samples of each confidence bin and
//! titles each head with its mean ECE). Heads appear in the order
//! the runs list them (the registry's), with the labels their results
//! record; classifier weight norms are those `results.json` records (files
//! of schema version 1 have none: a warning, no plot). Without the `plot`
//! feature only the tables are written.
//!
//! `report.html` ([`HTML_FILE`]) is one page per results directory (a run
//! or a sweep), readable offline: per dataset the class statistics, the
//! Many / Medium / Few / All table and the stage 1 × classifier matrix,
//! every figure above inline as SVG, the τ curve, shifted-test and
//! per-class tables; then every run with its heads and resolved config, the
//! warnings, and the command and version that wrote it ([`Provenance`]).
//! It uses no script, no external stylesheet, font or image, and escapes
//! every string it shows ([`escape`]). It is built from the same runs,
//! summary rows and drawn figures as the other files, so it shows the same
//! numbers.
//!
//! ```
//! use lt_core::stats::{ClassStats, GroupRule};
//! use lt_core::{HeadId, ModelSelect, Split};
//! use lt_report::regenerate;
//! use lt_run::{HeadResult, Results, RunDir, Stage1Summary};
//! use lt_samplers::Strategy;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One run with one head: what `lt-cli eval` writes.
//! let train = ClassStats::from_counts(vec![500, 50, 5]);
//! let rule = GroupRule::default();
//! let logits = [2f32, 0., 0., 0., 2., 0., 0., 2., 0.];
//! let evaluation = lt_metrics::evaluate(&logits, 3, &[0, 1, 2], &train, &rule)?;
//! let stage1 = Stage1Summary {
//!     model_select: ModelSelect::Last, checkpoint: "ck".into(), epoch: 1,
//!     last_epoch: Some(1), best_val: None, last_val: None, last_test: None,
//! };
//! let mut results = Results::new(
//!     "cifar".into(), "hash".into(), 0, "resnet32".into(), Strategy::InstanceBalanced,
//!     Split::Test, rule.clone(), train.group_sizes(&rule), train.counts().to_vec(),
//!     "sha".into(), stage1,
//! );
//! results.heads.push(HeadResult {
//!     head: HeadId::new_static("joint"), label: "Joint".into(), checkpoint: "ck".into(),
//!     epoch: 1, split: Split::Test, evaluation, val: None, tau: None, tau_sweep: None,
//!     settings: None, weight_norms: Some(vec![1.0, 0.8, 0.5]),
//! });
//! let dir = tempfile::tempdir()?;
//! let run = RunDir::new(dir.path().join("cifar/ib/seed0"));
//! results.write(&run.results())?;
//!
//! let summary = regenerate(dir.path())?;
//! assert_eq!(summary.runs, 1);
//! let table = std::fs::read_to_string(dir.path().join("report/summary.md"))?;
//! assert!(table.contains("| IB | Joint | 100.0 | 100.0 | 0.0 | 66.7 | 1 |"), "{table}");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod html;
mod input;
mod series;
mod shifted;
mod table;
mod tables;

#[cfg(feature = "plot")]
pub mod class_counts;
#[cfg(feature = "plot")]
mod figures;
#[cfg(feature = "plot")]
pub mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use html::{escape, Provenance, HTML_FILE};
pub use input::find_runs;
pub use lt_run::layout::{CELL_FILE, RESULTS_FILE};
pub use shifted::{shifted_csv, shifted_table};
pub use table::{markdown_table, mean_std};
pub use tables::{runs_csv, summary_csv, summary_markdown, RunRow};

use lt_run::{CellInfo, HeadResult, Results};

/// Directory, inside the results directory, the report is written to.
pub const REPORT_DIR: &str = "report";

/// What can go wrong while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
    /// A report file could not be serialised.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A run's results or cell file cannot be read.
    #[error(transparent)]
    Run(#[from] lt_run::RunError),
    /// The directory holds no readable run.
    #[error("no readable {RESULTS_FILE} under {} (run `lt-cli eval` or `cargo xtask sweep` first)", .0.display())]
    NoRuns(PathBuf),
    /// A plot could not be drawn or encoded.
    #[error("plot: {0}")]
    Plot(String),
}

impl ReportError {
    /// Names the output file in a plot error.
    #[cfg(feature = "plot")]
    pub(crate) fn with_path(self, path: &Path) -> Self {
        match self {
            ReportError::Plot(m) => ReportError::Plot(format!("{}: {m}", path.display())),
            other => other,
        }
    }
}

/// Writes a file atomically (temp file, then rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    lt_core::fs::write_atomic(path, bytes).map_err(|e| ReportError::Io {
        path: path.to_path_buf(),
        error: e.source,
    })
}

/// A file-name-safe form of a dataset or sampler key: ASCII letters,
/// digits, `-`, `_` and `.` are kept, anything else becomes `_`.
pub fn slug(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".into()
    } else {
        s
    }
}

/// One run, with its place in the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// Dataset key.
    pub dataset: String,
    /// Table position of the dataset.
    pub dataset_order: usize,
    /// Sampler key.
    pub sampler: String,
    /// Sampler name in tables and plots.
    pub sampler_label: String,
    /// Table position of the sampler.
    pub sampler_order: usize,
    /// Seed.
    pub seed: u64,
    /// The parsed `results.json`.
    pub results: Results,
    /// Classifier weight norm per class, by head (those that record one).
    pub weight_norms: BTreeMap<String, Vec<f64>>,
    /// What could not be read (missing checkpoints), in words.
    pub warnings: Vec<String>,
}

impl Run {
    /// Training images per class, when the results carry them.
    pub fn train_counts(&self) -> Option<&[usize]> {
        Some(self.results.train_class_counts.as_slice())
    }

    /// The reported split (`test`, `val`, or `?` when unknown).
    pub fn split(&self) -> &str {
        self.results.split.as_str()
    }
}

/// The sampler key, label and table position of a run without a grid cell.
fn sampler_of(r: &Results) -> (String, String, usize) {
    let s = &r.sampler_config;
    (
        r.sampler.clone(),
        s.abbreviation().to_string(),
        s.table_order(),
    )
}

/// Reads one run directory: `results.json`, `cell.json` if present, and the
/// classifier weight norms.
pub fn load_run(dir: &Path) -> Result<Run, ReportError> {
    let results = Results::read(&dir.join(RESULTS_FILE))?;
    let cell_path = dir.join(CELL_FILE);
    let cell = if cell_path.is_file() {
        Some(CellInfo::read(&cell_path)?)
    } else {
        None
    };
    let (dataset, dataset_order, sampler, sampler_label, sampler_order, seed) = match cell {
        Some(c) => (
            c.dataset,
            c.dataset_order,
            c.sampler.clone(),
            c.sampler_label.unwrap_or(c.sampler),
            c.sampler_order,
            c.seed,
        ),
        None => {
            let (key, label, order) = sampler_of(&results);
            (
                results.config_name.clone(),
                0,
                key,
                label,
                order,
                results.seed,
            )
        }
    };
    let mut weight_norms = BTreeMap::new();
    let mut warnings = Vec::new();
    for h in &results.heads {
        match &h.weight_norms {
            Some(n) => {
                weight_norms.insert(h.head.to_string(), n.clone());
            }
            None if ["joint", "crt", "tau_norm", "lws"].contains(&h.head.as_str()) => {
                warnings.push(format!(
                    "{}: head `{}` records no weight norms (results written before schema \
                     version 2); run `lt-cli eval` again for the weight-norm plot",
                    dir.display(),
                    h.head
                ));
            }
            None => {}
        }
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(Run {
        dir: dir.to_path_buf(),
        dataset,
        dataset_order,
        sampler,
        sampler_label,
        sampler_order,
        seed,
        results,
        weight_norms,
        warnings,
    })
}

/// Every run under `root` (see [`find_runs`]), sorted by dataset, sampler
/// and seed in grid order. Sampler names that two different samplers share
/// within a dataset get their key appended.
pub fn load_runs(root: &Path) -> Result<Vec<Run>, ReportError> {
    let mut runs = Vec::new();
    for dir in find_runs(root)? {
        match load_run(&dir) {
            Ok(r) => runs.push(r),
            Err(e) => {
                // One unreadable run must not hide the others.
                tracing::warn!("{}: left out of the report: {e}", dir.display());
            }
        }
    }
    runs.sort_by(|a, b| {
        (
            a.dataset_order,
            &a.dataset,
            a.sampler_order,
            &a.sampler,
            a.seed,
        )
            .cmp(&(
                b.dataset_order,
                &b.dataset,
                b.sampler_order,
                &b.sampler,
                b.seed,
            ))
    });
    let mut keys_of_label: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in &runs {
        let keys = keys_of_label
            .entry((r.dataset.clone(), r.sampler_label.clone()))
            .or_default();
        if !keys.contains(&r.sampler) {
            keys.push(r.sampler.clone());
        }
    }
    for r in &mut runs {
        if keys_of_label[&(r.dataset.clone(), r.sampler_label.clone())].len() > 1 {
            r.sampler_label = format!("{} [{}]", r.sampler_label, r.sampler);
        }
    }
    Ok(runs)
}

/// Mean, sample standard deviation and count of a metric over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl Stat {
    /// The statistic of the finite values, `None` when there is none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let (mean, std) = mean_std(&v);
        Some(Stat {
            mean,
            std,
            n: v.len(),
        })
    }
}

/// One head of one sampler of one dataset, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// Dataset key.
    pub dataset: String,
    /// Sampler key.
    pub sampler: String,
    /// Sampler name.
    pub sampler_label: String,
    /// Head key.
    pub head: String,
    /// Head name.
    pub head_label: String,
    /// Reported split(s), `/`-separated when runs differ.
    pub split: String,
    /// Seeds of the runs.
    pub seeds: Vec<u64>,
    /// Many-shot accuracy.
    pub many: Option<Stat>,
    /// Medium-shot accuracy.
    pub medium: Option<Stat>,
    /// Few-shot accuracy.
    pub few: Option<Stat>,
    /// Micro top-1 ("All").
    pub all: Option<Stat>,
    /// Chosen tau (tau-norm only).
    pub tau: Option<Stat>,
}

/// Runs with the same dataset and sampler, in order.
pub(crate) fn groups(runs: &[Run]) -> Vec<&[Run]> {
    runs.chunk_by(|a, b| a.dataset == b.dataset && a.sampler == b.sampler)
        .collect()
}

/// Heads present in any of `runs`, in table order.
/// Every head of the runs, in the order the runs list them (evaluation
/// writes the registry's order).
pub(crate) fn heads_of<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Vec<String> {
    let mut heads: Vec<String> = Vec::new();
    for r in runs {
        for h in &r.results.heads {
            if !heads.iter().any(|x| h.head == x.as_str()) {
                heads.push(h.head.to_string());
            }
        }
    }
    heads
}

/// Label of a head in a group of runs: the results' own label if any.
pub(crate) fn label_in(runs: &[Run], head: &str) -> String {
    runs.iter()
        .flat_map(|r| &r.results.heads)
        .find(|h| h.head == head)
        .map(|h| h.label.clone())
        .unwrap_or_else(|| head.to_string())
}

/// Mean ± std over seeds of every dataset, sampler and head (runs as
/// [`load_runs`] orders them).
pub fn summarize(runs: &[Run]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for g in groups(runs) {
        let mut splits: Vec<&str> = g.iter().map(Run::split).collect();
        splits.dedup();
        for head in heads_of(g) {
            let entries: Vec<(&Run, &HeadResult)> = g
                .iter()
                .filter_map(|r| {
                    r.results
                        .heads
                        .iter()
                        .find(|h| h.head == head.as_str())
                        .map(|h| (r, h))
                })
                .collect();
            let metric = |f: fn(&lt_metrics::Evaluation) -> Option<f64>| {
                Stat::of(entries.iter().filter_map(|(_, h)| f(&h.evaluation)))
            };
            rows.push(SummaryRow {
                dataset: g[0].dataset.clone(),
                sampler: g[0].sampler.clone(),
                sampler_label: g[0].sampler_label.clone(),
                head_label: label_in(g, &head),
                split: splits.join("/"),
                seeds: entries.iter().map(|(r, _)| r.seed).collect(),
                many: metric(|e| e.many),
                medium: metric(|e| e.medium),
                few: metric(|e| e.few),
                all: metric(|e| Some(e.top1)),
                tau: Stat::of(entries.iter().filter_map(|(_, h)| h.tau)),
                head,
            });
        }
    }
    rows
}

/// What [`regenerate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// `<results dir>/report`.
    pub out_dir: PathBuf,
    /// Number of runs read.
    pub runs: usize,
    /// The seed statistics behind the tables.
    pub rows: Vec<SummaryRow>,
    /// Table files (CSV, JSON, markdown) and the HTML page ([`HTML_FILE`]).
    pub tables: Vec<PathBuf>,
    /// Plot files (PNG and SVG; empty without the `plot` feature).
    pub plots: Vec<PathBuf>,
    /// What was left out (e.g. weight norms of a missing checkpoint).
    pub warnings: Vec<String>,
}

/// Reads every run under `results_dir` and writes the tables, plots and
/// the HTML page into `<results_dir>/report/` (see the module docs); the
/// page names this process's command line and the workspace version. Fails
/// when there is no run, a results file is malformed, or a file cannot be
/// written.
pub fn regenerate(results_dir: &Path) -> Result<ReportSummary, ReportError> {
    regenerate_with(results_dir, &Provenance::of_this_process())
}

/// [`regenerate`], with the command and version the HTML page names.
pub fn regenerate_with(
    results_dir: &Path,
    provenance: &Provenance,
) -> Result<ReportSummary, ReportError> {
    let runs = load_runs(results_dir)?;
    if runs.is_empty() {
        return Err(ReportError::NoRuns(results_dir.to_path_buf()));
    }
    let out_dir = results_dir.join(REPORT_DIR);
    let rows = summarize(&runs);
    let mut warnings: Vec<String> = runs.iter().flat_map(|r| r.warnings.clone()).collect();

    #[cfg(feature = "plot")]
    let drawn = figures::write_plots(&runs, &out_dir.join("plots"), &mut warnings)?;
    #[cfg(not(feature = "plot"))]
    let drawn: Vec<html::InlinePlot> = {
        warnings.push("no plots: lt-report was built without its `plot` feature".into());
        Vec::new()
    };
    let plots: Vec<PathBuf> = drawn.iter().flat_map(|p| p.files.clone()).collect();

    let run_rows = RunRow::from_runs(&runs, results_dir);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("runs.csv", runs_csv(&run_rows).into_bytes()),
        ("runs.json", to_json(&out_dir.join("runs.json"), &run_rows)?),
        ("summary.csv", summary_csv(&rows).into_bytes()),
        (
            "summary.json",
            to_json(&out_dir.join("summary.json"), &rows)?,
        ),
        (
            "summary.md",
            summary_markdown(&runs, &rows, &plots, &out_dir, results_dir).into_bytes(),
        ),
    ];
    if runs.iter().any(|r| r.results.shifted_test.is_some()) {
        files.push(("shifted.csv", shifted_csv(&runs, results_dir).into_bytes()));
    }
    let page = html::page(&html::PageInput {
        runs: &runs,
        rows: &rows,
        plots: &drawn,
        results_dir,
        out_dir: &out_dir,
        provenance,
        warnings: &warnings,
    });
    files.push((HTML_FILE, page.into_bytes()));
    let mut tables = Vec::new();
    for (name, bytes) in files {
        let path = out_dir.join(name);
        write_file(&path, &bytes)?;
        tables.push(path);
    }
    tracing::info!(
        runs = runs.len(),
        rows = rows.len(),
        plots = plots.len(),
        out = %out_dir.display(),
        "report written"
    );
    Ok(ReportSummary {
        out_dir,
        runs: runs.len(),
        rows,
        tables,
        plots,
        warnings,
    })
}

/// Pretty JSON with a final newline (non-finite numbers become `null`).
fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, ReportError> {
    let mut b = serde_json::to_vec_pretty(value).map_err(|e| ReportError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    b.push(b'\n');
    Ok(b)
}
