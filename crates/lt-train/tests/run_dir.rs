//! One writer per run directory: a run directory locked by another process
//! is refused with an error naming it, before anything is written.

mod common;

use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;

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
