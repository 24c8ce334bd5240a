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
//! assert_eq!(cfg.stage2.crt().epochs, 10);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lt_core::stats::GroupRule;
use lt_core::{HeadId, Stage, TauBias};
use lt_data::loader::OnUnreadable;
use lt_data::transform::{Normalization, Preset};
use lt_heads::NcmConfig;
use lt_models::{Arch, Precision};
use lt_samplers::Strategy;
use serde::{Deserialize, Serialize};

pub use crate::settings::{Stage2Bn, StageSettings};
pub use lt_core::{ModelSelect, Split, TauSelect};

use crate::dist::DistConfig;
use crate::TrainError;

/// An invalid experiment config: the file, the key path and, where the
/// parser knows it, the line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file (or what the text came from).
    pub origin: String,
    /// Dotted key path (`stage1.sampler.kind`), when the error is about a key.
    pub key: Option<String>,
    /// 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// The parser's error, when there is one.
    #[source]
    pub source: Option<Box<toml::de::Error>>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.origin.is_empty() {
            write!(f, "{}: ", self.origin)?;
        }
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error about the key at `key` (origin and line filled in later).
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            origin: String::new(),
            key: (!key.is_empty()).then(|| key.to_string()),
            line: None,
            message: message.into(),
            source: None,
        }
    }

    /// The same error about a key of the section `section` (its key, when
    /// given, is relative to the section).
    pub fn within(mut self, section: &str) -> Self {
        self.key = Some(match self.key.take() {
            Some(k) if !k.is_empty() => format!("{section}.{k}"),
            _ => section.to_string(),
        });
        self
    }

    /// An error about the whole file.
    pub fn file(origin: &str, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_string(),
            ..ConfigError::at("", message)
        }
    }

    /// Names the file and finds the key's line in `text`.
    fn located(mut self, origin: &str, text: Option<&str>) -> Self {
        self.origin = origin.to_string();
        if self.line.is_none() {
            if let (Some(k), Some(t)) = (&self.key, text) {
                self.line = line_of_key(t, k);
            }
        }
        self
    }
}

/// The 1-based line where `key` (dotted path) is written in a TOML text,
/// from the parser's spans (the deepest part of the path that exists).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span = None;
    for part in key.split('.') {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        span = Some(k.span());
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
}

/// Deserialises `value` as a `T`, naming the key path under `section` of the
/// first error (from the deserialiser, never from rewording its message).
pub(crate) fn deserialize_at<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    section: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (section, inner.as_str()) {
            (s, ".") | (s, "") => s.to_string(),
            ("", i) => i.to_string(),
            (s, i) => format!("{s}.{i}"),
        };
        ConfigError::at(&key, e.into_inner().message().to_string())
    })
}

/// The whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Stage 2: the settings of every trained head (`[stage2.<head>]`).
    pub stage2: Stage2Config,
    /// Evaluation of the heads.
    pub eval: EvalConfig,
    /// Data-parallel settings (used when launched with several ranks).
    #[serde(skip_serializing_if = "DistConfig::is_default")]
    pub dist: DistConfig,
}

/// The file as written: the stage sections stay tables until the stage
/// definitions resolve them against their defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    name: Option<String>,
    run_dir: PathBuf,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_device")]
    device: String,
    data: DataConfig,
    model: ModelConfig,
    stage1: toml::Table,
    #[serde(default)]
    stage2: BTreeMap<String, toml::Table>,
    #[serde(default)]
    eval: EvalConfig,
    #[serde(default)]
    dist: DistConfig,
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
    /// CLIP's mean / std.
    Clip,
    /// Mean = std = 0.5 (HF ViT, SigLIP).
    Half,
}

