//! Tensor operations the backbones are built from.
//!
//! Every function here is the single entry point the models call. On the CPU
//! they dispatch to the project's own kernels (custom ops with their own
//! backward); on any other device they fall back to compositions of candle's
//! ops, which also serve as the test oracle (`reference` module).

use candle_core::{Result, Tensor};

pub mod reference;

/// Geometry of a 2-D convolution (dilation is always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride in both spatial dimensions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Number of groups (1 for a dense convolution, 32 in ResNeXt 32x4d).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// 2-D convolution of `x` `(N, C_in, H, W)` with `w` `(C_out, C_in / groups, K, K)`,
/// no bias.
pub fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    reference::conv2d(x, w, p)
}

/// Max pooling with a square window, stride and padding (padding counts as
/// minus infinity), with a backward pass.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    reference::max_pool2d(x, kernel, stride, padding)
}

/// Batch normalisation of `x` `(N, C, H, W)` with batch statistics.
///
/// Returns `(y, mean, var)` where `mean` and `var` are the per-channel batch mean
/// and *biased* variance `(C,)`, detached, for the caller's running-statistics
/// update (which uses the unbiased variance, as PyTorch does).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    reference::batch_norm_train(x, weight, bias, eps)
}

/// Batch normalisation of `x` `(N, C, H, W)` with fixed (running) statistics.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    reference::batch_norm_eval(x, weight, bias, running_mean, running_var, eps)
}
