//! The SigLIP vision tower in the Hugging Face `SiglipVisionModel` layout,
//! run by candle-transformers' `siglip::VisionModel` with its attention
//! pooling head (HF's `pooler_output`); this wrapper only translates the
//! configuration.

use super::config::{Activation, EncoderConfig};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::siglip;

/// The SigLIP vision tower: pooled `(N, hidden)` features.
#[derive(Debug, Clone)]
pub(crate) struct Siglip {
    inner: siglip::VisionModel,
}

impl Siglip {
    pub(crate) fn new(c: &EncoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = siglip::VisionConfig {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_layers,
            num_attention_heads: c.num_heads,
            num_channels: c.num_channels,
            image_size: c.image_size,
            patch_size: c.patch_size,
            hidden_act: match c.activation {
                Activation::Gelu => candle_nn::Activation::Gelu,
                Activation::GeluTanh | Activation::QuickGelu => {
                    candle_nn::Activation::GeluPytorchTanh
                }
            },
            layer_norm_eps: c.layer_norm_eps,
        };
        Ok(Self {
            inner: siglip::VisionModel::new(&cfg, true, vb)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}
