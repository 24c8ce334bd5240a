//! Every classifier head, behind one trait and one registry.
//!
//! A head is one type implementing [`HeadMethod`] in one file of this module,
//! plus one line in [`REGISTRY`]. Evaluation (`lt-cli eval --head`), feature
//! export (`lt-cli features --head`), stage-2 training (`lt-cli retrain
//! --head`), the config's `[stage2.<head>]` sections, the sweep and the CLI's
//! help all find heads here; nothing else lists them.
//!
//! Two kinds of head:
//!
//! * **computed at evaluation time** from the stage-1 network and features
//!   (joint, NCM, tau-norm, post-hoc logit adjustment): [`HeadMethod::build`]
//!   fits them in seconds ([`sweep_tau`] chooses a head's tau on val);
//! * **trained** in a stage of their own on the frozen backbone (cRT, LWS):
//!   [`HeadMethod::training`] returns a [`TrainedHead`], which gives the
//!   stage's default settings and builds the trainable classifier from the
//!   stage-1 joint head; [`stage2::retrain`](crate::stage2::retrain) trains
//!   it with the shared epoch loop, and evaluation restores it from its
//!   checkpoint ([`build_trained`]).
//!
//! # Adding a head
//!
//! A new file, e.g. `src/heads/scaled.rs`, and one line in [`REGISTRY`]:
//!
//! ```
//! use lt_heads::Classifier;
//! use lt_train::heads::{Built, HeadContext, HeadMethod};
//! use lt_train::TrainError;
//!
//! /// The joint head with every logit divided by a temperature: a head that
//! /// only changes confidence, never the prediction.
//! #[derive(Debug)]
//! struct Tempered(lt_heads::LinearHead, f64);
//!
//! impl Classifier for Tempered {
//!     fn logits(&self, f: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
//!         self.0.logits(f)? / self.1
//!     }
//! }
//!
//! struct TemperedJoint;
//!
//! impl HeadMethod for TemperedJoint {
//!     fn name(&self) -> &'static str {
//!         "tempered"
//!     }
//!     fn label(&self) -> &'static str {
//!         "Joint / T"
//!     }
//!     fn about(&self) -> &'static str {
//!         "the joint head with logits divided by T = 2"
//!     }
//!     fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
//!         let head = Tempered(ctx.stage1.head.clone(), 2.0);
//!         Ok(ctx.stage1_built(Box::new(head)))
//!     }
//! }
//! # let h = TemperedJoint;
//! # assert_eq!(h.id().as_str(), "tempered");
//! # assert!(h.training().is_none());
//! ```
//!
//! and in this file: `pub static REGISTRY: ... = &[..., &tempered::TemperedJoint];`.
//! `lt-cli eval --head tempered` then evaluates it, the report tabulates it,
//! and the sweep accepts it in a grid's `heads`. A trained head also
//! implements [`TrainedHead`] (see `crt.rs` and `lws.rs`, ~60 lines each).

mod crt;
mod crt_la;
mod disalign;
mod joint;
mod learned_tau;
mod logit_adjustment;
mod lws;
mod mislas;
mod ncm;
mod tau_norm;
mod weight_balancing;

pub use tau_norm::sweep as tau_norm_sweep;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Var};
use candle_nn::VarMap;
use lt_core::{HeadId, Split, Stage};
use lt_heads::{Classifier, LinearHead};
use lt_models::Backbone;
use lt_run::TauSweep;

use crate::eval::Features;
use crate::experiment::Experiment;
use crate::model::Network;
use crate::settings::StageSettings;
use crate::TrainError;

/// Every head, in the order of the paper's tables.
pub static REGISTRY: &[&dyn HeadMethod] = &[
    &joint::Joint,
    &ncm::Ncm,
    &crt::Crt,
    &tau_norm::TauNorm,
    &lws::Lws,
    &logit_adjustment::PosthocLogitAdjustment,
    &crt_la::CrtLogitAdjusted,
    &learned_tau::LearnedTau,
    &mislas::Mislas,
    &disalign::DisAlign,
    &weight_balancing::WeightBalancing,
];

/// The head named `id` (`tau-norm` and `tau_norm` both name tau-norm).
pub fn find(id: &str) -> Option<&'static dyn HeadMethod> {
    let id = id.replace('-', "_");
    REGISTRY.iter().copied().find(|h| h.name() == id)
}

/// The head named `id`, or an error listing the known heads.
pub fn lookup(id: &str) -> Result<&'static dyn HeadMethod, TrainError> {
    find(id).ok_or_else(|| {
        TrainError::Invalid(format!(
            "unknown head `{id}`, expected one of: {}",
            names().join(", ")
        ))
    })
}

