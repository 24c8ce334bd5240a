//! The nearest-class-mean (NCM) head.
//!
//! The centroids are class means of *training* features computed without
//! augmentation, with the backbone in eval mode (BN running statistics of
//! stage 1), as the reference does on `train_plain`. Computing those features is
//! the caller's job; this module only averages them.

use crate::vars::{check_features, check_shape, matrix_dims};
use crate::{Classifier, HeadError, NcmConfig, NcmDistance, NcmFeature};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Norms below this are clamped before dividing, so an all-zero (or, for
/// `cl2n`, exactly mean) feature maps to zero rather than NaN. The reference
/// divides unguarded; any feature with a non-zero norm is treated identically.
const NORM_EPS: f64 = 1e-12;

/// Feature values copied to the host at a time while fitting (4 MiB of f32).
const BLOCK_VALUES: usize = 1 << 20;

/// Name of the centroid tensor in saved files.
const CENTROIDS: &str = "centroids";
/// Name of the training feature mean in saved files.
const FEAT_MEAN: &str = "feat_mean";
/// Metadata key identifying the file kind.
const FORMAT_KEY: &str = "format";
/// Metadata value identifying an NCM file.
const FORMAT: &str = "lt-heads/ncm-v1";

/// Nearest class mean: `z_j = -||x - c_j||^2` (`l2`) or `x . c_j / d` (`cos`),
/// where `x` is the transformed query and `c_j` the mean of the transformed
/// training features of class `j` (not re-normalised after averaging).
#[derive(Debug, Clone)]
pub struct NcmHead {
    /// `(C, d)` class centroids in the transformed space.
    centroids: Tensor,
    /// `(d)` instance-weighted mean of all raw training features.
    feat_mean: Tensor,
    /// `(1, C)` squared centroid norms, cached for the `l2` score.
    centroid_sq: Tensor,
    config: NcmConfig,
}

impl NcmHead {
    /// Fits the centroids on training `features` `(N, d)` (f32) with `labels`.
    ///
    /// The mean `mu` used by `cl2n` is the mean over all `N` training features
    /// (each instance weighted equally, not a mean of class means). Sums are
    /// accumulated in f64: on the host for CPU features, on the device
    /// otherwise (a GPU: the features never leave it, only the `(C, d)` sums
    /// come back). The result lives on `features`' device.
    ///
    /// Fails when a label is not below `num_classes`, when a class has no
    /// feature, when the shapes disagree, or when a feature is NaN or infinite.
    pub fn fit(
        features: &Tensor,
        labels: &[u32],
        num_classes: usize,
        config: NcmConfig,
    ) -> Result<Self, HeadError> {
        let (n, d) = matrix_dims("NCM training features", features)?;
        if d == 0 {
            return Err(HeadError::ZeroSize {
                what: "feature dimension",
            });
        }
        if num_classes == 0 {
            return Err(HeadError::ZeroSize {
                what: "number of classes",
            });
        }
        if labels.len() != n {
            return Err(HeadError::LabelCount {
                labels: labels.len(),
                rows: n,
            });
        }
        if let Some((row, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(HeadError::LabelOutOfRange {
                row,
                label,
                num_classes,
            });
        }
        let mut counts = vec![0usize; num_classes];
        for &l in labels {
            counts[l as usize] += 1;
        }
        if let Some(class) = counts.iter().position(|&c| c == 0) {
            return Err(HeadError::EmptyClass { class });
        }

        let (mean, sums) = if features.device().is_cpu() {
            host_sums(features, labels, n, d, num_classes, config.feature)?
        } else {
            device_sums(features, labels, n, d, num_classes, config.feature)?
        };
        let centroids: Vec<f32> = sums
            .chunks_exact(d)
            .zip(&counts)
            .flat_map(|(sum, &count)| sum.iter().map(move |&s| (s / count as f64) as f32))
            .collect();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let device = features.device();
        let head = Self::from_parts(
            Tensor::from_vec(centroids, (num_classes, d), device)?,
            Tensor::from_vec(mean, d, device)?,
            config,
        )?;
        tracing::debug!(
            classes = num_classes,
            dim = d,
            samples = n,
            feature = %config.feature,
            distance = %config.distance,
            "fitted NCM centroids"
        );
        Ok(head)
    }

    /// A head from already computed `centroids` `(C, d)` (in the transformed
    /// space of `config.feature`) and training mean `feat_mean` `(d)`.
    pub fn from_parts(
        centroids: Tensor,
        feat_mean: Tensor,
        config: NcmConfig,
    ) -> Result<Self, HeadError> {
        let (c, d) = matrix_dims("NCM centroids", &centroids)?;
        if c == 0 || d == 0 {
            return Err(HeadError::ZeroSize {
                what: "centroid matrix dimension",
            });
        }
        check_shape("NCM feature mean", &feat_mean, &[d])?;
        let centroid_sq = centroids.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(Self {
            centroids,
            feat_mean,
            centroid_sq,
            config,
        })
    }

    /// Applies the configured feature transform to `features` `(N, d)`:
    /// the query side of the head.
    pub fn transform(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        check_features("NCM head", features, self.dim())?;
        match self.config.feature {
            NcmFeature::Un => Ok(features.clone()),
            NcmFeature::L2n => l2_normalise(features),
            NcmFeature::Cl2n => l2_normalise(&features.broadcast_sub(&self.feat_mean)?),
        }
    }

    /// Class centroids `(C, d)` in the transformed feature space.
    pub fn centroids(&self) -> &Tensor {
        &self.centroids
    }

    /// Instance-weighted mean `(d)` of the raw training features.
    pub fn feat_mean(&self) -> &Tensor {
        &self.feat_mean
    }

    /// Feature transform and score.
    pub fn config(&self) -> NcmConfig {
        self.config
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.centroids.dims()[0]
    }

    /// Feature dimension `d`.
    pub fn dim(&self) -> usize {
        self.centroids.dims()[1]
    }

    /// Writes the centroids, the training mean and the configuration to a
    /// safetensors file (tensors `centroids`, `feat_mean`; metadata
    /// `ncm_feature`, `ncm_distance`), through a temporary file renamed into place.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), HeadError> {
        let path = path.as_ref();
        let centroids = self.centroids.to_device(&Device::Cpu)?.contiguous()?;
        let mean = self.feat_mean.to_device(&Device::Cpu)?.contiguous()?;
        let metadata = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT.to_string()),
            (
                "ncm_feature".to_string(),
                self.config.feature.as_str().to_string(),
            ),
            (
                "ncm_distance".to_string(),
                self.config.distance.as_str().to_string(),
            ),
        ]);
        let bytes = safetensors::serialize(
            [(CENTROIDS, &centroids), (FEAT_MEAN, &mean)],
            Some(metadata),
        )
        .map_err(|e| HeadError::BadFile {
            path: path.to_path_buf(),
            reason: format!("cannot serialise NCM centroids: {e}"),
        })?;
        write_atomic(path, &bytes)
    }

    /// Reads a file written by [`NcmHead::save`] onto `device`.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, HeadError> {
        let path = path.as_ref();
        let bad = |reason: String| HeadError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| HeadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("metadata key `{key}` is missing")))
        };
        if get(FORMAT_KEY)? != FORMAT {
            return Err(bad(format!(
                "metadata `{FORMAT_KEY}` is `{}`, expected `{FORMAT}`",
                get(FORMAT_KEY)?
            )));
        }
        let config = NcmConfig {
            feature: get("ncm_feature")?
                .parse()
                .map_err(|e| bad(format!("metadata `ncm_feature`: {e}")))?,
            distance: get("ncm_distance")?
                .parse()
                .map_err(|e| bad(format!("metadata `ncm_distance`: {e}")))?,
        };
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))
        };
        let centroids = take(CENTROIDS)?;
        let feat_mean = take(FEAT_MEAN)?;
        if centroids.dtype() != DType::F32 || feat_mean.dtype() != DType::F32 {
            return Err(bad("tensors must be F32".to_string()));
        }
        Self::from_parts(centroids, feat_mean, config).map_err(|e| bad(e.to_string()))
    }
}

