//! A full disk in the middle of a run: the write fails with a clear error,
//! the last good checkpoint stays intact, and once space is back `--resume`
//! finishes with checkpoints bit-identical to an uninterrupted run.
//!
//! The run directory sits on a small tmpfs mounted for the test, which needs
//! the right to mount (root in a container that allows it); elsewhere the
//! test prints why it skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lt_train::config::ExperimentConfig;
use lt_train::experiment::Experiment;
use lt_train::{RunOptions, StartMode};

const EXTRA: &str = "[stage1]\nepochs = 2\nbatch_size = 8\nlr = 0.05\n";

fn open(data: &Path, run: &Path) -> Experiment {
    let text = common::config(data, run, EXTRA);
    let cfg = ExperimentConfig::from_toml_str(&text, "tiny.toml").unwrap();
    Experiment::open(cfg, "config.toml").unwrap()
}

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    // Single bytes for the last partial block.
    while f.write_all(&[0]).is_ok() {}
    path
}

fn bytes_of(run: &Path, name: &str) -> Vec<u8> {
    std::fs::read(run.join("checkpoints").join(name)).unwrap()
}

#[test]
fn a_full_disk_fails_cleanly_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::make_dataset(&data);
    let mnt = tmp.path().join("small");
    let _fs = match Tmpfs::mount(&mnt, "16m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipping: cannot mount a small tmpfs for the run directory ({why})");
            return;
        }
    };
    // The uninterrupted reference, on the normal disk.
    let full = tmp.path().join("full");
    lt_train::stage1::train_stage1(&open(&data, &full), RunOptions::default()).unwrap();

    let run = mnt.join("run");
    let first = RunOptions {
        start: StartMode::Fresh,
        stop_after_epoch: Some(1),
    };
    lt_train::stage1::train_stage1(&open(&data, &run), first).unwrap();
    let good = bytes_of(&run, "stage1_last.safetensors");
    let exp = open(&data, &run);
    let filler = fill(&mnt);
    let resume = RunOptions {
        start: StartMode::Resume,
        stop_after_epoch: None,
    };
    let e = lt_core::error_chain(&lt_train::stage1::train_stage1(&exp, resume).unwrap_err());
    assert!(
        e.contains("No space left on device") || e.contains("os error 28"),
        "the error must say the disk is full: {e}"
    );
    assert_eq!(
        bytes_of(&run, "stage1_last.safetensors"),
        good,
        "the last good checkpoint is intact"
    );
    drop(exp);
    // Space is back: resuming finishes the run as if nothing had happened.
    std::fs::remove_file(filler).unwrap();
    lt_train::stage1::train_stage1(&open(&data, &run), resume).unwrap();
    assert_eq!(
        bytes_of(&run, "stage1_last.safetensors"),
        bytes_of(&full, "stage1_last.safetensors")
    );
    let stale: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stale.is_empty(), "temp files left: {stale:?}");
}
