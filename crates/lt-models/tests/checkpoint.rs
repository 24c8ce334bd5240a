//! Saving and loading: round trips, torchvision-style files, clear errors.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{bits, randn, tvalues, values};
use lt_models::{Arch, Backbone, BnMode, ModelError};
use std::collections::HashMap;

fn all_bits(b: &Backbone) -> Vec<(String, Vec<u32>)> {
    b.store()
        .named_vars()
        .iter()
        .map(|(n, v)| (n.clone(), bits(&values(v))))
        .collect()
}

/// A model whose buffers are no longer at their initial values.
fn trained(arch: Arch, seed: u64) -> Backbone {
    let b = Backbone::new(arch, &Device::Cpu, seed).unwrap();
    b.forward_t(&randn((2, 3, 32, 32), seed), BnMode::Train)
        .unwrap();
    b
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r8.safetensors");
    let a = trained(Arch::ResNet8, 1);
    a.save(&path).unwrap();
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 2).unwrap();
    assert_ne!(all_bits(&a), all_bits(&b));
    let report = b.load(&path).unwrap();
    assert_eq!(report.loaded, a.store().named_vars().len());
    assert!(report.ignored.is_empty() && report.unexpected.is_empty());
    assert_eq!(all_bits(&a), all_bits(&b));
    let x = randn((2, 3, 32, 32), 3);
    let fa = a.forward_t(&x, BnMode::Eval).unwrap();
    let fb = b.forward_t(&x, BnMode::Eval).unwrap();
    assert_eq!(bits(&tvalues(&fa)), bits(&tvalues(&fb)));

    // Overwriting an existing checkpoint works and leaves no temporary file.
    let c = trained(Arch::ResNet8, 5);
    c.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["r8.safetensors"]);
    b.load(&path).unwrap();
    assert_eq!(all_bits(&b), all_bits(&c));
}

#[test]
fn state_dict_is_a_snapshot() {
    let a = Backbone::new(Arch::ResNet8, &Device::Cpu, 1).unwrap();
    let sd = a.state_dict().unwrap();
    let before = bits(&tvalues(&sd["bn1.running_mean"]));
    a.forward_t(&randn((2, 3, 8, 8), 0), BnMode::Train).unwrap();
    assert_eq!(bits(&tvalues(&sd["bn1.running_mean"])), before);
    // ... and loads back, undoing the update.
    a.load_state_dict(sd, "snapshot", true).unwrap();
    let (name, var) = &a.buffers()[0];
    assert_eq!(name, "bn1.running_mean");
    assert_eq!(bits(&values(var)), before);
}

/// A file laid out like a converted torchvision checkpoint saved from
/// `DataParallel`: `module.` prefixes, `fc.*`, `num_batches_tracked` (i64)
/// and one tensor stored as f64.
#[test]
fn torchvision_style_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tv.safetensors");
    let src = trained(Arch::ResNet10, 3);
    let mut file: HashMap<String, Tensor> = src
        .state_dict()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let dev = Device::Cpu;
    file.insert(
        "module.fc.weight".into(),
        Tensor::zeros((1000, 512), DType::F32, &dev).unwrap(),
    );
    file.insert(
        "module.fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &dev).unwrap(),
    );
    for bn in ["bn1", "layer1.0.bn1", "layer4.0.downsample.1"] {
        let t = Tensor::new(&[1234i64], &dev).unwrap().squeeze(0).unwrap();
        file.insert(format!("module.{bn}.num_batches_tracked"), t);
    }
    let c1 = file["module.conv1.weight"].to_dtype(DType::F64).unwrap();
    file.insert("module.conv1.weight".into(), c1);
    candle_core::safetensors::save(&file, &path).unwrap();

    for pretrained in [false, true] {
        let dst = Backbone::new(Arch::ResNet10, &Device::Cpu, 4).unwrap();
        let report = if pretrained {
            dst.load_pretrained(&path).unwrap()
        } else {
            dst.load(&path).unwrap()
        };
        assert_eq!(report.loaded, src.store().named_vars().len());
        assert_eq!(report.ignored.len(), 5, "{:?}", report.ignored);
        assert!(report.ignored.contains(&"module.fc.weight".to_string()));
        assert!(report.unexpected.is_empty());
        assert_eq!(all_bits(&src), all_bits(&dst));
    }
}

