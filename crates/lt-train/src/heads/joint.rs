//! Joint: the linear head trained with the backbone in stage 1.

use super::{Built, HeadContext, HeadMethod};
use crate::TrainError;

/// `joint`: the stage-1 linear head as it is.
#[derive(Debug)]
pub struct Joint;

impl HeadMethod for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }

    fn label(&self) -> &'static str {
        "Joint"
    }

    fn about(&self) -> &'static str {
        "the linear head trained jointly with the backbone in stage 1"
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        Ok(ctx.stage1_built(Box::new(ctx.stage1.head.clone())))
    }
}
