//! The report's figures, built from runs and drawn with [`crate::plot`].

use std::path::{Path, PathBuf};

use super::series::{class_order, mean_of, num_classes, per_class_mean, tau_curve};
use super::{groups, heads_of, label_in, slug, summarize, ReportError, Run};
use crate::html::InlinePlot;
use crate::plot::{save_with_svg, Bars, Figure, LegendPosition, Panel, Series, PALETTE};

/// Above this many classes the per-class curves are smoothed, or a
/// thousand-class plot is a solid band.
const SMOOTH_ABOVE: usize = 200;

/// Writes every figure of `runs` under `plots_dir/<dataset>/` and returns
/// them (files and SVG text, for the HTML page). Figures that lack their
/// data (no tau sweep, no weight norms) are skipped with a warning.
pub(crate) fn write_plots(
    runs: &[Run],
    plots_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<InlinePlot>, ReportError> {
    let mut plots = Vec::new();
    let mut save = |fig: &Figure, stem: PathBuf, dataset: &str, sampler: Option<&str>, name| {
        let (files, svg) = save_with_svg(fig, &stem)?;
        plots.push(InlinePlot {
            dataset: dataset.to_string(),
            sampler: sampler.map(str::to_string),
            name,
            files,
            svg,
        });
        Ok::<_, ReportError>(())
    };
    for ds in runs.chunk_by(|a, b| a.dataset == b.dataset) {
        let dataset = ds[0].dataset.as_str();
        let dir = plots_dir.join(slug(dataset));
        for g in groups(ds) {
            let sampler = Some(g[0].sampler.as_str());
            let tag = slug(&g[0].sampler);
            let what = format!("{} / {}", g[0].dataset, g[0].sampler_label);
            let figures = [
                ("per_class", per_class_figure(g), "per-class accuracies"),
                ("tau", tau_figure(g), "tau sweep"),
                ("weight_norms", norms_figure(g), "classifier weight norms"),
                ("reliability", reliability_figure(g), "calibration bins"),
            ];
            for (name, fig, missing) in figures {
                match fig {
                    Some(fig) => {
                        let stem = dir.join(format!("{name}_{tag}"));
                        save(&fig, stem, dataset, sampler, name)?;
                    }
                    None => warnings.push(format!("{what}: no {missing}; plot `{name}` skipped")),
                }
            }
            // Optional: only runs evaluated with `eval.shifted_test` have it.
            if let Some(fig) = shifted_figure(g) {
                let stem = dir.join(format!("shifted_{tag}"));
                save(&fig, stem, dataset, sampler, "shifted")?;
            }
        }
        save(
            &sampler_figure(ds),
            dir.join("samplers"),
            dataset,
            None,
            "samplers",
        )?;
    }
    Ok(plots)
}

/// Colour of a head: its position among the heads of the figure (the
/// registry's order, so the same in every figure of a sweep).
fn head_color(head: &str, heads: &[String]) -> [u8; 3] {
    let i = heads.iter().position(|h| h == head).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// Centred moving average over `window` values (finite ones only).
fn smooth(values: &[f64], window: usize) -> Vec<f64> {
    if window <= 1 {
        return values.to_vec();
    }
    let half = window / 2;
    (0..values.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(values.len());
            let win: Vec<f64> = values[lo..hi]
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect();
            if win.is_empty() {
                f64::NAN
            } else {
                win.iter().sum::<f64>() / win.len() as f64
            }
        })
        .collect()
}

/// Per-class values in class order, as plot points `(rank, scale * value)`.
fn ranked(values: &[f64], order: &[usize], window: usize, scale: f64) -> Vec<(f64, f64)> {
    let sorted: Vec<f64> = order.iter().map(|&j| values[j]).collect();
    smooth(&sorted, window)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as f64, scale * v))
        .collect()
}

fn seeds_note(n: usize) -> String {
    if n == 1 {
        "1 seed".into()
    } else {
        format!("mean of {n} seeds")
    }
}

/// The class axis of per-class figures: order, window and x description.
fn class_axis(g: &[Run], classes: usize) -> (Vec<usize>, usize, String) {
    let window = if classes > SMOOTH_ABOVE {
        (classes / 100) | 1
    } else {
        1
    };
    let (order, mut x) = match class_order(g, classes) {
        Some(o) => (o, "class rank by training images (0 = most)".to_string()),
        None => ((0..classes).collect(), "class index".to_string()),
    };
    if window > 1 {
        x.push_str(&format!(", moving average of {window} classes"));
    }
    (order, window, x)
}

