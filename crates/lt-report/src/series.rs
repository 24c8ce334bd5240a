//! Values derived from a group of runs (one dataset and sampler, over
//! seeds) that both the figures and the HTML page show: per-class means,
//! the class order by training count, and the τ curve. One place computes
//! them, so a plot and the table beside it cannot disagree.

use super::{Run, Stat};

/// Element-wise mean of equally long vectors, ignoring non-finite values
/// (NaN where no vector has a finite value).
pub(crate) fn mean_of(vectors: &[&[f64]]) -> Vec<f64> {
    let len = vectors.first().map_or(0, |v| v.len());
    (0..len)
        .map(|j| {
            let (sum, n) = vectors
                .iter()
                .map(|v| v[j])
                .filter(|x| x.is_finite())
                .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            if n == 0 {
                f64::NAN
            } else {
                sum / n as f64
            }
        })
        .collect()
}

/// The training count of every class, from the first run that records
/// counts for `classes` classes.
pub(crate) fn class_counts(g: &[Run], classes: usize) -> Option<&[usize]> {
    g.iter()
        .filter_map(Run::train_counts)
        .find(|c| c.len() == classes)
}

/// Class indices by training count, largest first (ties by index), when the
/// runs carry counts for `classes` classes.
pub(crate) fn class_order(g: &[Run], classes: usize) -> Option<Vec<usize>> {
    let counts = class_counts(g, classes)?;
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by_key(|&j| (std::cmp::Reverse(counts[j]), j));
    Some(order)
}

/// Number of classes of the per-class accuracies of a group (0 when none).
pub(crate) fn num_classes(g: &[Run]) -> usize {
    g.iter()
        .flat_map(|r| &r.results.heads)
        .map(|h| h.evaluation.per_class.len())
        .find(|&c| c > 0)
        .unwrap_or(0)
}

/// Per-class accuracy of `head` averaged over the runs of `g` that have
/// `classes` classes; `None` when no run has the head.
pub(crate) fn per_class_mean(g: &[Run], head: &str, classes: usize) -> Option<Vec<f64>> {
    let curves: Vec<&[f64]> = g
        .iter()
        .flat_map(|r| r.results.heads.iter().filter(|h| h.head == head))
        .map(|h| h.evaluation.per_class.as_slice())
        .filter(|c| c.len() == classes)
        .collect();
    (!curves.is_empty()).then(|| mean_of(&curves))
}

/// The τ-norm accuracy curve of a group, averaged over seeds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TauCurve {
    /// Split the accuracies were measured on.
    pub split: String,
    /// Runs with a τ sweep.
    pub runs: usize,
    /// Per τ (the first run's grid): Many, Medium, Few and All, fractions
    /// (NaN where absent).
    pub points: Vec<(f64, [f64; 4])>,
    /// The chosen τ over seeds, and how it was chosen.
    pub chosen: Option<(Stat, String)>,
}

/// The τ curve of `g`: on the reported split when every point has it, else
/// on the selection split; `None` when no run has a τ sweep.
pub(crate) fn tau_curve(g: &[Run]) -> Option<TauCurve> {
    let sweeps: Vec<_> = g
        .iter()
        .filter_map(|r| {
            r.results
                .head("tau_norm")
                .and_then(|h| h.tau_sweep.as_ref())
        })
        .filter(|s| !s.curve.is_empty())
        .collect();
    let first = sweeps.first()?;
    let on_report = first.curve.iter().all(|p| p.report.is_some());
    let split = if on_report {
        first.report_split
    } else {
        first.select_split
    }
    .to_string();
    type Pick = fn(&lt_run::SplitMetrics) -> Option<f64>;
    let picks: [Pick; 4] = [|m| m.many, |m| m.medium, |m| m.few, |m| Some(m.top1)];
    let points = first
        .curve
        .iter()
        .map(|p0| {
            let values = picks.map(|pick| {
                let v: Vec<f64> = sweeps
                    .iter()
                    .filter_map(|s| s.curve.iter().find(|p| (p.tau - p0.tau).abs() < 1e-9))
                    .filter_map(|p| {
                        let m = if on_report {
                            p.report.as_ref()
                        } else {
                            Some(&p.select)
                        };
                        m.and_then(pick)
                    })
                    .collect();
                Stat::of(v).map_or(f64::NAN, |s| s.mean)
            });
            (p0.tau, values)
        })
        .collect();
    let how = match first.selection {
        lt_core::TauSelect::Fixed => "fixed".to_string(),
        lt_core::TauSelect::SweepOnVal => format!("chosen on {}", first.select_split),
    };
    let chosen = Stat::of(sweeps.iter().map(|s| s.chosen)).map(|s| (s, how));
    Some(TauCurve {
        split,
        runs: sweeps.len(),
        points,
        chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_skip_gaps() {
        let a = [1.0, f64::NAN, 3.0];
        let b = [3.0, f64::NAN, 5.0];
        let m = mean_of(&[&a, &b]);
        assert_eq!(m[0], 2.0);
        assert!(m[1].is_nan());
        assert_eq!(m[2], 4.0);
    }
}
