//! A model's named variables: listing, saving and loading them.
//!
//! Names follow torchvision (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.downsample.1.weight`, ...). Trainable *parameters* are every
//! variable except the batch-norm *buffers* `*.running_mean` and
//! `*.running_var`, matching `torch.nn.Module.parameters()` / `buffers()`.
//!
//! # Loading rules
//!
//! Before matching, every checkpoint key is normalised:
//! * leading `module.` prefixes (from `DataParallel`) are removed;
//! * `fc.*` keys are ignored: classifier heads live in another crate and are
//!   loaded there;
//! * `*num_batches_tracked` keys are ignored: the momentum here is fixed.
//!
//! Then every model key must be present with the model's shape (the dtype is
//! converted if needed). [`ParamStore::load`] also rejects keys the model does
//! not have, which catches loading a checkpoint of a different architecture;
//! [`ParamStore::load_pretrained`] skips them with a warning. All checks run
//! before any variable is written, so a failed load leaves the model as it was.

use crate::error::{ModelError, Result, ShapeMismatch, StateDictMismatch};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// True for the batch-norm running statistics, which are never trained.
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// What a checkpoint key means to a backbone after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRole<'a> {
    /// A candidate backbone key (prefix already stripped).
    Model(&'a str),
    /// Deliberately not loaded (`fc.*`, `num_batches_tracked`).
    Ignored,
}

fn classify_key(raw: &str) -> KeyRole<'_> {
    let mut key = raw;
    while let Some(rest) = key.strip_prefix("module.") {
        key = rest;
    }
    if key.starts_with("fc.")
        || key == "num_batches_tracked"
        || key.ends_with(".num_batches_tracked")
    {
        KeyRole::Ignored
    } else {
        KeyRole::Model(key)
    }
}

/// Summary of a successful load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of model variables written.
    pub loaded: usize,
    /// Checkpoint keys deliberately skipped (`fc.*`, `num_batches_tracked`), as
    /// they appear in the file.
    pub ignored: Vec<String>,
    /// Checkpoint keys the model does not have, skipped by
    /// [`ParamStore::load_pretrained`] (always empty for strict loads).
    pub unexpected: Vec<String>,
}

/// The named variables of one model, sorted by name, and the
/// [`candle_nn::VarMap`] holding them.
///
/// The `VarMap` is shared (cloning it clones a handle), so an optimiser built
/// from it sees the model's live variables. The listing methods work from the
/// model's own names, so variables others add to the map (a head, say) are
/// neither listed, saved nor expected when loading.
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    vars: Vec<(String, Var)>,
    device: Device,
}

impl fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParamStore")
            .field("vars", &self.vars.len())
            .field("device", &self.device)
            .finish()
    }
}

