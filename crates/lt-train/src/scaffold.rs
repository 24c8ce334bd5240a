//! A ready experiment config for a data set of one's own (`lt-cli init`).
//!
//! [`scaffold_config`] chooses a recipe from the images ([`Recipe::for_images`]:
//! 32x32 images get the CIFAR-LT recipe, any other size the ImageNet-LT one)
//! and writes the config through the config types themselves (`[data]`,
//! `[model]`, `[stage1]` and `[eval]` are serialised from [`DataConfig`],
//! [`ModelConfig`], [`Stage1Config`] and [`EvalConfig`]), then parses the text
//! back with [`ExperimentConfig::from_toml_str`], so what it writes is always
//! a config `lt-cli run` accepts.
//!
//! ```
//! use std::path::PathBuf;
//! use lt_train::scaffold::{scaffold_config, ScaffoldInput};
//! let input = ScaffoldInput {
//!     name: "flowers".into(),
//!     run_dir: PathBuf::from("runs/flowers"),
//!     root: PathBuf::from("flowers"),
//!     train_list: PathBuf::from("data/flowers/train.txt"),
//!     val_list: PathBuf::from("data/flowers/val.txt"),
//!     test_list: Some(PathBuf::from("data/flowers/test.txt")),
//!     num_classes: 5,
//!     train_images: 700,
//!     image_size: Some((32, 32)),
//!     group_rule: Default::default(),
//!     seed: 0,
//! };
//! let (text, cfg) = scaffold_config(&input).unwrap();
//! assert!(text.contains("arch = \"resnet32\""));
//! // 700 images: batch 32 (at least 20 batches an epoch), lr scaled with it.
//! assert_eq!(cfg.stage1.batch_size, 32);
//! assert_eq!(cfg.stage1.lr, 0.025);
//! ```

use std::path::PathBuf;

use lt_core::stats::GroupRule;
use lt_data::transform::Preset;
use lt_models::Arch;

use crate::config::{
    ConfigError, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, NormalizationKind,
    Stage1Config,
};
use crate::settings::StageSettings;
use crate::TrainError;

/// What the config is made for.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaffoldInput {
    /// Experiment name.
    pub name: String,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Image root the lists' paths are relative to.
    pub root: PathBuf,
    /// Training list.
    pub train_list: PathBuf,
    /// Validation list.
    pub val_list: PathBuf,
    /// Test list, when there is one (otherwise val is reported).
    pub test_list: Option<PathBuf>,
    /// Number of classes.
    pub num_classes: usize,
    /// Number of training images.
    pub train_images: usize,
    /// The size every image has, when they all have one (`None`: mixed sizes).
    pub image_size: Option<(u32, u32)>,
    /// Many / medium / few rule of the evaluation.
    pub group_rule: GroupRule,
    /// Seed of the experiment.
    pub seed: u64,
}

/// The recipe chosen for a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Backbone.
    pub arch: Arch,
    /// Training augmentation.
    pub train_preset: Preset,
    /// Evaluation transform.
    pub eval_preset: Preset,
    /// Normalisation constants.
    pub normalization: NormalizationKind,
    /// Stage-1 batch size.
    pub batch_size: usize,
    /// Stage-1 learning rate.
    pub lr: f64,
    /// Stage-1 epochs.
    pub epochs: usize,
    /// Keep decoded images in memory.
    pub cache_decoded: bool,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Why, in a sentence (written at the top of the config).
    pub why: String,
}

impl Recipe {
    /// 32x32 images (every one of them): CIFAR ResNet-32 with the CIFAR
    /// augmentation, batch 128, lr 0.1. Anything else: ResNet-18 with the
    /// ImageNet augmentation (random resized 224 crops; evaluation on the
    /// 224 centre crop of the image resized to 256), batch 64, lr 0.025.
    /// Both: 30 epochs, cosine schedule, instance-balanced sampling. The
    /// batch is halved (with the lr), down to 16, until an epoch has at least
    /// 20 batches: a small data set still gets enough steps.
    pub fn for_images(image_size: Option<(u32, u32)>, train_images: usize) -> Recipe {
        let cifar = image_size == Some((32, 32));
        let (base_batch, base_lr) = if cifar { (128, 0.1) } else { (64, 0.025) };
        let mut batch = base_batch;
        while batch > 16 && batch * 20 > train_images {
            batch /= 2;
        }
        let lr = base_lr * batch as f64 / base_batch as f64;
        let size = match image_size {
            Some((w, h)) => format!("all {w}x{h}"),
            None => "of mixed sizes".to_string(),
        };
        if cifar {
            Recipe {
                arch: Arch::ResNet32,
                train_preset: Preset::CifarTrain,
                eval_preset: Preset::CifarEval,
                normalization: NormalizationKind::Cifar,
                batch_size: batch,
                lr,
                epochs: 30,
                cache_decoded: true,
                eval_batch_size: 256,
                why: format!(
                    "images {size}: the CIFAR-LT recipe (CIFAR ResNet-32, pad-and-crop \
                     augmentation), batch {batch} for {train_images} training images"
                ),
            }
        } else {
            Recipe {
                arch: Arch::ResNet18,
                train_preset: Preset::ImagenetTrain,
                eval_preset: Preset::ImagenetEval,
                normalization: NormalizationKind::Imagenet,
                batch_size: batch,
                lr,
                epochs: 30,
                cache_decoded: false,
                eval_batch_size: 64,
                why: format!(
                    "images {size}: the ImageNet-LT recipe (ResNet-18, random resized 224 \
                     crops), batch {batch} for {train_images} training images"
                ),
            }
        }
    }
}

