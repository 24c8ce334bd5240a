//! lt-models: the backbones of Kang et al., "Decoupling Representation and
//! Classifier for Long-Tailed Recognition" (ICLR 2020), in candle.
//!
//! A [`Backbone`] maps images `(N, 3, H, W)` to features `(N, d)`; classifier
//! heads live in `lt-heads`. Every convolution, pooling and batch norm goes
//! through [`ops`], whose CPU kernels carry their own backward passes.
//!
//! # Example
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_models::{Arch, Backbone, BnMode};
//!
//! let device = Device::Cpu;
//! let arch: Arch = "resnet8".parse()?; // or serde: `arch = "resnet32"`
//! let backbone = Backbone::new(arch, &device, 42)?;
//!
//! let images = Tensor::arange(0f32, 2.0 * 3.0 * 32.0 * 32.0, &device)?
//!     .reshape((2, 3, 32, 32))?
//!     .sin()?;
//! // Training mode: batch statistics, running statistics updated.
//! let features = backbone.forward_t(&images, BnMode::Train)?;
//! assert_eq!(features.dims(), &[2, backbone.feature_dim()]);
//!
//! // Trainable variables for the optimiser; BN running statistics are buffers.
//! let params = backbone.parameters();
//! assert!(params.iter().all(|(name, _)| !name.contains("running")));
//! assert_eq!(backbone.num_parameters(), 77_392);
//!
//! // Checkpoints: safetensors with torchvision names, written atomically.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("resnet8.safetensors");
//! backbone.save(&path)?;
//! let restored = Backbone::new(arch, &device, 7)?;
//! restored.load(&path)?;
//! let a = backbone.forward_t(&images, BnMode::Eval)?;
//! let b = restored.forward_t(&images, BnMode::Eval)?;
//! assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Loading an exported model
//!
//! `lt-cli export` writes one safetensors file: the backbone's tensors, the
//! chosen head folded into a plain linear layer `fc.weight` `(C, d)` /
//! `fc.bias` `(C)` (it gives the head's logits: the export test checks every
//! foldable head to 1e-5), and JSON metadata under the header key
//! `lt_export` (arch, class names, preprocessing preset and normalisation,
//! head, tau, source run). This crate alone runs it:
//!
//! ```
//! # use candle_core::{DType, Device, Tensor};
//! # use lt_models::{Arch, Backbone, BnMode};
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("model.safetensors");
//! # let dev = Device::Cpu;
//! # { // An exported file of a ResNet-8 with a 5-class head.
//! #     let mut t: Vec<(String, Tensor)> = Backbone::new(Arch::ResNet8, &dev, 0)?.state_dict()?.into_iter().collect();
//! #     t.push(("fc.weight".into(), Tensor::ones((5, 64), DType::F32, &dev)?));
//! #     t.push(("fc.bias".into(), Tensor::zeros(5, DType::F32, &dev)?));
//! #     let meta = std::collections::HashMap::from([("lt_export".to_string(), r#"{"arch":"resnet8"}"#.to_string())]);
//! #     std::fs::write(&path, safetensors::tensor::serialize(t.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))?)?;
//! # }
//! let bytes = std::fs::read(&path)?;
//! let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
//! let meta: serde_json::Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["lt_export"])?;
//! let arch: Arch = meta["arch"].as_str().unwrap().parse()?;
//! let backbone = Backbone::new(arch, &dev, 0)?;
//! backbone.load(&path)?; // every backbone tensor (fc.* is left to us)
//! let fc = lt_models::store::read_safetensors(&path, &dev)?;
//! let images = Tensor::zeros((2, 3, 32, 32), DType::F32, &dev)?; // preprocessed as the metadata says
//! let features = backbone.forward_t(&images, BnMode::Eval)?;
//! let logits = features.matmul(&fc["fc.weight"].t()?)?.broadcast_add(&fc["fc.bias"])?;
//! assert_eq!(logits.dims(), &[2, 5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Architectures
//!
//! | [`Arch`] (config name) | family | blocks per stage | feature dim | parameters (no fc) |
//! |---|---|---|---|---|
//! | `resnet8` | CIFAR | basic, 1 x 3 | 64 | 77,392 |
//! | `resnet20` | CIFAR | basic, 3 x 3 | 64 | 271,824 |
//! | `resnet32` | CIFAR | basic, 5 x 3 | 64 | 466,256 |
//! | `resnet56` | CIFAR | basic, 9 x 3 | 64 | 855,120 |
//! | `resnet32_ldam` | CIFAR, LDAM-DRW variant | basic, 5 x 3 | 64 | 463,504 |
//! | `resnet10` | ImageNet | basic `[1, 1, 1, 1]` | 512 | 4,905,792 |
//! | `resnet18` | ImageNet | basic `[2, 2, 2, 2]` | 512 | 11,176,512 |
//! | `resnet34` | ImageNet | basic `[3, 4, 6, 3]` | 512 | 21,284,672 |
//! | `resnet50` | ImageNet | bottleneck `[3, 4, 6, 3]` | 2048 | 23,508,032 |
//! | `resnet101` | ImageNet | bottleneck `[3, 4, 23, 3]` | 2048 | 42,500,160 |
//! | `resnet152` | ImageNet | bottleneck `[3, 8, 36, 3]` | 2048 | 58,143,808 |
//! | `resnext50_32x4d` | ImageNet | bottleneck `[3, 4, 6, 3]`, 32 groups | 2048 | 22,979,904 |
//! | `resnext101_32x4d` | ImageNet | bottleneck `[3, 4, 23, 3]`, 32 groups | 2048 | 42,128,704 |
//! | `resnext152_32x4d` | ImageNet | bottleneck `[3, 8, 36, 3]`, 32 groups | 2048 | 57,902,400 |
//!
//! The ImageNet family follows torchvision ([`resnet`]): 7x7/2 stem, 3x3/2
//! max-pool, stride on the bottleneck's 3x3. The CIFAR family ([`cifar_resnet`])
//! has a 3x3 stem, 16/32/64 channels and 1x1 conv + BN projection shortcuts;
//! `resnet32_ldam` is ResNet-32 as LDAM-DRW / MiSLAS build it, with the
//! parameter-free zero-padding shortcut and fan-in initialisation
//! ([`Shortcut`], [`ConvInit`]), for like-for-like comparisons with their
//! numbers. Both families end in global average pooling, so any input size works.
//!
//! Pretrained vision encoders are architectures too: `vit_s16`, `vit_b16`,
//! `vit_l16`, `dinov2_s14`, `dinov2_b14`, `dinov2_l14`, `clip_b32`,
//! `clip_b16`, `clip_l14`, `siglip_b16`, and `vit`, `dinov2`, `clip`,
//! `siglip` sized by their config JSON ([`Arch::ENCODERS`]). They are read
//! from Hugging Face style safetensors files and return pooled features; see
//! [`encoders`].
//!
//! # Initialisation and determinism
//!
//! Conv weights ~ N(0, 2 / (k² · C_out)) (groups ignored; `resnet32_ldam`:
//! N(0, 2 / (k² · C_in)), [`ConvInit::FanIn`]), BN γ = 1, β = 0,
//! running mean 0, running variance 1, all drawn from one
//! `rand_chacha::ChaCha8Rng` seeded with the model seed ([`init`]): the same
//! architecture and seed give bit-identical weights.
//!
//! # Batch norm and stage 2
//!
//! [`BnMode::Train`] normalises with batch statistics and updates the running
//! statistics (momentum 0.1, unbiased variance, eps 1e-5, as PyTorch);
//! [`BnMode::Eval`] uses the running statistics. The paper's cRT / LWS stage 2
//! freezes the backbone yet keeps BN in training mode: forward with
//! [`BnMode::Train`], give the optimiser no backbone parameters and detach the
//! features (see [`batch_norm`]). To fine-tune only the last stage (Places-LT),
//! train `backbone.parameters_with_prefix("layer4.")`.
//!
//! # Checkpoints
//!
//! Variables are named as in torchvision (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.downsample.1.weight`, ...), so a torchvision ResNet / ResNeXt
//! state dict converted to safetensors loads with [`Backbone::load_pretrained`].
//! Loading ignores `fc.*` and `num_batches_tracked`, strips `module.`
//! prefixes, converts dtypes, and reports every missing, unexpected or
//! mis-shaped key in one [`ModelError::IncompatibleCheckpoint`] without
//! touching the model ([`store`]).
//!
//! PyTorch checkpoints load as they are, without Python: [`Backbone::load`]
//! and [`Backbone::load_pretrained`] read `.pth` / `.pth.tar` files (both
//! `torch.save` formats) as well as safetensors, recognising torchvision
//! state dicts, training checkpoints wrapping one (`state_dict`), and the
//! classifier-balancing release (`feat_model` / `classifier`);
//! [`torch_import::convert`] writes one as safetensors ([`torch_import`]).

pub mod arch;
pub mod backbone;
pub mod batch_norm;
mod block;
pub mod cifar_resnet;
pub mod encoders;
pub mod error;
pub mod folded;
pub mod init;
pub mod ops;
pub mod precision;
pub mod resnet;
pub mod store;
pub mod sync_bn;
pub mod torch_import;

pub use arch::{Arch, ArchConfig, EncoderArch};
pub use backbone::Backbone;
pub use batch_norm::{BatchNorm2d, BnMode, BN_EPS, BN_MOMENTUM};
pub use cifar_resnet::{CifarResNet, CifarResNetConfig, Shortcut};
pub use encoders::{Encoder, EncoderConfig, EncoderFamily, Trainable};
pub use error::{ModelError, Result, ShapeMismatch, StateDictMismatch};
pub use folded::Inference;
pub use init::ConvInit;
pub use precision::Precision;
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use store::{LoadReport, ParamStore};
