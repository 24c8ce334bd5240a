//! Weights of the encoders: the file layouts they are read from, the
//! conversion of the layouts the model code does not read, and the two
//! `VarBuilder` backends the model code is built through.
//!
//! # Layouts read
//!
//! | family | layout | keys (file) | kept as |
//! |---|---|---|---|
//! | ViT | HF `ViTModel` / `ViTForImageClassification` | `[vit.]embeddings.*`, `[vit.]encoder.layer.N.*`, `[vit.]layernorm.*` | without `vit.` |
//! | DINOv2 | original release (`dinov2_vit?14_pretrain.pth`) | `cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.N.*`, `norm.*` | as is |
//! | DINOv2 | HF `Dinov2Model` | `embeddings.*`, `encoder.layer.N.*`, `layernorm.*` | converted to the original names (q, k, v fused into `qkv`) |
//! | CLIP | HF `CLIPVisionModel` / `CLIPModel` | `vision_model.*` | without `vision_model.` |
//! | SigLIP | HF `SiglipVisionModel` / `SiglipModel` | `vision_model.*` | without `vision_model.` |
//!
//! Keys of the other parts of a checkpoint are ignored: classifier heads
//! (`classifier.*`, `head.*` of DINOv2), ViT's `pooler.*`, the text tower and
//! projections of CLIP / SigLIP, `logit_scale` / `logit_bias`, mask tokens
//! and `position_ids` buffers.

use super::config::EncoderFamily;
use crate::error::{ShapeMismatch, StateDictMismatch};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Splits a file's keys into the encoder's (renamed to the names the model
/// code asks for) and the ones deliberately ignored.
pub fn normalize_keys(
    family: EncoderFamily,
    tensors: HashMap<String, Tensor>,
) -> candle_core::Result<(HashMap<String, Tensor>, Vec<String>)> {
    let mut kept = HashMap::new();
    let mut ignored = Vec::new();
    let is_hf_dinov2 = family == EncoderFamily::Dinov2
        && tensors
            .keys()
            .any(|k| k.starts_with("embeddings.") || k.starts_with("encoder.layer."));
    for (raw, t) in tensors {
        let mut key = raw.as_str();
        while let Some(rest) = key.strip_prefix("module.") {
            key = rest;
        }
        let key = match family {
            EncoderFamily::Vit => key.strip_prefix("vit.").unwrap_or(key),
            EncoderFamily::Clip | EncoderFamily::Siglip => {
                key.strip_prefix("vision_model.").unwrap_or(key)
            }
            EncoderFamily::Dinov2 => key,
        };
        let ignore = match family {
            EncoderFamily::Vit => {
                key.starts_with("classifier.")
                    || key.starts_with("pooler.")
                    || key == "embeddings.mask_token"
            }
            EncoderFamily::Dinov2 => {
                key.starts_with("head.")
                    || key.starts_with("classifier.")
                    || key == "mask_token"
                    || key == "embeddings.mask_token"
            }
            EncoderFamily::Clip | EncoderFamily::Siglip => {
                key.starts_with("text_model.")
                    || key.starts_with("visual_projection.")
                    || key.starts_with("text_projection.")
                    || key == "logit_scale"
                    || key == "logit_bias"
                    || key.ends_with("position_ids")
            }
        };
        if ignore {
            ignored.push(raw);
        } else {
            kept.insert(key.to_string(), t);
        }
    }
    ignored.sort();
    if is_hf_dinov2 {
        kept = dinov2_from_hf(kept)?;
    }
    Ok((kept, ignored))
}

/// Converts the Hugging Face `Dinov2Model` layout into that of the original
/// release, which the DINOv2 model code reads. Keys it does not know are
/// kept as they are (and reported as unexpected).
pub fn dinov2_from_hf(
    mut hf: HashMap<String, Tensor>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let simple = [
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        ("embeddings.register_tokens", "register_tokens"),
        (
            "embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.weight",
        ),
        (
            "embeddings.patch_embeddings.projection.bias",
            "patch_embed.proj.bias",
        ),
        ("layernorm.weight", "norm.weight"),
        ("layernorm.bias", "norm.bias"),
    ];
    for (from, to) in simple {
        if let Some(t) = hf.remove(from) {
            out.insert(to.to_string(), t);
        }
    }
    let layers: BTreeSet<usize> = hf
        .keys()
        .filter_map(|k| {
            k.strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    for i in layers {
        let hp = format!("encoder.layer.{i}.");
        let op = format!("blocks.{i}.");
        let renames = [
            ("norm1.weight", "norm1.weight"),
            ("norm1.bias", "norm1.bias"),
            ("norm2.weight", "norm2.weight"),
            ("norm2.bias", "norm2.bias"),
            ("attention.output.dense.weight", "attn.proj.weight"),
            ("attention.output.dense.bias", "attn.proj.bias"),
            ("layer_scale1.lambda1", "ls1.gamma"),
            ("layer_scale2.lambda1", "ls2.gamma"),
            ("mlp.fc1.weight", "mlp.fc1.weight"),
            ("mlp.fc1.bias", "mlp.fc1.bias"),
            ("mlp.fc2.weight", "mlp.fc2.weight"),
            ("mlp.fc2.bias", "mlp.fc2.bias"),
        ];
        for (from, to) in renames {
            if let Some(t) = hf.remove(&format!("{hp}{from}")) {
                out.insert(format!("{op}{to}"), t);
            }
        }
        for what in ["weight", "bias"] {
            let qkv: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|p| format!("{hp}attention.attention.{p}.{what}"))
                .collect();
            if qkv.iter().all(|k| hf.contains_key(k)) {
                let parts: Vec<Tensor> = qkv.iter().filter_map(|k| hf.remove(k)).collect();
                out.insert(format!("{op}attn.qkv.{what}"), Tensor::cat(&parts, 0)?);
            }
        }
    }
    out.extend(hf);
    Ok(out)
}

/// Where the collecting backend takes each tensor from.
pub(crate) enum Source {
    /// Seeded random initialisation (N(0, 0.02) for weights, embeddings and
    /// tokens; 1 for norm scales and layer scales; 0 for biases).
    Init(Box<Mutex<ChaCha8Rng>>),
    /// The (normalised) tensors of a file.
    File(HashMap<String, Tensor>),
}

impl Source {
    pub(crate) fn init(seed: u64) -> Self {
        Source::Init(Box::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }
}

/// The backend the model code is built through at construction (both
/// implementations, which ask for the same names): it turns every tensor the
/// code asks for into a [`Var`] (from the file or drawn), and records every
/// missing or mis-shaped key instead of failing at the first, so that one
/// error lists them all.
pub(crate) struct Collect {
    source: Source,
    state: Mutex<Collected>,
}

#[derive(Default)]
pub(crate) struct Collected {
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) mismatch: StateDictMismatch,
}

impl Collect {
    pub(crate) fn new(source: Source) -> Self {
        Self {
            source,
            state: Mutex::new(Collected::default()),
        }
    }

    /// The variables collected, and what did not fit (file keys never asked
    /// for are added as unexpected).
    pub(crate) fn finish(self) -> Collected {
        let mut state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Source::File(tensors) = &self.source {
            let asked: BTreeSet<&str> = state.vars.iter().map(|(n, _)| n.as_str()).collect();
            let asked: BTreeSet<String> = asked
                .into_iter()
                .map(str::to_string)
                .chain(state.mismatch.missing.iter().cloned())
                .chain(state.mismatch.shape.iter().map(|m| m.key.clone()))
                .collect();
            let mut unexpected: Vec<String> = tensors
                .keys()
                .filter(|k| !asked.contains(k.as_str()))
                .cloned()
                .collect();
            unexpected.sort();
            state.mismatch.unexpected = unexpected;
        }
        state.mismatch.missing.sort();
        state.mismatch.shape.sort_by(|a, b| a.key.cmp(&b.key));
        state
    }

    fn draw(&self, shape: &Shape, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let Source::Init(rng) = &self.source else {
            unreachable!("draw is only called for Source::Init")
        };
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let n = shape.elem_count();
        let constant = |v: f32| Tensor::full(v, shape, dev);
        let is_norm = name.contains("norm") || name.contains("layrnorm");
        match leaf {
            "bias" | "in_proj_bias" => constant(0.0),
            "gamma" | "lambda1" => constant(1.0),
            "weight" if is_norm && shape.rank() == 1 => constant(1.0),
            _ => {
                let dist = Normal::new(0f32, 0.02).map_err(candle_core::Error::wrap)?;
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut *rng)).collect();
                Tensor::from_vec(v, shape, dev)
            }
        }
    }
}

