//! Evaluation of heads from one stage-1 checkpoint, written as
//! `results.json` (schema in `lt_run::results`), and the export of features
//! and logits.
//!
//! Each requested head comes from the registry ([`crate::heads`]); heads
//! computed at evaluation time share the stage-1 features, which are
//! extracted once per split, and a trained head whose stage refreshed the BN
//! statistics is evaluated on features of its own backbone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lt_core::{HeadId, Split, Stage};
use lt_heads::Classifier;
use lt_metrics::Evaluation;
use lt_models::BnMode;
use lt_run::{CheckpointMeta, HeadResult, Results, Stage1Summary, TauSweep};

use crate::eval::{evaluate_head, extract_features, Features};
use crate::experiment::Experiment;
use crate::heads::{Built, FeatureCache, HeadContext};
use crate::TrainError;

fn eval_on(
    exp: &Experiment,
    head: &dyn Classifier,
    f: &Features,
) -> Result<(Evaluation, f64), TrainError> {
    evaluate_head(
        head,
        f,
        exp.num_classes(),
        &exp.train_stats,
        &exp.config.eval.group_rule,
    )
}

/// The splits an evaluation reports on: the reported split, plus val when it
/// exists and differs.
fn report_splits(exp: &Experiment) -> (Split, Option<Split>) {
    let report = exp.config.report_split();
    let val = (report != Split::Val && exp.val.is_some()).then_some(Split::Val);
    (report, val)
}

fn stage1_summary(exp: &Experiment, path: &Path, epoch: usize) -> Stage1Summary {
    let last = exp.run.last_checkpoint(&Stage::Stage1);
    let meta = CheckpointMeta::read_sidecar(&last).ok();
    let last_epoch = meta.as_ref().map(|m| m.epoch);
    let last_record = lt_run::metrics_log::read_records(&exp.run.metrics())
        .ok()
        .and_then(|rs| {
            rs.into_iter()
                .rev()
                .find(|r| r.stage == Stage::Stage1 && Some(r.epoch) == last_epoch)
        });
    Stage1Summary {
        model_select: exp.config.stage1.model_select,
        checkpoint: path.display().to_string(),
        epoch,
        last_epoch,
        best_val: meta.and_then(|m| m.best),
        last_val: last_record.as_ref().and_then(|r| r.val.clone()),
        last_test: last_record.and_then(|r| r.test),
    }
}

