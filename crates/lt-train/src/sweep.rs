//! Sweeps: a grid of experiments (datasets x stage-1 samplers x seeds, every
//! cell evaluated with the grid's heads), parsed and planned.
//!
//! This module reads a grid file (format: `grids/README.md`), builds each
//! cell's config from the base config and the grid's overrides (with the
//! training config's own `--set` parser), and tells, from the files of a
//! cell's run directory, which `lt-cli` steps are left. Running the steps is
//! the job of `cargo xtask sweep`, a thin shell over this module.
//!
//! ```
//! use lt_train::sweep::{Grid, Step};
//!
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("base.toml"), "run_dir = \"r\"\n[stage1]\nepochs = 2\n").unwrap();
//! let text = r#"
//! name = "g"
//! base_config = "base.toml"
//! out_dir = "out"
//! seeds = [0, 1]
//! heads = ["lws", "joint"]
//! [samplers]
//! ib = { kind = "instance_balanced" }
//! "#;
//! let grid = Grid::parse(text, &dir.path().join("grid.toml"), &["stage1.lr=0.1".into()]).unwrap();
//! assert_eq!(grid.heads, ["joint", "lws"]); // the registry's order
//! assert_eq!(grid.cells().len(), 2);
//! assert_eq!(Step::plan(&grid.heads), [Step::Train, Step::Retrain("lws".into()), Step::Eval]);
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lt_core::fs::FsError;
use lt_run::layout::RESULTS_FILE;
use lt_run::CellInfo;
use serde::Deserialize;

use crate::config::{apply_override, ConfigError};

/// What can go wrong with a grid; errors name the file and key.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A key of the grid (or of its base config) is invalid.
    #[error("{}: key `{key}`: {message}", path.display())]
    Grid {
        /// The grid file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file is not valid TOML of the expected shape.
    #[error("{}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error, with its line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A file could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A `--set` override is malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A cell's config could not be serialised.
    #[error("serialising a cell config")]
    Serialise(#[source] toml::ser::Error),
}

type Result<T> = std::result::Result<T, SweepError>;

/// The heads a grid may ask for, in the registry's (and the report's) order.
fn known_heads() -> Vec<&'static str> {
    crate::heads::names()
}

/// Whether a head trains in a stage of its own (`lt-cli retrain --head`).
fn is_trained(head: &str) -> bool {
    crate::heads::find(head).is_some_and(|h| h.training().is_some())
}

/// A grid file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    name: String,
    base_config: PathBuf,
    out_dir: PathBuf,
    seeds: Vec<u64>,
    heads: Vec<String>,
    samplers: BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    datasets: Option<BTreeMap<String, toml::Spanned<toml::Table>>>,
    #[serde(default)]
    overrides: toml::Table,
}

/// A row of the grid (a stage-1 recipe): its key, table label,
/// `stage1.sampler` value and any other overrides of the row (its `set`
/// table, e.g. `set = { "stage1.loss" = { kind = "ldam_drw" } }`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec {
    /// Key (directory name).
    pub key: String,
    /// Name in tables and plots.
    pub label: String,
    /// The strategy table (`{ kind = ... }`).
    pub strategy: toml::Table,
    /// Overrides of this row's cells (dotted keys or nested tables),
    /// applied after the dataset's.
    pub overrides: toml::Table,
}

/// A dataset of the grid: its key and config overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Key (directory name).
    pub key: String,
    /// Overrides of the base config (nested tables or dotted keys).
    pub overrides: toml::Table,
}

/// A parsed and checked grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Name of the grid.
    pub name: String,
    /// The grid file.
    pub path: PathBuf,
    /// The base config, parsed.
    pub base: toml::Table,
    /// Where the cells go (relative to the current directory).
    pub out_dir: PathBuf,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Heads, in the report's order.
    pub heads: Vec<String>,
    /// Samplers in file order.
    pub samplers: Vec<SamplerSpec>,
    /// Datasets in file order.
    pub datasets: Vec<DatasetSpec>,
    /// Overrides of every cell (the grid's `[overrides]`, then `--set`).
    pub overrides: toml::Table,
}

