//! GPU tests: the CUDA ops and mixed precision against the CPU kernels.
//!
//! They run in a build with `--features cuda` on a machine with an NVIDIA GPU
//! (`.ci/gpu-check.sh` runs them there); anywhere else every test passes
//! after printing why it did not run. cuDNN may use TF32 for f32
//! convolutions (as PyTorch does by default), hence tolerances of ~1e-2
//! relative for f32 and ~3e-2 for bf16.

use candle_core::{DType, Device, Tensor, Var};
use lt_models::ops::{self, Conv2dParams, Epilogue};
use lt_models::{Arch, Backbone, BnMode, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// The first CUDA device, or `None` after printing why there is none.
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

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (host(a), host(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f64, |m, x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

/// (input shape, weight shape, params): dense, strided, grouped (ResNeXt),
/// projection and stem convolutions.
fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let p = |stride, padding, groups| Conv2dParams {
        stride,
        padding,
        groups,
    };
    vec![
        ([8, 16, 16, 16], [32, 16, 3, 3], p(1, 1, 1)),
        ([8, 16, 15, 15], [32, 16, 3, 3], p(2, 1, 1)),
        ([4, 128, 14, 14], [128, 4, 3, 3], p(1, 1, 32)),
        ([4, 128, 14, 14], [128, 4, 3, 3], p(2, 1, 32)),
        ([4, 64, 14, 14], [128, 64, 1, 1], p(2, 0, 1)),
        ([2, 3, 64, 64], [16, 3, 7, 7], p(2, 3, 1)),
    ]
}

#[test]
fn cudnn_conv_forward_and_backward_match_the_cpu_kernels() {
    let Some(dev) = gpu("cudnn_conv") else { return };
    for (i, (xs, ws, p)) in conv_cases().into_iter().enumerate() {
        let x = randn(i as u64, &xs);
        let w = randn(100 + i as u64, &ws);
        let run = |dev: &Device, dtype: DType| {
            let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
            let wv = Var::from_tensor(&w.to_device(dev).unwrap()).unwrap();
            let y = ops::conv2d(
                &xv.as_tensor().to_dtype(dtype).unwrap(),
                &wv.as_tensor().to_dtype(dtype).unwrap(),
                p,
            )
            .unwrap();
            // A fixed, non-uniform upstream gradient: sum(y * r).
            let r = randn(7, y.dims()).to_device(dev).unwrap();
            let loss = (y.to_dtype(DType::F32).unwrap() * r)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let dx = g.get(xv.as_tensor()).unwrap().clone();
            let dw = g.get(wv.as_tensor()).unwrap().clone();
            (y, dx, dw)
        };
        let (y0, dx0, dw0) = run(&Device::Cpu, DType::F32);
        for (dtype, tol) in [(DType::F32, 1e-2), (DType::BF16, 3e-2)] {
            let (y, dx, dw) = run(&dev, dtype);
            assert!(y.device().is_cuda());
            for (what, a, b) in [("y", &y, &y0), ("dx", &dx, &dx0), ("dw", &dw, &dw0)] {
                let e = rel_err(a, b);
                assert!(
                    e < tol,
                    "case {i} {xs:?} {ws:?} {p:?} {dtype:?}: {what} off by {e}"
                );
            }
        }
    }
}

#[test]
fn cuda_max_pool_matches_the_cpu_kernel_bit_for_bit() {
    let Some(dev) = gpu("cuda_max_pool") else {
        return;
    };
    // Quantised values make ties common; first-maximum semantics must agree.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v: Vec<f32> = (0..2 * 8 * 17 * 17)
        .map(|_| rng.random_range(0..6) as f32)
        .collect();
    let x = Tensor::from_vec(v, (2, 8, 17, 17), &Device::Cpu).unwrap();
    let run = |dev: &Device| {
        let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
        let y = ops::max_pool2d(xv.as_tensor(), 3, 2, 1).unwrap();
        let r = randn(9, y.dims()).to_device(dev).unwrap();
        let g = (y.clone() * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (y, g.get(xv.as_tensor()).unwrap().clone())
    };
    let (y0, dx0) = run(&Device::Cpu);
    let (y1, dx1) = run(&dev);
    assert_eq!(host(&y1), host(&y0));
    // Each input's gradient is a sum of at most four terms, in the same
    // order on both sides.
    assert!(rel_err(&dx1, &dx0) < 1e-6);
}

/// Loss of a few SGD steps of ResNet-8 + linear head on `dev`.
fn resnet8_losses(dev: &Device, precision: Precision, steps: usize) -> Vec<f32> {
    let mut backbone = Backbone::new(Arch::ResNet8, dev, 11).unwrap();
    backbone.set_precision(precision);
    let fc = Var::from_tensor(
        &(randn(1, &[10, backbone.feature_dim()]) * 0.1)
            .unwrap()
            .to_device(dev)
            .unwrap(),
    )
    .unwrap();
    let mut vars: Vec<Var> = backbone.parameters().into_iter().map(|(_, v)| v).collect();
    vars.push(fc.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut losses = Vec::new();
    for step in 0..steps {
        let x = randn(50 + step as u64, &[16, 3, 16, 16])
            .to_device(dev)
            .unwrap();
        let y: Vec<u32> = (0..16).map(|_| rng.random_range(0..10)).collect();
        let y = Tensor::from_vec(y, 16, dev).unwrap();
        let f = backbone.forward_t(&x, BnMode::Train).unwrap();
        let logits = f.matmul(&fc.as_tensor().t().unwrap()).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        losses.push(
            loss.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        let g = loss.backward().unwrap();
        for v in &vars {
            let grad = g.get(v.as_tensor()).unwrap();
            v.set(&(v.as_tensor() - (grad * 0.05).unwrap()).unwrap())
                .unwrap();
        }
    }
    losses
}

#[test]
fn resnet8_trains_the_same_on_gpu_and_cpu() {
    let Some(dev) = gpu("resnet8_trajectory") else {
        return;
    };
    let cpu = resnet8_losses(&Device::Cpu, Precision::F32, 5);
    let f32_gpu = resnet8_losses(&dev, Precision::F32, 5);
    let bf16_gpu = resnet8_losses(&dev, Precision::Bf16, 5);
    for (i, ((c, g), b)) in cpu.iter().zip(&f32_gpu).zip(&bf16_gpu).enumerate() {
        assert!(
            (c - g).abs() / c.abs() < 1e-2,
            "step {i}: cpu {c} vs gpu f32 {g}"
        );
        assert!(
            (c - b).abs() / c.abs() < 5e-2,
            "step {i}: cpu {c} vs gpu bf16 {b}"
        );
    }
}

#[test]
fn resnext_bf16_features_track_f32_on_gpu() {
    let Some(dev) = gpu("resnext_bf16") else {
        return;
    };
    let x = randn(5, &[8, 3, 64, 64]).to_device(&dev).unwrap();
    let full = Backbone::new(Arch::Resnext50_32x4d, &dev, 2).unwrap();
    let mut mixed = Backbone::new(Arch::Resnext50_32x4d, &dev, 2).unwrap();
    mixed.set_precision(Precision::Bf16);
    let a = full.forward_t(&x, BnMode::Eval).unwrap();
    let b = mixed.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(b.dtype(), DType::F32);
    let e = rel_err(&b, &a);
    assert!(e < 5e-2, "bf16 ResNeXt-50 features off by {e}");
}

#[test]
fn cuda_batch_norm_matches_the_cpu_kernels() {
    let Some(dev) = gpu("cuda_batch_norm") else {
        return;
    };
    let shape = [8, 16, 9, 9];
    let x = randn(20, &shape).affine(3.0, 1.5).unwrap();
    let r = randn(21, &shape);
    let gamma = randn(22, &[16]).affine(0.2, 1.0).unwrap();
    let beta = randn(23, &[16]);
    // 0: bn, 1: relu(bn), 2: relu(bn + r)
    for epilogue in 0..3 {
        let run = |dev: &Device, dtype: DType, x: &Tensor, r: &Tensor| {
            let vars: Vec<Var> = [x, r, &gamma, &beta]
                .iter()
                .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
                .collect();
            let xt = vars[0].as_tensor().to_dtype(dtype).unwrap();
            let rt = vars[1].as_tensor().to_dtype(dtype).unwrap();
            let (g, b) = (vars[2].as_tensor(), vars[3].as_tensor());
            let e = match epilogue {
                0 => Epilogue::None,
                1 => Epilogue::Relu,
                _ => Epilogue::AddRelu(&rt),
            };
            let (y, mean, var) = ops::batch_norm_train(&xt, g, b, 1e-5, e).unwrap();
            let w = randn(24, &shape).to_device(dev).unwrap();
            let loss = (y.to_dtype(DType::F32).unwrap() * w)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let mut out = vec![y, mean, var];
            for (i, v) in vars.iter().enumerate() {
                match grads.get(v.as_tensor()) {
                    Some(g) => out.push(g.clone()),
                    None => assert!(i == 1 && epilogue != 2, "no gradient for input {i}"),
                }
            }
            out
        };
        // The bf16 reference is the f32 CPU kernel on the bf16-rounded
        // inputs: against the unrounded ones, rounding alone moves the ReLU
        // mask of a few near-zero outputs, and each flipped entry moves the
        // input gradient by about gamma * invstd * dy, 0.44 of its largest
        // entry here (measured on the CPU kernel alone), which a max-norm
        // error cannot tell from a wrong kernel.
        let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let (xb, rb) = (round(&x).unwrap(), round(&r).unwrap());
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
            let want = match dtype {
                DType::BF16 => run(&Device::Cpu, DType::F32, &xb, &rb),
                _ => run(&Device::Cpu, DType::F32, &x, &r),
            };
            let got = run(&dev, dtype, &x, &r);
            assert_eq!(got.len(), want.len());
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                let e = rel_err(a, b);
                assert!(
                    e < tol,
                    "epilogue {epilogue} {dtype:?}: output {k} off by {e}"
                );
            }
        }
    }
}
