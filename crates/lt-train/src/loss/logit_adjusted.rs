//! The logit-adjusted loss (Menon et al., ICLR 2021) and its τ = 1 case,
//! Balanced Softmax (Ren et al., NeurIPS 2020).
//!
//! Softmax cross-entropy on the adjusted logits z_j + τ·log π_j, with π the
//! training class prior n_j / N: the loss asks more margin of the rare
//! classes, so that the plain logits z (used at test time) are calibrated for
//! a balanced test set. `balanced_softmax` is the same loss with τ fixed at 1,
//! accepted as a name of its own because the literature uses both.

use candle_core::Tensor;

use super::cross_entropy::smoothed_cross_entropy;
use super::{float_option, only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// The built loss: the adjustment τ·log π as a `(C,)` tensor.
#[derive(Debug, Clone)]
pub struct LogitAdjustedLoss {
    tau: f64,
    log_prior: Vec<f32>,
}

impl LogitAdjustedLoss {
    /// The loss for a training split with `class_counts`; every class needs
    /// at least one image (log 0 is not an adjustment).
    pub fn new(tau: f64, class_counts: &[usize]) -> Result<Self, ConfigError> {
        let log_prior = lt_core::stats::ClassStats::from_counts(class_counts.to_vec())
            .log_prior()
            .map_err(|c| {
                ConfigError::at(
                    "kind",
                    format!("class {c} has no training image: its prior log π is −∞"),
                )
            })?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        Ok(LogitAdjustedLoss { tau, log_prior })
    }
}

impl Loss for LogitAdjustedLoss {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        let adjust = (Tensor::new(self.log_prior.as_slice(), logits.device())?
            .to_dtype(logits.dtype())?
            * self.tau)?;
        smoothed_cross_entropy(&logits.broadcast_add(&adjust)?, labels, 0.0)
    }
}

/// `kind = "logit_adjusted"`, option `tau` (default 1, finite and >= 0).
#[derive(Debug, Clone, Copy)]
pub struct LogitAdjusted;

impl LossKind for LogitAdjusted {
    fn id(&self) -> &'static str {
        "logit_adjusted"
    }

    fn about(&self) -> &'static str {
        "cross-entropy on z + tau log(prior) (Menon et al.); option tau, default 1"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &["tau"])?;
        float_option(options, "tau", 1.0, |v| v >= 0.0, ">= 0")?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let tau = float_option(options, "tau", 1.0, |_| true, "")?;
        Ok(Box::new(LogitAdjustedLoss::new(tau, ctx.class_counts)?))
    }
}

/// `kind = "balanced_softmax"`: the logit-adjusted loss at τ = 1 (no options).
#[derive(Debug, Clone, Copy)]
pub struct BalancedSoftmax;

impl LossKind for BalancedSoftmax {
    fn id(&self) -> &'static str {
        "balanced_softmax"
    }

    fn about(&self) -> &'static str {
        "Balanced Softmax (Ren et al.): the logit-adjusted loss at tau = 1"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &[])
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        Ok(Box::new(LogitAdjustedLoss::new(1.0, ctx.class_counts)?))
    }
}