/// A key used as a directory name: letters, digits, `-` and `_`.
fn check_key(what: &str, key: &str) -> std::result::Result<(), String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{what} `{key}`: use only letters, digits, `-` and `_` (it names a directory)"
        ));
    }
    Ok(())
}

/// Entries of a table of tables in the order they appear in the file.
fn in_file_order(map: BTreeMap<String, toml::Spanned<toml::Table>>) -> Vec<(String, toml::Table)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by_key(|(_, t)| t.span().start);
    v.into_iter().map(|(k, t)| (k, t.into_inner())).collect()
}

impl Grid {
    /// Reads a grid file and its base config; errors name the file and key.
    pub fn load(path: &Path, extra_sets: &[String]) -> Result<Grid> {
        let text =
            std::fs::read_to_string(path).map_err(|e| FsError::new("reading the grid", path, e))?;
        Self::parse(&text, path, extra_sets)
    }

    /// Parses grid text; `path` locates the base config and names errors.
    pub fn parse(text: &str, path: &Path, extra_sets: &[String]) -> Result<Grid> {
        let g: GridFile = toml::from_str(text).map_err(|e| SweepError::Toml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let at = |key: &str, message: String| SweepError::Grid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if g.seeds.is_empty() {
            return Err(at("seeds", "needs at least one seed".into()));
        }
        let mut seen = Vec::new();
        for s in &g.seeds {
            if seen.contains(s) {
                return Err(at("seeds", format!("seed {s} is listed twice")));
            }
            seen.push(*s);
        }
        if g.heads.is_empty() {
            return Err(at("heads", "needs at least one head".into()));
        }
        let known = known_heads();
        for h in &g.heads {
            if !known.contains(&h.as_str()) {
                return Err(at(
                    "heads",
                    format!("unknown head `{h}`, expected some of {}", known.join(", ")),
                ));
            }
        }
        let mut heads: Vec<String> = known
            .iter()
            .filter(|h| g.heads.iter().any(|x| x == *h))
            .map(|h| h.to_string())
            .collect();
        heads.dedup();

        if g.samplers.is_empty() {
            return Err(at("samplers", "needs at least one sampler".into()));
        }
        let mut samplers = Vec::new();
        for (key, mut table) in in_file_order(g.samplers) {
            check_key("sampler", &key).map_err(|e| at(&format!("samplers.{key}"), e))?;
            let overrides = match table.remove("set") {
                None => toml::Table::new(),
                Some(toml::Value::Table(t)) => t,
                Some(_) => {
                    return Err(at(
                        &format!("samplers.{key}.set"),
                        "must be a table of config overrides".into(),
                    ))
                }
            };
            let label = match table.remove("label") {
                None => key.clone(),
                Some(toml::Value::String(s)) => s,
                Some(_) => {
                    return Err(at(
                        &format!("samplers.{key}.label"),
                        "must be a string".into(),
                    ))
                }
            };
            // Checked here, not after hours of other cells: the same parser
            // the training config uses.
            let mut probe = table.clone();
            if probe.get("kind").and_then(|k| k.as_str()) == Some("progressively_balanced")
                && !probe.contains_key("total_epochs")
            {
                probe.insert("total_epochs".into(), toml::Value::Integer(1));
            }
            lt_samplers::Strategy::deserialize(toml::Value::Table(probe))
                .map_err(|e| at(&format!("samplers.{key}"), e.to_string()))?;
            samplers.push(SamplerSpec {
                key,
                label,
                strategy: table,
                overrides,
            });
        }

        let base_path = path.parent().unwrap_or(Path::new(".")).join(&g.base_config);
        let base_text = std::fs::read_to_string(&base_path).map_err(|e| {
            at(
                "base_config",
                format!("cannot read {}: {e}", base_path.display()),
            )
        })?;
        let base: toml::Table = toml::from_str(&base_text).map_err(|e| SweepError::Toml {
            path: base_path.clone(),
            source: Box::new(e),
        })?;

        let datasets = match g.datasets {
            Some(d) if d.is_empty() => return Err(at("datasets", "is empty".into())),
            Some(d) => in_file_order(d)
                .into_iter()
                .map(|(key, overrides)| DatasetSpec { key, overrides })
                .collect(),
            None => vec![DatasetSpec {
                key: base_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "dataset".into()),
                overrides: toml::Table::new(),
            }],
        };
        for d in &datasets {
            check_key("dataset", &d.key).map_err(|e| at(&format!("datasets.{}", d.key), e))?;
        }

        let mut overrides = g.overrides;
        for spec in extra_sets {
            // The training config's own `--set` parser, deep-merged so that
            // a table value adds to the grid's overrides.
            let mut t = toml::Table::new();
            apply_override(&mut t, spec)?;
            merge(&mut overrides, &t);
        }
        Ok(Grid {
            name: g.name,
            path: path.to_path_buf(),
            base,
            out_dir: g.out_dir,
            seeds: g.seeds,
            heads,
            samplers,
            datasets,
            overrides,
        })
    }

