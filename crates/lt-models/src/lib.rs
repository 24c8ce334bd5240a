//! lt-models: the paper's backbones in candle.

pub mod arch;
pub mod backbone;
pub mod batch_norm;
mod block;
pub mod cifar_resnet;
pub mod error;
pub mod init;
pub mod ops;
pub mod resnet;
pub mod store;

pub use arch::{Arch, ArchConfig};
pub use backbone::Backbone;
pub use batch_norm::{BatchNorm2d, BnMode, BN_EPS, BN_MOMENTUM};
pub use cifar_resnet::{CifarResNet, CifarResNetConfig};
pub use error::{ModelError, Result, ShapeMismatch, StateDictMismatch};
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use store::{LoadReport, ParamStore};
