//! Encoder configurations: the standard sizes, and the Hugging Face style
//! `config.json` files that describe the others.

use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The four encoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncoderFamily {
    /// ViT as Hugging Face transformers' `ViTModel` (google/vit-*).
    Vit,
    /// DINOv2 in the layout of the original release (`dinov2_vits14_pretrain.pth`
    /// converted to safetensors); the Hugging Face `Dinov2Model` layout is
    /// converted on load.
    Dinov2,
    /// The CLIP vision tower, Hugging Face `CLIPVisionModel` / `CLIPModel`.
    Clip,
    /// The SigLIP vision tower, Hugging Face `SiglipVisionModel` / `SiglipModel`.
    Siglip,
}

impl EncoderFamily {
    /// The family's name in configs (`vit`, `dinov2`, `clip`, `siglip`).
    pub fn name(self) -> &'static str {
        match self {
            EncoderFamily::Vit => "vit",
            EncoderFamily::Dinov2 => "dinov2",
            EncoderFamily::Clip => "clip",
            EncoderFamily::Siglip => "siglip",
        }
    }

    /// The `model_type` values of Hugging Face configs of this family.
    fn model_types(self) -> &'static [&'static str] {
        match self {
            EncoderFamily::Vit => &["vit"],
            EncoderFamily::Dinov2 => &["dinov2"],
            EncoderFamily::Clip => &["clip", "clip_vision_model"],
            EncoderFamily::Siglip => &["siglip", "siglip_vision_model"],
        }
    }
}

impl fmt::Display for EncoderFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (`"gelu"`).
    Gelu,
    /// GELU, tanh approximation (`"gelu_pytorch_tanh"`, `"gelu_new"`).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (`"quick_gelu"`, OpenAI CLIP).
    QuickGelu,
}

impl Activation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            "quick_gelu" => Some(Activation::QuickGelu),
            _ => None,
        }
    }
}

/// The shape of one vision encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// The model code that runs it.
    pub family: EncoderFamily,
    /// Token width, also the feature dimension.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Side of the images the position embeddings were trained for.
    pub image_size: usize,
    /// Side of a patch.
    pub patch_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// The MLP activation.
    pub activation: Activation,
    /// Biases on the query, key and value projections (ViT).
    pub qkv_bias: bool,
    /// Register tokens (DINOv2 "with registers"; 0 otherwise).
    pub num_register_tokens: usize,
}

impl EncoderConfig {
    /// The standard configuration of a family at a size: `width` is `"s"`,
    /// `"b"` or `"l"`, `patch` the patch side.
    pub fn standard(family: EncoderFamily, width: char, patch: usize) -> Self {
        let (hidden_size, num_layers, num_heads) = match width {
            's' => (384, 12, 6),
            'l' => (1024, 24, 16),
            _ => (768, 12, 12),
        };
        let mut c = Self {
            family,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size: 4 * hidden_size,
            image_size: 224,
            patch_size: patch,
            num_channels: 3,
            layer_norm_eps: 1e-12,
            activation: Activation::Gelu,
            qkv_bias: true,
            num_register_tokens: 0,
        };
        match family {
            EncoderFamily::Vit => {}
            EncoderFamily::Dinov2 => {
                c.image_size = 518;
                c.layer_norm_eps = 1e-6;
            }
            EncoderFamily::Clip => {
                c.layer_norm_eps = 1e-5;
                c.activation = Activation::QuickGelu;
            }
            EncoderFamily::Siglip => {
                c.layer_norm_eps = 1e-6;
                c.activation = Activation::GeluTanh;
            }
        }
        c
    }

    /// The default configuration of a family (that of its Hugging Face config
    /// class, DINOv2 at the release's 518 pixels): the base size, patch 16
    /// (CLIP 32, DINOv2 14).
    pub fn family_default(family: EncoderFamily) -> Self {
        let patch = match family {
            EncoderFamily::Clip => 32,
            EncoderFamily::Dinov2 => 14,
            EncoderFamily::Vit | EncoderFamily::Siglip => 16,
        };
        Self::standard(family, 'b', patch)
    }

