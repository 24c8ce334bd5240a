//! [`Backbone`]: any architecture of [`Arch`] behind one type.

use crate::arch::{Arch, ArchConfig};
use crate::batch_norm::BnMode;
use crate::cifar_resnet::CifarResNet;
use crate::encoders::{Encoder, Trainable};
use crate::error::{ModelError, Result};
use crate::folded::Inference;
use crate::precision::Precision;
use crate::resnet::ResNet;
use crate::store::{LoadReport, ParamStore};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
enum Inner {
    Cifar(CifarResNet),
    ImageNet(ResNet),
    Encoder(Box<Encoder>),
}

/// A feature extractor: images `(N, 3, H, W)` to features `(N, feature_dim)`.
///
/// The backbone owns its variables (a [`VarMap`], see [`Backbone::varmap`]);
/// names follow torchvision (see [`ResNet`] and [`CifarResNet`]).
#[derive(Debug, Clone)]
pub struct Backbone {
    arch: Arch,
    net: Inner,
    precision: Precision,
}

impl Backbone {
    /// Builds `arch` on `device` with weights drawn from a generator seeded with
    /// `seed`: the same arch and seed give bit-identical weights. An encoder
    /// arch gets its standard size (the family's default for `vit`,
    /// `dinov2`, `clip`, `siglip`); see [`Backbone::from_encoder`] for others.
    pub fn new(arch: Arch, device: &Device, seed: u64) -> Result<Self> {
        let net = match arch.config() {
            ArchConfig::Cifar(c) => Inner::Cifar(CifarResNet::new(&c, device, seed)?),
            ArchConfig::ImageNet(c) => Inner::ImageNet(ResNet::new(&c, device, seed)?),
            ArchConfig::Encoder(e) => Inner::Encoder(Box::new(Encoder::random(
                e.standard_or_default(),
                device,
                seed,
            )?)),
        };
        Ok(Self {
            arch,
            net,
            precision: Precision::F32,
        })
    }

    /// Wraps an encoder (see [`crate::encoders`]) built or loaded by the
    /// caller; `arch` must be of its family.
    pub fn from_encoder(arch: Arch, encoder: Encoder) -> Result<Self> {
        match arch.encoder() {
            Some(e) if e.family == encoder.config().family => Ok(Self {
                arch,
                net: Inner::Encoder(Box::new(encoder)),
                precision: Precision::F32,
            }),
            _ => Err(ModelError::InvalidConfig(format!(
                "arch {arch} cannot hold a {} encoder",
                encoder.config().family
            ))),
        }
    }

    /// The encoder, if this is one.
    pub fn as_encoder(&self) -> Option<&Encoder> {
        match &self.net {
            Inner::Encoder(e) => Some(e),
            _ => None,
        }
    }

    /// True for the backbones with batch norm (the ResNets): their features
    /// depend on [`BnMode`].
    pub fn has_batch_norm(&self) -> bool {
        !matches!(self.net, Inner::Encoder(_))
    }

    /// Chooses the trained variables of an encoder; an error for the
    /// ResNets (which select theirs by name prefix).
    pub fn set_trainable(&mut self, trainable: Trainable) -> Result<()> {
        match &mut self.net {
            Inner::Encoder(e) => e.set_trainable(trainable),
            _ => Err(ModelError::InvalidConfig(format!(
                "trainable `{trainable}` applies to encoder archs, not {}",
                self.arch
            ))),
        }
    }

    /// Sets the dtype of the forward pass (see [`Precision`]); the
    /// variables stay f32 and the features are always f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The dtype of the forward pass.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Length of the feature vector [`Backbone::forward_t`] returns.
    pub fn feature_dim(&self) -> usize {
        match &self.net {
            Inner::Cifar(n) => n.feature_dim(),
            Inner::ImageNet(n) => n.feature_dim(),
            Inner::Encoder(e) => e.feature_dim(),
        }
    }

    /// Features `(N, feature_dim)` of images `(N, 3, H, W)` (any H, W; the
    /// features are a global average over space).
    ///
    /// `mode` is a [`BnMode`] or a `bool` (`true` = train). In
    /// [`BnMode::Train`] the BN running statistics are updated as a side
    /// effect; see [`crate::batch_norm`] for stage-2 "frozen parameters,
    /// running statistics still updated" training.
    pub fn forward_t(&self, x: &Tensor, mode: impl Into<BnMode>) -> Result<Tensor> {
        let mode = mode.into();
        let dtype = self.precision.compute_dtype();
        // Only bf16 casts: an f32 model keeps whatever dtype it is given.
        let x = if self.precision == Precision::F32 || x.dtype() == dtype {
            x.clone()
        } else {
            x.to_dtype(dtype)?
        };
        match &self.net {
            Inner::Cifar(n) => n.forward_t(&x, mode),
            Inner::ImageNet(n) => n.forward_t(&x, mode),
            // No batch norm (nor dropout): `mode` changes nothing.
            Inner::Encoder(e) => e.forward_dtype(&x, dtype),
        }
    }

