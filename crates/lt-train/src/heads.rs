//! Evaluation of every head from one stage-1 checkpoint: joint, NCM, tau-norm
//! (with its whole tau curve), cRT and LWS, written as `results.json`.

use std::collections::HashMap;
use std::path::PathBuf;

use lt_data::stats::GroupRule;
use lt_heads::{select_tau, tau_grid, HeadKind, NcmConfig, NcmHead, TauBias, TauNormHead};
use lt_metrics::Evaluation;
use lt_models::BnMode;
use lt_samplers::Strategy;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{write_json_atomic, BestMetric};
use crate::config::{Split, TauSelect};
use crate::eval::{evaluate_head, extract_features, head_err, split_metrics, Features};
use crate::experiment::Experiment;
use crate::model::Network;
use crate::run_dir::SplitMetrics;
use crate::stage2::{self, Stage2Head};
use crate::TrainError;

/// Version of the `results.json` schema.
pub const RESULTS_SCHEMA_VERSION: u32 = 1;

/// One point of the tau sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauPoint {
    /// The tau.
    pub tau: f64,
    /// Metrics on the selection split (val by default).
    pub select: SplitMetrics,
    /// Metrics on the reported split (when it differs from the selection split).
    pub report: Option<SplitMetrics>,
}

/// The tau sweep of a joint head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauSweep {
    /// Split tau is chosen on.
    pub select_split: Split,
    /// Reported split.
    pub report_split: Split,
    /// What happens to the bias.
    pub bias: TauBias,
    /// How tau is chosen.
    pub selection: TauSelect,
    /// The chosen tau.
    pub chosen: f64,
    /// Every tau of the grid with its metrics.
    pub curve: Vec<TauPoint>,
}

/// The result of one head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    /// Which head.
    pub head: HeadKind,
    /// Paper-style label (`Joint`, `NCM`, `cRT`, `τ-norm`, `LWS`).
    pub label: String,
    /// Checkpoint the head (and backbone) came from.
    pub checkpoint: String,
    /// Epoch of that checkpoint.
    pub epoch: usize,
    /// Split of `evaluation`.
    pub split: Split,
    /// The full evaluation (per-class accuracies included).
    pub evaluation: Evaluation,
    /// Validation evaluation, when the reported split is another one.
    pub val: Option<Evaluation>,
    /// Chosen tau (tau-norm only).
    pub tau: Option<f64>,
    /// NCM settings (NCM only).
    pub ncm: Option<NcmConfig>,
}

