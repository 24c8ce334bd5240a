//! `lt-cli export` and `lt-cli predict` on a tiny trained run
//! (`configs/ci_tiny.toml` on generated images): every head of the registry
//! that folds into a linear layer gives, through the exported file (its
//! backbone, preprocessing and `fc`), the logits of the head built through
//! the registry (`lt-cli features --head`) to 1e-5; the others are refused
//! with the reason; `predict` reads runs and exported files alike.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

mod common;
use common::write_image;

/// Images and split lists under `root` (the counts of `tests/cli.rs`).
fn make_dataset(root: &Path) {
    for (split, per_class) in [
        ("train", vec![60, 30, 15, 8, 4]),
        ("val", vec![4; 5]),
        ("test", vec![6; 5]),
    ] {
        let mut list = String::new();
        for (c, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                let ext = if i % 3 == 0 { "jpg" } else { "png" };
                let rel = format!("{split}/c{c}/{i:03}.{ext}");
                write_image(&root.join(&rel), c, i + 1000 * split.len());
                list.push_str(&format!("{rel} {c}\n"));
            }
        }
        std::fs::write(root.join(format!("{split}.txt")), list).unwrap();
    }
}

fn lt_cli(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lt-cli"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lt-cli")
}

fn ok(args: &[String]) -> String {
    let out = lt_cli(args);
    assert!(
        out.status.success(),
        "lt-cli {args:?} failed\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[String]) -> String {
    let out = lt_cli(args);
    assert!(!out.status.success(), "lt-cli {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The registry heads that fold with the CI config (NCM is `cl2n` + `l2`
/// there; DisAlign never folds).
const FOLDABLE: [&str; 9] = [
    "joint",
    "crt",
    "tau_norm",
    "lws",
    "posthoc_la",
    "crt_la",
    "learned_tau",
    "mislas",
    "wb",
];

#[test]
fn exported_heads_give_the_registry_logits_and_predict_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    make_dataset(&data);
    std::fs::write(data.join("classes.txt"), "red\ngreen\nblue\nyellow\ncyan\n").unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ci_tiny.toml");
    let list = |n: &str| data.join(n).to_str().unwrap().to_string();
    let mut base = args(&["--config", config.to_str().unwrap()]);
    for s in [
        format!("data.root={:?}", data.to_str().unwrap()),
        format!("data.train_list={:?}", list("train.txt")),
        format!("data.val_list={:?}", list("val.txt")),
        format!("data.test_list={:?}", list("test.txt")),
        format!("run_dir={:?}", run.to_str().unwrap()),
    ] {
        base.extend(["--set".to_string(), s]);
    }
    let with = |cmd: &[&str], extra: &[&str]| -> Vec<String> {
        let mut v = args(cmd);
        v.extend(base.iter().cloned());
        v.extend(args(extra));
        v
    };
    ok(&with(&["run"], &[]));
    assert_eq!(lt_train::heads::names().len(), FOLDABLE.len() + 2);

    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let device = candle_core::Device::Cpu;
    // NCM is linear on raw features with the dot-product score.
    let linear_ncm = [
        "--set",
        "eval.ncm.feature=\"un\"",
        "--set",
        "eval.ncm.distance=\"cos\"",
    ];
    let cases = FOLDABLE
        .iter()
        .map(|h| (*h, &[][..]))
        .chain([("ncm", &linear_ncm[..])]);
    for (head, sets) in cases {
        let model = out_dir.join(format!("{head}.safetensors"));
        let mut extra = vec!["--head", head, "--out", model.to_str().unwrap()];
        extra.extend(sets);
        let said = ok(&with(&["export"], &extra));
        assert!(said.contains(&format!("exported {head}")), "{said}");
        // The registry head's logits on the test split.
        let feats = out_dir.join(format!("features_{head}"));
        let mut extra = vec![
            "--head",
            head,
            "--split",
            "test",
            "--out",
            feats.to_str().unwrap(),
        ];
        extra.extend(sets);
        ok(&with(&["features"], &extra));
        let want = candle_core::safetensors::load(feats.join("test.safetensors"), &device).unwrap()
            ["logits"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The exported file alone: its backbone, preprocessing and fc.
        let m = lt_train::export::ExportedModel::load(&model, &device).unwrap();
        assert_eq!(m.meta.head, head);
        assert_eq!(m.meta.class_names[4], "cyan");
        assert_eq!(m.meta.eval_preset, "cifar_eval");
        assert_eq!(
            m.meta.tau.is_some(),
            ["tau_norm", "posthoc_la", "learned_tau"].contains(&head),
            "{head}: tau {:?}",
            m.meta.tau
        );
        let test =
            lt_data::split_list::read_split_list(&data.join("test.txt"), &data, Some(5)).unwrap();
        let got = lt_train::export::dataset_logits(
            |x| m.logits(x),
            Arc::new(test),
            m.transform().unwrap(),
            7,
            1,
            &device,
        )
        .unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{head}: logits differ by {worst}");
    }

    // Heads that are not a linear layer are refused, naming head and reason.
    let nowhere = out_dir.join("refused.safetensors");
    for (head, why) in [
        ("ncm", "normalises each feature vector"),
        ("disalign", "per-image confidence"),
    ] {
        let e = fails(&with(
            &["export"],
            &["--head", head, "--out", nowhere.to_str().unwrap()],
        ));
        assert!(
            e.contains(&format!("head `{head}`")) && e.contains(why),
            "{e}"
        );
        assert!(!nowhere.exists());
    }

    // predict: an exported model and its run agree; a list prints accuracy.
    let model = out_dir.join("tau_norm.safetensors");
    let from_model = ok(&args(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--list",
        &list("test.txt"),
        "--top-k",
        "2",
    ]));
    let from_run = ok(&args(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--head",
        "tau_norm",
        "--list",
        &list("test.txt"),
        "--top-k",
        "2",
    ]));
    let parse = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, b) = (parse(&from_model), parse(&from_run));
    assert_eq!(a.len(), 30);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["image"], y["image"]);
        assert_eq!(x["top_k"][0]["class"], y["top_k"][0]["class"]);
        assert_eq!(x["top_k"].as_array().unwrap().len(), 2);
        let (p, q) = (
            x["top_k"][0]["prob"].as_f64().unwrap(),
            y["top_k"][0]["prob"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        let name = x["top_k"][0]["name"].as_str().unwrap();
        assert!(["red", "green", "blue", "yellow", "cyan"].contains(&name));
    }
    // A folder of images, as CSV into a file, with the accuracy-free summary.
    let csv = out_dir.join("p.csv");
    let said = ok(&args(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--images",
        data.join("val").to_str().unwrap(),
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]));
    assert!(said.contains("wrote 20 predictions"), "{said}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("image,class_1,name_1,prob_1,"), "{text}");
    assert_eq!(text.lines().count(), 21);
    let out = lt_cli(&args(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--list",
        &list("test.txt"),
        "--out",
        out_dir.join("p.jsonl").to_str().unwrap(),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("top-1 accuracy: "));

    // Bad input: an empty folder, an undecodable image, a wrong head.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let m = model.to_str().unwrap();
    let e = fails(&args(&[
        "predict",
        "--model",
        m,
        "--images",
        empty.to_str().unwrap(),
    ]));
    assert!(e.contains("no image files"), "{e}");
    let bad = empty.join("broken.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let e = fails(&args(&[
        "predict",
        "--model",
        m,
        "--images",
        empty.to_str().unwrap(),
    ]));
    assert!(e.contains("broken.png"), "{e}");
    let e = fails(&args(&[
        "predict",
        "--model",
        m,
        "--head",
        "lws",
        "--images",
        empty.to_str().unwrap(),
    ]));
    assert!(e.contains("not `lws`"), "{e}");
    let e = fails(&args(&[
        "predict",
        "--model",
        &list("test.txt"),
        "--images",
        m,
    ]));
    assert!(e.contains("test.txt"), "{e}");
}
