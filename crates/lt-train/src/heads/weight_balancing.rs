//! Weight Balancing, stage 2 (Alshammari et al., CVPR 2022): the stage-1
//! classifier fine-tuned (not re-initialised) with the class-balanced loss,
//! a large weight decay and MaxNorm, as the authors' CIFAR notebook does it
//! (10 epochs, batch 64, lr 0.01 with per-epoch cosine, weight decay 0.1,
//! MaxNorm radius 0.1 projected once per epoch, instance-balanced sampling).
//!
//! Their stage 1 is plain cross-entropy with a tuned weight decay (5e-3 on
//! CIFAR): `stage1.weight_decay = 5e-3`, optionally with
//! `stage1.max_norm`. Their fine-tuning runs the backbone with BN in train
//! mode on augmented images; here it runs on cached features by default
//! (`bn = "train"`, `augment = true` restore the reference loop).

use lt_heads::{CrtInit, LinearHead, DEFAULT_PREFIX};
use lt_samplers::Strategy;

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::loss::LossConfig;
use crate::max_norm::{MaxNormConfig, MaxNormEvery, MaxNormScope};
use crate::settings::{Stage2Bn, StageSettings};
use crate::TrainError;

/// `wb`: the fine-tuned classifier; every setting is a stage setting
/// (`loss`, `max_norm`, `weight_decay`, ...).
#[derive(Debug)]
pub struct WeightBalancing;

impl HeadMethod for WeightBalancing {
    fn name(&self) -> &'static str {
        "wb"
    }

    fn label(&self) -> &'static str {
        "WB"
    }

    fn about(&self) -> &'static str {
        "Weight Balancing stage 2: fine-tune the classifier with class-balanced loss, WD and MaxNorm"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

impl TrainedHead for WeightBalancing {
    fn default_settings(&self) -> StageSettings {
        StageSettings {
            batch_size: 64,
            lr: 0.01,
            weight_decay: 0.1,
            sampler: Strategy::InstanceBalanced,
            shuffle_in_batch: false,
            loss: LossConfig {
                kind: "class_balanced".into(),
                options: toml::Table::new(),
            },
            max_norm: Some(MaxNormConfig {
                radius: 0.1,
                every: MaxNormEvery::Epoch,
                scope: MaxNormScope::Classifier,
            }),
            bn: Stage2Bn::Eval,
            augment: false,
            ..StageSettings::stage2(10)
        }
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        Ok(Box::new(LinearHead::for_crt(
            init.vars,
            DEFAULT_PREFIX,
            CrtInit::Finetune,
            init.joint,
            init.seed,
        )?))
    }
}
