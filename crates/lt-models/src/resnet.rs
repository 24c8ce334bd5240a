//! ResNet and ResNeXt in the torchvision layout (ImageNet-style stem).
//!
//! Stem: 7x7/2 conv (64 channels, no bias), BN, ReLU, 3x3/2 max-pool with
//! padding 1. Four stages of 64/128/256/512 planes with strides 1/2/2/2.
//! Bottlenecks put the stride on the 3x3 conv (torchvision's "v1.5") and
//! expand by 4; ResNeXt's grouped 3x3 has width
//! `floor(planes * width_per_group / 64) * groups`. Global average pooling
//! over any input size ends the network; there is no classifier.

use crate::batch_norm::{BatchNorm2d, BnMode};
use crate::block::{check_input, global_avg_pool, Block, ConvSpec};
use crate::cifar_resnet::Shortcut;
use crate::error::{ModelError, Result};
use crate::folded::{FoldedConv, FoldedNet};
use crate::init::{Conv, ParamBuilder};
use crate::ops::{self, Conv2dParams, Epilogue};
use crate::store::ParamStore;
use candle_core::{Device, Tensor};

/// The residual block type of a [`ResNetConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Two 3x3 convs, expansion 1 (ResNet-10/18/34).
    Basic,
    /// 1x1, 3x3, 1x1 convs, expansion 4 (ResNet-50 and deeper, ResNeXt).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per plane.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Configuration of a torchvision-layout ResNet / ResNeXt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Number of blocks in each of the four stages.
    pub layers: [usize; 4],
    /// Groups of the 3x3 conv in each bottleneck (32 for ResNeXt 32x4d).
    pub groups: usize,
    /// Channels per group of that conv at 64 planes (4 for ResNeXt 32x4d, 64 for ResNet).
    pub width_per_group: usize,
    /// Input image channels.
    pub in_channels: usize,
}

impl Default for ResNetConfig {
    /// ResNet-50.
    fn default() -> Self {
        Self::resnet50()
    }
}

impl ResNetConfig {
    fn new(block: BlockKind, layers: [usize; 4], groups: usize, width_per_group: usize) -> Self {
        Self {
            block,
            layers,
            groups,
            width_per_group,
            in_channels: 3,
        }
    }

    /// ResNet-10: basic blocks `[1, 1, 1, 1]`.
    pub fn resnet10() -> Self {
        Self::new(BlockKind::Basic, [1, 1, 1, 1], 1, 64)
    }
    /// ResNet-18: basic blocks `[2, 2, 2, 2]`.
    pub fn resnet18() -> Self {
        Self::new(BlockKind::Basic, [2, 2, 2, 2], 1, 64)
    }
    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    pub fn resnet34() -> Self {
        Self::new(BlockKind::Basic, [3, 4, 6, 3], 1, 64)
    }
    /// ResNet-50: bottlenecks `[3, 4, 6, 3]`.
    pub fn resnet50() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], 1, 64)
    }
    /// ResNet-101: bottlenecks `[3, 4, 23, 3]`.
    pub fn resnet101() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 23, 3], 1, 64)
    }
    /// ResNet-152: bottlenecks `[3, 8, 36, 3]`.
    pub fn resnet152() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 8, 36, 3], 1, 64)
    }
    /// ResNeXt-50 32x4d.
    pub fn resnext50_32x4d() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], 32, 4)
    }
    /// ResNeXt-101 32x4d.
    pub fn resnext101_32x4d() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 23, 3], 32, 4)
    }
    /// ResNeXt-152 32x4d.
    pub fn resnext152_32x4d() -> Self {
        Self::new(BlockKind::Bottleneck, [3, 8, 36, 3], 32, 4)
    }

    /// Length of the feature vector: `512 * expansion`.
    pub fn feature_dim(&self) -> usize {
        512 * self.block.expansion()
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.layers.contains(&0) {
            return bad(format!(
                "every stage needs a block, got layers {:?}",
                self.layers
            ));
        }
        if self.in_channels == 0 {
            return bad("in_channels must be positive".into());
        }
        if self.block == BlockKind::Basic && (self.groups != 1 || self.width_per_group != 64) {
            return bad(format!(
                "basic blocks support only groups 1 and width_per_group 64, got {} and {}",
                self.groups, self.width_per_group
            ));
        }
        if self.groups == 0 || self.width_per_group == 0 {
            return bad(format!(
                "groups and width_per_group must be positive, got {} and {}",
                self.groups, self.width_per_group
            ));
        }
        Ok(())
    }

    /// The body convs of one block with `planes` planes and the given stride.
    fn block_specs(&self, planes: usize, stride: usize) -> Vec<ConvSpec> {
        let spec = |kernel, out, stride, groups| ConvSpec {
            kernel,
            out,
            stride,
            groups,
        };
        match self.block {
            BlockKind::Basic => vec![spec(3, planes, stride, 1), spec(3, planes, 1, 1)],
            BlockKind::Bottleneck => {
                let width = planes * self.width_per_group / 64 * self.groups;
                vec![
                    spec(1, width, 1, 1),
                    spec(3, width, stride, self.groups),
                    spec(1, planes * 4, 1, 1),
                ]
            }
        }
    }
}