/// Instance mean `(d)` and class sums `(C * d)` of the transformed features,
/// in f64 on the host, streaming the features a block at a time.
fn host_sums(
    features: &Tensor,
    labels: &[u32],
    n: usize,
    d: usize,
    num_classes: usize,
    feature: NcmFeature,
) -> Result<(Vec<f64>, Vec<f64>), HeadError> {
    // First pass: the instance-weighted mean (and the finiteness check).
    let mut mean = vec![0f64; d];
    for_each_block(features, n, d, |first_row, block| {
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return Err(HeadError::NonFiniteFeature {
                row: first_row + i / d,
                col: i % d,
            });
        }
        for row in block.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        Ok(())
    })?;
    for m in &mut mean {
        *m /= n as f64;
    }

    // Second pass: class sums of the transformed features.
    let mut sums = vec![0f64; num_classes * d];
    let mut x = vec![0f64; d];
    for_each_block(features, n, d, |first_row, block| {
        for (row, &label) in block.chunks_exact(d).zip(&labels[first_row..]) {
            for (xi, &v) in x.iter_mut().zip(row) {
                *xi = f64::from(v);
            }
            transform_row(&mut x, &mean, feature);
            let sum = &mut sums[label as usize * d..(label as usize + 1) * d];
            for (s, &xi) in sum.iter_mut().zip(&x) {
                *s += xi;
            }
        }
        Ok(())
    })?;
    Ok((mean, sums))
}

