//! Evaluation of heads from one stage-1 checkpoint, written as
//! `results.json` (schema in `lt_run::results`), and the export of features
//! and logits.
//!
//! Each requested head comes from the registry ([`crate::heads`]); heads
//! computed at evaluation time share the stage-1 features, which are
//! extracted once per split, and a trained head whose stage refreshed the BN
//! statistics is evaluated on features of its own backbone.
//!
//! **Shifted test distributions** (`eval.shifted_test`, on by default): when
//! the reported split is test, every head is also scored on test sets drawn
//! from it that are forward and backward long-tailed at each
//! `eval.shifted_imbalances` (default 50, 25, 10, 5, 2), and on the whole
//! split (uniform); see `lt_samplers::shifted` for the draw (classes ranked
//! by training count, the experiment seed). The backbone is not run again:
//! each head's per-image predictions on the test split are subset. The
//! reference row is post-hoc logit adjustment of the joint head with the
//! *known* test prior, z − log π_train + log π_test (τ = 1; a class absent
//! from a set gets log 0, i.e. is never predicted), which needs the joint
//! logits once more for the images of each set. A test split with a class
//! without images skips the shifted sets with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lt_core::{HeadId, Split, Stage};
use lt_heads::Classifier;
use lt_metrics::Evaluation;
use lt_run::{
    CheckpointMeta, HeadResult, Results, ShiftedRow, ShiftedSet, ShiftedTest, Stage1Summary,
    TauSweep, KNOWN_PRIOR_LA,
};
use lt_samplers::{SamplerError, ShiftedTestSet, TestShift};

use crate::eval::{evaluate_head, evaluate_head_scored, Features};
use crate::experiment::Experiment;
use crate::heads::{FeatureCache, HeadContext};
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
    // Each evaluated head's prediction of every image of the reported split.
    let mut predictions: Vec<(String, String, Vec<u32>)> = Vec::new();
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
        let scored = evaluate_head_scored(
            built.classifier.as_ref(),
            &feats.get(report)?,
            exp.num_classes(),
            &exp.train_stats,
            &cfg.eval.group_rule,
        )?;
        let evaluation = scored.evaluation;
        predictions.push((
            id.to_string(),
            method.label().to_string(),
            scored.predictions,
        ));
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
    out.shifted_test = shifted_test(exp, report, &net.head, &features, &predictions)?;
    if exp.dist.is_main() {
        out.write(&exp.run.results())?;
    }
    Ok(out)
}

/// Table name of the reference row of the shifted test sets.
const KNOWN_PRIOR_LABEL: &str = "LA (known test prior)";

/// The shifted test sets of the reported split and every head's top-1 on
/// them (see the module docs); `None` when switched off, when the reported
/// split is not test, or (with a warning) when a test class has no image.
fn shifted_test(
    exp: &Experiment,
    split: Split,
    joint: &dyn Classifier,
    stage1: &FeatureCache<'_>,
    predictions: &[(String, String, Vec<u32>)],
) -> Result<Option<ShiftedTest>, TrainError> {
    let cfg = &exp.config.eval;
    if !cfg.shifted_test {
        return Ok(None);
    }
    if split != Split::Test {
        tracing::info!(
            "no shifted test sets: the reported split is {}, not test",
            split.as_str()
        );
        return Ok(None);
    }
    let features = stage1.get(split)?;
    let labels = &features.labels;
    let order = lt_samplers::head_to_tail(exp.train_stats.counts());
    let seed = exp.config.seed;
    let mut sets: Vec<(TestShift, ShiftedTestSet)> = Vec::new();
    for shift in TestShift::sequence(&cfg.shifted_imbalances) {
        match lt_samplers::shifted_test_set(labels, exp.num_classes(), &order, shift, seed) {
            Ok(set) => sets.push((shift, set)),
            Err(e @ SamplerError::NoTestImages { .. }) => {
                tracing::warn!("no shifted test sets: {e}");
                return Ok(None);
            }
            Err(source) => {
                return Err(TrainError::Sampler {
                    context: format!("eval.shifted_test: the {shift} test set"),
                    source,
                })
            }
        }
    }
    let mut heads = Vec::with_capacity(predictions.len());
    for (head, label, preds) in predictions {
        let top1 = sets
            .iter()
            .map(|(_, set)| lt_metrics::subset_top1(preds, labels, &set.indices))
            .collect::<Result<Vec<f64>, _>>()?;
        heads.push(ShiftedRow {
            head: head.clone(),
            label: label.clone(),
            top1,
        });
    }
    let reference = match exp.train_stats.log_prior() {
        Ok(log_train) => {
            let mut top1 = Vec::with_capacity(sets.len());
            for (_, set) in &sets {
                top1.push(known_prior_top1(joint, &features, &log_train, set)?);
            }
            Some(ShiftedRow {
                head: KNOWN_PRIOR_LA.to_string(),
                label: KNOWN_PRIOR_LABEL.to_string(),
                top1,
            })
        }
        Err(class) => {
            tracing::warn!(
                "shifted test sets: no known-prior logit adjustment row (class {class} has no \
                 training image, so its log prior is -inf)"
            );
            None
        }
    };
    let per_class = sets.first().map_or(0, |(_, s)| s.per_class);
    Ok(Some(ShiftedTest {
        split,
        seed,
        per_class,
        sets: sets
            .into_iter()
            .map(|(shift, set)| ShiftedSet {
                shift,
                images: set.indices.len(),
                class_counts: set.class_counts,
            })
            .collect(),
        heads,
        reference,
    }))
}

