//! Batch-norm semantics: batch statistics, PyTorch running-statistics update
//! (momentum 0.1, unbiased variance) and eval with running statistics.

mod common;

use candle_core::{Device, Tensor};
use common::{randn, tvalues, values};
use lt_models::ops::{self, Conv2dParams};
use lt_models::{Arch, Backbone, BatchNorm2d, BnMode, ModelError, BN_EPS};

/// Per-channel mean and biased variance of an `(N, C, H, W)` tensor, in f64.
fn channel_stats(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (n, c, h, w) = x.dims4().unwrap();
    let v = tvalues(x);
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..h * w).map(move |j| (i, j)))
            .map(|(i, j)| v[(i * c + ch) * h * w + j] as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        mean[ch] = m;
        var[ch] = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
    }
    (mean, var)
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn train_mode_normalises_and_updates_running_stats() {
    let bn = BatchNorm2d::new("bn", 3, &Device::Cpu).unwrap();
    // Non-trivial affine parameters.
    bn.weight()
        .set(&Tensor::new(&[0.5f32, 2.0, -1.0], &Device::Cpu).unwrap())
        .unwrap();
    bn.bias()
        .set(&Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu).unwrap())
        .unwrap();
    let x1 = (randn((4, 3, 5, 5), 1) * 3.0)
        .unwrap()
        .affine(1.0, 2.0)
        .unwrap();
    let x2 = randn((2, 3, 3, 4), 2);
    let (m1, v1) = channel_stats(&x1);
    let (m2, v2) = channel_stats(&x2);
    let (n1, n2) = (100.0, 24.0);

    let y = bn.forward_t(&x1, BnMode::Train).unwrap();
    // y = (x - mean) / sqrt(var_biased + eps) * gamma + beta.
    let (gamma, beta) = ([0.5, 2.0, -1.0], [0.1, -0.2, 0.3]);
    let xv = tvalues(&x1);
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / 25) % 3;
            (x as f64 - m1[c]) / (v1[c] + BN_EPS).sqrt() * gamma[c] + beta[c]
        })
        .collect();
    assert_close(&tvalues(&y), &want, 1e-5, "y");

    // running = 0.9 * running + 0.1 * batch, with the unbiased variance.
    let rm1: Vec<f64> = m1.iter().map(|m| 0.1 * m).collect();
    let rv1: Vec<f64> = v1.iter().map(|v| 0.9 + 0.1 * v * n1 / (n1 - 1.0)).collect();
    assert_close(
        &values(bn.running_mean()),
        &rm1,
        1e-5,
        "running_mean after 1",
    );
    assert_close(&values(bn.running_var()), &rv1, 1e-5, "running_var after 1");

    bn.forward_t(&x2, BnMode::Train).unwrap();
    let rm2: Vec<f64> = rm1
        .iter()
        .zip(&m2)
        .map(|(r, m)| 0.9 * r + 0.1 * m)
        .collect();
    let rv2: Vec<f64> = rv1
        .iter()
        .zip(&v2)
        .map(|(r, v)| 0.9 * r + 0.1 * v * n2 / (n2 - 1.0))
        .collect();
    assert_close(
        &values(bn.running_mean()),
        &rm2,
        1e-5,
        "running_mean after 2",
    );
    assert_close(&values(bn.running_var()), &rv2, 1e-5, "running_var after 2");
}

#[test]
fn eval_mode_uses_running_stats() {
    let dev = Device::Cpu;
    let bn = BatchNorm2d::new("bn", 2, &dev).unwrap();
    bn.weight()
        .set(&Tensor::new(&[1.5f32, 0.5], &dev).unwrap())
        .unwrap();
    bn.bias()
        .set(&Tensor::new(&[0.0f32, 1.0], &dev).unwrap())
        .unwrap();
    bn.running_mean()
        .set(&Tensor::new(&[2.0f32, -1.0], &dev).unwrap())
        .unwrap();
    bn.running_var()
        .set(&Tensor::new(&[4.0f32, 0.25], &dev).unwrap())
        .unwrap();
    let x = randn((3, 2, 4, 4), 3);
    let y = bn.forward_t(&x, BnMode::Eval).unwrap();
    let xv = tvalues(&x);
    let (g, b, rm, rv) = ([1.5, 0.5], [0.0, 1.0], [2.0, -1.0], [4.0, 0.25]);
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / 16) % 2;
            (x as f64 - rm[c]) / (rv[c] + BN_EPS).sqrt() * g[c] + b[c]
        })
        .collect();
    assert_close(&tvalues(&y), &want, 1e-5, "eval y");
    // Running statistics untouched; per-sample outputs independent of the batch.
    assert_eq!(values(bn.running_mean()), [2.0, -1.0]);
    assert_eq!(values(bn.running_var()), [4.0, 0.25]);
    let y0 = bn
        .forward_t(&x.narrow(0, 0, 1).unwrap(), BnMode::Eval)
        .unwrap();
    assert_eq!(tvalues(&y0), tvalues(&y.narrow(0, 0, 1).unwrap()));
}