/// [`host_sums`] on the features' device (a GPU): the same f64 sums with
/// candle ops (class sums by `index_add`), a block of rows at a time, so the
/// features never leave the device; only the `(C, d)` sums come back.
fn device_sums(
    features: &Tensor,
    labels: &[u32],
    n: usize,
    d: usize,
    num_classes: usize,
    feature: NcmFeature,
) -> Result<(Vec<f64>, Vec<f64>), HeadError> {
    let dev = features.device();
    let rows = (BLOCK_VALUES / d).max(1);
    let block = |start: usize| -> candle_core::Result<Tensor> {
        features
            .narrow(0, start, rows.min(n - start))?
            .to_dtype(DType::F64)
    };
    let mut total = Tensor::zeros(d, DType::F64, dev)?;
    let mut start = 0;
    while start < n {
        let x = block(start)?;
        // `0 * x` is NaN exactly where x is not finite.
        let bad: f64 = x.affine(0.0, 0.0)?.sum_all()?.to_scalar()?;
        if bad != 0.0 {
            // Name the offending value as the host path does.
            host_sums(features, labels, n, d, num_classes, feature)?;
        }
        total = (total + x.sum(0)?)?;
        start += rows;
    }
    let mean = (total / n as f64)?;
    let mut sums = Tensor::zeros((num_classes, d), DType::F64, dev)?;
    let mut start = 0;
    while start < n {
        let mut x = block(start)?;
        let len = x.dim(0)?;
        if feature == NcmFeature::Cl2n {
            x = x.broadcast_sub(&mean)?;
        }
        if feature != NcmFeature::Un {
            x = l2_normalise(&x)?;
        }
        let idx = Tensor::from_slice(&labels[start..start + len], len, dev)?;
        sums = sums.index_add(&idx, &x, 0)?;
        start += len;
    }
    let mean = mean.to_vec1::<f64>()?;
    let sums = sums.flatten_all()?.to_vec1::<f64>()?;
    Ok((mean, sums))
}

/// Calls `f(first_row, values)` on consecutive row blocks of the `(n, d)`
/// tensor, copied to the host a few MiB at a time so that fitting on a large
/// training set never holds a second full copy of the features.
fn for_each_block(
    features: &Tensor,
    n: usize,
    d: usize,
    mut f: impl FnMut(usize, &[f32]) -> Result<(), HeadError>,
) -> Result<(), HeadError> {
    let rows = (BLOCK_VALUES / d).max(1);
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let block = features
            .narrow(0, start, len)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        f(start, &block)?;
        start += len;
    }
    Ok(())
}

