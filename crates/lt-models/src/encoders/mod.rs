//! Pretrained vision encoders (foundation backbones): ViT, DINOv2, the CLIP
//! and SigLIP vision towers, read from Hugging Face style safetensors files.
//!
//! An [`Encoder`] maps images `(N, 3, H, W)` to their pooled features
//! `(N, hidden)`: the CLS token after the final layer norm (ViT, DINOv2),
//! CLIP's `pooler_output` (layer-normed CLS token) or SigLIP's attention
//! pooling.
//!
//! # Model code
//!
//! Every family is written once over the shared pre-norm block of
//! [`transformer`], whose layer norm and attention softmax keep their
//! backward passes when a gradient is needed (candle-nn's fused kernels,
//! which they use otherwise, have none). The blocks through which no
//! gradient flows (all of them in a frozen encoder, those before the
//! trained ones with `last:N`) run, in f32 on the CPU, on inference-only
//! kernels over the same variables (`infer`: fused row-parallel passes,
//! attention per image and head, no autograd graph); elsewhere (GPUs, half
//! precision) they compose candle ops. Both match Hugging Face
//! transformers' features to 1e-4 (`tests/encoders.rs`).
//!
//! # Weights and freezing
//!
//! Every weight is a [`Var`] of the encoder's [`ParamStore`] (listed, saved
//! and loaded like a ResNet's). The model code is built through a
//! `VarBuilder` over those variables at each forward pass (a few hundred map
//! look-ups, nothing copied): trainable variables are served as they are,
//! frozen ones detached, so a frozen encoder ([`Trainable::None`], the
//! default, or [`Encoder::forward_frozen`]) runs without building an
//! autograd graph, and `last:N` builds it only from the first trainable
//! block on.
//!
//! Loading ([`Encoder::from_safetensors`]) reads the layouts listed in
//! [`weights`], converts the Hugging Face DINOv2 layout, and reports every
//! missing, unexpected or mis-shaped key in one
//! [`ModelError::IncompatibleCheckpoint`] naming the file.
//!
//! # Example
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_models::encoders::{Encoder, EncoderConfig, EncoderFamily, Trainable};
//!
//! // A tiny DINOv2 (2 blocks, width 32, 32x32 images in 8x8 patches).
//! let json = r#"{"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2,
//!     "num_attention_heads": 4, "mlp_ratio": 2, "image_size": 32, "patch_size": 8}"#;
//! let config = EncoderConfig::from_json(EncoderFamily::Dinov2, json)?;
//! let mut encoder = Encoder::random(config, &Device::Cpu, 0)?;
//! let images = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)?;
//! let features = encoder.forward_frozen(&images)?;
//! assert_eq!(features.dims(), &[2, 32]);
//!
//! // Frozen by default; fine-tune the last block and the final norm only.
//! assert!(encoder.parameters().is_empty());
//! encoder.set_trainable("last:1".parse::<Trainable>()?)?;
//! assert!(encoder.parameters().iter().all(|(n, _)| n.starts_with("blocks.1.") || n.starts_with("norm.")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clip;
pub mod config;
pub mod dinov2;
mod infer;
pub mod siglip;
pub mod transformer;
pub mod vit;
pub mod weights;

pub use config::{resolve_config, Activation, EncoderConfig, EncoderFamily};

use crate::error::{ModelError, Result};
use crate::store::{LoadReport, ParamStore};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use weights::{Collect, Serve, Source};

/// Which encoder variables are trained (`model.trainable`), for every
/// family.
///
/// A trained encoder runs the differentiable block of [`transformer`]
/// (candle-nn's fused layer norm and softmax have no backward passes and
/// would silently cut the gradient). Frozen variables are served detached:
/// with `last:N` the blocks before the last `N` run without an autograd
/// graph, on the inference kernels on the CPU. The depth of each variable, for
/// layer-wise learning-rate decay, is [`Encoder::depth_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trainable {
    /// Every variable (`"all"`).
    All,
    /// None: a frozen encoder, e.g. for a linear probe (`"none"`, the default).
    #[default]
    None,
    /// The last `N` blocks and what follows them (final norm, pooling head)
    /// (`"last:N"`).
    LastBlocks(usize),
}

impl FromStr for Trainable {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => Ok(Trainable::All),
            "none" => Ok(Trainable::None),
            other => other
                .strip_prefix("last:")
                .and_then(|n| n.trim().parse().ok())
                .map(Trainable::LastBlocks)
                .ok_or_else(|| {
                    ModelError::InvalidConfig(format!(
                        "trainable `{s}`: expected \"all\", \"none\" or \"last:N\""
                    ))
                }),
        }
    }
}