/// Every head's name, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|h| h.name()).collect()
}

/// The names of the heads that train in a stage of their own.
pub fn trained_names() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|h| h.training().is_some())
        .map(|h| h.name())
        .collect()
}

/// A classifier head: how it is built for evaluation and, for trained heads,
/// how its stage trains it.
pub trait HeadMethod: Sync {
    /// Its name (`--head`, `[stage2.<name>]`, `results.json`): lower-case
    /// letters, digits and `_`.
    fn name(&self) -> &'static str;
    /// Its name as an identifier.
    fn id(&self) -> HeadId {
        HeadId::new_static(self.name())
    }
    /// Its name in tables (`cRT`, `τ-norm`, ...).
    fn label(&self) -> &'static str;
    /// One line for `--help`, `lt-cli heads` and the docs.
    fn about(&self) -> &'static str;
    /// The training stage of a trained head; `None` for heads computed at
    /// evaluation time.
    fn training(&self) -> Option<&dyn TrainedHead> {
        None
    }
    /// Builds the classifier to evaluate (a trained head restores its
    /// checkpoint with [`build_trained`]).
    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError>;
}

/// The stage of a trained head.
pub trait TrainedHead: Sync {
    /// The settings of its stage when the config gives none.
    fn default_settings(&self) -> StageSettings;
    /// Its own options (keys of `[stage2.<head>]` besides the stage
    /// settings) with their defaults.
    fn default_options(&self) -> toml::Table {
        toml::Table::new()
    }
    /// Checks its options; an error names the key (relative to the section)
    /// and what is wrong.
    fn check_options(&self, options: &toml::Table) -> Result<(), crate::config::ConfigError> {
        let _ = options;
        Ok(())
    }
    /// The ids of its random streams (head init, sampler, augmentation), so
    /// that stages never replay each other's draws. Default: derived from the
    /// head's name.
    fn streams(&self, id: &HeadId) -> [u64; 3] {
        let h = lt_core::fs::sha256_hex(id.as_str().as_bytes());
        let base = u64::from_str_radix(&h[..12], 16).unwrap_or(0) << 8;
        [base | 1, base | 2, base | 3]
    }
    /// The trainable classifier, built from the stage-1 joint head; its
    /// variables are registered in `init.vars` under `fc.*`.
    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError>;
    /// Learning-rate multipliers of some of its variables (by checkpoint
    /// name), from its options. Default: none (every variable at the
    /// stage's rate).
    fn lr_scales(&self, options: &toml::Table) -> Result<Vec<(String, f64)>, TrainError> {
        let _ = options;
        Ok(Vec::new())
    }
}

/// What a trained head is built from.
pub struct HeadInit<'a> {
    /// The stage-1 joint head.
    pub joint: &'a LinearHead,
    /// Where the head registers its variables (checkpointed under `fc.*`).
    pub vars: &'a VarMap,
    /// Its options (`[stage2.<head>]` keys besides the settings).
    pub options: &'a toml::Table,
    /// Seed of its initial weights.
    pub seed: u64,
    /// Training images per class.
    pub class_counts: &'a [usize],
    /// The many / medium / few group of each class.
    pub groups: &'a [lt_core::stats::ShotGroup],
}

impl std::fmt::Debug for HeadInit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadInit")
            .field("joint", self.joint)
            .field("options", self.options)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A classifier being trained in stage 2.
pub trait TrainableHead: Classifier + std::fmt::Debug + Send {
    /// The variables the optimiser trains, by checkpoint name.
    fn trainable(&self) -> Vec<(String, Var)>;
}

/// A head ready to evaluate.
#[derive(Debug)]
pub struct Built {
    /// The classifier.
    pub classifier: Box<dyn ClassifierDebug>,
    /// Its own backbone (a stage-2 checkpoint's, whose BN statistics may
    /// differ from stage 1); `None`: the stage-1 backbone.
    pub backbone: Option<Backbone>,
    /// The checkpoint it came from.
    pub checkpoint: PathBuf,
    /// That checkpoint's epoch.
    pub epoch: usize,
    /// Its tau, when it has one.
    pub tau: Option<f64>,
    /// How the tau was chosen, when swept.
    pub tau_sweep: Option<TauSweep>,
    /// Its settings, as recorded in `results.json`.
    pub settings: Option<serde_json::Value>,
}

/// A classifier that can be printed in debug output.
pub trait ClassifierDebug: Classifier + std::fmt::Debug {}
impl<T: Classifier + std::fmt::Debug> ClassifierDebug for T {}

