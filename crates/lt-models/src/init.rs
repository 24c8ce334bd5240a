//! Seeded weight initialisation.
//!
//! Every weight is drawn from one `ChaCha8Rng` stream seeded with the model
//! seed, in the fixed order the layers are built, so the same architecture and
//! seed give bit-identical weights on every machine. candle's own CPU RNG
//! cannot be seeded, so it is never used.

use crate::batch_norm::BatchNorm2d;
use crate::error::{ModelError, Result};
use crate::ops::Conv2dParams;
use crate::store::ParamStore;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Standard deviation of a convolution weight with a `k x k` kernel and
/// `out_channels` outputs: `sqrt(2 / (k * k * out_channels))` (He et al.,
/// fan-out mode, ignoring groups), as the reference code initialises it.
pub fn conv_init_std(kernel: usize, out_channels: usize) -> f64 {
    (2.0 / (kernel * kernel * out_channels) as f64).sqrt()
}

/// Draws `len` samples of `N(0, std^2)` from `rng` as f32.
pub fn normal_vec(rng: &mut ChaCha8Rng, len: usize, std: f64) -> Result<Vec<f32>> {
    let dist = Normal::new(0.0f32, std as f32)
        .map_err(|e| ModelError::InvalidConfig(format!("normal init with std {std}: {e}")))?;
    Ok((0..len).map(|_| dist.sample(rng)).collect())
}

/// A convolution without bias whose weight lives in a [`Var`].
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    weight: Var,
    params: Conv2dParams,
}

impl Conv {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::conv2d(x, self.weight.as_tensor(), self.params)?)
    }

    pub(crate) fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    pub(crate) fn params(&self) -> Conv2dParams {
        self.params
    }
}

/// Creates a model's variables in a fixed order from one seeded stream and
/// records their names.
#[derive(Debug)]
pub(crate) struct ParamBuilder {
    rng: ChaCha8Rng,
    device: Device,
    vars: Vec<(String, Var)>,
}

impl ParamBuilder {
    pub(crate) fn new(device: &Device, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            vars: Vec::new(),
        }
    }

    /// A bias-free convolution named `{name}.weight`, shape
    /// `(c_out, c_in / groups, k, k)`.
    pub(crate) fn conv(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        params: Conv2dParams,
    ) -> Result<Conv> {
        if params.groups == 0
            || !c_in.is_multiple_of(params.groups)
            || !c_out.is_multiple_of(params.groups)
        {
            return Err(ModelError::InvalidConfig(format!(
                "{name}: {c_in} -> {c_out} channels are not divisible into {} groups",
                params.groups
            )));
        }
        let shape = (c_out, c_in / params.groups, kernel, kernel);
        let len = c_out * (c_in / params.groups) * kernel * kernel;
        let data = normal_vec(&mut self.rng, len, conv_init_std(kernel, c_out))?;
        let weight = Var::from_tensor(&Tensor::from_vec(data, shape, &self.device)?)?;
        self.vars.push((format!("{name}.weight"), weight.clone()));
        Ok(Conv { weight, params })
    }

    /// A batch-norm layer named `name` (γ 1, β 0, mean 0, variance 1).
    pub(crate) fn batch_norm(&mut self, name: &str, channels: usize) -> Result<BatchNorm2d> {
        let bn = BatchNorm2d::new(name, channels, &self.device)?;
        self.vars.extend(bn.named_vars());
        Ok(bn)
    }

    pub(crate) fn finish(self) -> ParamStore {
        ParamStore::new(self.vars, self.device)
    }
}