impl fmt::Display for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trainable::All => f.write_str("all"),
            Trainable::None => f.write_str("none"),
            Trainable::LastBlocks(n) => write!(f, "last:{n}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Model {
    Vit(vit::Vit),
    Dinov2(dinov2::Dinov2),
    Clip(clip::Clip),
    Siglip(siglip::Siglip),
}

impl Model {
    fn build(c: &EncoderConfig, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(match c.family {
            EncoderFamily::Vit => Model::Vit(vit::Vit::new(c, vb)?),
            EncoderFamily::Dinov2 => Model::Dinov2(dinov2::Dinov2::new(c, vb)?),
            EncoderFamily::Clip => Model::Clip(clip::Clip::new(c, vb)?),
            EncoderFamily::Siglip => Model::Siglip(siglip::Siglip::new(c, vb)?),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Vit(m) => m.forward(x),
            Model::Dinov2(m) => m.forward(x),
            Model::Clip(m) => m.forward(x),
            Model::Siglip(m) => m.forward(x),
        }
    }
}

/// A vision encoder with its variables (see the module docs).
#[derive(Clone)]
pub struct Encoder {
    config: EncoderConfig,
    store: ParamStore,
    vars: HashMap<String, Var>,
    trainable: Trainable,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .field("trainable", &self.trainable)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder with seeded random weights (N(0, 0.02); norms 1, biases
    /// 0): the same configuration and seed give the same weights.
    pub fn random(config: EncoderConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::collect(config, Source::init(seed), device, "random initialisation")
    }

    /// Reads an encoder from a safetensors file in one of the layouts of
    /// [`weights`]. A file that does not exist, or whose keys do not fit the
    /// configuration, is an error naming it (and every offending key).
    pub fn from_safetensors(config: EncoderConfig, path: &Path, device: &Device) -> Result<Self> {
        let tensors = read_weights(path, device)?;
        let (tensors, ignored) = weights::normalize_keys(config.family, tensors)?;
        let encoder = Self::from_tensors(config, tensors, &path.display().to_string(), device)?;
        tracing::info!(
            path = %path.display(),
            family = %encoder.config.family,
            tensors = encoder.vars.len(),
            ignored = ignored.len(),
            "loaded encoder weights"
        );
        Ok(encoder)
    }

    /// Builds an encoder from named tensors already in the model's layout
    /// (see [`weights::normalize_keys`]); `origin` labels them in errors.
    pub fn from_tensors(
        config: EncoderConfig,
        tensors: HashMap<String, Tensor>,
        origin: &str,
        device: &Device,
    ) -> Result<Self> {
        Self::collect(config, Source::File(tensors), device, origin)
    }

    fn collect(
        config: EncoderConfig,
        source: Source,
        device: &Device,
        origin: &str,
    ) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let collect = Collect::new(source);
        let vb = VarBuilder::from_backend(Box::new(&collect), DType::F32, device.clone());
        let built = Model::build(&config, vb).map(|_| ());
        let collected = collect.finish();
        if !collected.mismatch.is_empty() {
            return Err(ModelError::IncompatibleCheckpoint {
                origin: format!(
                    "{origin} ({} encoder, width {})",
                    config.family, config.hidden_size
                ),
                mismatch: collected.mismatch,
            });
        }
        built?;
        let vars: HashMap<String, Var> = collected.vars.iter().cloned().collect();
        Ok(Self {
            config,
            store: ParamStore::new(collected.vars, device.clone()),
            vars,
            trainable: Trainable::None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Length of the feature vector: the hidden size.
    pub fn feature_dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Every variable, with the listing / saving / loading methods.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Which variables are trained.
    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    /// Chooses the trained variables; `last:N` needs `N` at most the depth.
    pub fn set_trainable(&mut self, trainable: Trainable) -> Result<()> {
        if let Trainable::LastBlocks(n) = trainable {
            if n > self.config.num_layers {
                return Err(ModelError::InvalidConfig(format!(
                    "trainable last:{n}: the encoder has {} blocks",
                    self.config.num_layers
                )));
            }
        }
        self.trainable = trainable;
        Ok(())
    }

    /// The depth of a variable: 0 for the embeddings, `i + 1` for block `i`,
    /// `num_layers + 1` for what follows the blocks (for layer-wise
    /// learning-rate decay).
    pub fn depth_of(&self, name: &str) -> usize {
        match block_index(self.config.family, name) {
            Some(i) => i + 1,
            None if is_stem(name) => 0,
            None => self.config.num_layers + 1,
        }
    }

    /// True if `name` is trained under the current [`Trainable`].
    pub fn is_trainable(&self, name: &str) -> bool {
        match self.trainable {
            Trainable::All => true,
            Trainable::None => false,
            Trainable::LastBlocks(0) => false,
            Trainable::LastBlocks(n) => {
                self.depth_of(name) > self.config.num_layers.saturating_sub(n)
            }
        }
    }

    /// The trained variables by name, sorted.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.store
            .named_vars()
            .iter()
            .filter(|(n, _)| self.is_trainable(n))
            .cloned()
            .collect()
    }

    /// Features `(N, hidden)` of images `(N, 3, H, W)`; the autograd graph
    /// reaches the trainable variables only. The forward runs in `dtype`
    /// (f32, or bf16 on GPUs); the features are f32.
    pub fn forward_dtype(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let any = match self.trainable {
            Trainable::All => true,
            Trainable::None | Trainable::LastBlocks(0) => false,
            Trainable::LastBlocks(_) => true,
        };
        if !any {
            return self.forward_frozen_dtype(x, dtype);
        }
        self.run(x, dtype, &|n| self.is_trainable(n))
    }

    /// [`Encoder::forward_dtype`] in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_dtype(x, DType::F32)
    }

    /// Features with every variable frozen: no autograd graph is built.
    pub fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_frozen_dtype(x, DType::F32)
    }

