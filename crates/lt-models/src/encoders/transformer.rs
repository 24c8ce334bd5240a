//! The pre-norm transformer block every encoder family is built from, and
//! its parts, written so that they stay differentiable.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` have no backward
//! pass: a gradient would silently stop at them (no gradient reaches a layer
//! norm's parameters, nor anything before it; none reaches the query and key
//! projections through the softmax). The [`LayerNorm`] and the attention
//! softmax here use the fused kernels only when no gradient is needed, and
//! otherwise compose ordinary tensor ops, which carry one. In half precision
//! (bf16 / f16 on GPUs) the composed versions compute in f32, as the fused
//! kernels do.
//!
//! The families differ only in how their variables are named, the MLP
//! activation and DINOv2's layer scale, so one [`Block`] serves them all: the
//! family modules ([`super::vit`], [`super::dinov2`], [`super::clip`],
//! [`super::siglip`]) build it over their own names.

use super::config::Activation;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

/// `x` in f32 if it is in half precision, else as it is.
fn widen(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// A layer norm that stays differentiable (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    /// The norm of width `d` with variables `weight` and `bias` under `vb`.
    pub(crate) fn new(d: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            bias: vb.get(d, "bias")?,
            eps,
        })
    }

    /// Normalises the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        // The fused kernel has no f64 version either.
        if !tracked && x.dtype() != DType::F64 {
            return candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        let dtype = x.dtype();
        let x = widen(x)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension that keeps its backward pass when the
/// scores carry a gradient (see the module docs).
pub(crate) fn softmax(scores: &Tensor) -> Result<Tensor> {
    if !scores.track_op() {
        return candle_nn::ops::softmax_last_dim(scores);
    }
    candle_nn::ops::softmax(&widen(scores)?, D::Minus1)?.to_dtype(scores.dtype())
}

/// Applies an MLP activation (every one differentiable in candle).
pub(crate) fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    match activation {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
    }
}

/// The two-layer MLP of a block (or of SigLIP's pooling head).
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) activation: Activation,
}

impl Mlp {
    pub(crate) fn new(fc1: Linear, fc2: Linear, activation: Activation) -> Self {
        Self {
            fc1,
            fc2,
            activation,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&activate(&self.fc1.forward(x)?, self.activation)?)
    }
}

/// The query, key and value projections: one fused `(3d, d)` linear layer
/// (DINOv2's `qkv`) or three (the Hugging Face layouts).
#[derive(Debug, Clone)]
pub(crate) enum Projections {
    Fused(Linear),
    Split { q: Linear, k: Linear, v: Linear },
}

impl Projections {
    /// Three projections from a fused `(3d, d)` weight and `(3d)` bias
    /// (PyTorch's `in_proj`), as views of them: the gradient reaches the
    /// fused variables.
    pub(crate) fn split_fused(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let [q, k, v] = split3(weight, bias)?;
        Ok(Projections::Split { q, k, v })
    }
}

fn split3(weight: &Tensor, bias: Option<&Tensor>) -> Result<[Linear; 3]> {
    let d = weight.dim(0)? / 3;
    let part = |i: usize| -> Result<Linear> {
        let b = bias.map(|b| b.narrow(0, i * d, d)).transpose()?;
        Ok(Linear::new(weight.narrow(0, i * d, d)?, b))
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

/// Multi-head attention with the differentiable softmax.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) proj: Projections,
    pub(crate) out: Linear,
    pub(crate) num_heads: usize,
}

impl Attention {
    pub(crate) fn new(proj: Projections, out: Linear, num_heads: usize) -> Self {
        Self {
            proj,
            out,
            num_heads,
        }
    }

    /// Self-attention over tokens `(B, N, d)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.proj {
            Projections::Fused(qkv) => {
                let (b, n, d) = x.dims3()?;
                let h = self.num_heads;
                let qkv = qkv
                    .forward(x)?
                    .reshape((b, n, 3, h, d / h))?
                    .permute((2, 0, 3, 1, 4))?;
                let q = qkv.narrow(0, 0, 1)?.squeeze(0)?.contiguous()?;
                let k = qkv.narrow(0, 1, 1)?.squeeze(0)?.contiguous()?;
                let v = qkv.narrow(0, 2, 1)?.squeeze(0)?.contiguous()?;
                self.attend(&q, &k, &v)
            }
            Projections::Split { .. } => self.cross(x, x),
        }
    }

    /// Attention of `queries` `(B, M, d)` over the tokens `x` `(B, N, d)`
    /// (SigLIP's pooling head: one learned query).
    pub(crate) fn cross(&self, queries: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = match &self.proj {
            Projections::Split { q, k, v } => (q.forward(queries)?, k.forward(x)?, v.forward(x)?),
            Projections::Fused(qkv) => {
                let [q, k, v] = split3(qkv.weight(), qkv.bias())?;
                (q.forward(queries)?, k.forward(x)?, v.forward(x)?)
            }
        };
        self.attend(&self.heads(&q)?, &self.heads(&k)?, &self.heads(&v)?)
    }

    /// `(B, N, d)` to `(B, heads, N, d / heads)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.num_heads, d / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Scaled dot-product attention of per-head `q` `(B, h, M, dh)` over
    /// `k`, `v` `(B, h, N, dh)`, heads merged and projected out.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, h, m, dh) = q.dims4()?;
        let q = (q * (1.0 / (dh as f64).sqrt()))?;
        let attn = softmax(&q.matmul(&k.t()?)?)?;
        let out = attn.matmul(v)?.transpose(1, 2)?.reshape((b, m, h * dh))?;
        self.out.forward(&out)
    }
}

