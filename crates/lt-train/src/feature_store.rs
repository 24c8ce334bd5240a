//! Eval-mode features of a split kept on disk: a frozen backbone's
//! features cannot change.
//!
//! Every stage of a pipeline wants the same features: the linear probe of a
//! frozen encoder and its evaluation, each head of stage 2 trained on cached
//! features (LA-cRT, learned τ, DisAlign, WB, ... and an encoder's cRT and
//! LWS), the heads computed at evaluation (NCM, τ-norm, post-hoc LA) and
//! `lt-cli features`. Each runs in its own command (or phase of `run`) and
//! used to run the backbone over the split again: seconds for a CIFAR
//! ResNet-32; for ImageNet-LT's 115,846 training images on a ResNet-50,
//! about two hours at the 15 images/s its inference runs on 2 cores (the
//! README's benchmark figure); most of an hour for a ViT-B/16. The heads
//! themselves take seconds. So the first pass writes
//! `<run_dir>/feature_cache/<split>-<key>.safetensors` and every later one
//! reads it.
//!
//! A file is used only when it was computed under the same key: a SHA-256
//! over everything the features depend on (the backbone's arch, precision,
//! device and every variable's bytes, BN running statistics included; the
//! kernels' switches, instruction set and thread count, which can move the
//! last bit; the evaluation transform and batch size; the split list's hash
//! and each image's size and modification time, or its pixels when held in
//! memory). The key names the file, so the stage-1 backbone and each
//! backbone whose BN statistics a stage-2 head refreshed (cRT, LWS, MiSLAS
//! with `bn = "train"`) keep their own; the [`MAX_FILES_PER_SPLIT`] most
//! recently written files of a split are kept. Anything else (a truncated or
//! unreadable file, other labels) recomputes the features and replaces the
//! file, with a log line saying why: a cache can only cost time, never give
//! other numbers. The file is written to a temp file and renamed, by the
//! run's single writer. Distributed runs are not cached (each rank extracts
//! its shard).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use candle_core::{DType, Tensor};
use lt_core::Split;
use lt_data::dataset::ImageSource;
use lt_models::{Backbone, BnMode};

use crate::checkpoint::varmap_tensors;
use crate::eval::{extract_features, Features};
use crate::experiment::Experiment;
use crate::TrainError;

/// Version of the key's recipe: bump it when the features of a backbone
/// could change for the same inputs (a kernel's arithmetic order, say).
/// v3: the Winograd forward plans take the 224² networks' large maps on
/// CPUs without AVX-512; v4: on AVX-512 CPUs too, where pointwise layers
/// also moved from the direct tile to gemm.
const KEY_VERSION: &str = "lt feature cache v4";
/// Feature files kept per split: the stage-1 backbone's and those of up to
/// three stage-2 heads with refreshed BN statistics. Older ones are removed
/// when a new one is written (a ResNet-50's ImageNet-LT training features
/// are about 1 GB).
pub const MAX_FILES_PER_SPLIT: usize = 4;
/// Metadata entry holding the key.
const KEY_ENTRY: &str = "key";

/// Eval-mode features of `split` on `backbone` (the evaluation transform),
/// read from the run's feature cache when the backbone is an encoder and the
/// cached file was computed under the same key, else extracted (and, for an
/// encoder, stored). `what` names the pass in the progress bar.
pub fn split_features(
    exp: &Experiment,
    backbone: &Backbone,
    split: Split,
    what: &str,
) -> Result<Features, TrainError> {
    let extract = || {
        extract_features(
            backbone,
            &exp.eval_loader(split)?,
            exp.config.eval.batch_size,
            BnMode::Eval,
            what,
            &exp.dist,
        )
    };
    if !cacheable(exp) {
        return extract();
    }
    let key = feature_key(exp, backbone, split)?;
    let path = exp.run.feature_cache(split, &key);
    let labels = exp.dataset(split)?.labels().to_vec();
    match read(&path, &key, &labels, backbone.feature_dim(), exp) {
        Ok(features) => {
            tracing::info!(split = split.as_str(), path = %path.display(), "features read from the feature cache");
            return Ok(Features { features, labels });
        }
        Err(Miss::Absent) => {}
        Err(Miss::Stale(why)) => tracing::info!(
            split = split.as_str(),
            path = %path.display(),
            "feature cache not used ({why}): extracting the features again"
        ),
    }
    let features = extract()?;
    // The features are right whether or not they could be stored: a failed
    // write (a full disk) only costs the next command another pass.
    if let Err(e) = write(&path, &key, split, &features) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the feature cache");
    }
    prune(exp, split, &path);
    Ok(features)
}

/// Whether eval-mode features are kept on disk: on a single process (each
/// rank of a distributed run extracts its own shard).
fn cacheable(exp: &Experiment) -> bool {
    !exp.dist.is_distributed()
}

/// Removes the feature files of `split` beyond the [`MAX_FILES_PER_SPLIT`]
/// most recently written, never `keep` (just written). A file that cannot
/// be listed or removed is left with a warning: it only costs disk.
fn prune(exp: &Experiment, split: Split, keep: &Path) {
    let files = match exp.run.feature_cache_files(split) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the feature cache");
            return;
        }
    };
    let modified = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH)
    };
    // Newest first; `keep` before every other.
    let mut files: Vec<_> = files
        .into_iter()
        .map(|p| (p != keep, std::cmp::Reverse(modified(&p)), p))
        .collect();
    files.sort();
    for (_, _, old) in files.into_iter().skip(MAX_FILES_PER_SPLIT) {
        match std::fs::remove_file(&old) {
            Ok(()) => tracing::info!(path = %old.display(), "older feature cache removed"),
            Err(e) => {
                tracing::warn!(path = %old.display(), error = %e, "could not remove an older feature cache")
            }
        }
    }
}

