//! Feature extraction and evaluation of logits.

use candle_core::{DType, Device, Tensor};
use lt_core::stats::{ClassStats, GroupRule};
use lt_data::loader::Loader;
use lt_heads::Classifier;
use lt_metrics::Evaluation;
use lt_models::{Backbone, BnMode};

use crate::dist::Dist;
use crate::experiment::sequential_batches;
use crate::progress;
use crate::TrainError;

/// Features of a whole split, in dataset order.
#[derive(Debug, Clone)]
pub struct Features {
    /// `(N, d)` f32 on the run's device.
    pub features: Tensor,
    /// Label of each row.
    pub labels: Vec<u32>,
}

impl Features {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels as a `u32` tensor on `device`.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor, TrainError> {
        Ok(Tensor::new(self.labels.as_slice(), device)?)
    }
}

/// Runs the backbone over every image of the loader's dataset, in order, with
/// BN in `mode` (normally [`BnMode::Eval`]). Every image must be readable: a
/// skipped image would misalign features and labels.
///
/// With several ranks ([`Dist`]) each rank runs its contiguous share of the
/// split ([`Dist::shard`]) and the rows are assembled on every rank by one
/// all-reduce of the zero-padded `(N, d)` matrix, so every rank ends with the
/// features of the whole split (and evaluation, NCM class means and the tau
/// sweep then agree on every rank).
pub fn extract_features(
    backbone: &Backbone,
    loader: &Loader,
    batch_size: usize,
    mode: BnMode,
    what: &str,
    dist: &Dist,
) -> Result<Features, TrainError> {
    let ds = loader.dataset().clone();
    let shard = dist.shard(ds.len());
    let batches: Vec<Vec<usize>> = sequential_batches(shard.len(), batch_size)
        .into_iter()
        .map(|b| b.into_iter().map(|i| i + shard.start).collect())
        .collect();
    // In eval mode the weights cannot change during the pass: batch norm is
    // folded into the convolutions once for the whole split.
    let inference = match mode {
        BnMode::Eval => Some(backbone.inference()?),
        BnMode::Train => None,
    };
    let bar = progress::bar(batches.len() as u64, what);
    let device = backbone.device().clone();
    let mut chunks = Vec::with_capacity(batches.len());
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    let mut expected = shard.start;
    for (batch, size) in loader.epoch(0, batches).zip(sizes) {
        let batch = batch?;
        // A skipped (unreadable) image would misalign features and labels.
        if !batch.indices.iter().copied().eq(expected..expected + size) {
            return Err(TrainError::Invalid(format!(
                "{what}: an image was skipped near dataset index {expected}; features need \
                 every image (set `data.on_unreadable = \"abort\"` to see which)"
            )));
        }
        expected += size;
        let images = batch.images.to_device(&device)?;
        let f = match &inference {
            Some(inference) => inference.forward(&images)?,
            None => backbone.forward_frozen(&images, mode)?,
        };
        chunks.push(f);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if expected != shard.end {
        return Err(TrainError::Invalid(format!(
            "{what}: {} of {} images were loaded",
            expected - shard.start,
            shard.len()
        )));
    }
    let d = backbone.feature_dim();
    let mut features = if chunks.is_empty() {
        Tensor::zeros((0, d), DType::F32, &device)?
    } else {
        Tensor::cat(&chunks, 0)?
    };
    if dist.is_distributed() {
        let dtype = features.dtype();
        let zeros = |rows: usize| Tensor::zeros((rows, d), dtype, &device);
        let padded = Tensor::cat(
            &[zeros(shard.start)?, features, zeros(ds.len() - shard.end)?],
            0,
        )?;
        features = dist.comm().all_reduce_tensor(&padded)?;
    }
    let labels = (0..ds.len()).map(|i| ds.label(i)).collect();
    Ok(Features { features, labels })
}

/// Logits of `head` on all features, computed in chunks, as a row-major host
/// vector `(N * C)`.
pub fn logits_host(
    head: &dyn Classifier,
    features: &Tensor,
    chunk: usize,
) -> Result<Vec<f32>, TrainError> {
    let n = features.dim(0)?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let f = features.narrow(0, start, len)?;
        let z = head.logits(&f)?.to_dtype(DType::F32)?;
        out.extend(z.flatten_all()?.to_vec1::<f32>()?);
        start += len;
    }
    Ok(out)
}

/// Mean cross-entropy of row-major logits (computed in f64 on the host).
/// Non-finite logits give a non-finite loss (and the evaluation then fails).
pub fn mean_cross_entropy(logits: &[f32], num_classes: usize, labels: &[u32]) -> f64 {
    if labels.is_empty() || num_classes == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(num_classes).zip(labels) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        total += lse - row[y as usize] as f64;
    }
    total / labels.len() as f64
}

/// Evaluates `head` on a feature set.
pub fn evaluate_head(
    head: &dyn Classifier,
    features: &Features,
    num_classes: usize,
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<(Evaluation, f64), TrainError> {
    if !features.features.device().is_cpu() {
        return evaluate_head_on_device(head, features, num_classes, train_stats, rule);
    }
    let logits = logits_host(head, &features.features, 4096)?;
    // One softmax pass for the loss and the confidences (the tau sweep
    // evaluates dozens of heads this way).
    Ok(lt_metrics::evaluate_with_loss(
        &logits,
        num_classes,
        &features.labels,
        train_stats,
        rule,
    )?)
}

/// A head's evaluation on a feature set with the prediction of every row.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Every metric.
    pub evaluation: Evaluation,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Predicted class of each row (the first index of the largest logit),
    /// so that any subset of the rows can be scored without new logits.
    pub predictions: Vec<u32>,
}

