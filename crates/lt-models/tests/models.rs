//! Architecture, shape, naming, initialisation and gradient tests.

mod common;

use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use common::{bits, randn, tvalues, values};
use lt_models::{Arch, Backbone, BlockKind, BnMode, ModelError, ResNet, ResNetConfig};
use std::collections::BTreeSet;

#[test]
fn arch_names_parse_with_serde_and_from_str() {
    for (name, arch) in [
        ("resnet8", Arch::ResNet8),
        ("resnet20", Arch::ResNet20),
        ("resnet32", Arch::ResNet32),
        ("resnet56", Arch::ResNet56),
        ("resnet32_ldam", Arch::ResNet32Ldam),
        ("resnet10", Arch::ResNet10),
        ("resnet18", Arch::ResNet18),
        ("resnet34", Arch::ResNet34),
        ("resnet50", Arch::ResNet50),
        ("resnet101", Arch::ResNet101),
        ("resnet152", Arch::ResNet152),
        ("resnext50_32x4d", Arch::Resnext50_32x4d),
        ("resnext101_32x4d", Arch::Resnext101_32x4d),
        ("resnext152_32x4d", Arch::Resnext152_32x4d),
    ] {
        let parsed: Arch = serde_json::from_str(&format!("\"{name}\"")).unwrap();
        assert_eq!(parsed, arch);
        assert_eq!(serde_json::to_string(&arch).unwrap(), format!("\"{name}\""));
        assert_eq!(name.parse::<Arch>().unwrap(), arch);
        assert_eq!(arch.to_string(), name);
    }
    assert_eq!(Arch::ALL.len(), 14);
    assert_eq!(
        "ResNeXt50-32x4d".parse::<Arch>().unwrap(),
        Arch::Resnext50_32x4d
    );
    let err = "resnet33".parse::<Arch>().unwrap_err();
    assert!(matches!(err, ModelError::UnknownArch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("resnet33") && msg.contains("resnext50_32x4d"),
        "{msg}"
    );
    assert!(serde_json::from_str::<Arch>("\"res_net32\"").is_err());
}

#[test]
fn feature_dims() {
    for arch in Arch::ALL {
        let expected = match arch {
            Arch::ResNet8
            | Arch::ResNet20
            | Arch::ResNet32
            | Arch::ResNet56
            | Arch::ResNet32Ldam => 64,
            Arch::ResNet10 | Arch::ResNet18 | Arch::ResNet34 => 512,
            _ => 2048,
        };
        assert_eq!(arch.feature_dim(), expected, "{arch}");
        assert_eq!(arch.is_cifar(), expected == 64, "{arch}");
    }
}

/// Trainable-parameter counts without the classifier: torchvision's
/// `sum(p.numel() for p in m.parameters()) - fc` for the ImageNet family,
/// and for the CIFAR family the count of the 1x1-projection variant:
/// 3*16*9 + 32 (stem) + per block 2 * (c_in*c*9 or c*c*9) + 4c,
/// plus c_in*c + 2c per projection (none in `resnet32_ldam`, whose
/// zero-padding shortcuts have no parameters; see `tests/ldam_resnet.rs`).
#[test]
fn parameter_counts_match_torchvision() {
    let expected = [
        (Arch::ResNet8, 77_392),
        (Arch::ResNet20, 271_824),
        (Arch::ResNet32, 466_256),
        (Arch::ResNet56, 855_120),
        (Arch::ResNet32Ldam, 463_504),
        (Arch::ResNet10, 4_905_792),
        (Arch::ResNet18, 11_176_512),
        (Arch::ResNet34, 21_284_672),
        (Arch::ResNet50, 23_508_032),
        (Arch::ResNet101, 42_500_160),
        (Arch::ResNet152, 58_143_808),
        (Arch::Resnext50_32x4d, 22_979_904),
        (Arch::Resnext101_32x4d, 42_128_704),
        (Arch::Resnext152_32x4d, 57_902_400),
    ];
    assert_eq!(expected.len(), Arch::ALL.len());
    for (arch, count) in expected {
        let b = Backbone::new(arch, &Device::Cpu, 0).unwrap();
        assert_eq!(b.num_parameters(), count, "{arch}");
        assert_eq!(b.feature_dim(), arch.feature_dim());
        assert_eq!(b.arch(), arch);
        // Every BN layer has exactly two buffers and two parameters.
        let n_bn = b.buffers().len() / 2;
        let n_conv = b.parameters().len() - 2 * n_bn;
        assert_eq!(n_bn, n_conv, "{arch}: one BN per conv");
        assert_eq!(b.varmap().all_vars().len(), b.store().named_vars().len());
    }
}

/// The exact torchvision `resnet50` state-dict keys, minus `fc.*` and
/// `num_batches_tracked`, enumerated from torchvision's module structure.
#[test]
fn resnet50_names_are_torchvision_names() {
    let bn = |p: &str| {
        ["weight", "bias", "running_mean", "running_var"]
            .map(|s| format!("{p}.{s}"))
            .to_vec()
    };
    let mut want = BTreeSet::new();
    want.insert("conv1.weight".to_string());
    want.extend(bn("bn1"));
    for (stage, n) in [3, 4, 6, 3].into_iter().enumerate() {
        for i in 0..n {
            let p = format!("layer{}.{i}", stage + 1);
            for k in 1..=3 {
                want.insert(format!("{p}.conv{k}.weight"));
                want.extend(bn(&format!("{p}.bn{k}")));
            }
            if i == 0 {
                want.insert(format!("{p}.downsample.0.weight"));
                want.extend(bn(&format!("{p}.downsample.1")));
            }
        }
    }
    assert_eq!(want.len(), 265);
    let net = ResNet::new(&ResNetConfig::resnet50(), &Device::Cpu, 0).unwrap();
    let got: BTreeSet<String> = net
        .store()
        .named_vars()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(got, want);
    let shape = |name: &str| {
        let vars = net.store().named_vars();
        vars.iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .dims()
            .to_vec()
    };
    assert_eq!(shape("conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape("layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape("layer2.0.conv2.weight"), [128, 128, 3, 3]);
    assert_eq!(shape("layer4.2.conv3.weight"), [2048, 512, 1, 1]);
    assert_eq!(net.store().parameters().len(), 159);
    assert_eq!(net.store().buffers().len(), 106);
}

#[test]
fn resnext_grouped_widths() {
    let net = ResNet::new(&ResNetConfig::resnext50_32x4d(), &Device::Cpu, 0).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = net
        .store()
        .named_vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    let shape = |name: &str| shapes.iter().find(|(n, _)| n == name).unwrap().1.clone();
    // width floor(planes * 4 / 64) * 32: 128, 256, 512, 1024; 4 channels per group.
    assert_eq!(shape("layer1.0.conv1.weight"), [128, 64, 1, 1]);
    assert_eq!(shape("layer1.0.conv2.weight"), [128, 4, 3, 3]);
    assert_eq!(shape("layer2.0.conv2.weight"), [256, 8, 3, 3]);
    assert_eq!(shape("layer3.0.conv2.weight"), [512, 16, 3, 3]);
    assert_eq!(shape("layer4.0.conv2.weight"), [1024, 32, 3, 3]);
    assert_eq!(shape("layer4.2.conv3.weight"), [2048, 1024, 1, 1]);
}

#[test]
fn cifar_resnet32_names_and_shapes() {
    let b = Backbone::new(Arch::ResNet32, &Device::Cpu, 0).unwrap();
    let cifar = b.as_cifar().unwrap();
    assert_eq!(cifar.config().depth(), 32);
    assert_eq!(cifar.config().blocks_per_stage, 5);
    assert!(b.as_resnet().is_none());
    let names: BTreeSet<String> = b
        .store()
        .named_vars()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.4.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer3.4.bn2.bias",
    ] {
        assert!(names.contains(n), "{n}");
    }
    assert!(!names.contains("layer1.0.downsample.0.weight"));
    assert!(!names.contains("layer3.5.conv1.weight"));
    assert!(!names.iter().any(|n| n.starts_with("layer4")));
    // 31 convs + 2 projections, each followed by BN.
    assert_eq!(names.len(), 33 * 5);
}

#[test]
fn cifar_forward_shapes() {
    for (arch, seed) in [(Arch::ResNet8, 1), (Arch::ResNet32, 2)] {
        let b = Backbone::new(arch, &Device::Cpu, seed).unwrap();
        let x = randn((2, 3, 32, 32), 10);
        for mode in [BnMode::Train, BnMode::Eval] {
            let f = b.forward_t(&x, mode).unwrap();
            assert_eq!(f.dims(), [2, 64], "{arch} {mode:?}");
            assert!(tvalues(&f).iter().all(|v| v.is_finite()));
        }
    }
    // Any input size: the features are a global average.
    let b = Backbone::new(Arch::ResNet20, &Device::Cpu, 3).unwrap();
    let f = b
        .forward_t(&randn((1, 3, 20, 28), 11), BnMode::Eval)
        .unwrap();
    assert_eq!(f.dims(), [1, 64]);
}

#[test]
fn imagenet_forward_shapes() {
    let r10 = Backbone::new(Arch::ResNet10, &Device::Cpu, 1).unwrap();
    let f = r10
        .forward_t(&randn((1, 3, 64, 64), 1), BnMode::Train)
        .unwrap();
    assert_eq!(f.dims(), [1, 512]);
    // Odd, non-square input.
    let f = r10
        .forward_t(&randn((2, 3, 41, 57), 2), BnMode::Eval)
        .unwrap();
    assert_eq!(f.dims(), [2, 512]);
    // Features are non-negative (a mean of ReLU outputs) and finite.
    assert!(tvalues(&f).iter().all(|v| v.is_finite() && *v >= 0.0));

    let r50 = Backbone::new(Arch::ResNet50, &Device::Cpu, 1).unwrap();
    let f = r50
        .forward_t(&randn((1, 3, 64, 64), 3), BnMode::Train)
        .unwrap();
    assert_eq!(f.dims(), [1, 2048]);

    let x50 = Backbone::new(Arch::Resnext50_32x4d, &Device::Cpu, 1).unwrap();
    let f = x50
        .forward_t(&randn((1, 3, 64, 64), 4), BnMode::Eval)
        .unwrap();
    assert_eq!(f.dims(), [1, 2048]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 0).unwrap();
    let gray = randn((2, 1, 32, 32), 0);
    let err = b.forward_t(&gray, BnMode::Eval).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::BadInput {
                expected_channels: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[2, 1, 32, 32]"), "{err}");
    let flat = Tensor::zeros((3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        b.forward_t(&flat, BnMode::Eval),
        Err(ModelError::BadInput { .. })
    ));
    // One value per channel at layer4 (32x32 input, batch 1): training-mode
    // BN cannot estimate a variance, as in PyTorch.
    let r10 = Backbone::new(Arch::ResNet10, &Device::Cpu, 0).unwrap();
    let err = r10
        .forward_t(&randn((1, 3, 32, 32), 0), BnMode::Train)
        .unwrap_err();
    match &err {
        ModelError::BatchTooSmall { layer, shape } => {
            assert!(layer.starts_with("layer4.0."), "{layer}");
            assert_eq!(shape, &[1, 512, 1, 1]);
        }
        other => panic!("unexpected error {other}"),
    }
    // ... while eval mode is fine.
    assert!(r10
        .forward_t(&randn((1, 3, 32, 32), 0), BnMode::Eval)
        .is_ok());
}

#[test]
fn invalid_configs_are_rejected() {
    let mut c = ResNetConfig::resnet10();
    c.layers = [1, 0, 1, 1];
    assert!(matches!(
        ResNet::new(&c, &Device::Cpu, 0),
        Err(ModelError::InvalidConfig(_))
    ));
    let mut c = ResNetConfig::resnet10();
    c.groups = 32;
    assert!(matches!(
        ResNet::new(&c, &Device::Cpu, 0),
        Err(ModelError::InvalidConfig(_))
    ));
    let c = lt_models::CifarResNetConfig::from_depth(33);
    assert!(matches!(
        lt_models::CifarResNet::new(&c, &Device::Cpu, 0),
        Err(ModelError::InvalidConfig(_))
    ));
}

#[test]
fn module_t_maps_train_flag_to_bn_mode() {
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 5).unwrap();
    let x = randn((2, 3, 16, 16), 5);
    let via_trait = ModuleT::forward_t(&b, &x, false).unwrap();
    let inherent = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(bits(&tvalues(&via_trait)), bits(&tvalues(&inherent)));
    // A bool works with the inherent method too.
    let with_bool = b.forward_t(&x, false).unwrap();
    assert_eq!(bits(&tvalues(&with_bool)), bits(&tvalues(&inherent)));
}

#[test]
fn same_seed_same_weights() {
    let a = Backbone::new(Arch::ResNet10, &Device::Cpu, 7).unwrap();
    let b = Backbone::new(Arch::ResNet10, &Device::Cpu, 7).unwrap();
    let c = Backbone::new(Arch::ResNet10, &Device::Cpu, 8).unwrap();
    let (va, vb, vc) = (
        a.store().named_vars(),
        b.store().named_vars(),
        c.store().named_vars(),
    );
    assert_eq!(va.len(), vb.len());
    let mut differs = 0;
    for ((na, xa), ((nb, xb), (_, xc))) in va.iter().zip(vb.iter().zip(vc.iter())) {
        assert_eq!(na, nb);
        assert_eq!(bits(&values(xa)), bits(&values(xb)), "{na}");
        if bits(&values(xa)) != bits(&values(xc)) {
            differs += 1;
        }
    }
    // Every conv weight differs with another seed; BN init is constant.
    let n_conv = va
        .iter()
        .filter(|(n, _)| {
            n.ends_with("conv1.weight") || n.contains("conv2") || n.contains("downsample.0")
        })
        .count();
    assert_eq!(differs, n_conv);
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn init_statistics() {
    // A small ResNeXt-style network: grouped convs too, cheap to build.
    let cfg = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: [1, 1, 1, 1],
        groups: 32,
        width_per_group: 4,
        in_channels: 3,
    };
    let net = ResNet::new(&cfg, &Device::Cpu, 11).unwrap();
    let vars = net.store().named_vars();
    let get = |name: &str| values(&vars.iter().find(|(n, _)| n == name).unwrap().1);
    // (name, kernel, out channels): std sqrt(2 / (k^2 * out)), groups ignored.
    for (name, k, out, tol) in [
        ("conv1.weight", 7, 64, 0.03),
        ("layer1.0.conv2.weight", 3, 128, 0.05),
        ("layer4.0.conv2.weight", 3, 1024, 0.01),
        ("layer4.0.conv3.weight", 1, 2048, 0.01),
        ("layer4.0.downsample.0.weight", 1, 2048, 0.01),
    ] {
        let (mean, std) = mean_std(&get(name));
        let want = (2.0 / (k * k * out) as f64).sqrt();
        assert!(
            (std / want - 1.0).abs() < tol,
            "{name}: std {std} vs {want}"
        );
        assert!(
            mean.abs() < 4.0 * want / (get(name).len() as f64).sqrt() + 1e-9,
            "{name}: mean {mean}"
        );
    }
    for (name, v) in vars {
        let want = if name.ends_with(".weight") && name.contains("bn")
            || name.ends_with("downsample.1.weight")
            || name.ends_with(".running_var")
        {
            Some(1.0)
        } else if name.ends_with(".bias") || name.ends_with(".running_mean") {
            Some(0.0)
        } else {
            None
        };
        if let Some(want) = want {
            assert!(values(v).iter().all(|&x| x == want), "{name}");
        }
    }
}

#[test]
fn gradients_flow_through_stem_and_max_pool() {
    let b = Backbone::new(Arch::ResNet10, &Device::Cpu, 2).unwrap();
    let x = randn((2, 3, 32, 32), 9);
    let f = b.forward_t(&x, BnMode::Train).unwrap();
    // A loss that does not vanish under BN: weighted feature sum.
    let w = randn((1, 512, 1, 1), 4).reshape((1, 512)).unwrap();
    let loss = f.broadcast_mul(&w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in b.parameters() {
        let g = grads.get(var.as_tensor());
        let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims());
        if name == "conv1.weight" || name == "bn1.weight" || name.starts_with("layer4.") {
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: |g|^2 = {norm}");
        }
    }
    for (name, var) in b.buffers() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "{name} got a gradient"
        );
    }
}

