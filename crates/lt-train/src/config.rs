//! Experiment configuration (TOML).
//!
//! One file describes a whole experiment: data, model, stage 1, the stage-2
//! heads and evaluation. Every table rejects unknown keys, and an error names
//! the file, the key path and the line:
//!
//! ```text
//! configs/x.toml: key `stage1.epochz`: unknown field `epochz`, expected one of ...
//! ```
//!
//! Relative paths (`run_dir`, `data.*`, `model.pretrained`) are taken relative
//! to the current directory, like every command-line path (run the CLI from
//! the project root).
//!
//! A minimal file (everything else has the reference default):
//!
//! ```
//! let cfg = lt_train::config::ExperimentConfig::from_toml_str(r#"
//! run_dir = "runs/tiny"
//! [data]
//! root = "data/cifar100"
//! train_list = "data/cifar100/cifar100_lt_r100_train.txt"
//! val_list = "data/cifar100/cifar100_lt_r100_val.txt"
//! num_classes = 100
//! train_preset = "cifar_train"
//! eval_preset = "cifar_eval"
//! normalization = "cifar"
//! [model]
//! arch = "resnet32"
//! [stage1]
//! epochs = 200
//! batch_size = 128
//! lr = 0.1
//! "#, "inline.toml").unwrap();
//! assert_eq!(cfg.stage2.crt.epochs, 10);
//! ```

use std::path::{Path, PathBuf};

use lt_data::loader::OnUnreadable;
use lt_data::stats::GroupRule;
use lt_data::transform::{Normalization, Preset};
use lt_heads::{CrtInit, NcmConfig, TauBias};
use lt_models::{Arch, Precision};
use lt_samplers::{EpochLength, Strategy};
use serde::{Deserialize, Serialize};

use crate::dist::DistConfig;
use crate::schedule::ScheduleConfig;
use crate::TrainError;

/// The whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name used in results and logs (default: the config file's stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Directory of the run: config copy, checkpoints, metrics, results.
    pub run_dir: PathBuf,
    /// Seed of every random choice (init, sampling, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Data section.
    pub data: DataConfig,
    /// Model section.
    pub model: ModelConfig,
    /// Stage 1: joint training of backbone and linear head.
    pub stage1: Stage1Config,
    /// Stage 2: classifier re-training heads.
    #[serde(default)]
    pub stage2: Stage2Config,
    /// Evaluation of the heads.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Data-parallel settings (used when launched with several ranks).
    #[serde(default, skip_serializing_if = "DistConfig::is_default")]
    pub dist: DistConfig,
}

fn default_device() -> String {
    "cpu".into()
}

/// Normalisation constants, by dataset family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationKind {
    /// ImageNet mean / std (ImageNet-LT, Places-LT).
    Imagenet,
    /// iNaturalist-2018 mean / std.
    Inaturalist,
    /// CIFAR mean / std.
    Cifar,
    /// None: pixels in `[0, 1]`.
    Identity,
}

impl NormalizationKind {
    /// The constants.
    pub fn normalization(self) -> Normalization {
        match self {
            NormalizationKind::Imagenet => Normalization::imagenet(),
            NormalizationKind::Inaturalist => Normalization::inaturalist(),
            NormalizationKind::Cifar => Normalization::cifar(),
            NormalizationKind::Identity => Normalization::identity(),
        }
    }
}

/// `[data]`: split lists, transforms and the loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Image root the list paths are relative to.
    pub root: PathBuf,
    /// Training list (`<relative/path> <label>` per line).
    pub train_list: PathBuf,
    /// Validation list (model selection, tau selection).
    #[serde(default)]
    pub val_list: Option<PathBuf>,
    /// Test list (the reported split; iNaturalist has none: its val is the test).
    #[serde(default)]
    pub test_list: Option<PathBuf>,
    /// Number of classes (default: largest training label + 1).
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Training augmentation.
    pub train_preset: Preset,
    /// Evaluation transform (also used for NCM centroids and cached features).
    pub eval_preset: Preset,
    /// Normalisation constants (default: the presets' own, i.e. CIFAR for
    /// `cifar_*`, iNaturalist for `inaturalist_*`, ImageNet for `imagenet_*`).
    #[serde(default)]
    pub normalization: Option<NormalizationKind>,
    /// Loader worker threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Batches decoded ahead of the training step.
    #[serde(default = "default_prefetch")]
    pub prefetch_batches: usize,
    /// Keep decoded images in memory (small datasets only).
    #[serde(default)]
    pub cache_decoded: bool,
    /// `abort` (default) or `skip` on an unreadable image.
    #[serde(default)]
    pub on_unreadable: OnUnreadable,
}

