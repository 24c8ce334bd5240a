//! PyTorch checkpoints read without Python: both `torch.save` formats, the
//! layouts of `torch_import`, the values PyTorch saved, a forward pass
//! against PyTorch's, and clear errors for files that are not what they
//! should be. The fixtures come from `tests/fixtures/torch/make_pth_fixtures.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lt_models::torch_import::{
    convert, read_pth, read_torch_checkpoint, read_weights, TorchLayout, CONVERT_META_KEY,
};
use lt_models::{BnMode, CifarResNet, CifarResNetConfig, ModelError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

/// The tiny CIFAR-layout ResNet the fixtures hold.
fn tiny_config() -> CifarResNetConfig {
    CifarResNetConfig {
        blocks_per_stage: 1,
        widths: [4, 8, 8],
        ..CifarResNetConfig::from_depth(8)
    }
}

fn tiny() -> CifarResNet {
    CifarResNet::new(&tiny_config(), &Device::Cpu, 3).unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("tiny_reference.safetensors"), &Device::Cpu).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    f32s(a)
        .iter()
        .zip(f32s(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every tensor of `tiny_resnet.pth` as PyTorch saved it, by name.
fn expected_weights() -> HashMap<String, Tensor> {
    reference()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("weights.").map(|k| (k.to_string(), v)))
        .collect()
}

fn assert_same_tensors(got: &HashMap<String, Tensor>, what: &str) {
    let want = expected_weights();
    let mut keys: Vec<&String> = got.keys().filter(|k| !k.starts_with("fc.")).collect();
    keys.sort();
    let mut want_keys: Vec<&String> = want.keys().collect();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{what}");
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g.dtype(), w.dtype(), "{what}: {k}");
        assert_eq!(g.dims(), w.dims(), "{what}: {k}");
        if w.dtype() == DType::I64 {
            assert_eq!(
                g.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                "{what}: {k}"
            );
        } else {
            assert_eq!(
                f32s(g),
                f32s(w),
                "{what}: {k} differs from what PyTorch saved"
            );
        }
    }
}

#[test]
fn every_format_and_layout_gives_the_saved_tensors() {
    let cases = [
        ("tiny_resnet.pth", TorchLayout::StateDict, None),
        (
            "tiny_wrapped_legacy.pth",
            TorchLayout::Wrapped {
                key: "state_dict".into(),
            },
            Some(3),
        ),
        (
            "tiny_cb.pth",
            TorchLayout::ClassifierBalancing {
                key: "state_dict_best".into(),
            },
            Some(90),
        ),
        (
            "tiny_cb_lws_legacy.pth",
            TorchLayout::ClassifierBalancing {
                key: "state_dict".into(),
            },
            Some(10),
        ),
    ];
    for (file, layout, epoch) in cases {
        let ckpt = read_torch_checkpoint(&fixture(file), &Device::Cpu).unwrap();
        assert_eq!(ckpt.layout, layout, "{file}");
        assert_eq!(ckpt.epoch, epoch, "{file}");
        assert_same_tensors(&ckpt.to_hash_map(), file);
    }
}

#[test]
fn the_classifier_balancing_parts_map_onto_fc() {
    let cb = read_torch_checkpoint(&fixture("tiny_cb.pth"), &Device::Cpu).unwrap();
    let fc: Vec<&String> = cb.tensors.keys().filter(|k| k.starts_with("fc.")).collect();
    assert_eq!(fc, ["fc.bias", "fc.weight"]);
    assert_eq!(cb.tensors["fc.weight"].dims(), [5, 8]);
    for entry in ["best_acc", "best_epoch", "centroids", "epoch"] {
        assert!(
            cb.ignored.iter().any(|i| i == entry),
            "{entry}: {:?}",
            cb.ignored
        );
    }
    // The LWS release's `scales` are the LWS head's `fc.scales`.
    let lws = read_torch_checkpoint(&fixture("tiny_cb_lws_legacy.pth"), &Device::Cpu).unwrap();
    assert_eq!(lws.tensors["fc.scales"].dims(), [5]);
    // A training checkpoint's optimiser state is set aside, not loaded.
    let wrapped = read_torch_checkpoint(&fixture("tiny_wrapped_legacy.pth"), &Device::Cpu).unwrap();
    assert!(
        wrapped
            .ignored
            .iter()
            .any(|i| i.starts_with("optimizer.state.") && i.ends_with("momentum_buffer")),
        "{:?}",
        wrapped.ignored
    );
    assert!(wrapped.ignored.iter().any(|i| i == "best_acc1"));
}

