//! Stage 1: joint training of the backbone and the linear head with any
//! sampler, the training augmentation, SGD with momentum and cross-entropy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use lt_core::{ModelSelect, Split, Stage};
use lt_data::loader::Loader;
use lt_metrics::Evaluation;
use lt_models::BnMode;
use lt_samplers::{Sampler, SamplerConfig};

use crate::checkpoint::load_checkpoint;
use crate::eval::{evaluate_head, extract_features};
use crate::experiment::Experiment;
use crate::model::Network;
use crate::optim::SgdMomentum;
use crate::seed::{derive_seed, Purpose};
use crate::trainer::{
    BatchSource, Checkpointer, Dependents, MetricsLog, RunOptions, TrainModel, TrainReport, Trainer,
};
use crate::TrainError;

struct Stage1Model<'a> {
    exp: &'a Experiment,
    net: Network,
    val: Option<Loader>,
    test: Option<Loader>,
    /// A frozen encoder: training batches are cached features, and the
    /// evaluation features of each split are computed once.
    frozen: bool,
    eval_cache: HashMap<&'static str, crate::eval::Features>,
}

impl TrainModel for Stage1Model<'_> {
    fn train_logits(&self, input: &Tensor) -> Result<Tensor, TrainError> {
        if self.frozen {
            return Ok(lt_heads::Classifier::logits(&self.net.head, input)?);
        }
        self.net.logits(input, BnMode::Train)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.net.tensors()
    }

    fn load(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<(), TrainError> {
        self.net.load_tensors(tensors, origin)
    }

    fn evaluate(&mut self, split: Split) -> Result<(Evaluation, f64), TrainError> {
        let loader = match split {
            Split::Val => self.val.as_ref(),
            Split::Test => self.test.as_ref(),
            Split::Train => None,
        }
        .ok_or_else(|| TrainError::Invalid(format!("no {} loader", split.as_str())))?;
        if let Some(f) = self.eval_cache.get(split.as_str()) {
            let f = f.clone();
            return evaluate_head(
                &self.net.head,
                &f,
                self.exp.num_classes(),
                &self.exp.train_stats,
                &self.exp.config.eval.group_rule,
            );
        }
        let what = format!("eval {}", split.as_str());
        let f = if self.frozen {
            let f =
                crate::feature_store::split_features(self.exp, &self.net.backbone, split, &what)?;
            self.eval_cache.insert(split.as_str(), f.clone());
            f
        } else {
            extract_features(
                &self.net.backbone,
                loader,
                self.exp.config.eval.batch_size,
                BnMode::Eval,
                &what,
                &self.exp.dist,
            )?
        };
        evaluate_head(
            &self.net.head,
            &f,
            self.exp.num_classes(),
            &self.exp.train_stats,
            &self.exp.config.eval.group_rule,
        )
    }
}

