//! NCM: nearest class mean on the frozen stage-1 features.

use lt_core::Split;
use lt_heads::NcmHead;

use super::{Built, HeadContext, HeadMethod};
use crate::TrainError;

/// `ncm`: class centroids of the training features (settings `[eval.ncm]`).
#[derive(Debug)]
pub struct Ncm;

impl HeadMethod for Ncm {
    fn name(&self) -> &'static str {
        "ncm"
    }

    fn label(&self) -> &'static str {
        "NCM"
    }

    fn about(&self) -> &'static str {
        "nearest class mean of the training features (cl2n + l2 by default)"
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        let train = ctx.features.get(Split::Train)?;
        let cfg = ctx.exp.config.eval.ncm;
        let head = NcmHead::fit(&train.features, &train.labels, ctx.exp.num_classes(), cfg)?;
        let mut built = ctx.stage1_built(Box::new(head));
        built.settings = serde_json::to_value(cfg).ok();
        Ok(built)
    }
}