#[test]
fn single_value_per_channel_is_an_error_in_train_mode() {
    let bn = BatchNorm2d::new("layer9.bn", 4, &Device::Cpu).unwrap();
    let x = randn((1, 4, 1, 1), 0);
    let err = bn.forward_t(&x, BnMode::Train).unwrap_err();
    assert!(matches!(err, ModelError::BatchTooSmall { .. }));
    assert!(err.to_string().contains("layer9.bn"), "{err}");
    assert_eq!(values(bn.running_var()), [1.0; 4], "no update on error");
    assert!(bn.forward_t(&x, BnMode::Eval).is_ok());
}

#[test]
fn names_and_vars() {
    let bn = BatchNorm2d::new("layer1.0.bn2", 8, &Device::Cpu).unwrap();
    assert_eq!(bn.channels(), 8);
    let names: Vec<String> = bn.named_vars().iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        [
            "layer1.0.bn2.weight",
            "layer1.0.bn2.bias",
            "layer1.0.bn2.running_mean",
            "layer1.0.bn2.running_var"
        ]
    );
}

/// The model wires its stem BN to the stem conv output: after one training
/// forward pass, `bn1`'s running statistics are 0.1 x the batch statistics
/// of `conv1(x)` (plus 0.9 x the initial 0 / 1).
#[test]
fn model_stem_bn_update_matches_formula() {
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 4).unwrap();
    let vars = b.store().named_vars();
    let get = |name: &str| vars.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let x = randn((3, 3, 8, 8), 6);
    let stem = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let z = ops::conv2d(&x, get("conv1.weight").as_tensor(), stem).unwrap();
    let (mean, var) = channel_stats(&z);
    let n = (3 * 8 * 8) as f64;
    b.forward_t(&x, BnMode::Train).unwrap();
    let rm: Vec<f64> = mean.iter().map(|m| 0.1 * m).collect();
    let rv: Vec<f64> = var.iter().map(|v| 0.9 + 0.1 * v * n / (n - 1.0)).collect();
    assert_close(
        &values(&get("bn1.running_mean")),
        &rm,
        1e-4,
        "bn1.running_mean",
    );
    assert_close(
        &values(&get("bn1.running_var")),
        &rv,
        1e-4,
        "bn1.running_var",
    );
}

/// The fused forms equal their compositions and update the running
/// statistics exactly as the plain form does.
#[test]
fn fused_relu_and_add_relu_match_compositions() {
    let dev = Device::Cpu;
    let x = randn((2, 4, 6, 6), 30);
    let r = randn((2, 4, 6, 6), 31);
    for mode in [BnMode::Train, BnMode::Eval] {
        let make = || {
            let bn = BatchNorm2d::new("bn", 4, &dev).unwrap();
            let g = Tensor::new(&[1.0f32, -0.5, 2.0, 0.3], &dev).unwrap();
            bn.weight().set(&g).unwrap();
            bn.running_var()
                .set(&(g.abs().unwrap() + 0.2).unwrap())
                .unwrap();
            bn
        };
        let (plain, relu, add) = (make(), make(), make());
        let y = plain.forward_t(&x, mode).unwrap();
        let want_relu = tvalues(&y.relu().unwrap());
        let want_add = tvalues(&(&y + &r).unwrap().relu().unwrap());
        let got_relu = tvalues(&relu.forward_relu_t(&x, mode).unwrap());
        let got_add = tvalues(&add.forward_add_relu_t(&x, &r, mode).unwrap());
        let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        assert_close(&got_relu, &to64(want_relu), 1e-5, "relu");
        assert_close(&got_add, &to64(want_add), 1e-5, "add_relu");
        for other in [&relu, &add] {
            let want = to64(values(plain.running_mean()));
            assert_close(&values(other.running_mean()), &want, 1e-6, "running_mean");
            let want = to64(values(plain.running_var()));
            assert_close(&values(other.running_var()), &want, 1e-6, "running_var");
        }
    }
}
