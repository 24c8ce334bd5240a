//! Resuming equals an uninterrupted run, bit for bit; a non-finite loss stops
//! training with a clear error and keeps the last good checkpoint.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lt_run::metrics_log::read_records;
use lt_train::checkpoint::load_checkpoint;
use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;
use lt_train::stage2::retrain;
use lt_train::{RunOptions, StartMode, TrainError};

const STAGES: &str = r#"
[stage1]
epochs = 2
batch_size = 8
lr = 0.05
sampler = { kind = "class_balanced" }
schedule = { kind = "cosine", per = "iteration", warmup_epochs = 1 }
[stage2.crt]
epochs = 2
batch_size = 8
lr = 0.05
[stage2.lws]
epochs = 1
batch_size = 8
"#;

fn open(data: &Path, run: &Path, extra: &str) -> Experiment {
    let text = common::config(data, run, extra);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
}

fn opts(start: StartMode, stop: Option<usize>) -> RunOptions {
    RunOptions {
        start,
        stop_after_epoch: stop,
    }
}

fn assert_same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{what}: different tensor names");
    for k in ka {
        let x = a[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: tensor `{k}` differs");
    }
}

#[test]
fn resume_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let dev = Device::Cpu;

    // Uninterrupted: 2 epochs of stage 1, 2 of cRT.
    let a = open(&data, &tmp.path().join("a"), STAGES);
    lt_train::stage1::train_stage1(&a, opts(StartMode::Fresh, None)).unwrap();
    retrain(
        &a,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Fresh, None),
    )
    .unwrap();

    // Interrupted after each first epoch, then resumed.
    let b = open(&data, &tmp.path().join("b"), STAGES);
    let r = lt_train::stage1::train_stage1(&b, opts(StartMode::Fresh, Some(1))).unwrap();
    assert_eq!(r.epochs, 1);
    let r = lt_train::stage1::train_stage1(&b, opts(StartMode::Resume, None)).unwrap();
    assert_eq!((r.resumed_from, r.epochs), (Some(1), 2));
    retrain(
        &b,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Fresh, Some(1)),
    )
    .unwrap();
    retrain(
        &b,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Resume, None),
    )
    .unwrap();

    for stage in ["stage1", "crt"] {
        for (pa, pb) in [
            (a.run.last_checkpoint(stage), b.run.last_checkpoint(stage)),
            (a.run.best_checkpoint(stage), b.run.best_checkpoint(stage)),
        ] {
            let (ta, ma) = load_checkpoint(&pa, &dev).unwrap();
            let (tb, mb) = load_checkpoint(&pb, &dev).unwrap();
            let has_momentum = ta.keys().any(|k| k.starts_with("momentum."));
            let is_best = pa.to_string_lossy().ends_with("_best.safetensors");
            assert_eq!(has_momentum, !is_best, "{}", pa.display());
            assert_same_tensors(&ta, &tb, &pa.display().to_string());
            assert_eq!(ma, mb, "{stage}: metadata differs");
        }
    }
    // The metrics log holds each epoch once, with the same numbers.
    let strip = |p: &Path| {
        read_records(p)
            .unwrap()
            .into_iter()
            .map(|mut r| {
                r.images_per_sec = 0.0;
                r
            })
            .collect::<Vec<_>>()
    };
    let (ra, rb) = (strip(&a.run.metrics()), strip(&b.run.metrics()));
    assert_eq!(ra.len(), 4);
    assert_eq!(ra, rb);

    // Resuming with a config that trains differently is refused.
    let changed = STAGES.replace("lr = 0.05\nsampler", "lr = 0.07\nsampler");
    let c = open(&data, &tmp.path().join("b"), &changed);
    let e = lt_train::stage1::train_stage1(&c, opts(StartMode::Resume, None)).unwrap_err();
    assert!(e.to_string().contains("another config"), "{e}");
    // Starting fresh over an existing run needs --overwrite.
    let e = lt_train::stage1::train_stage1(&b, opts(StartMode::Fresh, None)).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
}