// By reference, so that `finish` can take the collected variables back
// once the `VarBuilder` (which owns its backend) is dropped.
impl SimpleBackend for &Collect {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, v)) = state.vars.iter().find(|(n, _)| n == name) {
                return v.as_tensor().to_dtype(dtype);
            }
        }
        let tensor = match &self.source {
            Source::Init(_) => Some(self.draw(&s, name, dev)?),
            Source::File(tensors) => {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match tensors.get(name) {
                    None => {
                        state.mismatch.missing.push(name.to_string());
                        None
                    }
                    Some(t) if t.shape() != &s => {
                        state.mismatch.shape.push(ShapeMismatch {
                            key: name.to_string(),
                            expected: s.dims().to_vec(),
                            found: t.dims().to_vec(),
                        });
                        None
                    }
                    Some(t) => Some(t.to_device(dev)?.to_dtype(DType::F32)?.contiguous()?),
                }
            }
        };
        match tensor {
            Some(t) => {
                let var = Var::from_tensor(&t)?;
                let out = var.as_tensor().to_dtype(dtype)?;
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.vars.push((name.to_string(), var));
                Ok(out)
            }
            // A stand-in so that construction goes on and reports every key.
            None => Tensor::zeros(s, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.source {
            Source::File(t) => match t.get(name) {
                Some(t) => self.get(
                    t.shape().clone(),
                    name,
                    candle_nn::Init::Const(0.),
                    dtype,
                    dev,
                ),
                None => candle_core::bail!("no tensor `{name}`"),
            },
            Source::Init(_) => candle_core::bail!("the shape of `{name}` is not known"),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Every tensor the model code asks for is either served or recorded
        // as missing: the code must not fall back to a default of its own.
        true
    }
}

/// The backend the model code is built through at every forward pass: it
/// serves the encoder's variables, trainable ones as they are (so the
/// autograd graph reaches them) and frozen ones detached (same storage, no
/// graph), so a frozen encoder runs without building an autograd graph.
pub(crate) struct Serve<'a> {
    pub(crate) vars: &'a HashMap<String, Var>,
    pub(crate) trainable: &'a (dyn Fn(&str) -> bool + Sync),
}

impl SimpleBackend for Serve<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, _dev)?;
        if t.shape() != &s {
            candle_core::bail!("`{name}` has shape {:?}, the model expects {s:?}", t.dims());
        }
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let var = self
            .vars
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable `{name}`")))?;
        let t = if (self.trainable)(name) {
            var.as_tensor().clone()
        } else {
            var.as_tensor().detach()
        };
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }
}
