//! `resnet32_ldam`: the CIFAR ResNet-32 of LDAM-DRW's `models/resnet_cifar.py`
//! (zero-padding "option A" shortcut, `kaiming_normal_` fan-in init), and the
//! zero-padding shortcut op behind it.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{bits, randn, tvalues, values};
use lt_models::ops::{self, reference};
use lt_models::{
    Arch, ArchConfig, Backbone, BnMode, CifarResNet, CifarResNetConfig, ConvInit, ModelError,
    Shortcut,
};
use std::collections::BTreeSet;

/// The reference model's trainable parameters, layer by layer: bias-free
/// 3x3 convs, BN with weight and bias, and no parameters in the shortcut.
fn ldam_resnet32_backbone_count() -> usize {
    let conv = |c_in: usize, c_out: usize| c_in * c_out * 9;
    let bn = |c: usize| 2 * c;
    // Stem: conv1 3 -> 16, bn1.
    let mut n = conv(3, 16) + bn(16);
    let mut c_in = 16;
    for planes in [16, 32, 64] {
        for _ in 0..5 {
            n += conv(c_in, planes) + bn(planes) + conv(planes, planes) + bn(planes);
            c_in = planes;
        }
    }
    n
}

#[test]
fn parameter_count_matches_the_reference() {
    // 432 + 32 (stem) + 5 * 4,672 (stage 1) + (13,952 + 4 * 18,560) (stage 2)
    // + (55,552 + 4 * 73,984) (stage 3).
    assert_eq!(ldam_resnet32_backbone_count(), 463_504);
    let b = Backbone::new(Arch::ResNet32Ldam, &Device::Cpu, 0).unwrap();
    assert_eq!(b.num_parameters(), 463_504);
    // With LDAM-DRW's 100-class linear layer (64 x 100 + 100): 0.47M, the
    // count the papers give for ResNet-32 on CIFAR-100.
    let with_fc = b.num_parameters() + 64 * 100 + 100;
    assert_eq!(with_fc, 470_004);
    assert_eq!((with_fc as f64 / 1e4).round() / 100.0, 0.47);
    // The projection variant has 16*32 + 2*32 and 32*64 + 2*64 more.
    let ours = Backbone::new(Arch::ResNet32, &Device::Cpu, 0).unwrap();
    assert_eq!(ours.num_parameters() - b.num_parameters(), 576 + 2_176);
}

#[test]
fn arch_switch_names_and_config() {
    let arch: Arch = serde_json::from_str("\"resnet32_ldam\"").unwrap();
    assert_eq!(arch, Arch::ResNet32Ldam);
    assert_eq!("resnet32_ldam".parse::<Arch>().unwrap(), arch);
    assert_eq!("ResNet32-LDAM".parse::<Arch>().unwrap(), arch);
    assert_eq!(arch.to_string(), "resnet32_ldam");
    assert!(Arch::ALL.contains(&arch));
    assert!(arch.is_cifar());
    assert_eq!(arch.feature_dim(), 64);
    let ArchConfig::Cifar(c) = arch.config() else {
        panic!("not a CIFAR config");
    };
    assert_eq!(c, CifarResNetConfig::ldam_drw(32));
    assert_eq!(c.depth(), 32);
    assert_eq!((c.shortcut, c.init), (Shortcut::ZeroPad, ConvInit::FanIn));
    assert_eq!(c.widths, [16, 32, 64]);
    // The default ResNet-32 keeps the projection and fan-out init.
    let d = CifarResNetConfig::from_depth(32);
    assert_eq!(
        (d.shortcut, d.init),
        (Shortcut::Projection, ConvInit::FanOut)
    );
    assert_eq!(CifarResNetConfig::default(), d);
    // Serde names of the two switches.
    assert_eq!(
        serde_json::to_string(&Shortcut::ZeroPad).unwrap(),
        "\"zero_pad\""
    );
    assert_eq!(
        serde_json::from_str::<Shortcut>("\"projection\"").unwrap(),
        Shortcut::Projection
    );
    assert_eq!(
        serde_json::to_string(&ConvInit::FanIn).unwrap(),
        "\"fan_in\""
    );
    assert_eq!(
        serde_json::from_str::<ConvInit>("\"fan_out\"").unwrap(),
        ConvInit::FanOut
    );
}

#[test]
fn names_are_resnet32_names_without_downsample() {
    let names = |arch| -> BTreeSet<String> {
        let b = Backbone::new(arch, &Device::Cpu, 0).unwrap();
        b.store()
            .named_vars()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    };
    let ldam = names(Arch::ResNet32Ldam);
    let ours = names(Arch::ResNet32);
    let want: BTreeSet<String> = ours
        .iter()
        .filter(|n| !n.contains("downsample"))
        .cloned()
        .collect();
    assert_eq!(ldam, want);
    // 31 convs, each with its BN (weight, bias, running mean and variance).
    assert_eq!(ldam.len(), 31 * 5);
    for n in [
        "conv1.weight",
        "layer2.0.conv1.weight",
        "layer3.4.bn2.running_var",
    ] {
        assert!(ldam.contains(n), "{n}");
    }
}

