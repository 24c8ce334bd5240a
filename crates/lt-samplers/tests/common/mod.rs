//! Shared fixtures and statistics for the integration tests.
#![allow(dead_code)]

use lt_samplers::{CbDraw, PbLambda, Sampler, SamplerConfig, Strategy};

/// CIFAR-LT style counts: n_i = floor(n_max * (1 / rho)^(i / (C - 1))).
pub fn long_tailed_counts(classes: usize, n_max: usize, rho: f64) -> Vec<usize> {
    (0..classes)
        .map(|i| {
            (n_max as f64 * (1.0 / rho).powf(i as f64 / (classes - 1) as f64)).floor() as usize
        })
        .collect()
}

/// Labels with the given class counts, in a scrambled (not class-sorted)
/// order so that dataset indices carry no class information.
pub fn labels_from_counts(counts: &[usize]) -> Vec<u32> {
    let mut labels: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
        .collect();
    // A fixed multiplicative scramble (odd multiplier, coprime to any length
    // after reduction through a simple swap walk).
    let n = labels.len();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((state >> 33) as usize) % (i + 1);
        labels.swap(i, j);
    }
    labels
}

/// Every strategy, with the reference's defaults and the peer switches.
pub fn all_strategies() -> Vec<Strategy> {
    vec![
        Strategy::InstanceBalanced,
        Strategy::class_balanced(),
        Strategy::ClassBalanced {
            draw: CbDraw::ClassCycle,
            per_class: 3,
        },
        Strategy::ClassBalanced {
            draw: CbDraw::ClassUniformIid,
            per_class: 1,
        },
        Strategy::ClassBalanced {
            draw: CbDraw::ClassUniformIid,
            per_class: 4,
        },
        Strategy::SquareRoot,
        Strategy::Power { q: 0.5 },
        Strategy::Power { q: -0.5 },
        Strategy::Power { q: 2.0 },
        Strategy::progressively_balanced(5),
        Strategy::ProgressivelyBalanced {
            total_epochs: 5,
            lambda: PbLambda::TOverT,
        },
    ]
}

pub fn config(strategy: Strategy, batch_size: usize, seed: u64) -> SamplerConfig {
    SamplerConfig {
        strategy,
        batch_size,
        seed,
        ..SamplerConfig::default()
    }
}

/// Every index of `epochs` epochs on one rank, in order.
pub fn draw_flat(sampler: &mut Sampler, epochs: usize) -> Vec<usize> {
    (0..epochs)
        .flat_map(|_| sampler.next_epoch().into_iter().flatten())
        .collect()
}

/// Per-class counts of a list of dataset indices.
pub fn class_histogram(indices: &[usize], labels: &[u32], classes: usize) -> Vec<usize> {
    let mut h = vec![0; classes];
    for &i in indices {
        h[labels[i] as usize] += 1;
    }
    h
}

/// Upper critical value of chi-square with `df` degrees of freedom at
/// significance ALPHA, by the Wilson-Hilferty cube approximation
/// chi2 = df (1 - 2 / (9 df) + z sqrt(2 / (9 df)))^3, accurate to well under
/// 1% in this tail for df >= 3.
pub fn chi_square_critical(df: usize) -> f64 {
    let k = df as f64;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + Z_ALPHA * a.sqrt()).powi(3)
}

/// Significance of the goodness-of-fit tests: a correct sampler fails one
/// with probability 1e-6 (and with fixed seeds the outcome is reproducible).
pub const ALPHA: f64 = 1e-6;
/// Upper standard-normal quantile for ALPHA.
pub const Z_ALPHA: f64 = 4.753_424_308_822_9;

/// Pearson's chi-square of observed counts against probabilities `p`
/// (classes with p = 0 must be unobserved; they are left out) and its
/// degrees of freedom.
pub fn chi_square(observed: &[usize], p: &[f64]) -> (f64, usize) {
    let total: usize = observed.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0;
    for (&o, &pj) in observed.iter().zip(p) {
        if pj == 0.0 {
            assert_eq!(o, 0, "a class of probability 0 was drawn");
            continue;
        }
        let e = pj * total as f64;
        assert!(
            e >= 5.0,
            "expected count {e} too small for the chi-square approximation"
        );
        stat += (o as f64 - e).powi(2) / e;
        cells += 1;
    }
    (stat, cells - 1)
}

/// Whether the counts are consistent with `p` at level ALPHA.
pub fn fits(observed: &[usize], p: &[f64]) -> (bool, f64, f64) {
    let (stat, df) = chi_square(observed, p);
    let crit = chi_square_critical(df);
    (stat <= crit, stat, crit)
}
