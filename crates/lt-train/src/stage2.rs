//! Stage 2: re-train the classifier on the frozen stage-1 backbone.
//!
//! * **cRT**: a linear head, re-initialised by default, trained with the
//!   class-balanced sampler (class cycle, 4 per class).
//! * **LWS**: per-class scales `s_j` on the frozen joint head
//!   (`z_j = s_j (w_j . f + b_j)`), trained on the train set (not on val)
//!   with the class-balanced sampler, as the official `cls_lws.yaml`.
//!
//! Backbone parameters are never given to the optimiser and the features are
//! detached before the head. With `bn = "train"` (the reference) the backbone
//! runs with BN in train mode, so BN normalises with the (class-balanced)
//! batch statistics and its running statistics keep updating; the stage-2
//! checkpoint therefore holds the backbone too. With `bn = "eval"` BN uses
//! the stage-1 statistics; if augmentation is also off, the training features
//! never change, so they are computed once and the head is trained on the
//! cache, which is much faster but only approximates the reference.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use lt_data::loader::Loader;
use lt_heads::{Classifier, CrtInit, LinearHead, LwsHead, DEFAULT_PREFIX};
use lt_metrics::Evaluation;
use lt_models::{Backbone, BnMode};
use lt_samplers::{EpochLength, Sampler, SamplerConfig, Strategy};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_checkpoint, load_into_varmap, varmap_tensors};
use crate::config::{CrtConfig, LwsConfig, ModelSelect, Split, Stage2Bn};
use crate::eval::{evaluate_head, extract_features, head_err, model_err, Features};
use crate::experiment::Experiment;
use crate::optim::{SgdConfig, SgdMomentum};
use crate::schedule::ScheduleConfig;
use crate::seed::{derive_seed, Purpose};
use crate::trainer::{run_loop, BatchSource, LoopSpec, RunOptions, TrainModel, TrainReport};
use crate::TrainError;

/// The two trained stage-2 heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage2Head {
    /// Classifier re-training.
    Crt,
    /// Learnable weight scaling.
    Lws,
}

impl Stage2Head {
    /// Stage name in checkpoints and metrics (`crt`, `lws`).
    pub fn stage(self) -> &'static str {
        match self {
            Stage2Head::Crt => "crt",
            Stage2Head::Lws => "lws",
        }
    }
}

/// The settings of one stage-2 head, common to cRT and LWS.
#[derive(Debug, Clone)]
struct Spec {
    epochs: usize,
    batch_size: usize,
    sgd: SgdConfig,
    sampler: Strategy,
    epoch_length: EpochLength,
    shuffle_in_batch: bool,
    schedule: ScheduleConfig,
    bn: Stage2Bn,
    augment: bool,
    eval_every: usize,
    init: CrtInit,
}

macro_rules! spec_from {
    ($c:expr, $init:expr) => {
        Spec {
            epochs: $c.epochs,
            batch_size: $c.batch_size,
            sgd: SgdConfig {
                lr: $c.lr,
                momentum: $c.momentum,
                weight_decay: $c.weight_decay,
                nesterov: $c.nesterov,
            },
            sampler: $c.sampler.clone(),
            epoch_length: $c.epoch_length,
            shuffle_in_batch: $c.shuffle_in_batch,
            schedule: $c.schedule.clone(),
            bn: $c.bn,
            augment: $c.augment,
            eval_every: $c.eval_every,
            init: $init,
        }
    };
}

fn crt_spec(c: &CrtConfig) -> Spec {
    spec_from!(c, c.init)
}

fn lws_spec(c: &LwsConfig) -> Spec {
    spec_from!(c, CrtInit::Finetune)
}

/// A trained or training stage-2 head.
#[derive(Debug, Clone)]
pub enum Stage2Classifier {
    /// cRT's linear head.
    Crt(LinearHead),
    /// LWS head.
    Lws(LwsHead),
}

impl Classifier for Stage2Classifier {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Stage2Classifier::Crt(h) => h.logits(features),
            Stage2Classifier::Lws(h) => h.logits(features),
        }
    }
}

impl Stage2Classifier {
    /// The variables the optimiser trains.
    fn trainable(&self) -> Vec<(String, Var)> {
        match self {
            Stage2Classifier::Crt(h) => vec![
                (format!("{DEFAULT_PREFIX}.weight"), h.weight_var().clone()),
                (format!("{DEFAULT_PREFIX}.bias"), h.bias_var().clone()),
            ],
            Stage2Classifier::Lws(h) => {
                vec![(format!("{DEFAULT_PREFIX}.scales"), h.scales_var().clone())]
            }
        }
    }
}

