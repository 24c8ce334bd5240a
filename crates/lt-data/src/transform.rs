//! Augmentation and normalisation, as the reference recipes use them.
//!
//! | preset | pipeline | default normalisation |
//! |---|---|---|
//! | `cifar_train` | 4-pixel zero padding, random 32x32 crop, horizontal flip (p = 0.5) | CIFAR |
//! | `cifar_eval` | none (the image as is) | CIFAR |
//! | `imagenet_train` | RandomResizedCrop 224 (scale 0.08..1, ratio 3/4..4/3, bilinear), flip, ColorJitter(0.4, 0.4, 0.4) | ImageNet |
//! | `inaturalist_train` | the same without ColorJitter | iNaturalist |
//! | `imagenet_eval` | shorter side to 256 (bilinear), centre crop 224 | ImageNet |
//! | `inaturalist_eval` | as `imagenet_eval` | iNaturalist |
//! | `none` | none | identity (pixels in `[0, 1]`) |
//! | `vit_eval` | resize to 224x224 (bilinear), as HF `ViTImageProcessor` | half (mean = std = 0.5) |
//! | `dinov2_eval` | shorter side to 256 (bicubic), centre crop 224, as DINOv2's evaluation | ImageNet |
//! | `clip_eval` | shorter side to 224 (bicubic), centre crop 224, as CLIP's preprocessing | CLIP |
//! | `siglip_eval` | resize to 224x224 (bicubic), as HF `SiglipImageProcessor` | half |
//!
//! The four encoder presets are the preprocessing of the pretrained encoders
//! of `lt-models` (`crop_size` changes their 224; `resize_shorter` the
//! shorter side of `dinov2_eval` and `clip_eval`). To fine-tune an encoder
//! with augmentation, use `imagenet_train` with the encoder's normalisation.
//! Bicubic resizing is PIL's (cubic coefficient -0.5, antialiased when
//! downscaling), with the intermediate pass clamped to 8-bit range.
//!
//! Places-LT uses the ImageNet presets. Every step follows torchvision on PIL
//! images: RandomResizedCrop draws the area fraction uniformly and the aspect
//! ratio log-uniformly, tries 10 times and falls back to a centre crop clamped
//! to the ratio range; resizing is PIL's antialiased bilinear filter (its
//! support widens with the downscale factor); ColorJitter draws brightness,
//! contrast and saturation factors uniformly in `[0.6, 1.4]` and applies them in
//! a random order with PIL's `ImageEnhance` arithmetic (8-bit, truncating);
//! centre crops round the offset half-to-even like Python's `round`. Pixels are
//! then scaled to `[0, 1]` and normalised per channel, and written as `C x H x W`
//! `f32`. The random numbers themselves come from the caller's seeded stream,
//! not torch's, so results are statistically, not bitwise, torchvision's.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, RgbImage};

/// A named augmentation pipeline (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// No augmentation: the image as is.
    #[default]
    None,
    /// CIFAR training: pad 4, random crop, flip.
    CifarTrain,
    /// CIFAR evaluation: no augmentation.
    CifarEval,
    /// ImageNet-LT / Places-LT training: RandomResizedCrop, flip, ColorJitter.
    ImagenetTrain,
    /// iNaturalist training: RandomResizedCrop, flip.
    InaturalistTrain,
    /// Evaluation at 224: shorter side 256, centre crop.
    ImagenetEval,
    /// iNaturalist evaluation: as `imagenet_eval`, iNaturalist statistics.
    InaturalistEval,
    /// ViT (HF) evaluation: resize to 224x224, bilinear; mean = std = 0.5.
    VitEval,
    /// DINOv2 evaluation: shorter side 256 (bicubic), centre crop 224; ImageNet statistics.
    Dinov2Eval,
    /// CLIP evaluation: shorter side 224 (bicubic), centre crop 224; CLIP statistics.
    ClipEval,
    /// SigLIP evaluation: resize to 224x224, bicubic; mean = std = 0.5.
    SiglipEval,
}

impl Preset {
    /// The preset's name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Preset::None => "none",
            Preset::CifarTrain => "cifar_train",
            Preset::CifarEval => "cifar_eval",
            Preset::ImagenetTrain => "imagenet_train",
            Preset::InaturalistTrain => "inaturalist_train",
            Preset::ImagenetEval => "imagenet_eval",
            Preset::InaturalistEval => "inaturalist_eval",
            Preset::VitEval => "vit_eval",
            Preset::Dinov2Eval => "dinov2_eval",
            Preset::ClipEval => "clip_eval",
            Preset::SiglipEval => "siglip_eval",
        }
    }

    /// Whether the preset draws random numbers (training augmentation).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Preset::CifarTrain | Preset::ImagenetTrain | Preset::InaturalistTrain
        )
    }
}