#[test]
fn parameters_buffers_and_prefixes() {
    let b = Backbone::new(Arch::ResNet10, &Device::Cpu, 0).unwrap();
    let params = b.parameters();
    let buffers = b.buffers();
    assert_eq!(params.len() + buffers.len(), b.store().named_vars().len());
    assert!(params.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    assert!(buffers
        .iter()
        .all(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var")));
    assert!(params.iter().all(|(n, _)| !n.contains("running")));
    let l4 = b.parameters_with_prefix("layer4.");
    // conv1, bn1, conv2, bn2, downsample.0, downsample.1 -> 3 conv + 3 * 2 BN.
    assert_eq!(l4.len(), 9);
    assert!(l4.iter().all(|(n, _)| n.starts_with("layer4.")));
    let n: usize = l4.iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(n, 3_673_088);
}

#[test]
fn train_mode_updates_buffers_and_eval_does_not() {
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 0).unwrap();
    let x = randn((4, 3, 16, 16), 1);
    let snapshot =
        || -> Vec<Vec<u32>> { b.buffers().iter().map(|(_, v)| bits(&values(v))).collect() };
    let before = snapshot();
    let e1 = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(snapshot(), before);
    let e2 = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(bits(&tvalues(&e1)), bits(&tvalues(&e2)));
    b.forward_t(&x, BnMode::Train).unwrap();
    let after = snapshot();
    assert!(
        before.iter().zip(&after).all(|(a, b)| a != b),
        "every buffer moves"
    );
    // Parameters never change in a forward pass.
    let c = Backbone::new(Arch::ResNet8, &Device::Cpu, 0).unwrap();
    for ((n, p), (_, q)) in b.parameters().iter().zip(c.parameters().iter()) {
        assert_eq!(bits(&values(p)), bits(&values(q)), "{n}");
    }
    // Eval now uses the new statistics.
    let e3 = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_ne!(bits(&tvalues(&e1)), bits(&tvalues(&e3)));
}

#[test]
fn backbones_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Backbone>();
    assert_send_sync::<lt_models::ParamStore>();
    assert_send_sync::<ModelError>();
}

#[test]
fn forward_inference_is_eval_forward_without_a_graph() {
    // ResNet-10 (projection shortcuts, max-pool) and ResNet-8 (zero-padding
    // shortcuts): every entry point of the eval path.
    for (arch, size) in [(Arch::ResNet10, 40), (Arch::ResNet8, 16)] {
        let b = Backbone::new(arch, &Device::Cpu, 3).unwrap();
        let x = randn((2, 3, size, size), 5);
        let eval = b.forward_t(&x, BnMode::Eval).unwrap();
        assert!(
            eval.track_op(),
            "{arch}: the eval forward records the graph"
        );
        // Without a graph, the same ops give the same bits.
        let no_grad = lt_models::ops::without_grad(|| b.forward_t(&x, BnMode::Eval)).unwrap();
        assert!(!no_grad.track_op(), "{arch}: without_grad has a graph");
        assert_eq!(bits(&tvalues(&no_grad)), bits(&tvalues(&eval)), "{arch}");
        // forward_inference folds batch norm into the convolutions: equal up
        // to float rounding (tests/inference.rs checks it with non-trivial
        // statistics).
        let inference = b.forward_inference(&x).unwrap();
        assert!(
            !inference.track_op(),
            "{arch}: forward_inference has a graph"
        );
        let (got, want) = (tvalues(&inference), tvalues(&eval));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "{arch}: {diff} of {scale}");
        // The scope ends with the call: the next forward records again.
        assert!(b.forward_t(&x, BnMode::Eval).unwrap().track_op());
    }
}
