//! A PyTorch checkpoint as the stage 1 of a run: the paper's released
//! models (classifier-balancing layout), or any `.pth` holding a backbone
//! and its joint linear classifier, evaluated and re-balanced here.
//!
//! [`import_stage1`] writes the run's stage-1 checkpoints
//! (`checkpoints/stage1_last.safetensors` and `stage1_best.safetensors`,
//! the same tensors) as if stage 1 had finished with the run's config: the
//! backbone from the file's backbone keys, the joint head (`fc.weight`,
//! `fc.bias`) from its classifier. From there every command that reads
//! stage 1 works as after `lt-cli train`: `eval --head all` (joint, NCM,
//! tau-norm, ...), `tau-sweep`, `retrain --head crt|lws`, `features`,
//! `export`, `predict`, and `run --resume` (stage 1 is finished; the trained
//! heads and the evaluation follow).
//!
//! Reading is strict: the backbone must have exactly the keys and shapes of
//! the config's `model.arch` (every missing, unexpected or mis-shaped key
//! is listed in one error) and the classifier must have as many classes as
//! the run's data. Nothing is written unless every check passes. A run
//! directory that already has a stage 1 is refused unless `overwrite`
//! is set; then, as when stage 1 is trained again, the trained heads'
//! checkpoints, their records in `metrics.jsonl`, `results.json` and
//! `tau_sweep.json` are removed with it.
//!
//! The checkpoints' metadata records stage 1 finished at the config's
//! `stage1.epochs` with the config's stage-1 hash, no optimiser steps
//! (`global_step` 0, no momentum) and the stage-1 sampler's state after
//! those epochs, so that `--resume` finds a finished stage. Which file they
//! came from (its path and SHA-256) is logged, and returned in
//! [`ImportReport`].
//!
//! Of the classifier-balancing releases, import the representation-learning
//! models (`models/<arch>_<sampling>_e90.pth`): their classifier is the
//! joint one. The cRT and LWS releases share that backbone, but the cRT
//! file's `fc` is the re-trained classifier (it would stand in for the
//! joint head); the LWS file's `fc` is the joint classifier and its
//! `scales` (`fc.scales`) are not imported (a warning says so).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use lt_core::Stage;
use lt_models::torch_import::read_torch_checkpoint;
/// The file conversion (`lt-cli convert <in> <out>`) and its vocabulary,
/// from `lt_models::torch_import`.
pub use lt_models::torch_import::{convert, ConvertReport, TorchLayout};
pub use lt_models::Arch;
use lt_run::layout::checkpoint_meta_path;

use crate::checkpoint::{load_into_varmap, save_checkpoint, CheckpointMeta, RngState};
use crate::experiment::Experiment;
use crate::model::Network;
use crate::TrainError;

/// What [`import_stage1`] did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The file imported.
    pub source: PathBuf,
    /// Its SHA-256 (lower-case hex).
    pub source_sha256: String,
    /// Its layout.
    pub layout: TorchLayout,
    /// Its `epoch` entry, when it has one.
    pub source_epoch: Option<i64>,
    /// The checkpoints written (last, then best).
    pub checkpoints: Vec<PathBuf>,
    /// Files of an earlier stage 1 and of what was built on it, removed
    /// (`overwrite`).
    pub removed: Vec<PathBuf>,
    /// Entries of the file not imported (`epoch`, optimiser state,
    /// `fc.scales`, ...).
    pub ignored: Vec<String>,
}

