//! `cargo xtask sweep` end to end with a stand-in for `lt-cli` (a shell
//! script that writes checkpoints and `results.json` the way `lt-cli` lays
//! them out), so the runner is tested without training: every step runs in
//! order, stage 1 is shared, a killed sweep resumes with `--resume`, finished
//! cells are skipped and the report is written. The real tiny grid is the
//! ignored test at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Stand-in for `lt-cli`: logs its arguments to `$LT_FAKE_LOG`; `train`
/// fails once after writing a checkpoint when `$LT_FAKE_KILL` names the run
/// directory (a sweep killed during stage 1).
#[cfg(unix)]
const FAKE_CLI: &str = r#"#!/bin/sh
set -e
echo "$*" >> "$LT_FAKE_LOG"
cmd=$1; shift
config=""; heads=""; resume=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --head) heads="$heads $2"; shift 2 ;;
    --resume) resume=1; shift ;;
    *) shift ;;
  esac
done
dir=$(dirname "$config")
mkdir -p "$dir/checkpoints"
seed=$(sed -n 's/^seed = \([0-9]*\)$/\1/p' "$config")
case "$cmd" in
  train)
    if [ "$LT_FAKE_KILL" = "$dir" ] && [ $resume -eq 0 ]; then
      touch "$dir/checkpoints/stage1_last.safetensors"
      echo "error: killed during epoch 2" >&2
      exit 3
    fi
    touch "$dir/checkpoints/stage1_last.safetensors" ;;
  retrain)
    [ -e "$dir/checkpoints/stage1_last.safetensors" ] || { echo "no stage 1" >&2; exit 4; }
    touch "$dir/checkpoints/${heads# }_last.safetensors" ;;
  eval)
    # A complete results.json: the evaluation of seed $seed (written by the
    # test with lt-metrics), one entry per head.
    ev=$(cat "$(dirname "$0")/eval_$seed.json")
    entries=""
    for h in $heads; do
      case "$h" in
        joint) l=Joint ;; ncm) l=NCM ;; crt) l=cRT ;; tau_norm) l="τ-norm" ;; *) l=LWS ;;
      esac
      e="{\"head\": \"$h\", \"label\": \"$l\", \"checkpoint\": \"ck\", \"epoch\": 1, \"split\": \"test\", \"evaluation\": $ev, \"val\": null, \"tau\": null}"
      entries="${entries:+$entries, }$e"
    done
    kind=$(sed -n 's/^kind = "\(.*\)"$/\1/p' "$config" | head -n 1)
    case "$kind" in
      progressively_balanced) sc="{\"kind\": \"$kind\", \"total_epochs\": 2}" ;;
      *) sc="{\"kind\": \"$kind\"}" ;;
    esac
    cat > "$dir/results.json.tmp" <<EOF
{"schema_version": 2, "config_name": "x", "config_hash": "h", "seed": $seed, "arch": "resnet8",
 "sampler": "$kind", "sampler_config": $sc, "split": "test",
 "group_rule": "train_count", "group_rule_config": {"rule": "train_count", "many_above": 100, "few_below": 20},
 "group_sizes": [1, 1, 1], "train_class_counts": [200, 50, 5], "train_split_sha256": "s",
 "stage1": {"model_select": "last", "checkpoint": "ck", "epoch": 2, "last_epoch": 2,
            "best_val": null, "last_val": null, "last_test": null},
 "heads": [$entries], "skipped": []}
EOF
    mv "$dir/results.json.tmp" "$dir/results.json" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
"#;

const BASE: &str = r#"
run_dir = "runs/base"
[data]
root = "data"
train_list = "train.txt"
val_list = "val.txt"
train_preset = "cifar_train"
eval_preset = "cifar_eval"
[model]
arch = "resnet8"
[stage1]
epochs = 2
batch_size = 8
lr = 0.1
"#;

const GRID: &str = r#"
name = "fake"
base_config = "base.toml"
out_dir = "out"
seeds = [0, 1]
heads = ["joint", "ncm", "crt", "tau_norm", "lws"]
[samplers]
ib = { kind = "instance_balanced", label = "IB" }
pb = { kind = "progressively_balanced", label = "PB" }
[datasets.tiny]
"#;

