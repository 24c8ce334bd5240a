//! One head of a run as a model to apply to new images, and the exported
//! model file (`lt-cli predict`, `lt-cli export`).
//!
//! [`build_head`] builds a head through the registry exactly as evaluation
//! does (a tau chosen on val as evaluation chooses it, NCM centroids of the
//! training features, a trained head from its selected checkpoint with the
//! backbone saved with it). [`export_model`] folds it into a plain linear
//! layer ([`lt_heads::Classifier::fold`]) and writes one safetensors file:
//! the backbone, `fc.weight` / `fc.bias`, and [`ExportMeta`] in the header.
//! [`ExportedModel::load`] reads it back. The folded layer gives the head's
//! logits up to float rounding (the CLI tests check 1e-5 for every foldable
//! head of the registry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lt_core::HeadId;
use lt_data::transform::{Normalization, Preset, Transform};
use lt_heads::LinearLayer;
use lt_models::{Arch, Backbone, Precision};
use lt_run::{ExportMeta, ExportNormalization, EXPORT_FORMAT_VERSION};

use crate::experiment::Experiment;
use crate::heads::{ClassifierDebug, FeatureCache, HeadContext};
use crate::TrainError;

/// A head of a run, built for evaluation, with the backbone it runs on.
#[derive(Debug)]
pub struct HeadModel {
    /// The head's backbone (a trained head's own BN statistics, else stage 1's).
    pub backbone: Backbone,
    /// The classifier.
    pub classifier: Box<dyn ClassifierDebug>,
    /// Its registry name.
    pub head: HeadId,
    /// Its table label.
    pub label: &'static str,
    /// Its tau, when it has one.
    pub tau: Option<f64>,
    /// The checkpoint it came from.
    pub checkpoint: PathBuf,
    /// That checkpoint's epoch.
    pub epoch: usize,
}

impl HeadModel {
    /// Logits `(N, C)` of preprocessed images `(N, 3, H, W)` (BN in eval mode).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        let f = self.backbone.forward_inference(images)?;
        Ok(self.classifier.logits(&f.to_dtype(DType::F32)?)?)
    }
}

/// Builds `head` from the run's selected checkpoints through the registry,
/// as evaluation builds it.
pub fn build_head(exp: &Experiment, head: &HeadId) -> Result<HeadModel, TrainError> {
    let method = crate::heads::lookup(head.as_str())?;
    let (net, path, epoch) = crate::stage1::load_selected(exp)?;
    let built = {
        let features = FeatureCache::new(exp, &net.backbone, "stage1");
        let ctx = HeadContext {
            exp,
            stage1: &net,
            stage1_checkpoint: &path,
            stage1_epoch: epoch,
            features: &features,
        };
        method.build(&ctx)?
    };
    Ok(HeadModel {
        backbone: built.backbone.unwrap_or(net.backbone),
        classifier: built.classifier,
        head: method.id(),
        label: method.label(),
        tau: built.tau,
        checkpoint: built.checkpoint,
        epoch: built.epoch,
    })
}

/// The head as one linear layer, or an error naming the head and why it
/// does not fold.
pub fn fold(model: &HeadModel) -> Result<LinearLayer, TrainError> {
    model.classifier.fold()?.into_result().map_err(|why| {
        TrainError::Invalid(format!(
            "head `{}` ({}) cannot be exported as a linear layer: {why}",
            model.head, model.label
        ))
    })
}

/// The class names of a run: `classes.txt` next to the training list or in
/// the data root, else the class ids.
pub fn class_names(exp: &Experiment) -> Result<Vec<String>, TrainError> {
    let d = &exp.config.data;
    Ok(
        match lt_data::split_list::find_class_names(&d.train_list, &d.root, exp.num_classes())? {
            Some((names, _)) => names,
            None => (0..exp.num_classes()).map(|c| c.to_string()).collect(),
        },
    )
}

/// The metadata of `model` exported from `exp`.
pub fn export_meta(exp: &Experiment, model: &HeadModel) -> Result<ExportMeta, TrainError> {
    let d = &exp.config.data;
    Ok(ExportMeta {
        format_version: EXPORT_FORMAT_VERSION,
        arch: exp.config.model.arch.name().to_string(),
        precision: exp.config.model.precision.as_str().to_string(),
        feature_dim: model.backbone.feature_dim(),
        num_classes: exp.num_classes(),
        class_names: class_names(exp)?,
        eval_preset: d.eval_preset.name().to_string(),
        normalization: d.normalization.map(|n| {
            let v = n.normalization();
            ExportNormalization {
                name: serde_json::to_value(n)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_string))
                    .unwrap_or_default(),
                mean: v.mean,
                std: v.std,
            }
        }),
        head: model.head.to_string(),
        head_label: model.label.to_string(),
        tau: model.tau,
        source_run: exp.run.root().display().to_string(),
        checkpoint: model.checkpoint.display().to_string(),
        epoch: model.epoch,
        config_hash: exp.config_hash.clone(),
    })
}

