//! ViT in the Hugging Face `ViTModel` layout, on the shared block of
//! [`super::transformer`] (whose frozen blocks run on the inference kernels
//! of `super::infer`).
//!
//! [`Vit`] returns HF `ViTModel`'s `last_hidden_state[:, 0]`: the CLS token
//! after the final layer norm.

use super::config::EncoderConfig;
use super::transformer::{self, Attention, Block, LayerNorm, Mlp, Projections};
use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Block `encoder.layer.N` of a `ViTModel`.
fn block(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Block> {
    let d = c.hidden_size;
    let ln = |name: &str| LayerNorm::new(d, c.layer_norm_eps, vb.pp(name));
    let qkv =
        |name: &str| candle_nn::linear_b(d, d, c.qkv_bias, vb.pp("attention.attention").pp(name));
    Ok(Block {
        norm1: ln("layernorm_before")?,
        attn: Attention::new(
            Projections::Split {
                q: qkv("query")?,
                k: qkv("key")?,
                v: qkv("value")?,
            },
            candle_nn::linear(d, d, vb.pp("attention.output.dense"))?,
            c.num_heads,
        ),
        ls1: None,
        norm2: ln("layernorm_after")?,
        mlp: Mlp::new(
            candle_nn::linear(d, c.intermediate_size, vb.pp("intermediate.dense"))?,
            candle_nn::linear(c.intermediate_size, d, vb.pp("output.dense"))?,
            c.activation,
        ),
        ls2: None,
    })
}

/// The ViT feature extractor on the shared differentiable block.
#[derive(Debug, Clone)]
pub(crate) struct Vit {
    patch_embed: candle_nn::Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
}

impl Vit {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let n = c.grid() * c.grid() + 1;
        Ok(Self {
            patch_embed: transformer::patch_conv(
                c.num_channels,
                d,
                c.patch_size,
                true,
                emb.pp("patch_embeddings.projection"),
            )?,
            cls_token: emb.get((1, 1, d), "cls_token")?,
            pos_embed: emb.get((1, n, d), "position_embeddings")?,
            blocks: (0..c.num_layers)
                .map(|i| block(c, vb.pp(format!("encoder.layer.{i}"))))
                .collect::<Result<_>>()?,
            layernorm: LayerNorm::new(d, c.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tokens = transformer::tokens(&self.patch_embed.forward(x)?)?;
        let (b, _, d) = tokens.dims3()?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?.contiguous()?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        let x = transformer::run_blocks(&self.blocks, &x)?;
        self.layernorm.forward(&x.i((.., 0, ..))?)
    }
}
