//! Encoders against reference features of Hugging Face transformers.
//!
//! The fixtures (tiny random encoders: 2 blocks, width 32, 32x32 images in
//! 8x8 patches) come from `tests/fixtures/make_encoder_fixtures.py`.

use candle_core::{Device, Tensor};
use lt_models::encoders::transformer::without_inference_kernels;
use lt_models::encoders::{resolve_config, Encoder, EncoderConfig, EncoderFamily, Trainable};
use lt_models::{Arch, Backbone, BnMode, ModelError};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/encoders")
        .join(name)
}

fn family_of(name: &str) -> EncoderFamily {
    match name {
        "vit" => EncoderFamily::Vit,
        "dinov2" => EncoderFamily::Dinov2,
        "clip" => EncoderFamily::Clip,
        _ => EncoderFamily::Siglip,
    }
}

fn load(name: &str) -> Encoder {
    let family = family_of(name);
    let config =
        EncoderConfig::from_json_file(family, &fixture(&format!("{name}_config.json"))).unwrap();
    Encoder::from_safetensors(
        config,
        &fixture(&format!("{name}.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn io(file: &str) -> (Tensor, Tensor) {
    let t = candle_core::safetensors::load(fixture(file), &Device::Cpu).unwrap();
    (t["input"].clone(), t["features"].clone())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn features_match_the_reference_implementation() {
    for name in ["vit", "dinov2", "clip", "siglip"] {
        let mut encoder = load(name);
        let (x, expected) = io(&format!("{name}_io.safetensors"));
        // Frozen: the blocks on the inference kernels.
        let frozen = encoder.forward_frozen(&x).unwrap();
        let d = max_abs_diff(&frozen, &expected);
        assert!(d < 1e-4, "{name} frozen: max |diff| {d}");
        // Fine-tuned (all, or the last block): the composed differentiable
        // block, with an autograd graph (last:1 runs block 0 on the
        // inference kernels).
        for trainable in [Trainable::All, Trainable::LastBlocks(1)] {
            encoder.set_trainable(trainable).unwrap();
            let trained = encoder.forward(&x).unwrap();
            assert!(trained.track_op(), "{name} {trainable}");
            let d = max_abs_diff(&trained, &expected);
            assert!(d < 1e-4, "{name} {trainable}: max |diff| {d}");
        }
    }
}

#[test]
fn inference_kernels_match_the_composed_blocks_in_every_family() {
    for name in ["vit", "dinov2", "clip", "siglip"] {
        let encoder = load(name);
        let (x, _) = io(&format!("{name}_io.safetensors"));
        let fast = encoder.forward_frozen(&x).unwrap();
        let composed = without_inference_kernels(|| encoder.forward_frozen(&x)).unwrap();
        let d = max_abs_diff(&fast, &composed);
        assert!(d < 1e-5, "{name}: max |diff| {d}");
    }
}

#[test]
fn siglip_resizes_position_embeddings_alike_frozen_and_trained() {
    // At 48x40 (a 6x5 grid from the 4x4 of the checkpoint): the frozen
    // forward (inference kernels) and the trained one (composed ops) resize
    // by nearest neighbour alike.
    let mut encoder = load("siglip");
    let (x, _) = io("dinov2_io_48x40.safetensors");
    let frozen = encoder.forward_frozen(&x).unwrap();
    encoder.set_trainable(Trainable::All).unwrap();
    let trained = encoder.forward(&x).unwrap();
    assert!(trained.track_op());
    let d = max_abs_diff(&frozen, &trained);
    assert!(d < 1e-5, "max |diff| {d}");
}

#[test]
fn dinov2_interpolates_position_embeddings_as_the_release() {
    let encoder = load("dinov2");
    let (x, expected) = io("dinov2_io_48x40.safetensors");
    let d = max_abs_diff(&encoder.forward_frozen(&x).unwrap(), &expected);
    assert!(d < 1e-4, "max |diff| {d}");
}

#[test]
fn a_frozen_encoder_builds_no_autograd_graph() {
    for name in ["vit", "clip", "siglip"] {
        let mut encoder = load(name);
        let (x, _) = io(&format!("{name}_io.safetensors"));
        assert!(!encoder.forward(&x).unwrap().track_op(), "{name}");
        encoder.set_trainable(Trainable::LastBlocks(1)).unwrap();
        assert!(encoder.forward(&x).unwrap().track_op(), "{name}");
        assert!(!encoder.forward_frozen(&x).unwrap().track_op(), "{name}");
        encoder.set_trainable(Trainable::LastBlocks(0)).unwrap();
        assert!(!encoder.forward(&x).unwrap().track_op(), "{name}");
    }
    let mut encoder = load("dinov2");
    let (x, _) = io("dinov2_io.safetensors");
    // Frozen by default.
    assert!(!encoder.forward(&x).unwrap().track_op());
    assert!(encoder.parameters().is_empty());
    encoder.set_trainable(Trainable::All).unwrap();
    assert!(encoder.forward(&x).unwrap().track_op());
    assert!(!encoder.forward_frozen(&x).unwrap().track_op());

    // last:1: gradients reach the last block and the final norm only.
    encoder.set_trainable("last:1".parse().unwrap()).unwrap();
    let params = encoder.parameters();
    assert!(!params.is_empty());
    assert!(params
        .iter()
        .all(|(n, _)| n.starts_with("blocks.1.") || n.starts_with("norm.")));
    let grads = encoder
        .forward(&x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in encoder.store().named_vars() {
        let has = grads.get(var.as_tensor()).is_some();
        assert_eq!(has, encoder.is_trainable(name), "{name}");
    }
    assert!(encoder.set_trainable(Trainable::LastBlocks(3)).is_err());
}

#[test]
fn backbone_wraps_an_encoder_and_round_trips_checkpoints() {
    let encoder = load("clip");
    let (x, expected) = io("clip_io.safetensors");
    let backbone = Backbone::from_encoder(Arch::Clip, encoder).unwrap();
    assert_eq!(backbone.feature_dim(), 32);
    assert!(!backbone.has_batch_norm());
    let f = backbone.forward_t(&x, BnMode::Train).unwrap();
    assert!(max_abs_diff(&f, &expected) < 1e-4);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.safetensors");
    backbone.save(&path).unwrap();
    let config = backbone.as_encoder().unwrap().config().clone();
    let fresh = Backbone::from_encoder(
        Arch::Clip,
        Encoder::random(config, &Device::Cpu, 3).unwrap(),
    )
    .unwrap();
    assert!(max_abs_diff(&fresh.forward_frozen(&x, BnMode::Eval).unwrap(), &expected) > 1e-2);
    fresh.load(&path).unwrap();
    assert_eq!(
        max_abs_diff(&fresh.forward_frozen(&x, BnMode::Eval).unwrap(), &f),
        0.0
    );
    // The Hub layout loads into a built encoder too.
    let fresh2 = Backbone::from_encoder(
        Arch::Clip,
        Encoder::random(
            backbone.as_encoder().unwrap().config().clone(),
            &Device::Cpu,
            4,
        )
        .unwrap(),
    )
    .unwrap();
    let report = fresh2.load_pretrained(fixture("clip.safetensors")).unwrap();
    assert_eq!(report.ignored, vec!["logit_scale".to_string()]);
    assert!(max_abs_diff(&fresh2.forward_frozen(&x, BnMode::Eval).unwrap(), &expected) < 1e-4);
    assert!(Backbone::from_encoder(Arch::VitB16, load("clip")).is_err());
}

#[test]
fn wrong_files_are_clear_errors() {
    let dev = Device::Cpu;
    let vit_config =
        EncoderConfig::from_json_file(EncoderFamily::Vit, &fixture("vit_config.json")).unwrap();

    // A file that does not exist.
    let missing = fixture("no_such_encoder.safetensors");
    let e = Encoder::from_safetensors(vit_config.clone(), &missing, &dev).unwrap_err();
    assert!(matches!(e, ModelError::WeightsNotFound { .. }), "{e}");
    assert!(e.to_string().contains("no_such_encoder.safetensors"), "{e}");

    // Another size: every mis-shaped key, the file named.
    let wider = EncoderConfig {
        hidden_size: 64,
        ..vit_config.clone()
    };
    let e = Encoder::from_safetensors(wider, &fixture("vit.safetensors"), &dev).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("vit.safetensors"), "{msg}");
    let ModelError::IncompatibleCheckpoint { mismatch, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        mismatch.missing.is_empty() && mismatch.unexpected.is_empty(),
        "{msg}"
    );
    assert_eq!(mismatch.shape[0].key, "embeddings.cls_token", "{msg}");
    assert!(mismatch.shape.len() > 30, "{msg}");

    // Another depth: the third block is missing.
    let deeper = EncoderConfig {
        num_layers: 3,
        ..vit_config.clone()
    };
    let e = Encoder::from_safetensors(deeper, &fixture("vit.safetensors"), &dev).unwrap_err();
    let ModelError::IncompatibleCheckpoint { mismatch, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        mismatch
            .missing
            .iter()
            .all(|k| k.starts_with("encoder.layer.2.")),
        "{e}"
    );

    // Another family: missing and unexpected keys together.
    let e = Encoder::from_safetensors(vit_config, &fixture("clip.safetensors"), &dev).unwrap_err();
    let ModelError::IncompatibleCheckpoint { mismatch, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        !mismatch.missing.is_empty() && !mismatch.unexpected.is_empty(),
        "{e}"
    );

    // A sized arch with the config of another size.
    let arch = Arch::VitB16.encoder().unwrap();
    let weights = fixture("vit.safetensors");
    let e = resolve_config(
        arch.family,
        arch.standard(),
        Some(&fixture("vit_config.json")),
        Some(&weights),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("vit_config.json") && e.to_string().contains("hidden_size"),
        "{e}"
    );
    // A config of another family.
    let e = EncoderConfig::from_json_file(EncoderFamily::Vit, &fixture("clip_config.json"))
        .unwrap_err();
    assert!(e.to_string().contains("clip_vision_model"), "{e}");
    // The family arch reads its size from the config.
    let (c, file) = resolve_config(
        EncoderFamily::Vit,
        None,
        Some(&fixture("vit_config.json")),
        Some(&weights),
    )
    .unwrap();
    assert_eq!((c.hidden_size, file.is_some()), (32, true));
}

#[test]
fn wrong_input_sizes_are_clear_errors() {
    let encoder = load("vit");
    let x = Tensor::zeros((1, 3, 48, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = encoder.forward_frozen(&x).unwrap_err();
    assert!(e.to_string().contains("32x32"), "{e}");
}

#[test]
fn encoder_arch_names_parse() {
    for arch in Arch::ENCODERS {
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        assert!(arch.encoder().is_some());
    }
    assert_eq!(Arch::Dinov2B14.feature_dim(), 768);
    assert_eq!(Arch::VitS16.feature_dim(), 384);
    assert_eq!(Arch::ClipL14.feature_dim(), 1024);
}
