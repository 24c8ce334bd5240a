//! `lt-cli run` on a CIFAR config whose data is missing fetches it first,
//! through `cargo xtask fetch-data`'s code, here from a generated archive
//! named by `LT_FETCH_SOURCE` (offline): a miniature CIFAR-10 image folder
//! with the official 5000 training images per class (all one tiny JPEG), so
//! that the standard long-tailed lists can be cut from it. A source that
//! does not exist is an error naming it, before anything is trained.

use std::path::Path;
use std::process::{Command, Output};

const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `c10/{train,test}/<class>/<index>.jpg`: 5000 training and 3 test images
/// per class, as a gzipped tar.
fn archive(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let data = jpeg();
    let mut add = |p: String| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, p, &data[..]).unwrap();
    };
    for c in CLASSES {
        for i in 0..5000 {
            add(format!("c10/train/{c}/{i:04}.jpg"));
        }
        for i in 0..3 {
            add(format!("c10/test/{c}/{i:04}.jpg"));
        }
    }
    b.into_inner().unwrap().finish().unwrap();
}

fn lt_cli(dir: &Path, source: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lt-cli"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("LT_FETCH_SOURCE", source)
        .output()
        .expect("running lt-cli")
}

/// `configs/ci_tiny.toml` pointed at `data/cifar10`: the 200-image balanced
/// validation list of CIFAR-10-LT as training set, the 30 test images as
/// val and test.
fn sets() -> Vec<String> {
    let mut v = Vec::new();
    for s in [
        "data.root=\"data/cifar10\"",
        "data.train_list=\"data/cifar10/cifar10_lt_r100_val.txt\"",
        "data.val_list=\"data/cifar10/cifar10_test.txt\"",
        "data.test_list=\"data/cifar10/cifar10_test.txt\"",
        "data.num_classes=10",
        "run_dir=\"run\"",
        "stage1.epochs=1",
    ] {
        v.push("--set".to_string());
        v.push(s.to_string());
    }
    v
}

#[test]
fn run_fetches_a_missing_cifar_set_first() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ci_tiny.toml");
    let config = config.to_str().unwrap();

    // A source that is not there: the fetch fails naming it; nothing trains.
    let missing = tmp.path().join("nowhere.tar.gz");
    let mut args = vec!["run", "--config", config];
    let s = sets();
    args.extend(s.iter().map(String::as_str));
    let out = lt_cli(tmp.path(), &missing, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fetching the missing cifar10 data set") && err.contains("nowhere.tar.gz"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists());

    // The archive: fetched, verified (not a published archive: accepted
    // after the content checks, with its digest), indexed, then trained on.
    let source = tmp.path().join("mini-cifar10.tar.gz");
    archive(&source);
    let out = lt_cli(tmp.path(), &source, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("data/cifar10 is missing: fetching cifar10 from")
            && err.contains("unverified: no published sha256"),
        "{err}"
    );
    let d = tmp.path().join("data/cifar10");
    assert_eq!(
        std::fs::read_to_string(d.join("cifar10_lt_r100_train.txt"))
            .unwrap()
            .lines()
            .count(),
        12406
    );
    assert!(d.join(".fetch-complete.json").is_file());
    assert!(tmp.path().join("run/results.json").is_file());

    // Present now: a second run fetches nothing.
    let mut again = vec!["train", "--config", config, "--resume"];
    again.extend(s.iter().map(String::as_str));
    let out = lt_cli(tmp.path(), &missing, &again);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("is missing"), "{err}");
}