/// A process killed after writing a checkpoint but before its JSON copy
/// leaves the copy an epoch behind (or missing); resuming rewrites it from
/// the metadata inside the checkpoint, even when the stage is finished and
/// nothing trains.
#[test]
fn resume_repairs_a_stale_or_missing_metadata_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let exp = open(&data, &tmp.path().join("run"), STAGES);
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, Some(1))).unwrap();
    let last = exp.run.last_checkpoint("stage1");
    let best = exp.run.best_checkpoint("stage1");
    let copy = |p: &Path| lt_run::layout::checkpoint_meta_path(p);
    let epoch1 = std::fs::read(copy(&last)).unwrap();
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Resume, None)).unwrap();
    let (want_last, want_best) = (
        std::fs::read(copy(&last)).unwrap(),
        std::fs::read(copy(&best)).unwrap(),
    );
    assert_ne!(epoch1, want_last);

    // The kill window: epoch 2's checkpoint, epoch 1's copy; no best copy.
    std::fs::write(copy(&last), &epoch1).unwrap();
    std::fs::remove_file(copy(&best)).unwrap();
    let r = lt_train::stage1::train_stage1(&exp, opts(StartMode::Resume, None)).unwrap();
    assert_eq!(
        (r.resumed_from, r.epochs),
        (Some(2), 2),
        "nothing left to train"
    );
    assert_eq!(std::fs::read(copy(&last)).unwrap(), want_last);
    assert_eq!(std::fs::read(copy(&best)).unwrap(), want_best);

    // An up-to-date copy is left alone.
    assert!(!lt_train::checkpoint::repair_sidecar(&last).unwrap());
    // A file that is not a checkpoint is an error naming it, not a panic.
    std::fs::write(tmp.path().join("junk.safetensors"), b"\xff\xff\xff\xff").unwrap();
    let e = lt_train::checkpoint::repair_sidecar(&tmp.path().join("junk.safetensors")).unwrap_err();
    assert!(e.to_string().contains("junk.safetensors"), "{e}");
}

#[test]
fn non_finite_loss_stops_and_keeps_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    // A sane first epoch, then an absurd learning rate from epoch 2 on.
    let stages = r#"
[stage1]
epochs = 3
batch_size = 8
lr = 0.05
schedule = { kind = "step", milestones = [1], gamma = 1e35 }
"#;
    let exp = open(&data, &tmp.path().join("run"), stages);
    let last = exp.run.last_checkpoint("stage1");
    let err = lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, None)).unwrap_err();
    match &err {
        TrainError::NonFiniteLoss { epoch, step, .. } => {
            assert_eq!(*epoch, 2, "{err}");
            assert!(*step >= 1);
        }
        other => panic!("expected a non-finite loss error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("epoch 2") && msg.contains("last good checkpoint"),
        "{msg}"
    );
    let (tensors, meta) = load_checkpoint(&last, &Device::Cpu).unwrap();
    assert_eq!(meta.epoch, 1);
    for (k, t) in tensors {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{k} is not finite in the kept checkpoint"
        );
    }
    assert_eq!(read_records(&exp.run.metrics()).unwrap().len(), 1);
}

#[test]
fn stage2_bn_modes_and_cached_feature_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let dev = Device::Cpu;
    let buffers = |t: &HashMap<String, Tensor>| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<_> = t
            .iter()
            .filter(|(k, _)| k.contains("running_"))
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let stage1 = STAGES.replace(
        "epochs = 2\nbatch_size = 8\nlr = 0.05\nsampler",
        "epochs = 1\nbatch_size = 8\nlr = 0.05\nsampler",
    );
    let run = tmp.path().join("run");

    // Reference stage 2: BN in train mode refreshes the running statistics.
    let exp = open(&data, &run, &stage1);
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, None)).unwrap();
    let (s1, _) = load_checkpoint(&exp.run.last_checkpoint("stage1"), &dev).unwrap();
    retrain(
        &exp,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Fresh, None),
    )
    .unwrap();
    let (crt, _) = load_checkpoint(&exp.run.last_checkpoint("crt"), &dev).unwrap();
    assert_ne!(
        buffers(&s1),
        buffers(&crt),
        "bn = train must update the statistics"
    );

    // Frozen BN without augmentation: the head trains on cached features,
    // the backbone is untouched, and resuming still reproduces the run.
    let fast = format!("{stage1}\n").replace(
        "[stage2.crt]\nepochs = 2",
        "[stage2.crt]\nbn = \"eval\"\naugment = false\nepochs = 2",
    );
    assert!(fast.contains("augment = false"));
    let exp = open(&data, &run, &fast);
    retrain(
        &exp,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Overwrite, None),
    )
    .unwrap();
    let (full, _) = load_checkpoint(&exp.run.last_checkpoint("crt"), &dev).unwrap();
    assert_eq!(
        buffers(&s1),
        buffers(&full),
        "bn = eval must keep the statistics"
    );
    let w1 = s1["fc.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w2 = full["fc.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(w1, w2, "the cRT head is re-initialised and trained");
    let full = full.clone();
    retrain(
        &exp,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Overwrite, Some(1)),
    )
    .unwrap();
    retrain(
        &exp,
        &lt_core::HeadId::new_static("crt"),
        opts(StartMode::Resume, None),
    )
    .unwrap();
    let (resumed, _) = load_checkpoint(&exp.run.last_checkpoint("crt"), &dev).unwrap();
    assert_same_tensors(&full, &resumed, "cached-feature cRT");

    // Frozen BN with augmentation: per-batch forward in eval mode.
    let aug = fast
        .replace("augment = false", "augment = true")
        .replace("[stage2.lws]\n", "[stage2.lws]\nbn = \"eval\"\n");
    assert!(aug.contains("[stage2.lws]\nbn = \"eval\""));
    let exp = open(&data, &run, &aug);
    retrain(
        &exp,
        &lt_core::HeadId::new_static("lws"),
        opts(StartMode::Fresh, None),
    )
    .unwrap();
    let (lws, _) = load_checkpoint(&exp.run.last_checkpoint("lws"), &dev).unwrap();
    assert!(lws.contains_key("fc.scales"));
    assert_eq!(
        buffers(&s1),
        buffers(&lws),
        "bn = eval must keep the statistics"
    );
    assert_eq!(
        lws["fc.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        w1,
        "LWS keeps W frozen"
    );
}

