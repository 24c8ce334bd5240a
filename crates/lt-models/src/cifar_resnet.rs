//! The CIFAR ResNet family (He et al. 2016, section 4.2): ResNet-8/20/32/56.
//!
//! Stem: 3x3 conv (16 channels, no bias), BN, ReLU; no max-pool. Three stages
//! of `n = (depth - 2) / 6` basic blocks with 16/32/64 channels and strides
//! 1/2/2. Global average pooling gives 64-d features.
//!
//! Two details vary between published CIFAR-LT code bases, and each is a
//! field of [`CifarResNetConfig`]:
//!
//! * **Shortcut** where the shape changes ([`Shortcut`]): by default a 1x1
//!   conv + BN projection, as in the project's PyTorch throughput baseline;
//!   [`Shortcut::ZeroPad`] is the parameter-free "option A" of He et al.
//!   2016 (keep every other row and column, zero-pad the new channels),
//!   which LDAM-DRW and the methods that reuse its code (MiSLAS, ...) use.
//! * **Conv initialisation** ([`ConvInit`]): by default He normal in fan-out
//!   mode; [`ConvInit::FanIn`] is PyTorch's `kaiming_normal_` default, which
//!   LDAM-DRW applies to every conv.
//!
//! [`CifarResNetConfig::from_depth`] gives the defaults (`resnet8` ...
//! `resnet56`); [`CifarResNetConfig::ldam_drw`] gives both LDAM-DRW choices
//! (`resnet32_ldam`).
//!
//! Variable names follow the torchvision scheme with three stages:
//! `conv1.weight`, `bn1.*`, `layer{1..3}.{i}.conv{1,2}.weight`,
//! `layer{1..3}.{i}.bn{1,2}.*`, and with projection shortcuts
//! `layer{2,3}.0.downsample.0.weight`, `layer{2,3}.0.downsample.1.*`, where
//! `bn*.*` stands for `weight`, `bias`, `running_mean`, `running_var`. The
//! zero-padding shortcut has no variables, hence no `downsample` names.

use crate::batch_norm::{BatchNorm2d, BnMode};
use crate::block::{check_input, global_avg_pool, Block, ConvSpec};
use crate::error::{ModelError, Result};
use crate::folded::{FoldedConv, FoldedNet};
use crate::init::{Conv, ConvInit, ParamBuilder};
use crate::ops::Conv2dParams;
use crate::store::ParamStore;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The shortcut of a block whose input and output shapes differ (the first
/// block of stages 2 and 3); elsewhere the shortcut is the identity.
///
/// Serde names: `projection`, `zero_pad`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// A strided 1x1 conv + BN (`downsample.0` / `downsample.1`): He et al.'s
    /// "option B", torchvision's `downsample`. 576 + 2,176 parameters in a
    /// 16/32/64 network.
    #[default]
    Projection,
    /// He et al.'s "option A", no parameters: the input subsampled with the
    /// block's stride (`x[:, :, ::2, ::2]`) and zero-padded with
    /// `(c_out - c_in) / 2` channels on each side (PyTorch `F.pad(...,
    /// (0, 0, 0, 0, planes // 4, planes // 4))` for doubled widths), see
    /// [`crate::ops::zero_pad_shortcut`]. The new channels carry no residual
    /// signal, and the stage-transition blocks have no BN on their shortcut.
    ZeroPad,
}

/// Configuration of a CIFAR ResNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarResNetConfig {
    /// Basic blocks per stage (`(depth - 2) / 6`: 5 for ResNet-32).
    pub blocks_per_stage: usize,
    /// Channels of the three stages (the stem has as many as the first).
    pub widths: [usize; 3],
    /// Input image channels.
    pub in_channels: usize,
    /// Shortcut of the blocks that change shape.
    pub shortcut: Shortcut,
    /// How every conv weight is drawn.
    pub init: ConvInit,
}

impl Default for CifarResNetConfig {
    /// ResNet-32.
    fn default() -> Self {
        Self::from_depth(32)
    }
}

impl CifarResNetConfig {
    /// The network of the given depth `6n + 2` (8, 20, 32, 44, 56, 110, ...),
    /// widths 16/32/64. A depth not of that form is rejected by
    /// [`CifarResNet::new`].
    pub fn from_depth(depth: usize) -> Self {
        // An invalid depth maps to 0 blocks, which `validate` reports.
        let blocks_per_stage = if depth >= 8 && (depth - 2).is_multiple_of(6) {
            (depth - 2) / 6
        } else {
            0
        };
        Self {
            blocks_per_stage,
            widths: [16, 32, 64],
            in_channels: 3,
            shortcut: Shortcut::Projection,
            init: ConvInit::FanOut,
        }
    }

