//! The epoch loop shared by stage 1 and stage 2: sampling, the SGD step,
//! per-epoch evaluation, best / last checkpoints, metrics, resumption and the
//! non-finite-loss stop.
//!
//! A `Trainer` is built from parts (the stage's settings, the device, the
//! data-parallel group, a `Checkpointer` and a `MetricsLog`) and runs a
//! model, an optimiser, a sampler, a batch source, a schedule and a loss given
//! explicitly: it never sees the whole experiment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lt_core::{Split, Stage};
use lt_data::loader::Loader;
use lt_metrics::Evaluation;
use lt_run::layout::checkpoint_meta_path;
use lt_run::metrics_log::{append_record, read_records, truncate_records};
use lt_run::{EpochRecord, RunDir, SplitMetrics};
use lt_samplers::{Sampler, SamplerState};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    load_checkpoint, save_checkpoint, BestMetric, CheckpointMeta, RngState, FORMAT_VERSION,
};
use crate::dist::Dist;
use crate::eval::Features;
use crate::loss::Loss;
use crate::max_norm::{MaxNormConfig, MaxNormEvery};
use crate::mixup::Mixup;
use crate::optim::SgdMomentum;
use crate::progress;
use crate::schedule::LrSchedule;
use crate::TrainError;

/// How a training command treats an existing checkpoint of its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// Start from scratch; refuse if the run directory already has a
    /// checkpoint of this stage (so a finished run is never overwritten by
    /// accident).
    #[default]
    Fresh,
    /// Continue from the last checkpoint, reproducing an uninterrupted run.
    Resume,
    /// Start from scratch, replacing any previous checkpoint of this stage.
    Overwrite,
    /// Continue from the last checkpoint when there is one, otherwise start
    /// from scratch: what `lt-cli run --resume` does for every stage, so a
    /// pipeline continues from whatever stage it had reached.
    Continue,
}

/// How a training command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// What to do with an existing checkpoint.
    pub start: StartMode,
    /// Stop once this many epochs are complete (the checkpoint is written as
    /// usual, so `--resume` continues exactly); `None` runs to the end.
    pub stop_after_epoch: Option<usize>,
}

/// Where the training batches come from.
#[derive(Debug)]
pub(crate) enum BatchSource<'a> {
    /// Decoded and augmented images.
    Images(&'a Loader),
    /// Pre-computed features (stage-2 fast path).
    Features(&'a Features),
}

/// What the loop needs from a model.
pub(crate) trait TrainModel {
    /// Logits of one training batch (images, or features on the fast path).
    fn train_logits(&self, input: &Tensor) -> Result<Tensor, TrainError>;
    /// Every tensor a checkpoint holds, by name.
    fn tensors(&self) -> BTreeMap<String, Tensor>;
    /// Restores the tensors of a checkpoint.
    fn load(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<(), TrainError>;
    /// Evaluates the current model on a split (evaluation, mean loss).
    fn evaluate(&mut self, split: Split) -> Result<(Evaluation, f64), TrainError>;
}

/// The last and best checkpoints of one stage.
#[derive(Debug, Clone)]
pub(crate) struct Checkpointer {
    last: PathBuf,
    best: PathBuf,
    seed: u64,
}

impl Checkpointer {
    /// The checkpoints of `stage` in a run directory; `seed` is recorded in
    /// their random state.
    pub fn new(run: &RunDir, stage: &Stage, seed: u64) -> Self {
        Checkpointer {
            last: run.last_checkpoint(stage),
            best: run.best_checkpoint(stage),
            seed,
        }
    }

    /// The files of both checkpoints (with their metadata copies) that
    /// exist.
    fn existing(&self) -> Vec<PathBuf> {
        [&self.last, &self.best]
            .into_iter()
            .flat_map(|p| [p.clone(), checkpoint_meta_path(p)])
            .filter(|f| f.exists())
            .collect()
    }

    /// Removes both checkpoints and their metadata copies; returns the
    /// removed files.
    fn remove(&self) -> Result<Vec<PathBuf>, TrainError> {
        let files = self.existing();
        for f in &files {
            std::fs::remove_file(f).map_err(|e| TrainError::io(f, e))?;
        }
        Ok(files)
    }
}

/// What is built on a stage's checkpoints, removed when the stage starts
/// over, so that no later stage or result mixes in its old version.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dependents {
    /// Stages trained on it: their checkpoints and `metrics.jsonl` records.
    pub stages: Vec<(Stage, Checkpointer)>,
    /// Files computed from it (`results.json`, `tau_sweep.json`).
    pub files: Vec<PathBuf>,
    /// Whether they go even when the stage had no checkpoint of its own
    /// (what is built on a stage 1 that is gone has nothing left to stand
    /// on); otherwise only when a checkpoint of it is replaced.
    pub always: bool,
}

impl Dependents {
    /// Removes them; returns the removed files and the stages whose records
    /// were dropped from the log.
    fn remove(&self, metrics: &Path) -> Result<(Vec<PathBuf>, Vec<Stage>), TrainError> {
        let mut removed = Vec::new();
        let mut logged = Vec::new();
        let records = read_records(metrics)?;
        for (stage, checkpoints) in &self.stages {
            removed.extend(checkpoints.remove()?);
            if records.iter().any(|r| &r.stage == stage) {
                truncate_records(metrics, stage, 0)?;
                logged.push(stage.clone());
            }
        }
        for f in &self.files {
            if f.exists() {
                std::fs::remove_file(f).map_err(|e| TrainError::io(f, e))?;
                removed.push(f.clone());
            }
        }
        Ok((removed, logged))
    }
}

/// The run's `metrics.jsonl`.
#[derive(Debug, Clone)]
pub(crate) struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub fn new(path: PathBuf) -> Self {
        MetricsLog { path }
    }
}

