//! Stage 2: train a head on the frozen stage-1 backbone.
//!
//! Every trained head of the registry ([`crate::heads`]: cRT, LWS, LA-cRT,
//! learned τ, MiSLAS, DisAlign, WB, ...) runs through [`retrain`]: the head
//! gives its classifier, its default settings (sampler, loss, BN mode,
//! MaxNorm, ...) and any per-parameter learning-rate scales; this module
//! builds the sampler, the loader or the feature cache, the optimiser and the
//! schedule, and runs the shared epoch loop.
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
use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;
use lt_core::{HeadId, Split, Stage};
use lt_data::loader::Loader;
use lt_metrics::Evaluation;
use lt_models::{Backbone, BnMode};
use lt_samplers::{Sampler, SamplerConfig};

use crate::checkpoint::{load_into_varmap, varmap_tensors};
use crate::eval::{evaluate_head, extract_features, Features};
use crate::experiment::Experiment;
use crate::heads::{HeadInit, TrainableHead};
use crate::optim::SgdMomentum;
use crate::seed::derive_seed_code;
use crate::settings::Stage2Bn;
use crate::trainer::{
    BatchSource, Checkpointer, Dependents, MetricsLog, RunOptions, TrainModel, TrainReport, Trainer,
};
use crate::TrainError;

struct Stage2Model<'a> {
    exp: &'a Experiment,
    backbone: Backbone,
    head_vars: VarMap,
    head: Box<dyn TrainableHead>,
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
            self.backbone.forward_frozen(input, self.bn)?
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
        // BN in eval mode, or none at all (an encoder): the backbone cannot
        // change during stage 2, nor its validation features.
        let fixed = self.bn == BnMode::Eval || !self.backbone.has_batch_norm();
        let features = match (&self.val_cache, fixed) {
            (Some(f), true) => f.clone(),
            _ => {
                let loader = self
                    .val
                    .as_ref()
                    .ok_or_else(|| TrainError::Invalid("no val loader".into()))?;
                let f = if fixed {
                    // The backbone cannot change during this stage: its
                    // features may already be on disk.
                    crate::feature_store::split_features(
                        self.exp,
                        &self.backbone,
                        Split::Val,
                        "eval val",
                    )?
                } else {
                    extract_features(
                        &self.backbone,
                        loader,
                        self.exp.config.eval.batch_size,
                        BnMode::Eval,
                        "eval val",
                        &self.exp.dist,
                    )?
                };
                if fixed {
                    self.val_cache = Some(f.clone());
                }
                f
            }
        };
        evaluate_head(
            self.head.as_ref(),
            &features,
            self.exp.num_classes(),
            &self.exp.train_stats,
            &self.exp.config.eval.group_rule,
        )
    }
}