    /// Every cell, datasets outermost, then samplers, then seeds.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for (di, d) in self.datasets.iter().enumerate() {
            for (si, s) in self.samplers.iter().enumerate() {
                for &seed in &self.seeds {
                    cells.push(Cell {
                        dir: self
                            .out_dir
                            .join(&d.key)
                            .join(&s.key)
                            .join(format!("seed{seed}")),
                        info: CellInfo {
                            dataset: d.key.clone(),
                            dataset_order: di,
                            sampler: s.key.clone(),
                            sampler_label: Some(s.label.clone()),
                            sampler_order: si,
                            seed,
                        },
                    });
                }
            }
        }
        cells
    }

    /// The complete config of a cell: base, then `[overrides]` and `--set`,
    /// then the dataset's overrides, then the row's `set`, then `stage1.sampler`, `seed`, `run_dir`
    /// and `name`. A progressively-balanced sampler without `total_epochs`
    /// gets the cell's `stage1.epochs`.
    pub fn config(&self, cell: &Cell) -> Result<toml::Table> {
        let d = &self.datasets[cell.info.dataset_order];
        let s = &self.samplers[cell.info.sampler_order];
        let mut cfg = self.base.clone();
        merge(&mut cfg, &self.overrides);
        merge(&mut cfg, &d.overrides);
        merge(&mut cfg, &s.overrides);
        let mut strategy = s.strategy.clone();
        if strategy.get("kind").and_then(|k| k.as_str()) == Some("progressively_balanced")
            && !strategy.contains_key("total_epochs")
        {
            let epochs = cfg
                .get("stage1")
                .and_then(|s| s.get("epochs"))
                .cloned()
                .ok_or_else(|| SweepError::Grid {
                    path: self.path.clone(),
                    key: format!("samplers.{}", s.key),
                    message: "needs `total_epochs` (no `stage1.epochs` to take it from)".into(),
                })?;
            strategy.insert("total_epochs".into(), epochs);
        }
        let stage1 = cfg
            .entry("stage1")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(stage1) = stage1.as_table_mut() else {
            return Err(SweepError::Grid {
                path: self.path.clone(),
                key: "base_config".into(),
                message: "`stage1` of the base config is not a table".into(),
            });
        };
        stage1.insert("sampler".into(), toml::Value::Table(strategy));
        let seed = i64::try_from(cell.info.seed).map_err(|_| SweepError::Grid {
            path: self.path.clone(),
            key: "seeds".into(),
            message: format!("seed {} is too large for TOML", cell.info.seed),
        })?;
        cfg.insert("seed".into(), toml::Value::Integer(seed));
        cfg.insert(
            "run_dir".into(),
            toml::Value::String(cell.dir.to_string_lossy().into_owned()),
        );
        cfg.insert("name".into(), toml::Value::String(cell.name()));
        Ok(cfg)
    }

    /// The text of a cell's `config.toml`.
    pub fn config_text(&self, cell: &Cell) -> Result<String> {
        let body = toml::to_string(&self.config(cell)?).map_err(SweepError::Serialise)?;
        Ok(format!(
            "# Cell {} of grid `{}` ({}), written by `cargo xtask sweep`.\n{body}",
            cell.name(),
            self.name,
            self.path.display()
        ))
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else
/// replaces. A key with dots (`"stage1.epochs"` quoted) is a path.
pub fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        let parts: Vec<&str> = k.split('.').collect();
        let mut target = &mut *base;
        for p in &parts[..parts.len() - 1] {
            let entry = target
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            target = entry.as_table_mut().expect("made a table above");
        }
        let last = parts[parts.len() - 1].to_string();
        match (target.get_mut(&last), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                target.insert(last, v.clone());
            }
        }
    }
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Run directory.
    pub dir: PathBuf,
    /// Its place in the grid (written as `cell.json`).
    pub info: CellInfo,
}