impl ParamStore {
    /// Takes ownership of named variables and registers them in a new `VarMap`.
    pub(crate) fn new(mut vars: Vec<(String, Var)>, device: Device) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let varmap = VarMap::new();
        {
            // The lock cannot be poisoned: the map was created just above.
            let mut data = varmap.data().lock().expect("fresh VarMap lock");
            for (name, var) in &vars {
                data.insert(name.clone(), var.clone());
            }
        }
        Self {
            varmap,
            vars,
            device,
        }
    }

    /// The `VarMap` holding every variable of the model (parameters and buffers).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every variable (parameters then buffers interleaved), sorted by name.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Trainable variables (everything but BN running statistics), sorted by name.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.filtered(|n| !is_buffer_name(n))
    }

    /// BN running statistics (`*.running_mean`, `*.running_var`), sorted by name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.filtered(is_buffer_name)
    }

    /// Trainable variables whose name starts with `prefix` (e.g. `"layer4."`
    /// to fine-tune only the last stage), sorted by name.
    pub fn parameters_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.filtered(|n| n.starts_with(prefix) && !is_buffer_name(n))
    }

    /// Total number of trainable scalars (buffers excluded), as
    /// `sum(p.numel() for p in model.parameters())` counts them.
    pub fn num_parameters(&self) -> usize {
        self.vars
            .iter()
            .filter(|(n, _)| !is_buffer_name(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    fn filtered(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// A snapshot of every variable (parameters and buffers) by name; the
    /// tensors are copies, unaffected by later training.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?.detach())))
            .collect()
    }

    /// Writes every variable to a safetensors file at `path`, atomically:
    /// the data goes to a temporary file in the same directory, which is
    /// flushed to disk and then renamed over `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        save_atomic(&tensors, path.as_ref())
    }

    /// Loads a checkpoint written by [`ParamStore::save`] (or any file with
    /// exactly the model's keys, see the module docs for what is ignored;
    /// a PyTorch `.pth` is read too, see [`crate::torch_import`]).
    /// Missing, unexpected and mis-shaped keys are all reported in one error.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let path = path.as_ref();
        let tensors = crate::torch_import::read_weights(path, &self.device)?;
        self.load_state_dict(tensors, &path.display().to_string(), true)
    }

    /// Loads pretrained weights, e.g. a torchvision ImageNet checkpoint
    /// (`.pth`, or converted to safetensors): like [`ParamStore::load`] but
    /// keys the model does not have are skipped with a warning (and listed
    /// in the report).
    pub fn load_pretrained(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let path = path.as_ref();
        let tensors = crate::torch_import::read_weights(path, &self.device)?;
        self.load_state_dict(tensors, &path.display().to_string(), false)
    }

    /// Loads named tensors (from any source; `origin` labels it in errors).
    /// With `strict`, keys the model does not have are an error; otherwise
    /// they are skipped. Nothing is written unless every check passes.
    pub fn load_state_dict(
        &self,
        tensors: HashMap<String, Tensor>,
        origin: &str,
        strict: bool,
    ) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut by_key: HashMap<&str, (&str, &Tensor)> = HashMap::new();
        let mut raw_keys: Vec<&String> = tensors.keys().collect();
        raw_keys.sort();
        let mut mismatch = StateDictMismatch::default();
        let known: HashMap<&str, &Var> = self.vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for raw in raw_keys {
            match classify_key(raw) {
                KeyRole::Ignored => report.ignored.push(raw.clone()),
                KeyRole::Model(key) => {
                    if !known.contains_key(key) {
                        mismatch.unexpected.push(raw.clone());
                    } else if let Some((first, _)) = by_key.get(key) {
                        // `conv1.weight` and `module.conv1.weight` in one file.
                        mismatch
                            .unexpected
                            .push(format!("{raw} (duplicate of {first})"));
                    } else {
                        by_key.insert(key, (raw.as_str(), &tensors[raw]));
                    }
                }
            }
        }
        for (name, var) in &self.vars {
            match by_key.get(name.as_str()) {
                None => mismatch.missing.push(name.clone()),
                Some((_, t)) if t.dims() != var.dims() => mismatch.shape.push(ShapeMismatch {
                    key: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                }),
                Some(_) => {}
            }
        }
        if !strict && mismatch.missing.is_empty() && mismatch.shape.is_empty() {
            for key in &mismatch.unexpected {
                tracing::warn!(
                    origin,
                    key,
                    "skipping checkpoint key the model does not have"
                );
            }
            report.unexpected = std::mem::take(&mut mismatch.unexpected);
        }
        if !mismatch.is_empty() {
            return Err(ModelError::IncompatibleCheckpoint {
                origin: origin.to_string(),
                mismatch,
            });
        }
        // Convert everything first so a dtype or device failure cannot leave
        // the model half-loaded.
        let mut converted = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let (_, t) = by_key[name.as_str()];
            let t = t.to_device(var.device())?.to_dtype(var.dtype())?.detach();
            converted.push((var, t));
        }
        for (var, t) in converted {
            var.set(&t)?;
        }
        report.loaded = self.vars.len();
        Ok(report)
    }
}

/// Reads every tensor of a safetensors file onto `device`.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|source| ModelError::ReadCheckpoint {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `tensors` to `path` through a temporary file in the same directory
/// and a rename, so readers never see a half-written checkpoint.
pub fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let write_err = |reason: String| ModelError::WriteCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_err("the path has no file name".into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        candle_core::safetensors::save(tensors, &tmp).map_err(|e| write_err(e.to_string()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_err(format!("syncing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| write_err(format!("renaming {} into place: {e}", tmp.display())))
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist if the write failed early.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// flushed to disk and renamed into place (as [`save_atomic`]).
pub(crate) fn write_bytes_atomic(bytes: &[u8], path: &Path) -> Result<()> {
    let write_err = |reason: String| ModelError::WriteCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_err("the path has no file name".into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| write_err(format!("creating {}: {e}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| write_err(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| write_err(format!("renaming {} into place: {e}", tmp.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