/// Trains (or resumes) stage 1 and returns its report.
pub fn train_stage1(exp: &Experiment, options: RunOptions) -> Result<TrainReport, TrainError> {
    let cfg = &exp.config;
    let s1 = &cfg.stage1;
    let mut net = Network::from_config(
        &cfg.model,
        exp.num_classes(),
        cfg.model_seed(),
        &exp.device,
        true,
    )?;
    net.backbone.set_precision(cfg.model.precision);
    net.set_classifier(&cfg.model);
    if let (Some(p), None) = (&cfg.model.pretrained, cfg.model.arch.encoder()) {
        net.load_pretrained(p)?;
    }
    // A frozen encoder (no batch norm, no trainable variable): a linear probe
    // on features computed once.
    let frozen = !net.backbone.has_batch_norm() && net.backbone.parameters().is_empty();
    if s1.loss.kind == "ldam_drw" && cfg.model.classifier != crate::config::ClassifierKind::Cosine {
        tracing::warn!(
            "stage1.loss is ldam_drw on a linear classifier; the reference trains it on a \
             cosine one (set model.classifier = \"cosine\")"
        );
    }
    let params = net.trainable(cfg.model.trainable_prefixes.as_deref())?;
    tracing::info!(
        arch = %cfg.model.arch.name(),
        trainable_tensors = params.len(),
        trainable_scalars = params.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
        "stage-1 network"
    );
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = SgdMomentum::new(params, s1.sgd())?;
    if let (Some(decay), Some(encoder)) = (cfg.model.layer_decay, net.backbone.as_encoder()) {
        let top = encoder.config().num_layers + 1;
        for name in &names {
            let depth = if name.starts_with("fc.") {
                top
            } else {
                encoder.depth_of(name)
            };
            opt.set_lr_scale(name, decay.powi((top - depth.min(top)) as i32))?;
        }
    }
    let mut sampler = stage1_sampler(exp)?;
    tracing::info!(sampler = %s1.sampler, batches_per_epoch = sampler.num_batches(), "stage-1 sampler");
    let loader = exp.loader(
        Split::Train,
        cfg.data.train_preset,
        derive_seed(cfg.seed, Purpose::Stage1Augment),
    )?;
    let schedule = s1.schedule.build(s1.lr, s1.epochs, sampler.num_batches())?;
    let cache = if frozen {
        tracing::info!(
            preset = cfg.data.eval_preset.name(),
            "frozen encoder: training the linear probe on cached features (the eval preset, \
             no augmentation)"
        );
        Some(crate::feature_store::split_features(
            exp,
            &net.backbone,
            Split::Train,
            "train features",
        )?)
    } else {
        None
    };
    let mut model = Stage1Model {
        exp,
        frozen,
        eval_cache: HashMap::new(),
        net,
        val: exp
            .val
            .as_ref()
            .map(|_| exp.eval_loader(Split::Val))
            .transpose()?,
        test: if s1.eval_test {
            Some(exp.eval_loader(Split::Test)?)
        } else {
            None
        },
    };
    let loss = s1
        .loss
        .build(&crate::loss::LossContext {
            class_counts: exp.train_stats.counts(),
            epochs: s1.epochs,
            cosine_scale: cfg.model.cosine_scale(),
        })
        .map_err(|e| e.within("stage1.loss"))?;
    let trainer = Trainer {
        stage: Stage::Stage1,
        epochs: s1.epochs,
        eval_every: s1.eval_every,
        eval_val: exp.val.is_some(),
        eval_test: s1.eval_test,
        options,
        config_hash: cfg.stage_hash(&Stage::Stage1)?,
        device: exp.device.clone(),
        dist: &exp.dist,
        checkpoints: Checkpointer::new(&exp.run, &Stage::Stage1, cfg.seed),
        dependents: dependents(exp),
        log: MetricsLog::new(exp.run.metrics()),
        max_norm: s1.max_norm,
        mixup: s1
            .mixup
            .map(|m| crate::mixup::Mixup::new(m, derive_seed(cfg.seed, Purpose::Stage1Mixup))),
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

/// The stage-1 sampler of `exp`, before its first epoch. Training stage 1 and
/// importing a finished one (which replays every epoch to leave the state a
/// trained stage 1 would) both build it here, so the two cannot draw different
/// batches.
pub(crate) fn stage1_sampler(exp: &Experiment) -> Result<Sampler, TrainError> {
    let cfg = &exp.config;
    let s1 = &cfg.stage1;
    Sampler::new(
        exp.train.labels(),
        exp.num_classes(),
        SamplerConfig {
            strategy: s1.sampler.clone(),
            batch_size: s1.batch_size,
            epoch_length: s1.epoch_length,
            seed: derive_seed(cfg.seed, Purpose::Stage1Sampler),
            rank: exp.dist.rank(),
            world_size: exp.dist.world_size(),
            shuffle_in_batch: s1.shuffle_in_batch,
        },
    )
    .map_err(|source| TrainError::Sampler {
        context: "key `stage1.sampler`".into(),
        source,
    })
}

/// What is built on stage 1 and goes when it starts over: every trained
/// head's checkpoints (and their records in `metrics.jsonl`), `results.json`
/// and `tau_sweep.json`.
fn dependents(exp: &Experiment) -> Dependents {
    let stages = crate::heads::REGISTRY
        .iter()
        .filter(|h| h.training().is_some())
        .map(|h| {
            let stage = Stage::Head(h.id());
            let checkpoints = Checkpointer::new(&exp.run, &stage, exp.config.seed);
            (stage, checkpoints)
        })
        .collect();
    Dependents {
        stages,
        files: vec![exp.run.results(), exp.run.tau_sweep()],
        always: true,
    }
}

/// The stage-1 checkpoint later stages use, by `stage1.model_select`.
pub fn selected_checkpoint(exp: &Experiment) -> Result<PathBuf, TrainError> {
    let (path, what) = match exp.config.stage1.model_select {
        ModelSelect::BestVal => (exp.run.best_checkpoint(&Stage::Stage1), "best-validation"),
        ModelSelect::Last => (exp.run.last_checkpoint(&Stage::Stage1), "last"),
    };
    if !path.exists() {
        return Err(TrainError::Checkpoint(format!(
            "no {what} stage-1 checkpoint at {}: run `lt-cli train` with this config first",
            path.display()
        )));
    }
    Ok(path)
}

/// Loads the selected stage-1 network; returns it with the checkpoint's epoch.
pub fn load_selected(exp: &Experiment) -> Result<(Network, PathBuf, usize), TrainError> {
    let path = selected_checkpoint(exp)?;
    let (tensors, meta) = load_checkpoint(&path, &exp.device)?;
    if meta.config_hash != exp.config.stage_hash(&Stage::Stage1)? {
        tracing::warn!(
            checkpoint = %path.display(),
            "the stage-1 checkpoint was written with a different config (hash {}); using it anyway",
            meta.config_hash
        );
    }
    let mut net = Network::from_config(
        &exp.config.model,
        exp.num_classes(),
        exp.config.model_seed(),
        &exp.device,
        false,
    )?;
    net.backbone.set_precision(exp.config.model.precision);
    net.set_classifier(&exp.config.model);
    net.load_tensors(&tensors, &path)?;
    tracing::info!(checkpoint = %path.display(), epoch = meta.epoch, "loaded stage-1 network");
    Ok((net, path, meta.epoch))
}