/// Loads the backbone tensors of a checkpoint (everything but the head and
/// the optimiser state).
pub(crate) fn load_backbone(
    backbone: &Backbone,
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
) -> Result<(), TrainError> {
    let b: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("momentum.") && !k.starts_with("fc."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    backbone.load_state_dict(b, &origin.display().to_string(), false)?;
    Ok(())
}

/// Trains (or resumes) a trained head (cRT, LWS, ...) on the selected stage-1
/// checkpoint.
pub fn retrain(
    exp: &Experiment,
    head: &HeadId,
    options: RunOptions,
) -> Result<TrainReport, TrainError> {
    let method = crate::heads::lookup(head.as_str())?;
    let training = method.training().ok_or_else(|| {
        TrainError::Invalid(format!(
            "head `{head}` is not trained in a stage of its own (it is computed by `eval`); \
             trained heads: {}",
            crate::heads::trained_names().join(", ")
        ))
    })?;
    let cfg = &exp.config;
    let section = cfg.stage2.head(head.as_str());
    let spec = &section.settings;
    let [head_stream, sampler_stream, augment_stream] = training.streams(head);
    let stage = Stage::Head(head.clone());
    let (net, stage1_path, stage1_epoch) = crate::stage1::load_selected(exp)?;
    tracing::info!(
        stage = %stage,
        stage1_checkpoint = %stage1_path.display(),
        stage1_epoch,
        bn = ?spec.bn,
        augment = spec.augment,
        "stage 2"
    );
    let head_vars = VarMap::new();
    let groups = exp.train_stats.groups(&cfg.eval.group_rule);
    let classifier = training.init(&HeadInit {
        joint: &net.head,
        vars: &head_vars,
        options: &section.options,
        seed: derive_seed_code(cfg.seed, head_stream),
        class_counts: exp.train_stats.counts(),
        groups: &groups,
    })?;
    let mut opt = SgdMomentum::new(classifier.trainable(), spec.sgd())?;
    for (name, scale) in training.lr_scales(&section.options)? {
        opt.set_lr_scale(&name, scale)?;
    }
    let mut sampler = Sampler::new(
        exp.train.labels(),
        exp.num_classes(),
        SamplerConfig {
            strategy: spec.sampler.clone(),
            batch_size: spec.batch_size,
            epoch_length: spec.epoch_length,
            seed: derive_seed_code(cfg.seed, sampler_stream),
            rank: exp.dist.rank(),
            world_size: exp.dist.world_size(),
            shuffle_in_batch: spec.shuffle_in_batch,
        },
    )
    .map_err(|source| TrainError::Sampler {
        context: format!("key `stage2.{head}.sampler`"),
        source,
    })?;
    let schedule = spec
        .schedule
        .build(spec.lr, spec.epochs, sampler.num_batches())?;
    let bn = match spec.bn {
        Stage2Bn::Train => BnMode::Train,
        Stage2Bn::Eval => BnMode::Eval,
    };
    // Without batch norm (an encoder), features do not depend on `bn`: only
    // a random augmentation prevents caching them, and a training preset
    // that is the evaluation preset is not one.
    let deterministic_input = !spec.augment || cfg.data.train_preset == cfg.data.eval_preset;
    let cached =
        spec.uses_cached_features() || (deterministic_input && !net.backbone.has_batch_norm());
    let preset = if spec.augment {
        cfg.data.train_preset
    } else {
        cfg.data.eval_preset
    };
    let loader = exp.loader(
        Split::Train,
        preset,
        derive_seed_code(cfg.seed, augment_stream),
    )?;
    let cache = if cached {
        if net.backbone.has_batch_norm() {
            tracing::info!(
                stage = %stage,
                "bn = eval without augmentation: training the head on cached features \
                 (an approximation of the reference, which refreshes BN statistics)"
            );
        } else {
            tracing::info!(stage = %stage, "no augmentation: training the head on cached features");
        }
        Some(crate::feature_store::split_features(
            exp,
            &net.backbone,
            Split::Train,
            "train features",
        )?)
    } else {
        None
    };
    let loss = spec
        .loss
        .build(&crate::loss::LossContext {
            class_counts: exp.train_stats.counts(),
            epochs: spec.epochs,
            cosine_scale: classifier.cosine_scale(),
        })
        .map_err(|e| e.within(&format!("stage2.{head}.loss")))?;
    let mut model = Stage2Model {
        exp,
        backbone: net.backbone,
        head_vars,
        head: classifier,
        bn,
        cached_input: cached,
        val: exp
            .val
            .as_ref()
            .map(|_| exp.eval_loader(Split::Val))
            .transpose()?,
        val_cache: None,
    };
    let trainer = Trainer {
        stage: stage.clone(),
        epochs: spec.epochs,
        eval_every: spec.eval_every,
        eval_val: exp.val.is_some(),
        eval_test: false,
        options,
        config_hash: cfg.stage_hash(&stage)?,
        device: exp.device.clone(),
        dist: &exp.dist,
        checkpoints: Checkpointer::new(&exp.run, &stage, cfg.seed),
        // `results.json` may hold the head's previous version.
        dependents: Dependents {
            files: vec![exp.run.results()],
            ..Dependents::default()
        },
        log: MetricsLog::new(exp.run.metrics()),
        max_norm: spec.max_norm,
        mixup: None,
    };
    let source = match &cache {
        Some(f) => BatchSource::Features(f),
        None => BatchSource::Images(&loader),
    };
    trainer.run(
        &mut model,
        &mut opt,
        &mut sampler,
        source,
        &schedule,
        loss.as_ref(),
    )
}
