//! The CLIP vision tower in the Hugging Face `CLIPVisionModel` layout, on
//! the shared block of [`super::transformer`] (whose frozen blocks run on
//! the inference kernels of `super::infer`).
//!
//! [`Clip`] returns HF's `pooler_output`: the CLS token of the last block
//! after `post_layernorm` (the tokens enter the blocks through
//! `pre_layrnorm`, the checkpoints' spelling). OpenAI's CLIP checkpoints run
//! `quick_gelu` with layer-norm epsilon 1e-5; other settings are rejected by
//! `EncoderConfig::validate`.

use super::config::EncoderConfig;
use super::transformer::{self, Attention, Block, LayerNorm, Mlp, Projections};
use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Block `encoder.layers.N` of the CLIP and SigLIP vision towers (the same
/// names in both).
pub(crate) fn block(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Block> {
    let d = c.hidden_size;
    let ln = |name: &str| LayerNorm::new(d, c.layer_norm_eps, vb.pp(name));
    let proj = |name: &str| candle_nn::linear(d, d, vb.pp("self_attn").pp(name));
    Ok(Block {
        norm1: ln("layer_norm1")?,
        attn: Attention::new(
            Projections::Split {
                q: proj("q_proj")?,
                k: proj("k_proj")?,
                v: proj("v_proj")?,
            },
            proj("out_proj")?,
            c.num_heads,
        ),
        ls1: None,
        norm2: ln("layer_norm2")?,
        mlp: Mlp::new(
            candle_nn::linear(d, c.intermediate_size, vb.pp("mlp.fc1"))?,
            candle_nn::linear(c.intermediate_size, d, vb.pp("mlp.fc2"))?,
            c.activation,
        ),
        ls2: None,
    })
}

/// The CLIP vision tower on the shared differentiable block.
#[derive(Debug, Clone)]
pub(crate) struct Clip {
    patch_embed: candle_nn::Conv2d,
    class_embedding: Tensor,
    pos_embed: Tensor,
    pre_layernorm: LayerNorm,
    blocks: Vec<Block>,
    post_layernorm: LayerNorm,
}

impl Clip {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let n = c.grid() * c.grid() + 1;
        let eps = c.layer_norm_eps;
        Ok(Self {
            patch_embed: transformer::patch_conv(
                c.num_channels,
                d,
                c.patch_size,
                false,
                emb.pp("patch_embedding"),
            )?,
            class_embedding: emb.get(d, "class_embedding")?,
            pos_embed: emb.get((n, d), "position_embedding.weight")?,
            pre_layernorm: LayerNorm::new(d, eps, vb.pp("pre_layrnorm"))?,
            blocks: (0..c.num_layers)
                .map(|i| block(c, vb.pp(format!("encoder.layers.{i}"))))
                .collect::<Result<_>>()?,
            post_layernorm: LayerNorm::new(d, eps, vb.pp("post_layernorm"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tokens = transformer::tokens(&self.patch_embed.forward(x)?)?;
        let (b, _, d) = tokens.dims3()?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?
            .contiguous()?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        let x = self.pre_layernorm.forward(&x)?;
        let x = transformer::run_blocks(&self.blocks, &x)?;
        self.post_layernorm.forward(&x.i((.., 0, ..))?)
    }
}