/// [`evaluate_head`], keeping every row's prediction.
pub fn evaluate_head_scored(
    head: &dyn Classifier,
    features: &Features,
    num_classes: usize,
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<Scored, TrainError> {
    if !features.features.device().is_cpu() {
        let (scores, loss) = device_scores(head, features)?;
        let evaluation =
            lt_metrics::evaluate_scores(&scores, num_classes, &features.labels, train_stats, rule)?;
        let predictions = scores.iter().map(|s| s.pred).collect();
        return Ok(Scored {
            evaluation,
            loss,
            predictions,
        });
    }
    let logits = logits_host(head, &features.features, 4096)?;
    let (evaluation, loss) =
        lt_metrics::evaluate_with_loss(&logits, num_classes, &features.labels, train_stats, rule)?;
    let predictions = lt_metrics::predictions(&logits, num_classes)?;
    Ok(Scored {
        evaluation,
        loss,
        predictions,
    })
}

/// [`evaluate_head`] for features on a GPU: logits, predictions, label ranks,
/// confidences and per-sample losses are computed on the device a chunk at a
/// time (`lt_metrics::device`), so only `N x 4` numbers reach the host, never
/// the `N x C` logits (which matters for a tau-norm sweep over ImageNet-LT or
/// iNaturalist). The metrics are those of the host path; the loss and the
/// confidences are computed in f32 instead of f64.
pub fn evaluate_head_on_device(
    head: &dyn Classifier,
    features: &Features,
    num_classes: usize,
    train_stats: &ClassStats,
    rule: &GroupRule,
) -> Result<(Evaluation, f64), TrainError> {
    let (scores, loss) = device_scores(head, features)?;
    let e = lt_metrics::evaluate_scores(&scores, num_classes, &features.labels, train_stats, rule)?;
    Ok((e, loss))
}

/// Per-row scores and the mean cross-entropy of `head`, computed on the
/// features' device a chunk at a time.
fn device_scores(
    head: &dyn Classifier,
    features: &Features,
) -> Result<(Vec<lt_metrics::SampleScore>, f64), TrainError> {
    const CHUNK: usize = 4096;
    let device = features.features.device().clone();
    let n = features.features.dim(0)?;
    let labels = features.labels_tensor(&device)?;
    let mut scores = Vec::with_capacity(n);
    let mut nll_sum = 0.0f64;
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let logits = head.logits(&features.features.narrow(0, start, len)?)?;
        let (s, nll) = lt_metrics::device::sample_scores(&logits, &labels.narrow(0, start, len)?)?;
        scores.extend(s);
        nll_sum += nll.iter().sum::<f64>();
        start += len;
    }
    Ok((scores, nll_sum / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path (run here on the CPU) gives the host path's metrics.
    #[test]
    fn device_evaluation_matches_the_host() {
        use lt_core::stats::GroupThresholds;
        let (n, d, c) = (5000, 6, 4);
        let f: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 97) as f32 / 30.0 - 1.5)
            .collect();
        let features = Features {
            features: Tensor::from_vec(f, (n, d), &Device::Cpu).unwrap(),
            labels: (0..n as u32).map(|i| (i * 5) % c as u32).collect(),
        };
        let w: Vec<f32> = (0..c * d)
            .map(|i| ((i * 31) % 11) as f32 / 5.0 - 1.0)
            .collect();
        let w = Tensor::from_vec(w, (c, d), &Device::Cpu).unwrap();
        let b = Tensor::zeros(c, DType::F32, &Device::Cpu).unwrap();
        let head = lt_heads::TauNormHead::new(&w, &b, 0.5, lt_heads::TauBias::Drop).unwrap();
        let stats = ClassStats::from_counts(vec![300, 60, 10, 3]);
        let rule = GroupRule::TrainCount(GroupThresholds::default());
        let (want, want_loss) = evaluate_head(&head, &features, c, &stats, &rule).unwrap();
        let (got, got_loss) = evaluate_head_on_device(&head, &features, c, &stats, &rule).unwrap();
        // The scored variant keeps the host's metrics and adds predictions.
        let scored = evaluate_head_scored(&head, &features, c, &stats, &rule).unwrap();
        assert_eq!(scored.evaluation, want);
        assert_eq!(scored.loss, want_loss);
        let logits = logits_host(&head, &features.features, 4096).unwrap();
        assert_eq!(
            scored.predictions,
            lt_metrics::predictions(&logits, c).unwrap()
        );
        // The shared softmax pass gives the separately computed loss and
        // metrics bit for bit.
        assert_eq!(
            want_loss.to_bits(),
            mean_cross_entropy(&logits, c, &features.labels).to_bits()
        );
        assert_eq!(
            want,
            lt_metrics::evaluate(&logits, c, &features.labels, &stats, &rule).unwrap()
        );
        assert_eq!(got.top1, want.top1);
        assert_eq!(got.top5, want.top5);
        assert_eq!(got.per_class, want.per_class);
        assert!((got.ece - want.ece).abs() < 1e-6);
        assert!(
            (got_loss - want_loss).abs() < 1e-5 * want_loss.abs(),
            "{got_loss} vs {want_loss}"
        );
    }

    #[test]
    fn cross_entropy_matches_candle() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
        let labels = [1u32, 0];
        let ours = mean_cross_entropy(&logits, 3, &labels);
        let t = Tensor::from_slice(&logits, (2, 3), &Device::Cpu).unwrap();
        let y = Tensor::new(&labels, &Device::Cpu).unwrap();
        let theirs = candle_nn::loss::cross_entropy(&t, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ours - theirs as f64).abs() < 1e-5, "{ours} vs {theirs}");
    }
}