/// Per-channel mean and standard deviation, applied to pixels in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Mean of R, G, B.
    pub mean: [f32; 3],
    /// Standard deviation of R, G, B.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics (also used for Places-LT).
    pub fn imagenet() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// iNaturalist-2018 statistics of the reference code.
    pub fn inaturalist() -> Self {
        Self {
            mean: [0.466, 0.471, 0.380],
            std: [0.195, 0.194, 0.192],
        }
    }

    /// CIFAR statistics of the reference CIFAR-LT code.
    pub fn cifar() -> Self {
        Self {
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2023, 0.1994, 0.2010],
        }
    }

    /// CLIP's statistics (OpenAI CLIP preprocessing).
    pub fn clip() -> Self {
        Self {
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }

    /// Mean = std = 0.5 (pixels to `[-1, 1]`): HF ViT and SigLIP.
    pub fn half() -> Self {
        Self {
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// No normalisation: mean 0, std 1.
    pub fn identity() -> Self {
        Self {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// The normalised value of every 8-bit level, per channel.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, row) in lut.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }
}

/// What a [`Transform`] does to one image; built from a preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TransformConfig", into = "TransformConfig")]
pub struct Transform {
    /// The pipeline.
    pub preset: Preset,
    /// Normalisation applied last.
    pub normalization: Normalization,
    /// Side of the square output of cropping presets (32 for CIFAR, 224 otherwise).
    pub crop_size: u32,
    /// Shorter side after the evaluation resize (256).
    pub resize_shorter: u32,
    /// Zero padding of `cifar_train` (4).
    pub padding: u32,
}

/// The serialised form of a [`Transform`]: only `preset` is required, the
/// other fields default from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The pipeline.
    pub preset: Preset,
    /// Overrides the preset's normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Overrides the preset's output side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_size: Option<u32>,
    /// Overrides the evaluation resize (shorter side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
    /// Overrides the CIFAR padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<u32>,
}

impl From<TransformConfig> for Transform {
    fn from(c: TransformConfig) -> Self {
        let base = Transform::new(c.preset);
        Transform {
            preset: c.preset,
            normalization: c.normalization.unwrap_or(base.normalization),
            crop_size: c.crop_size.unwrap_or(base.crop_size),
            resize_shorter: c.resize_shorter.unwrap_or(base.resize_shorter),
            padding: c.padding.unwrap_or(base.padding),
        }
    }
}

impl From<Transform> for TransformConfig {
    fn from(t: Transform) -> Self {
        TransformConfig {
            preset: t.preset,
            normalization: Some(t.normalization),
            crop_size: Some(t.crop_size),
            resize_shorter: Some(t.resize_shorter),
            padding: Some(t.padding),
        }
    }
}

/// RandomResizedCrop's area fraction range.
const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// RandomResizedCrop's aspect-ratio range.
const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// ColorJitter strength for brightness, contrast and saturation.
const JITTER: f64 = 0.4;

impl Transform {
    /// The preset with its reference normalisation and sizes.
    pub fn new(preset: Preset) -> Self {
        let (normalization, crop_size) = match preset {
            Preset::None => (Normalization::identity(), 224),
            Preset::CifarTrain | Preset::CifarEval => (Normalization::cifar(), 32),
            Preset::ImagenetTrain | Preset::ImagenetEval => (Normalization::imagenet(), 224),
            Preset::InaturalistTrain | Preset::InaturalistEval => {
                (Normalization::inaturalist(), 224)
            }
            Preset::VitEval | Preset::SiglipEval => (Normalization::half(), 224),
            Preset::Dinov2Eval => (Normalization::imagenet(), 224),
            Preset::ClipEval => (Normalization::clip(), 224),
        };
        Self {
            preset,
            normalization,
            crop_size,
            resize_shorter: if preset == Preset::ClipEval { 224 } else { 256 },
            padding: 4,
        }
    }

    /// Replaces the normalisation.
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        self.normalization = normalization;
        self
    }

    /// Checks the sizes; `key` prefixes the config key in errors.
    pub fn validate(&self) -> Result<(), crate::error::DataError> {
        use crate::error::DataError;
        if self.crop_size == 0 {
            return Err(DataError::config(
                "transform.crop_size",
                "must be at least 1",
            ));
        }
        if matches!(
            self.preset,
            Preset::ImagenetEval | Preset::InaturalistEval | Preset::Dinov2Eval | Preset::ClipEval
        ) && self.resize_shorter < self.crop_size
        {
            return Err(DataError::config(
                "transform.resize_shorter",
                format!(
                    "{} is smaller than crop_size {}",
                    self.resize_shorter, self.crop_size
                ),
            ));
        }
        if self
            .normalization
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(DataError::config(
                "transform.normalization.std",
                "every std must be a positive number",
            ));
        }
        Ok(())
    }

    /// Output `(width, height)` for an input of `width x height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.preset {
            Preset::None | Preset::CifarEval => (width, height),
            _ => (self.crop_size, self.crop_size),
        }
    }

    /// Transforms `img` into `out`, `3 * H * W` floats in `C x H x W` order,
    /// with `(W, H) = self.output_size(..)`. Random choices come from `rng`.
    /// The error says why the image cannot be transformed (too small).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        self.apply_inner(img, rng, out)
            .map_err(DecodeError::Invalid)
    }

    fn apply_inner<R: Rng + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<(), String> {
        let (ow, oh) = self.output_size(img.width, img.height);
        let need = 3 * ow as usize * oh as usize;
        if out.len() != need {
            return Err(format!(
                "output buffer has {} floats, the transform writes {need}",
                out.len()
            ));
        }
        let lut = self.normalization.lut();
        match self.preset {
            Preset::None | Preset::CifarEval => {
                write_chw(&img.data, ow as usize, oh as usize, false, &lut, out);
            }
            Preset::CifarTrain => self.pad_crop_flip(img, rng, &lut, out)?,
            Preset::ImagenetTrain | Preset::InaturalistTrain => {
                let (x, y, w, h) = random_resized_crop_box(img.width, img.height, rng);
                let size = self.crop_size as usize;
                let mut px = resample(
                    img,
                    (x, y, w, h),
                    (size, size),
                    (0, 0),
                    (size, size),
                    Filter::Bilinear,
                );
                let flip = rng.random_bool(0.5);
                if self.preset == Preset::ImagenetTrain {
                    color_jitter(&mut px, rng);
                }
                write_chw(&px, size, size, flip, &lut, out);
            }
            Preset::VitEval | Preset::SiglipEval => {
                let c = self.crop_size as usize;
                let filter = if self.preset == Preset::VitEval {
                    Filter::Bilinear
                } else {
                    Filter::Bicubic
                };
                let full = (0, 0, img.width, img.height);
                let px = resample(img, full, (c, c), (0, 0), (c, c), filter);
                write_chw(&px, c, c, false, &lut, out);
            }
            Preset::ImagenetEval
            | Preset::InaturalistEval
            | Preset::Dinov2Eval
            | Preset::ClipEval => {
                let filter = match self.preset {
                    Preset::Dinov2Eval | Preset::ClipEval => Filter::Bicubic,
                    _ => Filter::Bilinear,
                };
                let (rw, rh) = resized_shorter(img.width, img.height, self.resize_shorter);
                let c = self.crop_size as usize;
                let top = round_half_even((rh as f64 - c as f64) / 2.0) as usize;
                let left = round_half_even((rw as f64 - c as f64) / 2.0) as usize;
                let px = resample(
                    img,
                    (0, 0, img.width, img.height),
                    (rw as usize, rh as usize),
                    (left, top),
                    (c, c),
                    filter,
                );
                write_chw(&px, c, c, false, &lut, out);
            }
        }
        Ok(())
    }

    /// Convenience: transforms into a new vector (tests, examples).
    pub fn apply_to_vec<R: Rng + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
    ) -> Result<Vec<f32>, DecodeError> {
        let (w, h) = self.output_size(img.width, img.height);
        let mut out = vec![0f32; 3 * w as usize * h as usize];
        self.apply(img, rng, &mut out)?;
        Ok(out)
    }

    /// `RandomCrop(size, padding)` on a zero-padded image, then a flip, fused:
    /// padded pixels are read as 0 without building the padded image.
    fn pad_crop_flip<R: Rng + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        lut: &[[f32; 256]; 3],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (w, h) = (img.width as i64, img.height as i64);
        let p = self.padding as i64;
        let s = self.crop_size as i64;
        if w + 2 * p < s || h + 2 * p < s {
            return Err(format!(
                "{w}x{h} image is too small for a {s}x{s} crop with padding {p}"
            ));
        }
        // torchvision: i = randint(0, h - th + 1), j = randint(0, w - tw + 1).
        let oy = rng.random_range(0..=(h + 2 * p - s)) - p;
        let ox = rng.random_range(0..=(w + 2 * p - s)) - p;
        let flip = rng.random_bool(0.5);
        let plane = (s * s) as usize;
        for y in 0..s {
            let sy = y + oy;
            for x in 0..s {
                let xx = if flip { s - 1 - x } else { x };
                let sx = xx + ox;
                let o = (y * s + x) as usize;
                if sy < 0 || sy >= h || sx < 0 || sx >= w {
                    for c in 0..3 {
                        out[c * plane + o] = lut[c][0];
                    }
                } else {
                    let i = ((sy * w + sx) * 3) as usize;
                    for c in 0..3 {
                        out[c * plane + o] = lut[c][img.data[i + c] as usize];
                    }
                }
            }
        }
        Ok(())
    }
}

