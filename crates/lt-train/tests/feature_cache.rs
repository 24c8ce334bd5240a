//! The run directory's feature cache: a frozen backbone's eval-mode features
//! of a split are computed once and read back bit for bit by every later
//! stage, and only under the key they were computed with (another backbone,
//! other BN statistics, a changed image, a damaged file: computed again).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lt_core::{HeadId, Split};
use lt_models::BnMode;
use lt_train::checkpoint::load_checkpoint;
use lt_train::config::ExperimentConfig;
use lt_train::eval::{extract_features, Features};
use lt_train::experiment::Experiment;
use lt_train::feature_store::{feature_key, split_features};
use lt_train::model::Network;
use lt_train::{RunOptions, StartMode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lt-models/tests/fixtures/encoders")
        .join(name)
}

/// An experiment over the tiny dataset with the tiny ViT of lt-models'
/// fixtures (its weights when `weights`, else a random one) or a ResNet-8;
/// one stage-1 epoch, then `extra`.
fn open(tmp: &Path, encoder: bool, weights: bool, extra: &str) -> Experiment {
    let data = tmp.join("data");
    if !data.exists() {
        common::make_dataset(&data);
    }
    let extra = format!("[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n{extra}");
    let mut text = common::config(&data, &tmp.join("run"), &extra);
    if encoder {
        let mut model = format!(
            "arch = \"vit\"\nencoder_config = {:?}",
            fixture("vit_config.json").to_str().unwrap()
        );
        if weights {
            model.push_str(&format!(
                "\nweights = {:?}",
                fixture("vit.safetensors").to_str().unwrap()
            ));
        }
        text = text.replace("arch = \"resnet8\"", &model);
    }
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
}

fn network(exp: &Experiment, seed: u64) -> Network {
    Network::from_config(
        &exp.config.model,
        exp.num_classes(),
        seed,
        &Device::Cpu,
        true,
    )
    .unwrap()
}

fn direct(exp: &Experiment, net: &Network, split: Split) -> Features {
    extract_features(
        &net.backbone,
        &exp.eval_loader(split).unwrap(),
        exp.config.eval.batch_size,
        BnMode::Eval,
        "direct",
        &exp.dist,
    )
    .unwrap()
}

/// Where `backbone`'s features of `split` are cached.
fn cache_path(exp: &Experiment, backbone: &lt_models::Backbone, split: Split) -> PathBuf {
    exp.run
        .feature_cache(split, &feature_key(exp, backbone, split).unwrap())
}