impl NormalizationKind {
    /// The constants.
    pub fn normalization(self) -> Normalization {
        match self {
            NormalizationKind::Imagenet => Normalization::imagenet(),
            NormalizationKind::Inaturalist => Normalization::inaturalist(),
            NormalizationKind::Cifar => Normalization::cifar(),
            NormalizationKind::Identity => Normalization::identity(),
            NormalizationKind::Clip => Normalization::clip(),
            NormalizationKind::Half => Normalization::half(),
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
    /// Pretrained backbone weights (safetensors, or a PyTorch `.pth` /
    /// `.pth.tar` read by `lt_models::torch_import`; torchvision names); keys the
    /// backbone does not have (e.g. an ImageNet `fc`) are skipped. For an
    /// encoder arch (`vit_b16`, `dinov2_s14`, `clip_b16`, ...; also written
    /// `weights`), the encoder's safetensors file in one of the layouts of
    /// `lt_models::encoders::weights`, every key checked.
    #[serde(default, alias = "weights")]
    pub pretrained: Option<PathBuf>,
    /// The encoder's config JSON (Hugging Face style); default: `config.json`
    /// beside the weights, else the arch's standard size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_config: Option<PathBuf>,
    /// Which encoder variables stage 1 trains: `"none"` (default: a frozen
    /// encoder and a linear probe on cached features), `"last:N"` or `"all"`
    /// (every encoder family; see `lt_models::Trainable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<String>,
    /// Layer-wise learning-rate decay of a fine-tuned encoder: the lr of a
    /// variable at depth `d` (0 embeddings, `i + 1` block `i`, `L + 1` the
    /// final norm and the classifier) is scaled by `decay^(L + 1 - d)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f64>,
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
    /// The stage-1 classifier: `"linear"` (default) or `"cosine"`
    /// (normalised features and weights, the classifier LDAM-DRW trains
    /// with; see `lt_heads::LinearHead`).
    #[serde(default, skip_serializing_if = "ClassifierKind::is_linear")]
    pub classifier: ClassifierKind,
    /// The scale `s` of a cosine classifier's logits, `s · cos(f, w_j)`
    /// (default [`DEFAULT_COSINE_SCALE`], LDAM-DRW's s = 30). Only with
    /// `classifier = "cosine"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_scale: Option<f64>,
    /// 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) on the CPU
    /// (default `true`; `lt_models::ops::set_winograd`): faster, with
    /// outputs equal to the direct kernels' to about 1e-6 relative but not
    /// bit for bit. `false` reproduces runs made before the path existed.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub winograd: bool,
    /// With `winograd`, 3x3 convolutions by Winograd F(4x4, 3x3) where it
    /// applies (default `true`; `lt_models::ops::set_winograd_f4`): 44 %
    /// fewer products than F(2x2, 3x3), outputs equal to the direct
    /// kernels' to a few 1e-6 relative. `false` keeps F(2x2, 3x3) there,
    /// reproducing runs made before this path existed.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub winograd_f4: bool,
    /// Cap on the instruction sets of the CPU kernels: `"baseline"`,
    /// `"avx2"` or `"avx512"` (unset: the best the CPU has;
    /// `lt_models::ops::set_max_isa`). `"baseline"` on a CPU without
    /// AVX-512 reproduces runs made there before the AVX2 kernels existed
    /// (im2col + gemm throughout); `"avx2"` on an AVX-512 CPU runs what an
    /// AVX2 machine runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_isa: Option<lt_models::ops::Isa>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The logit scale of a cosine classifier unless `model.cosine_scale` says
/// otherwise: LDAM-DRW's s = 30 (kaidic/LDAM-DRW).
pub const DEFAULT_COSINE_SCALE: f64 = 30.0;

impl ModelConfig {
    /// `Some(s)` for a cosine classifier (its logit scale), `None` for a
    /// linear one.
    pub fn cosine_scale(&self) -> Option<f64> {
        (self.classifier == ClassifierKind::Cosine)
            .then(|| self.cosine_scale.unwrap_or(DEFAULT_COSINE_SCALE))
    }

    fn check_classifier(&self) -> Result<(), ConfigError> {
        match (self.classifier, self.cosine_scale) {
            (ClassifierKind::Linear, Some(_)) => Err(ConfigError::at(
                "model.cosine_scale",
                "applies to model.classifier = \"cosine\" only",
            )),
            (_, Some(s)) if !(s.is_finite() && s > 0.0) => Err(ConfigError::at(
                "model.cosine_scale",
                format!("must be a finite number > 0, got {s}"),
            )),
            _ => Ok(()),
        }
    }
    /// The encoder's trainable setting (`none` unless set).
    pub fn encoder_trainable(&self) -> Result<lt_models::Trainable, ConfigError> {
        match &self.trainable {
            None => Ok(lt_models::Trainable::None),
            Some(t) => t.parse().map_err(|e: lt_models::ModelError| {
                ConfigError::at("model.trainable", e.to_string())
            }),
        }
    }

    fn check_encoder(&self) -> Result<(), ConfigError> {
        if self.arch.encoder().is_none() {
            for (key, set) in [
                ("model.trainable", self.trainable.is_some()),
                ("model.encoder_config", self.encoder_config.is_some()),
                ("model.layer_decay", self.layer_decay.is_some()),
            ] {
                if set {
                    return Err(ConfigError::at(
                        key,
                        format!(
                            "applies to encoder archs (vit_b16, dinov2_s14, ...), not {}",
                            self.arch
                        ),
                    ));
                }
            }
            return Ok(());
        }
        if let Some(d) = self.layer_decay {
            if !(d > 0.0 && d <= 1.0) {
                return Err(ConfigError::at("model.layer_decay", "must be in (0, 1]"));
            }
        }
        self.encoder_trainable().map(|_| ())
    }
}

/// The kind of the stage-1 (joint) classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    /// `z = W f + b`.
    #[default]
    Linear,
    /// `z_j = cos(f, w_j)`, no bias.
    Cosine,
}

impl ClassifierKind {
    // Left out of the saved config when linear, so that configs written
    // before the key existed keep their hash.
    fn is_linear(&self) -> bool {
        *self == ClassifierKind::Linear
    }
}

// Left out of the saved config when f32, so that configs written before the
// key existed keep their hash.
fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// `[stage1]`: joint training. The keys of [`StageSettings`] (with the
/// stage-1 defaults of [`StageSettings::stage1`]; `epochs`, `batch_size` and
/// `lr` are required) plus `eval_test`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Config {
    /// Optimiser, schedule, sampler, epochs, batch, loss.
    pub settings: StageSettings,
    /// Also evaluate on test at each evaluation (costly on large test sets).
    /// Default false.
    pub eval_test: bool,
}

/// The stage-1 options besides the settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stage1Options {
    #[serde(default)]
    eval_test: bool,
}