/// Python's `round` (half to even).
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 {
        2.0 * (v / 2.0).round()
    } else {
        r
    }
}

/// torchvision `Resize(shorter)`: the shorter side becomes `shorter`, the
/// longer `int(shorter * long / short)`.
fn resized_shorter(w: u32, h: u32, shorter: u32) -> (u32, u32) {
    if w <= h {
        (shorter, (shorter as u64 * h as u64 / w as u64) as u32)
    } else {
        ((shorter as u64 * w as u64 / h as u64) as u32, shorter)
    }
}

/// torchvision `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio
/// (3/4, 4/3): `(x, y, w, h)` of the crop.
fn random_resized_crop_box<R: Rng + ?Sized>(
    width: u32,
    height: u32,
    rng: &mut R,
) -> (u32, u32, u32, u32) {
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let (log_lo, log_hi) = (RRC_RATIO.0.ln(), RRC_RATIO.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(RRC_SCALE.0..RRC_SCALE.1);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        let w = (target_area * aspect).sqrt().round();
        let h = (target_area / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= w_img && h <= h_img {
            let (w, h) = (w as u32, h as u32);
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return (x, y, w, h);
        }
    }
    // Fallback: centre crop, clamped to the ratio range.
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < RRC_RATIO.0 {
        (width, (w_img / RRC_RATIO.0).round() as u32)
    } else if in_ratio > RRC_RATIO.1 {
        ((h_img * RRC_RATIO.1).round() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// PIL's resampling filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// Triangle, support 1.
    Bilinear,
    /// Cubic convolution with `a = -0.5`, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Resampling coefficients along one axis (PIL's `precompute_coeffs`): for
/// each output position, the first input index and the normalised weights.
struct Coeffs {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

/// Coefficients mapping `in_size` inputs onto `out_size` outputs, for the
/// outputs `out_from .. out_from + out_len` only (a fused crop).
fn coeffs(
    in_size: usize,
    out_size: usize,
    out_from: usize,
    out_len: usize,
    filter: Filter,
) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    // The filter's support, widened when downscaling.
    let support = filter.support() * filterscale;
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut c = Coeffs {
        start: Vec::with_capacity(out_len),
        len: Vec::with_capacity(out_len),
        weights: vec![0.0; out_len * stride],
        stride,
    };
    for (o, xx) in (out_from..out_from + out_len).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(stride);
        let k = &mut c.weights[o * stride..o * stride + n];
        let mut total = 0.0;
        let mut raw = [0f64; 64];
        let mut tmp = Vec::new();
        let buf: &mut [f64] = if n <= 64 {
            &mut raw[..n]
        } else {
            tmp.resize(n, 0.0);
            &mut tmp
        };
        for (x, w) in buf.iter_mut().enumerate() {
            let t = ((x + xmin) as f64 - center + 0.5) / filterscale;
            *w = filter.weight(t);
            total += *w;
        }
        for (dst, w) in k.iter_mut().zip(buf.iter()) {
            *dst = if total != 0.0 {
                (w / total) as f32
            } else {
                0.0
            };
        }
        c.start.push(xmin);
        c.len.push(n);
    }
    c
}

/// Resizes the `(x, y, w, h)` box of `img` to `out_size` with PIL's
/// antialiased `filter` and returns the `crop_size` window at
/// `crop_at` of the result, as interleaved 8-bit RGB. Only the pixels of the
/// window are computed.
fn resample(
    img: &RgbImage,
    (bx, by, bw, bh): (u32, u32, u32, u32),
    (out_w, out_h): (usize, usize),
    (cx, cy): (usize, usize),
    (cw, ch): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    let src_w = img.width as usize;
    let hc = coeffs(bw as usize, out_w, cx, cw, filter);
    let vc = coeffs(bh as usize, out_h, cy, ch, filter);
    // Bicubic weights overshoot: PIL clips the horizontal pass to 8 bits.
    let clip = |v: f32| {
        if filter == Filter::Bicubic {
            v.clamp(0.0, 255.0)
        } else {
            v
        }
    };
    let row_lo = vc.start.first().copied().unwrap_or(0);
    let row_hi = vc
        .start
        .iter()
        .zip(&vc.len)
        .map(|(s, l)| s + l)
        .max()
        .unwrap_or(0);
    // Horizontal pass over the source rows the vertical pass needs.
    let mut tmp = vec![0f32; (row_hi - row_lo) * cw * 3];
    for (r, y) in (row_lo..row_hi).enumerate() {
        let src_row = &img.data[((by as usize + y) * src_w + bx as usize) * 3..];
        let dst = &mut tmp[r * cw * 3..(r + 1) * cw * 3];
        for x in 0..cw {
            let k = &hc.weights[x * hc.stride..x * hc.stride + hc.len[x]];
            let s = &src_row[hc.start[x] * 3..];
            let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
            for (i, &w) in k.iter().enumerate() {
                a += s[i * 3] as f32 * w;
                b += s[i * 3 + 1] as f32 * w;
                c += s[i * 3 + 2] as f32 * w;
            }
            dst[x * 3] = clip(a);
            dst[x * 3 + 1] = clip(b);
            dst[x * 3 + 2] = clip(c);
        }
    }
    // Vertical pass, rounded to 8 bits as PIL's resize output is.
    let mut out = vec![0u8; cw * ch * 3];
    let mut acc = vec![0f32; cw * 3];
    for y in 0..ch {
        acc.iter_mut().for_each(|v| *v = 0.0);
        let k = &vc.weights[y * vc.stride..y * vc.stride + vc.len[y]];
        for (i, &w) in k.iter().enumerate() {
            let r = vc.start[y] + i - row_lo;
            let row = &tmp[r * cw * 3..(r + 1) * cw * 3];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v * w;
            }
        }
        for (o, &a) in out[y * cw * 3..(y + 1) * cw * 3].iter_mut().zip(&acc) {
            *o = (a + 0.5).floor().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// PIL's `Image.blend(degenerate, img, factor)` on 8 bits: `d + f * (p - d)`,
/// clamped and truncated.
#[inline]
fn blend(d: f32, p: u8, f: f32) -> u8 {
    (d + f * (p as f32 - d)).clamp(0.0, 255.0) as u8
}

/// PIL's RGB to L conversion (ITU-R 601-2 luma, fixed point, rounded).
#[inline]
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// torchvision `ColorJitter(0.4, 0.4, 0.4)` on interleaved RGB: factors drawn
/// in `[0.6, 1.4]`, the three adjustments applied in a random order.
fn color_jitter<R: Rng + ?Sized>(px: &mut [u8], rng: &mut R) {
    let mut order = [0usize, 1, 2];
    order.shuffle(rng);
    let lo = (1.0 - JITTER).max(0.0);
    let hi = 1.0 + JITTER;
    let factors: [f32; 3] = std::array::from_fn(|_| rng.random_range(lo..=hi) as f32);
    for op in order {
        adjust(px, op, factors[op]);
    }
}

/// One PIL `ImageEnhance` adjustment: 0 brightness, 1 contrast, 2 saturation
/// (`Color`), each a blend with a degenerate image.
fn adjust(px: &mut [u8], op: usize, f: f32) {
    match op {
        0 => px.iter_mut().for_each(|p| *p = blend(0.0, *p, f)),
        1 => {
            let n = (px.len() / 3).max(1) as f64;
            let sum: u64 = px
                .chunks_exact(3)
                .map(|c| luma(c[0], c[1], c[2]) as u64)
                .sum();
            let mean = (sum as f64 / n + 0.5).floor() as f32;
            px.iter_mut().for_each(|p| *p = blend(mean, *p, f));
        }
        _ => {
            for c in px.chunks_exact_mut(3) {
                let l = luma(c[0], c[1], c[2]) as f32;
                for v in c.iter_mut() {
                    *v = blend(l, *v, f);
                }
            }
        }
    }
}

/// Writes interleaved RGB (`w x h`) as normalised `C x H x W` floats,
/// mirrored left-right when `flip`.
fn write_chw(px: &[u8], w: usize, h: usize, flip: bool, lut: &[[f32; 256]; 3], out: &mut [f32]) {
    let plane = w * h;
    for y in 0..h {
        let row = &px[y * w * 3..(y + 1) * w * 3];
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let o = y * w + x;
            for c in 0..3 {
                out[c * plane + o] = lut[c][row[sx * 3 + c] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::sync::Arc;

    fn img(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                data.extend(f(x, y));
            }
        }
        RgbImage {
            width: w,
            height: h,
            data: Arc::from(data),
        }
    }

    fn rng(s: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(s)
    }

    #[test]
    fn presets_parse_by_name() {
        for p in [
            Preset::None,
            Preset::CifarTrain,
            Preset::CifarEval,
            Preset::ImagenetTrain,
            Preset::InaturalistTrain,
            Preset::ImagenetEval,
            Preset::InaturalistEval,
        ] {
            let json = format!("\"{}\"", p.name());
            assert_eq!(serde_json::from_str::<Preset>(&json).unwrap(), p);
        }
        let t: Transform = serde_json::from_str(r#"{"preset":"inaturalist_train"}"#).unwrap();
        assert_eq!(t, Transform::new(Preset::InaturalistTrain));
        assert_eq!(t.normalization, Normalization::inaturalist());
        let t: Transform = serde_json::from_str(
            r#"{"preset":"imagenet_eval","crop_size":112,"resize_shorter":128}"#,
        )
        .unwrap();
        assert_eq!((t.crop_size, t.resize_shorter), (112, 128));
        let back: Transform = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert!(
            serde_json::from_str::<Transform>(r#"{"preset":"imagenet_eval","crop":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Preset>("\"cifar\"").is_err());
        let mut bad = Transform::new(Preset::ImagenetEval);
        bad.resize_shorter = 100;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("resize_shorter"));
    }

    #[test]
    fn identity_and_normalisation() {
        let im = img(2, 1, |x, _| if x == 0 { [0, 255, 51] } else { [255, 0, 0] });
        let t = Transform::new(Preset::None);
        let v = t.apply_to_vec(&im, &mut rng(0)).unwrap();
        assert_eq!(v, vec![0.0, 1.0, 1.0, 0.0, 0.2, 0.0]);
        let c = Transform::new(Preset::CifarEval);
        let v = c.apply_to_vec(&im, &mut rng(0)).unwrap();
        assert!((v[0] - (0.0 - 0.4914) / 0.2023).abs() < 1e-6);
        assert!((v[2] - (1.0 - 0.4822) / 0.1994).abs() < 1e-6);
    }

    #[test]
    fn cifar_crop_is_a_shifted_window_with_zero_padding() {
        // Pixel value encodes position: R = x, G = y, B = 7.
        let im = img(32, 32, |x, y| [x as u8 + 1, y as u8 + 1, 7]);
        let t = Transform::new(Preset::CifarTrain).with_normalization(Normalization {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        });
        let mut seen_flip = [false; 2];
        let mut offsets = std::collections::HashSet::new();
        for s in 0..200 {
            let v = t.apply_to_vec(&im, &mut rng(s)).unwrap();
            let at = |c: usize, y: usize, x: usize| v[c * 1024 + y * 32 + x].round() as i32;
            // Find a pixel inside the image to infer the offset and flip.
            let (y, x) = (16, 16);
            let (r, g) = (at(0, y, x), at(1, y, x));
            assert!(r > 0 && g > 0);
            let flip = at(0, y, x + 1) < r;
            seen_flip[flip as usize] = true;
            let oy = g - 1 - y as i32;
            offsets.insert(oy);
            for yy in 0..32 {
                for xx in 0..32 {
                    let sy = yy as i32 + oy;
                    let expect_in = (0..32).contains(&sy);
                    let b = at(2, yy, xx);
                    if !expect_in {
                        assert_eq!(b, 0, "padding must be zero");
                    } else if at(0, yy, xx) != 0 {
                        assert_eq!(b, 7);
                        assert_eq!(at(1, yy, xx), sy + 1);
                    }
                }
            }
        }
        assert!(seen_flip[0] && seen_flip[1]);
        assert_eq!(offsets.len(), 9, "offsets -4..=4 all occur: {offsets:?}");
        let tiny = img(20, 20, |_, _| [0; 3]);
        assert!(t.apply_to_vec(&tiny, &mut rng(0)).is_err());
    }

    #[test]
    fn random_resized_crop_box_follows_torchvision() {
        let mut r = rng(3);
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let (x, y, w, h) = random_resized_crop_box(500, 375, &mut r);
            assert!(x + w <= 500 && y + h <= 375 && w > 0 && h > 0);
            let ratio = w as f64 / h as f64;
            assert!(ratio > 0.74 && ratio < 1.35, "{ratio}");
            areas.push((w * h) as f64 / (500.0 * 375.0));
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // E[scale] = 0.54 before rejection; rejection of too-wide crops lowers it a bit.
        assert!(mean > 0.4 && mean < 0.56, "{mean}");
        assert!(areas.iter().cloned().fold(1.0, f64::min) < 0.1);
        // A very wide image falls back to a centre crop clamped to ratio 4/3:
        // every attempt has h >= sqrt(0.08 * 10_000 * 3 / 4) > 10 and is
        // rejected, so the box is round(10 * 4 / 3) = 13 wide whatever the seed.
        for seed in 0..4 {
            let crop = random_resized_crop_box(1000, 10, &mut rng(seed));
            assert_eq!(crop, (493, 0, 13, 10), "seed {seed}");
        }
    }

    #[test]
    fn resize_matches_pil_on_simple_cases() {
        // A constant image stays constant under any resize.
        let c = img(37, 23, |_, _| [10, 200, 77]);
        let out = resample(
            &c,
            (0, 0, 37, 23),
            (16, 9),
            (0, 0),
            (16, 9),
            Filter::Bilinear,
        );
        assert!(out.chunks(3).all(|p| p == [10, 200, 77]));
        // 2x downscale of a ramp uses PIL's widened triangle (weights 1/8, 3/8,
        // 3/8, 1/8 inside, renormalised at the borders); PIL's own
        // `Image.resize((4, 1), BILINEAR)` of [0, 2, .., 14] gives [1, 5, 9, 13].
        let ramp = img(8, 1, |x, _| [(2 * x) as u8; 3]);
        let out = resample(
            &ramp,
            (0, 0, 8, 1),
            (4, 1),
            (0, 0),
            (4, 1),
            Filter::Bilinear,
        );
        let r: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(r, [1, 5, 9, 13]);
        // Upscaling 2x interpolates linearly between centres.
        let two = img(2, 1, |x, _| [(x * 100) as u8; 3]);
        let out = resample(&two, (0, 0, 2, 1), (4, 1), (0, 0), (4, 1), Filter::Bilinear);
        let r: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(r, [0, 25, 75, 100]);
        // A fused crop equals cropping the full resize.
        let im = img(50, 40, |x, y| [(x * 5) as u8, (y * 6) as u8, (x + y) as u8]);
        let full = resample(
            &im,
            (0, 0, 50, 40),
            (30, 24),
            (0, 0),
            (30, 24),
            Filter::Bilinear,
        );
        let part = resample(
            &im,
            (0, 0, 50, 40),
            (30, 24),
            (4, 3),
            (20, 16),
            Filter::Bilinear,
        );
        for y in 0..16 {
            for x in 0..20 {
                let a = &full[((y + 3) * 30 + x + 4) * 3..][..3];
                let b = &part[(y * 20 + x) * 3..][..3];
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn bicubic_resize_matches_pil() {
        // PIL 13's `Image.resize(size, BICUBIC)` of the same images.
        let row = |px: &[u8]| img(px.len() as u32, 1, |x, _| [px[x as usize]; 3]);
        let first = |out: Vec<u8>| out.chunks(3).map(|p| p[0]).collect::<Vec<u8>>();
        let ramp = row(&[0, 2, 4, 6, 8, 10, 12, 14]);
        let out = resample(&ramp, (0, 0, 8, 1), (4, 1), (0, 0), (4, 1), Filter::Bicubic);
        assert_eq!(first(out), [1, 5, 9, 13]);
        // Upscaling overshoots and is clipped to 8 bits.
        let edges = row(&[0, 250, 0, 250]);
        let out = resample(
            &edges,
            (0, 0, 4, 1),
            (7, 1),
            (0, 0),
            (7, 1),
            Filter::Bicubic,
        );
        assert_eq!(first(out), [0, 85, 246, 125, 4, 165, 255]);
        let im = img(9, 7, |x, y| [(10 * x + 3 * y) as u8; 3]);
        let out = resample(&im, (0, 0, 9, 7), (4, 3), (0, 0), (4, 3), Filter::Bicubic);
        assert_eq!(first(out), [9, 30, 54, 75, 16, 37, 61, 82, 23, 44, 68, 89]);
    }

    #[test]
    fn encoder_presets() {
        let t = Transform::new(Preset::ClipEval);
        assert_eq!((t.crop_size, t.resize_shorter), (224, 224));
        assert_eq!(t.normalization, Normalization::clip());
        assert_eq!(Transform::new(Preset::Dinov2Eval).resize_shorter, 256);
        for p in [
            Preset::VitEval,
            Preset::SiglipEval,
            Preset::ClipEval,
            Preset::Dinov2Eval,
        ] {
            let t = Transform::new(p);
            assert!(!p.is_random());
            assert_eq!(t.output_size(300, 200), (224, 224), "{}", p.name());
            let im = img(300, 200, |x, y| [(x % 256) as u8, (y % 256) as u8, 9]);
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            let v = t.apply_to_vec(&im, &mut rng).unwrap();
            assert_eq!(v.len(), 3 * 224 * 224);
        }
    }

    #[test]
    fn eval_resize_and_centre_crop() {
        assert_eq!(resized_shorter(500, 375, 256), (341, 256));
        assert_eq!(resized_shorter(375, 500, 256), (256, 341));
        assert_eq!(round_half_even(58.5), 58.0);
        assert_eq!(round_half_even(59.5), 60.0);
        assert_eq!(round_half_even(16.0), 16.0);
        // Left half black, right half white, 500x375: the centre crop of the
        // 341x256 resize is symmetric about the edge.
        let im = img(500, 375, |x, _| if x < 250 { [0; 3] } else { [255; 3] });
        let t = Transform::new(Preset::ImagenetEval).with_normalization(Normalization::identity());
        let v = t.apply_to_vec(&im, &mut rng(0)).unwrap();
        assert_eq!(v.len(), 3 * 224 * 224);
        let row: Vec<f32> = (0..224).map(|x| v[100 * 224 + x]).collect();
        assert_eq!(row[0], 0.0);
        assert_eq!(row[223], 1.0);
        let edge = row.iter().position(|&p| p > 0.5).unwrap();
        // Edge at 170.5 in the 341-wide resize, crop offset round(58.5) = 58.
        assert!((111..=113).contains(&edge), "{edge}");
        // Deterministic: no randomness in eval.
        assert_eq!(v, t.apply_to_vec(&im, &mut rng(9)).unwrap());
    }

    #[test]
    fn enhance_ops_match_pil() {
        // PIL 13: ImageEnhance.{Brightness, Contrast, Color}(im).enhance(f) on
        // a 5x4 RGB image (np.random.RandomState(2).randint(0, 256, (4, 5, 3))).
        let src: [u8; 60] = [
            168, 15, 237, 72, 22, 43, 210, 75, 104, 7, 162, 177, 95, 75, 213, 47, 63, 31, 218, 148,
            124, 116, 37, 167, 195, 102, 4, 170, 107, 51, 103, 38, 234, 33, 58, 124, 255, 67, 69,
            88, 196, 46, 198, 95, 211, 121, 31, 194, 80, 52, 238, 204, 50, 132, 218, 63, 207, 49,
            39, 255,
        ];
        let cases: [(usize, f32, [u8; 12]); 6] = [
            (
                0,
                1.3,
                [218, 19, 255, 93, 28, 55, 255, 97, 135, 9, 210, 230],
            ),
            (0, 0.65, [109, 9, 154, 46, 14, 27, 136, 48, 67, 4, 105, 115]),
            (
                1,
                0.7,
                [147, 40, 195, 80, 45, 60, 177, 82, 102, 34, 143, 153],
            ),
            (1, 1.37, [193, 0, 255, 61, 0, 21, 250, 65, 105, 0, 184, 205]),
            (2, 1.2, [184, 0, 255, 78, 18, 43, 228, 66, 101, 0, 171, 189]),
            (
                2,
                0.61,
                [136, 42, 178, 59, 28, 41, 174, 92, 109, 49, 144, 153],
            ),
        ];
        for (op, f, expect) in cases {
            let mut px = src.to_vec();
            adjust(&mut px, op, f);
            assert_eq!(&px[..12], &expect, "op {op} factor {f}");
        }
    }

    #[test]
    fn jitter_matches_pil_arithmetic() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(blend(0.0, 100, 1.3), 130);
        assert_eq!(blend(0.0, 250, 1.3), 255);
        assert_eq!(blend(50.0, 10, 1.4), 0);
        // A gray image is unchanged by saturation and contrast, scaled by brightness.
        let mut px = vec![100u8; 3 * 16];
        color_jitter(&mut px, &mut rng(1));
        assert!(px.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let v = px[0] as i32;
        assert!((60..=140).contains(&v), "{v}");
    }

    #[test]
    fn train_presets_are_seeded_and_vary() {
        let im = img(120, 90, |x, y| {
            [(x * 2) as u8, (y * 2) as u8, ((x + y) % 256) as u8]
        });
        for p in [Preset::ImagenetTrain, Preset::InaturalistTrain] {
            let t = Transform {
                crop_size: 56,
                ..Transform::new(p)
            };
            let a = t.apply_to_vec(&im, &mut rng(1)).unwrap();
            assert_eq!(a.len(), 3 * 56 * 56);
            assert_eq!(a, t.apply_to_vec(&im, &mut rng(1)).unwrap());
            assert_ne!(a, t.apply_to_vec(&im, &mut rng(2)).unwrap());
            assert!(a.iter().all(|v| v.is_finite()));
        }
        let t = Transform::new(Preset::CifarTrain);
        let mut wrong = vec![0f32; 10];
        assert!(t.apply(&im, &mut rng(0), &mut wrong).is_err());
    }
}
