//! The settings of one training stage, written once for stage 1 and every
//! trained stage-2 head.
//!
//! A stage's section in the config (`[stage1]`, `[stage2.crt]`,
//! `[stage2.lws]`, ...) holds the keys of [`StageSettings`] plus the stage's
//! own options (stage 1: `eval_test`; cRT: `init`). Keys a section leaves
//! out take the stage's defaults: for stage 1 those of
//! [`StageSettings::stage1`] (where `epochs`, `batch_size` and `lr` have no
//! default and must be given), for a stage-2 head those its definition gives
//! (see `lt_train::heads`). Every field below says its default.

use lt_core::ModelSelect;
use lt_samplers::{EpochLength, Strategy};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::loss::LossConfig;
use crate::max_norm::MaxNormConfig;
use crate::mixup::MixupConfig;
use crate::optim::SgdConfig;
use crate::schedule::ScheduleConfig;

/// BN behaviour of the frozen backbone in stage 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage2Bn {
    /// Reference: BN normalises with batch statistics and keeps updating its
    /// running statistics (forward in train mode, no backbone parameter in the
    /// optimiser, features detached).
    #[default]
    Train,
    /// BN uses the stage-1 running statistics, which stay fixed.
    Eval,
}

/// One training stage: optimiser, schedule, sampler, epochs, batch, BN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSettings {
    /// Number of epochs. Stage 1: required; cRT 10; LWS 5.
    pub epochs: usize,
    /// Batch size (the global batch under data parallelism). Stage 1:
    /// required; stage 2: 512 (the reference ImageNet-LT value).
    pub batch_size: usize,
    /// Base learning rate (reference: 0.2 * B / 512); stage 2 restarts from it
    /// with a fresh optimiser. Stage 1: required; stage 2: 0.2.
    pub lr: f64,
    /// SGD momentum. Default 0.9.
    pub momentum: f64,
    /// L2 weight decay on every trained tensor. Default 5e-4.
    pub weight_decay: f64,
    /// Nesterov momentum. Default false.
    pub nesterov: bool,
    /// Sampling strategy, e.g. `{ kind = "class_balanced" }`. Stage 1:
    /// instance-balanced; stage 2: class-balanced (class cycle, 4 per class).
    pub sampler: Strategy,
    /// Batches per epoch. Default `floor` (floor(N / B), the reference).
    pub epoch_length: EpochLength,
    /// Permute each batch (the reference's `shuffle: true`; only matters for
    /// per-device BN). Stage 1: false; stage 2: true.
    pub shuffle_in_batch: bool,
    /// Learning-rate schedule. Default: per-epoch cosine to 0, `pre_1_1`.
    pub schedule: ScheduleConfig,
    /// Evaluate on val every this many epochs (the last epoch always is).
    /// Default 1.
    pub eval_every: usize,
    /// Which checkpoint later stages and evaluation use. Default `best_val`.
    pub model_select: ModelSelect,
    /// The training loss. Default cross-entropy (`{ kind = "cross_entropy" }`).
    #[serde(default, skip_serializing_if = "LossConfig::is_default")]
    pub loss: LossConfig,
    /// MaxNorm on the classifier's weight rows (Weight Balancing), e.g.
    /// `{ radius = 0.1 }`; see [`MaxNormConfig`]. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<MaxNormConfig>,
    /// Stage 1 only: mixup, e.g. `{ alpha = 1.0 }`; see [`MixupConfig`].
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup: Option<MixupConfig>,
    /// Stage 2 only: BN of the frozen backbone, `train` (reference) or `eval`.
    /// Stage 1 trains the backbone, so BN always runs in train mode there.
    pub bn: Stage2Bn,
    /// Stage 2 only: use the training augmentation (reference: yes). With
    /// `bn = "eval"` and no augmentation the features are computed once and
    /// cached, which approximates the reference (no BN-statistics refresh, no
    /// augmentation). Stage 1 always augments.
    pub augment: bool,
}

/// Keys of [`StageSettings`] that only stage 2 has.
const STAGE2_ONLY: [&str; 2] = ["bn", "augment"];

/// Keys of [`StageSettings`] that are absent from a section unless set.
const OPTIONAL: [&str; 3] = ["loss", "max_norm", "mixup"];

/// Keys stage 1 must be given.
const STAGE1_REQUIRED: [&str; 3] = ["epochs", "batch_size", "lr"];

