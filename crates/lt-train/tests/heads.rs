//! Every trained stage-2 head of the registry trains on a tiny stage 1
//! (itself trained with mixup and MaxNorm), leaves the backbone parameters
//! alone, and evaluates; the heads with a constraint or a learned value show
//! it in the results.

mod common;

use std::path::Path;

use candle_core::Device;
use lt_core::HeadId;
use lt_train::checkpoint::load_checkpoint;
use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;
use lt_train::stage2::retrain;
use lt_train::{RunOptions, StartMode};

fn open(data: &Path, run: &Path, extra: &str) -> Experiment {
    let text = common::config(data, run, extra);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
}

const FRESH: RunOptions = RunOptions {
    start: StartMode::Fresh,
    stop_after_epoch: None,
};

#[test]
fn every_trained_head_trains_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let mut extra = String::from(
        "[stage1]\nepochs = 2\nbatch_size = 8\nlr = 0.05\n\
         mixup = { alpha = 1.0 }\nmax_norm = { radius = 0.5, every = \"iteration\" }\n",
    );
    let trained = lt_train::heads::trained_names();
    for h in &trained {
        extra.push_str(&format!("[stage2.{h}]\nepochs = 2\nbatch_size = 8\n"));
    }
    let exp = open(&data, &tmp.path().join("run"), &extra);
    lt_train::stage1::train_stage1(&exp, FRESH).unwrap();
    let dev = Device::Cpu;
    let (s1, _) = load_checkpoint(&exp.run.best_checkpoint("stage1"), &dev).unwrap();
    // Stage-1 MaxNorm, per iteration: every class row within the radius.
    let norms = s1["fc.weight"]
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap();
    for n in norms.to_vec1::<f32>().unwrap() {
        assert!(n <= 0.5 + 1e-5, "stage-1 row norm {n}");
    }
    let is_parameter = |k: &str| {
        !k.starts_with("fc.")
            && !k.starts_with("momentum.")
            && !k.contains("running_")
            && !k.contains("num_batches")
    };
    for h in &trained {
        retrain(&exp, &HeadId::new_static(h), FRESH).unwrap_or_else(|e| panic!("{h}: {e}"));
        let (s2, _) = load_checkpoint(&exp.run.last_checkpoint(*h), &dev).unwrap();
        for (k, t) in s1.iter().filter(|(k, _)| is_parameter(k)) {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = s2[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{h} changed backbone parameter `{k}`"
            );
        }
    }
    // WB: MaxNorm radius 0.1 once per epoch, the last projection after the
    // last step.
    let (wb, _) = load_checkpoint(&exp.run.last_checkpoint("wb"), &dev).unwrap();
    let norms = wb["fc.weight"]
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap();
    for n in norms.to_vec1::<f32>().unwrap() {
        assert!(n <= 0.1 + 1e-6, "WB row norm {n}");
    }
    // MiSLAS shifts BN (running statistics follow the balanced batches);
    // the cached-feature heads leave them as stage 1 wrote them.
    let (mislas, _) = load_checkpoint(&exp.run.last_checkpoint("mislas"), &dev).unwrap();
    let (disalign, _) = load_checkpoint(&exp.run.last_checkpoint("disalign"), &dev).unwrap();
    let mean_key = s1
        .keys()
        .find(|k| k.ends_with("running_mean"))
        .unwrap()
        .clone();
    let v = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(v(&s1[&mean_key]), v(&mislas[&mean_key]));
    assert_eq!(v(&s1[&mean_key]), v(&disalign[&mean_key]));

    let all: Vec<HeadId> = lt_train::heads::names()
        .into_iter()
        .map(HeadId::new_static)
        .collect();
    let results = lt_train::evaluation::evaluate_heads(&exp, &all, false).unwrap();
    assert_eq!(results.heads.len(), all.len());
    let learned = results
        .heads
        .iter()
        .find(|r| r.head.as_str() == "learned_tau")
        .unwrap();
    let tau = learned.tau.expect("learned tau recorded");
    assert!(tau.is_finite() && tau != 0.0, "tau {tau}");
    for r in &results.heads {
        assert!(r.evaluation.top1.is_finite(), "{}", r.head);
    }
}

/// Mixup and per-iteration MaxNorm keep resumption exact: their draws come
/// from the (seed, epoch, batch) stream, not from state a checkpoint lacks.
#[test]
fn mixup_and_max_norm_resume_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let extra = "[stage1]\nepochs = 2\nbatch_size = 8\nlr = 0.05\n\
                 mixup = { alpha = 0.4 }\nmax_norm = { radius = 0.3, every = \"iteration\" }\n";
    let full = open(&data, &tmp.path().join("full"), extra);
    lt_train::stage1::train_stage1(&full, FRESH).unwrap();
    let split = open(&data, &tmp.path().join("split"), extra);
    let first = RunOptions {
        start: StartMode::Fresh,
        stop_after_epoch: Some(1),
    };
    lt_train::stage1::train_stage1(&split, first).unwrap();
    let resume = RunOptions {
        start: StartMode::Resume,
        stop_after_epoch: None,
    };
    lt_train::stage1::train_stage1(&split, resume).unwrap();
    let dev = Device::Cpu;
    let (a, _) = load_checkpoint(&full.run.last_checkpoint("stage1"), &dev).unwrap();
    let (b, _) = load_checkpoint(&split.run.last_checkpoint("stage1"), &dev).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "`{k}` differs after resuming"
        );
    }
}