/// Stage-1 checkpoints behind the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage1Summary {
    /// `best_val` or `last`.
    pub model_select: String,
    /// The selected checkpoint.
    pub checkpoint: String,
    /// Its epoch.
    pub epoch: usize,
    /// Last completed epoch.
    pub last_epoch: Option<usize>,
    /// Best validation epoch and value.
    pub best_val: Option<BestMetric>,
    /// Validation (and test, if evaluated) metrics of the last epoch, from
    /// `metrics.jsonl`, so that both the last and the best-validation epoch
    /// are reported.
    pub last_val: Option<SplitMetrics>,
    /// Test metrics of the last epoch, when stage 1 evaluated test.
    pub last_test: Option<SplitMetrics>,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`RESULTS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Config name.
    pub config_name: String,
    /// SHA-256 of the resolved config.
    pub config_hash: String,
    /// Run seed.
    pub seed: u64,
    /// Backbone.
    pub arch: String,
    /// Stage-1 sampler, in words (e.g. `instance_balanced`).
    pub sampler: String,
    /// Stage-1 sampler, as configured.
    pub sampler_config: Strategy,
    /// Reported split.
    pub split: Split,
    /// Grouping rule, in words.
    pub group_rule: String,
    /// Grouping rule, as configured.
    pub group_rule_config: GroupRule,
    /// Many / medium / few class counts.
    pub group_sizes: [usize; 3],
    /// Training images per class.
    pub train_class_counts: Vec<usize>,
    /// SHA-256 of the training list.
    pub train_split_sha256: String,
    /// Stage-1 checkpoint information.
    pub stage1: Stage1Summary,
    /// One entry per evaluated head.
    pub heads: Vec<HeadResult>,
    /// The tau sweep, when tau-norm was evaluated.
    pub tau_sweep: Option<TauSweep>,
    /// Heads that were requested but not available (e.g. cRT not trained).
    pub skipped: Vec<String>,
}

impl Results {
    /// The result of a head, if evaluated.
    pub fn head(&self, kind: HeadKind) -> Option<&HeadResult> {
        self.heads.iter().find(|h| h.head == kind)
    }

    /// A many / medium / few / all table (percent) of every head.
    pub fn table(&self) -> String {
        let rows: Vec<(&str, &Evaluation)> = self
            .heads
            .iter()
            .map(|h| (h.label.as_str(), &h.evaluation))
            .collect();
        lt_metrics::markdown_table(&rows)
    }
}

/// Features of the splits an evaluation needs, computed once per backbone.
struct SplitFeatures {
    by_split: HashMap<Split, Features>,
}

impl SplitFeatures {
    fn get(&self, s: Split) -> Result<&Features, TrainError> {
        self.by_split
            .get(&s)
            .ok_or_else(|| TrainError::Invalid(format!("{} features not extracted", s.as_str())))
    }
}

fn extract_splits(
    exp: &Experiment,
    backbone: &lt_models::Backbone,
    splits: &[Split],
    tag: &str,
) -> Result<SplitFeatures, TrainError> {
    let mut by_split = HashMap::new();
    for &s in splits {
        if by_split.contains_key(&s) {
            continue;
        }
        let loader = exp.eval_loader(s)?;
        let f = extract_features(
            backbone,
            &loader,
            exp.config.eval.batch_size,
            BnMode::Eval,
            &format!("{tag} {}", s.as_str()),
            &exp.dist,
        )?;
        by_split.insert(s, f);
    }
    Ok(SplitFeatures { by_split })
}

fn eval_on(
    exp: &Experiment,
    head: &dyn lt_heads::Classifier,
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

/// Sweeps tau over the grid on the joint head (see [`TauSweep`]).
fn tau_sweep(
    exp: &Experiment,
    net: &Network,
    feats: &SplitFeatures,
) -> Result<TauSweep, TrainError> {
    let ec = &exp.config.eval;
    let select_split = ec.tau_select_split;
    let report_split = exp.config.report_split();
    let grid = match (ec.tau_select, &ec.tau_grid) {
        (TauSelect::Fixed, _) => vec![ec.tau.unwrap_or(1.0)],
        (_, Some(g)) => g.clone(),
        (_, None) => tau_grid(),
    };
    let mut curve = Vec::with_capacity(grid.len());
    for &tau in &grid {
        let head = TauNormHead::from_linear(&net.head, tau, ec.tau_bias).map_err(head_err)?;
        let (e, loss) = eval_on(exp, &head, feats.get(select_split)?)?;
        let report = if report_split != select_split {
            let (r, rl) = eval_on(exp, &head, feats.get(report_split)?)?;
            Some(split_metrics(&r, rl))
        } else {
            None
        };
        curve.push(TauPoint {
            tau,
            select: split_metrics(&e, loss),
            report,
        });
    }
    let chosen = match ec.tau_select {
        TauSelect::Fixed => grid[0],
        TauSelect::SweepOnVal => {
            let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.tau, p.select.top1)).collect();
            select_tau(&pts).map_err(head_err)?
        }
    };
    Ok(TauSweep {
        select_split,
        report_split,
        bias: ec.tau_bias,
        selection: ec.tau_select,
        chosen,
        curve,
    })
}

fn stage1_summary(exp: &Experiment, path: &std::path::Path, epoch: usize) -> Stage1Summary {
    let last = exp.run.last_checkpoint(crate::stage1::STAGE);
    let last_meta = crate::checkpoint::meta_path(&last);
    let meta: Option<crate::checkpoint::CheckpointMeta> = std::fs::read(&last_meta)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let last_epoch = meta.as_ref().map(|m| m.epoch);
    let last_record = crate::run_dir::read_records(&exp.run.metrics())
        .ok()
        .and_then(|rs| {
            rs.into_iter()
                .rev()
                .find(|r| r.stage == crate::stage1::STAGE && Some(r.epoch) == last_epoch)
        });
    Stage1Summary {
        model_select: exp.config.stage1.model_select.as_str().into(),
        checkpoint: path.display().to_string(),
        epoch,
        last_epoch,
        best_val: meta.and_then(|m| m.best),
        last_val: last_record.as_ref().and_then(|r| r.val.clone()),
        last_test: last_record.and_then(|r| r.test),
    }
}

/// Evaluates the requested heads and writes `results.json`.
///
/// With `skip_missing`, a stage-2 head whose checkpoint does not exist is
/// listed in [`Results::skipped`] instead of failing (used by `--head all`).
pub fn evaluate_heads(
    exp: &Experiment,
    heads: &[HeadKind],
    skip_missing: bool,
) -> Result<Results, TrainError> {
    let cfg = &exp.config;
    let (report, val) = report_splits(exp);
    let (net, path, epoch) = crate::stage1::load_selected(exp)?;
    let mut splits = vec![report];
    splits.extend(val);
    let tau_select = cfg.eval.tau_select_split;
    let wants_tau = heads.contains(&HeadKind::TauNorm);
    if wants_tau {
        splits.push(tau_select);
    }
    if heads.contains(&HeadKind::Ncm) {
        splits.push(Split::Train);
    }
    let feats = extract_splits(exp, &net.backbone, &splits, "stage1")?;
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    let mut tau_result = None;
    let describe = |kind: HeadKind,
                    head: &dyn lt_heads::Classifier,
                    f: &SplitFeatures,
                    checkpoint: &std::path::Path,
                    epoch: usize|
     -> Result<HeadResult, TrainError> {
        let (evaluation, _) = eval_on(exp, head, f.get(report)?)?;
        let val_eval = match val {
            Some(v) => Some(eval_on(exp, head, f.get(v)?)?.0),
            None => None,
        };
        Ok(HeadResult {
            head: kind,
            label: kind.label().to_string(),
            checkpoint: checkpoint.display().to_string(),
            epoch,
            split: report,
            evaluation,
            val: val_eval,
            tau: None,
            ncm: None,
        })
    };
    for &kind in heads {
        match kind {
            HeadKind::Joint => results.push(describe(kind, &net.head, &feats, &path, epoch)?),
            HeadKind::Ncm => {
                let train = feats.get(Split::Train)?;
                let ncm = NcmHead::fit(
                    &train.features,
                    &train.labels,
                    exp.num_classes(),
                    cfg.eval.ncm,
                )
                .map_err(head_err)?;
                let mut r = describe(kind, &ncm, &feats, &path, epoch)?;
                r.ncm = Some(cfg.eval.ncm);
                results.push(r);
            }
            HeadKind::TauNorm => {
                let sweep = tau_sweep(exp, &net, &feats)?;
                let head = TauNormHead::from_linear(&net.head, sweep.chosen, cfg.eval.tau_bias)
                    .map_err(head_err)?;
                let mut r = describe(kind, &head, &feats, &path, epoch)?;
                r.tau = Some(sweep.chosen);
                tau_result = Some(sweep);
                results.push(r);
            }
            HeadKind::Crt | HeadKind::Lws => {
                let which = if kind == HeadKind::Crt {
                    Stage2Head::Crt
                } else {
                    Stage2Head::Lws
                };
                let ck = stage2::selected_checkpoint(exp, which);
                if skip_missing && !ck.exists() {
                    tracing::warn!(
                        "skipping {}: no checkpoint at {} (run `lt-cli retrain --head {}`)",
                        kind.label(),
                        ck.display(),
                        which.stage()
                    );
                    skipped.push(kind.as_str().to_string());
                    continue;
                }
                let loaded = stage2::load_selected(exp, which)?;
                // BN statistics refreshed in stage 2 change every feature;
                // otherwise the stage-1 features are reused.
                let same_backbone = same_buffers(&net.backbone, &loaded.backbone)?;
                let own;
                let f = if same_backbone {
                    &feats
                } else {
                    let mut s = vec![report];
                    s.extend(val);
                    own = extract_splits(exp, &loaded.backbone, &s, which.stage())?;
                    &own
                };
                results.push(describe(kind, &loaded.head, f, &loaded.path, loaded.epoch)?);
            }
        }
    }
    let out = Results {
        schema_version: RESULTS_SCHEMA_VERSION,
        config_name: cfg.name().to_string(),
        config_hash: exp.config_hash.clone(),
        seed: cfg.seed,
        arch: cfg.model.arch.name().to_string(),
        sampler: cfg.stage1.sampler.to_string(),
        sampler_config: cfg.stage1.sampler.clone(),
        split: report,
        group_rule: cfg.eval.group_rule.to_string(),
        group_rule_config: cfg.eval.group_rule.clone(),
        group_sizes: exp.train_stats.group_sizes(&cfg.eval.group_rule),
        train_class_counts: exp.train_stats.counts().to_vec(),
        train_split_sha256: exp.data_info.train.sha256.clone(),
        stage1: stage1_summary(exp, &path, epoch),
        heads: results,
        tau_sweep: tau_result,
        skipped,
    };
    if exp.dist.is_main() {
        write_json_atomic(&exp.run.results(), &out)?;
    }
    Ok(out)
}

/// Runs the tau sweep alone and writes `tau_sweep.json`.
pub fn run_tau_sweep(exp: &Experiment) -> Result<TauSweep, TrainError> {
    let (net, _, _) = crate::stage1::load_selected(exp)?;
    let splits = [exp.config.eval.tau_select_split, exp.config.report_split()];
    let feats = extract_splits(exp, &net.backbone, &splits, "stage1")?;
    let sweep = tau_sweep(exp, &net, &feats)?;
    if exp.dist.is_main() {
        write_json_atomic(&exp.run.tau_sweep(), &sweep)?;
    }
    Ok(sweep)
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

/// Which head's logits to export with the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureHead {
    /// The stage-1 joint head (stage-1 backbone).
    Joint,
    /// The cRT head (cRT backbone).
    Crt,
    /// The LWS head (LWS backbone).
    Lws,
}

/// Exports features `(N, d)`, labels `(N,)` and logits `(N, C)` of each split
/// as `features/<split>.safetensors` (or under `out_dir`); returns the files.
pub fn export_features(
    exp: &Experiment,
    splits: &[Split],
    head: FeatureHead,
    out_dir: Option<&std::path::Path>,
) -> Result<Vec<PathBuf>, TrainError> {
    let (backbone, classifier): (lt_models::Backbone, Box<dyn lt_heads::Classifier>) = match head {
        FeatureHead::Joint => {
            let (net, _, _) = crate::stage1::load_selected(exp)?;
            (net.backbone, Box::new(net.head))
        }
        FeatureHead::Crt | FeatureHead::Lws => {
            let which = if head == FeatureHead::Crt {
                Stage2Head::Crt
            } else {
                Stage2Head::Lws
            };
            let l = stage2::load_selected(exp, which)?;
            (l.backbone, Box::new(l.head))
        }
    };
    let mut written = Vec::new();
    for &s in splits {
        let loader = exp.eval_loader(s)?;
        let f = extract_features(
            &backbone,
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
            None => exp.run.features(s.as_str()),
        };
        let tensors = std::collections::BTreeMap::from([
            ("features".to_string(), f.features.clone()),
            ("labels".to_string(), labels),
            ("logits".to_string(), logits),
        ]);
        let bytes =
            safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        if exp.dist.is_main() {
            crate::checkpoint::write_atomic(&path, &bytes)?;
        }
        tracing::info!(split = s.as_str(), rows = f.len(), path = %path.display(), "exported features");
        written.push(path);
    }
    Ok(written)
}
