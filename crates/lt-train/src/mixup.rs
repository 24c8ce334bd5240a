//! Mixup (Zhang et al., ICLR 2018) in stage 1, as MiSLAS trains with it:
//! each batch is replaced by λ·x + (1 − λ)·x[π] with λ ~ Beta(α, α) and π a
//! random permutation of the batch, and the loss is
//! λ·L(z, y) + (1 − λ)·L(z, y[π]) for whatever loss the stage uses.
//! MiSLAS uses α = 1 on CIFAR and 0.2 on ImageNet-LT; stage 2 never mixes.
//!
//! λ and π of a batch come from a ChaCha8 stream keyed by the run's seed, the
//! epoch and the batch index, so a resumed run draws exactly what an
//! uninterrupted one does, without any state in the checkpoint. Under data
//! parallelism each rank mixes within its own slice of the global batch with
//! the global batch's λ.

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::loss::Loss;

/// `mixup = { alpha = 1.0 }` in `[stage1]`; absent: no mixup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixupConfig {
    /// α of Beta(α, α); > 0.
    pub alpha: f64,
}

impl MixupConfig {
    /// Checks α.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(format!("alpha must be finite and > 0, got {}", self.alpha));
        }
        Ok(())
    }
}

/// The mixup of one stage: the config and the seed of its stream.
#[derive(Debug, Clone, Copy)]
pub struct Mixup {
    alpha: f64,
    seed: u64,
}

/// The draws of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MixDraw {
    /// λ.
    pub lambda: f64,
    /// π, a permutation of the batch's positions.
    pub perm: Vec<u32>,
}

impl Mixup {
    /// The mixup of `config`, drawing from the stream seeded by `seed`.
    pub fn new(config: MixupConfig, seed: u64) -> Self {
        Mixup {
            alpha: config.alpha,
            seed,
        }
    }

    /// λ and π of batch `batch` of `epoch` (both 0-based), for a batch of
    /// `len` images.
    pub fn draw(&self, epoch: usize, batch: usize, len: usize) -> MixDraw {
        let key = crate::seed::derive_seed_code(self.seed, ((epoch as u64) << 32) | batch as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        // alpha > 0 is validated, so Beta::new cannot fail; fall back to no
        // mixing rather than panic.
        let lambda = Beta::new(self.alpha, self.alpha).map_or(1.0, |b| b.sample(&mut rng));
        let mut perm: Vec<u32> = (0..len as u32).collect();
        perm.shuffle(&mut rng);
        MixDraw { lambda, perm }
    }
}

impl MixDraw {
    /// λ·x + (1 − λ)·x[π] along the first dimension.
    pub fn mix(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let perm = Tensor::new(self.perm.as_slice(), input.device())?;
        let other = input.index_select(&perm, 0)?;
        (input * self.lambda)? + (other * (1.0 - self.lambda))?
    }

    /// y[π].
    pub fn permuted(&self, labels: &Tensor) -> candle_core::Result<Tensor> {
        let perm = Tensor::new(self.perm.as_slice(), labels.device())?;
        labels.index_select(&perm, 0)
    }

    /// λ·L(z, y) + (1 − λ)·L(z, y[π]).
    pub fn loss(
        &self,
        loss: &dyn Loss,
        logits: &Tensor,
        labels: &Tensor,
        epoch: usize,
    ) -> candle_core::Result<Tensor> {
        let a = loss.forward(logits, labels, epoch)?;
        let b = loss.forward(logits, &self.permuted(labels)?, epoch)?;
        (a * self.lambda)? + (b * (1.0 - self.lambda))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn draws_are_reproducible_and_mix_as_defined() {
        let m = Mixup::new(MixupConfig { alpha: 1.0 }, 7);
        let d = m.draw(3, 5, 4);
        assert_eq!(d, m.draw(3, 5, 4));
        assert_ne!(d, m.draw(3, 6, 4));
        assert!((0.0..=1.0).contains(&d.lambda));
        let mut sorted = d.perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3]);
        let x = Tensor::new(&[[1f32], [2.], [3.], [4.]], &Device::Cpu).unwrap();
        let got = d
            .mix(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, g) in got.iter().enumerate() {
            let want = d.lambda * (i as f64 + 1.0) + (1.0 - d.lambda) * (d.perm[i] as f64 + 1.0);
            assert!((*g as f64 - want).abs() < 1e-5);
        }
    }

    #[test]
    fn the_mixed_loss_is_the_lambda_weighted_sum() {
        let loss = crate::loss::LossConfig::default()
            .build(&crate::loss::LossContext {
                class_counts: &[1, 1],
                epochs: 1,
                cosine_scale: None,
            })
            .unwrap();
        let d = MixDraw {
            lambda: 0.25,
            perm: vec![1, 0],
        };
        let z = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let got = d
            .loss(loss.as_ref(), &z, &y, 0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let ce = |z0: f64, z1: f64, y: usize| {
            let lse = (z0.exp() + z1.exp()).ln();
            lse - if y == 0 { z0 } else { z1 }
        };
        let right = (ce(1.0, 0.0, 0) + ce(0.0, 2.0, 1)) / 2.0;
        let swapped = (ce(1.0, 0.0, 1) + ce(0.0, 2.0, 0)) / 2.0;
        assert!((got - (0.25 * right + 0.75 * swapped)).abs() < 1e-6);
        assert!(MixupConfig { alpha: 0.0 }.validate().is_err());
    }
}
