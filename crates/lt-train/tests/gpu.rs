//! GPU tests of stage-2 heads and evaluation on the device holding the
//! features: NCM fitted on the GPU, tau-norm logits, and the per-sample
//! scores behind every metric, each against the CPU.
//!
//! They run in a `--features cuda` build on a machine with an NVIDIA GPU
//! (`.ci/gpu-check.sh`); elsewhere each test passes after printing why it did
//! not run.

use candle_core::{DType, Device, Tensor};
use lt_core::stats::{ClassStats, GroupRule, GroupThresholds};
use lt_heads::{Classifier, NcmConfig, NcmDistance, NcmFeature, NcmHead, TauBias, TauNormHead};
use lt_metrics::device::sample_scores;

fn gpu(test: &str) -> Option<Device> {
    if !cfg!(feature = "cuda") {
        eprintln!("{test}: skipped: built without the `cuda` feature");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("{test}: skipped: no usable CUDA device ({e})");
            None
        }
    }
}

/// Deterministic pseudo-random features `(n, d)` with class-dependent means.
fn features(n: usize, d: usize, c: usize) -> (Tensor, Vec<u32>) {
    let mut state = 99u64;
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % c as u32).collect();
    let v: Vec<f32> = (0..n * d)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((state >> 40) % 1000) as f32 / 500.0 - 1.0;
            noise + (labels[i / d] as usize == i % d % c) as u32 as f32 * 2.0
        })
        .collect();
    (Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap(), labels)
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn ncm_fits_on_the_gpu_as_on_the_cpu() {
    let Some(dev) = gpu("ncm_gpu") else { return };
    let (f, labels) = features(3000, 64, 10);
    for feature in [NcmFeature::Un, NcmFeature::L2n, NcmFeature::Cl2n] {
        let config = NcmConfig {
            feature,
            distance: NcmDistance::L2,
        };
        let cpu = NcmHead::fit(&f, &labels, 10, config).unwrap();
        let g = NcmHead::fit(&f.to_device(&dev).unwrap(), &labels, 10, config).unwrap();
        assert!(g.centroids().device().is_cuda());
        let d = max_abs_diff(&host(g.centroids()), &host(cpu.centroids()));
        assert!(d < 1e-5, "{feature:?}: centroids differ by {d}");
        let lc = host(&cpu.logits(&f).unwrap());
        let lg = host(&g.logits(&f.to_device(&dev).unwrap()).unwrap());
        assert!(max_abs_diff(&lg, &lc) < 1e-3, "{feature:?}: logits differ");
    }
}

#[test]
fn tau_norm_and_metrics_run_on_the_gpu() {
    let Some(dev) = gpu("tau_norm_gpu") else {
        return;
    };
    let (f, labels) = features(2000, 32, 8);
    let (w, _) = features(8, 32, 8);
    let b = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let stats = ClassStats::from_counts(vec![400, 300, 200, 100, 60, 30, 15, 5]);
    let rule = GroupRule::TrainCount(GroupThresholds::default());
    for tau in [0.0, 0.5, 1.0] {
        let cpu = TauNormHead::new(&w, &b, tau, TauBias::Drop).unwrap();
        let wd = w.to_device(&dev).unwrap();
        let g = TauNormHead::new(&wd, &b.to_device(&dev).unwrap(), tau, TauBias::Drop).unwrap();
        let lc = cpu.logits(&f).unwrap();
        let lg = g.logits(&f.to_device(&dev).unwrap()).unwrap();
        assert!(lg.device().is_cuda());
        let want = lt_metrics::evaluate(&host(&lc), 8, &labels, &stats, &rule).unwrap();
        let y = Tensor::from_slice(&labels, labels.len(), &dev).unwrap();
        let (scores, nll) = sample_scores(&lg, &y).unwrap();
        let got = lt_metrics::evaluate_scores(&scores, 8, &labels, &stats, &rule).unwrap();
        assert_eq!(got.top1, want.top1, "tau {tau}");
        assert_eq!(got.per_class, want.per_class, "tau {tau}");
        assert!((got.ece - want.ece).abs() < 1e-4, "tau {tau}");
        assert!(nll.iter().all(|v| v.is_finite()));
    }
}