/// Why a cached file was not used.
enum Miss {
    /// There is none.
    Absent,
    /// It is there but not for these inputs, or unreadable.
    Stale(String),
}

/// The SHA-256 (hex) of everything `split`'s eval-mode features on
/// `backbone` depend on.
pub fn feature_key(
    exp: &Experiment,
    backbone: &Backbone,
    split: Split,
) -> Result<String, TrainError> {
    let mut text = String::new();
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(KEY_VERSION.to_string());
    line(format!(
        "backbone {} dim {} precision {:?} device {:?}",
        backbone.arch().name(),
        backbone.feature_dim(),
        backbone.precision(),
        backbone.device().location()
    ));
    line(format!(
        "kernels winograd {} f4 {} isa {} threads {}",
        exp.config.model.winograd,
        exp.config.model.winograd_f4,
        lt_models::ops::active_isa().name(),
        rayon::current_num_threads()
    ));
    for (name, t) in varmap_tensors(backbone.varmap()) {
        line(format!(
            "var {name} {:?} {:?} {}",
            t.dtype(),
            t.dims(),
            tensor_digest(&t)?
        ));
    }
    line(format!(
        "transform {:?} batch {}",
        exp.transform(exp.config.data.eval_preset),
        exp.config.eval.batch_size
    ));
    let summary = match split {
        Split::Train => Some(&exp.data_info.train),
        Split::Val => exp.data_info.val.as_ref(),
        Split::Test => exp.data_info.test.as_ref(),
    };
    if let Some(s) = summary {
        line(format!("list {} sha256 {}", s.list, s.sha256));
    }
    let ds = exp.dataset(split)?;
    let mut images = String::new();
    for (i, image) in ds.images().iter().enumerate() {
        match image {
            ImageSource::File(p) => {
                // Size and modification time stand for the content: hashing
                // every image would cost as much as decoding it.
                let (len, modified) = match std::fs::metadata(p) {
                    Ok(m) => (
                        m.len(),
                        m.modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_nanos())
                            .unwrap_or(0),
                    ),
                    // An unreadable image fails the extraction with its own
                    // error; here it only has to change the key.
                    Err(_) => (u64::MAX, 0),
                };
                let _ = writeln!(
                    images,
                    "{i} {} {len} {modified} {}",
                    p.display(),
                    ds.label(i)
                );
            }
            ImageSource::Rgb8 {
                width,
                height,
                data,
            } => {
                let _ = writeln!(
                    images,
                    "{i} rgb {width}x{height} {} {}",
                    lt_core::fs::sha256_hex(data),
                    ds.label(i)
                );
            }
        }
    }
    line(format!(
        "images {} {}",
        ds.len(),
        lt_core::fs::sha256_hex(images.as_bytes())
    ));
    Ok(lt_core::fs::sha256_hex(text.as_bytes()))
}

/// SHA-256 of a tensor's values as little-endian f32 bytes.
fn tensor_digest(t: &Tensor) -> Result<String, TrainError> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(lt_core::fs::sha256_hex(&bytes))
}

/// The cached features at `path` if they were computed under `key` for
/// these labels and width.
fn read(
    path: &Path,
    key: &str,
    labels: &[u32],
    dim: usize,
    exp: &Experiment,
) -> Result<Tensor, Miss> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(e) => return Err(Miss::Stale(format!("unreadable: {e}"))),
    };
    let stale = |why: &str| Miss::Stale(why.to_string());
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Miss::Stale(format!("not a safetensors file: {e}")))?;
    let stored_key = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY_ENTRY))
        .ok_or_else(|| stale("no key"))?;
    if stored_key != key {
        return Err(stale(
            "computed for another backbone, transform or list of images",
        ));
    }
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load_buffer(&bytes, &exp.device)
            .map_err(|e| Miss::Stale(format!("unreadable tensors: {e}")))?;
    let (Some(features), Some(stored_labels)) = (tensors.get("features"), tensors.get("labels"))
    else {
        return Err(stale("no `features` or `labels` tensor"));
    };
    if features.dtype() != DType::F32 || features.dims() != [labels.len(), dim] {
        return Err(Miss::Stale(format!(
            "features of shape {:?}, expected [{}, {dim}]",
            features.dims(),
            labels.len()
        )));
    }
    let stored: Vec<u32> = stored_labels
        .to_dtype(DType::U32)
        .and_then(|t| t.to_vec1::<u32>())
        .map_err(|e| Miss::Stale(format!("unreadable labels: {e}")))?;
    if stored != labels {
        return Err(stale("other labels"));
    }
    Ok(features.clone())
}

/// Writes `features` with `key` (atomically: a reader never sees half a file).
fn write(path: &Path, key: &str, split: Split, features: &Features) -> Result<(), TrainError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| lt_core::fs::FsError::new("creating directory", dir, e))?;
    }
    let labels = Tensor::new(features.labels.as_slice(), &candle_core::Device::Cpu)?;
    let rows = features.features.to_device(&candle_core::Device::Cpu)?;
    let tensors = BTreeMap::from([
        ("features".to_string(), rows),
        ("labels".to_string(), labels),
    ]);
    let meta = HashMap::from([
        (KEY_ENTRY.to_string(), key.to_string()),
        ("split".to_string(), split.as_str().to_string()),
    ]);
    let bytes =
        safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    lt_core::fs::write_atomic(path, &bytes)?;
    tracing::info!(path = %path.display(), rows = features.len(), "feature cache written");
    Ok(())
}