impl Cell {
    /// `dataset/sampler/seedK`.
    pub fn name(&self) -> String {
        format!(
            "{}/{}/seed{}",
            self.info.dataset, self.info.sampler, self.info.seed
        )
    }

    /// `<cell>/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The marker of a finished step.
    pub fn marker(&self, step: &Step) -> PathBuf {
        self.dir
            .join(".sweep")
            .join(format!("{}.done", step.name()))
    }

    /// The digest of the config the cell started with.
    pub fn digest_path(&self) -> PathBuf {
        self.dir.join(".sweep").join("config.sha256")
    }
}

/// One `lt-cli` command of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `lt-cli train`.
    Train,
    /// `lt-cli retrain --head <head>` for a trained head (cRT, LWS, ...).
    Retrain(String),
    /// `lt-cli eval` with the grid's heads.
    Eval,
}

impl Step {
    /// Name of the marker and log file.
    pub fn name(&self) -> String {
        match self {
            Step::Train => "train".into(),
            Step::Retrain(h) => format!("retrain_{h}"),
            Step::Eval => "eval".into(),
        }
    }

    /// Checkpoint stage whose existence means "resume" (training steps).
    pub fn stage(&self) -> Option<&str> {
        match self {
            Step::Train => Some("stage1"),
            Step::Retrain(h) => Some(h),
            Step::Eval => None,
        }
    }

    /// The steps a grid's heads need, in order: stage 1, each trained head
    /// of the grid, evaluation.
    pub fn plan(heads: &[String]) -> Vec<Step> {
        let mut steps = vec![Step::Train];
        steps.extend(
            heads
                .iter()
                .filter(|h| is_trained(h))
                .map(|h| Step::Retrain(h.clone())),
        );
        steps.push(Step::Eval);
        steps
    }

    /// Arguments of the `lt-cli` command; `resume` adds `--resume`.
    pub fn args(&self, config: &Path, heads: &[String], resume: bool) -> Vec<OsString> {
        let mut a: Vec<OsString> = match self {
            Step::Train => vec!["train".into()],
            Step::Retrain(h) => vec!["retrain".into(), "--head".into(), h.into()],
            Step::Eval => vec!["eval".into()],
        };
        a.push("--config".into());
        a.push(config.into());
        if *self == Step::Eval {
            for h in heads {
                a.push("--head".into());
                a.push(h.into());
            }
        }
        if resume {
            a.push("--resume".into());
        }
        a
    }
}

/// What is left to do in a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellState {
    /// `results.json` holds every requested head.
    Finished,
    /// These steps are left, each with whether it resumes a checkpoint.
    Pending(Vec<(Step, bool)>),
}

/// Heads present in a cell's `results.json` (empty if none or unreadable).
fn evaluated_heads(cell: &Cell) -> Vec<String> {
    lt_run::Results::read(&cell.dir.join(RESULTS_FILE))
        .ok()
        .map(|r| r.heads.into_iter().map(|h| h.head.to_string()).collect())
        .unwrap_or_default()
}