/// Applies `feature` to one raw feature row in place (host side of [`NcmHead::fit`]).
fn transform_row(x: &mut [f64], mean: &[f64], feature: NcmFeature) {
    if feature == NcmFeature::Cl2n {
        for (xi, &m) in x.iter_mut().zip(mean) {
            *xi -= m;
        }
    }
    if feature != NcmFeature::Un {
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(NORM_EPS);
        for xi in x.iter_mut() {
            *xi /= norm;
        }
    }
}

/// Row-wise `x / max(||x||, eps)` on the tensor's device.
fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(NORM_EPS)?;
    x.broadcast_div(&norm)
}

/// Writes `bytes` to a sibling temporary file, then renames it over `path`, so
/// that a crash never leaves a half-written file under the final name.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HeadError> {
    let io = |source| HeadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().ok_or_else(|| HeadError::BadFile {
        path: path.to_path_buf(),
        reason: "not a file path".to_string(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl Classifier for NcmHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.transform(features)?;
        let xc = x.matmul(&self.centroids.t()?)?;
        match self.config.distance {
            // -(||x||^2 + ||c||^2 - 2 x.c), expanded as the reference computes it.
            NcmDistance::L2 => {
                let xx = x.sqr()?.sum_keepdim(1)?;
                let dist = xx.broadcast_add(&self.centroid_sq)?.sub(&(xc * 2.0)?)?;
                dist.neg()
            }
            NcmDistance::Cos => xc / self.dim() as f64,
        }
    }

    /// Only NCM on raw features (`feature = "un"`) with the dot-product
    /// score (`distance = "cos"`) is linear: `z_j = f . c_j / d`.
    fn fold(&self) -> candle_core::Result<crate::Fold> {
        let why = match (self.config.feature, self.config.distance) {
            (NcmFeature::Un, NcmDistance::Cos) => {
                let w = (&self.centroids / self.dim() as f64)?;
                return Ok(crate::Fold::Linear(crate::LinearLayer::without_bias(&w)?));
            }
            (NcmFeature::L2n | NcmFeature::Cl2n, _) => format!(
                "NCM with feature = \"{}\" normalises each feature vector (f / ||f||), which no \
                 linear layer of the features does",
                self.config.feature
            ),
            (NcmFeature::Un, NcmDistance::L2) => "NCM with distance = \"l2\" has the term \
                 -||f||^2 in every logit, which differs from image to image (only \
                 feature = \"un\" with distance = \"cos\" is linear)"
                .to_string(),
        };
        Ok(crate::Fold::Refused(why))
    }
}

impl Module for NcmHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path (run here on the CPU) gives the host path's sums, for
    /// every feature transform, across several blocks, and names a
    /// non-finite feature the same way.
    #[test]
    fn device_sums_equal_host_sums() {
        let (n, d, c) = (BLOCK_VALUES / 8 * 2 + 37, 8, 5);
        let values: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 4.0)
            .collect();
        let features = Tensor::from_vec(values, (n, d), &Device::Cpu).unwrap();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 13) % c as u32).collect();
        for feature in [NcmFeature::Un, NcmFeature::L2n, NcmFeature::Cl2n] {
            let (hm, hs) = host_sums(&features, &labels, n, d, c, feature).unwrap();
            let (dm, ds) = device_sums(&features, &labels, n, d, c, feature).unwrap();
            for (a, b) in hm.iter().zip(&dm).chain(hs.iter().zip(&ds)) {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{feature:?}: {a} vs {b}"
                );
            }
        }
        let mut bad: Vec<f32> = features.flatten_all().unwrap().to_vec1().unwrap();
        bad[3 * d + 2] = f32::INFINITY;
        let bad = Tensor::from_vec(bad, (n, d), &Device::Cpu).unwrap();
        match device_sums(&bad, &labels, n, d, c, NcmFeature::L2n) {
            Err(HeadError::NonFiniteFeature { row: 3, col: 2 }) => {}
            other => panic!("expected the non-finite feature at (3, 2), got {other:?}"),
        }
    }
}
