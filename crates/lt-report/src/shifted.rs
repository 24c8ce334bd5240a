//! Accuracy on shifted test distributions (forward / backward long-tailed
//! sub-samples of the balanced test split, and uniform): the one-run table
//! [`shifted_table`], the CSV of every run [`shifted_csv`], and the seed
//! statistics behind `summary.md` and the `shifted_<sampler>` plot.

use std::fmt::Write;
use std::path::Path;

use lt_run::ShiftedTest;
use lt_samplers::TestShift;

use super::{heads_of, label_in, Run, Stat};
use crate::tables::{csv_line, num};

/// Percent with one decimal, or `–`.
fn percent(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}", 100.0 * v),
        _ => "–".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The markdown header of a shifted-test table: `| Method | forward-50 |
/// ... | uniform | ... | backward-50 |`.
fn header(shifts: &[TestShift]) -> String {
    let mut md = String::from("| Method |");
    for s in shifts {
        let _ = write!(md, " {} |", s.name());
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(shifts.len()));
    md.push('\n');
    md
}

/// One run's shifted-test accuracies as a markdown table in percent: rows =
/// the evaluated heads, then the known-prior logit-adjustment reference;
/// columns = the sets, forward (most imbalanced first), uniform, backward.
///
/// ```
/// use lt_core::Split;
/// use lt_run::{ShiftedRow, ShiftedSet, ShiftedTest};
/// use lt_samplers::{Imbalance, TestShift};
///
/// let imbalance = Imbalance::new(50.0).unwrap();
/// let set = |shift, images| ShiftedSet { shift, images, class_counts: vec![] };
/// let test = ShiftedTest {
///     split: Split::Test,
///     seed: 0,
///     per_class: 100,
///     sets: vec![
///         set(TestShift::Forward { imbalance }, 2000),
///         set(TestShift::Uniform, 10000),
///         set(TestShift::Backward { imbalance }, 2000),
///     ],
///     heads: vec![ShiftedRow { head: "joint".into(), label: "Joint".into(), top1: vec![0.6, 0.4, 0.2] }],
///     reference: None,
/// };
/// let md = lt_report::shifted_table(&test);
/// assert!(md.starts_with("| Method | forward-50 | uniform | backward-50 |"));
/// assert!(md.contains("| Joint | 60.0 | 40.0 | 20.0 |"));
/// ```
pub fn shifted_table(test: &ShiftedTest) -> String {
    let shifts: Vec<TestShift> = test.sets.iter().map(|s| s.shift).collect();
    let mut md = header(&shifts);
    for row in test.rows() {
        let _ = write!(md, "| {} |", cell(&row.label));
        for i in 0..shifts.len() {
            let _ = write!(md, " {} |", percent(row.top1.get(i).copied()));
        }
        md.push('\n');
    }
    md
}

/// `shifted.csv`: one line per run, method and shifted set (long format),
/// top-1 as a fraction; run directories relative to `root`.
pub fn shifted_csv(runs: &[Run], root: &Path) -> String {
    let mut out = String::new();
    csv_line(
        &mut out,
        &[
            "dataset",
            "sampler",
            "sampler_label",
            "seed",
            "head",
            "head_label",
            "set",
            "direction",
            "imbalance",
            "images",
            "top1",
            "run_dir",
        ]
        .map(String::from),
    );
    for r in runs {
        let Some(test) = &r.results.shifted_test else {
            continue;
        };
        let rel = r.dir.strip_prefix(root).unwrap_or(&r.dir);
        let rel = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.display().to_string()
        };
        for row in test.rows() {
            for (set, top1) in test.sets.iter().zip(&row.top1) {
                let direction = match set.shift {
                    TestShift::Forward { .. } => "forward",
                    TestShift::Uniform => "uniform",
                    TestShift::Backward { .. } => "backward",
                };
                csv_line(
                    &mut out,
                    &[
                        r.dataset.clone(),
                        r.sampler.clone(),
                        r.sampler_label.clone(),
                        r.seed.to_string(),
                        row.head.clone(),
                        row.label.clone(),
                        set.shift.name(),
                        direction.into(),
                        num(Some(set.shift.imbalance())),
                        set.images.to_string(),
                        num(Some(*top1)),
                        rel.clone(),
                    ],
                );
            }
        }
    }
    out
}

/// The shifted-test accuracies of a group of runs (one dataset and sampler)
/// over seeds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShiftedStats {
    /// The sets (those of the first run that has any).
    pub shifts: Vec<TestShift>,
    /// Per method: key, name, whether it is the reference, and the top-1
    /// statistic on each set.
    pub rows: Vec<ShiftedStatRow>,
    /// Runs that contributed.
    pub runs: usize,
}

/// One method's row of [`ShiftedStats`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShiftedStatRow {
    pub head: String,
    pub label: String,
    pub reference: bool,
    pub top1: Vec<Option<Stat>>,
}

/// Mean ± std over the runs of `g` that carry shifted-test results; `None`
/// when none does. A run's value for a set is matched by the set's shift.
pub(crate) fn shifted_stats(g: &[Run]) -> Option<ShiftedStats> {
    let tests: Vec<&ShiftedTest> = g
        .iter()
        .filter_map(|r| r.results.shifted_test.as_ref())
        .collect();
    let shifts: Vec<TestShift> = tests.first()?.sets.iter().map(|s| s.shift).collect();
    let value = |t: &ShiftedTest, head: &str, reference: bool, shift: TestShift| {
        let i = t.sets.iter().position(|s| s.shift == shift)?;
        let row = if reference {
            t.reference.as_ref()
        } else {
            t.heads.iter().find(|h| h.head == head)
        };
        row.and_then(|r| r.top1.get(i).copied())
    };
    let mut keys: Vec<(String, String, bool)> = heads_of(g)
        .into_iter()
        .filter(|h| tests.iter().any(|t| t.heads.iter().any(|r| &r.head == h)))
        .map(|h| {
            let label = label_in(g, &h);
            (h, label, false)
        })
        .collect();
    if let Some(r) = tests.iter().find_map(|t| t.reference.as_ref()) {
        keys.push((r.head.clone(), r.label.clone(), true));
    }
    let rows = keys
        .into_iter()
        .map(|(head, label, reference)| {
            let top1 = shifts
                .iter()
                .map(|&s| Stat::of(tests.iter().filter_map(|t| value(t, &head, reference, s))))
                .collect();
            ShiftedStatRow {
                head,
                label,
                reference,
                top1,
            }
        })
        .collect();
    Some(ShiftedStats {
        shifts,
        rows,
        runs: tests.len(),
    })
}

/// The markdown table of [`ShiftedStats`] (percent, mean ± std over seeds).
pub(crate) fn shifted_stats_markdown(stats: &ShiftedStats) -> String {
    let mut md = header(&stats.shifts);
    for row in &stats.rows {
        let _ = write!(md, "| {} |", cell(&row.label));
        for s in &row.top1 {
            let _ = write!(md, " {} |", crate::tables::pct(*s));
        }
        md.push('\n');
    }
    md
}
