//! Scoring logits where they live (feature `candle`): on a GPU, evaluation
//! copies `N x 4` numbers to the host instead of the `N x C` logits (50,000 x
//! 1,000 floats per ImageNet-LT evaluation, once per tau of a tau-norm sweep).
//!
//! [`sample_scores`] computes, with candle ops on the logits' device, what
//! [`evaluate_scores`](crate::evaluate_scores) needs per sample, plus the
//! sample's cross-entropy. The conventions are [`evaluate`](crate::evaluate)'s:
//! the prediction is the first index of the largest logit, and a class ranks
//! ahead of the label when its logit is larger or equal with a smaller index.
//! The confidence is computed in f32 on the device (f64 on the host), which
//! can move a sample across an ECE bin edge only when it sits within ~1e-7 of
//! one.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_metrics::device::sample_scores;
//!
//! let logits = Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 0.0, 3.0]], &Device::Cpu)?;
//! let labels = Tensor::new(&[1u32, 2], &Device::Cpu)?;
//! let (scores, nll) = sample_scores(&logits, &labels)?;
//! assert_eq!((scores[0].pred, scores[0].label_rank), (0, 1));
//! assert_eq!((scores[1].pred, scores[1].label_rank), (2, 0));
//! assert!((nll[1] - (1.0 + 2.0 * (-3f64).exp()).ln()).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{MetricsError, SampleScore};
use candle_core::{DType, Tensor};

fn dev_err(e: candle_core::Error) -> MetricsError {
    MetricsError::Device(e.to_string())
}

/// Per-sample scores and cross-entropy (natural log) of `logits` `(N, C)`
/// against `labels` `(N)` (u32), computed on the logits' device.
///
/// Fails on a shape mismatch, a label not below C or a non-finite logit
/// (naming its row and class).
pub fn sample_scores(
    logits: &Tensor,
    labels: &Tensor,
) -> Result<(Vec<SampleScore>, Vec<f64>), MetricsError> {
    let (n, c) = logits.dims2().map_err(dev_err)?;
    if n == 0 {
        return Err(MetricsError::Empty);
    }
    if c == 0 {
        return Err(MetricsError::ZeroClasses);
    }
    let host_labels: Vec<u32> = labels
        .to_dtype(DType::U32)
        .and_then(|l| l.to_vec1())
        .map_err(dev_err)?;
    if host_labels.len() != n {
        return Err(MetricsError::LogitShape {
            len: n * c,
            rows: host_labels.len(),
            num_classes: c,
        });
    }
    if let Some((row, &label)) = host_labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= c)
    {
        return Err(MetricsError::LabelOutOfRange {
            row,
            label,
            num_classes: c,
        });
    }
    let scored = score(logits, &host_labels, c).map_err(dev_err)?;
    let (pred, rank, conf, nll, finite) = scored;
    if let Some(row) = finite.iter().position(|&f| f != 0.0) {
        // Locate the offending logit on the host (one row).
        let values: Vec<f32> = logits
            .get(row)
            .and_then(|r| r.to_dtype(DType::F32))
            .and_then(|r| r.to_vec1())
            .map_err(dev_err)?;
        let class = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(MetricsError::NonFiniteLogit {
            row,
            class,
            value: values[class],
        });
    }
    let scores = pred
        .iter()
        .zip(&rank)
        .zip(&conf)
        .map(|((&p, &r), &cf)| SampleScore {
            pred: p,
            label_rank: r as u32,
            confidence: f64::from(cf),
        })
        .collect();
    Ok((scores, nll.iter().map(|&v| f64::from(v)).collect()))
}