impl StageSettings {
    /// Stage-1 defaults (`epochs`, `batch_size` and `lr` are placeholders a
    /// config must replace).
    pub fn stage1() -> Self {
        StageSettings {
            epochs: 0,
            batch_size: 0,
            lr: 0.0,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            sampler: Strategy::InstanceBalanced,
            epoch_length: EpochLength::Floor,
            shuffle_in_batch: false,
            schedule: ScheduleConfig::default(),
            eval_every: 1,
            model_select: ModelSelect::BestVal,
            loss: LossConfig::default(),
            max_norm: None,
            mixup: None,
            bn: Stage2Bn::Train,
            augment: true,
        }
    }

    /// The reference stage-2 defaults (cRT's, with `epochs` given): class-
    /// balanced sampler (class cycle, 4 per class), batch 512, lr 0.2, wd 5e-4,
    /// per-epoch cosine, BN in train mode, augmentation on, in-batch shuffle.
    pub fn stage2(epochs: usize) -> Self {
        StageSettings {
            epochs,
            batch_size: 512,
            lr: 0.2,
            sampler: Strategy::class_balanced(),
            shuffle_in_batch: true,
            ..Self::stage1()
        }
    }

    /// The optimiser settings.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }

    /// Whether stage 2 trains on cached features (BN eval, no augmentation).
    pub fn uses_cached_features(&self) -> bool {
        self.bn == Stage2Bn::Eval && !self.augment
    }

    /// Resolves a config section: the section's keys that are settings
    /// replace the defaults; the others are returned for the stage's own
    /// options. `section` is the key path (`stage1`, `stage2.crt`) for errors.
    pub(crate) fn resolve(
        defaults: &StageSettings,
        table: &toml::Table,
        section: &str,
        stage1: bool,
    ) -> Result<(StageSettings, toml::Table), ConfigError> {
        let mut merged = toml::Table::try_from(defaults)
            .map_err(|e| ConfigError::at(section, format!("serialising defaults: {e}")))?;
        let mut rest = toml::Table::new();
        for (k, v) in table {
            if stage1 && STAGE2_ONLY.contains(&k.as_str()) {
                rest.insert(k.clone(), v.clone());
            } else if !stage1 && k == "mixup" {
                return Err(ConfigError::at(
                    &format!("{section}.mixup"),
                    "mixup is a stage-1 setting: stage 2 trains on unmixed images".to_string(),
                ));
            } else if merged.contains_key(k) || OPTIONAL.contains(&k.as_str()) {
                merged.insert(k.clone(), v.clone());
            } else {
                rest.insert(k.clone(), v.clone());
            }
        }
        if stage1 {
            if let Some(k) = STAGE1_REQUIRED.iter().find(|k| !table.contains_key(**k)) {
                return Err(ConfigError::at(
                    &format!("{section}.{k}"),
                    format!("missing field `{k}`"),
                ));
            }
        }
        let settings = crate::config::deserialize_at(toml::Value::Table(merged), section)?;
        Ok((settings, rest))
    }

    /// The section as a table: the settings and the stage's own options.
    pub(crate) fn to_section(
        &self,
        options: &toml::Table,
        stage1: bool,
    ) -> Result<toml::Table, toml::ser::Error> {
        let mut t = toml::Table::try_from(self)?;
        if stage1 {
            for k in STAGE2_ONLY {
                t.remove(k);
            }
        }
        t.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(t)
    }

    /// Checks the values serde cannot; errors name the key under `section`.
    pub(crate) fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let at = |k: &str, m: &str| Err(ConfigError::at(&format!("{section}.{k}"), m.to_string()));
        if self.epochs == 0 {
            return at("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return at("batch_size", "must be at least 1");
        }
        if self.eval_every == 0 {
            return at("eval_every", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return at("lr", "must be finite and > 0");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return at("momentum", "must be in [0, 1)");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return at("weight_decay", "must be finite and >= 0");
        }
        self.schedule
            .validate(self.epochs)
            .map_err(|e| ConfigError::at(&format!("{section}.schedule"), e.to_string()))?;
        self.loss
            .validate()
            .map_err(|e| e.within(&format!("{section}.loss")))?;
        if let Some(m) = &self.max_norm {
            m.validate()
                .map_err(|e| ConfigError::at(&format!("{section}.max_norm.radius"), e))?;
        }
        if let Some(m) = &self.mixup {
            m.validate()
                .map_err(|e| ConfigError::at(&format!("{section}.mixup.alpha"), e))?;
        }
        Ok(())
    }
}