struct Stage2Model<'a> {
    exp: &'a Experiment,
    backbone: Backbone,
    head_vars: VarMap,
    head: Stage2Classifier,
    bn: BnMode,
    cached_input: bool,
    val: Option<Loader>,
    /// Validation features, reused while the backbone cannot change (BN eval).
    val_cache: Option<Features>,
}

impl TrainModel for Stage2Model<'_> {
    fn train_logits(&self, input: &Tensor) -> Result<Tensor, TrainError> {
        let features = if self.cached_input {
            input.clone()
        } else {
            // No backbone parameter is optimised; detaching keeps the backward
            // pass (and its memory) to the head.
            self.backbone
                .forward_t(input, self.bn)
                .map_err(model_err)?
                .detach()
        };
        Ok(self.head.logits(&features)?)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = varmap_tensors(self.backbone.varmap());
        t.extend(varmap_tensors(&self.head_vars));
        t
    }

    fn load(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<(), TrainError> {
        load_backbone(&self.backbone, tensors, origin)?;
        load_into_varmap(&self.head_vars, tensors, origin)
    }

    fn evaluate(&mut self, split: Split) -> Result<(Evaluation, f64), TrainError> {
        if split != Split::Val {
            return Err(TrainError::Invalid("stage 2 evaluates on val only".into()));
        }
        let features = match (&self.val_cache, self.bn) {
            (Some(f), BnMode::Eval) => f.clone(),
            _ => {
                let loader = self
                    .val
                    .as_ref()
                    .ok_or_else(|| TrainError::Invalid("no val loader".into()))?;
                let f = extract_features(
                    &self.backbone,
                    loader,
                    self.exp.config.eval.batch_size,
                    BnMode::Eval,
                    "eval val",
                    &self.exp.dist,
                )?;
                if self.bn == BnMode::Eval {
                    self.val_cache = Some(f.clone());
                }
                f
            }
        };
        evaluate_head(
            &self.head,
            &features,
            self.exp.num_classes(),
            &self.exp.train_stats,
            &self.exp.config.eval.group_rule,
        )
    }
}

