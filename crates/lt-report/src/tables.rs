//! The report's tables: per-run rows (CSV / JSON) and the seed summary
//! (CSV / markdown in the paper's form).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{groups, heads_of, label_in, slug, Run, Stat, SummaryRow};

/// One head of one run (a line of `runs.csv`). Accuracies are fractions in
/// `[0, 1]`; absent values are empty in CSV and `null` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Dataset key.
    pub dataset: String,
    /// Sampler key.
    pub sampler: String,
    /// Sampler name.
    pub sampler_label: String,
    /// Seed.
    pub seed: u64,
    /// Head key.
    pub head: String,
    /// Head name.
    pub head_label: String,
    /// Reported split.
    pub split: String,
    /// Micro top-1 ("All").
    pub top1: f64,
    /// Top-5.
    pub top5: Option<f64>,
    /// Mean per-class accuracy.
    pub macro_acc: Option<f64>,
    /// Many-shot accuracy.
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    pub few: Option<f64>,
    /// Expected calibration error.
    pub ece: Option<f64>,
    /// Chosen tau (tau-norm).
    pub tau: Option<f64>,
    /// The run directory, relative to the results directory.
    pub run_dir: String,
}

impl RunRow {
    /// The rows of every head of every run; run directories are written
    /// relative to `root`.
    pub fn from_runs(runs: &[Run], root: &Path) -> Vec<RunRow> {
        let mut rows = Vec::new();
        for r in runs {
            let rel = r.dir.strip_prefix(root).unwrap_or(&r.dir);
            let rel = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                rel.display().to_string()
            };
            for h in &r.results.heads {
                let e = &h.evaluation;
                rows.push(RunRow {
                    dataset: r.dataset.clone(),
                    sampler: r.sampler.clone(),
                    sampler_label: r.sampler_label.clone(),
                    seed: r.seed,
                    head: h.head.to_string(),
                    head_label: h.label.clone(),
                    split: r.split().to_string(),
                    top1: e.top1,
                    top5: Some(e.top5),
                    macro_acc: Some(e.macro_acc),
                    many: e.many,
                    medium: e.medium,
                    few: e.few,
                    ece: Some(e.ece),
                    tau: h.tau,
                    run_dir: rel.clone(),
                });
            }
        }
        rows
    }
}

/// A CSV field, quoted when it holds a separator, quote or line break
/// (RFC 4180). Hand-written: the report's CSV is a handful of plain columns
/// and no CSV crate is among the project's dependencies.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(crate) fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => String::new(),
    }
}

pub(crate) fn csv_line(out: &mut String, cells: &[String]) {
    let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
    out.push_str(&line.join(","));
    out.push('\n');
}

/// `runs.csv`: a header and one line per [`RunRow`].
pub fn runs_csv(rows: &[RunRow]) -> String {
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
            "split",
            "top1",
            "top5",
            "macro_acc",
            "many",
            "medium",
            "few",
            "ece",
            "tau",
            "run_dir",
        ]
        .map(String::from),
    );
    for r in rows {
        csv_line(
            &mut out,
            &[
                r.dataset.clone(),
                r.sampler.clone(),
                r.sampler_label.clone(),
                r.seed.to_string(),
                r.head.clone(),
                r.head_label.clone(),
                r.split.clone(),
                num(Some(r.top1)),
                num(r.top5),
                num(r.macro_acc),
                num(r.many),
                num(r.medium),
                num(r.few),
                num(r.ece),
                num(r.tau),
                r.run_dir.clone(),
            ],
        );
    }
    out
}

/// `summary.csv`: mean and std (fractions) of each metric per dataset,
/// sampler and head; seeds separated by spaces.
pub fn summary_csv(rows: &[SummaryRow]) -> String {
    let mut out = String::new();
    let mut header: Vec<String> = [
        "dataset",
        "sampler",
        "sampler_label",
        "head",
        "head_label",
        "split",
        "seeds",
    ]
    .map(String::from)
    .to_vec();
    for m in ["many", "medium", "few", "all", "tau"] {
        header.push(format!("{m}_mean"));
        header.push(format!("{m}_std"));
    }
    csv_line(&mut out, &header);
    for r in rows {
        let mut cells = vec![
            r.dataset.clone(),
            r.sampler.clone(),
            r.sampler_label.clone(),
            r.head.clone(),
            r.head_label.clone(),
            r.split.clone(),
            r.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ];
        for s in [r.many, r.medium, r.few, r.all, r.tau] {
            cells.push(num(s.map(|s| s.mean)));
            cells.push(num(s.map(|s| s.std)));
        }
        csv_line(&mut out, &cells);
    }
    out
}