fn same_buffers(a: &lt_models::Backbone, b: &lt_models::Backbone) -> Result<bool, TrainError> {
    for ((na, va), (nb, vb)) in a.buffers().iter().zip(b.buffers().iter()) {
        if na != nb {
            return Ok(false);
        }
        let d = (va.as_tensor() - vb.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        if d != 0.0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Evaluates the requested heads (registry names) and writes `results.json`.
///
/// With `skip_missing`, a trained head whose checkpoint does not exist is
/// listed in [`Results::skipped`] instead of failing (used by `--head all`).
pub fn evaluate_heads(
    exp: &Experiment,
    heads: &[HeadId],
    skip_missing: bool,
) -> Result<Results, TrainError> {
    let cfg = &exp.config;
    let (report, val) = report_splits(exp);
    let (net, path, epoch) = crate::stage1::load_selected(exp)?;
    let features = FeatureCache::new(exp, &net.backbone, "stage1");
    let ctx = HeadContext {
        exp,
        stage1: &net,
        stage1_checkpoint: &path,
        stage1_epoch: epoch,
        features: &features,
    };
    let mut out = Results::new(
        cfg.name().to_string(),
        exp.config_hash.clone(),
        cfg.seed,
        cfg.model.arch.name().to_string(),
        cfg.stage1.sampler.clone(),
        report,
        cfg.eval.group_rule.clone(),
        exp.train_stats.group_sizes(&cfg.eval.group_rule),
        exp.train_stats.counts().to_vec(),
        exp.data_info.train.sha256.clone(),
        stage1_summary(exp, &path, epoch),
    );
    for id in heads {
        let method = crate::heads::lookup(id.as_str())?;
        if method.training().is_some() {
            let ck = crate::heads::selected_checkpoint(exp, id);
            if skip_missing && !ck.exists() {
                tracing::warn!(
                    "skipping {}: no checkpoint at {} (run `lt-cli retrain --head {id}`)",
                    method.label(),
                    ck.display(),
                );
                out.skipped.push(id.to_string());
                continue;
            }
        }
        let built = method.build(&ctx)?;
        // BN statistics refreshed in stage 2 change every feature; otherwise
        // the stage-1 features are reused.
        let own = match &built.backbone {
            Some(b) if !same_buffers(&net.backbone, b)? => {
                Some(FeatureCache::new(exp, b, id.as_str()))
            }
            _ => None,
        };
        let feats = own.as_ref().unwrap_or(&features);
        let (evaluation, _) = eval_on(exp, built.classifier.as_ref(), &feats.get(report)?)?;
        let val_eval = match val {
            Some(v) => Some(eval_on(exp, built.classifier.as_ref(), &feats.get(v)?)?.0),
            None => None,
        };
        let weight_norms = lt_heads::class_weight_norms(built.classifier.as_ref())?;
        out.heads.push(HeadResult {
            head: id.clone(),
            label: method.label().to_string(),
            checkpoint: built.checkpoint.display().to_string(),
            epoch: built.epoch,
            split: report,
            evaluation,
            val: val_eval,
            tau: built.tau,
            tau_sweep: built.tau_sweep,
            settings: built.settings,
            weight_norms,
        });
    }
    if exp.dist.is_main() {
        out.write(&exp.run.results())?;
    }
    Ok(out)
}

/// Runs the tau-norm sweep alone and writes `tau_sweep.json`.
pub fn run_tau_sweep(exp: &Experiment) -> Result<TauSweep, TrainError> {
    let (net, _, _) = crate::stage1::load_selected(exp)?;
    let feats = FeatureCache::new(exp, &net.backbone, "stage1");
    let sweep = crate::heads::tau_norm_sweep(exp, &net, &feats)?;
    if exp.dist.is_main() {
        let mut bytes = serde_json::to_vec_pretty(&sweep)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", exp.run.tau_sweep().display())))?;
        bytes.push(b'\n');
        lt_core::fs::write_atomic(&exp.run.tau_sweep(), &bytes)?;
    }
    Ok(sweep)
}

/// Exports features `(N, d)`, labels `(N,)` and the logits `(N, C)` of `head`
/// for each split, as `features/<split>.safetensors` (or under `out_dir`),
/// with the backbone the head is evaluated on; returns the files.
pub fn export_features(
    exp: &Experiment,
    splits: &[Split],
    head: &HeadId,
    out_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, TrainError> {
    let method = crate::heads::lookup(head.as_str())?;
    let (net, path, epoch) = crate::stage1::load_selected(exp)?;
    let stage1_features = FeatureCache::new(exp, &net.backbone, "stage1");
    let ctx = HeadContext {
        exp,
        stage1: &net,
        stage1_checkpoint: &path,
        stage1_epoch: epoch,
        features: &stage1_features,
    };
    let Built {
        classifier,
        backbone,
        ..
    } = method.build(&ctx)?;
    let backbone = backbone.as_ref().unwrap_or(&net.backbone);
    let mut written = Vec::new();
    for &s in splits {
        let loader = exp.eval_loader(s)?;
        let f = extract_features(
            backbone,
            &loader,
            exp.config.eval.batch_size,
            BnMode::Eval,
            &format!("features {}", s.as_str()),
            &exp.dist,
        )?;
        let logits = classifier.logits(&f.features)?;
        let labels = f.labels_tensor(&exp.device)?;
        let path = match out_dir {
            Some(d) => d.join(format!("{}.safetensors", s.as_str())),
            None => exp.run.features(s),
        };
        let tensors = BTreeMap::from([
            ("features".to_string(), f.features.clone()),
            ("labels".to_string(), labels),
            ("logits".to_string(), logits),
        ]);
        let bytes =
            safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        if exp.dist.is_main() {
            lt_core::fs::write_atomic(&path, &bytes)?;
        }
        tracing::info!(split = s.as_str(), rows = f.len(), path = %path.display(), "exported features");
        written.push(path);
    }
    Ok(written)
}