fn load_backbone(
    backbone: &Backbone,
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
) -> Result<(), TrainError> {
    let b: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("momentum.") && !k.starts_with("fc."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    backbone
        .load_state_dict(b, &origin.display().to_string(), false)
        .map_err(model_err)?;
    Ok(())
}

/// Trains (or resumes) a stage-2 head on the selected stage-1 checkpoint.
pub fn retrain(
    exp: &Experiment,
    which: Stage2Head,
    options: RunOptions,
) -> Result<TrainReport, TrainError> {
    let cfg = &exp.config;
    let (spec, sampler_purpose, augment_purpose) = match which {
        Stage2Head::Crt => (
            crt_spec(&cfg.stage2.crt),
            Purpose::CrtSampler,
            Purpose::CrtAugment,
        ),
        Stage2Head::Lws => (
            lws_spec(&cfg.stage2.lws),
            Purpose::LwsSampler,
            Purpose::LwsAugment,
        ),
    };
    let stage = which.stage();
    let (net, stage1_path, stage1_epoch) = crate::stage1::load_selected(exp)?;
    tracing::info!(
        stage,
        stage1_checkpoint = %stage1_path.display(),
        stage1_epoch,
        bn = ?spec.bn,
        augment = spec.augment,
        "stage 2"
    );
    let head_vars = VarMap::new();
    let head = match which {
        Stage2Head::Crt => Stage2Classifier::Crt(
            LinearHead::for_crt(
                &head_vars,
                DEFAULT_PREFIX,
                spec.init,
                &net.head,
                derive_seed(cfg.seed, Purpose::CrtHead),
            )
            .map_err(head_err)?,
        ),
        Stage2Head::Lws => Stage2Classifier::Lws(
            LwsHead::from_linear(&head_vars, DEFAULT_PREFIX, &net.head).map_err(head_err)?,
        ),
    };
    let mut opt = SgdMomentum::new(head.trainable(), spec.sgd)?;
    let mut sampler = Sampler::new(
        exp.train.labels(),
        exp.num_classes(),
        SamplerConfig {
            strategy: spec.sampler.clone(),
            batch_size: spec.batch_size,
            epoch_length: spec.epoch_length,
            seed: derive_seed(cfg.seed, sampler_purpose),
            rank: exp.dist.rank(),
            world_size: exp.dist.world_size(),
            shuffle_in_batch: spec.shuffle_in_batch,
        },
    )
    .map_err(|e| TrainError::Config(format!("key `stage2.{stage}.sampler`: {e}")))?;
    let schedule = spec
        .schedule
        .build(spec.sgd.lr, spec.epochs, sampler.num_batches())?;
    let bn = match spec.bn {
        Stage2Bn::Train => BnMode::Train,
        Stage2Bn::Eval => BnMode::Eval,
    };
    let cached = spec.bn == Stage2Bn::Eval && !spec.augment;
    let preset = if spec.augment {
        cfg.data.train_preset
    } else {
        cfg.data.eval_preset
    };
    let loader = exp.loader(Split::Train, preset, derive_seed(cfg.seed, augment_purpose))?;
    let cache = if cached {
        tracing::info!(
            stage,
            "bn = eval without augmentation: training the head on cached features \
             (an approximation of the reference, which refreshes BN statistics)"
        );
        Some(extract_features(
            &net.backbone,
            &exp.loader(Split::Train, cfg.data.eval_preset, 0)?,
            cfg.eval.batch_size,
            BnMode::Eval,
            "train features",
            &exp.dist,
        )?)
    } else {
        None
    };
    let mut model = Stage2Model {
        exp,
        backbone: net.backbone,
        head_vars,
        head,
        bn,
        cached_input: cached,
        val: exp
            .val
            .as_ref()
            .map(|_| exp.eval_loader(Split::Val))
            .transpose()?,
        val_cache: None,
    };
    let loop_spec = LoopSpec {
        stage,
        epochs: spec.epochs,
        eval_every: spec.eval_every,
        eval_val: exp.val.is_some(),
        eval_test: false,
        options,
        config_hash: cfg.stage_hash(stage)?,
    };
    let source = match &cache {
        Some(f) => BatchSource::Features(f),
        None => BatchSource::Images(&loader),
    };
    run_loop(
        exp,
        &loop_spec,
        &mut model,
        &mut opt,
        &mut sampler,
        source,
        &schedule,
    )
}

/// The checkpoint of a stage-2 head selected by its `model_select`.
pub fn selected_checkpoint(exp: &Experiment, which: Stage2Head) -> PathBuf {
    let select = match which {
        Stage2Head::Crt => exp.config.stage2.crt.model_select,
        Stage2Head::Lws => exp.config.stage2.lws.model_select,
    };
    match select {
        ModelSelect::BestVal => exp.run.best_checkpoint(which.stage()),
        ModelSelect::Last => exp.run.last_checkpoint(which.stage()),
    }
}

/// A loaded stage-2 model: the backbone (with its stage-2 BN statistics) and
/// the head.
#[derive(Debug)]
pub struct LoadedStage2 {
    /// The backbone.
    pub backbone: Backbone,
    /// The head.
    pub head: Stage2Classifier,
    /// The checkpoint it came from.
    pub path: PathBuf,
    /// Its epoch.
    pub epoch: usize,
}

/// Loads the selected checkpoint of a stage-2 head.
pub fn load_selected(exp: &Experiment, which: Stage2Head) -> Result<LoadedStage2, TrainError> {
    let path = selected_checkpoint(exp, which);
    if !path.exists() {
        return Err(TrainError::Checkpoint(format!(
            "no {} checkpoint at {}: run `lt-cli retrain --head {}` with this config first",
            which.stage(),
            path.display(),
            which.stage()
        )));
    }
    let (tensors, meta) = load_checkpoint(&path, &exp.device)?;
    if meta.config_hash != exp.config.stage_hash(which.stage())? {
        tracing::warn!(
            checkpoint = %path.display(),
            "the {} checkpoint was written with a different config; using it anyway",
            which.stage()
        );
    }
    let cfg = &exp.config;
    let mut backbone =
        Backbone::new(cfg.model.arch, &exp.device, cfg.model_seed()).map_err(model_err)?;
    backbone.set_precision(cfg.model.precision);
    load_backbone(&backbone, &tensors, &path)?;
    let get = |name: &str| {
        tensors.get(name).cloned().ok_or_else(|| {
            TrainError::Checkpoint(format!("{}: missing tensor `{name}`", path.display()))
        })
    };
    let w = get("fc.weight")?;
    let b = get("fc.bias")?;
    let vars = VarMap::new();
    let head = match which {
        Stage2Head::Crt => Stage2Classifier::Crt(
            LinearHead::from_tensors(&vars, DEFAULT_PREFIX, &w, &b).map_err(head_err)?,
        ),
        Stage2Head::Lws => {
            let h = LwsHead::new(&vars, DEFAULT_PREFIX, &w, &b).map_err(head_err)?;
            let s = get("fc.scales")?;
            if s.dims() != h.scales().dims() {
                return Err(TrainError::Checkpoint(format!(
                    "{}: `fc.scales` has shape {:?}, expected {:?}",
                    path.display(),
                    s.dims(),
                    h.scales().dims()
                )));
            }
            h.scales_var().set(&s)?;
            Stage2Classifier::Lws(h)
        }
    };
    Ok(LoadedStage2 {
        backbone,
        head,
        path,
        epoch: meta.epoch,
    })
}