/// Works out what a cell still needs from the files in its directory.
pub fn cell_state(cell: &Cell, heads: &[String]) -> CellState {
    let done = evaluated_heads(cell);
    if heads.iter().all(|h| done.contains(h)) {
        return CellState::Finished;
    }
    let pending = Step::plan(heads)
        .into_iter()
        .filter(|s| *s == Step::Eval || !cell.marker(s).exists())
        .map(|s| {
            let resume = s.stage().is_some_and(|stage| {
                cell.dir
                    .join("checkpoints")
                    .join(format!("{stage}_last.safetensors"))
                    .exists()
            });
            (s, resume)
        })
        .collect();
    CellState::Pending(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
run_dir = "runs/base"
[data]
root = "data/cifar10"
train_list = "train.txt"
[model]
arch = "resnet8"
[stage1]
epochs = 30
batch_size = 128
lr = 0.1
"#;

    const GRID: &str = r#"
name = "g"
base_config = "base.toml"
out_dir = "runs/sweeps/g"
seeds = [0, 1]
heads = ["lws", "joint", "crt"]
[overrides]
"stage2.crt.epochs" = 3
[samplers]
ib = { kind = "instance_balanced", label = "IB" }
cb = { kind = "class_balanced" }
pb = { kind = "progressively_balanced" }
[datasets.c10_r100]
data.train_list = "data/cifar10/cifar10_lt_r100_train.txt"
[datasets.c10_r10]
data = { train_list = "data/cifar10/cifar10_lt_r10_train.txt" }
stage1.epochs = 10
"#;

    fn grid(text: &str, sets: &[&str]) -> Result<Grid> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
        let path = dir.path().join("grid.toml");
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Grid::parse(text, &path, &sets)
    }

    #[test]
    fn grid_keeps_file_order_and_paper_head_order() {
        let g = grid(GRID, &[]).unwrap();
        let keys: Vec<&str> = g.samplers.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["ib", "cb", "pb"]);
        assert_eq!(g.samplers[0].label, "IB");
        assert_eq!(g.samplers[1].label, "cb");
        assert!(!g.samplers[0].strategy.contains_key("label"));
        let ds: Vec<&str> = g.datasets.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(ds, ["c10_r100", "c10_r10"]);
        assert_eq!(g.heads, ["joint", "crt", "lws"]);
        let cells = g.cells();
        assert_eq!(cells.len(), 2 * 3 * 2);
        assert_eq!(
            cells[0].dir,
            PathBuf::from("runs/sweeps/g/c10_r100/ib/seed0")
        );
        assert_eq!(cells[11].name(), "c10_r10/pb/seed1");
        assert_eq!(cells[11].info.sampler_order, 2);
        assert_eq!(cells[11].info.dataset_order, 1);
    }

    #[test]
    fn cell_configs_merge_in_order() {
        let g = grid(GRID, &["device=cuda:0", "stage1.lr=0.2"]).unwrap();
        let cells = g.cells();
        let c = g.config(&cells[11]).unwrap();
        assert_eq!(c["seed"].as_integer(), Some(1));
        assert_eq!(
            c["run_dir"].as_str(),
            Some("runs/sweeps/g/c10_r10/pb/seed1")
        );
        assert_eq!(c["name"].as_str(), Some("c10_r10/pb/seed1"));
        assert_eq!(c["device"].as_str(), Some("cuda:0"));
        let s1 = c["stage1"].as_table().unwrap();
        assert_eq!(s1["epochs"].as_integer(), Some(10));
        assert_eq!(s1["lr"].as_float(), Some(0.2));
        assert_eq!(s1["batch_size"].as_integer(), Some(128));
        // PB takes its planned length from the cell's stage-1 epochs.
        let sampler = s1["sampler"].as_table().unwrap();
        assert_eq!(sampler["kind"].as_str(), Some("progressively_balanced"));
        assert_eq!(sampler["total_epochs"].as_integer(), Some(10));
        assert_eq!(c["stage2"]["crt"]["epochs"].as_integer(), Some(3));
        assert_eq!(
            c["data"]["train_list"].as_str(),
            Some("data/cifar10/cifar10_lt_r10_train.txt")
        );
        assert_eq!(c["data"]["root"].as_str(), Some("data/cifar10"));
        let c0 = g.config(&cells[0]).unwrap();
        assert_eq!(c0["stage1"]["epochs"].as_integer(), Some(30));
        assert_eq!(
            c0["stage1"]["sampler"]["kind"].as_str(),
            Some("instance_balanced")
        );
        let text = g.config_text(&cells[0]).unwrap();
        assert!(text.starts_with("# Cell c10_r100/ib/seed0 of grid `g`"));
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back, c0);
    }

    #[test]
    fn a_row_may_change_other_stage1_settings() {
        let text = GRID.replace(
            "cb = { kind = \"class_balanced\" }",
            "cb = { kind = \"instance_balanced\", label = \"LDAM\", set = { \"stage1.loss\" = { kind = \"ldam_drw\" }, \"model.classifier\" = \"cosine\", \"stage1.epochs\" = 7 } }",
        );
        let g = grid(&text, &[]).unwrap();
        let cells = g.cells();
        // c10_r10 / cb / seed0: the row's `set` wins over the dataset's epochs.
        let c = g.config(&cells[8]).unwrap();
        assert_eq!(c["name"].as_str(), Some("c10_r10/cb/seed0"));
        assert_eq!(c["stage1"]["loss"]["kind"].as_str(), Some("ldam_drw"));
        assert_eq!(c["stage1"]["epochs"].as_integer(), Some(7));
        assert_eq!(c["model"]["classifier"].as_str(), Some("cosine"));
        assert_eq!(
            c["stage1"]["sampler"]["kind"].as_str(),
            Some("instance_balanced")
        );
        assert_eq!(g.samplers[1].label, "LDAM");
        // Other rows are untouched.
        let ib = g.config(&cells[6]).unwrap();
        assert!(ib["stage1"].get("loss").is_none());
        let bad = GRID.replace(
            "cb = { kind = \"class_balanced\" }",
            "cb = { kind = \"class_balanced\", set = 3 }",
        );
        let e = lt_core::error_chain(&grid(&bad, &[]).unwrap_err());
        assert!(e.contains("samplers.cb.set"), "{e}");
    }

    #[test]
    fn grid_errors_name_the_key() {
        let cases = [
            (GRID.replace("seeds = [0, 1]", "seeds = []"), "seeds"),
            (
                GRID.replace("seeds = [0, 1]", "seeds = [1, 1]"),
                "listed twice",
            ),
            (GRID.replace("\"crt\"]", "\"crt\", \"knn\"]"), "knn"),
            (
                GRID.replace("class_balanced", "class_balancd"),
                "samplers.cb",
            ),
            (
                GRID.replace("[samplers]\nib", "[samplers]\n\"i b\""),
                "samplers.i b",
            ),
            (GRID.replace("name = \"g\"", "name = \"g\"\nfoo = 1"), "foo"),
            (GRID.replace("base.toml", "missing.toml"), "missing.toml"),
        ];
        for (text, needle) in cases {
            let e = lt_core::error_chain(&grid(&text, &[]).unwrap_err());
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.contains("grid.toml"), "{e}");
        }
        let e = grid(GRID, &["novalue"]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn merge_is_deep_and_follows_dotted_keys() {
        let mut a: toml::Table = toml::from_str("[x]\ny = 1\nz = 2\n").unwrap();
        let b: toml::Table = toml::from_str("\"x.z\" = 3\n[x.w]\nv = 4\n").unwrap();
        merge(&mut a, &b);
        assert_eq!(a["x"]["y"].as_integer(), Some(1));
        assert_eq!(a["x"]["z"].as_integer(), Some(3));
        assert_eq!(a["x"]["w"]["v"].as_integer(), Some(4));
        let c: toml::Table = toml::from_str("x = 5\n").unwrap();
        merge(&mut a, &c);
        assert_eq!(a["x"].as_integer(), Some(5));
    }

    #[test]
    fn steps_and_arguments() {
        let heads: Vec<String> = ["joint", "tau_norm", "lws"].map(String::from).to_vec();
        assert_eq!(
            Step::plan(&heads),
            [Step::Train, Step::Retrain("lws".into()), Step::Eval]
        );
        let a = Step::Eval.args(Path::new("c/config.toml"), &heads, false);
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "eval",
                "--config",
                "c/config.toml",
                "--head",
                "joint",
                "--head",
                "tau_norm",
                "--head",
                "lws"
            ]
        );
        let a = Step::Retrain("crt".into()).args(Path::new("c.toml"), &heads, true);
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            ["retrain", "--head", "crt", "--config", "c.toml", "--resume"]
        );
    }

    #[test]
    fn state_follows_markers_checkpoints_and_results() {
        let dir = tempfile::tempdir().unwrap();
        let cell = Cell {
            dir: dir.path().join("cell"),
            info: CellInfo {
                dataset: "d".into(),
                dataset_order: 0,
                sampler: "s".into(),
                sampler_label: None,
                sampler_order: 0,
                seed: 0,
            },
        };
        let heads: Vec<String> = ["joint", "crt"].map(String::from).to_vec();
        let pending = |v: &[(Step, bool)]| CellState::Pending(v.to_vec());
        assert_eq!(
            cell_state(&cell, &heads),
            pending(&[
                (Step::Train, false),
                (Step::Retrain("crt".into()), false),
                (Step::Eval, false)
            ])
        );
        // Killed during stage 1: resume it.
        std::fs::create_dir_all(cell.dir.join("checkpoints")).unwrap();
        std::fs::write(cell.dir.join("checkpoints/stage1_last.safetensors"), b"x").unwrap();
        assert_eq!(
            cell_state(&cell, &heads),
            pending(&[
                (Step::Train, true),
                (Step::Retrain("crt".into()), false),
                (Step::Eval, false)
            ])
        );
        std::fs::create_dir_all(cell.dir.join(".sweep")).unwrap();
        std::fs::write(cell.marker(&Step::Train), b"done").unwrap();
        assert_eq!(
            cell_state(&cell, &heads),
            pending(&[(Step::Retrain("crt".into()), false), (Step::Eval, false)])
        );
        // Results without cRT are not finished; with it they are.
        let results = |heads: &[&str]| {
            use lt_core::stats::{ClassStats, GroupRule};
            let stats = ClassStats::from_counts(vec![5, 1]);
            let rule = GroupRule::default();
            let e = lt_metrics::evaluate(&[1., 0., 0., 1.], 2, &[0, 1], &stats, &rule).unwrap();
            let mut r = lt_run::Results::new(
                "c".into(),
                "h".into(),
                0,
                "resnet8".into(),
                lt_samplers::Strategy::InstanceBalanced,
                lt_core::Split::Test,
                rule.clone(),
                stats.group_sizes(&rule),
                vec![5, 1],
                "s".into(),
                lt_run::Stage1Summary {
                    model_select: lt_core::ModelSelect::Last,
                    checkpoint: "ck".into(),
                    epoch: 1,
                    last_epoch: Some(1),
                    best_val: None,
                    last_val: None,
                    last_test: None,
                },
            );
            for h in heads {
                r.heads.push(lt_run::HeadResult {
                    head: h.parse().unwrap(),
                    label: h.to_string(),
                    checkpoint: "ck".into(),
                    epoch: 1,
                    split: lt_core::Split::Test,
                    evaluation: e.clone(),
                    val: None,
                    tau: None,
                    tau_sweep: None,
                    settings: None,
                    weight_norms: None,
                });
            }
            r.write(&cell.dir.join(RESULTS_FILE)).unwrap();
        };
        results(&["joint"]);
        assert!(matches!(cell_state(&cell, &heads), CellState::Pending(_)));
        results(&["joint", "crt"]);
        assert_eq!(cell_state(&cell, &heads), CellState::Finished);
    }

    #[test]
    fn shipped_grids_make_valid_configs() {
        let grids = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grids");
        let mut checked = 0;
        for entry in std::fs::read_dir(&grids).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let g = Grid::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            for cell in g.cells() {
                let text = g.config_text(&cell).unwrap();
                let origin = format!("{} cell {}", path.display(), cell.name());
                let cfg = crate::config::ExperimentConfig::from_toml_str(&text, &origin)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(cfg.seed, cell.info.seed);
                assert_eq!(cfg.run_dir, cell.dir);
            }
            checked += 1;
        }
        assert!(
            checked >= 2,
            "expected grids/tiny.toml and the sampling study"
        );
    }
}
