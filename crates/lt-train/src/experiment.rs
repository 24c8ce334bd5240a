//! An opened experiment: its config, device, datasets and run directory.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use lt_core::stats::ClassStats;
use lt_data::dataset::Dataset;
use lt_data::loader::{Loader, LoaderConfig};
use lt_data::transform::{Preset, Transform};
pub use lt_run::data_info::{DataInfo, SplitSummary};

use crate::config::{parse_device, ExperimentConfig, Split};
use crate::dist::{Communicator, Dist, DistEnv, SingleProcess};
use crate::TrainError;
use lt_run::RunDir;

/// A config with everything it refers to opened and checked.
#[derive(Debug)]
pub struct Experiment {
    /// The resolved config.
    pub config: ExperimentConfig,
    /// The device.
    pub device: Device,
    /// The run directory.
    pub run: RunDir,
    /// Training split.
    pub train: Arc<Dataset>,
    /// Validation split.
    pub val: Option<Arc<Dataset>>,
    /// Test split.
    pub test: Option<Arc<Dataset>>,
    /// Per-class training counts.
    pub train_stats: ClassStats,
    /// Split identities.
    pub data_info: DataInfo,
    /// SHA-256 of the resolved config.
    pub config_hash: String,
    /// The data-parallel group this process belongs to (one rank when not
    /// launched distributed).
    pub dist: Dist,
    /// The run directory's writer lock, held by the main rank (the only
    /// writer) for as long as the experiment is open.
    _lock: Option<lt_run::RunLock>,
}

fn summarise(list: &Path, ds: &Dataset) -> Result<SplitSummary, TrainError> {
    let sha256 = lt_core::fs::sha256_file(list, |_| {})?;
    Ok(SplitSummary {
        list: list.display().to_string(),
        sha256,
        total: ds.len(),
        counts: ds.stats().counts().to_vec(),
    })
}

impl Experiment {
    /// Opens the device and reads every split list (checking that every listed
    /// image exists), logs the training counts and split hashes, and writes
    /// the resolved config as `<run_dir>/<config_file>` plus `data.json`.
    pub fn open(config: ExperimentConfig, config_file: &str) -> Result<Self, TrainError> {
        let device = parse_device(&config.device)?;
        let dist = Dist::new(std::sync::Arc::new(SingleProcess), config.dist);
        Self::open_on(config, config_file, device, dist)
    }

    /// [`open`](Self::open) as one rank of a data-parallel run launched with
    /// `env` (see [`DistEnv`]): a CUDA `device` becomes `cuda:LOCAL_RANK`,
    /// the ranks connect (NCCL on CUDA with the `nccl` feature, TCP
    /// otherwise), and only rank 0 writes files. Every rank must see the
    /// split lists and images; the run directory must be shared between ranks
    /// (as a shared file system across machines) for `--resume` and stage 2,
    /// which read checkpoints that rank 0 wrote.
    pub fn open_distributed(
        mut config: ExperimentConfig,
        config_file: &str,
        env: &DistEnv,
    ) -> Result<Self, TrainError> {
        if config.device.starts_with("cuda") {
            config.device = format!("cuda:{}", env.local_rank);
        }
        let device = parse_device(&config.device)?;
        let comm = env.connect(&config.dist, &device)?;
        tracing::info!(
            rank = env.rank,
            world_size = env.world_size,
            local_rank = env.local_rank,
            device = %config.device,
            sync_bn = config.dist.sync_bn,
            "joined the data-parallel group"
        );
        let dist = Dist::new(comm, config.dist);
        Self::open_on(config, config_file, device, dist)
    }

    /// [`open`](Self::open) as one rank of a group already connected through
    /// `comm` (the in-process backend of tests, for instance).
    pub fn open_with(
        config: ExperimentConfig,
        config_file: &str,
        comm: std::sync::Arc<dyn Communicator>,
    ) -> Result<Self, TrainError> {
        let device = parse_device(&config.device)?;
        let dist = Dist::new(comm, config.dist);
        Self::open_on(config, config_file, device, dist)
    }

