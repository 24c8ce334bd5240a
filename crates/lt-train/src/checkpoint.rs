//! Checkpoints.
//!
//! A checkpoint is one safetensors file holding the model tensors under their
//! torchvision names (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.weight`,
//! ...), the optimiser momentum under `momentum.<name>`, and a
//! [`CheckpointMeta`] (defined with the other run artefacts in `lt-run`) as
//! JSON in the safetensors header metadata. Keeping everything in one file
//! makes a checkpoint atomic: it is written to a temporary file in the same
//! directory and renamed over the old one, so a crash leaves either the
//! previous or the new checkpoint, never a mix. A copy of the metadata is
//! also written next to it as `<name>.json` for people and tools; loading
//! trusts only the copy inside the safetensors file. The copy is written
//! after the checkpoint, so a process killed between the two leaves it one
//! epoch behind; a resume rewrites it ([`repair_sidecar`]).
//!
//! The metadata carries a SHA-256 of the tensors (names, dtypes, shapes and
//! bytes; see [`lt_run::checkpoint_meta`]), verified on every load: a
//! checkpoint changed on disk after it was written (a flipped bit, a
//! partial copy) is an error naming the file. Checkpoints written before
//! the checksum existed have none and load as before.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::TrainError;
use lt_run::checkpoint_meta::tensor_digest_record;
pub use lt_run::checkpoint_meta::{FORMAT_VERSION, META_KEY};
pub use lt_run::{BestMetric, CheckpointMeta, RngState};

