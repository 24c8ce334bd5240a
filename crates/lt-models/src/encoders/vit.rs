//! ViT in the Hugging Face `ViTModel` layout, run by candle-transformers'
//! `vit` module.
//!
//! candle-transformers' `vit::Model` always builds an image classifier
//! (`classifier.*`, which a `ViTModel` checkpoint does not have) and returns
//! its logits; the feature extractors need the CLS token after the final
//! layer norm, so this wrapper composes the module's public `Embeddings` and
//! `Encoder` with that layer norm.

use super::config::{Activation, EncoderConfig};
use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use candle_transformers::models::vit;

/// The ViT feature extractor: `layernorm(encoder(embeddings(x)))[:, 0]`,
/// HF `ViTModel`'s `last_hidden_state[:, 0]`.
#[derive(Debug, Clone)]
pub(crate) struct Vit {
    embeddings: vit::Embeddings,
    encoder: vit::Encoder,
    layernorm: LayerNorm,
}

fn vit_config(c: &EncoderConfig) -> vit::Config {
    vit::Config {
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_layers,
        num_attention_heads: c.num_heads,
        intermediate_size: c.intermediate_size,
        hidden_act: match c.activation {
            Activation::GeluTanh => candle_nn::Activation::GeluPytorchTanh,
            // QuickGelu is rejected by `EncoderConfig::validate`.
            Activation::Gelu | Activation::QuickGelu => candle_nn::Activation::Gelu,
        },
        layer_norm_eps: c.layer_norm_eps,
        image_size: c.image_size,
        patch_size: c.patch_size,
        num_channels: c.num_channels,
        qkv_bias: c.qkv_bias,
    }
}

impl Vit {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = vit_config(c);
        Ok(Self {
            embeddings: vit::Embeddings::new(&cfg, false, vb.pp("embeddings"))?,
            encoder: vit::Encoder::new(&cfg, vb.pp("encoder"))?,
            layernorm: candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.embeddings.forward(x, None, false)?;
        let h = self.encoder.forward(&h)?;
        h.i((.., 0, ..))?.apply(&self.layernorm)
    }
}