    /// [`Encoder::forward_frozen`] in `dtype`.
    pub fn forward_frozen_dtype(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        self.run(x, dtype, &|_| false)
    }

    fn run(
        &self,
        x: &Tensor,
        dtype: DType,
        trainable: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let backend = Serve {
            vars: &self.vars,
            trainable,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, self.store.device().clone());
        let model = Model::build(&self.config, vb)?;
        let x = if x.dtype() == dtype {
            x.clone()
        } else {
            x.to_dtype(dtype)?
        };
        let f = model.forward(&x)?;
        Ok(if f.dtype() == DType::F32 {
            f
        } else {
            f.to_dtype(DType::F32)?
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let c = &self.config;
        let bad = |expected: String| ModelError::BadEncoderInput {
            shape: x.dims().to_vec(),
            expected,
        };
        let &[n, ch, h, w] = x.dims() else {
            return Err(bad(format!("(N, {}, H, W)", c.num_channels)));
        };
        if n == 0 || ch != c.num_channels {
            return Err(bad(format!("(N, {}, H, W) with N >= 1", c.num_channels)));
        }
        let fixed = matches!(c.family, EncoderFamily::Vit | EncoderFamily::Clip);
        if fixed && (h != c.image_size || w != c.image_size) {
            return Err(bad(format!(
                "{0}x{0} images (the {1} position embeddings are not interpolated; \
                 use the encoder's preset, which crops to {0})",
                c.image_size, c.family
            )));
        }
        if h == 0 || w == 0 || h % c.patch_size != 0 || w % c.patch_size != 0 {
            return Err(bad(format!(
                "a height and width that are positive multiples of the patch size {}",
                c.patch_size
            )));
        }
        Ok(())
    }

    /// Loads pretrained weights into this encoder: the layouts of
    /// [`weights`] are accepted; every missing, unexpected or mis-shaped key
    /// is reported at once and nothing is written unless all fit.
    pub fn load_pretrained(&self, path: &Path) -> Result<LoadReport> {
        let tensors = read_weights(path, self.store.device())?;
        let (tensors, ignored) = weights::normalize_keys(self.config.family, tensors)?;
        let mut report = self
            .store
            .load_state_dict(tensors, &path.display().to_string(), true)?;
        report.ignored = ignored;
        Ok(report)
    }
}

/// The index of the block a variable belongs to, if any.
fn block_index(family: EncoderFamily, name: &str) -> Option<usize> {
    let prefix = match family {
        EncoderFamily::Vit => "encoder.layer.",
        EncoderFamily::Dinov2 => "blocks.",
        EncoderFamily::Clip | EncoderFamily::Siglip => "encoder.layers.",
    };
    name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// True for the variables before the first block (embeddings, tokens, the
/// CLIP pre-norm).
fn is_stem(name: &str) -> bool {
    name.starts_with("embeddings.")
        || name.starts_with("patch_embed.")
        || name.starts_with("pre_layrnorm.")
        || matches!(name, "cls_token" | "pos_embed" | "register_tokens")
}

/// Reads a weights file, with a clear error when it does not exist.
fn read_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(ModelError::WeightsNotFound {
            path: path.to_path_buf(),
        });
    }
    crate::store::read_safetensors(path, device)
}