/// Folds `head` of the run and writes the exported model to `out`
/// (atomically); refuses a head that does not fold, writing nothing.
pub fn export_model(exp: &Experiment, head: &HeadId, out: &Path) -> Result<ExportMeta, TrainError> {
    let model = build_head(exp, head)?;
    let layer = fold(&model)?;
    let meta = export_meta(exp, &model)?;
    write_exported(&model.backbone, &layer, &meta, out)?;
    Ok(meta)
}

/// Writes an exported model: the backbone's tensors, `fc.weight`,
/// `fc.bias`, and `meta` in the header.
pub fn write_exported(
    backbone: &Backbone,
    layer: &LinearLayer,
    meta: &ExportMeta,
    out: &Path,
) -> Result<(), TrainError> {
    let cpu = |t: &Tensor| -> Result<Tensor, TrainError> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?)
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in backbone.state_dict()? {
        tensors.push((name, cpu(&t)?));
    }
    tensors.push(("fc.weight".into(), cpu(&layer.weight)?));
    tensors.push(("fc.bias".into(), cpu(&layer.bias)?));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::tensor::serialize(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(meta.to_metadata()),
    )
    .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", out.display())))?;
    lt_core::fs::write_atomic(out, &bytes)?;
    Ok(())
}

/// An exported model read back: backbone, folded head, metadata.
#[derive(Debug)]
pub struct ExportedModel {
    /// The backbone (BN in eval mode when used through [`Self::logits`]).
    pub backbone: Backbone,
    /// The folded head.
    pub fc: LinearLayer,
    /// What it is and how to feed it.
    pub meta: ExportMeta,
}

impl ExportedModel {
    /// Reads an exported model onto `device`; an error names the file and
    /// what is wrong (no export metadata, unknown arch, missing or
    /// mis-shaped tensors).
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let bad = |why: String| TrainError::Checkpoint(format!("{}: {why}", path.display()));
        let bytes = lt_core::fs::read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = ExportMeta::from_metadata(header.metadata().as_ref(), path)?;
        let arch: Arch = meta
            .arch
            .parse()
            .map_err(|e| bad(format!("metadata `arch`: {e}")))?;
        let precision: Precision = serde_json::from_value(meta.precision.clone().into())
            .map_err(|e| bad(format!("metadata `precision`: {e}")))?;
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device)
                .map_err(|e| bad(format!("reading tensors: {e}")))?;
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| bad(format!("missing tensor `{name}`")))
        };
        let fc = LinearLayer {
            weight: take("fc.weight")?,
            bias: take("fc.bias")?,
        };
        let mut backbone = Backbone::new(arch, device, 0)?;
        backbone.set_precision(precision);
        let want_w = [meta.num_classes, backbone.feature_dim()];
        if fc.weight.dims() != want_w || fc.bias.dims() != [meta.num_classes] {
            return Err(bad(format!(
                "`fc.weight` {:?} and `fc.bias` {:?} do not match {} classes of {}-d features",
                fc.weight.dims(),
                fc.bias.dims(),
                meta.num_classes,
                backbone.feature_dim()
            )));
        }
        if meta.class_names.len() != meta.num_classes {
            return Err(bad(format!(
                "{} class names for {} classes",
                meta.class_names.len(),
                meta.num_classes
            )));
        }
        backbone.load_state_dict(tensors, &path.display().to_string(), true)?;
        Ok(Self { backbone, fc, meta })
    }

    /// The evaluation preprocessing recorded in the metadata.
    pub fn transform(&self) -> Result<Transform, TrainError> {
        let preset: Preset =
            serde_json::from_value(self.meta.eval_preset.clone().into()).map_err(|e| {
                TrainError::Invalid(format!(
                    "exported model: eval preset `{}`: {e}",
                    self.meta.eval_preset
                ))
            })?;
        let t = Transform::new(preset);
        Ok(match &self.meta.normalization {
            Some(n) => t.with_normalization(Normalization {
                mean: n.mean,
                std: n.std,
            }),
            None => t,
        })
    }

    /// Logits `(N, C)` of preprocessed images `(N, 3, H, W)`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        let f = self.backbone.forward_inference(images)?;
        Ok(self.fc.logits(&f.to_dtype(DType::F32)?)?)
    }
}

/// The logits of every image of `dataset`, in order, as a row-major host
/// vector `(N * C)`: images preprocessed by `transform` (decoded by
/// `threads` threads), `batch_size` at a time on `device`, through
/// `logits`, with a progress bar. An unreadable image is an error naming
/// the file.
pub fn dataset_logits(
    logits: impl Fn(&Tensor) -> Result<Tensor, TrainError>,
    dataset: std::sync::Arc<lt_data::dataset::Dataset>,
    transform: Transform,
    batch_size: usize,
    threads: usize,
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    let n = dataset.len();
    let config = lt_data::loader::LoaderConfig {
        threads,
        ..Default::default()
    };
    let loader = lt_data::loader::Loader::new(dataset, transform, config)?;
    let batches = crate::experiment::sequential_batches(n, batch_size);
    let bar = crate::progress::bar(batches.len() as u64, "predict");
    let mut out = Vec::new();
    for batch in loader.epoch(0, batches) {
        let batch = batch?;
        let z = logits(&batch.images.to_device(device)?)?;
        out.extend(z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
