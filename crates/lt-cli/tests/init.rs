//! `lt-cli init` on generated image folders: stratified, seeded split lists
//! (the same seed gives the same lists; an existing test split is kept),
//! `classes.txt`, the statistics and histogram, unreadable files listed with
//! their reasons, and a config that parses and that `lt-cli run` trains,
//! re-trains and evaluates; an empty class folder is an error naming it,
//! with nothing written.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::write_image;

const CLASSES: [&str; 4] = ["red", "green", "blue", "yellow"];
const COUNTS: [usize; 4] = [40, 20, 10, 6];

fn make_folder(root: &Path) {
    for (c, (name, n)) in CLASSES.iter().zip(COUNTS).enumerate() {
        for i in 0..n {
            write_image(&root.join(format!("{name}/img_{i:03}.png")), c, i);
        }
    }
    std::fs::write(root.join("red/notes.txt"), "taken on holiday\n").unwrap();
    std::fs::write(
        root.join("blue/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
}

fn lt_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lt-cli"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lt-cli")
}

fn ok(args: &[&str]) -> String {
    let out = lt_cli(args);
    assert!(
        out.status.success(),
        "lt-cli {args:?} failed\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Images per class of a split list.
fn per_class(list: &Path) -> Vec<usize> {
    let mut v = vec![0; CLASSES.len()];
    for line in read(list).lines() {
        let label: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        v[label] += 1;
    }
    v
}

fn lines(p: &Path) -> BTreeSet<String> {
    read(p).lines().map(str::to_string).collect()
}

#[test]
fn init_writes_seeded_stratified_lists_and_a_config_run_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    make_folder(&images);
    let out = tmp.path().join("data");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let init = |out: &Path, seed: &str, extra: &[&str]| {
        let mut a = vec![
            "init".to_string(),
            s(&images),
            "--out".into(),
            s(out),
            "--run-dir".into(),
            s(&tmp.path().join("run")),
            "--val-fraction".into(),
            "0.2".into(),
            "--test-fraction".into(),
            "0.2".into(),
            "--seed".into(),
            seed.into(),
            "--many-above".into(),
            "20".into(),
            "--few-below".into(),
            "10".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&refs)
    };
    let text = init(&out, "1", &[]);

    // Classes in sorted folder order; per class round(0.2 n) (at least 1)
    // for val and test, the rest for training.
    assert_eq!(read(&out.join("classes.txt")), "blue\ngreen\nred\nyellow\n");
    assert_eq!(per_class(&out.join("train.txt")), [6, 12, 24, 4]);
    assert_eq!(per_class(&out.join("val.txt")), [2, 4, 8, 1]);
    assert_eq!(per_class(&out.join("test.txt")), [2, 4, 8, 1]);
    let all: BTreeSet<String> = ["train.txt", "val.txt", "test.txt"]
        .iter()
        .flat_map(|f| lines(&out.join(f)))
        .collect();
    assert_eq!(
        all.len(),
        76,
        "the splits are disjoint and cover every image"
    );

    // The unreadable files, printed and written with their reasons.
    assert!(
        text.contains("left out 2 unreadable files")
            && text.contains("blue/broken.jpg: cannot decode")
            && text.contains("red/notes.txt: not an image file"),
        "{text}"
    );
    let unreadable = read(&out.join("unreadable.txt"));
    assert!(
        unreadable.contains("blue/broken.jpg\tcannot decode")
            && unreadable.contains("red/notes.txt\tnot an image file"),
        "{unreadable}"
    );
    // Statistics under the chosen rule, and the histogram.
    assert!(text.contains("imbalance ratio (train): 6.00"), "{text}");
    assert!(text.contains("many 1 / medium 1 / few 2"), "{text}");
    let stats: serde_json::Value = serde_json::from_str(&read(&out.join("stats.json"))).unwrap();
    assert_eq!(stats["many_medium_few"], serde_json::json!([1, 1, 2]));
    assert_eq!(stats["classes"][2]["name"], "red");
    for f in ["class_counts.png", "class_counts.svg", "train.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // The config is one the real parser accepts, for this data.
    let config = out.join("config.toml");
    let cfg = lt_train::config::ExperimentConfig::load(&config, &[]).unwrap();
    assert_eq!(cfg.data.num_classes, Some(4));
    assert_eq!(cfg.data.root, images);
    assert_eq!(serde_json::to_value(cfg.model.arch).unwrap(), "resnet32");
    assert_eq!(cfg.stage1.batch_size, 16);
    assert_eq!(cfg.seed, 1);

    // A second init refuses to replace the config without --force.
    let again = lt_cli(&["init", &s(&images), "--out", &s(&out)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // The same seed gives the same lists; another seed others.
    let same = tmp.path().join("same");
    init(&same, "1", &[]);
    let other = tmp.path().join("other");
    init(&other, "2", &[]);
    for f in ["train.txt", "val.txt", "test.txt"] {
        assert_eq!(read(&out.join(f)), read(&same.join(f)), "{f}");
        assert_ne!(read(&out.join(f)), read(&other.join(f)), "{f}");
    }

    // Again with --force and another seed: the test split is kept as it was,
    // train and val are drawn again from the rest.
    let test_before = read(&out.join("test.txt"));
    let text = init(&out, "3", &["--force"]);
    assert!(text.contains("test split kept from"), "{text}");
    assert_eq!(read(&out.join("test.txt")), test_before);
    let train_val: BTreeSet<String> = ["train.txt", "val.txt"]
        .iter()
        .flat_map(|f| lines(&out.join(f)))
        .collect();
    let test: BTreeSet<String> = lines(&out.join("test.txt"));
    assert!(train_val.is_disjoint(&test));
    assert_eq!(train_val.len() + test.len(), 76);

    // `run` trains on it (shortened: ResNet-8, one epoch per stage).
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        s(&config),
        "--set".into(),
        "model.arch=resnet8".into(),
        "--set".into(),
        "stage1.epochs=1".into(),
    ];
    for h in lt_train::heads::trained_names() {
        args.extend(["--set".into(), format!("stage2.{h}.epochs=1")]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(&refs);
    assert!(text.contains("| cRT |") || text.contains("cRT"), "{text}");
    assert!(tmp.path().join("run/results.json").is_file());
}

#[test]
fn an_empty_class_folder_is_an_error_naming_it_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    for i in 0..5 {
        write_image(&images.join(format!("cat/{i}.png")), 0, i);
    }
    std::fs::create_dir_all(images.join("dog")).unwrap();
    let out = tmp.path().join("data");
    let o = lt_cli(&[
        "init",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&images.join("dog").display().to_string()) && err.contains("has no images"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written");

    // A class folder whose only file is not an image is as empty.
    std::fs::write(images.join("dog/readme.md"), "woof").unwrap();
    let o = lt_cli(&[
        "init",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("(dog) has no images"));

    // An existing split list is a source too.
    for i in 0..5 {
        write_image(&images.join(format!("dog/{i}.png")), 1, i);
    }
    let mut list = String::new();
    for (c, name) in ["cat", "dog"].iter().enumerate() {
        for i in 0..5 {
            list.push_str(&format!("{name}/{i}.png {c}\n"));
        }
    }
    let list_path = tmp.path().join("all.txt");
    std::fs::write(&list_path, list).unwrap();
    let text = ok(&[
        "init",
        list_path.to_str().unwrap(),
        "--image-root",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains("all: 2 classes, 10 images"), "{text}");
    assert_eq!(read(&out.join("classes.txt")), "class_0\nclass_1\n");
    assert_eq!(per_class(&out.join("train.txt"))[..2], [3, 3]);
}
