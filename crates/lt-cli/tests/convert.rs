//! `lt-cli convert`: a PyTorch checkpoint to safetensors, and the
//! classifier-balancing layout imported as the stage 1 of a run that `eval`
//! then evaluates with every head; a checkpoint that does not fit is an
//! error naming the file and the keys, with nothing written. The fixtures
//! are lt-models' (made by PyTorch, see its `make_pth_fixtures.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::write_image;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lt-models/tests/fixtures/torch")
        .join(name)
}

fn lt_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lt-cli"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lt-cli")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Four classes (the fixture's classifier), a few images each.
fn make_run_config(root: &Path) -> PathBuf {
    for (split, n) in [("train", [12, 6, 3, 2]), ("val", [2; 4])] {
        let mut list = String::new();
        for (c, &count) in n.iter().enumerate() {
            for i in 0..count {
                let rel = format!("{split}/c{c}/{i}.png");
                write_image(&root.join(&rel), c, i + 100 * split.len());
                list.push_str(&format!("{rel} {c}\n"));
            }
        }
        std::fs::write(root.join(format!("{split}.txt")), list).unwrap();
    }
    let config = root.join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            r#"name = "imported"
run_dir = {run:?}
seed = 0
device = "cpu"
[data]
root = {root:?}
train_list = {train:?}
val_list = {val:?}
num_classes = 4
train_preset = "cifar_train"
eval_preset = "cifar_eval"
threads = 1
[model]
arch = "resnet8"
[stage1]
epochs = 2
batch_size = 8
lr = 0.05
[eval]
batch_size = 8
"#,
            run = root.join("run").to_str().unwrap(),
            root = root.to_str().unwrap(),
            train = root.join("train.txt").to_str().unwrap(),
            val = root.join("val.txt").to_str().unwrap(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn convert_writes_safetensors_and_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r8.safetensors");
    let o = lt_cli(&[
        "convert",
        fixture("resnet8_cb.pth").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("classifier-balancing") && t.contains("resnet8") && t.contains("fc.weight"),
        "{t}"
    );
    assert!(out.is_file());

    let wrong = dir.path().join("wrong.safetensors");
    let o = lt_cli(&[
        "convert",
        fixture("resnet8_cb.pth").to_str().unwrap(),
        wrong.to_str().unwrap(),
        "--arch",
        "resnet20",
    ]);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("resnet8_cb.pth") && t.contains("missing key(s) [layer1.1.bn1.bias"),
        "{t}"
    );
    let notes = dir.path().join("notes.pth");
    std::fs::write(&notes, "not weights").unwrap();
    let o = lt_cli(&["convert", notes.to_str().unwrap(), wrong.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("notes.pth") && t.contains("not a PyTorch checkpoint"),
        "{t}"
    );
    assert!(!wrong.exists(), "nothing written");
}

#[test]
fn a_released_layout_imported_as_stage_1_evaluates_with_every_head() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_run_config(dir.path());
    let config = config.to_str().unwrap();
    let pth = fixture("resnet8_cb.pth");
    let o = lt_cli(&["convert", pth.to_str().unwrap(), "--config", config]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("imported as stage 1") && t.contains("sha256"),
        "{t}"
    );
    let o = lt_cli(&["eval", "--config", config, "--head", "all"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(dir.path().join("run/results.json").is_file());
    // Again without --overwrite: refused, the run untouched.
    let o = lt_cli(&["convert", pth.to_str().unwrap(), "--config", config]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("--overwrite"), "{t}");
    assert!(dir.path().join("run/results.json").is_file());
}
