//! DINOv2 in the layout of the original release, with the model code of
//! this crate.
//!
//! candle-transformers' `dinov2` module reads the same layout, but its model
//! cannot serve as a feature extractor here: it concatenates the `(1, 1, d)`
//! class token with a `(N, n, d)` batch (so only batches of one image run),
//! fixes the image size at 518 and the patch at 14 (no other configuration,
//! hence no small test models), uses the tanh approximation of GELU and a
//! layer-norm epsilon of 1e-5 where the release uses the exact GELU and
//! 1e-6, resizes the position embeddings with nearest-neighbour sampling
//! where the release uses bicubic interpolation, always builds the
//! ImageNet linear head (`head.*`, absent from the backbone checkpoints), and
//! keeps its blocks private. So the model is written here, over the same
//! variable names, from the shared differentiable block of
//! [`super::transformer`] (with DINOv2's layer scale); it runs both frozen
//! and fine-tuned.

use super::config::EncoderConfig;
use super::transformer::{self, Attention, Block, LayerNorm, Mlp, Projections};
use candle_core::{IndexOp, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

fn block(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Block> {
    let d = c.hidden_size;
    let ln = |name: &str| LayerNorm::new(d, c.layer_norm_eps, vb.pp(name));
    Ok(Block {
        norm1: ln("norm1")?,
        attn: Attention::new(
            Projections::Fused(candle_nn::linear_b(
                d,
                3 * d,
                c.qkv_bias,
                vb.pp("attn.qkv"),
            )?),
            candle_nn::linear(d, d, vb.pp("attn.proj"))?,
            c.num_heads,
        ),
        ls1: Some(vb.get(d, "ls1.gamma")?),
        norm2: ln("norm2")?,
        mlp: Mlp::new(
            candle_nn::linear(d, c.intermediate_size, vb.pp("mlp.fc1"))?,
            candle_nn::linear(c.intermediate_size, d, vb.pp("mlp.fc2"))?,
            c.activation,
        ),
        ls2: Some(vb.get(d, "ls2.gamma")?),
    })
}

/// The DINOv2 feature extractor: the class token after the final norm
/// (`x_norm_clstoken` of the release, HF `Dinov2Model`'s `pooler_output`).
#[derive(Debug, Clone)]
pub(crate) struct Dinov2 {
    patch_embed: candle_nn::Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    register_tokens: Option<Tensor>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    patch_size: usize,
    grid: usize,
}

impl Dinov2 {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = c.hidden_size;
        let patch_embed = transformer::patch_conv(
            c.num_channels,
            d,
            c.patch_size,
            true,
            vb.pp("patch_embed.proj"),
        )?;
        let grid = c.grid();
        let register_tokens = (c.num_register_tokens > 0)
            .then(|| vb.get((1, c.num_register_tokens, d), "register_tokens"))
            .transpose()?;
        let blocks = (0..c.num_layers)
            .map(|i| block(c, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            pos_embed: vb.get((1, grid * grid + 1, d), "pos_embed")?,
            register_tokens,
            blocks,
            norm: LayerNorm::new(d, c.layer_norm_eps, vb.pp("norm"))?,
            patch_size: c.patch_size,
            grid,
        })
    }

    /// The position embeddings for a `gh x gw` patch grid: those of the
    /// checkpoint, or their bicubic interpolation as the release computes it
    /// (`interpolate_offset` 0.1, no antialiasing).
    fn pos_embed(&self, gh: usize, gw: usize) -> Result<Tensor> {
        if gh == self.grid && gw == self.grid {
            return Ok(self.pos_embed.clone());
        }
        let d = self.pos_embed.dim(D::Minus1)?;
        let m = self.grid;
        let dev = self.pos_embed.device();
        let cls = self.pos_embed.i((.., ..1, ..))?;
        let grid = self
            .pos_embed
            .i((0, 1.., ..))?
            .reshape((m, m, d))?
            .permute((2, 0, 1))?
            .contiguous()?; // (d, m, m)
        let rows = bicubic_matrix(m, gh, (gh as f64 + 0.1) / m as f64);
        let cols = bicubic_matrix(m, gw, (gw as f64 + 0.1) / m as f64);
        let rows = Tensor::from_vec(rows, (gh, m), dev)?.to_dtype(grid.dtype())?;
        let cols = Tensor::from_vec(cols, (gw, m), dev)?.to_dtype(grid.dtype())?;
        let out = rows.broadcast_matmul(&grid)?.broadcast_matmul(&cols.t()?)?; // (d, gh, gw)
        let out = out.permute((1, 2, 0))?.reshape((1, gh * gw, d))?;
        Tensor::cat(&[&cls, &out], 1)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let p = self.patch_size;
        let tokens = transformer::tokens(&self.patch_embed.forward(x)?)?;
        let d = tokens.dim(D::Minus1)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?.contiguous()?;
        let mut x =
            Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed(h / p, w / p)?)?;
        if let Some(r) = &self.register_tokens {
            let r = r.broadcast_as((b, r.dim(1)?, d))?.contiguous()?;
            let n = x.dim(1)?;
            x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &r, &x.narrow(1, 1, n - 1)?], 1)?;
        }
        let x = transformer::run_blocks(&self.blocks, &x)?;
        self.norm.forward(&x.i((.., 0, ..))?)
    }
}

/// The `(out, in)` matrix of PyTorch's 1-D bicubic interpolation
/// (`align_corners = False`, cubic coefficient -0.75, borders clamped) for a
/// given `scale_factor`: `y = A x` for a signal `x` of length `len_in`.
pub(crate) fn bicubic_matrix(len_in: usize, len_out: usize, scale_factor: f64) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let mut m = vec![0f32; len_out * len_in];
    for i in 0..len_out {
        let src = (i as f64 + 0.5) / scale_factor - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, wk) in weights.iter().enumerate() {
            let j = (x0 as i64 - 1 + k as i64).clamp(0, len_in as i64 - 1) as usize;
            m[i * len_in + j] += *wk as f32;
        }
    }
    m
}
