//! Label-aware smoothing (MiSLAS, Zhong et al., CVPR 2021), as
//! `dvlab-research/MiSLAS` computes it.
//!
//! Class j gets its own smoothing ε_j between `smooth_head` (the largest
//! class) and `smooth_tail` (the smallest), and the loss of an image of class
//! y is (1 − ε_y)·(−log p_y) + ε_y·mean_k(−log p_k). How ε falls from head to
//! tail is the `shape`: `concave` (the code's default,
//! ε_tail + (ε_head − ε_tail)·sin(π/2 · (n_j − n_min)/(n_max − n_min))),
//! `linear`, or `convex`. The paper's text describes ε as decreasing with the
//! class size without fixing the function; the code's default is kept.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::{float_option, only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// How ε_j falls from the largest class to the smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmoothingShape {
    /// sin(π/2 · t): the MiSLAS code's default.
    #[default]
    Concave,
    /// t.
    Linear,
    /// 1 + sin(3π/2 + π/2 · t) = 1 − cos(π/2 · t).
    Convex,
}

/// The per-class smoothing ε_j (t = (n_j − n_min)/(n_max − n_min); with every
/// class the same size, t = 1: every class is a head class).
pub fn label_aware_epsilons(
    counts: &[usize],
    smooth_head: f64,
    smooth_tail: f64,
    shape: SmoothingShape,
) -> Vec<f64> {
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    counts
        .iter()
        .map(|&n| {
            let t = if max > min {
                (n as f64 - min) / (max - min)
            } else {
                1.0
            };
            let f = match shape {
                SmoothingShape::Concave => (std::f64::consts::FRAC_PI_2 * t).sin(),
                SmoothingShape::Linear => t,
                SmoothingShape::Convex => 1.0 - (std::f64::consts::FRAC_PI_2 * t).cos(),
            };
            smooth_tail + (smooth_head - smooth_tail) * f
        })
        .collect()
}

/// The built loss.
#[derive(Debug, Clone)]
pub struct LabelAwareSmoothingLoss {
    epsilons: Vec<f32>,
}

impl Loss for LabelAwareSmoothingLoss {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        let labels = labels.to_dtype(DType::U32)?;
        let eps = Tensor::new(self.epsilons.as_slice(), logits.device())?
            .to_dtype(logits.dtype())?
            .index_select(&labels, 0)?;
        let (lsm, nll) = super::log_softmax_and_nll(logits, &labels)?;
        let uniform = lsm.mean(1)?.neg()?;
        let keep = eps.affine(-1.0, 1.0)?;
        ((nll * keep)? + (uniform * eps)?)?.mean_all()
    }
}

/// `kind = "label_aware_smoothing"`: options `smooth_head` (0.4),
/// `smooth_tail` (0.1), `shape` (`concave`, `linear`, `convex`).
#[derive(Debug, Clone, Copy)]
pub struct LabelAwareSmoothing;

fn shape_option(options: &toml::Table) -> Result<SmoothingShape, ConfigError> {
    match options.get("shape") {
        None => Ok(SmoothingShape::default()),
        Some(v) => v.clone().try_into().map_err(|_| {
            ConfigError::at(
                "shape",
                format!("must be \"concave\", \"linear\" or \"convex\", got {v}"),
            )
        }),
    }
}

impl LossKind for LabelAwareSmoothing {
    fn id(&self) -> &'static str {
        "label_aware_smoothing"
    }

    fn about(&self) -> &'static str {
        "MiSLAS label-aware smoothing: eps from smooth_head (largest class) to smooth_tail"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &["smooth_head", "smooth_tail", "shape"])?;
        let unit = |v: f64| (0.0..1.0).contains(&v);
        float_option(options, "smooth_head", 0.4, unit, "in [0, 1)")?;
        float_option(options, "smooth_tail", 0.1, unit, "in [0, 1)")?;
        shape_option(options)?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let any = |_: f64| true;
        let head = float_option(options, "smooth_head", 0.4, any, "")?;
        let tail = float_option(options, "smooth_tail", 0.1, any, "")?;
        let epsilons = label_aware_epsilons(ctx.class_counts, head, tail, shape_option(options)?)
            .into_iter()
            .map(|e| e as f32)
            .collect();
        Ok(Box::new(LabelAwareSmoothingLoss { epsilons }))
    }
}
