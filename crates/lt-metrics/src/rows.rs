//! Input validation and the per-row quantities every metric is built from.

use crate::MetricsError;

/// Checks that `logits` is a non-empty row-major `(labels.len(), num_classes)`
/// matrix of finite values and that every label is in range.
pub(crate) fn check(
    logits: &[f32],
    num_classes: usize,
    labels: &[u32],
) -> Result<(), MetricsError> {
    check_matrix(logits, num_classes, Some(labels.len()))?;
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(MetricsError::LabelOutOfRange {
            row,
            label,
            num_classes,
        });
    }
    Ok(())
}

/// Checks the shape (against `rows` when known) and finiteness of `logits`.
pub(crate) fn check_matrix(
    logits: &[f32],
    num_classes: usize,
    rows: Option<usize>,
) -> Result<usize, MetricsError> {
    if num_classes == 0 {
        return Err(MetricsError::ZeroClasses);
    }
    let rows = rows.unwrap_or(logits.len() / num_classes);
    if rows == 0 {
        return Err(MetricsError::Empty);
    }
    if rows.checked_mul(num_classes) != Some(logits.len()) {
        return Err(MetricsError::LogitShape {
            len: logits.len(),
            rows,
            num_classes,
        });
    }
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(MetricsError::NonFiniteLogit {
            row: i / num_classes,
            class: i % num_classes,
            value: logits[i],
        });
    }
    Ok(rows)
}

/// Index of the largest logit; the first one among equal maxima, as
/// `torch.argmax` does.
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Number of classes ranked ahead of `label`: a class ranks ahead when its
/// logit is larger, or equal with a smaller index. `label` is in the top k
/// exactly when this is below k; with k = 1 this agrees with [`argmax`].
pub(crate) fn rank(row: &[f32], label: usize) -> usize {
    let y = row[label];
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| v > y || (v == y && j < label))
        .count()
}

/// Largest softmax probability of a row given its maximum logit, in f64:
/// `1 / sum_j exp(z_j - max)`.
pub(crate) fn max_probability(row: &[f32], max: f32) -> f64 {
    1.0 / softmax_denominator(row, max)
}

/// `sum_j exp(z_j - max)` in f64, the softmax denominator relative to the
/// row's maximum logit: both the largest probability (its inverse) and the
/// cross-entropy (`max + ln(sum) - z_y`) are read from it, so one pass of
/// exponentials serves both.
pub(crate) fn softmax_denominator(row: &[f32], max: f32) -> f64 {
    let max = f64::from(max);
    row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>()
}
