//! What `lt-cli` says, through the binary: a fixed tau is reported as fixed
//! (not as chosen on val), an OS error is printed once, and an image listed
//! twice in a split list names the list and both lines.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::write_image;

fn make_dataset(root: &Path) {
    for (split, per_class) in [
        ("train", [12, 8, 4, 3, 2]),
        ("val", [3; 5]),
        ("test", [2; 5]),
    ] {
        let mut list = String::new();
        for (c, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                let rel = format!("{split}/c{c}/{i:03}.png");
                write_image(&root.join(&rel), c, i + 1000 * split.len());
                list.push_str(&format!("{rel} {c}\n"));
            }
        }
        std::fs::write(root.join(format!("{split}.txt")), list).unwrap();
    }
}

fn lt_cli(args: &[&str], sets: &[String]) -> Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ci_tiny.toml");
    let mut c = Command::new(env!("CARGO_BIN_EXE_lt-cli"));
    c.args(args).env("RUST_LOG", "warn");
    if !sets.is_empty() {
        c.arg("--config").arg(config);
    }
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.output().expect("running lt-cli")
}

/// Overrides pointing `ci_tiny.toml` at `data` and `run`, one epoch.
fn sets(data: &Path, run: &Path) -> Vec<String> {
    let list = |name: &str| data.join(name).to_str().unwrap().to_string();
    vec![
        format!("data.root={:?}", data.to_str().unwrap()),
        format!("data.train_list={:?}", list("train.txt")),
        format!("data.val_list={:?}", list("val.txt")),
        format!("data.test_list={:?}", list("test.txt")),
        "stage1.eval_test=false".into(),
        "stage1.epochs=1".into(),
        "stage1.batch_size=8".into(),
        format!("run_dir={:?}", run.to_str().unwrap()),
    ]
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_fixed_tau_is_reported_as_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let mut s = sets(&data, &tmp.path().join("run"));
    stdout_of(&lt_cli(&["train"], &s), "train");
    s.push("eval.tau_select=\"fixed\"".into());
    s.push("eval.tau=0.5".into());
    let out = stdout_of(&lt_cli(&["tau-sweep"], &s), "tau-sweep");
    assert!(out.contains("tau = 0.5 (fixed by eval.tau)"), "{out}");
    assert!(!out.contains("chosen"), "{out}");
    let out = stdout_of(&lt_cli(&["eval", "--head", "tau_norm"], &s), "eval");
    assert!(out.contains("tau = 0.5 (fixed)"), "{out}");
    assert!(!out.contains("chosen"), "{out}");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = lt_cli(&["train"], &sets(&data, &tmp.path().join("run")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train.txt"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing created");
}

#[test]
fn an_image_listed_twice_names_the_list_and_both_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "a/1.png 0\nb/2.png 1\na/3.png 0\nb/2.png 1\n").unwrap();
    let out = lt_cli(&["split-stats", list.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4", list.display()))
            && err.contains("b/2.png")
            && err.contains("line 2"),
        "{err}"
    );
}
