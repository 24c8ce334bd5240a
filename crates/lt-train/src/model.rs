//! The network of stage 1: a backbone and a linear (joint) head, with
//! checkpoint I/O and the selection of trainable parameters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use lt_heads::{LinearHead, DEFAULT_PREFIX};
use lt_models::{Arch, Backbone, BnMode};

use crate::checkpoint::{load_into_varmap, varmap_tensors};
use crate::seed::{derive_seed, Purpose};
use crate::TrainError;

/// Backbone plus linear head, variables under torchvision names.
pub struct Network {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Variables of the head (`fc.weight`, `fc.bias`).
    pub head_vars: VarMap,
    /// The joint linear head.
    pub head: LinearHead,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("backbone", &self.backbone)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A freshly initialised network; the backbone is seeded with `seed`, the
    /// head with a seed derived from it.
    pub fn new(
        arch: Arch,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::with_backbone(
            Backbone::new(arch, device, seed)?,
            num_classes,
            seed,
            device,
        )
    }

    /// The network a `[model]` section describes. An encoder arch reads its
    /// config JSON and, with `with_weights`, its weights file (later stages
    /// load a stage-1 checkpoint instead), and gets the `model.trainable`
    /// setting; a ResNet is [`Network::new`] (its pretrained weights are
    /// loaded by [`Network::load_pretrained`]).
    pub fn from_config(
        model: &crate::config::ModelConfig,
        num_classes: usize,
        seed: u64,
        device: &Device,
        with_weights: bool,
    ) -> Result<Self, TrainError> {
        let backbone = build_backbone(model, seed, device, with_weights)?;
        Self::with_backbone(backbone, num_classes, seed, device)
    }

    /// A backbone and a fresh linear head seeded from `seed`.
    pub fn with_backbone(
        backbone: Backbone,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let head_vars = VarMap::new();
        let head = LinearHead::new(
            &head_vars,
            DEFAULT_PREFIX,
            backbone.feature_dim(),
            num_classes,
            derive_seed(seed, Purpose::JointHead),
            device,
        )?;
        Ok(Self {
            backbone,
            head_vars,
            head,
        })
    }

    /// Makes the joint head the classifier `model` names: cosine
    /// (`model.classifier = "cosine"`, with `model.cosine_scale`) or affine;
    /// the variables stay the same.
    pub fn set_classifier(&mut self, model: &crate::config::ModelConfig) {
        self.head = self.head.clone().cosine(model.cosine_scale());
    }

    /// Loads pretrained backbone weights; keys the backbone lacks (an ImageNet
    /// `fc`, for instance) are skipped.
    pub fn load_pretrained(&self, path: &Path) -> Result<(), TrainError> {
        let report = self.backbone.load_pretrained(path)?;
        tracing::info!(
            path = %path.display(),
            loaded = report.loaded,
            skipped = report.unexpected.len(),
            "loaded pretrained backbone"
        );
        Ok(())
    }

    /// Logits of images with BN in `mode`.
    pub fn logits(&self, images: &Tensor, mode: BnMode) -> Result<Tensor, TrainError> {
        let f = self.backbone.forward_t(images, mode)?;
        Ok(lt_heads::Classifier::logits(&self.head, &f)?)
    }

    /// Every variable (backbone parameters and BN buffers, head), by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = varmap_tensors(self.backbone.varmap());
        t.extend(varmap_tensors(&self.head_vars));
        t
    }

    /// Loads every variable from `tensors` (as read from a checkpoint); extra
    /// keys such as optimiser state are ignored, missing ones are an error.
    pub fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &Path,
    ) -> Result<(), TrainError> {
        let backbone: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("momentum.") && !k.starts_with("fc."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.backbone
            .load_state_dict(backbone, &origin.display().to_string(), false)?;
        load_into_varmap(&self.head_vars, tensors, origin)
    }

    /// The parameters to train: all of them, or those whose name starts with
    /// one of `prefixes` (e.g. `["layer4.", "fc."]`). BN running statistics are
    /// never included.
    pub fn trainable(&self, prefixes: Option<&[String]>) -> Result<Vec<(String, Var)>, TrainError> {
        let mut all = self.backbone.parameters();
        all.push((
            format!("{DEFAULT_PREFIX}.weight"),
            self.head.weight_var().clone(),
        ));
        all.push((
            format!("{DEFAULT_PREFIX}.bias"),
            self.head.bias_var().clone(),
        ));
        let Some(prefixes) = prefixes else {
            return Ok(all);
        };
        for p in prefixes {
            if !all.iter().any(|(n, _)| n.starts_with(p.as_str())) {
                return Err(crate::config::ConfigError::at(
                    "model.trainable_prefixes",
                    format!("`{p}` matches no parameter"),
                )
                .into());
            }
        }
        Ok(all
            .into_iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            .collect())
    }
}

/// The backbone a `[model]` section describes (see [`Network::from_config`]):
/// a ResNet seeded with `seed`, or an encoder with its config JSON, its
/// weights when `with_weights`, and its `model.trainable` setting.
pub fn build_backbone(
    model: &crate::config::ModelConfig,
    seed: u64,
    device: &Device,
    with_weights: bool,
) -> Result<Backbone, TrainError> {
    let Some(enc) = model.arch.encoder() else {
        return Ok(Backbone::new(model.arch, device, seed)?);
    };
    let (config, file) = lt_models::encoders::resolve_config(
        enc.family,
        enc.standard(),
        model.encoder_config.as_deref(),
        model.pretrained.as_deref(),
    )?;
    let mut encoder = match (&model.pretrained, with_weights) {
        (Some(weights), true) => lt_models::Encoder::from_safetensors(config, weights, device)?,
        (None, true) => {
            tracing::warn!(
                arch = %model.arch,
                "no `model.weights`: the encoder is randomly initialised"
            );
            lt_models::Encoder::random(config, device, seed)?
        }
        (_, false) => lt_models::Encoder::random(config, device, seed)?,
    };
    encoder.set_trainable(model.encoder_trainable()?)?;
    tracing::info!(
        arch = %model.arch,
        config = %file.map(|f| f.display().to_string()).unwrap_or_else(|| "standard size".into()),
        width = encoder.feature_dim(),
        blocks = encoder.config().num_layers,
        trainable = %encoder.trainable(),
        "encoder"
    );
    Ok(Backbone::from_encoder(model.arch, encoder)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_trainable_selection() {
        let dev = Device::Cpu;
        let a = Network::new(Arch::ResNet8, 5, 1, &dev).unwrap();
        let b = Network::new(Arch::ResNet8, 5, 2, &dev).unwrap();
        let ta = a.tensors();
        assert!(ta.contains_key("fc.weight") && ta.contains_key("conv1.weight"));
        assert!(ta.keys().any(|k| k.ends_with("running_mean")));
        let map: HashMap<_, _> = ta.clone().into_iter().collect();
        b.load_tensors(&map, Path::new("mem")).unwrap();
        for (k, t) in b.tensors() {
            let d = (&t - &ta[&k]).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
        let all = a.trainable(None).unwrap();
        assert!(all.iter().all(|(n, _)| !n.contains("running")));
        let fc = a.trainable(Some(&["fc.".to_string()])).unwrap();
        assert_eq!(fc.len(), 2);
        let e = a.trainable(Some(&["layer9.".to_string()])).unwrap_err();
        assert!(e.to_string().contains("layer9."), "{e}");
    }
}
