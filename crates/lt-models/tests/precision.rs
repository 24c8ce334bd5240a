//! bf16 mixed precision: f32 variables and BN statistics, bf16 activations,
//! f32 features and gradients, and numbers close to the f32 forward pass.
//! Runs on the CPU (half convolutions computed in f32 and rounded); the GPU
//! tests run the same checks through cuDNN.

use candle_core::{DType, Device, Tensor};
use lt_models::{Arch, Backbone, BnMode, Precision};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Cosine similarity of two tensors of the same shape.
fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

#[test]
fn precision_parses_from_config_names() {
    let p: Precision = serde_json::from_str("\"bf16\"").unwrap();
    assert_eq!(p, Precision::Bf16);
    assert_eq!(p.compute_dtype(), DType::BF16);
    assert_eq!(Precision::default(), Precision::F32);
    assert!(serde_json::from_str::<Precision>("\"fp8\"").is_err());
}

#[test]
fn bf16_forward_and_backward_track_f32() {
    // Inputs large enough that every BN sees at least 32 values per channel:
    // batch statistics of a handful of values amplify any rounding.
    for (arch, n, size) in [(Arch::ResNet8, 4, 16), (Arch::ResNet10, 8, 64)] {
        let x = randn(3, &[n, 3, size, size]);
        let full = Backbone::new(arch, &Device::Cpu, 7).unwrap();
        let mut mixed = Backbone::new(arch, &Device::Cpu, 7).unwrap();
        mixed.set_precision(Precision::Bf16);
        assert_eq!(mixed.precision(), Precision::Bf16);

        let f_full = full.forward_t(&x, BnMode::Train).unwrap();
        let f_mixed = mixed.forward_t(&x, BnMode::Train).unwrap();
        assert_eq!(
            f_mixed.dtype(),
            DType::F32,
            "{arch:?}: features must be f32"
        );
        let err = max_rel_err(&f_mixed, &f_full);
        assert!(err < 0.05, "{arch:?}: bf16 features off by {err}");
        assert!(
            err > 0.0,
            "{arch:?}: bf16 path computed in f32 (no rounding at all)"
        );

        // Gradients reach every f32 variable and point the same way (bf16 keeps
        // 8 mantissa bits; BN bias gradients are sums that nearly cancel).
        let g_full = f_full.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_mixed = f_mixed
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for ((name, v_full), (_, v_mixed)) in full.parameters().iter().zip(mixed.parameters()) {
            let a = g_full.get(v_full.as_tensor()).unwrap();
            let b = g_mixed
                .get(v_mixed.as_tensor())
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name} under bf16"));
            assert_eq!(b.dtype(), DType::F32, "{name}");
            let c = cosine(b, a);
            assert!(
                c > 0.95,
                "{arch:?}: gradient of {name} has cosine {c} to f32"
            );
        }

        // The variables and running statistics stay f32 and moved alike.
        for ((name, a), (_, b)) in full.buffers().iter().zip(mixed.buffers()) {
            assert_eq!(b.dtype(), DType::F32, "{name}");
            let err = max_rel_err(b.as_tensor(), a.as_tensor());
            assert!(
                err < 0.05,
                "{arch:?}: running statistic {name} off by {err}"
            );
        }

        // Eval mode (running statistics) also runs in bf16.
        let e_full = full.forward_t(&x, BnMode::Eval).unwrap();
        let e_mixed = mixed.forward_t(&x, BnMode::Eval).unwrap();
        assert_eq!(e_mixed.dtype(), DType::F32);
        let err = max_rel_err(&e_mixed, &e_full);
        assert!(err < 0.05, "{arch:?}: bf16 eval features off by {err}");
    }
}
