//! The layout of a run directory: every file name is defined here once.
//!
//! ```text
//! <run_dir>/
//!   config.toml                  resolved config of the last training command
//!   config.<stage>.toml          ... of the last `retrain` / `eval` command
//!   data.json                    per-class counts and sha256 of every split
//!   metrics.jsonl                one JSON object per evaluated epoch and stage
//!   checkpoints/<stage>_last.safetensors (+ .json)   every epoch
//!   checkpoints/<stage>_best.safetensors (+ .json)   best validation epoch
//!   results.json                 `eval` output (every head)
//!   tau_sweep.json               `tau-sweep` output
//!   timings.json                 time breakdown of the last `run`
//!   commands.json                the `run` / `train` / `retrain` command lines that trained it
//!   features/<split>.safetensors `features` output
//!   feature_cache/<split>-<key>.safetensors  eval-mode features of a frozen
//!                                backbone, with the key they were computed
//!                                under (`<key>`: its first 16 hex digits)
//!   cell.json                    the run's grid cell, in a sweep
//! ```
//!
//! `<stage>` is `stage1` or the name of a trained stage-2 head (`crt`, `lws`, ...).

use std::path::{Path, PathBuf};

use lt_core::fs::FsError;
use lt_core::Split;

/// `results.json`.
pub const RESULTS_FILE: &str = "results.json";
/// `metrics.jsonl`.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// `cell.json`.
pub const CELL_FILE: &str = "cell.json";
/// `config.toml`.
pub const CONFIG_FILE: &str = "config.toml";
/// `data.json`.
pub const DATA_INFO_FILE: &str = "data.json";
/// `tau_sweep.json`.
pub const TAU_SWEEP_FILE: &str = "tau_sweep.json";
/// `timings.json`.
pub const TIMINGS_FILE: &str = "timings.json";
/// `commands.json`.
pub const COMMANDS_FILE: &str = "commands.json";
/// `checkpoints/`.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// `features/`.
pub const FEATURES_DIR: &str = "features";
/// `feature_cache/`.
pub const FEATURE_CACHE_DIR: &str = "feature_cache";