    /// The network of the given depth as LDAM-DRW's `models/resnet_cifar.py`
    /// builds it (Cao et al., NeurIPS 2019; reused by later CIFAR-LT code
    /// such as MiSLAS): [`Shortcut::ZeroPad`] and [`ConvInit::FanIn`],
    /// otherwise as [`CifarResNetConfig::from_depth`] (BN γ 1, β 0).
    pub fn ldam_drw(depth: usize) -> Self {
        Self {
            shortcut: Shortcut::ZeroPad,
            init: ConvInit::FanIn,
            ..Self::from_depth(depth)
        }
    }

    /// The depth `6 * blocks_per_stage + 2`.
    pub fn depth(&self) -> usize {
        6 * self.blocks_per_stage + 2
    }

    /// Length of the feature vector: the last stage's width.
    pub fn feature_dim(&self) -> usize {
        self.widths[2]
    }

    fn validate(&self) -> Result<()> {
        if self.blocks_per_stage == 0 {
            return Err(ModelError::InvalidConfig(
                "a CIFAR ResNet needs at least one block per stage (depth 6n + 2, n >= 1)".into(),
            ));
        }
        if self.widths.contains(&0) || self.in_channels == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "widths and in_channels must be positive, got {:?} and {}",
                self.widths, self.in_channels
            )));
        }
        if self.shortcut == Shortcut::ZeroPad && self.widths.windows(2).any(|w| w[1] < w[0]) {
            return Err(ModelError::InvalidConfig(format!(
                "a zero-padding shortcut needs non-decreasing widths, got {:?}",
                self.widths
            )));
        }
        Ok(())
    }
}

/// A CIFAR ResNet feature extractor (see the module docs for layout and names).
#[derive(Debug, Clone)]
pub struct CifarResNet {
    config: CifarResNetConfig,
    conv1: Conv,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
    store: ParamStore,
}

impl CifarResNet {
    /// Builds the network with weights drawn from a generator seeded with `seed`.
    pub fn new(config: &CifarResNetConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut b = ParamBuilder::new(device, seed).with_conv_init(config.init);
        let stem_width = config.widths[0];
        let stem = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let conv1 = b.conv("conv1", config.in_channels, stem_width, 3, stem)?;
        let bn1 = b.batch_norm("bn1", stem_width)?;
        let mut layers = Vec::with_capacity(3);
        let mut in_c = stem_width;
        for (stage, &width) in config.widths.iter().enumerate() {
            let mut blocks = Vec::with_capacity(config.blocks_per_stage);
            for i in 0..config.blocks_per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let spec = |stride| ConvSpec {
                    kernel: 3,
                    out: width,
                    stride,
                    groups: 1,
                };
                let prefix = format!("layer{}.{i}", stage + 1);
                let specs = [spec(stride), spec(1)];
                blocks.push(Block::new(&mut b, &prefix, in_c, &specs, config.shortcut)?);
                in_c = width;
            }
            layers.push(blocks);
        }
        Ok(Self {
            config: config.clone(),
            conv1,
            bn1,
            layers,
            store: b.finish(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &CifarResNetConfig {
        &self.config
    }

    /// Length of the feature vector [`CifarResNet::forward_t`] returns.
    pub fn feature_dim(&self) -> usize {
        self.config.feature_dim()
    }

    /// The model's variables (listing, saving, loading).
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Features `(N, feature_dim)` of images `(N, C, H, W)` of any size.
    pub fn forward_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        check_input(x, self.config.in_channels)?;
        let blocks: Vec<&Block> = self.layers.iter().flatten().collect();
        // The stem (conv1, bn1, ReLU) goes first, inside the first residual
        // run where one is taken.
        let stem = (&self.conv1, &self.bn1);
        let x = Block::forward_all(Some(stem), &blocks, x.clone(), mode)?;
        global_avg_pool(&x)
    }

    /// The network with every batch norm folded into its convolution, for
    /// inference (see [`crate::folded`]).
    pub(crate) fn fold(&self) -> Result<FoldedNet> {
        Ok(FoldedNet {
            stem: FoldedConv::new(&self.conv1, &self.bn1)?,
            max_pool: false,
            blocks: self
                .layers
                .iter()
                .flatten()
                .map(Block::fold)
                .collect::<Result<_>>()?,
            in_channels: self.config.in_channels,
        })
    }
}

impl candle_nn::ModuleT for CifarResNet {
    /// `train` selects [`BnMode::Train`] or [`BnMode::Eval`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        CifarResNet::forward_t(self, xs, train.into()).map_err(candle_core::Error::wrap)
    }
}
