//! tau-norm: the joint head with each class weight divided by its norm to the
//! power tau, tau chosen on a split (or fixed).

use lt_core::TauSelect;
use lt_heads::{tau_grid, TauNormHead};
use lt_run::TauSweep;

use super::{Built, FeatureCache, HeadContext, HeadMethod};
use crate::experiment::Experiment;
use crate::model::Network;
use crate::TrainError;

/// `tau_norm`: settings `eval.tau_grid`, `eval.tau_bias`, `eval.tau_select`,
/// `eval.tau`, `eval.tau_select_split`.
#[derive(Debug)]
pub struct TauNorm;

impl HeadMethod for TauNorm {
    fn name(&self) -> &'static str {
        "tau_norm"
    }

    fn label(&self) -> &'static str {
        "τ-norm"
    }

    fn about(&self) -> &'static str {
        "joint head with w_j / ||w_j||^tau, bias dropped, tau swept on val (or fixed)"
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        let sweep = sweep(ctx.exp, ctx.stage1, ctx.features)?;
        let head =
            TauNormHead::from_linear(&ctx.stage1.head, sweep.chosen, ctx.exp.config.eval.tau_bias)?;
        let mut built = ctx.stage1_built(Box::new(head));
        built.tau = Some(sweep.chosen);
        built.tau_sweep = Some(sweep);
        Ok(built)
    }
}

/// Sweeps tau over the grid on the joint head (see [`TauSweep`]).
pub fn sweep(
    exp: &Experiment,
    net: &Network,
    feats: &FeatureCache<'_>,
) -> Result<TauSweep, TrainError> {
    let ec = &exp.config.eval;
    let grid = match (ec.tau_select, &ec.tau_grid) {
        (TauSelect::Fixed, _) => vec![ec.tau.unwrap_or(1.0)],
        (_, Some(g)) => g.clone(),
        (_, None) => tau_grid(),
    };
    super::sweep_tau(exp, feats, &grid, ec.tau_select, ec.tau_bias, |tau| {
        Ok(Box::new(TauNormHead::from_linear(
            &net.head,
            tau,
            ec.tau_bias,
        )?))
    })
}