/// Stands for log 0 in the known-prior shift: finite, so the logits stay
/// finite, and low enough that the class is never predicted.
const LOG_ZERO: f64 = -1e30;

/// The known-prior shift log π_test − log π_train of each class.
fn known_prior_shift(log_train: &[f64], class_counts: &[usize]) -> Vec<f32> {
    let total: usize = class_counts.iter().sum();
    log_train
        .iter()
        .zip(class_counts)
        .map(|(&lt, &n)| {
            if n == 0 {
                LOG_ZERO as f32
            } else {
                ((n as f64 / total as f64).ln() - lt) as f32
            }
        })
        .collect()
}

/// Top-1 of the joint head's logits plus the known-prior shift on the
/// images of `set`, computed on the features' device.
fn known_prior_top1(
    joint: &dyn Classifier,
    features: &Features,
    log_train: &[f64],
    set: &ShiftedTestSet,
) -> Result<f64, TrainError> {
    const CHUNK: usize = 4096;
    let device = features.features.device();
    let shift = candle_core::Tensor::new(
        known_prior_shift(log_train, &set.class_counts).as_slice(),
        device,
    )?;
    let mut hits = 0usize;
    for rows in set.indices.chunks(CHUNK) {
        let idx: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let idx = candle_core::Tensor::new(idx.as_slice(), device)?;
        let logits = joint
            .logits(&features.features.index_select(&idx, 0)?)?
            .to_dtype(candle_core::DType::F32)?
            .broadcast_add(&shift)?;
        let labels: Vec<u32> = rows.iter().map(|&i| features.labels[i]).collect();
        let labels_t = candle_core::Tensor::new(labels.as_slice(), device)?;
        let (scores, _) = lt_metrics::device::sample_scores(&logits, &labels_t)?;
        hits += scores
            .iter()
            .zip(&labels)
            .filter(|(s, y)| s.pred == **y)
            .count();
    }
    Ok(hits as f64 / set.indices.len() as f64)
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
    let crate::export::HeadModel {
        backbone,
        classifier,
        ..
    } = crate::export::build_head(exp, head)?;
    let backbone = &backbone;
    let mut written = Vec::new();
    for &s in splits {
        let f = crate::feature_store::split_features(
            exp,
            backbone,
            s,
            &format!("features {}", s.as_str()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExperimentConfig;
    use candle_core::{Device, Tensor};
    use lt_samplers::Imbalance;

    use crate::config::tests::MINIMAL as CONFIG;

    #[test]
    fn shifted_test_keys_default_and_bad_imbalances_name_the_key() {
        let c = ExperimentConfig::from_toml_str(CONFIG, "m.toml").unwrap();
        assert!(c.eval.shifted_test);
        assert_eq!(c.eval.shifted_imbalances, Imbalance::standard());
        let text = format!("{CONFIG}[eval]\nshifted_test = false\nshifted_imbalances = [100, 3]\n");
        let c = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap();
        assert!(!c.eval.shifted_test);
        let got: Vec<f64> = c.eval.shifted_imbalances.iter().map(|i| i.get()).collect();
        assert_eq!(got, [100.0, 3.0]);
        // The resolved config reads back the same.
        let again = ExperimentConfig::from_toml_str(&c.to_toml().unwrap(), "copy").unwrap();
        assert_eq!(again.eval, c.eval);
        for bad in ["[50, 0.5]", "[nan]", "[inf]", "[-2]"] {
            let text = format!("{CONFIG}[eval]\nshifted_imbalances = {bad}\n");
            let e = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap_err();
            let msg = format!("{e}");
            assert!(msg.contains("eval.shifted_imbalances"), "{bad}: {msg}");
            assert!(msg.contains("finite number >= 1"), "{bad}: {msg}");
        }
    }

    /// The known-prior shift is log pi_test - log pi_train, and log 0 for a
    /// class absent from the set.
    #[test]
    fn known_prior_shift_by_hand() {
        let log_train = [0.75f64.ln(), 0.25f64.ln()];
        let s = known_prior_shift(&log_train, &[1, 3]);
        assert!((s[0] as f64 - (0.25f64.ln() - 0.75f64.ln())).abs() < 1e-6);
        assert!((s[1] as f64 - (0.75f64.ln() - 0.25f64.ln())).abs() < 1e-6);
        let s = known_prior_shift(&log_train, &[0, 3]);
        assert!(s[0] < -1e29 && s[0].is_finite());
        assert!((s[1] as f64 - (1.0f64.ln() - 0.25f64.ln())).abs() < 1e-6);
    }

    /// A hand-made case: a head that always prefers class 0 by a small
    /// margin is right only on class 0; with the test prior of a set where
    /// class 1 dominates (and the training prior favouring class 0), the
    /// adjustment flips the prediction to class 1 on the set's images.
    #[test]
    fn known_prior_adjustment_on_a_subset() {
        let dev = Device::Cpu;
        // Identity head on 2-d features: logits = features.
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[0f32, 0.0], &dev).unwrap();
        let head =
            lt_heads::LinearHead::from_tensors(&candle_nn::VarMap::new(), "fc", &w, &b).unwrap();
        // 4 images: two of class 0, two of class 1; every logit row (1, 0.5).
        let features = Features {
            features: Tensor::new(&[[1f32, 0.5]; 4], &dev).unwrap(),
            labels: vec![0, 0, 1, 1],
        };
        // Training prior 0.5 / 0.5: the shift is log pi_test alone.
        let log_train = [0.5f64.ln(), 0.5f64.ln()];
        // Set: one image of class 0, two of class 1 (prior 1/3, 2/3):
        // logits 1 + ln(1/3) = -0.10 vs 0.5 + ln(2/3) = 0.09: class 1.
        let set = ShiftedTestSet {
            indices: vec![0, 2, 3],
            class_counts: vec![1, 2],
            per_class: 2,
        };
        let acc = known_prior_top1(&head, &features, &log_train, &set).unwrap();
        assert!((acc - 2.0 / 3.0).abs() < 1e-12, "{acc}");
        // Uniform prior: no change, class 0 predicted everywhere.
        let set = ShiftedTestSet {
            indices: vec![0, 1, 2, 3],
            class_counts: vec![2, 2],
            per_class: 2,
        };
        let acc = known_prior_top1(&head, &features, &log_train, &set).unwrap();
        assert!((acc - 0.5).abs() < 1e-12, "{acc}");
        // A class absent from the set is never predicted.
        let set = ShiftedTestSet {
            indices: vec![2, 3],
            class_counts: vec![0, 2],
            per_class: 2,
        };
        let acc = known_prior_top1(&head, &features, &log_train, &set).unwrap();
        assert_eq!(acc, 1.0);
    }
}
