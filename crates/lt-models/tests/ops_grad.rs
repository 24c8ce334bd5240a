//! Gradient checks of the CPU kernels in `lt_models::ops`: against candle's
//! own ops (`ops::reference`, f32) and against central finite differences of
//! the reference computed in f64.

use candle_core::{DType, Device, Result, Tensor, Var};
use lt_models::ops::{self, reference, Conv2dParams, Epilogue};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max |a - b| over max(|b|) (plus a floor so all-zero tensors compare).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Output and input gradients of `sum(f(inputs) * r)` for a fixed random `r`.
fn value_and_grads(
    inputs: &[Tensor],
    seed: u64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let r = randn(y.dims(), seed).to_dtype(y.dtype()).unwrap();
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = ts
        .iter()
        .map(|t| grads.get(t).expect("missing gradient").clone())
        .collect();
    (y, g)
}

/// Compares the kernel `ours` with `reference` (values and gradients) in
/// f32, then the kernel's gradients with f64 central differences of the
/// reference at up to `probes` coordinates per input.
fn check_op(
    what: &str,
    inputs: &[Tensor],
    probes: usize,
    ours: impl Fn(&[Tensor]) -> Result<Tensor>,
    refr: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let seed = 99;
    let (y, g) = value_and_grads(inputs, seed, &ours);
    let (y_ref, g_ref) = value_and_grads(inputs, seed, &refr);
    assert_close(&format!("{what}: forward"), &y, &y_ref, 1e-5);
    for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
        assert_close(&format!("{what}: grad of input {i}"), a, b, 1e-4);
    }
    // Finite differences of L(inputs) = sum(refr(inputs) * r) in f64.
    let x64: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64).unwrap())
        .collect();
    let r = randn(y.dims(), seed).to_dtype(DType::F64).unwrap();
    let loss = |xs: &[Tensor]| -> f64 {
        let y = refr(xs).unwrap();
        (&y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-4;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (i, gi) in g.iter().enumerate() {
        let base: Vec<f64> = x64[i].flatten_all().unwrap().to_vec1().unwrap();
        let gi = to_vec(gi);
        let scale = gi.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3) as f64;
        let coords: Vec<usize> = if base.len() <= probes {
            (0..base.len()).collect()
        } else {
            (0..probes)
                .map(|_| rng.random_range(0..base.len()))
                .collect()
        };
        for k in coords {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                let mut xs = x64.clone();
                xs[i] = Tensor::from_vec(v, x64[i].dims(), &Device::Cpu).unwrap();
                loss(&xs)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (f64::from(gi[k]) - fd).abs() / scale;
            assert!(
                err < 1e-3,
                "{what}: input {i} coord {k}: analytic {} vs finite difference {fd} (rel {err:e})",
                gi[k]
            );
        }
    }
}

/// `(stride, padding, groups)`.
fn geom(stride: usize, padding: usize, groups: usize) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        groups,
    }
}

fn conv_case(
    n: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    k: (usize, usize),
    p: Conv2dParams,
) {
    let Conv2dParams {
        stride,
        padding,
        groups,
    } = p;
    let x = randn(&[n, cin, hw.0, hw.1], 1);
    let w = (randn(&[cout, cin / groups, k.0, k.1], 2) * 0.3).unwrap();
    let what = format!(
        "conv2d n{n} c{cin}->{cout} {}x{} k{}x{} s{stride} p{padding} g{groups}",
        hw.0, hw.1, k.0, k.1
    );
    check_op(
        &what,
        &[x, w],
        24,
        |t| ops::conv2d(&t[0], &t[1], p),
        |t| reference::conv2d(&t[0], &t[1], p),
    );
}

#[test]
fn conv2d_dense_matches_reference_and_finite_differences() {
    conv_case(2, 4, (7, 7), 6, (3, 3), geom(1, 1, 1));
    conv_case(3, 4, (8, 8), 8, (3, 3), geom(2, 1, 1));
    conv_case(1, 3, (11, 9), 4, (7, 7), geom(2, 3, 1));
    conv_case(1, 2, (3, 3), 2, (3, 3), geom(1, 0, 1));
    // Non-square kernel at stride 1 only: candle's own backward (the oracle)
    // assumes the same output padding along both axes.
    conv_case(2, 3, (6, 5), 5, (2, 3), geom(1, 0, 1));
    conv_case(2, 3, (7, 7), 5, (2, 2), geom(3, 0, 1));
}

#[test]
fn conv2d_pointwise_matches_reference_and_finite_differences() {
    conv_case(2, 8, (5, 5), 8, (1, 1), geom(1, 0, 1));
    conv_case(2, 8, (6, 6), 16, (1, 1), geom(2, 0, 1));
    conv_case(1, 4, (3, 5), 6, (1, 1), geom(1, 0, 2));
    conv_case(1, 4, (4, 4), 4, (1, 1), geom(1, 1, 1));
}