/// One stage's epoch loop, built from parts.
#[derive(Debug)]
pub(crate) struct Trainer<'a> {
    pub stage: Stage,
    pub epochs: usize,
    pub eval_every: usize,
    pub eval_val: bool,
    pub eval_test: bool,
    pub options: RunOptions,
    /// [`crate::config::ExperimentConfig::stage_hash`] of the stage.
    pub config_hash: String,
    pub device: Device,
    pub dist: &'a Dist,
    pub checkpoints: Checkpointer,
    /// What goes when this stage starts over.
    pub dependents: Dependents,
    pub log: MetricsLog,
    /// MaxNorm projection after the optimiser, if configured.
    pub max_norm: Option<MaxNormConfig>,
    /// Mixup of the image batches, if configured (stage 1).
    pub mixup: Option<Mixup>,
}

/// Summary of a finished training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// `stage1`, or the trained head.
    pub stage: Stage,
    /// Epochs completed so far.
    pub epochs: usize,
    /// Epochs the stage is configured for.
    pub total_epochs: usize,
    /// Optimiser steps completed.
    pub global_step: u64,
    /// Epoch the run resumed from (completed epochs), if resumed.
    pub resumed_from: Option<usize>,
    /// Validation metrics of the last epoch.
    pub last_val: Option<SplitMetrics>,
    /// Test metrics of the last epoch (when evaluated).
    pub last_test: Option<SplitMetrics>,
    /// Best validation epoch.
    pub best: Option<BestMetric>,
    /// Last-epoch checkpoint.
    pub last_checkpoint: PathBuf,
    /// Best-validation checkpoint.
    pub best_checkpoint: Option<PathBuf>,
}

const BEST_METRIC: &str = "val_top1";