fn table<T: serde::Serialize>(value: &T, section: &str) -> Result<toml::Table, TrainError> {
    toml::Table::try_from(value)
        .map_err(|e| TrainError::from(ConfigError::at(section, format!("serialising: {e}"))))
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// The config text for `input` (a comment saying how it was chosen, then
/// the TOML) and the config it parses to.
pub fn scaffold_config(input: &ScaffoldInput) -> Result<(String, ExperimentConfig), TrainError> {
    let recipe = Recipe::for_images(input.image_size, input.train_images);
    let data = DataConfig {
        root: input.root.clone(),
        train_list: input.train_list.clone(),
        val_list: Some(input.val_list.clone()),
        test_list: input.test_list.clone(),
        num_classes: Some(input.num_classes),
        train_preset: recipe.train_preset,
        eval_preset: recipe.eval_preset,
        normalization: Some(recipe.normalization),
        threads: 2,
        prefetch_batches: 2,
        cache_decoded: recipe.cache_decoded,
        on_unreadable: Default::default(),
    };
    // `[model]` with the architecture and every other key at its default,
    // whatever keys the section has.
    let mut model_t = toml::Table::new();
    let arch = toml::Value::try_from(recipe.arch).map_err(|e| {
        TrainError::from(ConfigError::at("model.arch", format!("serialising: {e}")))
    })?;
    model_t.insert("arch".into(), arch);
    let model: ModelConfig = toml::Value::Table(model_t)
        .try_into()
        .map_err(|e| TrainError::from(ConfigError::at("model", format!("{e}"))))?;
    let mut settings = StageSettings::stage1();
    settings.epochs = recipe.epochs;
    settings.batch_size = recipe.batch_size;
    settings.lr = recipe.lr;
    let stage1 = Stage1Config {
        settings,
        eval_test: false,
    };
    let eval = EvalConfig {
        batch_size: recipe.eval_batch_size,
        group_rule: input.group_rule.clone(),
        ..EvalConfig::default()
    };
    let mut doc = toml::Table::new();
    doc.insert("name".into(), input.name.clone().into());
    doc.insert("run_dir".into(), path_str(&input.run_dir).into());
    doc.insert("seed".into(), (input.seed as i64).into());
    doc.insert("device".into(), "cpu".into());
    let mut data_t = table(&data, "data")?;
    for key in ["root", "train_list", "val_list", "test_list"] {
        // Forward slashes on every platform.
        if let Some(toml::Value::String(s)) = data_t.get_mut(key) {
            *s = s.replace('\\', "/");
        }
    }
    doc.insert("data".into(), data_t.into());
    doc.insert("model".into(), table(&model, "model")?.into());
    doc.insert("stage1".into(), table(&stage1, "stage1")?.into());
    // Trained heads whose default batch would leave an epoch with fewer
    // than 4 batches train with the stage-1 batch instead.
    let mut stage2 = toml::Table::new();
    for (head, section) in crate::config::Stage2Config::default().iter() {
        if section.batch_size * 4 > input.train_images {
            let mut t = toml::Table::new();
            t.insert(
                "batch_size".into(),
                (recipe.batch_size.min(section.batch_size) as i64).into(),
            );
            stage2.insert(head.as_str().to_string(), t.into());
        }
    }
    if !stage2.is_empty() {
        doc.insert("stage2".into(), stage2.into());
    }
    doc.insert("eval".into(), table(&eval, "eval")?.into());
    let body = toml::to_string(&doc).map_err(|e| {
        TrainError::from(ConfigError::file(&input.name, format!("serialising: {e}")))
    })?;
    let header = format!(
        "# {name}: written by `lt-cli init` for {classes} classes.\n\
         # Recipe: {why}.\n\
         # Every key can be changed here or with `--set key=value`; the trained heads\n\
         # (`lt-cli heads`) take their reference settings unless a [stage2.<head>]\n\
         # section says otherwise.\n\
         #\n\
         #   lt-cli run --config <this file>\n\n",
        name = input.name,
        classes = input.num_classes,
        why = recipe.why,
    );
    let text = format!("{header}{body}");
    let cfg = ExperimentConfig::from_toml_str(&text, &format!("config of {}", input.name))?;
    Ok((text, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(size: Option<(u32, u32)>, train: usize) -> ScaffoldInput {
        ScaffoldInput {
            name: "mine".into(),
            run_dir: "runs/mine".into(),
            root: "imgs".into(),
            train_list: "data/mine/train.txt".into(),
            val_list: "data/mine/val.txt".into(),
            test_list: None,
            num_classes: 3,
            train_images: train,
            image_size: size,
            group_rule: GroupRule::default(),
            seed: 7,
        }
    }

    #[test]
    fn the_config_parses_back_and_fits_the_data() {
        let (text, cfg) = scaffold_config(&input(Some((32, 32)), 100)).unwrap();
        assert_eq!(cfg.model.arch, Arch::ResNet32);
        assert_eq!(cfg.stage1.batch_size, 16);
        assert!((cfg.stage1.lr - 0.1 * 16.0 / 128.0).abs() < 1e-12);
        assert_eq!(cfg.seed, 7);
        assert!(cfg.data.test_list.is_none());
        for (_, s) in cfg.stage2.iter() {
            assert!(s.batch_size <= 16, "{text}");
        }
        // Parsing the written text again gives the same config.
        let again = ExperimentConfig::from_toml_str(&text, "again").unwrap();
        assert_eq!(again, cfg);
        let (_, big) = scaffold_config(&input(None, 100_000)).unwrap();
        assert_eq!(big.model.arch, Arch::ResNet18);
        assert_eq!(big.data.train_preset, Preset::ImagenetTrain);
        assert_eq!(big.stage1.batch_size, 64);
        assert_eq!(big.stage2.crt().batch_size, 512);
    }
}