/// `x[:, :, ::2, ::2]` padded with `pad` zero channels on each side, from
/// the definition.
fn zero_pad_by_hand(x: &[f32], (c, h, w): (usize, usize, usize), pad: usize) -> Vec<f32> {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut y = vec![0f32; (c + 2 * pad) * oh * ow];
    for ci in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                y[((ci + pad) * oh + oy) * ow + ox] = x[(ci * h + 2 * oy) * w + 2 * ox];
            }
        }
    }
    y
}

#[test]
fn zero_pad_shortcut_small_case_by_hand() {
    // 1x4x4x4, stride 2, planes 8: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)).
    let x = Tensor::arange(0f32, 64.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 4, 4, 4))
        .unwrap();
    #[rustfmt::skip]
    let want: Vec<f32> = [
        [0.0; 4], [0.0; 4],
        [0.0, 2.0, 8.0, 10.0],
        [16.0, 18.0, 24.0, 26.0],
        [32.0, 34.0, 40.0, 42.0],
        [48.0, 50.0, 56.0, 58.0],
        [0.0; 4], [0.0; 4],
    ]
    .concat();
    for (what, y) in [
        ("kernel", ops::zero_pad_shortcut(&x, 2, 2, 2).unwrap()),
        (
            "reference",
            reference::zero_pad_shortcut(&x, 2, 2, 2).unwrap(),
        ),
    ] {
        assert_eq!(y.dims(), [1, 8, 2, 2], "{what}");
        assert_eq!(tvalues(&y), want, "{what}");
    }
    assert_eq!(want, zero_pad_by_hand(&tvalues(&x), (4, 4, 4), 2));

    // Gradient of sum(y * r): r's middle channels land on the even
    // positions, everything else is zero.
    let r = Tensor::arange(100f32, 132.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 8, 2, 2))
        .unwrap();
    let v = Var::from_tensor(&x).unwrap();
    let y = ops::zero_pad_shortcut(v.as_tensor(), 2, 2, 2).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = tvalues(g.get(v.as_tensor()).unwrap());
    let r = tvalues(&r);
    for (i, &d) in dx.iter().enumerate() {
        let (c, yy, xx) = (i / 16, (i / 4) % 4, i % 4);
        let want = if yy % 2 == 0 && xx % 2 == 0 {
            r[((c + 2) * 2 + yy / 2) * 2 + xx / 2]
        } else {
            0.0
        };
        assert_eq!(d, want, "dx[{i}]");
    }
}

/// Value and input gradient of `sum(f(x) * r)`.
fn value_and_grad(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Vec<f32>, Vec<f32>) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor());
    let r = randn(y.dims4().unwrap(), 77);
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (tvalues(&y), tvalues(g.get(v.as_tensor()).unwrap()))
}

#[test]
fn zero_pad_shortcut_kernel_matches_reference_exactly() {
    // Odd and even sizes, strides 1 to 3, uneven padding: a copy either way.
    for (shape, stride, front, back) in [
        ((3, 5, 9, 7), 2, 3, 2),
        ((2, 16, 8, 8), 2, 8, 8),
        ((1, 3, 5, 6), 1, 0, 4),
        ((2, 4, 7, 10), 3, 1, 0),
        ((1, 2, 1, 1), 2, 1, 1),
    ] {
        let x = randn(shape, 5);
        let what = format!("{shape:?} s{stride} +{front}+{back}");
        let ours = value_and_grad(&x, |x| {
            ops::zero_pad_shortcut(x, stride, front, back).unwrap()
        });
        let refr = value_and_grad(&x, |x| {
            reference::zero_pad_shortcut(x, stride, front, back).unwrap()
        });
        assert_eq!(bits(&ours.0), bits(&refr.0), "{what}: forward");
        assert_eq!(bits(&ours.1), bits(&refr.1), "{what}: backward");
        let (n, c, h, w) = shape;
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        assert_eq!(ours.0.len(), n * (front + c + back) * oh * ow, "{what}");
    }
    // A non-contiguous input and bf16 (which takes the composed path).
    let x = randn((2, 6, 4, 4), 6).transpose(2, 3).unwrap();
    let y = ops::zero_pad_shortcut(&x, 2, 3, 3).unwrap();
    let want = reference::zero_pad_shortcut(&x.contiguous().unwrap(), 2, 3, 3).unwrap();
    assert_eq!(bits(&tvalues(&y)), bits(&tvalues(&want)));
    let xb = x.to_dtype(DType::BF16).unwrap();
    let yb = ops::zero_pad_shortcut(&xb, 2, 3, 3).unwrap();
    assert_eq!(yb.dtype(), DType::BF16);
    let wb = want
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(tvalues(&yb.to_dtype(DType::F32).unwrap()), tvalues(&wb));
    assert!(ops::zero_pad_shortcut(&x, 0, 1, 1).is_err());
    assert!(reference::zero_pad_shortcut(&x, 0, 1, 1).is_err());
}