/// (1) Per-class accuracy against class rank, one line per head.
fn per_class_figure(g: &[Run]) -> Option<Figure> {
    let heads = heads_of(g);
    let classes = Some(num_classes(g)).filter(|&c| c > 0)?;
    let (order, window, x_label) = class_axis(g, classes);
    let mut panel = Panel::new(
        format!(
            "{}, {}: per-class accuracy ({}, {})",
            g[0].dataset,
            g[0].sampler_label,
            g[0].split(),
            seeds_note(g.len())
        ),
        x_label,
        "accuracy (%)",
    );
    panel.y_range = Some((-2.0, 102.0));
    for head in &heads {
        let Some(mean) = per_class_mean(g, head, classes) else {
            continue;
        };
        panel.series.push(Series::new(
            label_in(g, head),
            head_color(head, &heads),
            ranked(&mean, &order, window, 100.0),
        ));
    }
    (!panel.series.is_empty()).then(|| Figure::single(panel))
}

/// (2) Tau-norm accuracy of many / medium / few / all against tau.
fn tau_figure(g: &[Run]) -> Option<Figure> {
    let curve = tau_curve(g)?;
    let metrics: [(&str, [u8; 3]); 4] = [
        ("Many", PALETTE[0]),
        ("Medium", PALETTE[1]),
        ("Few", PALETTE[2]),
        ("All", [0, 0, 0]),
    ];
    let mut panel = Panel::new(
        format!(
            "{}, {}: τ-norm accuracy against τ ({}, {})",
            g[0].dataset,
            g[0].sampler_label,
            curve.split,
            seeds_note(curve.runs)
        ),
        "τ",
        "accuracy (%)",
    );
    panel.legend = LegendPosition::LowerRight;
    for (k, (name, color)) in metrics.into_iter().enumerate() {
        let points = curve
            .points
            .iter()
            .map(|(tau, v)| (*tau, 100.0 * v[k]))
            .collect();
        let mut s = Series::new(name, color, points);
        s.markers = true;
        panel.series.push(s);
    }
    if let Some((t, how)) = &curve.chosen {
        panel.marker = Some((t.mean, format!(" τ = {:.2} ({how})", t.mean)));
    }
    Some(Figure::single(panel))
}

/// (3) Classifier weight norm per class for joint, cRT, tau-norm and LWS.
fn norms_figure(g: &[Run]) -> Option<Figure> {
    let heads = heads_of(g);
    let classes = g
        .iter()
        .flat_map(|r| r.weight_norms.values())
        .map(Vec::len)
        .find(|&c| c > 0)?;
    let (order, window, x_label) = class_axis(g, classes);
    let mut panel = Panel::new(
        format!(
            "{}, {}: classifier weight norm per class ({})",
            g[0].dataset,
            g[0].sampler_label,
            seeds_note(g.len())
        ),
        x_label,
        "L2 norm of the class weight",
    );
    // Every head that records weight norms (those with a weight matrix).
    for head in heads.iter().map(String::as_str) {
        let norms: Vec<&[f64]> = g
            .iter()
            .filter_map(|r| r.weight_norms.get(head))
            .map(Vec::as_slice)
            .filter(|n| n.len() == classes)
            .collect();
        if norms.is_empty() {
            continue;
        }
        panel.series.push(Series::new(
            label_in(g, head),
            head_color(head, &heads),
            ranked(&mean_of(&norms), &order, window, 1.0),
        ));
    }
    (!panel.series.is_empty()).then(|| Figure::single(panel))
}

/// One head's reliability bins pooled over runs: `(lower, upper, count,
/// accuracy, confidence)` per bin, the sums weighted by the bins' counts.
type PooledBin = (f64, f64, usize, Option<f64>, Option<f64>);

