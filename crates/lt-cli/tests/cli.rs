//! End-to-end test of every `lt-cli` command on a tiny generated image-folder
//! dataset (5 classes, long-tailed, 32x32 PNG and JPEG files) with
//! `configs/ci_tiny.toml`. It checks the wiring (outputs exist and parse),
//! not accuracy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::write_image;

const TRAIN_COUNTS: [usize; 5] = [60, 30, 15, 8, 4];
const VAL_PER_CLASS: usize = 4;
const TEST_PER_CLASS: usize = 6;

/// Generates the images and the three split lists under `root`.
fn make_dataset(root: &Path) {
    for (split, per_class) in [
        ("train", TRAIN_COUNTS.to_vec()),
        ("val", vec![VAL_PER_CLASS; 5]),
        ("test", vec![TEST_PER_CLASS; 5]),
    ] {
        let mut list = String::new();
        for (c, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                // Mix formats: the loader detects them from the content.
                let ext = if i % 3 == 0 { "jpg" } else { "png" };
                let rel = format!("{split}/c{c}/{i:03}.{ext}");
                write_image(&root.join(&rel), c, i + 1000 * (split.len()));
                list.push_str(&format!("{rel} {c}\n"));
            }
        }
        std::fs::write(root.join(format!("{split}.txt")), list).unwrap();
    }
}