#[test]
fn conv2d_grouped_matches_reference_and_finite_differences() {
    conv_case(2, 8, (6, 6), 8, (3, 3), geom(1, 1, 2));
    conv_case(2, 16, (5, 5), 16, (3, 3), geom(2, 1, 4));
    conv_case(2, 32, (4, 4), 64, (3, 3), geom(1, 1, 32));
    conv_case(1, 64, (5, 3), 64, (3, 3), geom(2, 1, 32));
}

#[test]
fn conv2d_accepts_non_contiguous_input() {
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let x = randn(&[3, 5, 4, 2], 3).transpose(0, 1).unwrap(); // (5, 3, 4, 2) strided
    let w = randn(&[4, 3, 3, 3], 4);
    assert!(!x.is_contiguous());
    let y = ops::conv2d(&x, &w, p).unwrap();
    let y_ref = reference::conv2d(&x.contiguous().unwrap(), &w, p).unwrap();
    assert_close("strided conv2d", &y, &y_ref, 1e-5);
}

#[test]
fn conv2d_rejects_bad_shapes_with_an_error() {
    let p = Conv2dParams {
        stride: 1,
        padding: 0,
        groups: 3,
    };
    let x = randn(&[1, 4, 5, 5], 1);
    let w = randn(&[6, 1, 3, 3], 2);
    let err = ops::conv2d(&x, &w, p).unwrap_err().to_string();
    assert!(err.contains("groups"), "{err}");
    let p = Conv2dParams::default();
    let w = randn(&[6, 4, 7, 7], 2);
    assert!(ops::conv2d(&x, &w, p).is_err());
}

#[test]
fn other_dtypes_take_the_reference_path() {
    let p = Conv2dParams {
        stride: 2,
        padding: 1,
        groups: 2,
    };
    let x = randn(&[2, 4, 5, 5], 1).to_dtype(DType::F64).unwrap();
    let w = randn(&[4, 2, 3, 3], 2).to_dtype(DType::F64).unwrap();
    let y = ops::conv2d(&x, &w, p).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let y_ref = reference::conv2d(&x, &w, p).unwrap();
    assert_close("f64 conv2d", &y, &y_ref, 0.0);
}

#[test]
fn max_pool2d_matches_reference_and_finite_differences() {
    for (n, c, h, w, k, s, p) in [
        (2, 3, 9, 9, 3, 2, 1),
        (1, 2, 8, 6, 2, 2, 0),
        (2, 2, 5, 7, 3, 1, 1),
        (1, 1, 4, 4, 3, 2, 1),
    ] {
        let x = randn(&[n, c, h, w], 5);
        check_op(
            &format!("max_pool2d {n}x{c}x{h}x{w} k{k} s{s} p{p}"),
            &[x],
            32,
            |t| ops::max_pool2d(&t[0], k, s, p),
            |t| reference::max_pool2d(&t[0], k, s, p),
        );
    }
}

#[test]
fn max_pool2d_rejects_oversized_padding() {
    let x = randn(&[1, 1, 6, 6], 5);
    assert!(ops::max_pool2d(&x, 3, 2, 2).is_err());
}

fn bn_params(c: usize, seed: u64) -> (Tensor, Tensor) {
    let w = randn(&[c], seed).affine(0.5, 1.0).unwrap();
    let b = (randn(&[c], seed + 1) * 0.5).unwrap();
    (w, b)
}

#[test]
fn batch_norm_train_matches_reference_and_finite_differences() {
    let eps = 1e-5;
    for (n, c, h, w) in [(4, 3, 5, 5), (1, 2, 3, 7), (3, 5, 1, 1)] {
        // An offset mean checks the variance is computed without cancellation.
        let x = randn(&[n, c, h, w], 11).affine(2.0, 3.0).unwrap();
        let (g, b) = bn_params(c, 12);
        check_op(
            &format!("batch_norm_train {n}x{c}x{h}x{w}"),
            &[x.clone(), g.clone(), b.clone()],
            24,
            |t| Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], eps, Epilogue::None)?.0),
            |t| Ok(reference::batch_norm_train(&t[0], &t[1], &t[2], eps, Epilogue::None)?.0),
        );
        let (_, mean, var) = ops::batch_norm_train(&x, &g, &b, eps, Epilogue::None).unwrap();
        let (_, mean_ref, var_ref) =
            reference::batch_norm_train(&x, &g, &b, eps, Epilogue::None).unwrap();
        assert_close("batch mean", &mean, &mean_ref, 1e-5);
        assert_close("batch variance", &var, &var_ref, 1e-5);
    }
}