    fn open_on(
        config: ExperimentConfig,
        config_file: &str,
        device: candle_core::Device,
        dist: Dist,
    ) -> Result<Self, TrainError> {
        // A config built or changed in code is checked like a loaded one,
        // before anything is read or created.
        config.validate()?;
        // Process-wide: one experiment per process (the CLI, the sweep's
        // child processes).
        lt_models::ops::set_winograd(config.model.winograd);
        lt_models::ops::set_winograd_f4(config.model.winograd_f4);
        lt_models::ops::set_max_isa(config.model.max_isa.unwrap_or(lt_models::ops::Isa::Avx512));
        let d = &config.data;
        let train = lt_data::split_list::read_split_list(&d.train_list, &d.root, d.num_classes)?;
        let num_classes = train.num_classes();
        let read_other =
            |list: &Option<std::path::PathBuf>| -> Result<Option<Dataset>, TrainError> {
                Ok(list
                    .as_ref()
                    .map(|l| lt_data::split_list::read_split_list(l, &d.root, Some(num_classes)))
                    .transpose()?)
            };
        let val = read_other(&d.val_list)?;
        let test = read_other(&d.test_list)?;
        let train_stats = train.stats();
        let rule = &config.eval.group_rule;
        let data_info = DataInfo {
            num_classes,
            train: summarise(&d.train_list, &train)?,
            val: match (&d.val_list, &val) {
                (Some(l), Some(ds)) => Some(summarise(l, ds)?),
                _ => None,
            },
            test: match (&d.test_list, &test) {
                (Some(l), Some(ds)) => Some(summarise(l, ds)?),
                _ => None,
            },
            imbalance_ratio: train_stats.imbalance_ratio(),
            group_sizes: train_stats.group_sizes(rule),
            group_rule: rule.to_string(),
        };
        tracing::info!(
            list = %d.train_list.display(),
            images = train.len(),
            classes = num_classes,
            sha256 = %data_info.train.sha256,
            counts = ?data_info.train.counts,
            "training split"
        );
        tracing::info!(
            rule = %rule,
            many = data_info.group_sizes[0],
            medium = data_info.group_sizes[1],
            few = data_info.group_sizes[2],
            imbalance_ratio = ?data_info.imbalance_ratio,
            "class groups"
        );
        for (name, s) in [("val", &data_info.val), ("test", &data_info.test)] {
            if let Some(s) = s {
                tracing::info!(split = name, list = %s.list, images = s.total, sha256 = %s.sha256, "evaluation split");
            }
        }
        let run = RunDir::new(&config.run_dir);
        let config_hash = config.hash()?;
        let lock = if dist.is_main() {
            run.create()?;
            let lock = run.lock()?;
            // Under the lock nobody else writes here: a temp file left by
            // another process is the trace of a write killed mid-way.
            let stale = run.remove_stale_temps()?;
            if !stale.is_empty() {
                let names: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
                tracing::info!(
                    files = %names.join(", "),
                    "removed {} temp file(s) of writes interrupted in an earlier run",
                    stale.len()
                );
            }
            Some(lock)
        } else {
            None
        };
        if dist.is_main() {
            lt_core::fs::write_atomic(&run.root().join(config_file), config.to_toml()?.as_bytes())?;
            data_info.write(&run.data_info())?;
        }
        // Every rank must train the same thing on the same data.
        let mut identity = config.stage_hash(&lt_core::Stage::Stage1)?;
        for (head, _) in config.stage2.iter() {
            identity.push(' ');
            identity.push_str(&config.stage_hash(lt_core::Stage::Head(head.clone()))?);
        }
        identity.push(' ');
        identity.push_str(&data_info.train.sha256);
        let mut identity = identity.into_bytes();
        let mine = identity.clone();
        dist.comm().broadcast_bytes(&mut identity)?;
        if identity != mine {
            return Err(TrainError::Dist(format!(
                "rank {}: the config or the training list differs from rank 0's (stage hashes \
                 and list SHA-256 `{}` vs `{}`)",
                dist.rank(),
                String::from_utf8_lossy(&mine),
                String::from_utf8_lossy(&identity)
            )));
        }
        Ok(Self {
            config,
            device,
            run,
            train: Arc::new(train),
            val: val.map(Arc::new),
            test: test.map(Arc::new),
            train_stats,
            data_info,
            config_hash,
            dist,
            _lock: lock,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.train.num_classes()
    }

    /// A split's dataset, or an error naming the missing list.
    pub fn dataset(&self, split: Split) -> Result<&Arc<Dataset>, TrainError> {
        match split {
            Split::Train => Ok(&self.train),
            Split::Val => self.val.as_ref().ok_or_else(|| {
                crate::config::ConfigError::at(
                    "data.val_list",
                    "not set, but the val split is needed",
                )
                .into()
            }),
            Split::Test => self.test.as_ref().ok_or_else(|| {
                crate::config::ConfigError::at(
                    "data.test_list",
                    "not set, but the test split is needed",
                )
                .into()
            }),
        }
    }

    /// The transform of a preset with the configured normalisation.
    pub fn transform(&self, preset: Preset) -> Transform {
        let t = Transform::new(preset);
        match self.config.data.normalization {
            Some(n) => t.with_normalization(n.normalization()),
            None => t,
        }
    }

    /// A loader over a split with a preset; `seed` keys the augmentation.
    pub fn loader(&self, split: Split, preset: Preset, seed: u64) -> Result<Loader, TrainError> {
        let d = &self.config.data;
        let cfg = LoaderConfig {
            threads: d.threads,
            prefetch_batches: d.prefetch_batches,
            cache_decoded: d.cache_decoded,
            seed,
            on_unreadable: d.on_unreadable,
        };
        Ok(Loader::new(
            self.dataset(split)?.clone(),
            self.transform(preset),
            cfg,
        )?)
    }

    /// A loader over a split with the evaluation transform.
    pub fn eval_loader(&self, split: Split) -> Result<Loader, TrainError> {
        self.loader(split, self.config.data.eval_preset, 0)
    }
}

/// Sequential batches `[0, b), [b, 2b), ...` covering `n` indices.
pub fn sequential_batches(n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    (0..n)
        .step_by(batch_size.max(1))
        .map(|s| (s..(s + batch_size).min(n)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_batches_cover_everything_once() {
        let b = sequential_batches(10, 4);
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert!(sequential_batches(0, 4).is_empty());
    }
}
