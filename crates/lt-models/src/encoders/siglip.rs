//! The SigLIP vision tower in the Hugging Face `SiglipVisionModel` layout,
//! with its attention-pooling head (HF's `pooler_output`), on the shared
//! block of [`super::transformer`] (whose frozen blocks run on the inference
//! kernels of `super::infer`).
//!
//! At another image size the position embeddings are resized by nearest
//! neighbour, as candle-transformers' SigLIP does.

use super::config::EncoderConfig;
use super::transformer::{self, Attention, Block, LayerNorm, Mlp, Projections};
use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The attention-pooling head (`head.*`): one learned query (`probe`)
/// attends over the tokens through PyTorch's `MultiheadAttention` (fused
/// `in_proj`), then a residual MLP after a layer norm.
#[derive(Debug, Clone)]
struct PoolingHead {
    probe: Tensor,
    attention: Attention,
    layernorm: LayerNorm,
    mlp: Mlp,
}

impl PoolingHead {
    fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = c.hidden_size;
        let attn = vb.pp("attention");
        let in_w = attn.get((3 * d, d), "in_proj_weight")?;
        let in_b = attn.get(3 * d, "in_proj_bias")?;
        Ok(Self {
            mlp: Mlp::new(
                candle_nn::linear(d, c.intermediate_size, vb.pp("mlp.fc1"))?,
                candle_nn::linear(c.intermediate_size, d, vb.pp("mlp.fc2"))?,
                c.activation,
            ),
            layernorm: LayerNorm::new(d, c.layer_norm_eps, vb.pp("layernorm"))?,
            probe: vb.get((1, 1, d), "probe")?,
            attention: Attention::new(
                Projections::split_fused(&in_w, Some(&in_b))?,
                candle_nn::linear(d, d, attn.pp("out_proj"))?,
                c.num_heads,
            ),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let probe = self.probe.broadcast_as((b, 1, d))?.contiguous()?;
        let a = self.attention.cross(&probe, x)?;
        let out = (&a + self.mlp.forward(&self.layernorm.forward(&a)?)?)?;
        out.i((.., 0, ..))
    }
}

/// The SigLIP vision tower on the shared differentiable block.
#[derive(Debug, Clone)]
pub(crate) struct Siglip {
    patch_embed: candle_nn::Conv2d,
    pos_embed: Tensor,
    grid: usize,
    patch_size: usize,
    blocks: Vec<Block>,
    post_layernorm: LayerNorm,
    head: PoolingHead,
}

impl Siglip {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let grid = c.grid();
        Ok(Self {
            patch_embed: transformer::patch_conv(
                c.num_channels,
                d,
                c.patch_size,
                true,
                emb.pp("patch_embedding"),
            )?,
            pos_embed: emb.get((grid * grid, d), "position_embedding.weight")?,
            grid,
            patch_size: c.patch_size,
            blocks: (0..c.num_layers)
                .map(|i| super::clip::block(c, vb.pp(format!("encoder.layers.{i}"))))
                .collect::<Result<_>>()?,
            post_layernorm: LayerNorm::new(d, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            head: PoolingHead::new(c, vb.pp("head"))?,
        })
    }

    /// The position embeddings `(gh * gw, d)` for a `gh x gw` patch grid:
    /// the checkpoint's, or their nearest-neighbour resizing as
    /// candle-transformers computes it (source index `floor(i * m / g)`),
    /// here by index selection, which has a backward pass.
    fn pos_embed(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let m = self.grid;
        if gh == m && gw == m {
            return Ok(self.pos_embed.clone());
        }
        let d = self.pos_embed.dim(1)?;
        let dev = self.pos_embed.device();
        let index = |g: usize| -> Result<Tensor> {
            let scale = m as f64 / g as f64;
            let idx: Vec<u32> = (0..g)
                .map(|i| ((i as f64 * scale) as usize).min(m - 1) as u32)
                .collect();
            Tensor::from_vec(idx, g, dev)
        };
        self.pos_embed
            .reshape((m, m, d))?
            .index_select(&index(gh)?, 0)?
            .index_select(&index(gw)?, 1)?
            .reshape((gh * gw, d))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let p = self.patch_size;
        let tokens = transformer::tokens(&self.patch_embed.forward(x)?)?;
        let x = tokens.broadcast_add(&self.pos_embed(h / p, w / p)?)?;
        let x = transformer::run_blocks(&self.blocks, &x)?;
        let x = self.post_layernorm.forward(&x)?;
        self.head.forward(&x)
    }
}