    /// Patches per side at the configured image size.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Reads a Hugging Face style `config.json` (or the `vision_config` of a
    /// CLIP / SigLIP model config). Missing keys take the family's defaults.
    pub fn from_json_file(family: EncoderFamily, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::EncoderConfig {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::from_json(family, &text).map_err(|reason| ModelError::EncoderConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses a configuration (see [`EncoderConfig::from_json_file`]).
    pub fn from_json(family: EncoderFamily, text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(t) = &raw.model_type {
            if !family.model_types().contains(&t.as_str()) {
                return Err(format!(
                    "it describes a `{t}` model, not a {family} encoder (model_type)"
                ));
            }
        }
        let raw = match raw.vision_config {
            Some(v) => *v,
            None => raw,
        };
        let mut c = Self::family_default(family);
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut c.hidden_size, raw.hidden_size);
        set(&mut c.num_layers, raw.num_hidden_layers);
        set(&mut c.num_heads, raw.num_attention_heads);
        set(&mut c.image_size, raw.image_size);
        set(&mut c.patch_size, raw.patch_size);
        set(&mut c.num_channels, raw.num_channels);
        set(&mut c.num_register_tokens, raw.num_register_tokens);
        c.intermediate_size = match (raw.intermediate_size, raw.mlp_ratio) {
            (Some(i), _) => i,
            (None, Some(r)) => (c.hidden_size as f64 * r).round() as usize,
            (None, None) => 4 * c.hidden_size,
        };
        if let Some(e) = raw.layer_norm_eps {
            c.layer_norm_eps = e;
        }
        if let Some(b) = raw.qkv_bias {
            c.qkv_bias = b;
        }
        if let Some(a) = &raw.hidden_act {
            c.activation =
                Activation::parse(a).ok_or_else(|| format!("hidden_act `{a}` is not supported"))?;
        }
        if raw.use_swiglu_ffn == Some(true) {
            return Err("use_swiglu_ffn (DINOv2 ViT-g) is not supported".into());
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the sizes and what the family's model code supports.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_size == 0
            || self.num_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_heads)
        {
            return Err(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(format!(
                "patch_size {} does not fit image_size {}",
                self.patch_size, self.image_size
            ));
        }
        let unsupported =
            |what: String| Err(format!("{what} is not supported for {}", self.family));
        match self.family {
            EncoderFamily::Vit | EncoderFamily::Siglip
                if self.activation == Activation::QuickGelu =>
            {
                unsupported("hidden_act quick_gelu".into())
            }
            EncoderFamily::Clip if self.activation != Activation::QuickGelu => {
                unsupported(format!(
                    "hidden_act {:?} (the CLIP model code runs quick_gelu)",
                    self.activation
                ))
            }
            EncoderFamily::Clip if self.layer_norm_eps != 1e-5 => unsupported(format!(
                "layer_norm_eps {} (the CLIP model code uses 1e-5)",
                self.layer_norm_eps
            )),
            EncoderFamily::Dinov2 if self.activation != Activation::Gelu => {
                unsupported(format!("hidden_act {:?}", self.activation))
            }
            _ if self.num_register_tokens > 0 && self.family != EncoderFamily::Dinov2 => {
                unsupported("num_register_tokens".into())
            }
            _ => Ok(()),
        }
    }
}

/// The keys read from a `config.json`; every other key is ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vision_config: Option<Box<RawConfig>>,
    #[serde(alias = "embed_dim")]
    hidden_size: Option<usize>,
    #[serde(alias = "depth")]
    num_hidden_layers: Option<usize>,
    #[serde(alias = "num_heads")]
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    mlp_ratio: Option<f64>,
    #[serde(alias = "img_size")]
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    qkv_bias: Option<bool>,
    num_register_tokens: Option<usize>,
    use_swiglu_ffn: Option<bool>,
}

/// Where an encoder's configuration comes from: a named file, else
/// `config.json` beside the weights, else the architecture's standard size.
/// Returns the configuration and the file it was read from, if any.
pub fn resolve_config(
    family: EncoderFamily,
    standard: Option<EncoderConfig>,
    config: Option<&Path>,
    weights: Option<&Path>,
) -> Result<(EncoderConfig, Option<PathBuf>)> {
    let beside = weights
        .and_then(|w| w.parent())
        .map(|d| d.join("config.json"))
        .filter(|p| p.is_file());
    let file = config.map(Path::to_path_buf).or(beside);
    let Some(file) = file else {
        return standard.map(|c| (c, None)).ok_or_else(|| {
            ModelError::InvalidConfig(format!(
                "the {family} encoder takes its size from a config JSON: name it with \
                 `model.encoder_config` or put config.json beside the weights{}",
                weights
                    .map(|w| format!(" ({})", w.display()))
                    .unwrap_or_default()
            ))
        });
    };
    if !file.is_file() {
        return Err(ModelError::EncoderConfig {
            path: file,
            reason: "no such file".into(),
        });
    }
    let c = EncoderConfig::from_json_file(family, &file)?;
    if let Some(s) = standard {
        let differs = |what: &str, a: usize, b: usize| {
            (a != b).then(|| format!("{what} {b}, the architecture has {a}"))
        };
        let diff = differs("hidden_size", s.hidden_size, c.hidden_size)
            .or_else(|| differs("num_hidden_layers", s.num_layers, c.num_layers))
            .or_else(|| differs("patch_size", s.patch_size, c.patch_size));
        if let Some(d) = diff {
            return Err(ModelError::EncoderConfig {
                path: file,
                reason: format!(
                    "it describes another size ({d}); use the arch of that size or `{family}` \
                     (size from the config)"
                ),
            });
        }
    }
    Ok((c, Some(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_configs_with_defaults() {
        let vit = r#"{"model_type":"vit","hidden_size":384,"num_hidden_layers":2,
            "num_attention_heads":6,"intermediate_size":1536,"image_size":32,"patch_size":8,
            "hidden_act":"gelu","layer_norm_eps":1e-12,"qkv_bias":true,"id2label":{}}"#;
        let c = EncoderConfig::from_json(EncoderFamily::Vit, vit).unwrap();
        assert_eq!((c.hidden_size, c.num_layers, c.grid()), (384, 2, 4));
        let clip = r#"{"model_type":"clip","vision_config":{"hidden_size":1024,
            "num_hidden_layers":24,"num_attention_heads":16,"intermediate_size":4096,"patch_size":14}}"#;
        let c = EncoderConfig::from_json(EncoderFamily::Clip, clip).unwrap();
        assert_eq!((c.hidden_size, c.patch_size, c.image_size), (1024, 14, 224));
        assert_eq!(c.activation, Activation::QuickGelu);
        let e = EncoderConfig::from_json(EncoderFamily::Vit, clip).unwrap_err();
        assert!(e.contains("`clip`"), "{e}");
        let dino =
            r#"{"model_type":"dinov2","hidden_size":384,"mlp_ratio":4,"num_attention_heads":6}"#;
        let c = EncoderConfig::from_json(EncoderFamily::Dinov2, dino).unwrap();
        assert_eq!(
            (c.intermediate_size, c.patch_size, c.layer_norm_eps),
            (1536, 14, 1e-6)
        );
    }
}