fn default_threads() -> usize {
    2
}

fn default_prefetch() -> usize {
    2
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone architecture.
    pub arch: Arch,
    /// Seed of the initial weights (default: the top-level `seed`).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Pretrained backbone weights (safetensors, torchvision names); keys the
    /// backbone does not have (e.g. an ImageNet `fc`) are skipped.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Train only parameters whose name starts with one of these (e.g.
    /// `["layer4.", "fc."]` for Places-LT); default: everything.
    #[serde(default)]
    pub trainable_prefixes: Option<Vec<String>>,
    /// Forward-pass dtype: `"f32"` (default) or `"bf16"` mixed precision
    /// (f32 weights, BN statistics, features and loss; bf16 activations and
    /// convolutions; see `lt_models::precision`). For GPUs; on the CPU bf16
    /// is emulated and slower.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

// Left out of the saved config when f32, so that configs written before the
// key existed keep their hash.
fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// Which checkpoint of a training run is used afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSelect {
    /// The epoch with the best validation top-1 (the reference).
    #[default]
    BestVal,
    /// The last epoch.
    Last,
}

impl ModelSelect {
    /// Name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSelect::BestVal => "best_val",
            ModelSelect::Last => "last",
        }
    }
}

/// `[stage1]`: joint training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1Config {
    /// Number of epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate (reference: 0.2 * B / 512).
    pub lr: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// L2 weight decay on every trained tensor.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// Sampling strategy, e.g. `{ kind = "class_balanced" }`.
    #[serde(default)]
    pub sampler: Strategy,
    /// Batches per epoch (`floor` = floor(N / B), the reference).
    #[serde(default)]
    pub epoch_length: EpochLength,
    /// Permute each batch (only matters for per-device BN).
    #[serde(default)]
    pub shuffle_in_batch: bool,
    /// Learning-rate schedule (default: per-epoch cosine to 0, `pre_1_1`).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Evaluate on val every this many epochs (the last epoch always is).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Also evaluate on test at each evaluation (costly on large test sets).
    #[serde(default)]
    pub eval_test: bool,
    /// Which checkpoint later stages and `eval` use.
    #[serde(default)]
    pub model_select: ModelSelect,
}

fn default_momentum() -> f64 {
    0.9
}

fn default_wd() -> f64 {
    5e-4
}

fn one() -> usize {
    1
}

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

/// Declares a stage-2 head section: the same keys for cRT and LWS, each
/// with its own reference defaults for keys a file leaves out.
macro_rules! stage2_section {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* }, $default:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Number of epochs.
            pub epochs: usize,
            /// Batch size.
            pub batch_size: usize,
            /// Base learning rate (restarts from here with a fresh optimiser).
            pub lr: f64,
            /// SGD momentum.
            pub momentum: f64,
            /// L2 weight decay on the trained head tensors.
            pub weight_decay: f64,
            /// Nesterov momentum.
            pub nesterov: bool,
            /// Sampling strategy.
            pub sampler: Strategy,
            /// Batches per epoch.
            pub epoch_length: EpochLength,
            /// Permute each batch (the reference's `shuffle: true`).
            pub shuffle_in_batch: bool,
            /// Learning-rate schedule.
            pub schedule: ScheduleConfig,
            /// BN of the frozen backbone: `train` (reference) or `eval`.
            pub bn: Stage2Bn,
            /// Use the training augmentation (reference: yes). With
            /// `bn = "eval"` and no augmentation the features are computed once
            /// and cached, which approximates the reference (no BN-statistics
            /// refresh, no augmentation).
            pub augment: bool,
            /// Evaluate on val every this many epochs (the last epoch always is).
            pub eval_every: usize,
            /// Which epoch's head is kept.
            pub model_select: ModelSelect,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $default
            }
        }

        impl $name {
            /// Whether the cached-feature fast path applies.
            pub fn uses_cached_features(&self) -> bool {
                self.bn == Stage2Bn::Eval && !self.augment
            }
        }
    };
}

