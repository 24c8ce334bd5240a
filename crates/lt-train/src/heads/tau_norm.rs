//! tau-norm: the joint head with each class weight divided by its norm to the
//! power tau, tau chosen on a split (or fixed).

use lt_core::TauSelect;
use lt_heads::{select_tau, tau_grid, TauNormHead};
use lt_run::{SplitMetrics, TauPoint, TauSweep};

use super::{Built, FeatureCache, HeadContext, HeadMethod};
use crate::eval::evaluate_head;
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
        "joint head with w_j / ||w_j||^tau, bias dropped, tau swept on val"
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
    let select_split = ec.tau_select_split;
    let report_split = exp.config.report_split();
    let grid = match (ec.tau_select, &ec.tau_grid) {
        (TauSelect::Fixed, _) => vec![ec.tau.unwrap_or(1.0)],
        (_, Some(g)) => g.clone(),
        (_, None) => tau_grid(),
    };
    let eval_on = |head: &TauNormHead, split| -> Result<SplitMetrics, TrainError> {
        let (e, loss) = evaluate_head(
            head,
            &feats.get(split)?,
            exp.num_classes(),
            &exp.train_stats,
            &ec.group_rule,
        )?;
        Ok(SplitMetrics::of(&e, loss))
    };
    let mut curve = Vec::with_capacity(grid.len());
    for &tau in &grid {
        let head = TauNormHead::from_linear(&net.head, tau, ec.tau_bias)?;
        let select = eval_on(&head, select_split)?;
        let report = if report_split != select_split {
            Some(eval_on(&head, report_split)?)
        } else {
            None
        };
        curve.push(TauPoint {
            tau,
            select,
            report,
        });
    }
    let chosen = match ec.tau_select {
        TauSelect::Fixed => grid[0],
        TauSelect::SweepOnVal => {
            let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.tau, p.select.top1)).collect();
            select_tau(&pts)?
        }
    };
    Ok(TauSweep {
        select_split,
        report_split,
        bias: ec.tau_bias,
        selection: ec.tau_select,
        chosen,
        curve,
    })
}