/// Collects every variable of `varmap` (including BN running statistics) by
/// name, sorted.
pub fn varmap_tensors(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Copies tensors named like the variables of `varmap` into them. Every
/// variable must be present with the right shape; tensors in `tensors` that do
/// not belong to `varmap` are ignored (a checkpoint also holds other parts).
pub fn load_into_varmap(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<(), TrainError> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut missing: Vec<&str> = data
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .map(|k| k.as_str())
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        return Err(TrainError::Checkpoint(format!(
            "{}: missing tensors {}",
            source.display(),
            missing.join(", ")
        )));
    }
    for (name, var) in data.iter() {
        let t = &tensors[name];
        if t.shape() != var.shape() {
            return Err(TrainError::Checkpoint(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                source.display(),
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The name of the first floating-point tensor holding a NaN or an
/// infinity, if any. `t - t` is 0 for every finite value and NaN otherwise,
/// so its sum is 0 exactly when the tensor is finite.
fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<&'a str>, TrainError> {
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let s = t
            .to_dtype(candle_core::DType::F32)?
            .broadcast_sub(&t.to_dtype(candle_core::DType::F32)?)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if s != 0.0 {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// [`CheckpointMeta::tensors_sha256`] of tensors given by name (any
/// order), as safetensors views.
fn tensors_sha256<V: safetensors::View>(tensors: &[(&str, V)]) -> String {
    let mut sorted: Vec<&(&str, V)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<(Vec<u8>, std::borrow::Cow<'_, [u8]>)> = sorted
        .iter()
        .map(|(name, v)| {
            let data = v.data();
            let record = tensor_digest_record(name, &v.dtype().to_string(), v.shape(), data.len());
            (record, data)
        })
        .collect();
    lt_core::fs::sha256_hex_parts(
        parts
            .iter()
            .flat_map(|(record, data)| [record.as_slice(), data.as_ref()]),
    )
}

/// Checks the tensors of a parsed safetensors file against the checksum in
/// its metadata, when it has one.
fn verify_checksum(
    path: &Path,
    file: &safetensors::SafeTensors<'_>,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let Some(expected) = &meta.tensors_sha256 else {
        tracing::debug!(checkpoint = %path.display(), "no checksum (written by an older build)");
        return Ok(());
    };
    let views = file.tensors();
    let views: Vec<(&str, &safetensors::tensor::TensorView<'_>)> =
        views.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let actual = tensors_sha256(&views);
    if &actual != expected {
        return Err(TrainError::Checkpoint(format!(
            "{}: the tensors do not match the checksum written with them (sha256 {actual}, \
             recorded {expected}): the file was changed or damaged after it was written",
            path.display()
        )));
    }
    Ok(())
}

/// Parses a checkpoint's bytes: its metadata (when it has ours) checked for
/// version and checksum.
fn parse_checked<'a>(
    path: &Path,
    bytes: &'a [u8],
    require_meta: bool,
) -> Result<(safetensors::SafeTensors<'a>, Option<CheckpointMeta>), TrainError> {
    let bad = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let Some(meta_json) = header.metadata().as_ref().and_then(|m| m.get(META_KEY)) else {
        if require_meta {
            return Err(bad(format!(
                "no `{META_KEY}` metadata: not a training checkpoint"
            )));
        }
        return Ok((file, None));
    };
    let meta =
        CheckpointMeta::from_json(meta_json).map_err(|e| bad(format!("bad metadata: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} (expected {FORMAT_VERSION})",
            meta.format_version
        )));
    }
    verify_checksum(path, &file, &meta)?;
    Ok((file, Some(meta)))
}

/// Writes a checkpoint atomically (see the module docs). A tensor holding a
/// NaN or an infinity (parameters, BN statistics or optimiser state) is an
/// error naming it, and nothing is written: the previous checkpoint stays.
pub fn save_checkpoint(
    path: &Path,
    model: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let mut all: BTreeMap<&str, Tensor> = BTreeMap::new();
    for (k, t) in model.iter().chain(optimizer.iter()) {
        if all.insert(k.as_str(), t.contiguous()?).is_some() {
            return Err(TrainError::Checkpoint(format!("tensor `{k}` given twice")));
        }
    }
    if let Some(name) = first_non_finite(all.iter().map(|(k, t)| (*k, t)))? {
        return Err(TrainError::Checkpoint(format!(
            "{}: tensor `{name}` holds NaN or infinite values; not writing the checkpoint \
             (the previous one, if any, is kept)",
            path.display()
        )));
    }
    let views: Vec<(&str, &Tensor)> = all.iter().map(|(k, t)| (*k, t)).collect();
    let meta = CheckpointMeta {
        tensors_sha256: Some(tensors_sha256(&views)),
        ..meta.clone()
    };
    let meta_json = serde_json::to_string(&meta)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    let info = HashMap::from([(META_KEY.to_string(), meta_json)]);
    let bytes = safetensors::tensor::serialize(all.iter().map(|(k, t)| (*k, t)), Some(info))
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    lt_core::fs::write_atomic(path, &bytes)?;
    Ok(meta.write_sidecar(path)?)
}

/// Reads a checkpoint: all tensors (model and `momentum.*`) and its
/// metadata, the tensors checked against the metadata's checksum (when it
/// has one). A mismatch, or a tensor with a NaN or an infinity, is an error
/// naming the file.
pub fn load_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, CheckpointMeta), TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
    let (_, meta) = parse_checked(path, &bytes, true)?;
    let meta = meta.expect("required above");
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("cannot load the tensors: {e}")))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort_unstable();
    if let Some(name) = first_non_finite(names.into_iter().map(|k| (k.as_str(), &tensors[k])))? {
        return Err(bad(format!("tensor `{name}` holds NaN or infinite values")));
    }
    Ok((tensors, meta))
}

/// The metadata inside a checkpoint, read from the safetensors header only
/// (not the tensors, nor their checksum).
fn embedded_meta(path: &Path) -> Result<CheckpointMeta, TrainError> {
    use std::io::Read;
    let bad = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| TrainError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| TrainError::io(path, e))?.len();
    if len > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "header of {len} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| TrainError::io(path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors header: {e}")))?;
    let Some(json) = header["__metadata__"][META_KEY].as_str() else {
        return Err(bad(format!(
            "no `{META_KEY}` metadata: not a training checkpoint"
        )));
    };
    CheckpointMeta::from_json(json).map_err(|e| bad(format!("bad metadata: {e}")))
}