stage2_section!(
    /// `[stage2.crt]`: classifier re-training. Defaults are the reference:
    /// 10 epochs, class-balanced sampler (class cycle, 4 per class), batch 512,
    /// lr 0.2, wd 5e-4, per-epoch cosine, BN in train mode, re-initialised head.
    CrtConfig {
        /// How the head starts: `reinit` (reference) or `finetune` (a copy of
        /// the stage-1 joint head).
        init: CrtInit
    },
    CrtConfig {
        epochs: 10,
        batch_size: 512,
        lr: 0.2,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
        sampler: Strategy::class_balanced(),
        epoch_length: EpochLength::Floor,
        shuffle_in_batch: true,
        schedule: ScheduleConfig::default(),
        bn: Stage2Bn::Train,
        augment: true,
        eval_every: 1,
        model_select: ModelSelect::BestVal,
        init: CrtInit::Reinit,
    }
);

stage2_section!(
    /// `[stage2.lws]`: learnable weight scaling. Defaults are the reference:
    /// 5 epochs on the train set (not on val) with the class-balanced sampler
    /// (class cycle, 4 per class, as the official `cls_lws.yaml`), otherwise
    /// as cRT. The scales start at 1 on the frozen joint head.
    LwsConfig {},
    LwsConfig {
        epochs: 5,
        batch_size: 512,
        lr: 0.2,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
        sampler: Strategy::class_balanced(),
        epoch_length: EpochLength::Floor,
        shuffle_in_batch: true,
        schedule: ScheduleConfig::default(),
        bn: Stage2Bn::Train,
        augment: true,
        eval_every: 1,
        model_select: ModelSelect::BestVal,
            }
);

/// `[stage2]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage2Config {
    /// Classifier re-training.
    pub crt: CrtConfig,
    /// Learnable weight scaling.
    pub lws: LwsConfig,
}

/// How tau is chosen for the tau-normalised head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TauSelect {
    /// Sweep the grid and keep the best tau on the selection split (reference).
    #[default]
    SweepOnVal,
    /// Use `eval.tau`.
    Fixed,
}

/// A named split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training list.
    Train,
    /// Validation list.
    Val,
    /// Test list.
    Test,
}

impl Split {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}`, expected train, val or test")),
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Batch size of feature extraction.
    pub batch_size: usize,
    /// NCM feature transform and distance (`[eval.ncm]`).
    pub ncm: NcmConfig,
    /// Tau grid (default 0, 0.1, ..., 2.0).
    pub tau_grid: Option<Vec<f64>>,
    /// What tau-norm does with the bias.
    pub tau_bias: TauBias,
    /// Sweep or fixed tau.
    pub tau_select: TauSelect,
    /// The tau of `tau_select = "fixed"`.
    pub tau: Option<f64>,
    /// Split tau is chosen on (`val`; iNaturalist's reference picks on `test`).
    pub tau_select_split: Split,
    /// The reported split (default: test when a test list is given, else val).
    pub report_split: Option<Split>,
    /// Many / medium / few grouping (by training count, reference).
    pub group_rule: GroupRule,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            ncm: NcmConfig::default(),
            tau_grid: None,
            tau_bias: TauBias::Drop,
            tau_select: TauSelect::SweepOnVal,
            tau: None,
            tau_select_split: Split::Val,
            report_split: None,
            group_rule: GroupRule::default(),
        }
    }
}

/// The device of a run, parsed from the `device` key.
pub fn parse_device(spec: &str) -> Result<candle_core::Device, TrainError> {
    if spec == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let Some(ordinal) =
        spec.strip_prefix("cuda:")
            .or(if spec == "cuda" { Some("0") } else { None })
    else {
        return Err(TrainError::Config(format!(
            "key `device`: `{spec}` is not `cpu` or `cuda:N`"
        )));
    };
    let ordinal: usize = ordinal.parse().map_err(|_| {
        TrainError::Config(format!(
            "key `device`: `{spec}`: `{ordinal}` is not a GPU index"
        ))
    })?;
    if !candle_core::utils::cuda_is_available() {
        return Err(TrainError::Device(format!(
            "`device = \"{spec}\"` but this build has no CUDA support (build with \
             `cargo build --release -p lt-cli --features cuda` on a machine with the CUDA \
             toolkit, or use `--set device=cpu`)"
        )));
    }
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| TrainError::Device(format!("cannot open `{spec}`: {e}")))
}