impl std::ops::Deref for Stage1Config {
    type Target = StageSettings;
    fn deref(&self) -> &StageSettings {
        &self.settings
    }
}

impl std::ops::DerefMut for Stage1Config {
    fn deref_mut(&mut self) -> &mut StageSettings {
        &mut self.settings
    }
}

impl Stage1Config {
    fn from_table(table: &toml::Table) -> Result<Self, ConfigError> {
        let (settings, rest) =
            StageSettings::resolve(&StageSettings::stage1(), table, "stage1", true)?;
        let options: Stage1Options = deserialize_at(toml::Value::Table(rest), "stage1")?;
        Ok(Stage1Config {
            settings,
            eval_test: options.eval_test,
        })
    }

    fn to_table(&self) -> Result<toml::Table, toml::ser::Error> {
        let options = toml::Table::try_from(Stage1Options {
            eval_test: self.eval_test,
        })?;
        self.settings.to_section(&options, true)
    }
}

impl Serialize for Stage1Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_table()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

/// One trained stage-2 head's section (`[stage2.<head>]`): the keys of
/// [`StageSettings`] and the head's own options, each defaulting to the
/// head's definition (see `lt_train::heads`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadStageConfig {
    /// Optimiser, schedule, sampler, epochs, batch, BN, augmentation, loss.
    pub settings: StageSettings,
    /// The head's own options (cRT: `init`), its defaults filled in.
    pub options: toml::Table,
}

impl std::ops::Deref for HeadStageConfig {
    type Target = StageSettings;
    fn deref(&self) -> &StageSettings {
        &self.settings
    }
}

impl std::ops::DerefMut for HeadStageConfig {
    fn deref_mut(&mut self) -> &mut StageSettings {
        &mut self.settings
    }
}