/// What a head is built from at evaluation time.
#[derive(Debug)]
pub struct HeadContext<'a> {
    /// The experiment.
    pub exp: &'a Experiment,
    /// The selected stage-1 network.
    pub stage1: &'a Network,
    /// Its checkpoint.
    pub stage1_checkpoint: &'a Path,
    /// Its epoch.
    pub stage1_epoch: usize,
    /// Stage-1 features of each split, extracted on first use.
    pub features: &'a FeatureCache<'a>,
}

impl HeadContext<'_> {
    /// A head computed from the stage-1 network.
    pub fn stage1_built(&self, classifier: Box<dyn ClassifierDebug>) -> Built {
        Built {
            classifier,
            backbone: None,
            checkpoint: self.stage1_checkpoint.to_path_buf(),
            epoch: self.stage1_epoch,
            tau: None,
            tau_sweep: None,
            settings: None,
        }
    }
}

/// Features of one backbone, per split, extracted once on first use.
#[derive(Debug)]
pub struct FeatureCache<'a> {
    exp: &'a Experiment,
    backbone: &'a Backbone,
    tag: String,
    by_split: RefCell<HashMap<Split, Features>>,
}

impl<'a> FeatureCache<'a> {
    /// An empty cache over `backbone` (`tag` names it in progress bars).
    pub fn new(exp: &'a Experiment, backbone: &'a Backbone, tag: &str) -> Self {
        FeatureCache {
            exp,
            backbone,
            tag: tag.to_string(),
            by_split: RefCell::new(HashMap::new()),
        }
    }

    /// The features of a split (BN in eval mode, the evaluation transform).
    pub fn get(&self, split: Split) -> Result<Features, TrainError> {
        if let Some(f) = self.by_split.borrow().get(&split) {
            return Ok(f.clone());
        }
        let f = crate::feature_store::split_features(
            self.exp,
            self.backbone,
            split,
            &format!("{} {}", self.tag, split.as_str()),
        )?;
        self.by_split.borrow_mut().insert(split, f.clone());
        Ok(f)
    }
}

/// Evaluates the head `make(tau)` for every tau of `grid` on the selection
/// split (`eval.tau_select_split`) and the reported split, and chooses tau:
/// the best top-1 on the selection split (ties to the smaller tau), or the
/// grid's only value with `TauSelect::Fixed`. Shared by the heads with a tau.
pub fn sweep_tau(
    exp: &Experiment,
    feats: &FeatureCache<'_>,
    grid: &[f64],
    selection: lt_core::TauSelect,
    bias: lt_core::TauBias,
    make: impl Fn(f64) -> Result<Box<dyn Classifier>, TrainError>,
) -> Result<TauSweep, TrainError> {
    let ec = &exp.config.eval;
    let select_split = ec.tau_select_split;
    let report_split = exp.config.report_split();
    let eval_on = |head: &dyn Classifier, split| -> Result<lt_run::SplitMetrics, TrainError> {
        let (e, loss) = crate::eval::evaluate_head(
            head,
            &feats.get(split)?,
            exp.num_classes(),
            &exp.train_stats,
            &ec.group_rule,
        )?;
        Ok(lt_run::SplitMetrics::of(&e, loss))
    };
    let mut curve = Vec::with_capacity(grid.len());
    for &tau in grid {
        let head = make(tau)?;
        let select = eval_on(head.as_ref(), select_split)?;
        let report = if report_split != select_split {
            Some(eval_on(head.as_ref(), report_split)?)
        } else {
            None
        };
        curve.push(lt_run::TauPoint {
            tau,
            select,
            report,
        });
    }
    let chosen = match selection {
        lt_core::TauSelect::Fixed => grid[0],
        lt_core::TauSelect::SweepOnVal => {
            let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.tau, p.select.top1)).collect();
            lt_heads::select_tau(&pts)?
        }
    };
    Ok(TauSweep {
        select_split,
        report_split,
        bias,
        selection,
        chosen,
        curve,
    })
}

/// The checkpoint of a trained head selected by its `model_select`.
pub fn selected_checkpoint(exp: &Experiment, head: &HeadId) -> PathBuf {
    let stage = Stage::Head(head.clone());
    match exp.config.stage_settings(&stage).model_select {
        lt_core::ModelSelect::BestVal => exp.run.best_checkpoint(&stage),
        lt_core::ModelSelect::Last => exp.run.last_checkpoint(&stage),
    }
}

