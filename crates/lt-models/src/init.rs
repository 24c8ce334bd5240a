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
use serde::{Deserialize, Serialize};

/// Standard deviation of a convolution weight with a `k x k` kernel and
/// `out_channels` outputs: `sqrt(2 / (k * k * out_channels))` (He et al.,
/// fan-out mode, ignoring groups), as the reference code initialises it.
pub fn conv_init_std(kernel: usize, out_channels: usize) -> f64 {
    (2.0 / (kernel * kernel * out_channels) as f64).sqrt()
}

/// How convolution weights are drawn: He et al.'s normal initialisation
/// `N(0, 2 / fan)` with the fan counted on the output or the input side.
///
/// Serde names: `fan_out`, `fan_in`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvInit {
    /// `std = sqrt(2 / (k * k * c_out))`, groups ignored ([`conv_init_std`]):
    /// the Decoupling reference code, and every architecture here by default.
    #[default]
    FanOut,
    /// `std = sqrt(2 / (k * k * c_in / groups))`: PyTorch's
    /// `nn.init.kaiming_normal_(w)` with its defaults (mode `fan_in`, gain
    /// `sqrt(2)`), as the LDAM-DRW CIFAR ResNets initialise every conv.
    FanIn,
}

impl ConvInit {
    /// Standard deviation of a `(c_out, c_in / groups, k, k)` weight.
    pub fn std(self, kernel: usize, in_per_group: usize, out_channels: usize) -> f64 {
        match self {
            ConvInit::FanOut => conv_init_std(kernel, out_channels),
            ConvInit::FanIn => (2.0 / (kernel * kernel * in_per_group) as f64).sqrt(),
        }
    }
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

    /// The output dimensions `(N, C_out, OH, OW)` on an input of dimensions
    /// `(N, C, H, W)`. A padded input smaller than the kernel counts as one
    /// output here; the convolution itself rejects it with its own error.
    pub(crate) fn out_dims(
        &self,
        (n, _c, h, w): (usize, usize, usize, usize),
    ) -> Result<(usize, usize, usize, usize)> {
        let (c_out, _, kh, kw) = self.weight().dims4()?;
        let p = self.params;
        let out = |size: usize, k: usize| (size + 2 * p.padding).saturating_sub(k) / p.stride + 1;
        Ok((n, c_out, out(h, kh), out(w, kw)))
    }
}

/// Creates a model's variables in a fixed order from one seeded stream and
/// records their names.
#[derive(Debug)]
pub(crate) struct ParamBuilder {
    rng: ChaCha8Rng,
    device: Device,
    vars: Vec<(String, Var)>,
    conv_init: ConvInit,
}

impl ParamBuilder {
    pub(crate) fn new(device: &Device, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            vars: Vec::new(),
            conv_init: ConvInit::FanOut,
        }
    }

    /// Draws the convolutions created from now on with `init` (the stream
    /// and its order are unchanged: only the standard deviation differs).
    pub(crate) fn with_conv_init(mut self, init: ConvInit) -> Self {
        self.conv_init = init;
        self
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
        let std = self.conv_init.std(kernel, c_in / params.groups, c_out);
        let data = normal_vec(&mut self.rng, len, std)?;
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
