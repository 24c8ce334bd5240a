//! The residual block shared by every backbone.

use crate::batch_norm::{BatchNorm2d, BnMode};
use crate::cifar_resnet::Shortcut;
use crate::error::ModelError;
use crate::error::Result;
use crate::folded::{FoldedBlock, FoldedConv, FoldedShortcut};
use crate::init::{Conv, ParamBuilder};
use crate::ops::{self, Conv2dParams, Epilogue};
use candle_core::{DType, Tensor};

/// `relu(body(x) + shortcut(x))`, where `body` is a chain of conv + BN pairs
/// with a ReLU between consecutive pairs, and `shortcut` is the identity or,
/// where the shape changes, a 1x1 conv + BN projection (torchvision's
/// `downsample`) or the parameter-free zero-padding shortcut
/// ([`Shortcut::ZeroPad`]).
///
/// A basic block has two 3x3 pairs; a bottleneck has 1x1, 3x3 (carrying the
/// stride and the groups, torchvision's "v1.5" layout), 1x1.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Every body pair but the last, each followed by a ReLU.
    inner: Vec<(Conv, BatchNorm2d)>,
    /// The last body pair, whose BN is fused with the residual add and ReLU.
    last: (Conv, BatchNorm2d),
    shortcut: ShortcutPath,
}

/// What a block adds to its body's output.
#[derive(Debug, Clone)]
enum ShortcutPath {
    Identity,
    /// `{prefix}.downsample.0` (1x1 conv) and `.1` (BN).
    Projection(Conv, BatchNorm2d),
    /// [`ops::zero_pad_shortcut`] with these arguments.
    ZeroPad {
        stride: usize,
        front: usize,
        back: usize,
    },
}

/// One convolution of a block body: kernel, output channels, stride, groups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub kernel: usize,
    pub out: usize,
    pub stride: usize,
    pub groups: usize,
}

impl Block {
    /// Builds the block named `prefix` (e.g. `layer2.0`): body convs named
    /// `{prefix}.conv{i}` / `{prefix}.bn{i}` from 1, then, when `stride != 1`
    /// or the channel count changes, the projection `{prefix}.downsample.0` /
    /// `.1` or (`Shortcut::ZeroPad`, no variables) the zero-padding shortcut,
    /// which needs at least as many output channels as input channels.
    pub(crate) fn new(
        b: &mut ParamBuilder,
        prefix: &str,
        in_channels: usize,
        specs: &[ConvSpec],
        kind: Shortcut,
    ) -> Result<Self> {
        let mut body = Vec::with_capacity(specs.len());
        let mut c = in_channels;
        for (i, s) in specs.iter().enumerate() {
            let params = Conv2dParams {
                stride: s.stride,
                padding: s.kernel / 2,
                groups: s.groups,
            };
            let conv = b.conv(
                &format!("{prefix}.conv{}", i + 1),
                c,
                s.out,
                s.kernel,
                params,
            )?;
            let bn = b.batch_norm(&format!("{prefix}.bn{}", i + 1), s.out)?;
            body.push((conv, bn));
            c = s.out;
        }
        let stride: usize = specs.iter().map(|s| s.stride).product();
        let shortcut = if stride == 1 && in_channels == c {
            ShortcutPath::Identity
        } else {
            match kind {
                Shortcut::Projection => {
                    let params = Conv2dParams {
                        stride,
                        padding: 0,
                        groups: 1,
                    };
                    let conv =
                        b.conv(&format!("{prefix}.downsample.0"), in_channels, c, 1, params)?;
                    let bn = b.batch_norm(&format!("{prefix}.downsample.1"), c)?;
                    ShortcutPath::Projection(conv, bn)
                }
                Shortcut::ZeroPad => {
                    let extra = c.checked_sub(in_channels).ok_or_else(|| {
                        ModelError::InvalidConfig(format!(
                            "block {prefix}: a zero-padding shortcut cannot map \
                             {in_channels} channels to {c}"
                        ))
                    })?;
                    ShortcutPath::ZeroPad {
                        stride,
                        front: extra / 2,
                        back: extra - extra / 2,
                    }
                }
            }
        };
        let last = body.pop().ok_or_else(|| {
            ModelError::InvalidConfig(format!("block {prefix} has no convolutions"))
        })?;
        Ok(Self {
            inner: body,
            last,
            shortcut,
        })
    }

    pub(crate) fn forward_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            ShortcutPath::Identity => x.clone(),
            ShortcutPath::Projection(conv, bn) => {
                bn.forward_conv_t(conv, x, Epilogue::None, mode)?
            }
            &ShortcutPath::ZeroPad {
                stride,
                front,
                back,
            } => ops::zero_pad_shortcut(x, stride, front, back)?,
        };
        let mut y = x.clone();
        for (conv, bn) in &self.inner {
            y = bn.forward_conv_t(conv, &y, Epilogue::Relu, mode)?;
        }
        let (conv, bn) = &self.last;
        bn.forward_conv_t(conv, &y, Epilogue::AddRelu(&shortcut), mode)
    }
}

impl Block {
    /// The block with every batch norm folded into its convolution (see
    /// [`crate::folded`]).
    pub(crate) fn fold(&self) -> Result<FoldedBlock> {
        let fold = |(conv, bn): &(Conv, BatchNorm2d)| FoldedConv::new(conv, bn);
        Ok(FoldedBlock {
            inner: self.inner.iter().map(fold).collect::<Result<_>>()?,
            last: fold(&self.last)?,
            shortcut: match &self.shortcut {
                ShortcutPath::Identity => FoldedShortcut::Identity,
                ShortcutPath::Projection(conv, bn) => {
                    FoldedShortcut::Projection(FoldedConv::new(conv, bn)?)
                }
                &ShortcutPath::ZeroPad {
                    stride,
                    front,
                    back,
                } => FoldedShortcut::ZeroPad {
                    stride,
                    front,
                    back,
                },
            },
        })
    }
}

/// Global average pooling: `(N, C, H, W)` -> `(N, C)`, any spatial size.
/// Features are always averaged (and returned) in f32, also under bf16
/// mixed precision: the head and the loss run in f32.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Ok(x.to_dtype(DType::F32)?.mean((2, 3))?);
    }
    Ok(x.mean((2, 3))?)
}

/// Checks the input is `(N, channels, H, W)` with no zero dimension.
pub(crate) fn check_input(x: &Tensor, channels: usize) -> Result<()> {
    let ok = matches!(x.dims(), &[n, c, h, w] if c == channels && n > 0 && h > 0 && w > 0);
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadInput {
            shape: x.dims().to_vec(),
            expected_channels: channels,
        })
    }
}