#[test]
fn missing_key_is_a_clear_error_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let src = trained(Arch::ResNet8, 1);
    let mut sd = src.state_dict().unwrap();
    sd.remove("layer2.0.downsample.0.weight");
    sd.remove("bn1.running_var");
    candle_core::safetensors::save(&sd, &path).unwrap();
    let dst = Backbone::new(Arch::ResNet8, &Device::Cpu, 2).unwrap();
    let before = all_bits(&dst);
    for result in [dst.load(&path), dst.load_pretrained(&path)] {
        let err = result.unwrap_err();
        match &err {
            ModelError::IncompatibleCheckpoint { origin, mismatch } => {
                assert!(origin.ends_with("missing.safetensors"));
                assert_eq!(
                    mismatch.missing,
                    ["bn1.running_var", "layer2.0.downsample.0.weight"]
                );
            }
            other => panic!("unexpected error {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("missing.safetensors"), "{msg}");
        assert!(msg.contains("2 missing key(s)"), "{msg}");
        assert!(msg.contains("layer2.0.downsample.0.weight"), "{msg}");
    }
    assert_eq!(all_bits(&dst), before, "a failed load writes nothing");
}

#[test]
fn wrong_shape_is_a_clear_error() {
    let src = trained(Arch::ResNet8, 1);
    let mut sd = src.state_dict().unwrap();
    sd.insert(
        "bn1.weight".into(),
        Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let dst = Backbone::new(Arch::ResNet8, &Device::Cpu, 2).unwrap();
    let before = all_bits(&dst);
    let err = dst.load_state_dict(sd, "edited", false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("edited") && msg.contains("bn1.weight: model [16], checkpoint [32]"),
        "{msg}"
    );
    assert_eq!(all_bits(&dst), before);
}

#[test]
fn other_architectures_are_rejected_by_strict_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r20.safetensors");
    let r20 = trained(Arch::ResNet20, 1);
    r20.save(&path).unwrap();

    let r8 = Backbone::new(Arch::ResNet8, &Device::Cpu, 2).unwrap();
    let err = r8.load(&path).unwrap_err();
    let ModelError::IncompatibleCheckpoint { mismatch, .. } = &err else {
        panic!("unexpected error {err}");
    };
    assert!(mismatch.missing.is_empty());
    assert!(mismatch
        .unexpected
        .contains(&"layer1.1.conv1.weight".to_string()));
    assert!(err.to_string().contains("unexpected key(s)"), "{err}");

    // load_pretrained skips what ResNet-8 lacks and loads the shared prefix.
    let report = r8.load_pretrained(&path).unwrap();
    assert_eq!(report.unexpected.len(), mismatch.unexpected.len());
    let vars20 = r20.store().named_vars();
    for (name, var) in r8.store().named_vars() {
        if name.starts_with("layer1.0.") || name.starts_with("conv1") {
            let other = &vars20.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(bits(&values(var)), bits(&values(other)), "{name}");
        }
    }

    // A CIFAR checkpoint in an ImageNet-family model: shapes differ too.
    let r10 = Backbone::new(Arch::ResNet10, &Device::Cpu, 0).unwrap();
    let err = r10.load(&path).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
}

#[test]
fn unreadable_and_unwritable_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 0).unwrap();

    let absent = dir.path().join("absent.safetensors");
    let err = b.load(&absent).unwrap_err();
    assert!(matches!(err, ModelError::ReadCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("absent.safetensors"), "{err}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = b.load_pretrained(&garbage).unwrap_err();
    assert!(matches!(err, ModelError::ReadCheckpoint { .. }), "{err}");

    let nowhere = dir.path().join("no/such/dir/x.safetensors");
    let err = b.save(&nowhere).unwrap_err();
    assert!(matches!(err, ModelError::WriteCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}

/// Keys other code adds to the shared `VarMap` (a head, say) are neither
/// saved with the backbone nor expected when loading it.
#[test]
fn foreign_vars_in_the_varmap_are_not_part_of_the_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.safetensors");
    let b = Backbone::new(Arch::ResNet8, &Device::Cpu, 0).unwrap();
    b.varmap()
        .get(
            (10, 64),
            "fc.weight",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    assert_eq!(
        b.varmap().all_vars().len(),
        b.store().named_vars().len() + 1
    );
    b.save(&path).unwrap();
    let file = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(!file.contains_key("fc.weight"));
    assert_eq!(file.len(), b.store().named_vars().len());
    b.load(&path).unwrap();
}
