//! A frozen pretrained encoder through the whole pipeline: the linear probe
//! of stage 1 on cached features, every trained head, every head evaluated,
//! and the encoder's weights untouched throughout; then CLIP and DINOv2
//! fine-tuning their last block in stage 1. The encoders are the tiny random
//! ones of lt-models' fixtures (32x32 images, like the tiny dataset).

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use lt_core::HeadId;
use lt_train::checkpoint::load_checkpoint;
use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;
use lt_train::stage2::retrain;
use lt_train::{RunOptions, StartMode};

const FRESH: RunOptions = RunOptions {
    start: StartMode::Fresh,
    stop_after_epoch: None,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lt-models/tests/fixtures/encoders")
        .join(name)
}

/// The error and its causes, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn config(data: &Path, run: &Path, model: &str, extra: &str) -> String {
    common::config(data, run, extra).replace("arch = \"resnet8\"", model)
}

#[test]
fn a_frozen_encoder_feeds_every_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let weights = fixture("vit.safetensors");
    let model = format!(
        "arch = \"vit\"\nweights = {:?}\nencoder_config = {:?}",
        weights.to_str().unwrap(),
        fixture("vit_config.json").to_str().unwrap()
    );
    let mut extra = String::from("[stage1]\nepochs = 2\nbatch_size = 8\nlr = 0.05\n");
    let trained = lt_train::heads::trained_names();
    for h in &trained {
        extra.push_str(&format!("[stage2.{h}]\nepochs = 1\nbatch_size = 8\n"));
    }
    let text = config(&data, &tmp.path().join("run"), &model, &extra);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    let exp = Experiment::open(cfg, "config.toml").unwrap();
    lt_train::stage1::train_stage1(&exp, FRESH).unwrap();

    let dev = Device::Cpu;
    let original = candle_core::safetensors::load(&weights, &dev).unwrap();
    let (s1, _) = load_checkpoint(&exp.run.best_checkpoint("stage1"), &dev).unwrap();
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let key = "encoder.layer.1.attention.attention.query.weight";
    assert!(
        same(&s1[key], &original[key]),
        "the linear probe changed the encoder"
    );
    for h in &trained {
        retrain(&exp, &HeadId::new_static(h), FRESH).unwrap_or_else(|e| panic!("{h}: {e}"));
        let (s2, _) = load_checkpoint(&exp.run.last_checkpoint(*h), &dev).unwrap();
        assert!(same(&s2[key], &original[key]), "{h} changed the encoder");
    }
    let all: Vec<HeadId> = lt_train::heads::names()
        .into_iter()
        .map(HeadId::new_static)
        .collect();
    let results = lt_train::evaluation::evaluate_heads(&exp, &all, false).unwrap();
    assert_eq!(results.heads.len(), all.len());
    for r in &results.heads {
        assert!(r.evaluation.top1.is_finite(), "{}", r.head);
    }

    // CLIP fine-tunes its last block through the stage-1 loop (layer-wise lr
    // decay on); the stem and the first block stay as loaded.
    let clip = format!(
        "arch = \"clip\"\nweights = {:?}\nencoder_config = {:?}\ntrainable = \"last:1\"\nlayer_decay = 0.7",
        fixture("clip.safetensors").to_str().unwrap(),
        fixture("clip_config.json").to_str().unwrap()
    );
    let text = config(
        &data,
        &tmp.path().join("run2"),
        &clip,
        "[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n",
    );
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    let exp = Experiment::open(cfg, "config.toml").unwrap();
    lt_train::stage1::train_stage1(&exp, FRESH).unwrap();
    let (tuned, _) = load_checkpoint(&exp.run.last_checkpoint("stage1"), &dev).unwrap();
    let hub = candle_core::safetensors::load(fixture("clip.safetensors"), &dev).unwrap();
    let hub = |k: &str| &hub[&format!("vision_model.{k}")];
    for frozen in [
        "embeddings.patch_embedding.weight",
        "pre_layrnorm.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.mlp.fc1.weight",
    ] {
        assert!(same(&tuned[frozen], hub(frozen)), "{frozen} was frozen");
    }
    for trained in [
        "encoder.layers.1.layer_norm1.weight",
        "encoder.layers.1.self_attn.q_proj.weight",
        "encoder.layers.1.self_attn.k_proj.weight",
        "encoder.layers.1.mlp.fc1.weight",
        "post_layernorm.weight",
    ] {
        assert!(
            !same(&tuned[trained], hub(trained)),
            "{trained} was trained"
        );
    }

    // DINOv2 fine-tunes its last block (layer-wise lr decay on), the rest frozen.
    let dino = format!(
        "arch = \"dinov2\"\nweights = {:?}\nencoder_config = {:?}\ntrainable = \"last:1\"\nlayer_decay = 0.5",
        fixture("dinov2.safetensors").to_str().unwrap(),
        fixture("dinov2_config.json").to_str().unwrap()
    );
    let text = config(
        &data,
        &tmp.path().join("run4"),
        &dino,
        "[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n",
    );
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    let exp = Experiment::open(cfg, "config.toml").unwrap();
    lt_train::stage1::train_stage1(&exp, FRESH).unwrap();
    let (tuned, _) = load_checkpoint(&exp.run.last_checkpoint("stage1"), &dev).unwrap();
    let hf = candle_core::safetensors::load(fixture("dinov2.safetensors"), &dev).unwrap();
    let hf_key = |i: usize| format!("encoder.layer.{i}.mlp.fc1.weight");
    assert!(
        same(&tuned["blocks.0.mlp.fc1.weight"], &hf[&hf_key(0)]),
        "block 0 was frozen"
    );
    assert!(
        !same(&tuned["blocks.1.mlp.fc1.weight"], &hf[&hf_key(1)]),
        "block 1 was trained"
    );
    assert!(!same(
        &tuned["blocks.1.norm1.weight"],
        &hf["encoder.layer.1.norm1.weight"]
    ));

    // A weights file that does not exist is named.
    let text = config(
        &data,
        &tmp.path().join("run3"),
        "arch = \"vit_b16\"\nweights = \"no/such/vit.safetensors\"",
        &extra,
    );
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    let exp = Experiment::open(cfg, "config.toml").unwrap();
    let e = lt_train::stage1::train_stage1(&exp, FRESH).unwrap_err();
    assert!(
        chain(&e).contains("no/such/vit.safetensors"),
        "{}",
        chain(&e)
    );
}
