//! A PyTorch checkpoint in the classifier-balancing layout imported as the
//! finished stage 1 of a run: every head evaluates on it, stage 2 trains on
//! it, `--resume` finds stage 1 done, and a checkpoint that does not fit is
//! refused with nothing written.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use lt_core::HeadId;
use lt_train::config::ExperimentConfig;
use lt_train::evaluation::evaluate_heads;
use lt_train::experiment::Experiment;
use lt_train::torch_import::import_stage1;
use lt_train::{RunOptions, StartMode};

const STAGES: &str = "[stage1]\nepochs = 2\nbatch_size = 8\nlr = 0.05\n\
                      [stage2.crt]\nepochs = 1\nbatch_size = 8\n[stage2.lws]\nepochs = 1\nbatch_size = 8\n";

/// The project's ResNet-8 with a 4-class classifier, saved by PyTorch in the
/// classifier-balancing layout (see lt-models' fixture script).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lt-models/tests/fixtures/torch")
        .join(name)
}

fn open(data: &Path, run: &Path) -> Experiment {
    let text = common::config(data, run, STAGES);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
}

fn opts(start: StartMode) -> RunOptions {
    RunOptions {
        start,
        stop_after_epoch: None,
    }
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_released_checkpoint_becomes_a_finished_stage_1() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let run = tmp.path().join("run");
    let exp = open(&data, &run);
    let pth = fixture("resnet8_cb.pth");
    let r = import_stage1(&exp, &pth, false).unwrap();
    assert_eq!(r.source_epoch, Some(90));
    assert_eq!(r.source_sha256.len(), 64);
    assert!(r.ignored.iter().any(|i| i == "best_acc"), "{:?}", r.ignored);

    // The stage-1 network holds the file's tensors, the joint head its fc.
    let (net, _, epoch) = lt_train::stage1::load_selected(&exp).unwrap();
    assert_eq!(epoch, 2, "finished at the config's stage1.epochs");
    let want = lt_models::torch_import::read_weights(&pth, &Device::Cpu).unwrap();
    let got = net.tensors();
    assert!(got.contains_key("fc.weight") && got.contains_key("layer3.0.conv2.weight"));
    for (k, t) in &got {
        assert_eq!(values(t), values(&want[k]), "{k}");
    }

    // Every head evaluates; a trained head is missing until stage 2 runs.
    let heads: Vec<HeadId> = lt_train::heads::REGISTRY.iter().map(|h| h.id()).collect();
    let res = evaluate_heads(&exp, &heads, true).unwrap();
    assert!(res.head("joint").is_some() && res.head("ncm").is_some());
    assert!(
        res.skipped.contains(&"crt".to_string()),
        "{:?}",
        res.skipped
    );
    // `run --resume`: stage 1 is finished, nothing trains.
    let rep = lt_train::stage1::train_stage1(&exp, opts(StartMode::Continue)).unwrap();
    assert_eq!((rep.resumed_from, rep.epochs), (Some(2), 2));
    // Stage 2 trains on it.
    let crt = HeadId::new_static("crt");
    lt_train::stage2::retrain(&exp, &crt, opts(StartMode::Fresh)).unwrap();
    let res = evaluate_heads(&exp, &heads, true).unwrap();
    assert!(res.head("crt").is_some());

    // A second import is refused; with overwrite it replaces stage 1 and
    // removes what was built on it.
    let e = lt_core::error_chain(&import_stage1(&exp, &pth, false).unwrap_err());
    assert!(
        e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    let r = import_stage1(&exp, &pth, true).unwrap();
    assert!(!exp.run.last_checkpoint(lt_core::Stage::Head(crt)).exists());
    assert!(!exp.run.results().exists());
    assert!(r
        .removed
        .iter()
        .any(|p| p.ends_with("crt_last.safetensors")));
}

#[test]
fn a_checkpoint_that_does_not_fit_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let run = tmp.path().join("run");
    let exp = open(&data, &run);
    // Widths 4/8/8 instead of ResNet-8's 16/32/64; a 5-class classifier.
    let e = lt_core::error_chain(&import_stage1(&exp, &fixture("tiny_cb.pth"), false).unwrap_err());
    assert!(
        e.contains("tiny_cb.pth")
            && e.contains("shape mismatch(es) [bn1.bias: model [16], checkpoint [4]"),
        "{e}"
    );
    // A backbone without a classifier is no stage 1.
    let e = lt_core::error_chain(
        &import_stage1(&exp, &fixture("tiny_wrapped_legacy.pth"), false).unwrap_err(),
    );
    assert!(e.contains("tiny_wrapped_legacy.pth"), "{e}");
    assert!(!exp.run.last_checkpoint(lt_core::Stage::Stage1).exists());
    assert!(!exp.run.best_checkpoint(lt_core::Stage::Stage1).exists());
}

/// The sampler state an import records is the one a trained stage 1 of the
/// same config leaves, so a stage-1 resume after either draws the same batches.
#[test]
fn an_imported_stage_1_records_the_sampler_state_training_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let sampler_of = |exp: &Experiment| -> serde_json::Value {
        let meta =
            lt_run::layout::checkpoint_meta_path(&exp.run.last_checkpoint(lt_core::Stage::Stage1));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
        meta["sampler"].clone()
    };
    let imported = open(&data, &tmp.path().join("imported"));
    import_stage1(&imported, &fixture("resnet8_cb.pth"), false).unwrap();
    let trained = open(&data, &tmp.path().join("trained"));
    lt_train::stage1::train_stage1(&trained, opts(StartMode::Fresh)).unwrap();
    let (a, b) = (sampler_of(&imported), sampler_of(&trained));
    assert!(!a.is_null(), "the import recorded no sampler state");
    assert_eq!(a, b);
}
