//! lt-train: optimiser, learning-rate schedules, checkpoints, experiment
//! configuration, the stage-1 and stage-2 training loops and the evaluation of
//! every classifier head: those of Kang et al., "Decoupling Representation and
//! Classifier for Long-Tailed Recognition" (ICLR 2020), and the losses and
//! heads that followed it (logit adjustment, LDAM-DRW, mixup, MiSLAS,
//! DisAlign, Weight Balancing, learned τ), side by side under one protocol.
//!
//! # Pieces
//!
//! | module | what |
//! |---|---|
//! | [`optim`] | [`optim::SgdMomentum`]: SGD with momentum, L2 decay on trained tensors only, Nesterov, state by name |
//! | [`schedule`] | cosine (per epoch or iteration, `pre_1_1` / `post_1_1` offset), step, linear warm-up |
//! | [`checkpoint`] | atomic safetensors checkpoints (model + momentum + JSON metadata) |
//! | [`config`] | the TOML experiment config; errors name the file and key |
//! | [`experiment`] | an opened config: device, split lists, run directory, split hashes |
//! | [`stage1`] | joint training with any sampler and augmentation |
//! | [`settings`] | [`settings::StageSettings`]: one struct for every stage (optimiser, schedule, sampler, epochs, batch, loss, BN) |
//! | [`heads`] | the head registry: one file per head (joint, NCM, tau-norm, cRT, LWS, post-hoc LA, LA-cRT, learned τ, MiSLAS, DisAlign, WB), the [`heads::HeadMethod`] trait |
//! | [`loss`] | the loss registry: one file per loss (cross-entropy, logit-adjusted, LDAM-DRW, class-balanced, re-weighted, label-aware smoothing), the [`loss::LossKind`] trait |
//! | [`max_norm`] | MaxNorm: per-class weight rows projected onto a ball after the optimiser (per epoch or per iteration) |
//! | [`mixup`] | stage-1 mixup, drawn per batch from a seeded stream |
//! | [`stage2`] | any trained head on the frozen backbone (`bn = train | eval`, cached-feature fast path) |
//! | [`feature_store`] | eval-mode features of a frozen encoder kept in the run directory, keyed by everything they depend on, so each split goes through the encoder once per run |
//! | [`evaluation`] | every requested head from one stage-1 checkpoint, `results.json`, feature export |
//! | [`torch_import`] | a PyTorch checkpoint (the classifier-balancing release, or any backbone + joint classifier) as the finished stage 1 of a run |
//! | [`scaffold`] | a ready config for a data set of one's own (`lt-cli init`), written through the config types and parsed back |
//! | [`sweep`] | grids of experiments: parsing, cell configs, the steps left in each cell (`cargo xtask sweep` runs them) |
//! | [`trainer`] | the shared epoch loop, built from parts: evaluation, best / last checkpoints, `metrics.jsonl`, `--resume`, non-finite loss stop |
//! | [`dist`] | data-parallel training: communicators (in-process, TCP, NCCL), gradient averaging, SyncBN, the launch environment |
//!
//! # Example: the optimiser and a schedule
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use lt_train::optim::{SgdConfig, SgdMomentum};
//! use lt_train::schedule::ScheduleConfig;
//!
//! # fn main() -> Result<(), lt_train::TrainError> {
//! // Reference 5-epoch LWS schedule: per-epoch cosine from 0.2, `pre_1_1`.
//! let schedule = ScheduleConfig::default().build(0.2, 5, 100)?;
//! let lrs: Vec<f64> = (0..5).map(|e| (schedule.lr(e, 0) * 1000.0).round() / 1000.0).collect();
//! assert_eq!(lrs, [0.2, 0.181, 0.131, 0.069, 0.019]);
//!
//! // One SGD step on loss = 3 * w: v = g + wd * w = 3.5, w = 1 - 0.1 * 3.5.
//! let w = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu)?)?;
//! let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.5, nesterov: false };
//! let mut opt = SgdMomentum::new(vec![("w".into(), w.clone())], cfg)?;
//! opt.backward_step(&(w.as_tensor() * 3.0)?.sum_all()?)?;
//! assert!((w.as_tensor().to_vec1::<f32>()?[0] - 0.65).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```
//!
//! # Example: a whole experiment
//!
//! What `lt-cli train`, `retrain` and `eval` do (needs the data of the config):
//!
//! ```no_run
//! use std::path::Path;
//! use lt_train::config::ExperimentConfig;
//! use lt_train::experiment::Experiment;
//! use lt_train::{heads, RunOptions};
//!
//! # fn main() -> Result<(), lt_train::TrainError> {
//! let cfg = ExperimentConfig::load(
//!     Path::new("configs/cifar100_lt_r100_short.toml"),
//!     &["stage1.epochs=2".to_string()],
//! )?;
//! let exp = Experiment::open(cfg, "config.toml")?;
//! let report = lt_train::stage1::train_stage1(&exp, RunOptions::default())?;
//! println!("best val top-1 {:?}", report.best);
//! // Every head of the registry: train those that train, then evaluate all.
//! for h in heads::REGISTRY.iter().filter(|h| h.training().is_some()) {
//!     lt_train::stage2::retrain(&exp, &h.id(), RunOptions::default())?;
//! }
//! let ids: Vec<_> = heads::REGISTRY.iter().map(|h| h.id()).collect();
//! let results = lt_train::evaluation::evaluate_heads(&exp, &ids, false)?;
//! for h in &results.heads {
//!     println!("{}: top-1 {:.1}", h.label, 100.0 * h.evaluation.top1);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Reference behaviour and switches
//!
//! Defaults follow the official code (see `decoupling.md`): SGD momentum 0.9
//! with dampening 0 and decay on every trained tensor; per-epoch cosine to 0
//! stepped at the start of each epoch (`cosine_offset = "pre_1_1"` by default:
//! the reference's PyTorch version is unknown, and `pre_1_1` starts at the base
//! rate and never wastes an epoch at lr 0); stage 2 restarts the schedule with a
//! fresh optimiser; cRT re-initialises the head and uses the class-balanced
//! sampler (class cycle, 4 per class); LWS trains scales (bias included) on the
//! train set with the same class-balanced sampler; stage-2 BN normalises with batch statistics and
//! keeps updating its running statistics (`bn = "train"`); NCM and tau-norm use
//! the stage-1 statistics; model selection on the best validation epoch, with
//! the last epoch reported as well.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod error;
pub mod eval;
pub mod evaluation;
pub mod experiment;
pub mod export;
pub mod feature_store;
pub mod heads;
pub mod loss;
pub mod max_norm;
pub mod mixup;
pub mod model;
pub mod optim;
pub mod progress;
pub mod scaffold;
pub mod schedule;
pub mod seed;
pub mod settings;
pub mod stage1;
pub mod stage2;
pub mod sweep;
pub mod torch_import;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{RunOptions, StartMode, TrainReport};