#[test]
fn a_forward_pass_of_the_loaded_model_matches_pytorch() {
    let r = reference();
    for file in ["tiny_resnet.pth", "tiny_cb.pth", "tiny_wrapped_legacy.pth"] {
        let net = tiny();
        // Strict: every key checked; fc.* and num_batches_tracked set aside.
        net.store().load(fixture(file)).unwrap();
        let features = net.forward_t(&r["input"], BnMode::Eval).unwrap();
        let d = max_abs_diff(&features, &r["features"]);
        assert!(d < 1e-4, "{file}: features differ from PyTorch's by {d}");
    }
    let cb = read_weights(&fixture("tiny_cb.pth"), &Device::Cpu).unwrap();
    let logits = r["features"]
        .matmul(&cb["fc.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&cb["fc.bias"])
        .unwrap();
    assert!(max_abs_diff(&logits, &r["logits"]) < 1e-5);
}

#[test]
fn views_and_dtypes_are_read_as_saved() {
    let t: HashMap<String, Tensor> = read_pth(&fixture("views.pth"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(f32s(&t["offset"]), [3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t["transposed"].dims(), [3, 2]);
    assert_eq!(f32s(&t["transposed"]), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(f32s(&t["strided"]), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    assert_eq!(t["half"].dtype(), DType::F16);
    assert_eq!(f32s(&t["half"]), [1.5, -2.25]);
    assert_eq!(t["double"].dtype(), DType::F64);
    assert_eq!(f32s(&t["double"]), [0.125, 3.0]);
    assert_eq!(t["long"].to_vec1::<i64>().unwrap(), [7, -1]);
    assert_eq!(f32s(&t["base"]).len(), 10);
}

/// The message of an error with its whole chain.
fn chain(e: &ModelError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(&format!(": {c}"));
        source = c.source();
    }
    s
}

#[test]
fn another_architecture_lists_every_differing_key_and_loads_nothing() {
    let net = tiny();
    let before = net.store().state_dict().unwrap();
    let e = net.store().load(fixture("tiny_wide.pth")).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ModelError::IncompatibleCheckpoint { .. }),
        "{msg}"
    );
    for part in [
        "tiny_wide.pth",
        "missing key(s) [bn1.running_var]",
        "unexpected key(s) [layer1.1.bn1.bias",
        "shape mismatch(es) [layer3.0.bn1.bias: model [8], checkpoint [16]",
    ] {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }
    for (k, v) in net.store().state_dict().unwrap() {
        assert_eq!(f32s(&v), f32s(&before[&k]), "{k} changed");
    }
    // `convert` checks before it writes: nothing appears.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wide.safetensors");
    let e = convert(&fixture("tiny_wide.pth"), &out, None).unwrap_err();
    assert!(chain(&e).contains("tiny_wide.pth") && chain(&e).contains("no known architecture"));
    let e = convert(
        &fixture("tiny_resnet.pth"),
        &out,
        Some(lt_models::Arch::ResNet8),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiny_resnet.pth")
            && e.contains("45 shape mismatch(es) [bn1.bias: model [16], checkpoint [4]"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn damaged_and_foreign_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    let whole = std::fs::read(fixture("tiny_resnet.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    cases.push((cut, "zip"));
    let legacy = std::fs::read(fixture("tiny_wrapped_legacy.pth")).unwrap();
    let cut_legacy = dir.path().join("cut_legacy.pth");
    std::fs::write(&cut_legacy, &legacy[..legacy.len() - 100]).unwrap();
    cases.push((cut_legacy, "truncated"));
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are not weights\n").unwrap();
    cases.push((text, "not a PyTorch checkpoint"));
    let pickle = dir.path().join("plain_pickle.pth");
    std::fs::write(&pickle, [0x80, 0x02, b'K', 0x01, b'.']).unwrap();
    cases.push((pickle, "magic number"));
    cases.push((
        fixture("no_tensors.pth"),
        "no tensors found (entries: epoch, note)",
    ));
    cases.push((fixture("whole_module.pth"), "TinyResNet"));
    for (path, what) in cases {
        let e = read_torch_checkpoint(&path, &Device::Cpu).unwrap_err();
        let msg = chain(&e);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(msg.contains(name) && msg.contains(what), "{name}: {msg}");
        // Loading a model from it fails the same way and leaves it as it was.
        let net = tiny();
        let before = net.store().state_dict().unwrap();
        assert!(net.store().load_pretrained(&path).is_err(), "{name}");
        for (k, v) in net.store().state_dict().unwrap() {
            assert_eq!(f32s(&v), f32s(&before[&k]), "{name}: {k} changed");
        }
    }
}

#[test]
fn convert_recognises_the_architecture_and_writes_what_loads() {
    // The project's ResNet-8 in the classifier-balancing layout, every
    // tensor a strided view into a shared storage.
    let src = fixture("resnet8_cb.pth");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resnet8.safetensors");
    let report = convert(&src, &out, None).unwrap();
    assert_eq!(report.arch, lt_models::Arch::ResNet8);
    assert_eq!(report.classifier, ["fc.bias", "fc.weight"]);
    assert!(matches!(
        report.layout,
        TorchLayout::ClassifierBalancing { .. }
    ));
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let read = read_weights(&src, &Device::Cpu).unwrap();
    assert_eq!(written.len(), read.len());
    for (k, t) in &read {
        assert_eq!(f32s(t), f32s(&written[k]), "{k}");
    }
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = &header.metadata().as_ref().unwrap()[CONVERT_META_KEY];
    let meta: serde_json::Value = serde_json::from_str(meta).unwrap();
    assert_eq!(meta["source"], "resnet8_cb.pth");
    assert_eq!(meta["arch"], "resnet8");
    assert_eq!(meta["epoch"], 90);
    // Both files give PyTorch's features and logits.
    let r = reference();
    for file in [&src, &out] {
        let b = lt_models::Backbone::new(lt_models::Arch::ResNet8, &Device::Cpu, 0).unwrap();
        b.load(file).unwrap();
        let f = b.forward_t(&r["resnet8.input"], BnMode::Eval).unwrap();
        let d = max_abs_diff(&f, &r["resnet8.features"]);
        assert!(d < 1e-4, "{}: features differ by {d}", file.display());
    }
    let logits = r["resnet8.features"]
        .matmul(&written["fc.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&written["fc.bias"])
        .unwrap();
    assert!(max_abs_diff(&logits, &r["resnet8.logits"]) < 1e-4);
    // No temporary file is left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
