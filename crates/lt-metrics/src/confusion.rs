//! The confusion matrix, stored sparsely.

use crate::MetricsError;
use serde::{Deserialize, Serialize};

/// A `C x C` confusion matrix: cell `(t, p)` counts the samples of true class
/// `t` predicted as class `p`.
///
/// Only non-zero cells are stored (at most one per sample), so the matrix stays
/// small for thousands of classes (a dense iNaturalist matrix would hold 66
/// million cells) and serialises compactly as `(true, predicted, count)` triples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConfusionRepr", into = "ConfusionRepr")]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Non-zero cells `(true, predicted, count)`, sorted by `(true, predicted)`.
    cells: Vec<(u32, u32, u64)>,
}

impl ConfusionMatrix {
    /// Counts `(label, prediction)` pairs. Fails when the slices differ in length
    /// or a value is not below `num_classes`.
    pub fn from_predictions(
        labels: &[u32],
        predictions: &[u32],
        num_classes: usize,
    ) -> Result<Self, MetricsError> {
        if num_classes == 0 {
            return Err(MetricsError::ZeroClasses);
        }
        if labels.len() != predictions.len() {
            return Err(MetricsError::LengthMismatch {
                labels: labels.len(),
                predictions: predictions.len(),
            });
        }
        let mut pairs: Vec<(u32, u32)> = labels
            .iter()
            .copied()
            .zip(predictions.iter().copied())
            .collect();
        if let Some((row, &(t, p))) = pairs
            .iter()
            .enumerate()
            .find(|(_, &(t, p))| t as usize >= num_classes || p as usize >= num_classes)
        {
            return Err(MetricsError::LabelOutOfRange {
                row,
                label: if t as usize >= num_classes { t } else { p },
                num_classes,
            });
        }
        pairs.sort_unstable();
        let mut cells: Vec<(u32, u32, u64)> = Vec::new();
        for (t, p) in pairs {
            match cells.last_mut() {
                Some(last) if (last.0, last.1) == (t, p) => last.2 += 1,
                _ => cells.push((t, p, 1)),
            }
        }
        Ok(Self { num_classes, cells })
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of samples of true class `truth` predicted as `predicted`
    /// (0 for indices out of range).
    pub fn get(&self, truth: u32, predicted: u32) -> u64 {
        self.cells
            .binary_search_by(|&(t, p, _)| (t, p).cmp(&(truth, predicted)))
            .map_or(0, |i| self.cells[i].2)
    }

    /// The non-zero cells `(true, predicted, count)`, sorted by `(true, predicted)`.
    pub fn cells(&self) -> &[(u32, u32, u64)] {
        &self.cells
    }

    /// Total number of samples.
    pub fn total(&self) -> u64 {
        self.cells.iter().map(|c| c.2).sum()
    }

    /// The dense matrix, row-major, `C * C` counts (rows: true class, columns:
    /// predicted class).
    pub fn to_dense(&self) -> Vec<u64> {
        let c = self.num_classes;
        let mut dense = vec![0u64; c * c];
        for &(t, p, n) in &self.cells {
            dense[t as usize * c + p as usize] = n;
        }
        dense
    }
}

/// Serialised form of [`ConfusionMatrix`], validated on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfusionRepr {
    num_classes: usize,
    cells: Vec<(u32, u32, u64)>,
}

impl From<ConfusionMatrix> for ConfusionRepr {
    fn from(m: ConfusionMatrix) -> Self {
        Self {
            num_classes: m.num_classes,
            cells: m.cells,
        }
    }
}

impl TryFrom<ConfusionRepr> for ConfusionMatrix {
    type Error = String;

    fn try_from(r: ConfusionRepr) -> Result<Self, Self::Error> {
        let c = r.num_classes;
        if let Some(&(t, p, _)) = r
            .cells
            .iter()
            .find(|&&(t, p, n)| t as usize >= c || p as usize >= c || n == 0)
        {
            return Err(format!(
                "confusion cell ({t}, {p}) is out of range for {c} classes or has a zero count"
            ));
        }
        if r.cells
            .windows(2)
            .any(|w| (w[0].0, w[0].1) >= (w[1].0, w[1].1))
        {
            return Err(
                "confusion cells must be sorted by (true, predicted) without repeats".into(),
            );
        }
        Ok(Self {
            num_classes: c,
            cells: r.cells,
        })
    }
}