type Scored = (Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn score(logits: &Tensor, labels: &[u32], c: usize) -> candle_core::Result<Scored> {
    let dev = logits.device();
    let z = logits.to_dtype(DType::F32)?.contiguous()?;
    let y = Tensor::from_slice(labels, labels.len(), dev)?;
    // `0 * z` is 0 for finite values and NaN otherwise: a per-row flag.
    let finite = z.affine(0.0, 0.0)?.sum(1)?;
    let max = z.max_keepdim(1)?;
    // First index of the maximum: the smallest index whose logit equals it.
    let idx = Tensor::arange(0u32, c as u32, dev)?
        .to_dtype(DType::F32)?
        .unsqueeze(0)?;
    let big = Tensor::full(c as f32, (1, c), dev)?;
    let at_max = z.broadcast_eq(&max)?;
    let pred = at_max
        .where_cond(&idx.broadcast_as(z.shape())?, &big.broadcast_as(z.shape())?)?
        .min(1)?
        .to_dtype(DType::U32)?;
    let zy = z.gather(&y.unsqueeze(1)?, 1)?;
    let yf = y.to_dtype(DType::F32)?.unsqueeze(1)?;
    let greater = z.broadcast_gt(&zy)?.to_dtype(DType::F32)?;
    let equal_before = z
        .broadcast_eq(&zy)?
        .to_dtype(DType::F32)?
        .mul(&idx.broadcast_lt(&yf)?.to_dtype(DType::F32)?)?;
    let rank = (greater + equal_before)?.sum(1)?;
    let sum_exp = z.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?;
    let conf = sum_exp.recip()?.squeeze(1)?;
    // -log softmax(z)_y = log(sum exp(z - max)) + max - z_y.
    let nll = (sum_exp.log()? + max)?.sub(&zy)?.squeeze(1)?;
    Ok((
        pred.to_vec1()?,
        rank.to_vec1()?,
        conf.to_vec1()?,
        nll.to_vec1()?,
        finite.to_vec1()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::SampleScore;
    use candle_core::Device;

    /// Scores on the device equal the host's for random logits with ties.
    #[test]
    fn device_scores_match_the_host() {
        let (n, c) = (64, 7);
        let mut state = 12345u64;
        let logits: Vec<f32> = (0..n * c)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Quantised: ties are common.
                ((state >> 40) % 5) as f32 * 0.5
            })
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3) % c as u32).collect();
        let t = Tensor::from_vec(logits.clone(), (n, c), &Device::Cpu).unwrap();
        let l = Tensor::from_vec(labels.clone(), n, &Device::Cpu).unwrap();
        let (dev, nll) = sample_scores(&t, &l).unwrap();
        let host: Vec<SampleScore> = crate::evaluation::host_sample_scores(&logits, c, &labels);
        for (i, (a, b)) in dev.iter().zip(&host).enumerate() {
            assert_eq!((a.pred, a.label_rank), (b.pred, b.label_rank), "row {i}");
            assert!((a.confidence - b.confidence).abs() < 1e-6, "row {i}");
            let row = &logits[i * c..(i + 1) * c];
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            assert!((nll[i] - (lse - row[labels[i] as usize] as f64)).abs() < 1e-5);
        }
    }

    /// The whole evaluation from device scores equals the host evaluation.
    #[test]
    fn evaluate_scores_equals_evaluate() {
        use lt_core::stats::{ClassStats, GroupRule, GroupThresholds};
        let (n, c) = (40, 4);
        let logits: Vec<f32> = (0..n * c).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
        let stats = ClassStats::from_counts(vec![150, 50, 10, 5]);
        let rule = GroupRule::TrainCount(GroupThresholds::default());
        let want = crate::evaluate(&logits, c, &labels, &stats, &rule).unwrap();
        let t = Tensor::from_vec(logits, (n, c), &Device::Cpu).unwrap();
        let l = Tensor::from_vec(labels.clone(), n, &Device::Cpu).unwrap();
        let (scores, _) = sample_scores(&t, &l).unwrap();
        let got = crate::evaluate_scores(&scores, c, &labels, &stats, &rule).unwrap();
        assert_eq!(got.top1, want.top1);
        assert_eq!(got.top5, want.top5);
        assert_eq!(got.per_class, want.per_class);
        assert_eq!(
            (got.many, got.medium, got.few),
            (want.many, want.medium, want.few)
        );
        assert!((got.ece - want.ece).abs() < 1e-6);
    }

    #[test]
    fn non_finite_logits_are_located() {
        let t = Tensor::new(&[[0.0f32, 1.0], [2.0, f32::NAN]], &Device::Cpu).unwrap();
        let l = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        match sample_scores(&t, &l) {
            Err(MetricsError::NonFiniteLogit {
                row: 1, class: 1, ..
            }) => {}
            other => panic!("expected a non-finite logit error, got {other:?}"),
        }
        let l = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        assert!(matches!(
            sample_scores(&t, &l),
            Err(MetricsError::LabelOutOfRange { row: 1, .. })
        ));
    }
}
