//! The run directory across faults and restarts: a run directory locked by
//! another process is refused before anything is written; temp files of an
//! interrupted write are cleaned when a run opens; a bad config creates
//! nothing; a stage that starts over takes what was built on it along; a
//! pipeline continues from whatever stage it had reached.

mod common;

use std::path::Path;

use lt_core::{HeadId, Stage};
use lt_run::metrics_log::read_records;
use lt_train::config::ExperimentConfig;
use lt_train::evaluation::evaluate_heads;
use lt_train::experiment::Experiment;
use lt_train::{RunOptions, StartMode};

const STAGES: &str = "[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n\
                      [stage2.crt]\nepochs = 1\nbatch_size = 8\n[stage2.lws]\nepochs = 1\nbatch_size = 8\n";

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

fn crt() -> HeadId {
    HeadId::new_static("crt")
}

fn all_heads() -> Vec<HeadId> {
    lt_train::heads::REGISTRY.iter().map(|h| h.id()).collect()
}

#[test]
fn a_run_directory_locked_elsewhere_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // Another process's lock: a separate open file description holding it.
    let other = std::fs::File::create(run.join(lt_run::lock::LOCK_FILE)).unwrap();
    other.try_lock().unwrap();
    let text = common::config(
        &data,
        &run,
        "[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n",
    );
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    let e = lt_core::error_chain(&Experiment::open(cfg.clone(), "config.toml").unwrap_err());
    assert!(e.contains("another process") && e.contains("lock"), "{e}");
    assert!(!run.join("config.toml").exists(), "nothing written");
    // Released: the run opens, and a second open in the same process shares it.
    drop(other);
    let a = Experiment::open(cfg.clone(), "config.toml").unwrap();
    let b = Experiment::open(cfg, "config.toml").unwrap();
    drop((a, b));
}

#[test]
fn temp_files_of_an_interrupted_write_are_removed_when_the_run_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let run = tmp.path().join("run");
    let ck = run.join("checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    // What `write_atomic` leaves when its process is killed before the
    // rename (the pid is that of a process long gone).
    let stale = [
        ck.join(".stage1_last.safetensors.4000000007.tmp"),
        run.join(".results.json.4000000007.tmp"),
    ];
    for p in &stale {
        std::fs::write(p, vec![0u8; 1000]).unwrap();
    }
    let kept = [ck.join("notes.tmp"), ck.join("stage1_last.safetensors.bak")];
    for p in &kept {
        std::fs::write(p, b"mine").unwrap();
    }
    let exp = open(&data, &run);
    assert!(
        stale.iter().all(|p| !p.exists()),
        "stale temp files are removed"
    );
    assert!(
        kept.iter().all(|p| p.is_file()),
        "other files are left alone"
    );
    drop(exp);
}

#[test]
fn a_bad_config_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let run = tmp.path().join("run");
    let text = common::config(&data, &run, STAGES);
    let mut cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    // A value changed in code after loading is checked like a loaded one.
    cfg.stage1.settings.lr = -0.1;
    let e = lt_core::error_chain(&Experiment::open(cfg, "config.toml").unwrap_err());
    assert!(e.contains("stage1.lr") && e.contains("> 0"), "{e}");
    assert!(!run.exists(), "the run directory is not created");
}

#[test]
fn a_stage_that_starts_over_takes_what_was_built_on_it_along() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let exp = open(&data, &tmp.path().join("run"));
    let run = &exp.run;
    let crt_stage = Stage::Head(crt());
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Fresh)).unwrap();
    lt_train::stage2::retrain(&exp, &crt(), opts(StartMode::Fresh)).unwrap();
    let r = evaluate_heads(&exp, &all_heads(), true).unwrap();
    assert!(r.head("crt").is_some());
    lt_train::evaluation::run_tau_sweep(&exp).unwrap();
    assert!(run.results().is_file() && run.tau_sweep().is_file());

    // Stage 1 again from scratch: cRT was trained on the old backbone, and
    // the results and the tau sweep were computed from it.
    lt_train::stage1::train_stage1(&exp, opts(StartMode::Overwrite)).unwrap();
    for p in [
        run.last_checkpoint(&crt_stage),
        run.best_checkpoint(&crt_stage),
        run.results(),
        run.tau_sweep(),
    ] {
        assert!(
            !p.exists(),
            "{} survived the overwrite of stage 1",
            p.display()
        );
    }
    assert!(run.last_checkpoint(Stage::Stage1).is_file());
    let records = read_records(&run.metrics()).unwrap();
    assert!(
        records.iter().all(|r| r.stage == Stage::Stage1),
        "{records:?}"
    );
    // `eval --head all` cannot mix the old cRT in: it is not trained.
    let r = evaluate_heads(&exp, &all_heads(), true).unwrap();
    assert!(r.head("crt").is_none());
    assert!(r.skipped.contains(&"crt".to_string()), "{:?}", r.skipped);

    // Retraining a head over its checkpoint drops the results that hold
    // its previous version; the stage-1 checkpoints stay.
    lt_train::stage2::retrain(&exp, &crt(), opts(StartMode::Fresh)).unwrap();
    evaluate_heads(&exp, &all_heads(), true).unwrap();
    assert!(run.results().is_file());
    lt_train::stage2::retrain(&exp, &crt(), opts(StartMode::Overwrite)).unwrap();
    assert!(!run.results().exists());
    assert!(run.last_checkpoint(Stage::Stage1).is_file());
    assert!(run.last_checkpoint(&crt_stage).is_file());
    // A head trained for the first time leaves the results of the others.
    evaluate_heads(&exp, &all_heads(), true).unwrap();
    lt_train::stage2::retrain(&exp, &HeadId::new_static("lws"), opts(StartMode::Fresh)).unwrap();
    assert!(run.results().is_file());
}

#[test]
fn continue_resumes_a_stage_with_a_checkpoint_and_starts_one_without() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let exp = open(&data, &tmp.path().join("run"));
    // A stage of a pipeline without a checkpoint starts from the beginning,
    // and one with a finished checkpoint is complete ...
    let r = lt_train::stage1::train_stage1(&exp, opts(StartMode::Continue)).unwrap();
    assert_eq!((r.resumed_from, r.epochs), (None, 1));
    let r = lt_train::stage1::train_stage1(&exp, opts(StartMode::Continue)).unwrap();
    assert_eq!((r.resumed_from, r.epochs), (Some(1), 1));
    // ... while --resume of a single stage needs its checkpoint.
    let e = lt_train::stage2::retrain(&exp, &crt(), opts(StartMode::Resume)).unwrap_err();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    let r = lt_train::stage2::retrain(&exp, &crt(), opts(StartMode::Continue)).unwrap();
    assert_eq!((r.resumed_from, r.epochs), (None, 1));
    let records = read_records(&exp.run.metrics()).unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
}