/// The `--set` overrides that point `configs/ci_tiny.toml` at the generated
/// data and a run directory.
fn data_sets(data: &Path, run: &Path) -> Vec<String> {
    let list = |name: &str| data.join(name).to_str().unwrap().to_string();
    vec![
        format!("data.root={:?}", data.to_str().unwrap()),
        format!("data.train_list={:?}", list("train.txt")),
        format!("data.val_list={:?}", list("val.txt")),
        format!("data.test_list={:?}", list("test.txt")),
        format!("run_dir={:?}", run.to_str().unwrap()),
    ]
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ci_tiny.toml")
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lt-cli {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_command_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    make_dataset(&data);
    let config = config_path();
    let config = config.to_str().unwrap();
    let sets = data_sets(&data, &run);
    let with = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.push("--config".into());
        v.push(config.into());
        for s in &sets {
            v.push("--set".into());
            v.push(s.clone());
        }
        v
    };
    let call = |cmd: &[&str]| -> String {
        let args = with(cmd);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ok(&refs)
    };

    // Stage 1.
    let out = call(&["train"]);
    assert!(out.contains("stage1: 2 of 2 epochs"), "{out}");
    assert!(out.contains("best val"), "{out}");
    assert!(run.join("config.toml").is_file());
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r["val"]["top1"].is_number() && r["test"]["top1"].is_number()));
    let data_info = json(&run.join("data.json"));
    assert_eq!(
        data_info["train"]["counts"],
        serde_json::json!(TRAIN_COUNTS)
    );
    assert_eq!(data_info["train"]["sha256"].as_str().unwrap().len(), 64);
    assert!(run.join("checkpoints/stage1_last.safetensors").is_file());
    assert!(run.join("checkpoints/stage1_best.safetensors").is_file());
    assert_eq!(json(&run.join("checkpoints/stage1_last.json"))["epoch"], 2);

    // A second `train` must not silently overwrite the run.
    let args = with(&["train"]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let again = lt_cli(&refs);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // Resuming a finished run is a no-op that succeeds and reports the last epoch.
    let out = call(&["train", "--resume"]);
    assert!(
        out.contains("resumed after epoch 2") && out.contains("last epoch: val top-1"),
        "{out}"
    );

    // Stage 2.
    let out = call(&["retrain", "--head", "crt"]);
    assert!(out.contains("crt: 1 of 1 epochs"), "{out}");
    let out = call(&["retrain", "--head", "lws"]);
    assert!(out.contains("lws: 1 of 1 epochs"), "{out}");
    assert!(run.join("checkpoints/crt_best.safetensors").is_file());
    assert!(run.join("checkpoints/lws_best.safetensors").is_file());
    // The heads that followed decoupling train the same way.
    for head in lt_train::heads::trained_names() {
        if head == "crt" || head == "lws" {
            continue;
        }
        let out = call(&["retrain", "--head", head]);
        assert!(out.contains(&format!("{head}: 1 of 1 epochs")), "{out}");
    }

    // Every head.
    let out = call(&["eval", "--head", "all"]);
    for label in [
        "Joint", "NCM", "cRT", "τ-norm", "LWS", "LA-cRT", "MiSLAS", "DisAlign", "WB",
    ] {
        assert!(
            out.contains(&format!("| {label} |")),
            "{label} missing:\n{out}"
        );
    }
    assert!(
        out.contains("train_count"),
        "the rule must be printed:\n{out}"
    );
    let results = json(&run.join("results.json"));
    assert_eq!(results["config_name"], "ci_tiny");
    assert_eq!(results["seed"], 0);
    assert_eq!(results["sampler"], "instance_balanced");
    assert_eq!(results["split"], "test");
    assert_eq!(
        results["train_class_counts"],
        serde_json::json!(TRAIN_COUNTS)
    );
    let heads = results["heads"].as_array().unwrap();
    assert_eq!(heads.len(), lt_train::heads::REGISTRY.len());
    for h in heads {
        assert_eq!(h["evaluation"]["per_class"].as_array().unwrap().len(), 5);
        assert_eq!(h["evaluation"]["n"], 5 * TEST_PER_CLASS);
        assert!(h["val"]["top1"].is_number());
    }
    assert_eq!(results["schema_version"], 2);
    let tau = heads.iter().find(|h| h["head"] == "tau_norm").unwrap();
    let curve = tau["tau_sweep"]["curve"].as_array().unwrap();
    // NCM and DisAlign (whose scaling depends on the input) have no fixed
    // class weights; every other head records their norms.
    assert!(heads
        .iter()
        .filter(|h| h["head"] != "ncm" && h["head"] != "disalign")
        .all(|h| h["weight_norms"].as_array().unwrap().len() == 5));
    assert_eq!(curve.len(), 21);
    assert!(results["stage1"]["best_val"]["epoch"].is_number());
    assert!(results["stage1"]["last_val"]["top1"].is_number());
    assert!(results["stage1"]["last_test"]["top1"].is_number());
    // Every head on the shifted test sets: forward 50 ... uniform ... backward 50.
    assert!(out.contains("| Method | forward-50 |"), "{out}");
    assert!(out.contains("| LA (known test prior) |"), "{out}");
    let shifted = &results["shifted_test"];
    let sets = shifted["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 11);
    assert_eq!(sets[0]["shift"]["direction"], "forward");
    assert_eq!(sets[0]["shift"]["imbalance"], 50.0);
    assert_eq!(sets[5]["shift"]["direction"], "uniform");
    assert_eq!(sets[5]["images"], 5 * TEST_PER_CLASS);
    // Forward 50 over 6 images per class: 6 * 50^(-r/4), truncated.
    assert_eq!(sets[0]["class_counts"], serde_json::json!([6, 2, 0, 0, 0]));
    assert_eq!(sets[10]["class_counts"], serde_json::json!([0, 0, 0, 2, 6]));
    let rows = shifted["heads"].as_array().unwrap();
    assert_eq!(rows.len(), heads.len());
    for row in rows.iter().chain([&shifted["reference"]]) {
        let top1 = row["top1"].as_array().unwrap();
        assert_eq!(top1.len(), 11);
        assert!(top1
            .iter()
            .all(|a| (0.0..=1.0).contains(&a.as_f64().unwrap())));
    }
    // The uniform column is each head's top-1 on the whole split.
    for (row, h) in rows.iter().zip(heads) {
        assert_eq!(row["head"], h["head"]);
        assert_eq!(row["top1"][5], h["evaluation"]["top1"]);
    }

    // Only some heads.
    let out = call(&["eval", "--head", "joint", "--head", "ncm"]);
    assert!(out.contains("| Joint |") && out.contains("| NCM |") && !out.contains("| LWS |"));

    // The tau sweep alone.
    let out = call(&["tau-sweep"]);
    assert!(out.contains("chosen tau"), "{out}");
    assert_eq!(
        json(&run.join("tau_sweep.json"))["curve"]
            .as_array()
            .unwrap()
            .len(),
        21
    );

    // Features of every split.
    let out = call(&["features"]);
    for (split, n) in [
        ("train", TRAIN_COUNTS.iter().sum::<usize>()),
        ("val", 5 * VAL_PER_CLASS),
        ("test", 5 * TEST_PER_CLASS),
    ] {
        let p = run.join(format!("features/{split}.safetensors"));
        assert!(out.contains(p.to_str().unwrap()), "{out}");
        let t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        assert_eq!(t["features"].dims(), &[n, 64]);
        assert_eq!(t["labels"].dims(), &[n]);
        assert_eq!(t["logits"].dims(), &[n, 5]);
    }
    call(&["features", "--head", "lws", "--split", "val"]);
    // Any head of the registry exports its logits, NCM included.
    call(&[
        "features",
        "--head",
        "ncm",
        "--split",
        "val",
        "--out",
        run.join("ncm_features").to_str().unwrap(),
    ]);
    assert!(run.join("ncm_features/val.safetensors").is_file());
    // The registry, listed; an unknown head is refused with the known ones.
    let heads = ok(&["heads"]);
    for h in ["joint", "ncm", "tau_norm", "crt", "lws"] {
        assert!(heads.contains(h), "{heads}");
    }
    assert!(heads.contains("trained"), "{heads}");
    let args = with(&["eval", "--head", "nope"]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let bad = lt_cli(&refs);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nope") && err.contains("tau_norm"), "{err}");
    let args = with(&["retrain", "--head", "ncm"]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let bad = lt_cli(&refs);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not trained"));

    // Split statistics.
    let train_list = data.join("train.txt");
    let out = ok(&[
        "split-stats",
        train_list.to_str().unwrap(),
        "--image-root",
        data.to_str().unwrap(),
        "--num-classes",
        "5",
        "--json",
    ]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["counts"], serde_json::json!(TRAIN_COUNTS));
    assert_eq!(stats["imbalance_ratio"], 15.0);
    let out = ok(&[
        "split-stats",
        train_list.to_str().unwrap(),
        "--many-above",
        "20",
        "--few-below",
        "10",
    ]);
    assert!(out.contains("many 2 / medium 1 / few 2"), "{out}");
    assert!(out.contains("train_count"), "{out}");

    // The whole pipeline in one command, replacing the run above.
    let out = call(&["run", "--overwrite"]);
    for part in ["stage1: 2 of 2 epochs", "| Joint |", "| cRT |", "| LWS |"] {
        assert!(out.contains(part), "{part} missing:\n{out}");
    }
    assert!(run.join("results.json").is_file());
    // `run` ends with the run's report, its one-page HTML included.
    assert!(out.contains("report: "), "{out}");
    assert!(run.join("report/report.html").is_file());
    // The command that trained it, recorded once though every stage of the
    // pipeline ran under it, and nothing from before the overwrite.
    let commands = lt_run::Commands::read(&run.join("commands.json"))
        .unwrap()
        .commands;
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(
        commands[0]
            .command
            .starts_with("lt-cli run --overwrite --config "),
        "{commands:?}"
    );

    // The time breakdown: printed, and written as `timings.json` with a
    // phase for every command of the pipeline (each after its loading).
    for part in [
        "time breakdown:",
        "  loading ",
        "  stage 1 ",
        "  stage 2 crt ",
        "  total ",
    ] {
        assert!(out.contains(part), "{part} missing:\n{out}");
    }
    let timings = json(&run.join("timings.json"));
    let names: Vec<&str> = timings["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..4], ["loading", "stage 1", "loading", "stage 2 crt"]);
    assert_eq!(names[names.len() - 2..], ["loading", "evaluation"]);
    let seconds: f64 = timings["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seconds"].as_f64().unwrap())
        .sum();
    let total = timings["total_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds <= total + 1e-6, "{timings}");

    // Tables and plots of the run, without training.
    let out = ok(&["report", run.to_str().unwrap()]);
    assert!(out.starts_with("1 runs:"), "{out}");
    assert!(run.join("report/summary.md").is_file());
    assert!(run.join("report/shifted.csv").is_file());
    // The one-page report of the tiny run: its tables and figures inline.
    assert!(out.contains("report.html"), "{out}");
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    for part in [
        "<table class=\"summary\">",
        "<table class=\"run\">",
        "<svg",
        "ci_tiny",
        "<dt>training command</dt><dd><code>lt-cli run ",
    ] {
        assert!(html.contains(part), "{part} missing from report.html");
    }
    let plots = run.join("report/plots/ci_tiny");
    for name in ["reliability", "shifted"] {
        let p = plots.join(format!("{name}_instance_balanced.png"));
        assert!(p.is_file(), "{} missing", p.display());
    }
}

#[test]
fn help_lists_the_environment_variables_read() {
    let help = ok(&["--help"]);
    for var in [
        "RUST_LOG",
        "RAYON_NUM_THREADS",
        "CANDLE_NUM_THREADS",
        "LT_FETCH_SOURCE",
        "LT_HUGE_PAGES",
    ] {
        assert!(help.contains(var), "--help does not name {var}:\n{help}");
    }
}

#[test]
fn config_errors_name_the_key_and_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(config_path())
        .unwrap()
        .replace("eval_every = 1", "eval_every = 1\nevaluate_every = 2");
    std::fs::write(&bad, text).unwrap();
    let out = lt_cli(&["train", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("evaluate_every"),
        "{err}"
    );

    let out = lt_cli(&[
        "train",
        "--config",
        tmp.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    // A missing image list is named before any work starts.
    let out = lt_cli(&[
        "train",
        "--config",
        config_path().to_str().unwrap(),
        "--set",
        "data.train_list=/nonexistent/train.txt",
        "--set",
        &format!("run_dir={:?}", tmp.path().join("r").to_str().unwrap()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/train.txt"));
}

/// A corrupt JPEG met during `lt-cli train` is reported with its whole cause
/// chain: the stage, the image and its list line, and the decoder's own
/// error, each once.
#[test]
fn a_corrupt_jpeg_is_reported_down_to_the_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    // Corrupt the scan data of one training JPEG (the end marker stays, so
    // the file passes the truncation check and reaches the decoder).
    let bad = data.join("train/c0/000.jpg");
    let mut bytes = std::fs::read(&bad).unwrap();
    let sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    for b in &mut bytes[sos + 2..sos + 14] {
        *b = 0xFF;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let config = config_path();
    let mut args: Vec<String> = vec!["train".into(), "--config".into()];
    args.push(config.to_str().unwrap().into());
    let mut sets = data_sets(&data, &tmp.path().join("run"));
    sets.push("data.cache_decoded=false".into());
    for s in sets {
        args.push("--set".into());
        args.push(s);
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = lt_cli(&refs);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{err}"));
    // stage -> data -> image (with its list line) -> decoder.
    assert!(
        line.contains("stage-1 training failed: data: cannot decode image"),
        "{line}"
    );
    assert!(
        line.contains("000.jpg") && line.contains("train.txt:1"),
        "{line}"
    );
    assert!(line.contains("the image decoder failed: "), "{line}");
    assert_eq!(line.matches("000.jpg").count(), 1, "printed once: {line}");
}
