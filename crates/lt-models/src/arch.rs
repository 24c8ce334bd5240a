//! The catalogue of backbone architectures.

use crate::cifar_resnet::CifarResNetConfig;
use crate::encoders::{EncoderConfig, EncoderFamily};
use crate::error::ModelError;
use crate::resnet::ResNetConfig;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every backbone the crate builds, by its configuration-file name.
///
/// The serde and [`FromStr`]/[`fmt::Display`] names are the lower-case
/// torchvision-style ones: `resnet32`, `resnet50`, `resnext50_32x4d`, ...;
/// `resnet32_ldam` is the LDAM-DRW variant of `resnet32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// CIFAR ResNet-8: 3 stages of 1 basic block, 64-d features.
    #[serde(rename = "resnet8")]
    ResNet8,
    /// CIFAR ResNet-20: 3 stages of 3 basic blocks, 64-d features.
    #[serde(rename = "resnet20")]
    ResNet20,
    /// CIFAR ResNet-32: 3 stages of 5 basic blocks, 64-d features.
    #[serde(rename = "resnet32")]
    ResNet32,
    /// CIFAR ResNet-56: 3 stages of 9 basic blocks, 64-d features.
    #[serde(rename = "resnet56")]
    ResNet56,
    /// CIFAR ResNet-32 as LDAM-DRW builds it (`models/resnet_cifar.py`,
    /// [`CifarResNetConfig::ldam_drw`]), the backbone behind the published
    /// LDAM-DRW numbers and those of methods that reuse its code (MiSLAS,
    /// ...); 64-d features.
    ///
    /// It differs from [`Arch::ResNet32`] in two ways, both in the network
    /// the published numbers were trained with:
    ///
    /// * the two stage-transition blocks use the parameter-free zero-padding
    ///   shortcut ("option A": subsample, pad the new channels with zeros)
    ///   instead of a 1x1 conv + BN projection. That removes 2,752 parameters
    ///   (463,504 instead of 466,256 without the classifier; 0.47M with a
    ///   100-class linear layer, the count the papers report) and two BN
    ///   layers, and changes what the residual path carries into stages 2
    ///   and 3;
    /// * every conv is initialised with PyTorch's `kaiming_normal_` defaults,
    ///   `std = sqrt(2 / fan_in)` (`k² · c_in`), instead of the fan-out
    ///   `sqrt(2 / (k² · c_out))`: the first conv of each stage-transition
    ///   block starts with a √2 larger std, the stem conv with a ~2.3x larger one.
    ///
    /// A result on `resnet32` is therefore not like for like with those
    /// papers' tables (the gaps between CIFAR-LT methods are often a point
    /// or less); train on this arch to compare with them. Checkpoints use
    /// the same names as `resnet32` minus `layer{2,3}.0.downsample.*`.
    #[serde(rename = "resnet32_ldam")]
    ResNet32Ldam,
    /// ImageNet ResNet-10: basic blocks `[1, 1, 1, 1]`, 512-d features.
    #[serde(rename = "resnet10")]
    ResNet10,
    /// ImageNet ResNet-18: basic blocks `[2, 2, 2, 2]`, 512-d features.
    #[serde(rename = "resnet18")]
    ResNet18,
    /// ImageNet ResNet-34: basic blocks `[3, 4, 6, 3]`, 512-d features.
    #[serde(rename = "resnet34")]
    ResNet34,
    /// ImageNet ResNet-50: bottlenecks `[3, 4, 6, 3]`, 2048-d features.
    #[serde(rename = "resnet50")]
    ResNet50,
    /// ImageNet ResNet-101: bottlenecks `[3, 4, 23, 3]`, 2048-d features.
    #[serde(rename = "resnet101")]
    ResNet101,
    /// ImageNet ResNet-152: bottlenecks `[3, 8, 36, 3]`, 2048-d features.
    #[serde(rename = "resnet152")]
    ResNet152,
    /// ResNeXt-50 32x4d: bottlenecks `[3, 4, 6, 3]`, 32 groups, 2048-d features.
    Resnext50_32x4d,
    /// ResNeXt-101 32x4d: bottlenecks `[3, 4, 23, 3]`, 32 groups, 2048-d features.
    Resnext101_32x4d,
    /// ResNeXt-152 32x4d: bottlenecks `[3, 8, 36, 3]`, 32 groups, 2048-d features.
    Resnext152_32x4d,
    /// ViT-S/16 at 224 (HF `ViTModel` layout), 384-d features.
    #[serde(rename = "vit_s16")]
    VitS16,
    /// ViT-B/16 at 224 (google/vit-base-patch16-224[-in21k]), 768-d features.
    #[serde(rename = "vit_b16")]
    VitB16,
    /// ViT-L/16 at 224 (google/vit-large-patch16-224[-in21k]), 1024-d features.
    #[serde(rename = "vit_l16")]
    VitL16,
    /// ViT of any size, read from the encoder config JSON.
    Vit,
    /// DINOv2 ViT-S/14 (original release layout), 384-d features.
    #[serde(rename = "dinov2_s14")]
    Dinov2S14,
    /// DINOv2 ViT-B/14, 768-d features.
    #[serde(rename = "dinov2_b14")]
    Dinov2B14,
    /// DINOv2 ViT-L/14, 1024-d features.
    #[serde(rename = "dinov2_l14")]
    Dinov2L14,
    /// DINOv2 of any size, read from the encoder config JSON.
    Dinov2,
    /// CLIP ViT-B/32 vision tower (openai/clip-vit-base-patch32), 768-d features.
    #[serde(rename = "clip_b32")]
    ClipB32,
    /// CLIP ViT-B/16 vision tower (openai/clip-vit-base-patch16), 768-d features.
    #[serde(rename = "clip_b16")]
    ClipB16,
    /// CLIP ViT-L/14 vision tower (openai/clip-vit-large-patch14), 1024-d features.
    #[serde(rename = "clip_l14")]
    ClipL14,
    /// CLIP vision tower of any size, read from the encoder config JSON.
    Clip,
    /// SigLIP ViT-B/16 vision tower (google/siglip-base-patch16-224), 768-d features.
    #[serde(rename = "siglip_b16")]
    SiglipB16,
    /// SigLIP vision tower of any size, read from the encoder config JSON.
    Siglip,
}

