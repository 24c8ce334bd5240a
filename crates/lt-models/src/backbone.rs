//! [`Backbone`]: any architecture of [`Arch`] behind one type.

use crate::arch::{Arch, ArchConfig};
use crate::batch_norm::BnMode;
use crate::cifar_resnet::CifarResNet;
use crate::error::Result;
use crate::precision::Precision;
use crate::resnet::ResNet;
use crate::store::{LoadReport, ParamStore};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
enum Net {
    Cifar(CifarResNet),
    ImageNet(ResNet),
}

/// A feature extractor: images `(N, 3, H, W)` to features `(N, feature_dim)`.
///
/// The backbone owns its variables (a [`VarMap`], see [`Backbone::varmap`]);
/// names follow torchvision (see [`ResNet`] and [`CifarResNet`]).
#[derive(Debug, Clone)]
pub struct Backbone {
    arch: Arch,
    net: Net,
    precision: Precision,
}

impl Backbone {
    /// Builds `arch` on `device` with weights drawn from a generator seeded with
    /// `seed`: the same arch and seed give bit-identical weights.
    pub fn new(arch: Arch, device: &Device, seed: u64) -> Result<Self> {
        let net = match arch.config() {
            ArchConfig::Cifar(c) => Net::Cifar(CifarResNet::new(&c, device, seed)?),
            ArchConfig::ImageNet(c) => Net::ImageNet(ResNet::new(&c, device, seed)?),
        };
        Ok(Self {
            arch,
            net,
            precision: Precision::F32,
        })
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
            Net::Cifar(n) => n.feature_dim(),
            Net::ImageNet(n) => n.feature_dim(),
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
            Net::Cifar(n) => n.forward_t(&x, mode),
            Net::ImageNet(n) => n.forward_t(&x, mode),
        }
    }

    /// The ImageNet-family network, if this is one.
    pub fn as_resnet(&self) -> Option<&ResNet> {
        match &self.net {
            Net::ImageNet(n) => Some(n),
            Net::Cifar(_) => None,
        }
    }

    /// The CIFAR-family network, if this is one.
    pub fn as_cifar(&self) -> Option<&CifarResNet> {
        match &self.net {
            Net::Cifar(n) => Some(n),
            Net::ImageNet(_) => None,
        }
    }

    /// The model's variables, with every listing / saving / loading method.
    pub fn store(&self) -> &ParamStore {
        match &self.net {
            Net::Cifar(n) => n.store(),
            Net::ImageNet(n) => n.store(),
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

    /// Trainable variables by name (BN buffers excluded), sorted by name.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.store().parameters()
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
    /// [`ParamStore::load_pretrained`].
    pub fn load_pretrained(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        self.store().load_pretrained(path)
    }
}

impl candle_nn::ModuleT for Backbone {
    /// `train` selects [`BnMode::Train`] or [`BnMode::Eval`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Backbone::forward_t(self, xs, train).map_err(candle_core::Error::wrap)
    }
}
