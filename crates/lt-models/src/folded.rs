//! Inference with eval-mode batch norm folded into the convolutions.
//!
//! In eval mode a batch norm is a per-channel affine map with fixed
//! coefficients, `bn(z) = z * s + t` with `s = γ / sqrt(running_var + eps)`
//! and `t = β - running_mean * s`. After a bias-free convolution it folds
//! into the convolution: `bn(conv(x, w)) = conv(x, w * s[c_out]) + t`. Each
//! layer of the folded network is then one [`ops::conv2d_bias`] with the
//! block's ReLU or residual add + ReLU applied in place on its output,
//! instead of a convolution, an affine pass and (at the end of a block) an
//! add + ReLU pass, each writing a full activation.
//!
//! The coefficients are computed in f64 and rounded once; the features
//! differ from the unfused eval forward ([`crate::Backbone::forward_t`] in
//! [`crate::BnMode::Eval`]) only by float rounding.
//!
//! An [`Inference`] is a snapshot: it holds folded copies of the weights and
//! statistics as they were when it was built. Training, loading a
//! checkpoint or a forward pass in [`crate::BnMode::Train`] (which updates
//! the running statistics) does not reach it; build a new one after those.
//! Nothing of the backbone is modified by folding, so training can resume
//! after an evaluation as if it had not happened.

use crate::backbone::Backbone;
use crate::batch_norm::{BatchNorm2d, BnMode, BN_EPS};
use crate::block::{check_input, global_avg_pool};
use crate::error::{ModelError, Result};
use crate::init::Conv;
use crate::ops::{self, Conv2dParams, Epilogue};
use candle_core::{DType, Tensor};

/// A convolution with its eval-mode batch norm folded in.
#[derive(Debug, Clone)]
pub(crate) struct FoldedConv {
    /// `w * s[c_out]`, f32, contiguous.
    weight: Tensor,
    /// `t`, `(C_out,)` f32.
    bias: Tensor,
    params: Conv2dParams,
}

/// A tensor's values as f64 on the host.
fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

impl FoldedConv {
    /// Folds `bn` (with its running statistics) into `conv`.
    pub(crate) fn new(conv: &Conv, bn: &BatchNorm2d) -> Result<Self> {
        let w = conv.weight();
        let c = w.dim(0)?;
        let (gamma, beta) = (host(bn.weight())?, host(bn.bias())?);
        let (mean, var) = (host(bn.running_mean())?, host(bn.running_var())?);
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != c) {
            return Err(ModelError::InvalidConfig(format!(
                "batch norm {} has {} channels, its convolution {c}",
                bn.name(),
                gamma.len()
            )));
        }
        let scale: Vec<f64> = (0..c)
            .map(|i| gamma[i] / (var[i] + BN_EPS).sqrt())
            .collect();
        let bias: Vec<f32> = (0..c)
            .map(|i| (beta[i] - mean[i] * scale[i]) as f32)
            .collect();
        let weight = w.detach().to_dtype(DType::F32)?.flatten_all()?;
        let weight = weight.to_vec1::<f32>()?;
        let per_channel = (weight.len() / c.max(1)).max(1);
        let weight: Vec<f32> = weight
            .chunks(per_channel)
            .zip(&scale)
            .flat_map(|(row, &s)| row.iter().map(move |&v| (f64::from(v) * s) as f32))
            .collect();
        let device = w.device();
        Ok(Self {
            weight: Tensor::from_vec(weight, w.shape(), device)?,
            bias: Tensor::from_vec(bias, c, device)?,
            params: conv.params(),
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
        Ok(ops::conv2d_bias(
            x,
            &self.weight,
            &self.bias,
            self.params,
            epilogue,
        )?)
    }
}

/// The shortcut of a folded residual block.
#[derive(Debug, Clone)]
pub(crate) enum FoldedShortcut {
    Identity,
    Projection(FoldedConv),
    ZeroPad {
        stride: usize,
        front: usize,
        back: usize,
    },
}

/// A residual block (see [`crate::block`]) with every batch norm folded.
#[derive(Debug, Clone)]
pub(crate) struct FoldedBlock {
    pub(crate) inner: Vec<FoldedConv>,
    pub(crate) last: FoldedConv,
    pub(crate) shortcut: FoldedShortcut,
}

impl FoldedBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            FoldedShortcut::Identity => x.clone(),
            FoldedShortcut::Projection(conv) => conv.forward(x, Epilogue::None)?,
            &FoldedShortcut::ZeroPad {
                stride,
                front,
                back,
            } => ops::zero_pad_shortcut(x, stride, front, back)?,
        };
        let mut y = x.clone();
        for conv in &self.inner {
            y = conv.forward(&y, Epilogue::Relu)?;
        }
        self.last.forward(&y, Epilogue::AddRelu(&shortcut))
    }
}

/// A ResNet (either family) with every batch norm folded.
#[derive(Debug, Clone)]
pub(crate) struct FoldedNet {
    /// The stem convolution, followed by a ReLU.
    pub(crate) stem: FoldedConv,
    /// Whether the stem ends with a 3x3/2 max-pool (padding 1).
    pub(crate) max_pool: bool,
    pub(crate) blocks: Vec<FoldedBlock>,
    pub(crate) in_channels: usize,
}

impl FoldedNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut x = self.stem.forward(x, Epilogue::Relu)?;
        if self.max_pool {
            x = ops::max_pool2d(&x, 3, 2, 1)?;
        }
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        global_avg_pool(&x)
    }
}

/// A backbone prepared for inference: the features of
/// [`Backbone::forward_t`] in [`BnMode::Eval`], without an autograd graph
/// (see [`ops::without_grad`]), detached. A ResNet in f32 on the CPU runs
/// with batch norm folded into its convolutions (see the module docs);
/// anything else (an encoder, bf16, a GPU) runs the backbone's own eval
/// forward. Built by [`Backbone::inference`]; a folded one is a snapshot of
/// the weights (see the module docs), the others read the backbone's.
#[derive(Debug, Clone)]
pub struct Inference {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Folded(FoldedNet),
    // Boxed: an encoder backbone is far larger than a folded ResNet.
    Plain(Box<Backbone>),
}

impl Inference {
    /// Folds `backbone` where it can (see the type docs).
    pub(crate) fn new(backbone: &Backbone, folded: Option<FoldedNet>) -> Self {
        let inner = match folded {
            Some(net) => Inner::Folded(net),
            None => Inner::Plain(Box::new(backbone.clone())),
        };
        Self { inner }
    }

    /// Whether batch norm is folded into the convolutions.
    pub fn is_folded(&self) -> bool {
        matches!(self.inner, Inner::Folded(_))
    }

    /// Features `(N, feature_dim)` of images `(N, C, H, W)`, detached.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = match &self.inner {
            Inner::Folded(net) => ops::without_grad(|| net.forward(&x.detach()))?,
            Inner::Plain(b) => ops::without_grad(|| b.forward_t(x, BnMode::Eval))?,
        };
        Ok(f.detach())
    }
}
