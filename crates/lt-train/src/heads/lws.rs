//! LWS: learnable weight scaling of the frozen joint head.

use lt_core::HeadId;
use lt_heads::{LwsHead, DEFAULT_PREFIX};

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::settings::StageSettings;
use crate::TrainError;

/// `lws`: per-class scales `s_j` on the frozen joint head
/// (`z_j = s_j (w_j . f + b_j)`), trained on the train set (not on val) with
/// the class-balanced sampler, as the official `cls_lws.yaml`.
#[derive(Debug)]
pub struct Lws;

impl HeadMethod for Lws {
    fn name(&self) -> &'static str {
        "lws"
    }

    fn label(&self) -> &'static str {
        "LWS"
    }

    fn about(&self) -> &'static str {
        "learnable weight scaling: per-class scales of the frozen joint head"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

impl TrainedHead for Lws {
    fn default_settings(&self) -> StageSettings {
        StageSettings::stage2(5)
    }

    fn streams(&self, _: &HeadId) -> [u64; 3] {
        // The seeds LWS has always used (it draws no initial weights).
        [9, 7, 8]
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        Ok(Box::new(LwsHead::from_linear(
            init.vars,
            DEFAULT_PREFIX,
            init.joint,
        )?))
    }
}

impl TrainableHead for LwsHead {
    fn trainable(&self) -> Vec<(String, candle_core::Var)> {
        vec![(
            format!("{DEFAULT_PREFIX}.scales"),
            self.scales_var().clone(),
        )]
    }
}