#[test]
fn batch_norm_train_relu_matches_reference_and_finite_differences() {
    let eps = 1e-5;
    let x = randn(&[3, 4, 5, 3], 21);
    let (g, b) = bn_params(4, 22);
    check_op(
        "batch_norm_train relu",
        &[x, g, b],
        24,
        |t| Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], eps, Epilogue::Relu)?.0),
        |t| Ok(reference::batch_norm_train(&t[0], &t[1], &t[2], eps, Epilogue::Relu)?.0),
    );
}

#[test]
fn batch_norm_train_add_relu_matches_reference_and_finite_differences() {
    let eps = 1e-5;
    let x = randn(&[2, 3, 4, 5], 31);
    let r = randn(&[2, 3, 4, 5], 32);
    let (g, b) = bn_params(3, 33);
    check_op(
        "batch_norm_train add_relu",
        &[x.clone(), r.clone(), g.clone(), b.clone()],
        24,
        |t| Ok(ops::batch_norm_train(&t[0], &t[2], &t[3], eps, Epilogue::AddRelu(&t[1]))?.0),
        |t| Ok(reference::batch_norm_train(&t[0], &t[2], &t[3], eps, Epilogue::AddRelu(&t[1]))?.0),
    );
    let (_, m, v) = ops::batch_norm_train(&x, &g, &b, eps, Epilogue::AddRelu(&r)).unwrap();
    let (_, m_ref, v_ref) = reference::batch_norm_train(&x, &g, &b, eps, Epilogue::None).unwrap();
    assert_close("fused mean", &m, &m_ref, 1e-5);
    assert_close("fused variance", &v, &v_ref, 1e-5);
}

#[test]
fn batch_norm_eval_variants_match_reference() {
    let eps = 1e-5;
    let x = randn(&[2, 3, 4, 4], 41);
    let r = randn(&[2, 3, 4, 4], 42);
    let (g, b) = bn_params(3, 43);
    let rm = randn(&[3], 44);
    let rv = (randn(&[3], 45).abs().unwrap() + 0.5).unwrap();
    // The running statistics follow the dtype of the other operands, so the
    // same closure serves the f32 comparison and the f64 finite differences.
    let stats = |t: &Tensor| {
        (
            rm.to_dtype(t.dtype()).unwrap(),
            rv.to_dtype(t.dtype()).unwrap(),
        )
    };
    let refr = |t: &[Tensor], epilogue: Epilogue<'_>| {
        let (rm, rv) = stats(&t[0]);
        reference::batch_norm_eval(&t[0], &t[1], &t[2], &rm, &rv, eps, epilogue)
    };
    check_op(
        "batch_norm_eval",
        &[x.clone(), g.clone(), b.clone()],
        24,
        |t| ops::batch_norm_eval(&t[0], &t[1], &t[2], &rm, &rv, eps, Epilogue::None),
        |t| refr(t, Epilogue::None),
    );
    check_op(
        "batch_norm_eval relu",
        &[x.clone(), g.clone(), b.clone()],
        24,
        |t| ops::batch_norm_eval(&t[0], &t[1], &t[2], &rm, &rv, eps, Epilogue::Relu),
        |t| refr(t, Epilogue::Relu),
    );
    let without_residual = |t: &[Tensor]| [t[0].clone(), t[2].clone(), t[3].clone()];
    check_op(
        "batch_norm_eval add_relu",
        &[x, r, g, b],
        24,
        |t| ops::batch_norm_eval(&t[0], &t[2], &t[3], &rm, &rv, eps, Epilogue::AddRelu(&t[1])),
        |t| refr(&without_residual(t), Epilogue::AddRelu(&t[1])),
    );
}

#[test]
fn add_relu_matches_reference_and_finite_differences() {
    let a = randn(&[2, 3, 4, 5], 51);
    let b = randn(&[2, 3, 4, 5], 52);
    check_op(
        "add_relu",
        &[a, b],
        32,
        |t| ops::add_relu(&t[0], &t[1]),
        |t| reference::add_relu(&t[0], &t[1]),
    );
}

