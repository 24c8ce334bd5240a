//! tau-normalisation of the joint head and the choice of tau.

use crate::vars::{check_features, check_shape, matrix_dims};
use crate::{Classifier, HeadError, LinearHead, TauBias};
use candle_core::{Module, Tensor};

/// The joint head with each class row rescaled: `z_j = (w_j / ||w_j||^tau) . f`
/// (plus `b_j` only with [`TauBias::Keep`]).
///
/// The norm is the L2 norm of row `j` over the feature dimension. With the
/// reference [`TauBias::Drop`], tau = 0 gives `W f` (the joint head *without*
/// its bias) and tau = 1 gives unit-norm rows. Nothing here is trained; the
/// weights are detached copies.
///
/// A cosine joint head ([`LinearHead::is_cosine`]) scores with unit-norm
/// rows on normalised features, so every class row already has norm 1 and τ
/// has nothing to rescale: [`TauNormHead::from_linear`] keeps it a cosine
/// head whose logits are the joint head's for every τ (rescaling its raw,
/// unnormalised rows instead would score with norms the joint head never
/// used).
#[derive(Debug, Clone)]
pub struct TauNormHead {
    /// `(C, d)` rescaled weight.
    weight: Tensor,
    /// `(C)` bias, when kept.
    bias: Option<Tensor>,
    tau: f64,
    /// `Some(s)`: cosine logits, unit rows (above) against normalised
    /// features, times the joint head's scale `s`.
    cosine: Option<f64>,
}

impl TauNormHead {
    /// tau-normalises a trained joint head.
    /// A cosine head stays one, unchanged by τ (see the type docs).
    pub fn from_linear(linear: &LinearHead, tau: f64, bias: TauBias) -> Result<Self, HeadError> {
        if !linear.is_cosine() {
            return Self::new(linear.weight(), linear.bias(), tau, bias);
        }
        if !tau.is_finite() {
            return Err(HeadError::InvalidTau(tau));
        }
        Ok(Self {
            weight: crate::linear::normalize_rows(&linear.weight().detach())?,
            // A cosine head has no bias (its logits are cosines).
            bias: None,
            tau,
            cosine: linear.cosine_scale(),
        })
    }

    /// tau-normalises a weight `(C, d)` and bias `(C)` (f32), for example read
    /// from a checkpoint.
    ///
    /// Fails when tau is not finite, or when tau != 0 and a weight row is zero
    /// (its normalisation is undefined; the reference would produce NaN).
    pub fn new(weight: &Tensor, bias: &Tensor, tau: f64, mode: TauBias) -> Result<Self, HeadError> {
        if !tau.is_finite() {
            return Err(HeadError::InvalidTau(tau));
        }
        let (c, _) = matrix_dims("tau-norm weight", weight)?;
        check_shape("tau-norm bias", bias, &[c])?;
        let weight = weight.detach();
        let norms = weight.sqr()?.sum_keepdim(1)?.sqrt()?;
        if tau != 0.0 {
            let host = norms.flatten_all()?.to_vec1::<f32>()?;
            if let Some(class) = host.iter().position(|&n| n == 0.0) {
                return Err(HeadError::ZeroNormRow { class, tau });
            }
        }
        // ||w||^0 = 1 exactly, so tau = 0 leaves the weights bit-identical.
        let weight = weight.broadcast_div(&norms.powf(tau)?)?;
        let bias = match mode {
            TauBias::Drop => None,
            TauBias::Keep => Some(bias.detach().copy()?),
        };
        Ok(Self {
            weight,
            bias,
            tau,
            cosine: None,
        })
    }

    /// The tau this head was built with.
    pub fn tau(&self) -> f64 {
        self.tau
    }

    /// The rescaled weight `(C, d)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(C)`, when kept.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Classifier for TauNormHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        check_features("tau-norm head", features, self.weight.dims()[1])?;
        if let Some(scale) = self.cosine {
            return crate::linear::cosine_logits(features, &self.weight, scale);
        }
        let z = features.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => z.broadcast_add(b),
            None => Ok(z),
        }
    }

    fn cosine_scale(&self) -> Option<f64> {
        self.cosine
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.weight.clone()))
    }

    fn fold(&self) -> candle_core::Result<crate::Fold> {
        if self.cosine.is_some() {
            return Ok(crate::Fold::Refused(
                crate::linear::COSINE_NOT_LINEAR.into(),
            ));
        }
        Ok(crate::Fold::Linear(match &self.bias {
            Some(b) => crate::LinearLayer {
                weight: self.weight.clone(),
                bias: b.clone(),
            },
            None => crate::LinearLayer::without_bias(&self.weight)?,
        }))
    }
}

impl Module for TauNormHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(xs)
    }
}

/// The reference sweep `{0.0, 0.1, ..., 2.0}` (21 values).
///
/// Each value is computed as `i as f64 / 10.0` rather than by repeated addition
/// of 0.1, so that `0.3` really is the literal `0.3` and values can be compared,
/// printed and used as keys without drift.
pub fn tau_grid() -> Vec<f64> {
    (0..=20).map(|i| i as f64 / 10.0).collect()
}

/// Picks tau from a sweep `curve` of `(tau, score)` points, where a higher score
/// is better (for example validation accuracy).
///
/// Returns the tau of the best score; among exactly equal best scores, the
/// smallest tau (the mildest normalisation). Points whose tau or score is NaN or
/// infinite are ignored; the order of the points does not matter. Fails only
/// when no point is left.
pub fn select_tau(curve: &[(f64, f64)]) -> Result<f64, HeadError> {
    curve
        .iter()
        .filter(|(tau, score)| tau.is_finite() && score.is_finite())
        .fold(None, |best: Option<(f64, f64)>, &(tau, score)| match best {
            Some((bt, bs)) if bs > score || (bs == score && bt <= tau) => Some((bt, bs)),
            _ => Some((tau, score)),
        })
        .map(|(tau, _)| tau)
        .ok_or(HeadError::EmptyTauCurve)
}