/// A pre-norm transformer block:
/// `x + ls1 * attn(norm1(x))`, then `x + ls2 * mlp(norm2(x))`, with the
/// layer scales `ls1`, `ls2` (DINOv2) optional.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) ls1: Option<Tensor>,
    pub(crate) norm2: LayerNorm,
    pub(crate) mlp: Mlp,
    pub(crate) ls2: Option<Tensor>,
}

impl Block {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let scaled = |y: Tensor, ls: &Option<Tensor>| match ls {
            Some(g) => y.broadcast_mul(g),
            None => Ok(y),
        };
        let a = scaled(self.attn.forward(&self.norm1.forward(x)?)?, &self.ls1)?;
        let x = (x + a)?;
        let m = scaled(self.mlp.forward(&self.norm2.forward(&x)?)?, &self.ls2)?;
        x + m
    }

    /// Whether any variable of the block would receive a gradient.
    fn tracked(&self) -> bool {
        let lin = |l: &Linear| l.weight().track_op() || l.bias().is_some_and(Tensor::track_op);
        let proj = match &self.attn.proj {
            Projections::Fused(l) => lin(l),
            Projections::Split { q, k, v } => lin(q) || lin(k) || lin(v),
        };
        let norm = |n: &LayerNorm| n.weight.track_op() || n.bias.track_op();
        let ls = |g: &Option<Tensor>| g.as_ref().is_some_and(Tensor::track_op);
        proj || lin(&self.attn.out)
            || lin(&self.mlp.fc1)
            || lin(&self.mlp.fc2)
            || norm(&self.norm1)
            || norm(&self.norm2)
            || ls(&self.ls1)
            || ls(&self.ls2)
    }
}

/// Runs tokens through blocks in order. The leading blocks through which no
/// gradient flows (all of a frozen encoder's, the frozen ones before the
/// trained blocks of `last:N`) run on the inference kernels of
/// [`super::infer`] when the tokens are f32 on the CPU; the others compose
/// the ops above.
pub(crate) fn run_blocks(blocks: &[Block], x: &Tensor) -> Result<Tensor> {
    let frozen = if x.track_op() {
        0
    } else {
        blocks.iter().take_while(|b| !b.tracked()).count()
    };
    let mut x = x.clone();
    let mut rest = blocks;
    if frozen > 0 && INFERENCE_KERNELS.with(std::cell::Cell::get) {
        if let Some(y) = super::infer::run_blocks(&blocks[..frozen], &x)? {
            x = y;
            rest = &blocks[frozen..];
        }
    }
    for block in rest {
        x = block.forward(&x)?;
    }
    Ok(x)
}

thread_local! {
    static INFERENCE_KERNELS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `f` with the inference kernels of [`super::infer`] switched off on
/// this thread, so that frozen blocks compose candle ops (for tests that
/// compare the two).
pub fn without_inference_kernels<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INFERENCE_KERNELS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INFERENCE_KERNELS.with(|c| c.replace(false)));
    f()
}

/// The patch embedding: `(B, C, H, W)` images to `(B, d, H/p, W/p)`.
pub(crate) fn patch_conv(
    channels: usize,
    d: usize,
    patch: usize,
    bias: bool,
    vb: VarBuilder<'_>,
) -> Result<candle_nn::Conv2d> {
    let cfg = candle_nn::Conv2dConfig {
        stride: patch,
        ..Default::default()
    };
    if bias {
        candle_nn::conv2d(channels, d, patch, cfg, vb)
    } else {
        candle_nn::conv2d_no_bias(channels, d, patch, cfg, vb)
    }
}

/// `(B, d, gh, gw)` patch features as tokens `(B, gh * gw, d)`.
pub(crate) fn tokens(patches: &Tensor) -> Result<Tensor> {
    patches.flatten_from(2)?.transpose(1, 2)
}
