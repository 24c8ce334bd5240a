//! Re-weighted losses with a fixed weight per class: the class-balanced loss
//! (Cui et al., CVPR 2019) that Weight Balancing fine-tunes its classifier
//! with, and the generalised re-weighting of DisAlign.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::weights::{effective_number_weights, inverse_frequency_weights, weighted_cross_entropy};
use super::{float_option, only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// How the class-balanced weights enter the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CbForm {
    /// The reference code's `CB_loss(loss_type="softmax")`, which Weight
    /// Balancing calls: binary cross-entropy between the softmax
    /// probabilities and the one-hot label, every element of row i weighted
    /// by w_{y_i}, averaged over the B·C elements (logs clamped at −100 as
    /// PyTorch's `binary_cross_entropy`).
    #[default]
    SoftmaxBce,
    /// The paper's formula: softmax cross-entropy weighted by w_{y_i},
    /// averaged over the batch (Σ w ℓ / B).
    SoftmaxCe,
}

/// The class-balanced loss.
#[derive(Debug, Clone)]
pub struct ClassBalancedLoss {
    weights: Vec<f32>,
    form: CbForm,
}

impl Loss for ClassBalancedLoss {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        let labels = labels.to_dtype(DType::U32)?;
        let (_, c) = logits.dims2()?;
        let w = Tensor::new(self.weights.as_slice(), logits.device())?
            .to_dtype(logits.dtype())?
            .index_select(&labels, 0)?;
        match self.form {
            CbForm::SoftmaxCe => {
                let (_, nll) = super::log_softmax_and_nll(logits, &labels)?;
                (nll * w)?.mean_all()
            }
            CbForm::SoftmaxBce => {
                let classes = Tensor::arange(0u32, c as u32, logits.device())?.unsqueeze(0)?;
                let target = classes
                    .broadcast_eq(&labels.unsqueeze(1)?)?
                    .to_dtype(logits.dtype())?;
                // PyTorch clamps both logs at -100 and its backward divides
                // by max(p (1 - p), 1e-12). Here log p comes from
                // log-softmax (exact, finite gradient) and log(1 - p) is
                // taken of 1 - p + 1e-12, so no gradient is ever 1/0: the
                // values agree to ~1e-12 unless a wrong class holds all the
                // probability (where PyTorch's value is its clamp).
                let floor = -100.0;
                let log_p = candle_nn::ops::log_softmax(logits, 1)?.maximum(floor)?;
                let p = candle_nn::ops::softmax(logits, 1)?;
                let log_q = p
                    .affine(-1.0, 1.0)?
                    .affine(1.0, 1e-12)?
                    .log()?
                    .maximum(floor)?;
                let not_target = target.affine(-1.0, 1.0)?;
                let bce = ((target * log_p)? + (not_target * log_q)?)?.neg()?;
                bce.broadcast_mul(&w.unsqueeze(1)?)?.mean_all()
            }
        }
    }
}

/// `kind = "class_balanced"`: options `beta` (0.9999) and `form`
/// (`softmax_bce`, the code's; `softmax_ce`, the paper's).
#[derive(Debug, Clone, Copy)]
pub struct ClassBalanced;

fn form_option(options: &toml::Table) -> Result<CbForm, ConfigError> {
    match options.get("form") {
        None => Ok(CbForm::default()),
        Some(v) => v.clone().try_into().map_err(|_| {
            ConfigError::at(
                "form",
                format!("must be \"softmax_bce\" or \"softmax_ce\", got {v}"),
            )
        }),
    }
}

impl LossKind for ClassBalanced {
    fn id(&self) -> &'static str {
        "class_balanced"
    }

    fn about(&self) -> &'static str {
        "class-balanced loss (Cui et al.), effective-number weights; options beta, form"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &["beta", "form"])?;
        float_option(
            options,
            "beta",
            0.9999,
            |v| (0.0..1.0).contains(&v),
            "in [0, 1)",
        )?;
        form_option(options)?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let beta = float_option(options, "beta", 0.9999, |_| true, "")?;
        super::require_every_class(ctx.class_counts, "weight")?;
        Ok(Box::new(ClassBalancedLoss {
            weights: to_f32(effective_number_weights(ctx.class_counts, beta)),
            form: form_option(options)?,
        }))
    }
}

/// The generalised re-weighted cross-entropy of DisAlign.
#[derive(Debug, Clone)]
pub struct ReweightedLoss {
    weights: Vec<f32>,
}

impl Loss for ReweightedLoss {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        weighted_cross_entropy(logits, labels, &self.weights)
    }
}

/// `kind = "reweighted"`: cross-entropy weighted by (1 / r_j)^ρ (r_j the
/// class frequency, weights normalised to sum to C, weighted-mean
/// reduction), option `rho` (1.2, DisAlign's default).
#[derive(Debug, Clone, Copy)]
pub struct Reweighted;

impl LossKind for Reweighted {
    fn id(&self) -> &'static str {
        "reweighted"
    }

    fn about(&self) -> &'static str {
        "generalised re-weighting (DisAlign): weights (1/frequency)^rho; option rho, default 1.2"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &["rho"])?;
        float_option(options, "rho", 1.2, |v| v >= 0.0, ">= 0")?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let rho = float_option(options, "rho", 1.2, |_| true, "")?;
        super::require_every_class(ctx.class_counts, "weight")?;
        Ok(Box::new(ReweightedLoss {
            weights: to_f32(inverse_frequency_weights(ctx.class_counts, rho)),
        }))
    }
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|w| w as f32).collect()
}
