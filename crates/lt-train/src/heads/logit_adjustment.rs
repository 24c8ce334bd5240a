//! Post-hoc logit adjustment (Menon et al., ICLR 2021): the joint head's
//! logits minus τ·log π, with π the training class prior, τ chosen on the
//! selection split over the tau grid (`eval.tau_grid`, default 0, 0.1, ...,
//! 2.0). The sweep is kept in `results.json`, so the paper's τ = 1 is
//! reported too (its point of the curve, on the reported split).

use candle_core::Tensor;
use lt_core::{TauBias, TauSelect};
use lt_heads::{tau_grid, Classifier, LinearHead};

use super::{Built, HeadContext, HeadMethod};
use crate::TrainError;

/// `posthoc_la`: z − τ·log π on the stage-1 joint head.
#[derive(Debug)]
pub struct PosthocLogitAdjustment;

/// The joint head with its logits shifted by −τ·log π.
#[derive(Debug, Clone)]
pub struct AdjustedHead {
    head: LinearHead,
    /// τ·log π_j, `(C,)`.
    shift: Tensor,
}

impl AdjustedHead {
    /// The adjusted head for a training split with `class_counts` (every
    /// class needs an image: log 0 is not a shift).
    pub fn new(head: &LinearHead, class_counts: &[usize], tau: f64) -> Result<Self, TrainError> {
        let shift: Vec<f32> = lt_core::stats::ClassStats::from_counts(class_counts.to_vec())
            .log_prior()
            .map_err(|c| {
                TrainError::Invalid(format!(
                    "post-hoc logit adjustment: class {c} has no training image"
                ))
            })?
            .into_iter()
            .map(|l| (tau * l) as f32)
            .collect();
        Ok(AdjustedHead {
            head: head.clone(),
            shift: Tensor::new(shift.as_slice(), head.weight().device())?,
        })
    }
}

impl Classifier for AdjustedHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        self.head.logits(features)?.broadcast_sub(&self.shift)
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        // The weights are the joint head's; only the biases move.
        self.head.class_weights()
    }

    /// A bias shift of the joint head: `b_j - tau log pi_j`.
    fn fold(&self) -> candle_core::Result<lt_heads::Fold> {
        self.head.fold()?.map(|l| l.shift_bias(&self.shift))
    }
}

impl HeadMethod for PosthocLogitAdjustment {
    fn name(&self) -> &'static str {
        "posthoc_la"
    }

    fn label(&self) -> &'static str {
        "LA (post-hoc)"
    }

    fn about(&self) -> &'static str {
        "joint head with logits z - tau log(prior), tau chosen on val (Menon et al.)"
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        let exp = ctx.exp;
        let counts = exp.train_stats.counts();
        let grid = exp.config.eval.tau_grid.clone().unwrap_or_else(tau_grid);
        // Without the selection split there is nothing to choose on: the
        // paper's tau = 1.
        let (grid, selection) = if exp.dataset(exp.config.eval.tau_select_split).is_ok() {
            (grid, TauSelect::SweepOnVal)
        } else {
            (vec![1.0], TauSelect::Fixed)
        };
        let sweep = super::sweep_tau(exp, ctx.features, &grid, selection, TauBias::Keep, |tau| {
            Ok(Box::new(AdjustedHead::new(&ctx.stage1.head, counts, tau)?))
        })?;
        let head = AdjustedHead::new(&ctx.stage1.head, counts, sweep.chosen)?;
        let mut built = ctx.stage1_built(Box::new(head));
        built.tau = Some(sweep.chosen);
        built.tau_sweep = Some(sweep);
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn logits_are_shifted_by_tau_log_prior() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
        let joint = LinearHead::from_tensors(&VarMap::new(), "fc", &w, &b).unwrap();
        let head = AdjustedHead::new(&joint, &[30, 10], 2.0).unwrap();
        let f = Tensor::new(&[[1f32, 2.0]], &dev).unwrap();
        let z = head.logits(&f).unwrap().to_vec2::<f32>().unwrap();
        // z = W f + b - 2 log(0.75, 0.25).
        let want = [1.5 - 2.0 * 0.75f32.ln(), 1.5 - 2.0 * 0.25f32.ln()];
        assert!((z[0][0] - want[0]).abs() < 1e-5 && (z[0][1] - want[1]).abs() < 1e-5);
        // tau = 0 is the joint head.
        let same = AdjustedHead::new(&joint, &[30, 10], 0.0).unwrap();
        assert_eq!(
            same.logits(&f).unwrap().to_vec2::<f32>().unwrap(),
            joint.logits(&f).unwrap().to_vec2::<f32>().unwrap()
        );
        assert!(AdjustedHead::new(&joint, &[30, 0], 1.0).is_err());
    }
}
