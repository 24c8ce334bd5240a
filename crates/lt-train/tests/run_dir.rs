//! The run directory across faults and restarts: a run directory locked by
//! another process is refused before anything is written; temp files of an
//! interrupted write are cleaned when a run opens; a bad config creates
//! nothing.

mod common;

use std::path::Path;

use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;

const STAGES: &str = "[stage1]\nepochs = 1\nbatch_size = 8\nlr = 0.05\n\
                      [stage2.crt]\nepochs = 1\nbatch_size = 8\n[stage2.lws]\nepochs = 1\nbatch_size = 8\n";

fn open(data: &Path, run: &Path) -> Experiment {
    let text = common::config(data, run, STAGES);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
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
