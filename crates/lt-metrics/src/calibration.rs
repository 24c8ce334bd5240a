//! Expected calibration error (Guo et al., "On Calibration of Modern Neural
//! Networks", ICML 2017).

use crate::rows::{argmax, check, max_probability};
use crate::MetricsError;
use serde::{Deserialize, Serialize};

/// Number of equal-width confidence bins used by [`crate::evaluate`] (Guo et al.).
pub const ECE_BINS: usize = 15;

/// One confidence bin `(lower, upper]` of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge (exclusive).
    pub lower: f64,
    /// Upper edge (inclusive).
    pub upper: f64,
    /// Number of samples whose confidence falls in the bin.
    pub count: usize,
    /// Top-1 accuracy of those samples; `None` for an empty bin.
    pub accuracy: Option<f64>,
    /// Mean confidence of those samples; `None` for an empty bin.
    pub confidence: Option<f64>,
}

/// Expected calibration error and the reliability diagram it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`, in `[0, 1]`.
    pub ece: f64,
    /// The bins, from low to high confidence.
    pub bins: Vec<CalibrationBin>,
}

/// Accumulates (confidence, correct) pairs into `num_bins` equal-width bins.
#[derive(Debug)]
pub(crate) struct Binner {
    edges: Vec<f64>,
    count: Vec<usize>,
    correct: Vec<usize>,
    confidence: Vec<f64>,
}

impl Binner {
    pub(crate) fn new(num_bins: usize) -> Self {
        Self {
            // Edges as `i / M` (not accumulated steps), like `torch.linspace(0, 1, M + 1)`.
            edges: (0..=num_bins).map(|i| i as f64 / num_bins as f64).collect(),
            count: vec![0; num_bins],
            correct: vec![0; num_bins],
            confidence: vec![0.0; num_bins],
        }
    }

    /// Adds a sample to the bin with `lower < confidence <= upper`.
    pub(crate) fn add(&mut self, confidence: f64, correct: bool) {
        // The estimate from `ceil(c * M) - 1` can be one off at an edge; the
        // comparisons against the stored edges settle it exactly.
        let m = self.count.len();
        let mut b = ((confidence * m as f64).ceil() as usize).clamp(1, m) - 1;
        while b > 0 && confidence <= self.edges[b] {
            b -= 1;
        }
        while b + 1 < m && confidence > self.edges[b + 1] {
            b += 1;
        }
        self.count[b] += 1;
        self.correct[b] += usize::from(correct);
        self.confidence[b] += confidence;
    }

    pub(crate) fn finish(self) -> Calibration {
        let n: usize = self.count.iter().sum();
        let mut ece = 0.0;
        let bins = (0..self.count.len())
            .map(|b| {
                let count = self.count[b];
                let (accuracy, confidence) = if count == 0 {
                    (None, None)
                } else {
                    let acc = self.correct[b] as f64 / count as f64;
                    let conf = self.confidence[b] / count as f64;
                    ece += count as f64 / n as f64 * (acc - conf).abs();
                    (Some(acc), Some(conf))
                };
                CalibrationBin {
                    lower: self.edges[b],
                    upper: self.edges[b + 1],
                    count,
                    accuracy,
                    confidence,
                }
            })
            .collect();
        Calibration { ece, bins }
    }
}

/// Expected calibration error of row-major `logits` `(N, C)` with `num_bins`
/// equal-width bins over the top-1 softmax probability.
///
/// The confidence of a sample is its largest softmax probability (computed in
/// f64), its prediction the first index of the largest logit; bin `m` holds the
/// confidences in `((m - 1) / M, m / M]`.
pub fn calibration(
    logits: &[f32],
    num_classes: usize,
    labels: &[u32],
    num_bins: usize,
) -> Result<Calibration, MetricsError> {
    if num_bins == 0 {
        return Err(MetricsError::ZeroBins);
    }
    check(logits, num_classes, labels)?;
    let mut binner = Binner::new(num_bins);
    for (row, &label) in logits.chunks_exact(num_classes).zip(labels) {
        let pred = argmax(row);
        binner.add(max_probability(row, row[pred]), pred == label as usize);
    }
    Ok(binner.finish())
}