/// An encoder architecture: its family and, for the sized names, the
/// standard size (`None`: the size comes from the encoder config JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderArch {
    /// The model code.
    pub family: EncoderFamily,
    /// Width letter (`s`, `b`, `l`) and patch side of a sized name.
    pub size: Option<(char, usize)>,
}

impl EncoderArch {
    /// The configuration of a sized name.
    pub fn standard(self) -> Option<EncoderConfig> {
        self.size
            .map(|(w, p)| EncoderConfig::standard(self.family, w, p))
    }

    /// The standard configuration, or the family's default one.
    pub fn standard_or_default(self) -> EncoderConfig {
        self.standard()
            .unwrap_or_else(|| EncoderConfig::family_default(self.family))
    }
}

/// The two backbone families, with their configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchConfig {
    /// A CIFAR ResNet (3x3 stem, three stages, 32x32 inputs).
    Cifar(CifarResNetConfig),
    /// A torchvision-layout ResNet / ResNeXt (7x7 stem, four stages).
    ImageNet(ResNetConfig),
    /// A pretrained vision encoder (see [`crate::encoders`]).
    Encoder(EncoderArch),
}

impl Arch {
    /// Every encoder architecture ([`crate::encoders`]), by family.
    pub const ENCODERS: [Arch; 14] = [
        Arch::VitS16,
        Arch::VitB16,
        Arch::VitL16,
        Arch::Vit,
        Arch::Dinov2S14,
        Arch::Dinov2B14,
        Arch::Dinov2L14,
        Arch::Dinov2,
        Arch::ClipB32,
        Arch::ClipB16,
        Arch::ClipL14,
        Arch::Clip,
        Arch::SiglipB16,
        Arch::Siglip,
    ];

    /// Every convolutional architecture, CIFAR ones first (the encoders are
    /// in [`Arch::ENCODERS`]).
    pub const ALL: [Arch; 14] = [
        Arch::ResNet8,
        Arch::ResNet20,
        Arch::ResNet32,
        Arch::ResNet56,
        Arch::ResNet32Ldam,
        Arch::ResNet10,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::Resnext50_32x4d,
        Arch::Resnext101_32x4d,
        Arch::Resnext152_32x4d,
    ];

