//! The CLIP vision tower in the Hugging Face `CLIPVisionModel` layout, run
//! by candle-transformers' `clip::vision_model`.
//!
//! The module's `ClipVisionTransformer` already returns the pooled output
//! (`post_layernorm` of the CLS token, HF's `pooler_output`), so this
//! wrapper only translates the configuration. That code runs `quick_gelu`
//! with layer-norm epsilon 1e-5, as OpenAI's CLIP checkpoints do; other
//! settings are rejected by `EncoderConfig::validate`.

use super::config::EncoderConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::{text_model::Activation, vision_model};

/// The CLIP vision tower: pooled `(N, hidden)` features.
#[derive(Debug, Clone)]
pub(crate) struct Clip {
    inner: vision_model::ClipVisionTransformer,
}

impl Clip {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = vision_model::ClipVisionConfig {
            embed_dim: c.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_layers,
            num_attention_heads: c.num_heads,
            // Only used by the (absent) projection.
            projection_dim: c.hidden_size,
            num_channels: c.num_channels,
            image_size: c.image_size,
            patch_size: c.patch_size,
        };
        Ok(Self {
            inner: vision_model::ClipVisionTransformer::new(vb, &cfg)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}