impl ExperimentConfig {
    /// Reads and validates a config file, applying `key=value` overrides
    /// (dotted keys, TOML values; a bare word is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TrainError::Config(format!("cannot read config {}: {e}", path.display()))
        })?;
        let mut cfg = if overrides.is_empty() {
            Self::from_toml_str(&text, &path.display().to_string())?
        } else {
            let mut table: toml::Table = toml::from_str(&text)
                .map_err(|e| TrainError::Config(format!("{}: {}", path.display(), e.message())))?;
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            let origin = format!("{} (with --set overrides)", path.display());
            let text = toml::to_string(&table)
                .map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
            Self::from_toml_str(&text, &origin)?
        };
        if cfg.name.is_none() {
            cfg.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, TrainError> {
        let cfg: Self = match toml::from_str(text) {
            Ok(c) => c,
            Err(span_err) => {
                // The span error shows the line; deserialising the parsed value
                // again gives the key path (`in stage1.sampler`), which span
                // errors of nested tables lack.
                let keyed = toml::from_str::<toml::Table>(text)
                    .ok()
                    .and_then(|t| Self::deserialize(toml::Value::Table(t)).err());
                let msg = match keyed {
                    Some(k) => {
                        let k = k.to_string();
                        match k.rsplit_once("\nin `") {
                            Some((msg, key)) => {
                                let mut key = key.trim_end().trim_end_matches('`').to_string();
                                // Name the unknown key itself, not only its table.
                                if let Some(field) = msg
                                    .strip_prefix("unknown field `")
                                    .and_then(|r| r.split('`').next())
                                {
                                    key = format!("{key}.{field}");
                                }
                                format!("key `{key}`: {msg}")
                            }
                            None => k,
                        }
                    }
                    None => span_err.message().to_string(),
                };
                // The span error ends with the same message; keep its location
                // and snippet only.
                let span = span_err.to_string();
                let span = span
                    .trim_end()
                    .strip_suffix(span_err.message())
                    .unwrap_or(&span)
                    .trim_end();
                return Err(TrainError::Config(format!("{origin}: {msg}\n{span}")));
            }
        };
        cfg.validate()
            .map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Checks values serde cannot (ranges, consistency); errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        self.dist.validate()?;
        let s1 = &self.stage1;
        if s1.epochs == 0 {
            return Err("key `stage1.epochs`: must be at least 1".into());
        }
        if s1.batch_size == 0 {
            return Err("key `stage1.batch_size`: must be at least 1".into());
        }
        if s1.eval_every == 0 {
            return Err("key `stage1.eval_every`: must be at least 1".into());
        }
        s1.schedule
            .validate(s1.epochs)
            .map_err(|e| format!("key `stage1.schedule`: {e}"))?;
        let crt = &self.stage2.crt;
        let lws = &self.stage2.lws;
        for (name, epochs, batch_size, eval_every, schedule) in [
            (
                "crt",
                crt.epochs,
                crt.batch_size,
                crt.eval_every,
                &crt.schedule,
            ),
            (
                "lws",
                lws.epochs,
                lws.batch_size,
                lws.eval_every,
                &lws.schedule,
            ),
        ] {
            if epochs == 0 {
                return Err(format!("key `stage2.{name}.epochs`: must be at least 1"));
            }
            if batch_size == 0 {
                return Err(format!(
                    "key `stage2.{name}.batch_size`: must be at least 1"
                ));
            }
            if eval_every == 0 {
                return Err(format!(
                    "key `stage2.{name}.eval_every`: must be at least 1"
                ));
            }
            schedule
                .validate(epochs)
                .map_err(|e| format!("key `stage2.{name}.schedule`: {e}"))?;
        }
        if self.eval.batch_size == 0 {
            return Err("key `eval.batch_size`: must be at least 1".into());
        }
        if self.eval.tau_select == TauSelect::Fixed && self.eval.tau.is_none() {
            return Err("key `eval.tau`: required when `eval.tau_select = \"fixed\"`".into());
        }
        if let Some(g) = &self.eval.tau_grid {
            if g.is_empty() || g.iter().any(|t| !t.is_finite()) {
                return Err(
                    "key `eval.tau_grid`: must be a non-empty list of finite numbers".into(),
                );
            }
        }
        if let Some(p) = &self.model.trainable_prefixes {
            if p.is_empty() {
                return Err("key `model.trainable_prefixes`: empty list trains nothing".into());
            }
        }
        if self.data.threads == 0 {
            return Err("key `data.threads`: must be at least 1".into());
        }
        let needs_val = s1.model_select == ModelSelect::BestVal
            || self.stage2.crt.model_select == ModelSelect::BestVal
            || self.stage2.lws.model_select == ModelSelect::BestVal
            || (self.eval.tau_select == TauSelect::SweepOnVal
                && self.eval.tau_select_split == Split::Val);
        if needs_val && self.data.val_list.is_none() {
            return Err(
                "key `data.val_list`: required by `model_select = \"best_val\"` and the \
                        tau sweep on val (or set them to `last` / `fixed`)"
                    .into(),
            );
        }
        if self.eval.report_split == Some(Split::Test) && self.data.test_list.is_none() {
            return Err("key `data.test_list`: required by `eval.report_split = \"test\"`".into());
        }
        if let Some(k) = self.stage1.sampler_epochs_mismatch() {
            return Err(k);
        }
        if self.device != "cpu" && !self.device.starts_with("cuda") {
            return Err(format!(
                "key `device`: `{}` is not `cpu` or `cuda:N`",
                self.device
            ));
        }
        Ok(())
    }

    /// The config's name (set from the file stem when absent).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("experiment")
    }

    /// Seed of the initial weights.
    pub fn model_seed(&self) -> u64 {
        self.model.seed.unwrap_or(self.seed)
    }

    /// The reported split.
    pub fn report_split(&self) -> Split {
        self.eval
            .report_split
            .unwrap_or(if self.data.test_list.is_some() {
                Split::Test
            } else {
                Split::Val
            })
    }

    /// The resolved config as TOML (saved with every run).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string(self).map_err(|e| TrainError::Config(format!("serialising config: {e}")))
    }

    /// SHA-256 (hex) of the resolved config.
    pub fn hash(&self) -> Result<String, TrainError> {
        Ok(lt_data::fsutil::sha256_hex(self.to_toml()?.as_bytes()))
    }

    /// SHA-256 (hex) of what determines the result of one training stage
    /// (`stage1`, `crt` or `lws`): the seed, the data, the model, stage 1 and,
    /// for a stage-2 head, its own section. The run directory, the device name
    /// and the loader's thread, prefetch and cache settings are left out: they
    /// do not change the result. A checkpoint remembers it, so `--resume` with
    /// a config that would train differently is refused, while editing, say,
    /// `[eval]` does not invalidate a finished stage 1.
    pub fn stage_hash(&self, stage: &str) -> Result<String, TrainError> {
        let err = |e: String| TrainError::Config(format!("hashing config: {e}"));
        let mut v = serde_json::to_value(self).map_err(|e| err(e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| err("not an object".into()))?;
        for k in ["name", "run_dir", "device", "eval"] {
            obj.remove(k);
        }
        // Of `[dist]`, only SyncBN changes what is computed (the bucket size
        // and the timeout do not), and the world size is not in the config
        // at all, so a run may resume on another number of ranks.
        obj.remove("dist");
        if self.dist.sync_bn {
            obj.insert("sync_bn".into(), serde_json::Value::Bool(true));
        }
        if let Some(d) = obj.get_mut("data").and_then(|d| d.as_object_mut()) {
            for k in ["threads", "prefetch_batches", "cache_decoded"] {
                d.remove(k);
            }
        }
        let stage2 = obj.remove("stage2");
        match stage {
            "stage1" => {}
            "crt" | "lws" => {
                let section = stage2
                    .as_ref()
                    .and_then(|s| s.get(stage))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                obj.insert(stage.to_string(), section);
            }
            other => return Err(err(format!("unknown stage `{other}`"))),
        }
        let text = serde_json::to_string(&v).map_err(|e| err(e.to_string()))?;
        Ok(lt_data::fsutil::sha256_hex(text.as_bytes()))
    }
}