/// Percent with one decimal, `± std` when there are several seeds, `–` when
/// absent.
pub(crate) fn pct(s: Option<Stat>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n < 2 => format!("{:.1}", 100.0 * s.mean),
        Some(s) => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `summary.md`: per dataset, the Many / Medium / Few / All table of every
/// sampler and head (mean ± std over seeds), the sampler x head matrix of
/// All, the accuracies on shifted test distributions (when evaluated), the
/// chosen tau, and links to the plots (`plots` are paths under `out_dir`).
pub fn summary_markdown(
    runs: &[Run],
    rows: &[SummaryRow],
    plots: &[PathBuf],
    out_dir: &Path,
    results_dir: &Path,
) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(md, "# Results of `{}`\n", results_dir.display());
    let _ = writeln!(
        md,
        "Top-1 accuracy in percent on the reported split: mean ± sample standard deviation \
         over seeds (one seed: no ±). Many / Medium / Few: mean per-class accuracy of the \
         classes grouped by training count; All: micro top-1. {} runs.\n",
        runs.len()
    );
    // `load_runs` sorts by dataset first, so each dataset is one slice.
    for ds_runs in runs.chunk_by(|a, b| a.dataset == b.dataset) {
        let dataset = ds_runs[0].dataset.as_str();
        let ds_rows: Vec<&SummaryRow> = rows.iter().filter(|r| r.dataset == dataset).collect();
        let _ = writeln!(md, "## {dataset}\n");
        let mut splits: Vec<&str> = ds_runs.iter().map(|r| r.split()).collect();
        splits.sort();
        splits.dedup();
        let rule = ds_runs
            .iter()
            .map(|r| r.results.group_rule.as_str())
            .next()
            .unwrap_or("by training count");
        let _ = writeln!(md, "Split: {}. Groups: {rule}.\n", splits.join(", "));
        md.push_str("| Stage 1 | Method | Many | Medium | Few | All | Seeds |\n");
        md.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for r in &ds_rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&r.sampler_label),
                cell(&r.head_label),
                pct(r.many),
                pct(r.medium),
                pct(r.few),
                pct(r.all),
                r.seeds.len()
            );
        }

        // The sampler x head matrix of All (the paper's sampling study).
        let heads = heads_of(ds_runs);
        let samplers = groups(ds_runs);
        let _ = writeln!(
            md,
            "\nAll, stage 1 (sampler, or sampler and loss) × classifier:\n"
        );
        md.push_str("| Stage 1 |");
        for h in &heads {
            let _ = write!(md, " {} |", cell(&label_in(ds_runs, h)));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(heads.len()));
        md.push('\n');
        for g in &samplers {
            let _ = write!(md, "| {} |", cell(&g[0].sampler_label));
            for h in &heads {
                let stat = ds_rows
                    .iter()
                    .find(|r| r.sampler == g[0].sampler && &r.head == h)
                    .and_then(|r| r.all);
                let _ = write!(md, " {} |", pct(stat));
            }
            md.push('\n');
        }

        for g in &samplers {
            if let Some(stats) = crate::shifted::shifted_stats(g) {
                let _ = writeln!(
                    md,
                    "\nShifted test distributions, {} (top-1 on sub-samples of the test split, \
                     forward / backward long-tailed at each imbalance; {} runs):\n",
                    g[0].sampler_label, stats.runs
                );
                md.push_str(&crate::shifted::shifted_stats_markdown(&stats));
            }
        }

        let taus: Vec<String> = ds_rows
            .iter()
            .filter_map(|r| {
                r.tau.map(|t| {
                    if t.n < 2 {
                        format!("{} {:.2}", r.sampler_label, t.mean)
                    } else {
                        format!("{} {:.2} ± {:.2}", r.sampler_label, t.mean, t.std)
                    }
                })
            })
            .collect();
        if !taus.is_empty() {
            let _ = writeln!(md, "\nChosen τ of τ-norm: {}.", taus.join("; "));
        }

        let dir = slug(dataset);
        let mine: Vec<&PathBuf> = plots
            .iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "png")
                    && p.parent()
                        .and_then(|d| d.file_name())
                        .is_some_and(|d| d.to_string_lossy() == dir)
            })
            .collect();
        if !mine.is_empty() {
            md.push_str("\nPlots (PNG, with SVG alongside):\n\n");
            for p in mine {
                let rel = p.strip_prefix(out_dir).unwrap_or(p);
                let name = p
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                let _ = writeln!(md, "- [{name}]({})", rel.display());
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(num(None), "");
        assert_eq!(num(Some(f64::NAN)), "");
        assert_eq!(num(Some(0.25)), "0.25");
    }

    #[test]
    fn percent_cells() {
        assert_eq!(pct(None), "–");
        let one = Stat {
            mean: 0.4567,
            std: 0.0,
            n: 1,
        };
        assert_eq!(pct(Some(one)), "45.7");
        let two = Stat {
            mean: 0.42,
            std: 0.0283,
            n: 2,
        };
        assert_eq!(pct(Some(two)), "42.0 ± 2.8");
    }
}
