//! Logit-adjusted cRT (Balanced-Softmax cRT): cRT re-trained with the
//! logit-adjusted loss under instance-balanced sampling, so that the
//! re-balancing comes from the loss instead of the sampler.

use lt_heads::{LinearHead, DEFAULT_PREFIX};
use lt_samplers::Strategy;

use super::crt::init_option;
use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::config::ConfigError;
use crate::loss::LossConfig;
use crate::settings::{Stage2Bn, StageSettings};
use crate::TrainError;

/// `crt_la`: cRT's options (`init` = `reinit` or `finetune`) with the
/// logit-adjusted loss (τ = 1, the Balanced Softmax) and the
/// instance-balanced sampler; on cached features by default (`bn = "eval"`,
/// no augmentation), which `bn = "train"`, `augment = true` turn into cRT's
/// BN-refreshing reference loop.
#[derive(Debug)]
pub struct CrtLogitAdjusted;

impl HeadMethod for CrtLogitAdjusted {
    fn name(&self) -> &'static str {
        "crt_la"
    }

    fn label(&self) -> &'static str {
        "LA-cRT"
    }

    fn about(&self) -> &'static str {
        "cRT re-trained with the logit-adjusted loss (tau 1) under instance-balanced sampling"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

impl TrainedHead for CrtLogitAdjusted {
    fn default_settings(&self) -> StageSettings {
        StageSettings {
            sampler: Strategy::InstanceBalanced,
            shuffle_in_batch: false,
            loss: LossConfig {
                kind: "logit_adjusted".into(),
                options: toml::Table::new(),
            },
            bn: Stage2Bn::Eval,
            augment: false,
            ..StageSettings::stage2(10)
        }
    }

    fn default_options(&self) -> toml::Table {
        super::crt::Crt.default_options()
    }

    fn check_options(&self, options: &toml::Table) -> Result<(), ConfigError> {
        init_option(options).map(|_| ())
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        Ok(Box::new(LinearHead::for_crt(
            init.vars,
            DEFAULT_PREFIX,
            init_option(init.options)?,
            init.joint,
            init.seed,
        )?))
    }
}