/// Imports a PyTorch checkpoint (`.pth`, `.pth.tar`) as the finished stage 1
/// of `exp`'s run; see the module docs.
pub fn import_stage1(
    exp: &Experiment,
    pth: &Path,
    overwrite: bool,
) -> Result<ImportReport, TrainError> {
    let cfg = &exp.config;
    let stage = Stage::Stage1;
    let last = exp.run.last_checkpoint(&stage);
    let best = exp.run.best_checkpoint(&stage);
    if !overwrite {
        if let Some(p) = [&last, &best].into_iter().find(|p| p.exists()) {
            return Err(TrainError::Checkpoint(format!(
                "{} already exists: pass --overwrite to replace the run's stage 1 (and what \
                 was built on it)",
                p.display()
            )));
        }
    }
    let ckpt = read_torch_checkpoint(pth, &exp.device)?;
    let origin = pth.display().to_string();
    let mut net = Network::new(
        cfg.model.arch,
        exp.num_classes(),
        cfg.model_seed(),
        &exp.device,
    )?;
    net.backbone.set_precision(cfg.model.precision);
    net.set_classifier(&cfg.model);
    // Strict: fc.* and num_batches_tracked aside, the keys must be exactly
    // the backbone's.
    net.backbone
        .store()
        .load_state_dict(ckpt.to_hash_map(), &origin, true)?;
    let mut ignored = ckpt.ignored.clone();
    let mut head = HashMap::new();
    let mut problems = Vec::new();
    let want = [
        (
            "fc.weight",
            vec![exp.num_classes(), net.backbone.feature_dim()],
        ),
        ("fc.bias", vec![exp.num_classes()]),
    ];
    for (name, shape) in &want {
        match ckpt.tensors.get(*name) {
            None => problems.push(format!("no `{name}`")),
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "`{name}` has shape {:?}, the run needs {shape:?} ({} classes, {}-d features)",
                t.dims(),
                exp.num_classes(),
                net.backbone.feature_dim()
            )),
            Some(t) => {
                head.insert(name.to_string(), t.clone());
            }
        }
    }
    if !problems.is_empty() {
        return Err(TrainError::Checkpoint(format!(
            "{origin}: the classifier does not fit the run's joint head: {} (a backbone-only \
             file is a `model.pretrained` for training stage 1, not a stage 1)",
            problems.join("; ")
        )));
    }
    for extra in ckpt
        .tensors
        .keys()
        .filter(|k| k.starts_with("fc.") && !head.contains_key(*k))
    {
        tracing::warn!(
            source = %origin,
            key = %extra,
            "not imported: the joint head is fc.weight and fc.bias only"
        );
        ignored.push(extra.clone());
    }
    load_into_varmap(&net.head_vars, &head, pth)?;

    let sampler_state = finished_sampler_state(exp)?;
    let source_sha256 = lt_core::fs::sha256_file(pth, |_| {})?;
    let meta =
        CheckpointMeta {
            format_version: crate::checkpoint::FORMAT_VERSION,
            stage: stage.clone(),
            epoch: cfg.stage1.epochs,
            global_step: 0,
            sampler: Some(serde_json::to_value(sampler_state).map_err(|e| {
                TrainError::Checkpoint(format!("serialising the sampler state: {e}"))
            })?),
            rng: RngState {
                seed: cfg.seed,
                next_epoch: cfg.stage1.epochs as u64,
            },
            best: None,
            config_hash: cfg.stage_hash(&stage)?,
            lr: 0.0,
            tensors_sha256: None,
        };
    let tensors: BTreeMap<String, Tensor> = net.tensors();

    // Every check passed: clear what an earlier stage 1 left, then write.
    let removed = if overwrite {
        remove_stage1_and_dependents(exp)?
    } else {
        Vec::new()
    };
    exp.run.create()?;
    for path in [&last, &best] {
        save_checkpoint(path, &tensors, &BTreeMap::new(), &meta)?;
    }
    tracing::info!(
        source = %origin,
        sha256 = %source_sha256,
        layout = %ckpt.layout,
        source_epoch = ?ckpt.epoch,
        checkpoint = %last.display(),
        "imported a PyTorch checkpoint as stage 1"
    );
    ignored.sort();
    Ok(ImportReport {
        source: pth.to_path_buf(),
        source_sha256,
        layout: ckpt.layout,
        source_epoch: ckpt.epoch,
        checkpoints: vec![last, best],
        removed,
        ignored,
    })
}

/// The stage-1 sampler's state once it has drawn every epoch of the config,
/// as a finished stage 1 would have left it.
fn finished_sampler_state(exp: &Experiment) -> Result<lt_samplers::SamplerState, TrainError> {
    let mut sampler = crate::stage1::stage1_sampler(exp)?;
    for _ in 0..exp.config.stage1.epochs {
        sampler.next_epoch();
    }
    Ok(sampler.state())
}

/// Removes the run's stage-1 checkpoints and what was built on them (the
/// trained heads' checkpoints and `metrics.jsonl` records, `results.json`,
/// `tau_sweep.json`), as training stage 1 again does.
fn remove_stage1_and_dependents(exp: &Experiment) -> Result<Vec<PathBuf>, TrainError> {
    let mut stages = vec![Stage::Stage1];
    stages.extend(
        crate::heads::REGISTRY
            .iter()
            .filter(|h| h.training().is_some())
            .map(|h| Stage::Head(h.id())),
    );
    let mut removed = Vec::new();
    let metrics = exp.run.metrics();
    let records = lt_run::metrics_log::read_records(&metrics)?;
    for stage in &stages {
        for ck in [
            exp.run.last_checkpoint(stage),
            exp.run.best_checkpoint(stage),
        ] {
            for f in [checkpoint_meta_path(&ck), ck] {
                if f.exists() {
                    std::fs::remove_file(&f).map_err(|e| TrainError::io(&f, e))?;
                    removed.push(f);
                }
            }
        }
        if records.iter().any(|r| &r.stage == stage) {
            lt_run::metrics_log::truncate_records(&metrics, stage, 0)?;
        }
    }
    for f in [exp.run.results(), exp.run.tau_sweep()] {
        if f.exists() {
            std::fs::remove_file(&f).map_err(|e| TrainError::io(&f, e))?;
            removed.push(f);
        }
    }
    Ok(removed)
}