impl Stage1Config {
    /// A progressively-balanced sampler planned for another number of epochs is
    /// almost always a copy-paste slip.
    fn sampler_epochs_mismatch(&self) -> Option<String> {
        match &self.sampler {
            Strategy::ProgressivelyBalanced { total_epochs, .. }
                if *total_epochs != self.epochs =>
            {
                Some(format!(
                    "key `stage1.sampler.total_epochs`: {total_epochs} differs from \
                     `stage1.epochs` = {}",
                    self.epochs
                ))
            }
            _ => None,
        }
    }
}

/// Applies one `a.b.c=value` override to a parsed TOML table.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), TrainError> {
    let Some((key, raw)) = spec.split_once('=') else {
        return Err(TrainError::Config(format!(
            "--set `{spec}`: expected `key=value` (e.g. `stage1.epochs=2`)"
        )));
    };
    let key = key.trim();
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!(
            "--set `{spec}`: empty key segment"
        )));
    }
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(TrainError::Config(format!(
                    "--set `{spec}`: key `{}` is not a table",
                    parts[..=i].join(".")
                )))
            }
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
run_dir = "runs/x"
[data]
root = "data"
train_list = "train.txt"
val_list = "val.txt"
train_preset = "cifar_train"
eval_preset = "cifar_eval"
normalization = "cifar"
[model]
arch = "resnet8"
[stage1]
epochs = 2
batch_size = 8
lr = 0.1
"#;

    #[test]
    fn minimal_config_has_reference_defaults() {
        let c = ExperimentConfig::from_toml_str(MINIMAL, "m.toml").unwrap();
        assert_eq!(c.stage1.momentum, 0.9);
        assert_eq!(c.stage1.sampler, Strategy::InstanceBalanced);
        assert_eq!(c.stage2.crt.sampler, Strategy::class_balanced());
        assert_eq!(c.stage2.crt.init, CrtInit::Reinit);
        assert_eq!(c.stage2.lws.epochs, 5);
        assert_eq!(c.stage2.lws.sampler, Strategy::class_balanced());
        assert_eq!(c.stage1.model_select, ModelSelect::BestVal);
        assert_eq!(c.report_split(), Split::Val);
        // Round trip through the saved copy.
        let again = ExperimentConfig::from_toml_str(&c.to_toml().unwrap(), "copy").unwrap();
        assert_eq!(again, c);
        assert_eq!(again.hash().unwrap(), c.hash().unwrap());
        // Stage hashes ignore what does not change a stage's result.
        let mut d = c.clone();
        d.run_dir = "elsewhere".into();
        d.data.threads = 7;
        d.eval.batch_size = 3;
        d.stage2.lws.lr = 1.0;
        assert_eq!(
            d.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
        assert_eq!(d.stage_hash("crt").unwrap(), c.stage_hash("crt").unwrap());
        assert_ne!(d.stage_hash("lws").unwrap(), c.stage_hash("lws").unwrap());
        d.stage1.lr = 0.5;
        assert_ne!(
            d.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
        assert_ne!(d.stage_hash("crt").unwrap(), c.stage_hash("crt").unwrap());
    }

    #[test]
    fn precision_is_a_model_key_that_enters_the_hash_only_when_set() {
        let c = ExperimentConfig::from_toml_str(MINIMAL, "m.toml").unwrap();
        assert_eq!(c.model.precision, Precision::F32);
        assert!(!c.to_toml().unwrap().contains("precision"));
        let text = MINIMAL.replace(
            "arch = \"resnet8\"",
            "arch = \"resnet8\"\nprecision = \"bf16\"",
        );
        let b = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap();
        assert_eq!(b.model.precision, Precision::Bf16);
        assert_ne!(
            b.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
        let text = MINIMAL.replace(
            "arch = \"resnet8\"",
            "arch = \"resnet8\"\nprecision = \"fp16\"",
        );
        let e = ExperimentConfig::from_toml_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.precision"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = MINIMAL.replace("lr = 0.1", "lr = 0.1\nepochz = 3");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml"), "{e}");
        assert!(e.contains("key `stage1.epochz`"), "{e}");
        assert!(e.contains("line"), "the location is kept: {e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let text = MINIMAL.replace("epochs = 2", "epochs = \"two\"");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `stage1.epochs`"), "{e}");
        let text = format!("{MINIMAL}[stage2.crt]\nsampler = {{ kind = \"class_balancd\" }}\n");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stage2.crt.sampler") && e.contains("class_balancd"),
            "{e}"
        );
    }

    #[test]
    fn missing_key_and_validation_errors() {
        let text = MINIMAL.replace("lr = 0.1", "");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr`") && e.contains("stage1"), "{e}");
        let text = MINIMAL.replace("val_list = \"val.txt\"", "");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.val_list"), "{e}");
        // A partial [stage2.lws] keeps the LWS defaults for what it omits.
        let text = format!("{MINIMAL}[stage2.lws]\nlr = 0.05\n");
        let c = ExperimentConfig::from_toml_str(&text, "cfg.toml").unwrap();
        assert_eq!((c.stage2.lws.lr, c.stage2.lws.epochs), (0.05, 5));
        assert_eq!(c.stage2.lws.sampler, Strategy::class_balanced());
        let text = MINIMAL.replace("epochs = 2", "epochs = 2\nschedule = { warmup_epochs = 5 }");
        let e = ExperimentConfig::from_toml_str(&text, "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("warmup_epochs"), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = ExperimentConfig::load(Path::new("/nonexistent/x.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exp.toml");
        std::fs::write(&p, MINIMAL).unwrap();
        let c = ExperimentConfig::load(
            &p,
            &[
                "stage1.epochs=7".into(),
                "stage2.crt.bn=eval".into(),
                "run_dir=/tmp/elsewhere".into(),
                "stage1.sampler={ kind = \"square_root\" }".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.name(), "exp");
        assert_eq!(c.stage1.epochs, 7);
        assert_eq!(c.stage2.crt.bn, Stage2Bn::Eval);
        assert_eq!(c.run_dir, PathBuf::from("/tmp/elsewhere"));
        assert_eq!(c.stage1.sampler, Strategy::SquareRoot);
        let e = ExperimentConfig::load(&p, &["stage1.epochz=7".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochz"), "{e}");
        let e = ExperimentConfig::load(&p, &["seed.x=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set"), "{e}");
        assert!(ExperimentConfig::load(&p, &["novalue".into()]).is_err());
    }

    #[test]
    fn device_parsing() {
        assert!(matches!(parse_device("cpu"), Ok(candle_core::Device::Cpu)));
        assert!(parse_device("gpu")
            .unwrap_err()
            .to_string()
            .contains("device"));
        assert!(parse_device("cuda:x")
            .unwrap_err()
            .to_string()
            .contains("device"));
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("CUDA"), "{e}");
        }
    }
}
