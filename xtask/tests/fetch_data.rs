//! `cargo xtask fetch-data` end to end on the real CIFAR-10 image-folder
//! archive (`shared/data/cifar10-jpg.tar.gz` beside the repository): verify,
//! unpack 60,000 JPEGs into a temp dir, index, write the split lists, and do
//! nothing on a second run. Skipped, with the reason printed, when the
//! archive is not there.

use std::path::{Path, PathBuf};
use std::process::Command;

use lt_data::split_list::{read_split_info, read_split_list};

fn archive() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.join("../../shared/data/cifar10-jpg.tar.gz"),
        manifest.join("../shared/data/cifar10-jpg.tar.gz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn xtask(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cifar10_image_folder_archive() {
    let Some(archive) = archive() else {
        eprintln!(
            "skipping: shared/data/cifar10-jpg.tar.gz not found next to the repository ({})",
            env!("CARGO_MANIFEST_DIR")
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let src = archive.to_str().unwrap();
    let root_s = root.to_str().unwrap();
    let (ok, stdout, stderr) = xtask(&["fetch-data", "cifar10", "--source", src, "--root", root_s]);
    assert!(ok, "fetch-data failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("sha256 fdf0b4f6a0ce0e8a5d81bb436b49a9fb87e6911e1442da8db80f1a61ec5517e3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sha256 matches cifar10-jpg.tar.gz"),
        "{stdout}"
    );

    let dir = root.join("cifar10");
    let read = |name: &str| read_split_list(&dir.join(name), &dir, Some(10)).unwrap();

    let lt = read("cifar10_lt_r100_train.txt");
    assert_eq!(
        lt.stats().counts(),
        &[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    );
    assert_eq!(lt.len(), 12406);
    assert_eq!(read("cifar10_lt_r50_train.txt").len(), 13996);
    assert_eq!(read("cifar10_lt_r10_train.txt").len(), 20431);
    let full = read("cifar10_train.txt");
    assert_eq!(full.stats().counts(), &[5000; 10]);
    let test = read("cifar10_test.txt");
    assert_eq!(test.stats().counts(), &[1000; 10]);
    assert_eq!(
        lt.class_names(),
        None,
        "split lists carry labels, not names"
    );

    // The selection is NumPy's legacy shuffle (seed 0) over each class's
    // files in numeric order: with np.random.seed(0) and per-class ranks,
    // class 0 starts 398, 3833, 4836 and class 1 starts 597, 332, 521.
    let text = std::fs::read_to_string(dir.join("cifar10_lt_r100_train.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..3],
        &[
            "train/airplane/0398.jpg 0",
            "train/airplane/3833.jpg 0",
            "train/airplane/4836.jpg 0"
        ]
    );
    assert_eq!(
        &lines[5000..5003],
        &[
            "train/automobile/0597.jpg 1",
            "train/automobile/0332.jpg 1",
            "train/automobile/0521.jpg 1"
        ]
    );

    for rho in [100, 50, 10] {
        let val = read(&format!("cifar10_lt_r{rho}_val.txt"));
        assert_eq!(val.stats().counts(), &[20; 10]);
        let info = read_split_info(&dir.join(format!("cifar10_lt_r{rho}_train.txt"))).unwrap();
        let bytes = std::fs::read(dir.join(format!("cifar10_lt_r{rho}_train.txt"))).unwrap();
        assert_eq!(info.sha256, lt_core::fs::sha256_hex(&bytes));
    }
    assert!(
        stdout.contains("per class: 5000 2997 1796 1077 645 387 232 139 83 50"),
        "{stdout}"
    );

    // A second run does nothing.
    let marker = dir.join(".fetch-complete.json");
    let stamp = std::fs::metadata(&marker).unwrap().modified().unwrap();
    let (ok, stdout, stderr) = xtask(&["fetch-data", "cifar10", "--source", src, "--root", root_s]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("already complete"), "{stdout}");
    assert_eq!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        stamp
    );

    // Bad arguments are clear errors, not panics.
    let (ok, _, stderr) = xtask(&["fetch-data", "mnist"]);
    assert!(
        !ok && stderr.contains("unknown dataset `mnist`"),
        "{stderr}"
    );
    let (ok, _, stderr) = xtask(&["fetch-data", "cifar100", "--source", src, "--root", root_s]);
    assert!(!ok && stderr.contains("not a cifar100 source"), "{stderr}");
}