impl HeadStageConfig {
    /// The head's defaults.
    pub fn defaults(head: &dyn crate::heads::TrainedHead) -> Self {
        HeadStageConfig {
            settings: head.default_settings(),
            options: head.default_options(),
        }
    }

    fn resolve(
        head: &dyn crate::heads::TrainedHead,
        table: &toml::Table,
        section: &str,
    ) -> Result<Self, ConfigError> {
        let (settings, rest) =
            StageSettings::resolve(&head.default_settings(), table, section, false)?;
        let mut options = head.default_options();
        for (k, v) in rest {
            if !options.contains_key(&k) {
                let known: Vec<&str> = options.keys().map(String::as_str).collect();
                return Err(ConfigError::at(
                    &format!("{section}.{k}"),
                    format!(
                        "unknown key `{k}`; a stage-2 section takes the stage settings{}",
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(" and {}", known.join(", "))
                        }
                    ),
                ));
            }
            options.insert(k, v);
        }
        head.check_options(&options)
            .map_err(|e| e.within(section))?;
        Ok(HeadStageConfig { settings, options })
    }
}

/// `[stage2]`: one section per trained head of the registry
/// (`lt_train::heads::REGISTRY`), each filled with the head's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage2Config {
    heads: BTreeMap<HeadId, HeadStageConfig>,
}

impl Default for Stage2Config {
    fn default() -> Self {
        let heads = crate::heads::REGISTRY
            .iter()
            .filter_map(|h| h.training().map(|t| (h.id(), HeadStageConfig::defaults(t))))
            .collect();
        Stage2Config { heads }
    }
}

impl Stage2Config {
    fn from_tables(tables: &BTreeMap<String, toml::Table>) -> Result<Self, ConfigError> {
        let mut cfg = Stage2Config::default();
        for (name, table) in tables {
            let section = format!("stage2.{name}");
            let method = crate::heads::find(name).ok_or_else(|| {
                ConfigError::at(
                    &section,
                    format!(
                        "unknown head `{name}`, expected one of: {}",
                        crate::heads::trained_names().join(", ")
                    ),
                )
            })?;
            let training = method.training().ok_or_else(|| {
                ConfigError::at(
                    &section,
                    format!(
                        "head `{name}` is not trained (it is computed at evaluation time; \
                         its settings are under [eval]); trained heads: {}",
                        crate::heads::trained_names().join(", ")
                    ),
                )
            })?;
            cfg.heads.insert(
                method.id(),
                HeadStageConfig::resolve(training, table, &section)?,
            );
        }
        Ok(cfg)
    }

    /// The section of a trained head.
    ///
    /// # Panics
    /// If `head` is not a trained head of the registry (sections exist for
    /// every one of them).
    pub fn head(&self, head: &str) -> &HeadStageConfig {
        self.heads
            .iter()
            .find(|(k, _)| **k == head)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("`{head}` is not a trained head"))
    }

    /// The section of a trained head, to change it.
    ///
    /// # Panics
    /// As [`head`](Self::head).
    pub fn head_mut(&mut self, head: &str) -> &mut HeadStageConfig {
        self.heads
            .iter_mut()
            .find(|(k, _)| **k == head)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("`{head}` is not a trained head"))
    }

    /// cRT's section.
    pub fn crt(&self) -> &HeadStageConfig {
        self.head("crt")
    }

    /// LWS's section.
    pub fn lws(&self) -> &HeadStageConfig {
        self.head("lws")
    }

    /// Every section, by head.
    pub fn iter(&self) -> impl Iterator<Item = (&HeadId, &HeadStageConfig)> {
        self.heads.iter()
    }
}