/// The one cached feature file of `split`.
fn only_cached(exp: &Experiment, split: Split) -> PathBuf {
    let files = exp.run.feature_cache_files(split).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn stage1(exp: &Experiment) {
    let fresh = RunOptions {
        start: StartMode::Fresh,
        stop_after_epoch: None,
    };
    lt_train::stage1::train_stage1(exp, fresh).unwrap();
}

/// Trains the stage-2 head `head` from the beginning.
fn retrain(exp: &Experiment, head: &'static str) {
    let again = RunOptions {
        start: StartMode::Overwrite,
        stop_after_epoch: None,
    };
    lt_train::stage2::retrain(exp, &HeadId::new_static(head), again).unwrap();
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Rewrites the cached features of `path` as `features`, keeping its key.
fn replace_cached(path: &Path, features: &Tensor) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    tensors.insert("features".into(), features.clone());
    let sorted: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let meta: Option<HashMap<String, String>> = meta.metadata().clone();
    let out =
        safetensors::tensor::serialize(sorted.iter().map(|(k, v)| (k.as_str(), v)), meta).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn an_encoder_split_is_extracted_once_and_read_back_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = open(tmp.path(), true, true, "");
    let net = network(&exp, 0);
    let path = cache_path(&exp, &net.backbone, Split::Train);
    assert!(!path.exists());

    let first = split_features(&exp, &net.backbone, Split::Train, "train").unwrap();
    assert!(path.exists(), "the first pass writes the cache");
    let fresh = direct(&exp, &net, Split::Train);
    assert_eq!(bits(&first.features), bits(&fresh.features));
    assert_eq!(first.labels, fresh.labels);

    // The second call reads the file: features planted in it come back.
    let planted = (&first.features * 2.0).unwrap();
    replace_cached(&path, &planted);
    let second = split_features(&exp, &net.backbone, Split::Train, "train").unwrap();
    assert_eq!(bits(&second.features), bits(&planted));
    assert_eq!(second.labels, first.labels);

    // Other splits have their own file.
    split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    assert!(cache_path(&exp, &net.backbone, Split::Val).exists());
}

#[test]
fn another_backbone_or_a_changed_image_recomputes_the_features() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = open(tmp.path(), true, false, "");
    let a = network(&exp, 1);
    let b = network(&exp, 2);
    let path = cache_path(&exp, &b.backbone, Split::Val);
    let key_a = feature_key(&exp, &a.backbone, Split::Val).unwrap();
    assert_ne!(key_a, feature_key(&exp, &b.backbone, Split::Val).unwrap());

    let fa = split_features(&exp, &a.backbone, Split::Val, "a").unwrap();
    let fb = split_features(&exp, &b.backbone, Split::Val, "b").unwrap();
    assert_ne!(bits(&fa.features), bits(&fb.features));
    assert_eq!(
        bits(&fb.features),
        bits(&direct(&exp, &b, Split::Val).features)
    );
    // Each backbone keeps its own file.
    assert!(cache_path(&exp, &a.backbone, Split::Val).exists() && path.exists());
    assert_eq!(exp.run.feature_cache_files(Split::Val).unwrap().len(), 2);

    // Plant other features in b's file, then change one
    // image: the key changes and the planted features are not used.
    replace_cached(&path, &(&fb.features * 3.0).unwrap());
    let image = exp.dataset(Split::Val).unwrap().images()[0].clone();
    let lt_data::dataset::ImageSource::File(image) = image else {
        panic!("the tiny dataset is a folder of PNG files")
    };
    let before = feature_key(&exp, &b.backbone, Split::Val).unwrap();
    let img = image::RgbImage::from_pixel(32, 32, image::Rgb([9, 99, 199]));
    img.save(&image).unwrap();
    assert_ne!(before, feature_key(&exp, &b.backbone, Split::Val).unwrap());
    let again = split_features(&exp, &b.backbone, Split::Val, "b").unwrap();
    assert_eq!(
        bits(&again.features),
        bits(&direct(&exp, &b, Split::Val).features)
    );
    assert_ne!(bits(&again.features), bits(&fb.features), "image 0 changed");
}

