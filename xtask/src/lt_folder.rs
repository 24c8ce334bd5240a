//! `cargo xtask lt-folder --out DIR`: a long-tailed folder of images, one
//! sub-folder per class, cut from CIFAR: the kind of folder `lt-cli init`
//! takes, for trying the whole path from one's own images to a prediction.
//!
//! The CIFAR data set is fetched first when it is missing (from
//! `../shared/data/<ds>-jpg.tar.gz` when it is there, else downloaded;
//! `lt_data::fetch::auto`). The first `--classes` classes (in name order) keep
//! `n_i = ⌊max · imbalance^(−i/(C−1))⌋` of their training images, chosen as
//! the CIFAR-LT subsets are (`lt_data::longtail::numpy_subset`, seeded). The
//! folder is written under a temporary name and renamed when complete.
//!
//! ```text
//! cargo xtask lt-folder --out my_images                       # CIFAR-10, 5 classes, 500 .. 50 images
//! cargo xtask lt-folder --out my_images --classes 10 --imbalance 100
//! cargo xtask lt-folder --out my_images --add-unreadable      # plus a text file and a cut JPEG
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lt_data::fetch::auto::{auto_sources, ARCHIVE_DIR, SOURCE_ENV};
use lt_data::fetch::{fetch, Bars, FetchDataset, FetchOptions};
use lt_data::image_folder::{scan_image_folder, FileOrder};
use lt_data::longtail::{class_counts, numpy_subset, Profile};

/// Arguments of `lt-folder`.
#[derive(Debug, clap::Args)]
pub struct LtFolderArgs {
    /// The folder to write (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// CIFAR data set to cut it from: cifar10 or cifar100.
    #[arg(long, default_value = "cifar10", value_parser = parse_dataset)]
    pub dataset: FetchDataset,
    /// Number of classes (the first ones in name order).
    #[arg(long, default_value_t = 5)]
    pub classes: usize,
    /// Images of the largest class.
    #[arg(long, default_value_t = 500)]
    pub max: usize,
    /// Largest over smallest class (exponential profile).
    #[arg(long, default_value_t = 10.0)]
    pub imbalance: f64,
    /// Seed of the choice of images.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Data root the CIFAR data set is read from (fetched there when missing).
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub root: PathBuf,
    /// Also write a text file and a JPEG cut in half into the first class
    /// folders, as a real folder of one's own images often has.
    #[arg(long)]
    pub add_unreadable: bool,
}

fn parse_dataset(s: &str) -> Result<FetchDataset, String> {
    match s.parse::<FetchDataset>() {
        Ok(d @ (FetchDataset::Cifar10 | FetchDataset::Cifar100)) => Ok(d),
        Ok(d) => Err(format!("{d} is not a CIFAR data set (cifar10 or cifar100)")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `lt-folder`.
pub fn run(a: LtFolderArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} exists; choose a new folder", a.out.display());
    }
    let mut opts = FetchOptions::new(a.dataset, &a.root);
    opts.sources = auto_sources(
        a.dataset,
        Path::new(ARCHIVE_DIR),
        std::env::var(SOURCE_ENV).ok(),
    );
    let bars = Bars::new();
    let report = fetch(&opts, &bars).with_context(|| format!("fetching {}", a.dataset))?;
    let dir = report.dataset_dir;
    let train = scan_image_folder(&dir, "train", FileOrder::NumericStem)?;
    let available = train.class_names.len();
    if a.classes < 2 || a.classes > available {
        bail!(
            "--classes {}: {} has {available} classes (take 2 to {available})",
            a.classes,
            a.dataset
        );
    }
    let counts = class_counts(Profile::Exponential, a.max, a.classes, a.imbalance)?;
    let entries: Vec<_> = train
        .entries
        .iter()
        .filter(|e| (e.label as usize) < a.classes)
        .collect();
    let labels: Vec<u32> = entries.iter().map(|e| e.label).collect();
    let chosen = numpy_subset(&labels, &counts, a.seed)?;

    let name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let staging = a.out.with_file_name(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let bar = indicatif::ProgressBar::new(chosen.len() as u64);
    for &i in &chosen {
        let e = entries[i];
        let class = &train.class_names[e.label as usize];
        let file = e.path.rsplit('/').next().unwrap_or(&e.path);
        let to = staging.join(class).join(file);
        std::fs::create_dir_all(to.parent().unwrap_or(&staging))
            .with_context(|| format!("creating {}", staging.display()))?;
        std::fs::copy(dir.join(&e.path), &to)
            .with_context(|| format!("copying {} to {}", e.path, to.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.add_unreadable {
        let first = staging.join(&train.class_names[0]);
        std::fs::write(first.join("notes.txt"), "photos from the holiday\n")
            .with_context(|| format!("writing into {}", first.display()))?;
        let second = &train.class_names[1];
        let some = entries
            .iter()
            .zip(&labels)
            .find(|(_, &l)| l == 1)
            .map(|(e, _)| e.path.clone())
            .unwrap_or_default();
        let bytes = std::fs::read(dir.join(&some))
            .with_context(|| format!("reading {}", dir.join(&some).display()))?;
        let cut = staging.join(second).join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2])
            .with_context(|| format!("writing {}", cut.display()))?;
    }
    std::fs::rename(&staging, &a.out)
        .with_context(|| format!("renaming {} to {}", staging.display(), a.out.display()))?;
    let per: Vec<String> = (0..a.classes)
        .map(|c| format!("{} {}", train.class_names[c], counts[c]))
        .collect();
    println!(
        "wrote {} images of {} {} classes to {}: {}{}",
        chosen.len(),
        a.classes,
        a.dataset,
        a.out.display(),
        per.join(", "),
        if a.add_unreadable {
            format!(
                " (and {0}/notes.txt, {1}/cut.jpg: a text file and half a JPEG)",
                train.class_names[0], train.class_names[1]
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