impl Serialize for Stage2Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = BTreeMap::new();
        for (k, v) in &self.heads {
            let t = v
                .settings
                .to_section(&v.options, false)
                .map_err(serde::ser::Error::custom)?;
            map.insert(k.as_str().to_string(), t);
        }
        map.serialize(s)
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
    /// Also report accuracy on shifted test distributions: forward and
    /// backward long-tailed sub-samples of the test split, and uniform
    /// (`lt_samplers::shifted`, drawn with the experiment seed).
    pub shifted_test: bool,
    /// Imbalances of the shifted test sets, each a finite number >= 1.
    pub shifted_imbalances: Vec<lt_samplers::Imbalance>,
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
            shifted_test: true,
            shifted_imbalances: lt_samplers::Imbalance::standard(),
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
        return Err(ConfigError::at("device", format!("`{spec}` is not `cpu` or `cuda:N`")).into());
    };
    let ordinal: usize = ordinal.parse().map_err(|_| {
        ConfigError::at(
            "device",
            format!("`{spec}`: `{ordinal}` is not a GPU index"),
        )
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
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(&origin, format!("cannot read the config ({e})")))?;
        let mut cfg = if overrides.is_empty() {
            Self::from_toml_str(&text, &origin)?
        } else {
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                ConfigError {
                    line,
                    message: e.message().to_string(),
                    source: Some(Box::new(e)),
                    ..ConfigError::file(&origin, "")
                }
            })?;
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            let origin = format!("{origin} (with --set overrides)");
            let text = toml::to_string(&table)
                .map_err(|e| ConfigError::file(&origin, format!("re-serialising: {e}")))?;
            Self::from_toml_str(&text, &origin)?
        };
        if cfg.name.is_none() {
            cfg.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, TrainError> {
        Ok(Self::parse(text).map_err(|e| e.located(origin, Some(text)))?)
    }

    fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().to_string(),
            source: Some(Box::new(e)),
            ..ConfigError::at("", "")
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                line: inner
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
                message: inner.message().to_string(),
                source: Some(Box::new(inner)),
                ..ConfigError::at(if key == "." { "" } else { &key }, "")
            }
        })?;
        let cfg = ExperimentConfig {
            name: raw.name,
            run_dir: raw.run_dir,
            seed: raw.seed,
            device: raw.device,
            data: raw.data,
            model: raw.model,
            stage1: Stage1Config::from_table(&raw.stage1)?,
            stage2: Stage2Config::from_tables(&raw.stage2)?,
            eval: raw.eval,
            dist: raw.dist,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks values serde cannot (ranges, consistency); errors name the key.
    pub fn validate(&self) -> Result<(), TrainError> {
        Ok(self.check()?)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.dist.validate()?;
        self.model.check_encoder()?;
        self.model.check_classifier()?;
        let s1 = &self.stage1;
        s1.settings.validate("stage1")?;
        if s1.bn != Stage2Bn::Train || !s1.augment {
            return Err(ConfigError::at(
                "stage1",
                "`bn` and `augment` are stage-2 settings (stage 1 trains the backbone with BN \
                 in train mode and the training augmentation)",
            ));
        }
        for (head, section) in self.stage2.iter() {
            section.settings.validate(&format!("stage2.{head}"))?;
        }
        if self.eval.batch_size == 0 {
            return Err(ConfigError::at("eval.batch_size", "must be at least 1"));
        }
        if self.eval.tau_select == TauSelect::Fixed && self.eval.tau.is_none() {
            return Err(ConfigError::at(
                "eval.tau",
                "required when `eval.tau_select = \"fixed\"`",
            ));
        }
        if let Some(t) = self.eval.tau {
            if !(t >= 0.0 && t.is_finite()) {
                return Err(ConfigError::at("eval.tau", "must be finite and >= 0"));
            }
        }
        if let Some(g) = &self.eval.tau_grid {
            if g.is_empty() || g.iter().any(|t| !(t.is_finite() && *t >= 0.0)) {
                return Err(ConfigError::at(
                    "eval.tau_grid",
                    "must be a non-empty list of finite numbers >= 0",
                ));
            }
        }
        if let Some(p) = &self.model.trainable_prefixes {
            if p.is_empty() {
                return Err(ConfigError::at(
                    "model.trainable_prefixes",
                    "empty list trains nothing",
                ));
            }
        }
        if self.data.threads == 0 {
            return Err(ConfigError::at("data.threads", "must be at least 1"));
        }
        let needs_val = s1.model_select == ModelSelect::BestVal
            || self
                .stage2
                .iter()
                .any(|(_, s)| s.model_select == ModelSelect::BestVal)
            || (self.eval.tau_select == TauSelect::SweepOnVal
                && self.eval.tau_select_split == Split::Val);
        if needs_val && self.data.val_list.is_none() {
            return Err(ConfigError::at(
                "data.val_list",
                "required by `model_select = \"best_val\"` and the tau sweep on val (or set \
                 them to `last` / `fixed`)",
            ));
        }
        if self.eval.report_split == Some(Split::Test) && self.data.test_list.is_none() {
            return Err(ConfigError::at(
                "data.test_list",
                "required by `eval.report_split = \"test\"`",
            ));
        }
        if let Some(e) = self.stage1.sampler_epochs_mismatch() {
            return Err(e);
        }
        if self.device != "cpu" && !self.device.starts_with("cuda") {
            return Err(ConfigError::at(
                "device",
                format!("`{}` is not `cpu` or `cuda:N`", self.device),
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

    /// The settings of a training stage.
    pub fn stage_settings(&self, stage: &Stage) -> &StageSettings {
        match stage {
            Stage::Stage1 => &self.stage1.settings,
            Stage::Head(h) => &self.stage2.head(h.as_str()).settings,
        }
    }

    /// The resolved config as TOML (saved with every run).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string(self)
            .map_err(|e| ConfigError::file(self.name(), format!("serialising: {e}")).into())
    }

    /// SHA-256 (hex) of the resolved config.
    pub fn hash(&self) -> Result<String, TrainError> {
        Ok(lt_core::fs::sha256_hex(self.to_toml()?.as_bytes()))
    }

    /// SHA-256 (hex) of what determines the result of one training stage:
    /// the seed, the data, the model, stage 1 and, for a stage-2 head, its
    /// own section. The run directory, the device name and the loader's
    /// thread, prefetch and cache settings are left out: they do not change
    /// the result. A checkpoint remembers it, so `--resume` with a config
    /// that would train differently is refused, while editing, say, `[eval]`
    /// does not invalidate a finished stage 1.
    pub fn stage_hash(&self, stage: impl AsRef<str>) -> Result<String, TrainError> {
        let stage: Stage = stage
            .as_ref()
            .parse()
            .map_err(|e| ConfigError::file(self.name(), format!("hashing: {e}")))?;
        let err = |e: String| ConfigError::file(self.name(), format!("hashing: {e}"));
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
        if let Stage::Head(h) = &stage {
            let section = stage2
                .as_ref()
                .and_then(|s| s.get(h.as_str()))
                .cloned()
                .ok_or_else(|| err(format!("no stage `{h}`")))?;
            obj.insert(h.as_str().to_string(), section);
        }
        let text = serde_json::to_string(&v).map_err(|e| err(e.to_string()))?;
        Ok(lt_core::fs::sha256_hex(text.as_bytes()))
    }
}

impl Stage1Config {
    /// A progressively-balanced sampler planned for another number of epochs is
    /// almost always a copy-paste slip.
    fn sampler_epochs_mismatch(&self) -> Option<ConfigError> {
        match &self.sampler {
            Strategy::ProgressivelyBalanced { total_epochs, .. }
                if *total_epochs != self.epochs =>
            {
                Some(ConfigError::at(
                    "stage1.sampler.total_epochs",
                    format!(
                        "{total_epochs} differs from `stage1.epochs` = {}",
                        self.epochs
                    ),
                ))
            }
            _ => None,
        }
    }
}

/// Applies one `a.b.c=value` override to a parsed TOML table.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let Some((key, raw)) = spec.split_once('=') else {
        return Err(ConfigError::file(
            "--set",
            format!("`{spec}`: expected `key=value` (e.g. `stage1.epochs=2`)"),
        ));
    };
    let key = key.trim();
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::file(
            "--set",
            format!("`{spec}`: empty key segment"),
        ));
    }
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::file(
                    "--set",
                    format!("`{spec}`: key `{}` is not a table", parts[..=i].join(".")),
                ))
            }
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid config (no file is read); other modules' tests
    /// build on it too.
    pub(crate) const MINIMAL: &str = r#"
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
        assert_eq!(c.stage2.crt().sampler, Strategy::class_balanced());
        assert_eq!(c.stage2.crt().options["init"].as_str(), Some("reinit"));
        assert_eq!(c.stage2.lws().epochs, 5);
        assert_eq!(c.stage2.lws().sampler, Strategy::class_balanced());
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
        d.stage2.head_mut("lws").lr = 1.0;
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
    fn cosine_scale_defaults_to_ldam_s_and_is_checked() {
        let with = |model: &str| {
            ExperimentConfig::from_toml_str(
                &MINIMAL.replace(
                    "arch = \"resnet8\"",
                    &format!("arch = \"resnet8\"\n{model}"),
                ),
                "m.toml",
            )
        };
        assert_eq!(with("").unwrap().model.cosine_scale(), None);
        let cosine = with("classifier = \"cosine\"").unwrap();
        assert_eq!(cosine.model.cosine_scale(), Some(DEFAULT_COSINE_SCALE));
        // The default is left out of the saved config (old hashes hold).
        assert!(!cosine.to_toml().unwrap().contains("cosine_scale"));
        let s16 = with("classifier = \"cosine\"\ncosine_scale = 16.0").unwrap();
        assert_eq!(s16.model.cosine_scale(), Some(16.0));
        for (bad, why) in [
            ("cosine_scale = 16.0", "applies to model.classifier"),
            ("classifier = \"cosine\"\ncosine_scale = 0.0", "> 0"),
            ("classifier = \"cosine\"\ncosine_scale = -3.0", "> 0"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("model.cosine_scale") && err.contains(why),
                "{bad}: {err}"
            );
        }
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
    fn winograd_is_on_by_default_and_enters_the_hash_only_when_off() {
        let c = ExperimentConfig::from_toml_str(MINIMAL, "m.toml").unwrap();
        assert!(c.model.winograd);
        assert!(!c.to_toml().unwrap().contains("winograd"));
        let text = MINIMAL.replace("arch = \"resnet8\"", "arch = \"resnet8\"\nwinograd = false");
        let off = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap();
        assert!(!off.model.winograd);
        assert!(off.to_toml().unwrap().contains("winograd = false"));
        assert_ne!(
            off.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
    }

    #[test]
    fn winograd_f4_is_on_by_default_and_enters_the_hash_only_when_off() {
        let c = ExperimentConfig::from_toml_str(MINIMAL, "m.toml").unwrap();
        assert!(c.model.winograd_f4);
        assert!(!c.to_toml().unwrap().contains("winograd_f4"));
        let text = MINIMAL.replace(
            "arch = \"resnet8\"",
            "arch = \"resnet8\"\nwinograd_f4 = false",
        );
        let off = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap();
        assert!(!off.model.winograd_f4);
        assert!(off.to_toml().unwrap().contains("winograd_f4 = false"));
        assert_ne!(
            off.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
    }

    #[test]
    fn max_isa_is_unset_by_default_and_enters_the_hash_when_set() {
        let c = ExperimentConfig::from_toml_str(MINIMAL, "m.toml").unwrap();
        assert_eq!(c.model.max_isa, None);
        assert!(!c.to_toml().unwrap().contains("max_isa"));
        let text = MINIMAL.replace(
            "arch = \"resnet8\"",
            "arch = \"resnet8\"\nmax_isa = \"avx2\"",
        );
        let capped = ExperimentConfig::from_toml_str(&text, "m.toml").unwrap();
        assert_eq!(capped.model.max_isa, Some(lt_models::ops::Isa::Avx2));
        assert!(capped.to_toml().unwrap().contains("max_isa = \"avx2\""));
        assert_ne!(
            capped.stage_hash("stage1").unwrap(),
            c.stage_hash("stage1").unwrap()
        );
        let bad = MINIMAL.replace(
            "arch = \"resnet8\"",
            "arch = \"resnet8\"\nmax_isa = \"avx3\"",
        );
        let e = ExperimentConfig::from_toml_str(&bad, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_isa") && e.contains("avx3"), "{e}");
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
        assert_eq!((c.stage2.lws().lr, c.stage2.lws().epochs), (0.05, 5));
        assert_eq!(c.stage2.lws().sampler, Strategy::class_balanced());
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
        assert_eq!(c.stage2.crt().bn, Stage2Bn::Eval);
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