    /// The name used in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet8 => "resnet8",
            Arch::ResNet20 => "resnet20",
            Arch::ResNet32 => "resnet32",
            Arch::ResNet56 => "resnet56",
            Arch::ResNet32Ldam => "resnet32_ldam",
            Arch::ResNet10 => "resnet10",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::Resnext50_32x4d => "resnext50_32x4d",
            Arch::Resnext101_32x4d => "resnext101_32x4d",
            Arch::Resnext152_32x4d => "resnext152_32x4d",
            Arch::VitS16 => "vit_s16",
            Arch::VitB16 => "vit_b16",
            Arch::VitL16 => "vit_l16",
            Arch::Vit => "vit",
            Arch::Dinov2S14 => "dinov2_s14",
            Arch::Dinov2B14 => "dinov2_b14",
            Arch::Dinov2L14 => "dinov2_l14",
            Arch::Dinov2 => "dinov2",
            Arch::ClipB32 => "clip_b32",
            Arch::ClipB16 => "clip_b16",
            Arch::ClipL14 => "clip_l14",
            Arch::Clip => "clip",
            Arch::SiglipB16 => "siglip_b16",
            Arch::Siglip => "siglip",
        }
    }

    /// The architecture's configuration.
    pub fn config(self) -> ArchConfig {
        use ArchConfig::{Cifar, ImageNet};
        match self {
            Arch::ResNet8 => Cifar(CifarResNetConfig::from_depth(8)),
            Arch::ResNet20 => Cifar(CifarResNetConfig::from_depth(20)),
            Arch::ResNet32 => Cifar(CifarResNetConfig::from_depth(32)),
            Arch::ResNet56 => Cifar(CifarResNetConfig::from_depth(56)),
            Arch::ResNet32Ldam => Cifar(CifarResNetConfig::ldam_drw(32)),
            Arch::ResNet10 => ImageNet(ResNetConfig::resnet10()),
            Arch::ResNet18 => ImageNet(ResNetConfig::resnet18()),
            Arch::ResNet34 => ImageNet(ResNetConfig::resnet34()),
            Arch::ResNet50 => ImageNet(ResNetConfig::resnet50()),
            Arch::ResNet101 => ImageNet(ResNetConfig::resnet101()),
            Arch::ResNet152 => ImageNet(ResNetConfig::resnet152()),
            Arch::Resnext50_32x4d => ImageNet(ResNetConfig::resnext50_32x4d()),
            Arch::Resnext101_32x4d => ImageNet(ResNetConfig::resnext101_32x4d()),
            Arch::Resnext152_32x4d => ImageNet(ResNetConfig::resnext152_32x4d()),
            _ => {
                let (family, size) = self.encoder_parts();
                ArchConfig::Encoder(EncoderArch { family, size })
            }
        }
    }

    fn encoder_parts(self) -> (EncoderFamily, Option<(char, usize)>) {
        use EncoderFamily::{Clip, Dinov2, Siglip, Vit};
        match self {
            Arch::VitS16 => (Vit, Some(('s', 16))),
            Arch::VitB16 => (Vit, Some(('b', 16))),
            Arch::VitL16 => (Vit, Some(('l', 16))),
            Arch::Dinov2S14 => (Dinov2, Some(('s', 14))),
            Arch::Dinov2B14 => (Dinov2, Some(('b', 14))),
            Arch::Dinov2L14 => (Dinov2, Some(('l', 14))),
            Arch::Dinov2 => (Dinov2, None),
            Arch::ClipB32 => (Clip, Some(('b', 32))),
            Arch::ClipB16 => (Clip, Some(('b', 16))),
            Arch::ClipL14 => (Clip, Some(('l', 14))),
            Arch::Clip => (Clip, None),
            Arch::SiglipB16 => (Siglip, Some(('b', 16))),
            Arch::Siglip => (Siglip, None),
            _ => (Vit, None),
        }
    }

    /// The encoder family and size, for the encoder architectures.
    pub fn encoder(self) -> Option<EncoderArch> {
        match self.config() {
            ArchConfig::Encoder(e) => Some(e),
            _ => None,
        }
    }

    /// True for the CIFAR family (32x32 inputs, 3x3 stem, no max-pool).
    pub fn is_cifar(self) -> bool {
        matches!(self.config(), ArchConfig::Cifar(_))
    }

    /// Length of the feature vector `forward_t` returns (for the encoders
    /// sized by their config JSON, `vit`, `dinov2`, `clip` and `siglip`, that
    /// of the family's default base size; the built backbone knows the actual one).
    pub fn feature_dim(self) -> usize {
        match self.config() {
            ArchConfig::Cifar(c) => c.feature_dim(),
            ArchConfig::ImageNet(c) => c.feature_dim(),
            ArchConfig::Encoder(e) => e.standard_or_default().hidden_size,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Parses the names [`Arch::name`] returns (case-insensitive, `-` accepted for `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Arch::ALL
            .into_iter()
            .chain(Arch::ENCODERS)
            .find(|a| a.name() == wanted)
            .ok_or_else(|| ModelError::UnknownArch {
                name: s.to_string(),
                expected: Arch::ALL
                    .into_iter()
                    .chain(Arch::ENCODERS)
                    .map(Arch::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