fn std_of(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn conv_init_is_kaiming_normal_fan_in() {
    let b = Backbone::new(Arch::ResNet32Ldam, &Device::Cpu, 3).unwrap();
    let vars = b.store().named_vars();
    let get = |name: &str| values(&vars.iter().find(|(n, _)| n == name).unwrap().1);
    // (name, fan_in = c_in * 3 * 3, tolerance on std / want): the relative
    // standard error of a sample std is about 1 / sqrt(2 n).
    for (name, fan_in, tol) in [
        ("conv1.weight", 3 * 9, 0.15), // 432 weights
        ("layer1.0.conv1.weight", 16 * 9, 0.06),
        ("layer2.0.conv1.weight", 16 * 9, 0.04),
        ("layer3.0.conv1.weight", 32 * 9, 0.03),
        ("layer3.0.conv2.weight", 64 * 9, 0.02),
        ("layer3.4.conv2.weight", 64 * 9, 0.02),
    ] {
        let want = (2.0 / fan_in as f64).sqrt();
        assert_eq!(ConvInit::FanIn.std(3, fan_in / 9, 999), want);
        let std = std_of(&get(name));
        assert!(
            (std / want - 1.0).abs() < tol,
            "{name}: std {std} vs sqrt(2 / {fan_in}) = {want}"
        );
    }
    // Where c_in != c_out the default (fan-out) init differs: the first conv
    // of a stage-transition block is sqrt(2) narrower there.
    let d = Backbone::new(Arch::ResNet32, &Device::Cpu, 3).unwrap();
    let dvars = d.store().named_vars();
    let dget = |name: &str| values(&dvars.iter().find(|(n, _)| n == name).unwrap().1);
    let ratio = std_of(&get("layer3.0.conv1.weight")) / std_of(&dget("layer3.0.conv1.weight"));
    assert!((ratio / 2f64.sqrt() - 1.0).abs() < 0.04, "ratio {ratio}");
    // BN keeps PyTorch's defaults.
    for (name, v) in vars {
        let want =
            if name.ends_with("running_var") || name.contains("bn") && name.ends_with("weight") {
                1.0
            } else if name.ends_with(".bias") || name.ends_with("running_mean") {
                0.0
            } else {
                continue;
            };
        assert!(values(v).iter().all(|&x| x == want), "{name}");
    }
}

#[test]
fn forward_and_backward_shapes() {
    let b = Backbone::new(Arch::ResNet32Ldam, &Device::Cpu, 1).unwrap();
    let x = randn((2, 3, 32, 32), 2);
    let f = b.forward_t(&x, BnMode::Train).unwrap();
    assert_eq!(f.dims(), [2, 64]);
    assert!(tvalues(&f).iter().all(|v| v.is_finite() && *v >= 0.0));
    let w = randn((1, 64, 1, 1), 3).reshape((1, 64)).unwrap();
    let loss = f.broadcast_mul(&w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in b.parameters() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims(), "{name}");
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm.is_finite(), "{name}");
        if name.ends_with("conv1.weight") {
            assert!(norm > 0.0, "{name}: zero gradient");
        }
    }
    for (name, var) in b.buffers() {
        assert!(grads.get(var.as_tensor()).is_none(), "{name}");
    }
    let e = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(e.dims(), [2, 64]);
    // Odd input sizes: the shortcut keeps ceil(h / 2) rows, as the convs do.
    let f = b
        .forward_t(&randn((2, 3, 15, 21), 4), BnMode::Train)
        .unwrap();
    assert_eq!(f.dims(), [2, 64]);
}

#[test]
fn same_seed_same_weights() {
    let snapshot = |seed| -> Vec<(String, Vec<u32>)> {
        let b = Backbone::new(Arch::ResNet32Ldam, &Device::Cpu, seed).unwrap();
        b.store()
            .named_vars()
            .iter()
            .map(|(n, v)| (n.clone(), bits(&values(v))))
            .collect()
    };
    let (a, b, c) = (snapshot(9), snapshot(9), snapshot(10));
    assert_eq!(a, b);
    let differs = a
        .iter()
        .zip(&c)
        .filter(|((na, va), (nc, vc))| {
            assert_eq!(na, nc);
            va != vc
        })
        .count();
    // Every conv weight differs with another seed; BN init is constant.
    assert_eq!(differs, 31);
}

#[test]
fn zero_pad_needs_non_decreasing_widths() {
    let mut c = CifarResNetConfig::ldam_drw(8);
    c.widths = [32, 16, 64];
    let err = CifarResNet::new(&c, &Device::Cpu, 0).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("[32, 16, 64]"), "{err}");
    // The projection takes any widths; equal widths need no padding.
    c.shortcut = Shortcut::Projection;
    assert!(CifarResNet::new(&c, &Device::Cpu, 0).is_ok());
    let mut c = CifarResNetConfig::ldam_drw(8);
    c.widths = [16, 16, 24];
    let net = CifarResNet::new(&c, &Device::Cpu, 0).unwrap();
    let f = net
        .forward_t(&randn((2, 3, 8, 8), 1), BnMode::Train)
        .unwrap();
    assert_eq!(f.dims(), [2, 24]);
}
