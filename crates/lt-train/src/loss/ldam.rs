//! LDAM with deferred re-weighting (Cao et al., NeurIPS 2019), as
//! `kaidic/LDAM-DRW` trains it.
//!
//! * **LDAM**: the label-dependent margin Δ_j = C / n_j^{1/4}, with C chosen
//!   so that the largest margin is `max_m` (0.5), is subtracted from the
//!   logit of the true class only, then every logit is multiplied by the
//!   scale `s` (30) before softmax cross-entropy. The reference applies it to
//!   a cosine classifier (normalised weight, normalised feature): use it with
//!   `model.classifier = "cosine"`. That head already multiplies its cosines
//!   by its own scale s_h (`model.cosine_scale`, also 30 by default, so that
//!   evaluation sees the logits training saw), so on it the loss computes
//!   s · (z / s_h − Δ_y) = (s / s_h) · z − s · Δ_y: the reference's value.
//!   With s = s_h the factor is exactly 1.
//! * **DRW**: from epoch `drw_start · epochs` (0-based, 160 of 200 in the
//!   reference) the cross-entropy is weighted per class with the
//!   effective-number weights (1 − β)/(1 − β^{n_j}), β = 0.9999, normalised
//!   to sum to C, and reduced as a weighted mean (PyTorch's
//!   `cross_entropy(weight=...)`); before it every weight is 1.

use candle_core::{DType, Tensor};

use super::weights::{effective_number_weights, weighted_cross_entropy};
use super::{float_option, only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// The built loss.
#[derive(Debug, Clone)]
pub struct LdamLoss {
    margins: Vec<f32>,
    scale: f64,
    /// The head's own scale when its logits are scaled cosines.
    head_scale: Option<f64>,
    /// First epoch (0-based) of the re-weighting; `None`: never.
    drw_from: Option<usize>,
    drw_weights: Vec<f32>,
}

impl LdamLoss {
    /// The margins Δ_j = C / n_j^{1/4} with max_j Δ_j = `max_m`.
    pub fn margins(class_counts: &[usize], max_m: f64) -> Vec<f64> {
        let raw: Vec<f64> = class_counts
            .iter()
            .map(|&n| 1.0 / (n as f64).sqrt().sqrt())
            .collect();
        let max = raw.iter().copied().fold(f64::MIN, f64::max);
        raw.into_iter().map(|m| m * max_m / max).collect()
    }

    /// The per-class weights at `epoch` (all 1 before DRW starts).
    pub fn class_weights(&self, epoch: usize) -> Option<&[f32]> {
        match self.drw_from {
            Some(from) if epoch >= from => Some(&self.drw_weights),
            _ => None,
        }
    }
}

impl Loss for LdamLoss {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        epoch: usize,
    ) -> candle_core::Result<Tensor> {
        let labels = labels.to_dtype(DType::U32)?;
        let (_, c) = logits.dims2()?;
        let margins = Tensor::new(self.margins.as_slice(), logits.device())?
            .to_dtype(logits.dtype())?
            .index_select(&labels, 0)?
            .unsqueeze(1)?;
        // One-hot of the labels times each row's margin: only the true
        // class's logit moves.
        let classes = Tensor::arange(0u32, c as u32, logits.device())?.unsqueeze(0)?;
        let one_hot = classes
            .broadcast_eq(&labels.unsqueeze(1)?)?
            .to_dtype(logits.dtype())?;
        let scaled = match self.head_scale {
            // Affine logits, or a loss built without the head's scale: the
            // reference's arithmetic, s · (z − Δ_y).
            None => ((logits - one_hot.broadcast_mul(&margins)?)? * self.scale)?,
            // z = s_h · cos: (s / s_h) · z − s · Δ_y.
            Some(head) => {
                let z = if head == self.scale {
                    logits.clone()
                } else {
                    (logits * (self.scale / head))?
                };
                (z - (one_hot.broadcast_mul(&margins)? * self.scale)?)?
            }
        };
        match self.class_weights(epoch) {
            Some(w) => weighted_cross_entropy(&scaled, &labels, w),
            None => candle_nn::loss::cross_entropy(&scaled, &labels),
        }
    }
}

/// `kind = "ldam_drw"`: options `max_m` (0.5), `s` (30), `drw` (true),
/// `drw_start` (0.8, the fraction of the stage's epochs after which the
/// re-weighting starts), `beta` (0.9999).
#[derive(Debug, Clone, Copy)]
pub struct LdamDrw;

const KEYS: [&str; 5] = ["max_m", "s", "drw", "drw_start", "beta"];

fn drw_option(options: &toml::Table) -> Result<bool, ConfigError> {
    match options.get("drw") {
        None => Ok(true),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(other) => Err(ConfigError::at(
            "drw",
            format!("must be true or false, got {other}"),
        )),
    }
}

impl LossKind for LdamDrw {
    fn id(&self) -> &'static str {
        "ldam_drw"
    }

    fn about(&self) -> &'static str {
        "LDAM margins C/n^(1/4) (max 0.5, scale 30) with deferred re-weighting (Cao et al.)"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &KEYS)?;
        float_option(options, "max_m", 0.5, |v| v > 0.0, "> 0")?;
        float_option(options, "s", 30.0, |v| v > 0.0, "> 0")?;
        float_option(
            options,
            "drw_start",
            0.8,
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )?;
        float_option(
            options,
            "beta",
            0.9999,
            |v| (0.0..1.0).contains(&v),
            "in [0, 1)",
        )?;
        drw_option(options)?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let any = |_: f64| true;
        let max_m = float_option(options, "max_m", 0.5, any, "")?;
        let scale = float_option(options, "s", 30.0, any, "")?;
        let start = float_option(options, "drw_start", 0.8, any, "")?;
        let beta = float_option(options, "beta", 0.9999, any, "")?;
        super::require_every_class(ctx.class_counts, "LDAM margin")?;
        let drw_from = drw_option(options)?.then(|| (start * ctx.epochs as f64).round() as usize);
        Ok(Box::new(LdamLoss {
            margins: Self::margins_f32(ctx.class_counts, max_m),
            scale,
            head_scale: ctx.cosine_scale,
            drw_from,
            drw_weights: effective_number_weights(ctx.class_counts, beta)
                .into_iter()
                .map(|w| w as f32)
                .collect(),
        }))
    }
}

impl LdamDrw {
    fn margins_f32(counts: &[usize], max_m: f64) -> Vec<f32> {
        LdamLoss::margins(counts, max_m)
            .into_iter()
            .map(|m| m as f32)
            .collect()
    }
}