#[test]
fn max_pool2d_gives_ties_to_the_first_maximum_and_reference_splits_them() {
    let x =
        Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let grad = |y: Tensor| to_vec(y.backward().unwrap().get(x.as_tensor()).unwrap());
    let ours = grad(ops::max_pool2d(x.as_tensor(), 2, 2, 0).unwrap());
    assert_eq!(ours, vec![1.0, 0.0, 0.0, 0.0]);
    // `with_reference_ops` really switches path: candle's composition shares
    // the gradient among tied maxima.
    let shared = grad(ops::with_reference_ops(|| ops::max_pool2d(x.as_tensor(), 2, 2, 0)).unwrap());
    assert!(shared.iter().all(|&g| g > 0.0 && g < 1.0), "{shared:?}");
    assert!((shared.iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn conv2d_handles_kernels_larger_than_the_image() {
    // Deep layers of an ImageNet ResNet on small inputs see 1x1 and 2x2 maps.
    conv_case(2, 8, (1, 1), 8, (3, 3), geom(1, 1, 1));
    conv_case(1, 4, (2, 2), 8, (3, 3), geom(1, 1, 1));
    conv_case(1, 3, (3, 3), 4, (7, 7), geom(2, 3, 1));
    conv_case(2, 8, (1, 1), 16, (3, 3), geom(2, 1, 2));
}

#[test]
fn conv2d_batch_norm_variants_match_reference_and_finite_differences() {
    let eps = 1e-5;
    // (n, c_in, h, w, c_out, k, stride, padding, groups): direct-kernel and
    // im2col shapes, strided, grouped, pointwise, batch 1.
    for (n, ci, h, w, co, k, s, pad, groups) in [
        (2, 4, 6, 6, 8, 3, 1, 1, 1),
        (3, 3, 7, 5, 6, 3, 2, 1, 1),
        (1, 8, 5, 5, 8, 1, 1, 0, 2),
        (2, 8, 6, 6, 16, 3, 1, 1, 2),
    ] {
        let p = geom(s, pad, groups);
        let x = randn(&[n, ci, h, w], 61);
        let wt = (randn(&[co, ci / groups, k, k], 62) * 0.3).unwrap();
        let (g, b) = bn_params(co, 63);
        let what = |v: &str| format!("{v} n{n} c{ci}->{co} {h}x{w} k{k} s{s} p{pad} g{groups}");
        let inputs = [x.clone(), wt.clone(), g.clone(), b.clone()];
        check_op(
            &what("conv2d_batch_norm_train"),
            &inputs,
            16,
            |t| {
                let e = Epilogue::None;
                Ok(ops::conv2d_batch_norm_train(&t[0], &t[1], p, &t[2], &t[3], eps, e)?.0)
            },
            |t| {
                let e = Epilogue::None;
                Ok(reference::conv2d_batch_norm_train(&t[0], &t[1], p, &t[2], &t[3], eps, e)?.0)
            },
        );
        check_op(
            &what("conv2d_batch_norm_train relu"),
            &inputs,
            16,
            |t| {
                let e = Epilogue::Relu;
                Ok(ops::conv2d_batch_norm_train(&t[0], &t[1], p, &t[2], &t[3], eps, e)?.0)
            },
            |t| {
                let e = Epilogue::Relu;
                Ok(reference::conv2d_batch_norm_train(&t[0], &t[1], p, &t[2], &t[3], eps, e)?.0)
            },
        );
        let y_dims = ops::conv2d(&x, &wt, p).unwrap().dims().to_vec();
        let r = randn(&y_dims, 64);
        check_op(
            &what("conv2d_batch_norm_train add_relu"),
            &[x.clone(), wt.clone(), r.clone(), g.clone(), b.clone()],
            16,
            |t| {
                let e = Epilogue::AddRelu(&t[2]);
                Ok(ops::conv2d_batch_norm_train(&t[0], &t[1], p, &t[3], &t[4], eps, e)?.0)
            },
            |t| {
                let e = Epilogue::AddRelu(&t[2]);
                Ok(reference::conv2d_batch_norm_train(&t[0], &t[1], p, &t[3], &t[4], eps, e)?.0)
            },
        );
        let (_, m, v) =
            ops::conv2d_batch_norm_train(&x, &wt, p, &g, &b, eps, Epilogue::Relu).unwrap();
        let (_, m_ref, v_ref) =
            reference::conv2d_batch_norm_train(&x, &wt, p, &g, &b, eps, Epilogue::None).unwrap();
        assert_close("fused conv mean", &m, &m_ref, 1e-4);
        assert_close("fused conv variance", &v, &v_ref, 1e-4);
    }
}

#[test]
fn conv2d_batch_norm_skips_the_gradient_of_an_untracked_input() {
    // An image batch is a plain tensor: only the parameters get gradients.
    let x = randn(&[2, 3, 5, 5], 71);
    let w = Var::from_tensor(&randn(&[8, 3, 3, 3], 72)).unwrap();
    let (g, b) = bn_params(8, 73);
    let (g, b) = (Var::from_tensor(&g).unwrap(), Var::from_tensor(&b).unwrap());
    let p = geom(1, 1, 1);
    let (w_, g_, b_) = (w.as_tensor(), g.as_tensor(), b.as_tensor());
    let (y, _, _) = ops::conv2d_batch_norm_train(&x, w_, p, g_, b_, 1e-5, Epilogue::Relu).unwrap();
    let grads = (&y * &randn(y.dims(), 74))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    for v in [&w, &g, &b] {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}
