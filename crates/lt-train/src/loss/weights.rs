//! Per-class loss weights shared by the re-weighted losses, and the weighted
//! cross-entropy they feed.

use candle_core::{DType, Tensor};

/// Class-balanced weights of Cui et al. (CVPR 2019) from the effective number
/// of samples: w_j ∝ (1 − β) / (1 − β^{n_j}), normalised to sum to C, as
/// `CB_loss` and LDAM-DRW's deferred re-weighting compute them. β = 0 gives
/// every class weight 1; β → 1 approaches inverse class frequency.
pub fn effective_number_weights(counts: &[usize], beta: f64) -> Vec<f64> {
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powf(n as f64)))
        .collect();
    normalise_to_classes(raw)
}

/// Generalised re-weighting (DisAlign, Zhang et al., CVPR 2021):
/// w_j ∝ (1 / r_j)^ρ with r_j = n_j / N the class frequency, normalised to
/// sum to C.
pub fn inverse_frequency_weights(counts: &[usize], rho: f64) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (total as f64 / n as f64).powf(rho))
        .collect();
    normalise_to_classes(raw)
}

fn normalise_to_classes(raw: Vec<f64>) -> Vec<f64> {
    let sum: f64 = raw.iter().sum();
    let c = raw.len() as f64;
    raw.into_iter().map(|w| w / sum * c).collect()
}

/// Cross-entropy with a weight per class, reduced as PyTorch's
/// `F.cross_entropy(z, y, weight=w)`: Σ_i w_{y_i}·ℓ_i / Σ_i w_{y_i}, the
/// weighted mean (not the plain mean of weighted terms), which is what the
/// reference implementations of DRW and DisAlign train with.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &[f32],
) -> candle_core::Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    let (_, nll) = super::log_softmax_and_nll(logits, &labels)?;
    let w = Tensor::new(class_weights, logits.device())?
        .to_dtype(logits.dtype())?
        .index_select(&labels, 0)?;
    (nll * &w)?.sum_all()?.broadcast_div(&w.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_number_weights_follow_the_formula() {
        let counts = [100usize, 10, 1];
        let beta = 0.9;
        let raw: Vec<f64> = counts
            .iter()
            .map(|&n| (1.0 - beta) / (1.0 - f64::powi(beta, n as i32)))
            .collect();
        let s: f64 = raw.iter().sum();
        let w = effective_number_weights(&counts, beta);
        for (got, r) in w.iter().zip(&raw) {
            assert!((got - r / s * 3.0).abs() < 1e-12);
        }
        assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-12);
        // beta = 0: no re-weighting.
        assert_eq!(effective_number_weights(&counts, 0.0), vec![1.0; 3]);
        // The single image of class 2 weighs (1 - beta) / (1 - beta) = 1 raw.
        assert!((raw[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn inverse_frequency_weights_follow_the_formula() {
        // counts 3 : 1, rho = 1: raw 4/3 and 4, sum 16/3, times C = 2.
        let w = inverse_frequency_weights(&[3, 1], 1.0);
        assert!((w[0] - 0.5).abs() < 1e-12 && (w[1] - 1.5).abs() < 1e-12);
        assert_eq!(inverse_frequency_weights(&[3, 1], 0.0), vec![1.0, 1.0]);
    }

    #[test]
    fn weighted_cross_entropy_is_the_weighted_mean() {
        let dev = candle_core::Device::Cpu;
        let z = Tensor::new(&[[1f32, 0.0], [0.0, 0.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 1], &dev).unwrap();
        let l = weighted_cross_entropy(&z, &y, &[1.0, 3.0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let l0 = (1.0 + (-1f64).exp()).ln();
        let l1 = 2f64.ln();
        assert!((l - (l0 + 3.0 * l1) / 4.0).abs() < 1e-6, "{l}");
    }
}
