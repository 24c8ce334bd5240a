//! cRT: classifier re-training, a linear head trained on the frozen backbone.

use lt_core::HeadId;
use lt_heads::{CrtInit, LinearHead, DEFAULT_PREFIX};

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::config::ConfigError;
use crate::settings::StageSettings;
use crate::TrainError;

/// `crt`: option `init` = `reinit` (reference: a fresh head) or `finetune`
/// (a copy of the stage-1 joint head).
#[derive(Debug)]
pub struct Crt;

impl HeadMethod for Crt {
    fn name(&self) -> &'static str {
        "crt"
    }

    fn label(&self) -> &'static str {
        "cRT"
    }

    fn about(&self) -> &'static str {
        "classifier re-training: a linear head re-trained with class-balanced sampling"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

pub(super) fn init_option(options: &toml::Table) -> Result<CrtInit, ConfigError> {
    match options.get("init") {
        None => Ok(CrtInit::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::at("init", e.message())),
    }
}

impl TrainedHead for Crt {
    fn default_settings(&self) -> StageSettings {
        StageSettings::stage2(10)
    }

    fn default_options(&self) -> toml::Table {
        toml::Table::from_iter([(
            "init".to_string(),
            toml::Value::String(CrtInit::default().as_str().into()),
        )])
    }

    fn check_options(&self, options: &toml::Table) -> Result<(), ConfigError> {
        init_option(options).map(|_| ())
    }

    fn streams(&self, _: &HeadId) -> [u64; 3] {
        // The seeds cRT has always used (head init, sampler, augmentation).
        [4, 5, 6]
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        let mode = init_option(init.options)?;
        Ok(Box::new(LinearHead::for_crt(
            init.vars,
            DEFAULT_PREFIX,
            mode,
            init.joint,
            init.seed,
        )?))
    }
}

impl TrainableHead for LinearHead {
    fn trainable(&self) -> Vec<(String, candle_core::Var)> {
        vec![
            (
                format!("{DEFAULT_PREFIX}.weight"),
                self.weight_var().clone(),
            ),
            (format!("{DEFAULT_PREFIX}.bias"), self.bias_var().clone()),
        ]
    }
}