fn pooled_bins(evaluations: &[&lt_metrics::Evaluation]) -> Option<Vec<PooledBin>> {
    let first = &evaluations.first()?.calibration;
    if first.is_empty() {
        return None;
    }
    let same_edges = |e: &&lt_metrics::Evaluation| {
        e.calibration.len() == first.len()
            && e.calibration
                .iter()
                .zip(first)
                .all(|(a, b)| a.lower == b.lower && a.upper == b.upper)
    };
    let evaluations: Vec<_> = evaluations.iter().filter(|e| same_edges(e)).collect();
    Some(
        first
            .iter()
            .enumerate()
            .map(|(b, bin)| {
                let (mut n, mut acc, mut conf) = (0usize, 0.0, 0.0);
                for e in &evaluations {
                    let x = &e.calibration[b];
                    if let (Some(a), Some(c)) = (x.accuracy, x.confidence) {
                        n += x.count;
                        acc += a * x.count as f64;
                        conf += c * x.count as f64;
                    }
                }
                let mean = |sum: f64| (n > 0).then(|| sum / n as f64);
                (bin.lower, bin.upper, n, mean(acc), mean(conf))
            })
            .collect(),
    )
}

/// (4) Reliability diagram of every head: one panel per head with the
/// accuracy of each confidence bin as a bar, the gap to the bin's mean
/// confidence shaded, and the diagonal of perfect calibration; the panel's
/// title gives the head's ECE (mean over seeds).
fn reliability_figure(g: &[Run]) -> Option<Figure> {
    let heads = heads_of(g);
    let mut panels = Vec::new();
    for head in &heads {
        let evaluations: Vec<&lt_metrics::Evaluation> = g
            .iter()
            .flat_map(|r| r.results.heads.iter().filter(|h| h.head == head.as_str()))
            .map(|h| &h.evaluation)
            .collect();
        let Some(bins) = pooled_bins(&evaluations) else {
            continue;
        };
        let ece = super::Stat::of(evaluations.iter().map(|e| e.ece));
        let title = match ece {
            Some(s) if s.n > 1 => format!(
                "{}: ECE {:.1} ± {:.1}%",
                label_in(g, head),
                100.0 * s.mean,
                100.0 * s.std
            ),
            Some(s) => format!("{}: ECE {:.1}%", label_in(g, head), 100.0 * s.mean),
            None => label_in(g, head),
        };
        let mut panel = Panel::new(title, "confidence", "accuracy");
        panel.x_range = Some((0.0, 1.0));
        panel.y_range = Some((0.0, 1.0));
        panel.legend = if panels.is_empty() {
            LegendPosition::UpperLeft
        } else {
            LegendPosition::Hidden
        };
        let filled = bins.iter().filter(|b| b.2 > 0);
        panel.bars.push(Bars::new(
            "accuracy",
            PALETTE[0],
            filled
                .clone()
                .filter_map(|&(lo, hi, _, acc, _)| Some((lo, hi, 0.0, acc?)))
                .collect(),
        ));
        let mut gap = Bars::new(
            "gap to confidence",
            PALETTE[3],
            filled
                .filter_map(|&(lo, hi, _, acc, conf)| {
                    let (a, c) = (acc?, conf?);
                    Some((lo, hi, a.min(c), a.max(c)))
                })
                .collect(),
        );
        gap.opacity = 0.3;
        panel.bars.push(gap);
        let mut diagonal = Series::new(
            "perfect calibration",
            [90, 90, 90],
            vec![(0.0, 0.0), (1.0, 1.0)],
        );
        diagonal.dashed = true;
        panel.series.push(diagonal);
        panels.push(panel);
    }
    if panels.is_empty() {
        return None;
    }
    let columns = panels.len().min(3);
    let rows = panels.len().div_ceil(columns);
    let mut split: Vec<&str> = g.iter().map(Run::split).collect();
    split.dedup();
    Some(Figure {
        title: format!(
            "{}, {}: reliability diagrams ({}, {}, {} bins)",
            g[0].dataset,
            g[0].sampler_label,
            split.join("/"),
            seeds_note(g.len()),
            panels_bins(g)
        ),
        panels,
        columns,
        size: (420 * columns as u32, 60 + 400 * rows as u32),
    })
}

/// The number of confidence bins of the runs' evaluations.
fn panels_bins(g: &[Run]) -> usize {
    g.iter()
        .flat_map(|r| &r.results.heads)
        .map(|h| h.evaluation.calibration.len())
        .next()
        .unwrap_or(0)
}

