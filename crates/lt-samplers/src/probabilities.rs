//! The class distribution p_j each strategy targets.

use crate::config::{PbLambda, Strategy};

/// p_j for every class in 0-based epoch `epoch`, from the class counts n_j.
///
/// Empty classes get probability 0 under every strategy (the class-balanced
/// strategy refuses them at construction, so there it never arises).
pub(crate) fn class_probabilities(counts: &[usize], strategy: &Strategy, epoch: usize) -> Vec<f64> {
    match strategy {
        Strategy::InstanceBalanced => power(counts, 1.0),
        Strategy::ClassBalanced { .. } => power(counts, 0.0),
        Strategy::SquareRoot => power(counts, 0.5),
        Strategy::Power { q } => power(counts, *q),
        Strategy::ProgressivelyBalanced {
            total_epochs,
            lambda,
        } => {
            let l = progressive_lambda(*lambda, *total_epochs, epoch);
            let instance = power(counts, 1.0);
            let uniform = power(counts, 0.0);
            instance
                .iter()
                .zip(&uniform)
                .map(|(&pi, &pu)| (1.0 - l) * pi + l * pu)
                .collect()
        }
    }
}

/// l_t of the progressively-balanced schedule for 0-based epoch `t`,
/// clamped to 1 for epochs past the planned `total_epochs`.
pub(crate) fn progressive_lambda(lambda: PbLambda, total_epochs: usize, t: usize) -> f64 {
    let l = match lambda {
        PbLambda::TOverTMinus1 => t as f64 / (total_epochs.saturating_sub(1).max(1)) as f64,
        PbLambda::TOverT => t as f64 / total_epochs.max(1) as f64,
    };
    l.min(1.0)
}

/// p_j = n_j^q / sum_k n_k^q over non-empty classes, 0 for empty ones.
///
/// The reference exponents 1, 0 and 1/2 use only correctly rounded IEEE
/// operations (division, `sqrt`), so their tables, and hence the streams,
/// are bit-identical on every platform. Other exponents go through
/// exp(q ln n_j - max_k q ln n_k), which keeps large |q| from overflowing
/// (the largest term is 1) but rests on the platform's `exp`/`ln`, which may
/// differ in the last bit.
fn power(counts: &[usize], q: f64) -> Vec<f64> {
    let weights: Vec<f64> = if q == 1.0 {
        counts.iter().map(|&n| n as f64).collect()
    } else if q == 0.0 {
        counts
            .iter()
            .map(|&n| if n > 0 { 1.0 } else { 0.0 })
            .collect()
    } else if q == 0.5 {
        counts.iter().map(|&n| (n as f64).sqrt()).collect()
    } else {
        let logs: Vec<Option<f64>> = counts
            .iter()
            .map(|&n| (n > 0).then(|| q * (n as f64).ln()))
            .collect();
        let max = logs
            .iter()
            .flatten()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        logs.iter()
            .map(|l| l.map_or(0.0, |l| (l - max).exp()))
            .collect()
    };
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn formulas() {
        let counts = [9, 4, 1, 0];
        assert!(close(
            &class_probabilities(&counts, &Strategy::InstanceBalanced, 0),
            &[9.0 / 14.0, 4.0 / 14.0, 1.0 / 14.0, 0.0]
        ));
        assert!(close(
            &class_probabilities(&counts, &Strategy::SquareRoot, 0),
            &[0.5, 2.0 / 6.0, 1.0 / 6.0, 0.0]
        ));
        assert!(close(
            &class_probabilities(&counts, &Strategy::Power { q: 0.0 }, 0),
            &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0]
        ));
        assert!(close(
            &class_probabilities(&counts, &Strategy::Power { q: -1.0 }, 0),
            &[4.0 / 49.0, 9.0 / 49.0, 36.0 / 49.0, 0.0]
        ));
        let huge = class_probabilities(&counts, &Strategy::Power { q: 1e6 }, 0);
        assert!(close(&huge, &[1.0, 0.0, 0.0, 0.0]));
        let tail = class_probabilities(&counts, &Strategy::Power { q: -1e6 }, 0);
        assert!(close(&tail, &[0.0, 0.0, 1.0, 0.0]));
        // Exact for the reference exponents.
        let ib = class_probabilities(&counts, &Strategy::InstanceBalanced, 0);
        assert_eq!(ib[1], 4.0 / 14.0);
        let sr = class_probabilities(&counts, &Strategy::SquareRoot, 0);
        assert_eq!(sr[1], 2.0 / 6.0);
    }

    #[test]
    fn progressive_schedule() {
        let counts = [6, 2];
        let pb = Strategy::progressively_balanced(3);
        assert!(close(&class_probabilities(&counts, &pb, 0), &[0.75, 0.25]));
        assert!(close(
            &class_probabilities(&counts, &pb, 1),
            &[0.625, 0.375]
        ));
        assert!(close(&class_probabilities(&counts, &pb, 2), &[0.5, 0.5]));
        assert!(close(&class_probabilities(&counts, &pb, 10), &[0.5, 0.5]));
        let switch = Strategy::ProgressivelyBalanced {
            total_epochs: 4,
            lambda: PbLambda::TOverT,
        };
        assert!((progressive_lambda(PbLambda::TOverT, 4, 3) - 0.75).abs() < 1e-15);
        assert!(close(
            &class_probabilities(&counts, &switch, 2),
            &[0.625, 0.375]
        ));
    }
}
