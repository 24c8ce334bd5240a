//! Interrupted pipelines, through the binary on a tiny generated dataset
//! with `configs/ci_tiny.toml`: `run --resume` continues from whatever stage
//! a run had reached (stage 1 partly or wholly done, trained heads not
//! started, partly or wholly done, evaluation not done), and a run killed
//! with SIGKILL at seeded points, then resumed, ends with checkpoints
//! byte-identical to those of an uninterrupted run.
//!
//! The kill points are seeded fractions of the uninterrupted run's duration;
//! where they land (which stage, which write) varies with the machine's
//! load, and every landing point must give the same result. A handful run
//! here; `kill_9_at_many_points_then_resume` (ignored) runs more, killing
//! the resumed runs too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::write_image;

const TRAIN_COUNTS: [usize; 5] = [60, 30, 15, 8, 4];

fn make_dataset(root: &Path) {
    for (split, per_class) in [
        ("train", TRAIN_COUNTS.to_vec()),
        ("val", vec![4; 5]),
        ("test", vec![6; 5]),
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

/// `lt-cli <cmd> --config ci_tiny.toml --set ...` on `data`, into `run`.
fn command(data: &Path, run: &Path, cmd: &[&str]) -> Command {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ci_tiny.toml");
    let list = |name: &str| data.join(name).to_str().unwrap().to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_lt-cli"));
    c.args(cmd)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn");
    for s in [
        format!("data.root={:?}", data.to_str().unwrap()),
        format!("data.train_list={:?}", list("train.txt")),
        format!("data.val_list={:?}", list("val.txt")),
        format!("data.test_list={:?}", list("test.txt")),
        format!("run_dir={:?}", run.to_str().unwrap()),
    ] {
        c.arg("--set").arg(s);
    }
    c
}

fn ok(data: &Path, run: &Path, cmd: &[&str]) -> String {
    let out: Output = command(data, run, cmd).output().expect("running lt-cli");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lt-cli {cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The checkpoint files of a run directory (tensors and metadata copies),
/// by name.
fn checkpoints(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Every head's evaluation in `results.json`.
fn evaluations(run: &Path) -> serde_json::Value {
    let bytes = std::fs::read(run.join("results.json")).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let heads: Vec<serde_json::Value> = r["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| serde_json::json!([h["head"], h["epoch"], h["evaluation"], h["tau"]]))
        .collect();
    serde_json::json!([heads, r["skipped"], r["shifted_test"]])
}

/// `run` ends as the uninterrupted `reference` did: the same checkpoint
/// files, byte for byte (names, tensors, optimiser state and metadata), and
/// the same evaluation of every head.
fn assert_same_as(reference: &Path, run: &Path, what: &str) {
    let (a, b) = (checkpoints(reference), checkpoints(run));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{what}: other checkpoint files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{what}: {name} differs from the uninterrupted run");
    }
    assert_eq!(
        evaluations(reference),
        evaluations(run),
        "{what}: other results"
    );
}

/// A run directory holds no temp file of an interrupted write once a run
/// has opened it.
fn assert_no_temps(run: &Path) {
    for dir in [run.to_path_buf(), run.join("checkpoints")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{}: {name} left", dir.display());
        }
    }
}

/// Seeded fractions in [0.02, 0.98) (SplitMix64).
fn fractions(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            0.02 + 0.96 * (z >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Starts `cmd` and kills it with SIGKILL after `after` (when it is still
/// running); returns whether it was killed.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting lt-cli");
    let start = Instant::now();
    while start.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = child.kill().is_ok();
    child.wait().unwrap();
    killed
}

/// The uninterrupted reference run; returns its duration.
fn reference(data: &Path, run: &Path) -> Duration {
    let start = Instant::now();
    ok(data, run, &["run"]);
    start.elapsed()
}

#[test]
fn run_resume_continues_from_whatever_stage_was_reached() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let full = tmp.path().join("full");
    reference(&data, &full);

    // Stage 1 partly done.
    let run = tmp.path().join("stage1_partial");
    ok(&data, &run, &["train", "--stop-after-epoch", "1"]);
    let out = ok(&data, &run, &["run", "--resume"]);
    assert!(out.contains("stage1: resumed after epoch 1"), "{out}");
    assert_same_as(&full, &run, "stage 1 partly done");

    // Stage 1 done, no head started (killed before the first cRT
    // checkpoint), then cRT done and the other heads not started: each
    // missing stage starts, each finished one is complete.
    let run = tmp.path().join("stage1_done");
    ok(&data, &run, &["train"]);
    let out = ok(&data, &run, &["run", "--resume"]);
    assert!(out.contains("stage1: resumed after epoch 2"), "{out}");
    assert!(out.contains("crt: 1 of 1 epochs"), "{out}");
    assert_same_as(&full, &run, "stage 1 done");
    let run = tmp.path().join("crt_done");
    ok(&data, &run, &["train"]);
    ok(&data, &run, &["retrain", "--head", "crt"]);
    ok(&data, &run, &["run", "--resume"]);
    assert_same_as(&full, &run, "cRT done, the other heads not started");

    // Everything done but the evaluation (results.json removed): only the
    // evaluation runs again.
    std::fs::remove_file(run.join("results.json")).unwrap();
    let before = checkpoints(&run);
    let out = ok(&data, &run, &["run", "--resume"]);
    assert!(out.contains("crt: resumed after epoch 1"), "{out}");
    assert!(run.join("results.json").is_file());
    assert_eq!(
        checkpoints(&run),
        before,
        "finished stages are not retrained"
    );
    assert_same_as(&full, &run, "evaluation not done");
}

#[test]
fn kill_9_at_seeded_points_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let full = tmp.path().join("full");
    let took = reference(&data, &full);
    for (k, f) in fractions(17, 3).into_iter().enumerate() {
        let run = tmp.path().join(format!("killed_{k}"));
        let at = took.mul_f64(f);
        kill_after(command(&data, &run, &["run"]), at);
        ok(&data, &run, &["run", "--resume"]);
        assert_no_temps(&run);
        assert_same_as(&full, &run, &format!("killed after {at:?}"));
    }
}

#[test]
#[ignore = "slow: a dozen kill points, resumed runs killed too"]
fn kill_9_at_many_points_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let full = tmp.path().join("full");
    let took = reference(&data, &full);
    let points = fractions(2024, 36);
    for (k, f) in points.chunks(3).enumerate() {
        // Killed, then each resume killed again (up to twice), then let run.
        let run = tmp.path().join(format!("killed_{k}"));
        kill_after(command(&data, &run, &["run"]), took.mul_f64(f[0]));
        for g in &f[1..] {
            kill_after(command(&data, &run, &["run", "--resume"]), took.mul_f64(*g));
        }
        ok(&data, &run, &["run", "--resume"]);
        assert_no_temps(&run);
        assert_same_as(&full, &run, &format!("point {k}: {f:?}"));
    }
}