    /// Features for a frozen backbone, detached. An encoder runs without
    /// building the autograd graph at all; a ResNet in [`BnMode::Eval`] runs
    /// [`Backbone::forward_inference`] (batch norm folded), in
    /// [`BnMode::Train`] [`Backbone::forward_t`] (its BN statistics are
    /// updated: stage 2's "shift learning" must not fold) without a graph
    /// either ([`crate::ops::without_grad`]: nothing kept for a backward
    /// pass, and the residual runs' forward-only path).
    pub fn forward_frozen(&self, x: &Tensor, mode: impl Into<BnMode>) -> Result<Tensor> {
        match (&self.net, mode.into()) {
            (Inner::Encoder(e), _) => e.forward_frozen_dtype(x, self.precision.compute_dtype()),
            (_, BnMode::Eval) => self.forward_inference(x),
            (_, BnMode::Train) => {
                let y = crate::ops::without_grad(|| self.forward_t(&x.detach(), BnMode::Train))?;
                Ok(y.detach())
            }
        }
    }

    /// Features of `x` as [`Backbone::forward_t`] in [`BnMode::Eval`]
    /// computes them (up to float rounding), without an autograd graph (see
    /// [`crate::ops::without_grad`]): every activation is freed as soon as
    /// the next layer has read it. The output is detached. For feature
    /// extraction and prediction. Folds batch norm on every call; to run
    /// many batches through the same weights, build [`Backbone::inference`]
    /// once instead.
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        self.inference()?.forward(x)
    }

    /// The backbone prepared for inference (see [`Inference`]): a ResNet in
    /// f32 on the CPU with batch norm folded into its convolutions, as it is
    /// now (a snapshot: build a new one after the weights or BN statistics
    /// change); anything else runs its own eval forward.
    pub fn inference(&self) -> Result<Inference> {
        let foldable = self.precision == Precision::F32 && self.device().is_cpu();
        let folded = match &self.net {
            Inner::Cifar(n) if foldable => Some(n.fold()?),
            Inner::ImageNet(n) if foldable => Some(n.fold()?),
            _ => None,
        };
        Ok(Inference::new(self, folded))
    }

    /// The ImageNet-family network, if this is one.
    pub fn as_resnet(&self) -> Option<&ResNet> {
        match &self.net {
            Inner::ImageNet(n) => Some(n),
            _ => None,
        }
    }

    /// The CIFAR-family network, if this is one.
    pub fn as_cifar(&self) -> Option<&CifarResNet> {
        match &self.net {
            Inner::Cifar(n) => Some(n),
            _ => None,
        }
    }

    /// The model's variables, with every listing / saving / loading method.
    pub fn store(&self) -> &ParamStore {
        match &self.net {
            Inner::Cifar(n) => n.store(),
            Inner::ImageNet(n) => n.store(),
            Inner::Encoder(e) => e.store(),
        }
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        self.store().device()
    }

    /// The `VarMap` holding every variable (parameters and BN buffers).
    pub fn varmap(&self) -> &VarMap {
        self.store().varmap()
    }

    /// Trainable variables by name (BN buffers excluded), sorted by name;
    /// for an encoder, those its [`Trainable`] setting selects.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        match &self.net {
            Inner::Encoder(e) => e.parameters(),
            _ => self.store().parameters(),
        }
    }

    /// BN running statistics by name, sorted by name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.store().buffers()
    }

    /// Trainable variables whose name starts with `prefix`, e.g. `"layer4."`
    /// to fine-tune only the last stage (Places-LT).
    pub fn parameters_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.store().parameters_with_prefix(prefix)
    }

    /// Number of trainable scalars (buffers excluded).
    pub fn num_parameters(&self) -> usize {
        self.store().num_parameters()
    }

    /// A snapshot copy of every variable by name.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        self.store().state_dict()
    }

    /// Loads named tensors; see [`ParamStore::load_state_dict`].
    pub fn load_state_dict(
        &self,
        tensors: HashMap<String, Tensor>,
        origin: &str,
        strict: bool,
    ) -> Result<LoadReport> {
        self.store().load_state_dict(tensors, origin, strict)
    }

    /// Saves every variable to a safetensors file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.store().save(path)
    }

    /// Strictly loads a checkpoint; see [`ParamStore::load`].
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        self.store().load(path)
    }

    /// Loads pretrained weights, skipping keys the model lacks; see
    /// [`ParamStore::load_pretrained`]. An encoder reads the layouts of
    /// [`crate::encoders::weights`] and rejects keys it does not know.
    pub fn load_pretrained(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        match &self.net {
            Inner::Encoder(e) => e.load_pretrained(path.as_ref()),
            _ => self.store().load_pretrained(path),
        }
    }
}

impl candle_nn::ModuleT for Backbone {
    /// `train` selects [`BnMode::Train`] or [`BnMode::Eval`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Backbone::forward_t(self, xs, train).map_err(candle_core::Error::wrap)
    }
}
