//! The full evaluation of one set of logits.

use crate::calibration::{Binner, CalibrationBin, ECE_BINS};
use crate::rows::{argmax, check, check_matrix, max_probability, rank, softmax_denominator};
use crate::{ConfusionMatrix, MetricsError};
use lt_core::stats::{ClassStats, GroupRule, ShotGroup};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The `k` of [`Evaluation::top5`] before clamping to the number of classes.
pub const TOP5: usize = 5;

/// Every metric of one set of logits against test labels.
///
/// Accuracies are fractions in `[0, 1]`. Per-class accuracy is measured on the
/// test labels; a class with no test sample has accuracy NaN (written `null` in
/// JSON) and is left out of every mean. The many / medium / few groups come from
/// the *training* class counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Number of test samples.
    pub n: usize,
    /// Number of classes `C`.
    pub num_classes: usize,
    /// Micro top-1 accuracy (correct / n): the reference "overall" / "All".
    pub top1: f64,
    /// Top-k accuracy with `k = top5_k`.
    pub top5: f64,
    /// The k of `top5`: `min(5, C)`.
    pub top5_k: usize,
    /// Macro accuracy: mean of the per-class accuracies of the classes present in
    /// the test labels (what the reference tau-norm script calls "all").
    pub macro_acc: f64,
    /// Mean per-class accuracy of the many-shot classes present in the test
    /// labels; `None` when there is none.
    pub many: Option<f64>,
    /// Same for the medium-shot classes.
    pub medium: Option<f64>,
    /// Same for the few-shot classes.
    pub few: Option<f64>,
    /// How classes were grouped.
    pub group_rule: GroupRule,
    /// Number of classes in each group (many, medium, few) by training counts.
    pub group_sizes: [usize; 3],
    /// Accuracy of each class on its test samples; NaN (`null` in JSON) for a
    /// class without test samples.
    #[serde(with = "nan_as_null")]
    pub per_class: Vec<f64>,
    /// Number of test samples of each class.
    pub per_class_support: Vec<usize>,
    /// Macro F1 as scikit-learn computes it: mean over the classes that occur as a
    /// label or a prediction of `2 TP / (2 TP + FP + FN)`.
    pub macro_f1: f64,
    /// Expected calibration error over [`ECE_BINS`] equal-width bins of the top-1
    /// softmax probability.
    pub ece: f64,
    /// The reliability diagram behind `ece`.
    pub calibration: Vec<CalibrationBin>,
    confusion: ConfusionMatrix,
}

impl Evaluation {
    /// The confusion matrix (rows: true class, columns: predicted class).
    pub fn confusion(&self) -> &ConfusionMatrix {
        &self.confusion
    }

    /// The accuracy of one group (`many`, `medium` or `few`).
    pub fn group(&self, group: ShotGroup) -> Option<f64> {
        match group {
            ShotGroup::Many => self.many,
            ShotGroup::Medium => self.medium,
            ShotGroup::Few => self.few,
        }
    }
}

