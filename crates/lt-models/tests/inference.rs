//! Inference with batch norm folded into the convolutions against the
//! unfused eval-mode forward, with batch-norm parameters and statistics far
//! from their initial values so that a wrong fold shows.

mod common;

use candle_core::{Tensor, Var};
use common::{bits, randn, tvalues, values};
use lt_models::{Arch, Backbone, BnMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sets `v` to values drawn uniformly from `lo..hi` (times its current
/// values when `scale`).
fn perturb(v: &Var, rng: &mut ChaCha8Rng, lo: f32, hi: f32, scale: bool) {
    let old = values(v);
    let new: Vec<f32> = old
        .iter()
        .map(|&o| {
            let r = rng.random_range(lo..hi);
            if scale {
                o * r
            } else {
                o + r
            }
        })
        .collect();
    v.set(&Tensor::from_vec(new, v.shape(), v.device()).unwrap())
        .unwrap();
}

/// A backbone whose running statistics come from training-mode passes and
/// whose γ, β and statistics are then perturbed channel by channel.
fn trained_like(arch: Arch, size: usize, seed: u64) -> Backbone {
    let b = Backbone::new(arch, &candle_core::Device::Cpu, seed).unwrap();
    for i in 0..3 {
        b.forward_t(&randn((4, 3, size, size), seed + 100 + i), BnMode::Train)
            .unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, v) in b.parameters() {
        if v.rank() == 1 && name.ends_with(".weight") {
            perturb(&v, &mut rng, 0.5, 1.5, true);
        } else if v.rank() == 1 && name.ends_with(".bias") {
            perturb(&v, &mut rng, -0.2, 0.2, false);
        }
    }
    for (name, v) in b.buffers() {
        if name.ends_with("running_var") {
            perturb(&v, &mut rng, 0.5, 2.0, true);
        } else {
            perturb(&v, &mut rng, -0.2, 0.2, false);
        }
    }
    b
}

/// `max |a - b| / max |b|`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (tvalues(a), tvalues(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "features {scale}");
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn folded_inference_matches_the_unfused_eval_forward() {
    // CIFAR ResNet-32 with projection and zero-padding shortcuts, the basic
    // ImageNet ResNet, and the bottleneck ResNet-50 / ResNeXt-50 (grouped
    // 3x3 convs) at a small resolution.
    for (arch, size) in [
        (Arch::ResNet32, 32),
        (Arch::ResNet32Ldam, 32),
        (Arch::ResNet10, 48),
        (Arch::ResNet50, 64),
        (Arch::Resnext50_32x4d, 64),
    ] {
        let b = trained_like(arch, size, 7);
        let x = randn((3, 3, size, size), 11);
        let inference = b.inference().unwrap();
        assert!(inference.is_folded(), "{arch}");
        let got = inference.forward(&x).unwrap();
        let want = b.forward_t(&x, BnMode::Eval).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(!got.track_op());
        let d = rel_diff(&got, &want);
        assert!(d < 1e-4, "{arch}: relative difference {d}");
        // The one-call form and the frozen eval forward are the same path.
        let once = b.forward_inference(&x).unwrap();
        assert_eq!(bits(&tvalues(&once)), bits(&tvalues(&got)), "{arch}");
        let frozen = b.forward_frozen(&x, BnMode::Eval).unwrap();
        assert_eq!(bits(&tvalues(&frozen)), bits(&tvalues(&got)), "{arch}");
    }
}

#[test]
fn folding_is_a_snapshot_and_changes_nothing() {
    let b = trained_like(Arch::ResNet8, 32, 3);
    let x = randn((2, 3, 32, 32), 5);
    let before: Vec<(String, Vec<u32>)> = b
        .parameters()
        .into_iter()
        .chain(b.buffers())
        .map(|(n, v)| (n, bits(&values(&v))))
        .collect();
    let inference = b.inference().unwrap();
    let f0 = inference.forward(&x).unwrap();
    let after: Vec<(String, Vec<u32>)> = b
        .parameters()
        .into_iter()
        .chain(b.buffers())
        .map(|(n, v)| (n, bits(&values(&v))))
        .collect();
    assert_eq!(before, after, "folding modified the backbone");

    // New statistics reach a new snapshot, not the old one.
    let (_, var) = b
        .buffers()
        .into_iter()
        .find(|(n, _)| n == "layer1.0.bn1.running_var")
        .unwrap();
    var.set(&(var.as_tensor() * 4.0).unwrap()).unwrap();
    let stale = inference.forward(&x).unwrap();
    assert_eq!(bits(&tvalues(&stale)), bits(&tvalues(&f0)));
    let fresh = b.inference().unwrap().forward(&x).unwrap();
    let want = b.forward_t(&x, BnMode::Eval).unwrap();
    assert!(rel_diff(&fresh, &want) < 1e-4);
    assert!(
        rel_diff(&fresh, &f0) > 1e-3,
        "the statistics change was lost"
    );
}

#[test]
fn frozen_training_mode_is_not_folded() {
    // Stage 2's "shift learning": batch statistics, running statistics
    // updated, exactly the training-mode forward.
    let b = trained_like(Arch::ResNet8, 32, 4);
    let x = randn((4, 3, 32, 32), 6);
    let (_, mean) = b
        .buffers()
        .into_iter()
        .find(|(n, _)| n == "bn1.running_mean")
        .unwrap();
    let m0 = values(&mean);
    let frozen = b.forward_frozen(&x, BnMode::Train).unwrap();
    assert_ne!(
        bits(&values(&mean)),
        bits(&m0),
        "running statistics not updated"
    );
    assert!(!frozen.track_op());
    let train = b.forward_t(&x, BnMode::Train).unwrap();
    assert_eq!(bits(&tvalues(&frozen)), bits(&tvalues(&train)));
}
