//! Every config in `configs/` parses and validates, so none of them rots, and
//! a config error names the offending key.

use std::path::{Path, PathBuf};

use lt_train::config::ExperimentConfig;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn all_configs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_config_parses_and_validates() {
    let files = all_configs();
    assert!(
        files.len() >= 19,
        "expected the paper's configs, found {files:?}"
    );
    for f in &files {
        let cfg = ExperimentConfig::load(f, &[]).unwrap_or_else(|e| panic!("{e}"));
        // The name written in the file matches the file, so results are traceable.
        assert_eq!(
            cfg.name(),
            f.file_stem().unwrap().to_str().unwrap(),
            "{}",
            f.display()
        );
        // Round trip through the copy saved with every run.
        let again = ExperimentConfig::from_toml_str(&cfg.to_toml().unwrap(), "copy").unwrap();
        assert_eq!(again, cfg, "{}", f.display());
    }
}

#[test]
fn paper_recipes_have_the_reference_values() {
    let load = |n: &str| ExperimentConfig::load(&configs_dir().join(n), &[]).unwrap();
    for n in [
        "imagenet_lt_x50_ib_e90.toml",
        "imagenet_lt_x50_cb_e90.toml",
        "imagenet_lt_x50_sqrt_e90.toml",
        "imagenet_lt_x50_pb_e200.toml",
    ] {
        let c = load(n);
        assert_eq!(
            (c.stage1.batch_size, c.stage1.lr, c.stage1.weight_decay),
            (512, 0.2, 5e-4)
        );
        assert_eq!((c.stage2.crt().epochs, c.stage2.crt().lr), (10, 0.2));
        assert_eq!(c.stage2.lws().epochs, 5);
        // Official cls_crt.yaml and cls_lws.yaml: ClassAwareSampler, 4 per class.
        assert_eq!(
            c.stage2.crt().sampler,
            lt_samplers::Strategy::class_balanced()
        );
        assert_eq!(
            c.stage2.lws().sampler,
            lt_samplers::Strategy::class_balanced()
        );
    }
    let inat = load("inaturalist2018_r50_ib_e90.toml");
    assert_eq!(inat.stage1.weight_decay, 1e-4);
    assert_eq!(inat.stage2.crt().epochs, 30);
    let places = load("places_lt_r152.toml");
    assert_eq!(
        places.model.trainable_prefixes,
        Some(vec!["layer4.".to_string(), "fc.".to_string()])
    );
    assert_eq!((places.stage1.lr, places.stage1.batch_size), (0.1, 256));
    let short = load("cifar100_lt_r100_short.toml");
    assert_eq!(short.model.arch, lt_models::Arch::ResNet32);
    assert_eq!(
        (short.stage2.crt().epochs, short.stage2.lws().epochs),
        (10, 5)
    );
}

#[test]
fn unknown_key_and_wrong_type_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(configs_dir().join("cifar100_lt_r100.toml")).unwrap();

    let p = dir.path().join("unknown.toml");
    std::fs::write(
        &p,
        base.replace("[stage2.crt]\n", "[stage2.crt]\nepochz = 3\n"),
    )
    .unwrap();
    let e = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("unknown.toml"), "{e}");
    assert!(e.contains("stage2.crt") && e.contains("epochz"), "{e}");

    let p = dir.path().join("wrong_type.toml");
    std::fs::write(&p, base.replace("batch_size = 128", "batch_size = \"big\"")).unwrap();
    let e = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
    assert!(
        e.contains("wrong_type.toml") && e.contains("stage1.batch_size"),
        "{e}"
    );

    let e = ExperimentConfig::load(&dir.path().join("absent.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.toml"), "{e}");

    // Overrides on the command line are checked the same way.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &base).unwrap();
    let e = ExperimentConfig::load(&good, &["stage1.sampler.kind=\"cb\"".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("stage1.sampler"), "{e}");
}

/// The stage hashes a checkpoint remembers must not change when the config
/// code is reorganised: a run started by an earlier build must resume. The
/// values are those the build before the stage-settings rewrite (commit
/// af59370) wrote into the checkpoints of
/// `lt-cli run --config grids/base/tiny_cifar10_lt.toml --set run_dir=runs/compat_tiny`.
#[test]
fn stage_hashes_are_those_earlier_builds_wrote() {
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grids/base/tiny_cifar10_lt.toml");
    let cfg = ExperimentConfig::load(&grid, &["run_dir=runs/compat_tiny".into()]).unwrap();
    for (stage, hash) in [
        (
            "stage1",
            "2600114f4e45e08ca83426a28be94930802c7fe551c9d5e8e27fd42eea5e5792",
        ),
        (
            "crt",
            "4e990c0e8ce801048c0f613527cf7f6a72330bc8e73ff23d773fd53cf8a3fe27",
        ),
        (
            "lws",
            "c1901fec715de729c93a609aee3936a197d91f4b4664fdc58846e48ea43e85e7",
        ),
    ] {
        assert_eq!(cfg.stage_hash(stage).unwrap(), hash, "{stage}");
    }
}

/// Every stage takes a loss from the registry; it enters the stage's hash,
/// round-trips through the saved config, and a bad one names its key.
#[test]
fn stages_take_a_loss_from_the_registry() {
    let base = std::fs::read_to_string(configs_dir().join("ci_tiny.toml")).unwrap();
    let with = |stage1: &str, crt: &str| {
        base.replace(
            "model_select = \"best_val\"\n",
            &format!("model_select = \"best_val\"\n{stage1}\n"),
        )
        .replace("[stage2.crt]\n", &format!("[stage2.crt]\n{crt}\n"))
    };
    let plain = ExperimentConfig::from_toml_str(&base, "ci_tiny.toml").unwrap();
    let la = ExperimentConfig::from_toml_str(
        &with(
            "loss = { kind = \"logit_adjusted\", tau = 1.5 }",
            "loss = { kind = \"balanced_softmax\" }",
        ),
        "la.toml",
    )
    .unwrap();
    assert_eq!(la.stage1.loss.kind, "logit_adjusted");
    assert_eq!(la.stage2.crt().loss.kind, "balanced_softmax");
    assert_ne!(
        la.stage_hash("stage1").unwrap(),
        plain.stage_hash("stage1").unwrap()
    );
    assert_eq!(plain.stage1.loss, lt_train::loss::LossConfig::default());
    let again = ExperimentConfig::from_toml_str(&la.to_toml().unwrap(), "copy").unwrap();
    assert_eq!(again, la);
    let e = ExperimentConfig::from_toml_str(&with("loss = { kind = \"focal\" }", ""), "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("stage1.loss.kind") && e.contains("focal"), "{e}");
    let e = ExperimentConfig::from_toml_str(
        &with(
            "",
            "loss = { kind = \"cross_entropy\", label_smoothing = 2 }",
        ),
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("stage2.crt.loss.label_smoothing"), "{e}");
}