#[test]
fn a_damaged_cache_file_is_computed_again_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = open(tmp.path(), true, true, "");
    let net = network(&exp, 0);
    let path = cache_path(&exp, &net.backbone, Split::Val);
    let good = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    for damage in [
        &b"not a safetensors file"[..],
        &std::fs::read(&path).unwrap()[..40],
    ] {
        std::fs::write(&path, damage).unwrap();
        let f = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
        assert_eq!(bits(&f.features), bits(&good.features));
        let rewritten = std::fs::read(&path).unwrap();
        assert!(rewritten.len() > 40, "the damaged file is replaced");
    }
    // A file of the right key but another width is not used either.
    replace_cached(
        &path,
        &Tensor::zeros((12, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let f = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    assert_eq!(bits(&f.features), bits(&good.features));
}

#[test]
fn resnet_features_are_cached_under_their_bn_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = open(tmp.path(), false, false, "");
    let net = network(&exp, 0);
    let path = cache_path(&exp, &net.backbone, Split::Val);
    let f = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    assert_eq!(f.len(), 12);
    assert!(path.exists());
    assert_eq!(
        bits(&f.features),
        bits(&direct(&exp, &net, Split::Val).features)
    );
    let planted = (&f.features * 2.0).unwrap();
    replace_cached(&path, &planted);
    let read = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    assert_eq!(bits(&read.features), bits(&planted), "read from the file");

    // Refreshed BN statistics (what cRT with `bn = "train"` does) are
    // another key: computed again, into a file of their own.
    let key = feature_key(&exp, &net.backbone, Split::Val).unwrap();
    let (name, mean) = net
        .backbone
        .buffers()
        .into_iter()
        .find(|(n, _)| n.ends_with("running_mean"))
        .expect("a BN buffer");
    mean.set(&(mean.as_tensor() + 0.5).unwrap()).unwrap();
    assert_ne!(
        key,
        feature_key(&exp, &net.backbone, Split::Val).unwrap(),
        "{name} is part of the key"
    );
    let moved = split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
    assert_eq!(
        bits(&moved.features),
        bits(&direct(&exp, &net, Split::Val).features)
    );
    assert_ne!(bits(&moved.features), bits(&f.features));
    assert!(path.exists() && cache_path(&exp, &net.backbone, Split::Val).exists());
}

#[test]
fn the_most_recently_written_files_of_a_split_are_kept() {
    use lt_train::feature_store::MAX_FILES_PER_SPLIT;
    let tmp = tempfile::tempdir().unwrap();
    let exp = open(tmp.path(), false, false, "");
    let nets: Vec<Network> = (0..MAX_FILES_PER_SPLIT as u64 + 2)
        .map(|seed| network(&exp, seed))
        .collect();
    let mut written = Vec::new();
    for net in &nets {
        split_features(&exp, &net.backbone, Split::Val, "val").unwrap();
        written.push(cache_path(&exp, &net.backbone, Split::Val));
        // Modification times of the file system may be coarse.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut kept = exp.run.feature_cache_files(Split::Val).unwrap();
    kept.sort();
    let mut newest = written[written.len() - MAX_FILES_PER_SPLIT..].to_vec();
    newest.sort();
    assert_eq!(kept, newest);
    // Another split's files are not counted with these.
    split_features(&exp, &nets[0].backbone, Split::Train, "train").unwrap();
    assert_eq!(
        exp.run.feature_cache_files(Split::Val).unwrap().len(),
        MAX_FILES_PER_SPLIT
    );
}

#[test]
fn a_frozen_encoder_pipeline_reads_each_split_from_the_cache() {
    // Stage 1 (the linear probe) writes train and val; cRT then reads them
    // (it trains on cached features: the training preset is the eval one)
    // and rewrites neither.
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[stage2.crt]\nepochs = 2\nbatch_size = 8\n";
    let mut cfg = open(tmp.path(), true, true, extra).config;
    cfg.data.train_preset = cfg.data.eval_preset;
    let exp = Experiment::open(cfg, "config.toml").unwrap();
    stage1(&exp);
    let (train, val) = (
        only_cached(&exp, Split::Train),
        only_cached(&exp, Split::Val),
    );
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (train_inode, val_inode) = (inode(&train), inode(&val));

    let head = |exp: &Experiment| {
        retrain(exp, "crt");
        let (ck, _) = load_checkpoint(&exp.run.last_checkpoint("crt"), &Device::Cpu).unwrap();
        bits(&ck["fc.weight"])
    };
    let trained = head(&exp);
    assert_eq!(inode(&train), train_inode, "cRT rewrote the train features");
    assert_eq!(inode(&val), val_inode, "cRT rewrote the val features");
    assert_eq!(trained, head(&exp), "cRT is deterministic");

    // Planted training features (the real ones doubled) train another head:
    // cRT read them from the file, not from the encoder.
    let cached = candle_core::safetensors::load(&train, &Device::Cpu).unwrap();
    replace_cached(&train, &(&cached["features"] * 2.0).unwrap());
    assert_ne!(trained, head(&exp));
}

#[test]
fn heads_on_a_frozen_resnet_share_the_cached_features() {
    // cRT with BN in eval mode and no augmentation trains on cached
    // features: the first head writes train and val, the second (LWS)
    // reads them.
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[stage2.crt]\nepochs = 2\nbatch_size = 8\nbn = \"eval\"\naugment = false\n\
                 [stage2.lws]\nepochs = 2\nbatch_size = 8\nbn = \"eval\"\naugment = false\n";
    let exp = open(tmp.path(), false, false, extra);
    stage1(&exp);
    assert!(exp
        .run
        .feature_cache_files(Split::Train)
        .unwrap()
        .is_empty());
    retrain(&exp, "crt");
    let (train, val) = (
        only_cached(&exp, Split::Train),
        only_cached(&exp, Split::Val),
    );
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (train_inode, val_inode) = (inode(&train), inode(&val));
    retrain(&exp, "lws");
    assert_eq!(
        (
            only_cached(&exp, Split::Train),
            only_cached(&exp, Split::Val)
        ),
        (train.clone(), val.clone())
    );
    assert_eq!(inode(&train), train_inode, "LWS rewrote the train features");
    assert_eq!(inode(&val), val_inode, "LWS rewrote the val features");
}