/// (5) Top-1 on the shifted test sets, forward-ρ (left) to backward-ρ
/// (right), one line per head and the known-prior reference dashed; `None`
/// when no run has shifted-test results.
fn shifted_figure(g: &[Run]) -> Option<Figure> {
    let stats = crate::shifted::shifted_stats(g)?;
    let heads = heads_of(g);
    let mut panel = Panel::new(
        format!(
            "{}, {}: top-1 on shifted test distributions ({})",
            g[0].dataset,
            g[0].sampler_label,
            seeds_note(stats.runs)
        ),
        "test class distribution (forward: training order; backward: reversed)",
        "accuracy (%)",
    );
    panel.categories = Some(stats.shifts.iter().map(|s| s.name()).collect());
    panel.legend = LegendPosition::LowerLeft;
    for row in &stats.rows {
        let color = if row.reference {
            [0, 0, 0]
        } else {
            head_color(&row.head, &heads)
        };
        let points = row
            .top1
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64, s.map_or(f64::NAN, |s| 100.0 * s.mean)))
            .collect();
        let mut s = Series::new(row.label.clone(), color, points);
        s.markers = true;
        s.dashed = row.reference;
        if stats.runs > 1 {
            s.error = Some(
                row.top1
                    .iter()
                    .map(|s| s.map_or(f64::NAN, |s| 100.0 * s.std))
                    .collect(),
            );
        }
        panel.series.push(s);
    }
    let mut fig = Figure::single(panel);
    fig.size = (1100, 600);
    Some(fig)
}

/// (6) Stage-1 sampler x head: one panel per group, samplers on x, one line
/// per head, error bars of one standard deviation over seeds.
fn sampler_figure(ds: &[Run]) -> Figure {
    let rows = summarize(ds);
    let samplers = groups(ds);
    let heads = heads_of(ds);
    let categories: Vec<String> = samplers
        .iter()
        .map(|g| g[0].sampler_label.clone())
        .collect();
    type Pick = fn(&super::SummaryRow) -> Option<super::Stat>;
    let groups_of: [(&str, Pick); 4] = [
        ("Many", |r| r.many),
        ("Medium", |r| r.medium),
        ("Few", |r| r.few),
        ("All", |r| r.all),
    ];
    let mut split: Vec<&str> = ds.iter().map(Run::split).collect();
    split.sort();
    split.dedup();
    let panels = groups_of
        .iter()
        .enumerate()
        .map(|(k, (name, pick))| {
            let mut panel = Panel::new(*name, "stage-1 sampler", "accuracy (%)");
            panel.categories = Some(categories.clone());
            panel.legend = if k == 0 {
                LegendPosition::LowerRight
            } else {
                LegendPosition::Hidden
            };
            for head in &heads {
                let stats: Vec<Option<super::Stat>> = samplers
                    .iter()
                    .map(|g| {
                        rows.iter()
                            .find(|r| r.sampler == g[0].sampler && &r.head == head)
                            .and_then(pick)
                    })
                    .collect();
                let mut s = Series::new(
                    label_in(ds, head),
                    head_color(head, &heads),
                    stats
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (i as f64, s.map_or(f64::NAN, |s| 100.0 * s.mean)))
                        .collect(),
                );
                s.markers = true;
                s.error = Some(
                    stats
                        .iter()
                        .map(|s| s.map_or(f64::NAN, |s| 100.0 * s.std))
                        .collect(),
                );
                panel.series.push(s);
            }
            panel
        })
        .collect();
    Figure {
        title: format!(
            "{}: stage-1 sampler × classifier ({}, mean ± std over seeds)",
            ds[0].dataset,
            split.join(", ")
        ),
        panels,
        columns: 2,
        size: (1200, 860),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_skips_gaps() {
        assert_eq!(smooth(&[1.0, 2.0, 3.0, 10.0], 3), vec![1.5, 2.0, 5.0, 6.5]);
        assert_eq!(smooth(&[1.0, f64::NAN, 3.0], 3), vec![1.0, 2.0, 3.0]);
        assert_eq!(
            ranked(&[0.1, 0.9, 0.5], &[1, 2, 0], 1, 100.0),
            vec![(0.0, 90.0), (1.0, 50.0), (2.0, 10.0)]
        );
    }
}