impl Trainer<'_> {
    /// Runs (or resumes) the epoch loop.
    pub(crate) fn run(
        &self,
        model: &mut dyn TrainModel,
        opt: &mut SgdMomentum,
        sampler: &mut Sampler,
        source: BatchSource<'_>,
        schedule: &LrSchedule,
        loss_fn: &dyn Loss,
    ) -> Result<TrainReport, TrainError> {
        let spec = self;
        let stage = &self.stage;
        let last_path = self.checkpoints.last.clone();
        let best_path = self.checkpoints.best.clone();
        let metrics_path = self.log.path.clone();
        let device = self.device.clone();
        let mut start_epoch = 0usize;
        let mut global_step = 0u64;
        let mut best: Option<BestMetric> = None;
        let mut resumed_from = None;
        let mut last_val = None;
        let mut last_test = None;
        let resume = match spec.options.start {
            StartMode::Resume => {
                if !last_path.exists() {
                    return Err(TrainError::Checkpoint(format!(
                        "--resume: no checkpoint at {} to resume from",
                        last_path.display()
                    )));
                }
                true
            }
            StartMode::Continue => {
                let found = last_path.exists();
                if !found {
                    tracing::info!(
                        stage = %stage,
                        "no checkpoint at {} yet: starting the stage from the beginning",
                        last_path.display()
                    );
                }
                found
            }
            StartMode::Fresh | StartMode::Overwrite => false,
        };
        if resume {
            let (tensors, meta) = load_checkpoint(&last_path, &device)?;
            if &meta.stage != stage {
                return Err(TrainError::Checkpoint(format!(
                    "{}: holds stage `{}`, expected `{stage}`",
                    last_path.display(),
                    meta.stage
                )));
            }
            if meta.config_hash != spec.config_hash {
                return Err(TrainError::Checkpoint(format!(
                    "{}: written with another config (hash {} vs {}); resuming would not \
                     reproduce the run (use the same config and --set values, or start over \
                     with --overwrite)",
                    last_path.display(),
                    meta.config_hash,
                    spec.config_hash
                )));
            }
            model.load(&tensors, &last_path)?;
            opt.load_state_tensors(&tensors)?;
            let state: SamplerState = meta
                .sampler
                .clone()
                .ok_or_else(|| {
                    TrainError::Checkpoint(format!("{}: no sampler state", last_path.display()))
                })
                .and_then(|v| {
                    serde_json::from_value(v).map_err(|e| {
                        TrainError::Checkpoint(format!(
                            "{}: bad sampler state: {e}",
                            last_path.display()
                        ))
                    })
                })?;
            sampler
                .restore(state)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", last_path.display())))?;
            start_epoch = meta.epoch;
            global_step = meta.global_step;
            best = meta.best.clone();
            resumed_from = Some(meta.epoch);
            if self.dist.is_main() {
                truncate_records(&metrics_path, stage, start_epoch)?;
                // A kill between a checkpoint and its JSON copy left the
                // copy an epoch behind; the checkpoints are right.
                for p in [&last_path, &best_path] {
                    if p.exists() {
                        crate::checkpoint::repair_sidecar(p)?;
                    }
                }
            }
            tracing::info!(
                stage = %stage,
                epoch = start_epoch,
                global_step,
                "resumed from {}",
                last_path.display()
            );
        } else {
            if spec.options.start == StartMode::Fresh && last_path.exists() {
                return Err(TrainError::Checkpoint(format!(
                    "{} already exists: pass --resume to continue that run or --overwrite to \
                     start over",
                    last_path.display()
                )));
            }
            if self.dist.is_main() {
                let replaced = self.checkpoints.remove()?;
                truncate_records(&metrics_path, stage, 0)?;
                if !replaced.is_empty() || self.dependents.always {
                    let (removed, logged) = self.dependents.remove(&metrics_path)?;
                    if !removed.is_empty() || !logged.is_empty() {
                        let names: Vec<String> =
                            removed.iter().map(|p| p.display().to_string()).collect();
                        let logged: Vec<String> = logged.iter().map(|s| s.to_string()).collect();
                        tracing::info!(
                            stage = %stage,
                            removed = %names.join(", "),
                            metrics_records_of = %logged.join(", "),
                            "starting over: removed what was built on the previous {stage}"
                        );
                    }
                }
            }
        }
        let dist = self.dist;
        if dist.is_distributed() {
            // Every rank starts from rank 0's weights (they already agree when
            // built from the same seed or checkpoint; this makes it a guarantee).
            // Also the first collective: no rank writes before all have checked
            // their start mode against the files.
            let from_main = dist.broadcast_tensors(&model.tensors())?;
            model.load(&from_main, Path::new("rank 0"))?;
        }
        // SyncBN, when configured: BN in training mode uses global statistics.
        let _sync_bn = dist.sync_bn();

        let end_epoch = spec
            .options
            .stop_after_epoch
            .map_or(spec.epochs, |n| n.min(spec.epochs));
        for epoch in start_epoch..end_epoch {
            let batches = sampler.next_epoch();
            if batches.is_empty() {
                return Err(TrainError::Invalid(format!(
                "{stage}: the sampler produced no batch (dataset of {} images, batch size {}); \
                 lower the batch size",
                sampler.num_samples(),
                sampler.local_batch_size()
            )));
            }
            let n_batches = batches.len();
            let bar = progress::bar(
                n_batches as u64,
                &format!("{stage} {}/{}", epoch + 1, spec.epochs),
            );
            let started = Instant::now();
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0f64, 0usize);
            let mut lr = schedule.lr(epoch, 0);
            let mut step = |i: usize, input: Tensor, labels: Tensor| -> Result<(), TrainError> {
                lr = schedule.lr(epoch, i);
                opt.set_lr(lr);
                let draw = spec.mixup.map(|m| m.draw(epoch, i, labels.dims()[0]));
                let input = match &draw {
                    Some(d) => d.mix(&input)?,
                    None => input,
                };
                let logits = model.train_logits(&input)?;
                let loss = match &draw {
                    Some(d) => d.loss(loss_fn, &logits, &labels, epoch)?,
                    None => loss_fn.forward(&logits, &labels, epoch)?,
                };
                let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                if !l.is_finite() {
                    return Err(TrainError::NonFiniteLoss {
                        epoch: epoch + 1,
                        step: i + 1,
                        global_step: global_step + 1,
                        loss: l,
                        kept: (epoch > 0).then_some(epoch),
                    });
                }
                let mut grads = loss.backward()?;
                // After backward, not overlapped with it: candle has no hooks.
                dist.average_gradients(&mut grads, opt.params())?;
                opt.step(&grads)?;
                if let Some(m) = spec.max_norm.filter(|m| m.every == MaxNormEvery::Iteration) {
                    m.project(opt.params())?;
                }
                global_step += 1;
                let b = labels.dim(0)?;
                let predicted = logits.detach().argmax(1)?;
                let hits_of = |y: &Tensor| -> candle_core::Result<f32> {
                    predicted
                        .eq(y)?
                        .to_dtype(DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()
                };
                // Under mixup an image counts as lambda of a hit on its own
                // label and 1 - lambda on its partner's.
                let hits = match &draw {
                    Some(d) => {
                        let l = d.lambda as f32;
                        l * hits_of(&labels)? + (1.0 - l) * hits_of(&d.permuted(&labels)?)?
                    }
                    None => hits_of(&labels)?,
                };
                loss_sum += l as f64 * b as f64;
                correct += hits as f64;
                seen += b;
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {l:.4} lr {lr:.4} {rate:.0} img/s"));
                bar.inc(1);
                Ok(())
            };
            let result: Result<(), TrainError> = match source {
                BatchSource::Images(loader) => {
                    let mut r = Ok(());
                    // Global epoch positions of this rank's slices, so that the
                    // augmentation of every sample is the single-process one.
                    let global = sampler.config().batch_size;
                    let offset = dist.rank() * sampler.local_batch_size();
                    let positions = (0..batches.len()).map(|i| i * global + offset).collect();
                    let epoch_batches = loader.epoch_at(epoch as u64, batches, positions);
                    for (i, batch) in epoch_batches.enumerate() {
                        let batch = match batch {
                            Ok(b) => b,
                            Err(e) => {
                                r = Err(TrainError::from(e));
                                break;
                            }
                        };
                        let input = batch.images.to_device(&device)?;
                        let labels = batch.labels.to_device(&device)?;
                        if let Err(e) = step(i, input, labels) {
                            r = Err(e);
                            break;
                        }
                    }
                    r
                }
                BatchSource::Features(f) => {
                    let mut r = Ok(());
                    for (i, b) in batches.iter().enumerate() {
                        let idx: Vec<u32> = b.iter().map(|&j| j as u32).collect();
                        let idx = Tensor::new(idx.as_slice(), &device)?;
                        let input = f.features.index_select(&idx, 0)?;
                        let labels: Vec<u32> = b.iter().map(|&j| f.labels[j]).collect();
                        let labels = Tensor::new(labels.as_slice(), &device)?;
                        if let Err(e) = step(i, input, labels) {
                            r = Err(e);
                            break;
                        }
                    }
                    r
                }
            };
            if let Err(e) = result {
                bar.abandon();
                if matches!(e, TrainError::NonFiniteLoss { .. }) {
                    tracing::error!(stage = %stage, "{e}");
                }
                return Err(e);
            }
            bar.finish_and_clear();
            if let Some(m) = spec.max_norm.filter(|m| m.every == MaxNormEvery::Epoch) {
                m.project(opt.params())?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            // Training loss and accuracy of the global batch stream.
            let mut totals = [loss_sum, correct, seen as f64];
            dist.sum_f64(&mut totals)?;
            let [loss_sum, correct, seen] = totals;

            let evaluate_now = (epoch + 1) % spec.eval_every == 0 || epoch + 1 == spec.epochs;
            // An evaluation error (diverged weights give non-finite logits)
            // names the stage and the epoch; this epoch's checkpoint is not
            // written.
            let mut evaluate = |split: Split| -> Result<SplitMetrics, TrainError> {
                let (e, loss) = model
                    .evaluate(split)
                    .map_err(|e| TrainError::EpochEvaluation {
                        stage: stage.clone(),
                        epoch: epoch + 1,
                        split,
                        kept: (epoch > 0).then_some(epoch),
                        source: Box::new(e),
                    })?;
                Ok(SplitMetrics::of(&e, loss))
            };
            let val = if evaluate_now && spec.eval_val {
                Some(evaluate(Split::Val)?)
            } else {
                None
            };
            let test = if evaluate_now && spec.eval_test {
                Some(evaluate(Split::Test)?)
            } else {
                None
            };
            let is_best = match (&val, &best) {
                (Some(v), Some(b)) => v.top1 > b.value,
                (Some(_), None) => true,
                _ => false,
            };
            if is_best {
                best = Some(BestMetric {
                    epoch: epoch + 1,
                    metric: BEST_METRIC.into(),
                    value: val.as_ref().map_or(f64::NAN, |v| v.top1),
                });
            }
            let record = EpochRecord {
                stage: stage.clone(),
                epoch: epoch + 1,
                global_step,
                lr,
                train_loss: loss_sum / seen.max(1.0),
                train_top1: correct / seen.max(1.0),
                images_per_sec: seen / elapsed.max(1e-9),
                val: val.clone(),
                test: test.clone(),
                is_best,
            };
            tracing::info!(
                stage = %stage,
                epoch = epoch + 1,
                loss = format!("{:.4}", record.train_loss),
                train_top1 = format!("{:.4}", record.train_top1),
                lr = format!("{lr:.5}"),
                img_per_s = format!("{:.1}", record.images_per_sec),
                val_top1 = ?val.as_ref().map(|v| v.top1),
                test_top1 = ?test.as_ref().map(|v| v.top1),
                best = is_best,
                "epoch done"
            );
            // The record goes first: if the process dies before the checkpoint is
            // renamed into place, a resume redoes this epoch and drops the record.
            if dist.is_main() {
                append_record(&metrics_path, &record)?;
            }
            let meta = CheckpointMeta {
                format_version: FORMAT_VERSION,
                stage: stage.clone(),
                epoch: epoch + 1,
                global_step,
                sampler: Some(serde_json::to_value(sampler.state()).map_err(|e| {
                    TrainError::Checkpoint(format!("serialising sampler state: {e}"))
                })?),
                rng: RngState {
                    seed: self.checkpoints.seed,
                    next_epoch: (epoch + 1) as u64,
                },
                best: best.clone(),
                config_hash: spec.config_hash.clone(),
                lr,
                // Filled in by `save_checkpoint`.
                tensors_sha256: None,
            };
            // Only rank 0 writes: every rank holds the same weights, and the
            // sampler state is that of the global stream (no rank or world size
            // in it), so any number of ranks can resume from it.
            if dist.is_main() {
                let tensors = model.tensors();
                if is_best {
                    save_checkpoint(&best_path, &tensors, &BTreeMap::new(), &meta)?;
                }
                save_checkpoint(&last_path, &tensors, &opt.state_tensors(), &meta)?;
            }
            last_val = val;
            last_test = test;
        }
        // The next stage may read what rank 0 just wrote.
        dist.comm().barrier()?;
        if resumed_from == Some(spec.epochs) {
            tracing::info!(stage = %stage, "already complete ({} epochs)", spec.epochs);
        }
        if last_val.is_none() && last_test.is_none() {
            // Nothing ran in this process (a finished run resumed): report the
            // last epoch from the log.
            if let Some(r) = read_records(&metrics_path)?
                .into_iter()
                .rev()
                .find(|r| &r.stage == stage && r.epoch == end_epoch.max(start_epoch))
            {
                last_val = r.val;
                last_test = r.test;
            }
        }
        if end_epoch < spec.epochs {
            tracing::info!(
                stage = %stage,
                "stopped after epoch {end_epoch} of {} as asked; continue with --resume",
                spec.epochs
            );
        }
        Ok(TrainReport {
            stage: stage.clone(),
            epochs: end_epoch.max(start_epoch),
            total_epochs: spec.epochs,
            global_step,
            resumed_from,
            last_val,
            last_test,
            best_checkpoint: best.as_ref().map(|_| best_path.clone()),
            best,
            last_checkpoint: last_path,
        })
    }
}