/// A torchvision-layout ResNet / ResNeXt feature extractor.
///
/// Variable names match torchvision's `resnet*` / `resnext*` state dicts
/// without `fc.*`: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`,
/// `layer{1..4}.{i}.conv{1..3}.weight`, `layer{1..4}.{i}.bn{1..3}.*`,
/// `layer{1..4}.0.downsample.0.weight`, `layer{1..4}.0.downsample.1.*`.
#[derive(Debug, Clone)]
pub struct ResNet {
    config: ResNetConfig,
    conv1: Conv,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
    store: ParamStore,
}

impl ResNet {
    /// Builds the network with weights drawn from a generator seeded with `seed`.
    pub fn new(config: &ResNetConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut b = ParamBuilder::new(device, seed);
        let stem = Conv2dParams {
            stride: 2,
            padding: 3,
            groups: 1,
        };
        let conv1 = b.conv("conv1", config.in_channels, 64, 7, stem)?;
        let bn1 = b.batch_norm("bn1", 64)?;
        let mut layers = Vec::with_capacity(4);
        let mut in_c = 64;
        for (stage, &n_blocks) in config.layers.iter().enumerate() {
            let planes = 64 << stage;
            let mut blocks = Vec::with_capacity(n_blocks);
            for i in 0..n_blocks {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let specs = config.block_specs(planes, stride);
                let prefix = format!("layer{}.{i}", stage + 1);
                blocks.push(Block::new(
                    &mut b,
                    &prefix,
                    in_c,
                    &specs,
                    Shortcut::Projection,
                )?);
                in_c = planes * config.block.expansion();
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
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Length of the feature vector [`ResNet::forward_t`] returns.
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
        let x = self
            .bn1
            .forward_conv_t(&self.conv1, x, Epilogue::Relu, mode)?;
        let x = ops::max_pool2d(&x, 3, 2, 1)?;
        let blocks: Vec<&Block> = self.layers.iter().flatten().collect();
        let x = Block::forward_all(None, &blocks, x, mode)?;
        global_avg_pool(&x)
    }

    /// The network with every batch norm folded into its convolution, for
    /// inference (see [`crate::folded`]).
    pub(crate) fn fold(&self) -> Result<FoldedNet> {
        Ok(FoldedNet {
            stem: FoldedConv::new(&self.conv1, &self.bn1)?,
            max_pool: true,
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

impl candle_nn::ModuleT for ResNet {
    /// `train` selects [`BnMode::Train`] or [`BnMode::Eval`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        ResNet::forward_t(self, xs, train.into()).map_err(candle_core::Error::wrap)
    }
}