/// Rewrites `<name>.json` next to the checkpoint at `path` when it is
/// missing or differs from the metadata inside the checkpoint (a process
/// killed between writing the two); returns whether it did. The checkpoint
/// itself is only read.
pub fn repair_sidecar(path: &Path) -> Result<bool, TrainError> {
    let meta = embedded_meta(path)?;
    if CheckpointMeta::read_sidecar(path).ok().as_ref() == Some(&meta) {
        return Ok(false);
    }
    meta.write_sidecar(path)?;
    tracing::info!(path = %path.display(), "checkpoint metadata copy rewritten from the checkpoint");
    Ok(true)
}

/// Reads only the model tensors of a checkpoint or of a plain safetensors
/// weight file (no metadata needed; a checkpoint's checksum is verified);
/// optimiser state is dropped.
pub fn load_model_tensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    parse_checked(path, &bytes, false)?;
    let mut t = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    t.retain(|k, _| !k.starts_with("momentum."));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            stage: lt_core::Stage::Stage1,
            epoch: 3,
            global_step: 42,
            sampler: Some(serde_json::json!({"epoch": 3})),
            rng: RngState {
                seed: 7,
                next_epoch: 3,
            },
            best: Some(BestMetric {
                epoch: 2,
                metric: "val_top1".into(),
                value: 0.5,
            }),
            config_hash: "abc".into(),
            lr: 0.1,
            tensors_sha256: None,
        }
    }

    /// `m` without its checksum.
    fn unsummed(m: CheckpointMeta) -> CheckpointMeta {
        CheckpointMeta {
            tensors_sha256: None,
            ..m
        }
    }

    #[test]
    fn checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("last.safetensors");
        let dev = Device::Cpu;
        let mut varmap = VarMap::new();
        varmap
            .get(
                (2, 3),
                "fc.weight",
                candle_nn::Init::Const(0.5),
                DType::F32,
                &dev,
            )
            .unwrap();
        let model = varmap_tensors(&varmap);
        let optim = BTreeMap::from([(
            "momentum.fc.weight".to_string(),
            Tensor::ones((2, 3), DType::F32, &dev).unwrap(),
        )]);
        save_checkpoint(&p, &model, &optim, &meta()).unwrap();
        let (tensors, m) = load_checkpoint(&p, &dev).unwrap();
        assert_eq!(m.tensors_sha256.as_ref().map(String::len), Some(64));
        let sidecar = CheckpointMeta::read_sidecar(&p).unwrap();
        assert_eq!(sidecar, m);
        assert_eq!(unsummed(m), meta());
        assert_eq!(tensors.len(), 2);

        varmap
            .set_one(
                "fc.weight",
                Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
            )
            .unwrap();
        load_into_varmap(&varmap, &tensors, &p).unwrap();
        let w = &varmap_tensors(&varmap)["fc.weight"];
        assert_eq!(w.sum_all().unwrap().to_scalar::<f32>().unwrap(), 3.0);

        let model_only = load_model_tensors(&p, &dev).unwrap();
        assert_eq!(model_only.len(), 1);
    }

    /// A checkpoint of two tensors; returns its bytes.
    fn two_tensors(p: &Path) -> Vec<u8> {
        let dev = Device::Cpu;
        let model = BTreeMap::from([
            (
                "fc.weight".to_string(),
                Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap(),
            ),
            (
                "fc.bias".to_string(),
                Tensor::new(&[0.5f32, -0.5], &dev).unwrap(),
            ),
        ]);
        save_checkpoint(p, &model, &BTreeMap::new(), &meta()).unwrap();
        std::fs::read(p).unwrap()
    }

    #[test]
    fn a_changed_byte_fails_the_checksum_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crt_last.safetensors");
        let bytes = two_tensors(&p);
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        // Every byte of the tensor data is covered, whatever value it takes.
        for (at, xor) in [
            (header_end, 0x01u8),
            (bytes.len() - 1, 0x80),
            (header_end + 9, 0x10),
        ] {
            let mut flipped = bytes.clone();
            flipped[at] ^= xor;
            std::fs::write(&p, &flipped).unwrap();
            for e in [
                load_checkpoint(&p, &Device::Cpu).unwrap_err().to_string(),
                load_model_tensors(&p, &Device::Cpu)
                    .unwrap_err()
                    .to_string(),
            ] {
                assert!(
                    e.contains("crt_last.safetensors")
                        && e.contains("checksum")
                        && !e.contains("  "),
                    "byte {at}: {e}"
                );
            }
        }
        std::fs::write(&p, &bytes).unwrap();
        load_checkpoint(&p, &Device::Cpu).unwrap();
        // Same tensors, same checksum: it depends on the content only.
        let q = dir.path().join("again.safetensors");
        assert_eq!(two_tensors(&q), bytes);
    }

    #[test]
    fn a_checkpoint_without_a_checksum_still_loads() {
        // As written before the checksum existed: the metadata has no
        // `tensors_sha256`.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.safetensors");
        let dev = Device::Cpu;
        let t = HashMap::from([("fc.weight", Tensor::new(&[1f32, 2.0], &dev).unwrap())]);
        let json = serde_json::to_string(&meta()).unwrap();
        assert!(!json.contains("sha256"), "{json}");
        let info = HashMap::from([(META_KEY.to_string(), json)]);
        let bytes =
            safetensors::tensor::serialize(t.iter().map(|(k, v)| (*k, v)), Some(info)).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let (tensors, m) = load_checkpoint(&p, &dev).unwrap();
        assert_eq!(m, meta());
        assert_eq!(tensors["fc.weight"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn non_finite_tensors_are_never_written_nor_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("last.safetensors");
        let dev = Device::Cpu;
        let good = BTreeMap::from([(
            "fc.weight".to_string(),
            Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        )]);
        save_checkpoint(&p, &good, &BTreeMap::new(), &meta()).unwrap();
        let before = std::fs::read(&p).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let optim = BTreeMap::from([(
                "momentum.fc.weight".to_string(),
                Tensor::new(&[0f32, bad], &dev).unwrap(),
            )]);
            let e = save_checkpoint(&p, &good, &optim, &meta())
                .unwrap_err()
                .to_string();
            assert!(e.contains("momentum.fc.weight") && e.contains("NaN"), "{e}");
            assert_eq!(
                std::fs::read(&p).unwrap(),
                before,
                "the good checkpoint is kept"
            );
        }
        // A file with a NaN written by another tool is refused on load.
        let mut t = HashMap::new();
        t.insert("fc.weight", Tensor::new(&[f32::NAN], &dev).unwrap());
        let info = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&meta()).unwrap(),
        )]);
        let bytes =
            safetensors::tensor::serialize(t.iter().map(|(k, v)| (*k, v)), Some(info)).unwrap();
        let q = dir.path().join("nan.safetensors");
        std::fs::write(&q, bytes).unwrap();
        let e = load_checkpoint(&q, &dev).unwrap_err().to_string();
        assert!(
            e.contains("nan.safetensors") && e.contains("fc.weight"),
            "{e}"
        );
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let p = dir.path().join("plain.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([("a", Tensor::ones(2, DType::F32, &dev).unwrap())]),
            &p,
        )
        .unwrap();
        let e = load_checkpoint(&p, &dev).unwrap_err().to_string();
        assert!(
            e.contains("plain.safetensors") && e.contains("lt_train"),
            "{e}"
        );

        let varmap = VarMap::new();
        varmap
            .get(3, "b", candle_nn::Init::Const(0.), DType::F32, &dev)
            .unwrap();
        let t = load_model_tensors(&p, &dev).unwrap();
        let e = load_into_varmap(&varmap, &t, &p).unwrap_err().to_string();
        assert!(e.contains("missing tensors b"), "{e}");

        let e = load_model_tensors(&dir.path().join("nope.safetensors"), &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.safetensors"), "{e}");
    }
}