/// Evaluates row-major `logits` `(N, C)` against `labels` (length N), grouping
/// classes by the training counts `train_stats` under `rule`.
///
/// Predictions are the first index of the largest logit (as `torch.argmax`).
/// For top-k, a class ranks ahead of the label when its logit is larger, or
/// equal with a smaller index; the sample is correct when fewer than k classes
/// rank ahead. k is clamped to C, so with C <= 5 top-5 is 1.
///
/// Fails on an empty input, a logit count other than `N * C`, a NaN or infinite
/// logit, a label not below C, or training statistics for another number of
/// classes.
pub fn evaluate(
    logits: &[f32],
    num_classes: usize,
    labels: &[u32],
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<Evaluation, MetricsError> {
    check(logits, num_classes, labels)?;
    let scores = host_sample_scores(logits, num_classes, labels);
    evaluate_scores(&scores, num_classes, labels, train_stats, rule)
}

/// [`evaluate`] together with the mean cross-entropy of the logits against
/// the labels, `mean_i (max_i + ln sum_j exp(z_ij - max_i) - z_i,y_i)` in
/// f64, from one pass of exponentials per row: the softmax denominator gives
/// both the confidence and the loss (a tau-norm sweep evaluates many heads
/// and spent half its time computing it twice). The loss is summed over the
/// rows in order, so it equals the separately computed one bit for bit.
///
/// Fails where [`evaluate`] fails.
pub fn evaluate_with_loss(
    logits: &[f32],
    num_classes: usize,
    labels: &[u32],
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<(Evaluation, f64), MetricsError> {
    check(logits, num_classes, labels)?;
    // Rows in parallel (each row's numbers do not depend on the others),
    // the loss summed in row order afterwards so that it does not depend on
    // the thread count.
    let rows: Vec<(SampleScore, f64)> = logits
        .par_chunks_exact(num_classes)
        .zip(labels.par_iter())
        .with_min_len(256)
        .map(|(row, &label)| {
            let pred = argmax(row);
            let max = row[pred];
            let sum = softmax_denominator(row, max);
            let nll = f64::from(max) + sum.ln() - f64::from(row[label as usize]);
            let score = SampleScore {
                pred: pred as u32,
                label_rank: rank(row, label as usize) as u32,
                confidence: 1.0 / sum,
            };
            (score, nll)
        })
        .collect();
    let loss = rows.iter().map(|&(_, nll)| nll).sum::<f64>() / labels.len() as f64;
    let scores: Vec<SampleScore> = rows.into_iter().map(|(s, _)| s).collect();
    Ok((
        evaluate_scores(&scores, num_classes, labels, train_stats, rule)?,
        loss,
    ))
}

/// What every metric of [`Evaluation`] needs from one sample's logits: the
/// prediction, the label's rank and the confidence. Computing these where the
/// logits live (see `device::sample_scores` with the `candle` feature) and
/// passing them to [`evaluate_scores`] moves `N x 3` numbers to the host
/// instead of `N x C` logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleScore {
    /// Predicted class: the first index of the largest logit.
    pub pred: u32,
    /// Number of classes ranked ahead of the label (larger logit, or equal
    /// with a smaller index): the sample is top-k correct when this is < k.
    pub label_rank: u32,
    /// Largest softmax probability, `1 / sum_j exp(z_j - max)`.
    pub confidence: f64,
}

/// Per-sample scores of validated row-major logits (host side).
pub(crate) fn host_sample_scores(logits: &[f32], c: usize, labels: &[u32]) -> Vec<SampleScore> {
    logits
        .chunks_exact(c)
        .zip(labels)
        .map(|(row, &label)| {
            let pred = argmax(row);
            SampleScore {
                pred: pred as u32,
                label_rank: rank(row, label as usize) as u32,
                confidence: max_probability(row, row[pred]),
            }
        })
        .collect()
}

/// [`evaluate`] from per-sample scores (one per label) instead of logits.
///
/// Fails on an empty input, a score count other than the label count, a
/// label or prediction not below C, a confidence outside (0, 1], or training
/// statistics for another number of classes.
pub fn evaluate_scores(
    scores: &[SampleScore],
    num_classes: usize,
    labels: &[u32],
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<Evaluation, MetricsError> {
    if num_classes == 0 {
        return Err(MetricsError::ZeroClasses);
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            predictions: scores.len(),
        });
    }
    for (row, (s, &label)) in scores.iter().zip(labels).enumerate() {
        if label as usize >= num_classes {
            return Err(MetricsError::LabelOutOfRange {
                row,
                label,
                num_classes,
            });
        }
        if s.pred as usize >= num_classes {
            return Err(MetricsError::BadScore {
                row,
                reason: format!("prediction {} not below {num_classes} classes", s.pred),
            });
        }
        if !(s.confidence > 0.0 && s.confidence <= 1.0) {
            return Err(MetricsError::BadScore {
                row,
                reason: format!(
                    "confidence {} outside (0, 1] (non-finite logits?)",
                    s.confidence
                ),
            });
        }
    }
    if train_stats.num_classes() != num_classes {
        return Err(MetricsError::StatsMismatch {
            stats: train_stats.num_classes(),
            num_classes,
        });
    }
    let c = num_classes;
    let n = labels.len();
    let k = TOP5.min(c);
    let mut predictions = Vec::with_capacity(n);
    let mut top1 = 0usize;
    let mut topk = 0usize;
    let mut support = vec![0usize; c];
    let mut correct = vec![0usize; c];
    let mut predicted = vec![0usize; c];
    let mut binner = Binner::new(ECE_BINS);
    for (score, &label) in scores.iter().zip(labels) {
        let y = label as usize;
        let pred = score.pred as usize;
        let hit = pred == y;
        predictions.push(score.pred);
        support[y] += 1;
        predicted[pred] += 1;
        if hit {
            top1 += 1;
            correct[y] += 1;
        }
        if (score.label_rank as usize) < k {
            topk += 1;
        }
        binner.add(score.confidence, hit);
    }

    let per_class: Vec<f64> = (0..c)
        .map(|j| {
            if support[j] == 0 {
                f64::NAN
            } else {
                correct[j] as f64 / support[j] as f64
            }
        })
        .collect();
    let groups = train_stats.groups(rule);
    let mut sums = [(0.0f64, 0usize); 3];
    for (acc, g) in per_class.iter().zip(&groups) {
        if !acc.is_nan() {
            let s = &mut sums[*g as usize];
            s.0 += acc;
            s.1 += 1;
        }
    }
    let group_mean = |g: ShotGroup| {
        let (sum, count) = sums[g as usize];
        (count > 0).then(|| sum / count as f64)
    };
    let present: Vec<f64> = per_class.iter().copied().filter(|a| !a.is_nan()).collect();
    let macro_acc = present.iter().sum::<f64>() / present.len() as f64;

    // TP = correct, FP = predicted - correct, FN = support - correct, so
    // 2TP + FP + FN = predicted + support.
    let (f1_sum, f1_count) =
        (0..c)
            .filter(|&j| support[j] + predicted[j] > 0)
            .fold((0.0, 0usize), |(s, m), j| {
                (
                    s + 2.0 * correct[j] as f64 / (support[j] + predicted[j]) as f64,
                    m + 1,
                )
            });
    let calibration = binner.finish();

    Ok(Evaluation {
        n,
        num_classes: c,
        top1: top1 as f64 / n as f64,
        top5: topk as f64 / n as f64,
        top5_k: k,
        macro_acc,
        many: group_mean(ShotGroup::Many),
        medium: group_mean(ShotGroup::Medium),
        few: group_mean(ShotGroup::Few),
        group_rule: rule.clone(),
        group_sizes: train_stats.group_sizes(rule),
        per_class,
        per_class_support: support,
        macro_f1: f1_sum / f1_count as f64,
        ece: calibration.ece,
        calibration: calibration.bins,
        confusion: ConfusionMatrix::from_predictions(labels, &predictions, c)?,
    })
}

