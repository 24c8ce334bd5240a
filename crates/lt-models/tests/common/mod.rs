//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A `(n, c, h, w)` tensor of standard-normal values from a seeded host RNG.
pub fn randn(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let (n, c, h, w) = shape;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Normal::new(0.0f32, 1.0).unwrap();
    let data: Vec<f32> = (0..n * c * h * w).map(|_| dist.sample(&mut rng)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// The values of a variable, flattened.
pub fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

/// The values of a tensor, flattened.
pub fn tvalues(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Bit patterns, so comparisons are exact (and NaN-safe).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