/// Stage 2 trains the head only: cRT and LWS (with BN in train mode, which
/// refreshes the running statistics) leave every backbone parameter
/// bit-identical to the stage-1 checkpoint they start from.
#[test]
fn crt_and_lws_leave_every_backbone_parameter_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let dev = Device::Cpu;
    let stage1 = STAGES.replace(
        "epochs = 2\nbatch_size = 8\nlr = 0.05\nsampler",
        "epochs = 1\nbatch_size = 8\nlr = 0.05\nsampler",
    );
    let exp = open(&data, &tmp.path().join("run"), &stage1);
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, None)).unwrap();
    let (s1, _) = load_checkpoint(&exp.run.best_checkpoint("stage1"), &dev).unwrap();
    let is_parameter = |k: &str| {
        !k.starts_with("fc.")
            && !k.starts_with("momentum.")
            && !k.contains("running_")
            && !k.contains("num_batches")
    };
    let parameters: Vec<&String> = s1.keys().filter(|k| is_parameter(k)).collect();
    assert!(parameters.len() > 10, "{parameters:?}");
    for head in ["crt", "lws"] {
        retrain(
            &exp,
            &lt_core::HeadId::new_static(if head == "crt" { "crt" } else { "lws" }),
            opts(StartMode::Fresh, None),
        )
        .unwrap();
        let (s2, _) = load_checkpoint(&exp.run.last_checkpoint(head), &dev).unwrap();
        for k in &parameters {
            let a = s1[*k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = s2[*k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{head} changed backbone parameter `{k}`"
            );
        }
        // The head did train.
        let trained = if head == "crt" {
            "fc.weight"
        } else {
            "fc.scales"
        };
        assert!(s2.contains_key(trained));
    }
}

#[test]
fn divergence_names_the_stage_the_epoch_and_what_was_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let stages = |lr: &str| format!("[stage1]\nepochs = 2\nbatch_size = 8\nlr = {lr}\n");
    // Diverged in the first epoch: there is no good checkpoint to keep, and
    // the message does not claim one.
    let exp = open(&data, &tmp.path().join("a"), &stages("1e35"));
    let err = lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, None)).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFiniteLoss {
                epoch: 1,
                kept: None,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no checkpoint of this stage to keep") && !msg.contains("was kept"),
        "{msg}"
    );
    assert!(!exp.run.last_checkpoint("stage1").exists());
    drop(exp);
    // Weights that diverge without a non-finite loss show up as infinite
    // logits in the validation at the end of the epoch: the error names the
    // stage, the epoch and the split, down to the logit.
    let exp = open(&data, &tmp.path().join("b"), &stages("1e6"));
    let err = lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh, None)).unwrap_err();
    let chain = lt_core::error_chain(&err);
    match &err {
        TrainError::EpochEvaluation {
            stage, epoch, kept, ..
        } => {
            assert_eq!(stage, &lt_core::Stage::Stage1, "{chain}");
            assert_eq!(*kept, (*epoch > 1).then_some(*epoch - 1), "{chain}");
        }
        other => panic!("expected an evaluation error naming the epoch, got {other}"),
    }
    assert!(
        chain.contains("stage1, epoch ")
            && chain.contains("evaluation on val failed")
            && chain.contains("non-finite logit"),
        "{chain}"
    );
}