/// Top-k accuracy of row-major `logits` `(N, C)`, with k clamped to C and ties
/// ranked as in [`evaluate`].
pub fn top_k_accuracy(
    logits: &[f32],
    num_classes: usize,
    labels: &[u32],
    k: usize,
) -> Result<f64, MetricsError> {
    if k == 0 {
        return Err(MetricsError::ZeroK);
    }
    check(logits, num_classes, labels)?;
    let k = k.min(num_classes);
    let hits = logits
        .chunks_exact(num_classes)
        .zip(labels)
        .filter(|(row, &label)| rank(row, label as usize) < k)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Predicted class of every row of row-major `logits` `(N, C)`: the first index
/// of the largest logit. Fails on an empty input, a length that is not a
/// multiple of C, or a non-finite logit.
pub fn predictions(logits: &[f32], num_classes: usize) -> Result<Vec<u32>, MetricsError> {
    check_matrix(logits, num_classes, None)?;
    Ok(logits
        .chunks_exact(num_classes)
        .map(|row| argmax(row) as u32)
        .collect())
}

/// Top-1 accuracy of per-sample `predictions` against `labels` on the
/// samples at `indices` (a sub-sampled test set, e.g. a shifted test
/// distribution drawn from the evaluated split).
///
/// Fails when predictions and labels differ in length, `indices` is empty,
/// or an index is out of range.
///
/// ```
/// let predictions = [0u32, 1, 1, 2];
/// let labels = [0u32, 1, 2, 2];
/// assert_eq!(lt_metrics::subset_top1(&predictions, &labels, &[1, 2])?, 0.5);
/// # Ok::<(), lt_metrics::MetricsError>(())
/// ```
pub fn subset_top1(
    predictions: &[u32],
    labels: &[u32],
    indices: &[usize],
) -> Result<f64, MetricsError> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            predictions: predictions.len(),
        });
    }
    if indices.is_empty() {
        return Err(MetricsError::Empty);
    }
    let mut hits = 0usize;
    for &i in indices {
        if i >= labels.len() {
            return Err(MetricsError::IndexOutOfRange {
                index: i,
                len: labels.len(),
            });
        }
        hits += usize::from(predictions[i] == labels[i]);
    }
    Ok(hits as f64 / indices.len() as f64)
}

/// Serialises NaN as `null` (JSON has no NaN) and reads `null` back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(|v| (!v.is_nan()).then_some(*v)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let values = Vec::<Option<f64>>::deserialize(d)?;
        Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}