/// A trained head restored from its selected checkpoint, with the backbone
/// saved with it (its stage-2 BN statistics).
pub fn build_trained(
    method: &dyn HeadMethod,
    training: &dyn TrainedHead,
    exp: &Experiment,
) -> Result<Built, TrainError> {
    let id = method.id();
    let path = selected_checkpoint(exp, &id);
    if !path.exists() {
        return Err(TrainError::Checkpoint(format!(
            "no {id} checkpoint at {}: run `lt-cli retrain --head {id}` with this config first",
            path.display()
        )));
    }
    let stage = Stage::Head(id.clone());
    let (tensors, meta) = crate::checkpoint::load_checkpoint(&path, &exp.device)?;
    if meta.config_hash != exp.config.stage_hash(&stage)? {
        tracing::warn!(
            checkpoint = %path.display(),
            "the {id} checkpoint was written with a different config; using it anyway"
        );
    }
    let cfg = &exp.config;
    let mut backbone =
        crate::model::build_backbone(&cfg.model, cfg.model_seed(), &exp.device, false)?;
    backbone.set_precision(cfg.model.precision);
    crate::stage2::load_backbone(&backbone, &tensors, &path)?;
    let joint = placeholder_joint(&tensors, &path, &exp.device)?.cosine(cfg.model.cosine_scale());
    let vars = VarMap::new();
    let groups = exp.train_stats.groups(&cfg.eval.group_rule);
    let head = training.init(&HeadInit {
        joint: &joint,
        vars: &vars,
        options: &cfg.stage2.head(id.as_str()).options,
        seed: 0,
        class_counts: exp.train_stats.counts(),
        groups: &groups,
    })?;
    crate::checkpoint::load_into_varmap(&vars, &tensors, &path)?;
    Ok(Built {
        classifier: Box::new(TrainedClassifier(head)),
        backbone: Some(backbone),
        checkpoint: path,
        epoch: meta.epoch,
        tau: None,
        tau_sweep: None,
        settings: serde_json::to_value(&cfg.stage2.head(id.as_str()).options).ok(),
    })
}

/// Registers a copy of `value` in `vars` as the variable `name` (replacing
/// any variable of that name), for heads with variables of their own.
pub(crate) fn register_var(
    vars: &VarMap,
    name: &str,
    value: &candle_core::Tensor,
) -> Result<Var, TrainError> {
    let var = Var::from_tensor(&value.copy()?)?;
    vars.data()
        .lock()
        .map_err(|_| {
            TrainError::Invalid(format!(
                "registering `{name}`: the variable map is poisoned"
            ))
        })?
        .insert(name.to_string(), var.clone());
    Ok(var)
}

/// A joint head of the checkpoint's shape, to build a trained head on before
/// its own variables are loaded over it.
fn placeholder_joint(
    tensors: &HashMap<String, candle_core::Tensor>,
    path: &Path,
    device: &Device,
) -> Result<LinearHead, TrainError> {
    let get = |name: &str| {
        tensors.get(name).cloned().ok_or_else(|| {
            TrainError::Checkpoint(format!("{}: missing tensor `{name}`", path.display()))
        })
    };
    let (w, b) = (get("fc.weight")?, get("fc.bias")?);
    let vars = VarMap::new();
    Ok(LinearHead::from_tensors(
        &vars,
        lt_heads::DEFAULT_PREFIX,
        &w.to_device(device)?,
        &b.to_device(device)?,
    )?)
}

/// A trained head as a plain classifier.
#[derive(Debug)]
struct TrainedClassifier(Box<dyn TrainableHead>);

impl Classifier for TrainedClassifier {
    fn logits(&self, f: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.0.logits(f)
    }
    fn cosine_scale(&self) -> Option<f64> {
        self.0.cosine_scale()
    }
    fn class_weights(&self) -> candle_core::Result<Option<candle_core::Tensor>> {
        self.0.class_weights()
    }
    fn fold(&self) -> candle_core::Result<lt_heads::Fold> {
        self.0.fold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_valid() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        assert_eq!(
            names,
            [
                "joint",
                "ncm",
                "crt",
                "tau_norm",
                "lws",
                "posthoc_la",
                "crt_la",
                "learned_tau",
                "mislas",
                "disalign",
                "wb"
            ]
        );
        assert_eq!(
            trained_names(),
            [
                "crt",
                "lws",
                "crt_la",
                "learned_tau",
                "mislas",
                "disalign",
                "wb"
            ]
        );
        assert!(find("tau-norm").is_some());
        let e = lookup("nope").err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("lws"), "{e}");
    }
}
