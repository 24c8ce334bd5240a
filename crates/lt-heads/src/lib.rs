//! Classifier heads for decoupled long-tailed recognition (Kang et al., ICLR 2020).
//!
//! Every head maps features `(N, d)` (f32) to logits `(N, C)` through the
//! [`Classifier`] trait (and candle's [`Module`](candle_core::Module)):
//!
//! | Head | Logit `z_j` | Trained | Type |
//! |---|---|---|---|
//! | joint / cRT | `w_j . f + b_j` | all | [`LinearHead`] |
//! | NCM | `-‖x - c_j‖²` (or `x . c_j / d`) | — | [`NcmHead`] |
//! | tau-norm | `(w_j / ‖w_j‖^tau) . f`, bias dropped | — | [`TauNormHead`] |
//! | LWS | `s_j (w_j . f + b_j)` | `s` | [`LwsHead`] |
//!
//! Trainable parameters are candle `Var`s registered in a `VarMap` under
//! torchvision names (`fc.weight`, `fc.bias`, `fc.scales`), and initial values
//! come from a seeded `ChaCha8Rng`, never from candle's unseedable CPU RNG.
//! The configuration enums ([`NcmFeature`], [`NcmDistance`], [`TauBias`],
//! [`CrtInit`]) deserialise from `snake_case` TOML and default to
//! the reference behaviour.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::VarMap;
//! use lt_heads::{
//!     select_tau, tau_grid, Classifier, LinearHead, LwsHead, NcmConfig, NcmHead, TauBias,
//!     TauNormHead,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let features = Tensor::new(&[[1f32, 0.0], [0.0, 2.0], [1.0, 1.0]], &dev)?;
//! let labels = [0u32, 1, 1];
//!
//! // Stage 1: a linear head initialised as PyTorch does, from a seed.
//! let varmap = VarMap::new();
//! let joint = LinearHead::new(&varmap, "fc", 2, 2, 42, &dev)?;
//! assert_eq!(joint.logits(&features)?.dims(), &[3, 2]);
//! assert!(varmap.data().lock().unwrap().contains_key("fc.weight"));
//!
//! // Stage 2 heads built on the joint head or on the training features.
//! let ncm = NcmHead::fit(&features, &labels, 2, NcmConfig::default())?;
//! let tau = TauNormHead::from_linear(&joint, 1.0, TauBias::Drop)?;
//! let lws = LwsHead::from_linear(&VarMap::new(), "fc", &joint)?;
//! for head in [&ncm as &dyn Classifier, &tau, &lws] {
//!     assert_eq!(head.logits(&features)?.dims(), &[3, 2]);
//! }
//!
//! // Pick tau from a validation sweep: best score, ties to the smallest tau.
//! let curve: Vec<(f64, f64)> = tau_grid().into_iter().map(|t| (t, -(t - 0.7).abs())).collect();
//! assert_eq!(select_tau(&curve)?, 0.7);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use candle_core::Tensor;

mod config;
mod error;
mod fold;
mod linear;
mod lws;
mod ncm;
mod tau_norm;
mod vars;

pub use config::{CrtInit, NcmConfig, NcmDistance, NcmFeature, UnknownName};
pub use error::HeadError;
pub use fold::{Fold, LinearLayer};
pub use linear::{
    cosine_logits, normalize_rows, pytorch_linear_init, LinearHead, COSINE_NOT_LINEAR,
};
pub use lt_core::TauBias;
pub use lws::LwsHead;
pub use ncm::NcmHead;
pub use tau_norm::{select_tau, tau_grid, TauNormHead};

/// The variable prefix of every head, as in torchvision (`fc.weight`, ...).
pub const DEFAULT_PREFIX: &str = "fc";

/// A classifier head: features `(N, d)` (f32) to logits `(N, C)`.
///
/// Implementations check the feature shape and dtype and fail with a message
/// naming the head rather than computing on a wrong input.
pub trait Classifier {
    /// Logits `(N, C)` of the features `(N, d)`.
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor>;

    /// `Some(s)` when the logits are cosine similarities times `s` (a cosine
    /// head, see [`LinearHead`], or one that rescales its classes, as LWS
    /// on it): a loss whose margin is defined on cosines (LDAM) needs to
    /// know. `None` (the default): ordinary logits.
    fn cosine_scale(&self) -> Option<f64> {
        None
    }

    /// The effective classifier weight `(C, d)`: the rows the logits are a dot
    /// product with (`w_j` for a linear head, `w_j / ||w_j||^tau` for tau-norm,
    /// `s_j w_j` for LWS). `None` for heads that are not a dot product (NCM).
    /// Reports plot the norm of each row.
    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    /// The head as one plain linear layer `z = W f + b` with the same logits
    /// (up to float rounding), or why it is not one (see [`Fold`]). Default:
    /// refused, so a new head is never folded by accident.
    fn fold(&self) -> candle_core::Result<Fold> {
        Ok(Fold::Refused(
            "the head does not say that its logits are a linear layer of the features".into(),
        ))
    }
}

/// The Euclidean norm of each row of the effective classifier weight (see
/// [`Classifier::class_weights`]), on the host.
pub fn class_weight_norms(head: &dyn Classifier) -> candle_core::Result<Option<Vec<f64>>> {
    let Some(w) = head.class_weights()? else {
        return Ok(None);
    };
    let norms = w
        .to_dtype(candle_core::DType::F64)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f64>()?;
    Ok(Some(norms))
}