#[cfg(unix)]
fn setup() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    std::fs::write(dir.path().join("grid.toml"), GRID).unwrap();
    let cli = dir.path().join("fake-lt-cli");
    std::fs::write(&cli, FAKE_CLI).unwrap();
    // Per-class accuracies 0.7 / 0.5 / 0.2 (seed 0) and 0.7 / 0.5 / 0.3
    // (seed 1) on 10 test images per class.
    for seed in 0..2 {
        let stats = lt_core::stats::ClassStats::from_counts(vec![200, 50, 5]);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for (y, right) in [(0usize, 7), (1, 5), (2, 2 + seed)] {
            for i in 0..10 {
                let pred = if i < right { y } else { (y + 1) % 3 };
                let mut row = [0f32; 3];
                row[pred] = 1.0;
                logits.extend(row);
                labels.push(y as u32);
            }
        }
        let e = lt_metrics::evaluate(&logits, 3, &labels, &stats, &Default::default()).unwrap();
        std::fs::write(
            dir.path().join(format!("eval_{seed}.json")),
            serde_json::to_string(&e).unwrap(),
        )
        .unwrap();
    }
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, cli)
}

fn sweep(dir: &Path, cli: &Path, extra: &[&str], kill: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(dir)
        .args(["sweep", "grid.toml", "--lt-cli"])
        .arg(cli)
        .args(extra)
        .env("LT_FAKE_LOG", dir.join("calls.log"))
        .env("RUST_LOG", "warn");
    match kill {
        Some(k) => cmd.env("LT_FAKE_KILL", k),
        None => cmd.env_remove("LT_FAKE_KILL"),
    };
    cmd.output().unwrap()
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[cfg(unix)]
#[test]
fn sweep_runs_resumes_skips_and_reports() {
    let (dir, cli) = setup();
    let d = dir.path();

    // The dry run lists every command and runs none.
    let out = sweep(d, &cli, &["--dry-run"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 cells (1 datasets x 2 samplers x 2 seeds)"),
        "{text}"
    );
    assert!(text.contains("lt-cli retrain --head lws --config out/tiny/pb/seed1/config.toml"));
    assert!(calls(d).is_empty());

    // Killed in stage 1 of the first cell.
    let out = sweep(d, &cli, &[], Some("out/tiny/ib/seed0"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tiny/ib/seed0") && err.contains("killed during epoch 2"),
        "{err}"
    );
    assert!(err.contains("logs/train.log"), "{err}");
    assert_eq!(calls(d).len(), 1);

    // Rerun: stage 1 resumes, everything else runs once, in order.
    let out = sweep(d, &cli, &[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = calls(d);
    assert_eq!(c.len(), 1 + 4 * 4, "{c:#?}");
    assert_eq!(
        c[1],
        "train --config out/tiny/ib/seed0/config.toml --resume"
    );
    assert_eq!(
        c[2],
        "retrain --head crt --config out/tiny/ib/seed0/config.toml"
    );
    assert_eq!(
        c[3],
        "retrain --head lws --config out/tiny/ib/seed0/config.toml"
    );
    assert_eq!(
        c[4],
        "eval --config out/tiny/ib/seed0/config.toml --head joint --head ncm --head crt \
         --head tau_norm --head lws"
    );
    assert_eq!(c[5], "train --config out/tiny/ib/seed1/config.toml");
    assert_eq!(c.iter().filter(|l| l.starts_with("train")).count(), 5);

    // The cells' configs and grid places.
    let cfg = std::fs::read_to_string(d.join("out/tiny/pb/seed1/config.toml")).unwrap();
    let cfg: toml::Table = toml::from_str(&cfg).unwrap();
    assert_eq!(cfg["seed"].as_integer(), Some(1));
    assert_eq!(
        cfg["stage1"]["sampler"]["total_epochs"].as_integer(),
        Some(2)
    );
    assert!(d.join("out/tiny/pb/seed1/cell.json").is_file());
    assert!(d.join("out/tiny/pb/seed1/logs/eval.log").is_file());

    // The report: seed statistics in grid order, plots.
    let md = std::fs::read_to_string(d.join("out/report/summary.md")).unwrap();
    assert!(
        md.contains("| IB | Joint | 70.0 ± 0.0 | 50.0 ± 0.0 | 25.0 ± 7.1 | 48.3 ± 2.4 | 2 |"),
        "{md}"
    );
    assert!(md.find("| IB | LWS").unwrap() < md.find("| PB | Joint").unwrap());
    assert!(d.join("out/report/runs.csv").is_file());
    assert!(d.join("out/report/plots/tiny/samplers.png").is_file());
    assert!(d.join("out/report/plots/tiny/per_class_pb.svg").is_file());
    let html = std::fs::read_to_string(d.join("out/report/report.html")).unwrap();
    assert!(html.contains("<table class=\"summary\">") && html.contains("<svg"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report of 4 runs"), "{stdout}");
    assert!(stdout.contains("report.html"), "{stdout}");

    // A third run has nothing to do but the report.
    let out = sweep(d, &cli, &[], None);
    assert!(out.status.success());
    assert_eq!(calls(d).len(), 17);

    // A changed config is refused, finished or not, rather than mixed with
    // the old checkpoints and results.
    let out = sweep(d, &cli, &["--set", "stage1.lr=0.5"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("changed since it started"), "{err}");
    assert_eq!(calls(d).len(), 17);

    // Results lost: only the evaluation reruns.
    std::fs::remove_file(d.join("out/tiny/ib/seed0/results.json")).unwrap();
    let out = sweep(d, &cli, &[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = calls(d);
    assert_eq!(c.len(), 18);
    assert!(c[17].starts_with("eval --config out/tiny/ib/seed0/config.toml"));
}

#[cfg(unix)]
#[test]
fn report_only_and_bad_grids() {
    let (dir, cli) = setup();
    let d = dir.path();
    let out = sweep(d, &cli, &["--report-only"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no readable results.json"), "{err}");

    std::fs::write(
        d.join("grid.toml"),
        GRID.replace("seeds = [0, 1]", "seeds = 3"),
    )
    .unwrap();
    let out = sweep(d, &cli, &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grid.toml") && err.contains("seeds"), "{err}");
    assert!(calls(d).is_empty());
}

#[cfg(unix)]
#[test]
fn a_bad_cell_config_fails_before_anything_is_created() {
    let (dir, cli) = setup();
    let d = dir.path();
    let out = sweep(d, &cli, &["--set", "stage1.lr=-0.1"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stage1.lr") && err.contains("must be finite and > 0"),
        "{err}"
    );
    assert!(err.contains("cell tiny/ib/seed0"), "{err}");
    assert!(!d.join("out").exists(), "a cell directory was created");
    assert!(calls(d).is_empty());
}

#[cfg(unix)]
#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    let (dir, cli) = setup();
    // Stderr is a pipe here.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir.path())
        .args(["sweep", "grid.toml", "--dry-run", "--lt-cli"])
        .arg(&cli)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO") && err.contains("sweep"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
}

/// The tiny grid CI runs, with the real `lt-cli` on CIFAR-10-LT from
/// `data/cifar10` (`cargo xtask fetch-data cifar10 --source
/// ../shared/data/cifar10-jpg.tar.gz` first). The sweep builds lt-cli in
/// release unless `LT_CLI` names a binary. Minutes on a CPU:
/// `cargo test -p xtask --test sweep -- --ignored`.
#[test]
#[ignore = "trains for real: needs data/cifar10 and minutes of CPU"]
fn tiny_grid_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(
        root.join("data/cifar10/cifar10_lt_r100_train.txt")
            .is_file(),
        "run `cargo xtask fetch-data cifar10 --source ../shared/data/cifar10-jpg.tar.gz` first"
    );
    let out_dir = root.join("runs/sweeps/tiny");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(root).args(["sweep", "grids/tiny.toml"]);
    if let Some(cli) = std::env::var_os("LT_CLI") {
        cmd.arg("--lt-cli").arg(cli);
    }
    let status = cmd.status().unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(out_dir.join("report/summary.md")).unwrap();
    for row in [
        "| IB | Joint |",
        "| IB | cRT |",
        "| CB | τ-norm |",
        "| CB | LWS |",
    ] {
        assert!(md.contains(row), "{row} missing:\n{md}");
    }
    for plot in ["samplers", "per_class_ib", "tau_cb", "weight_norms_ib"] {
        for ext in ["png", "svg"] {
            let p = out_dir.join(format!("report/plots/cifar10_lt_r100/{plot}.{ext}"));
            assert!(p.is_file(), "{}", p.display());
        }
    }
    // A second run finds every cell finished and trains nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root)
        .args(["sweep", "grids/tiny.toml", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("lt-cli train"), "{text}");
}