/// Paths inside a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run directory rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the directory's writer lock (see [`crate::lock`]); the
    /// directory must exist.
    pub fn lock(&self) -> Result<crate::RunLock, crate::RunError> {
        crate::RunLock::acquire(&self.root)
    }

    /// Creates the directory tree.
    pub fn create(&self) -> Result<(), FsError> {
        let ck = self.checkpoints_dir();
        std::fs::create_dir_all(&ck).map_err(|e| FsError::new("creating directory", &ck, e))
    }

    /// Removes the temp files that an atomic write killed before its rename
    /// left in the root, `checkpoints/` and `feature_cache/` (see
    /// [`lt_core::fs::remove_atomic_temps`]), and returns them. Call it only
    /// while holding the directory's lock.
    pub fn remove_stale_temps(&self) -> Result<Vec<PathBuf>, FsError> {
        let mut removed = lt_core::fs::remove_atomic_temps(&self.root)?;
        removed.extend(lt_core::fs::remove_atomic_temps(&self.checkpoints_dir())?);
        removed.extend(lt_core::fs::remove_atomic_temps(
            &self.root.join(FEATURE_CACHE_DIR),
        )?);
        Ok(removed)
    }

    /// `config.toml`, or `config.<command>.toml` for commands other than stage 1.
    pub fn config_copy(&self, command: Option<&str>) -> PathBuf {
        match command {
            None => self.root.join(CONFIG_FILE),
            Some(c) => self.root.join(format!("config.{c}.toml")),
        }
    }

    /// `data.json`.
    pub fn data_info(&self) -> PathBuf {
        self.root.join(DATA_INFO_FILE)
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    /// Last-epoch checkpoint of a stage (a `Stage`, a head or a stage name).
    pub fn last_checkpoint(&self, stage: impl std::fmt::Display) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{stage}_last.safetensors"))
    }

    /// Best-validation checkpoint of a stage.
    pub fn best_checkpoint(&self, stage: impl std::fmt::Display) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{stage}_best.safetensors"))
    }

    /// `results.json`.
    pub fn results(&self) -> PathBuf {
        self.root.join(RESULTS_FILE)
    }

    /// `tau_sweep.json`.
    pub fn tau_sweep(&self) -> PathBuf {
        self.root.join(TAU_SWEEP_FILE)
    }

    /// `timings.json`.
    pub fn timings(&self) -> PathBuf {
        self.root.join(TIMINGS_FILE)
    }

    /// `commands.json`.
    pub fn commands(&self) -> PathBuf {
        self.root.join(COMMANDS_FILE)
    }

    /// `cell.json`.
    pub fn cell(&self) -> PathBuf {
        self.root.join(CELL_FILE)
    }

    /// `features/<split>.safetensors`.
    pub fn features(&self, split: Split) -> PathBuf {
        self.root
            .join(FEATURES_DIR)
            .join(format!("{}.safetensors", split.as_str()))
    }

    /// `feature_cache/<split>-<key>.safetensors`: one file per split and
    /// key, `key` being the features' key (a hex digest; its first 16
    /// digits name the file). The stage-1 backbone and each backbone whose
    /// BN statistics a stage-2 head refreshed have their own key.
    pub fn feature_cache(&self, split: Split, key: &str) -> PathBuf {
        let short = key.get(..FEATURE_KEY_DIGITS).unwrap_or(key);
        self.root
            .join(FEATURE_CACHE_DIR)
            .join(format!("{}-{short}.safetensors", split.as_str()))
    }

    /// Every cached feature file of `split`, whatever its key (none when
    /// `feature_cache/` does not exist).
    pub fn feature_cache_files(&self, split: Split) -> Result<Vec<PathBuf>, FsError> {
        let dir = self.root.join(FEATURE_CACHE_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FsError::new("listing directory", &dir, e)),
        };
        let prefix = format!("{}-", split.as_str());
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| FsError::new("listing directory", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".safetensors") {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Hex digits of a feature key that name its cache file: 64 bits, so two
/// keys of one run directory do not share a name by chance (and if they
/// did, the full key stored in the file tells them apart).
const FEATURE_KEY_DIGITS: usize = 16;

/// Path of the JSON copy of a checkpoint's metadata (`<name>.json`).
pub fn checkpoint_meta_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_the_root_the_checkpoints_and_the_feature_cache_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(run.remove_stale_temps().unwrap().is_empty());
        run.create().unwrap();
        let cache = run.root().join(FEATURE_CACHE_DIR);
        std::fs::create_dir_all(&cache).unwrap();
        let stale = [
            run.checkpoints_dir()
                .join(".crt_last.safetensors.4000000001.tmp"),
            run.root().join(".results.json.4000000001.tmp"),
            cache.join(".train.safetensors.4000000001.tmp"),
        ];
        for p in &stale {
            std::fs::write(p, b"cut").unwrap();
        }
        let kept = run.last_checkpoint("crt");
        std::fs::write(&kept, b"whole").unwrap();
        let mut removed = run.remove_stale_temps().unwrap();
        removed.sort();
        let mut want = stale.to_vec();
        want.sort();
        assert_eq!(removed, want);
        assert!(kept.is_file() && stale.iter().all(|p| !p.exists()));
    }

    #[test]
    fn feature_cache_files_are_named_by_split_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(run.feature_cache_files(Split::Val).unwrap().is_empty());
        let key = "0123456789abcdef0123456789abcdef";
        let a = run.feature_cache(Split::Val, key);
        assert_eq!(
            a,
            dir.path()
                .join("feature_cache/val-0123456789abcdef.safetensors")
        );
        let b = run.feature_cache(Split::Val, "fedcba9876543210ffff");
        let train = run.feature_cache(Split::Train, key);
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        for p in [&a, &b, &train] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::write(a.with_extension("json"), b"not a cache file").unwrap();
        assert_eq!(run.feature_cache_files(Split::Val).unwrap(), vec![a, b]);
        assert_eq!(run.feature_cache_files(Split::Train).unwrap(), vec![train]);
        assert!(run.feature_cache_files(Split::Test).unwrap().is_empty());
    }
}
