//! `cargo xtask fetch-data <dataset> [--source URL-or-path]... [--root DIR]`.
//!
//! A thin command-line layer over [`lt_data::fetch`]: it parses arguments,
//! shows progress bars, and prints what was written. Examples:
//!
//! ```text
//! cargo xtask fetch-data cifar10                                   # official binary release (curl)
//! cargo xtask fetch-data cifar10 --source ../shared/data/cifar10-jpg.tar.gz
//! cargo xtask fetch-data cifar100 --source ../shared/data/cifar100-jpg.tar.gz --root data
//! cargo xtask fetch-data imagenet-lt --source ~/Downloads/ImageNet_LT --image-root /datasets/imagenet
//! cargo xtask fetch-data inaturalist2018                           # official JSON annotations (curl)
//! ```

use std::path::PathBuf;

use anyhow::Context;
use lt_core::stats::{ClassStats, GroupRule};
use lt_data::fetch::{fetch, Bars, FetchDataset, FetchOptions, FetchReport};

/// Arguments of `fetch-data`.
#[derive(Debug, clap::Args)]
pub struct FetchDataArgs {
    /// Dataset: cifar10, cifar100, imagenet-lt, places-lt or inaturalist2018.
    #[arg(value_parser = parse_dataset)]
    pub dataset: FetchDataset,
    /// URL or local archive / file / folder; repeat for several. Default: the
    /// published URLs (CIFAR binary releases, iNaturalist 2018 annotations).
    #[arg(long = "source", value_name = "URL-OR-PATH")]
    pub sources: Vec<String>,
    /// Data root; each dataset goes into its own folder under it (e.g. data/cifar10).
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub root: PathBuf,
    /// Accept a source that is not a known archive if its sha256 is this.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// ImageNet-LT / Places-LT / iNaturalist: check every listed image exists here.
    #[arg(long, value_name = "DIR")]
    pub image_root: Option<PathBuf>,
    /// Redo everything even if the dataset is already complete.
    #[arg(long)]
    pub force: bool,
}

fn parse_dataset(s: &str) -> Result<FetchDataset, String> {
    s.parse()
        .map_err(|e: lt_data::error::DataError| e.to_string())
}

/// Runs `fetch-data`.
pub fn run(args: FetchDataArgs) -> anyhow::Result<()> {
    let opts = FetchOptions {
        dataset: args.dataset,
        sources: args.sources,
        root: args.root,
        sha256: args.sha256,
        image_root: args.image_root,
        force: args.force,
    };
    let report =
        fetch(&opts, &Bars::new()).with_context(|| format!("fetch-data {}", opts.dataset))?;
    print!("{}", summary(opts.dataset, &report));
    Ok(())
}

/// The text printed after a fetch.
fn summary(dataset: FetchDataset, r: &FetchReport) -> String {
    let mut s = String::new();
    if r.already_complete {
        s.push_str(&format!(
            "{dataset}: already complete in {} (nothing to do; --force redoes it)\n",
            r.dataset_dir.display()
        ));
    } else {
        s.push_str(&format!(
            "{dataset}: wrote {} split lists to {}\n",
            r.lists.len(),
            r.dataset_dir.display()
        ));
    }
    for src in &r.sources {
        s.push_str(&format!(
            "  source {}\n    sha256 {} ({})\n",
            src.given, src.sha256, src.verified
        ));
    }
    let rule = GroupRule::default();
    for (path, info) in &r.lists {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        // Shot groups are defined by training counts: shown for training lists only.
        let groups = if name.contains("train") {
            let [many, medium, few] =
                ClassStats::from_counts(info.counts.clone()).group_sizes(&rule);
            format!("  many/medium/few {many}/{medium}/{few}")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  {name:<28} {:>7} images {:>5} classes  sha256 {}{groups}\n",
            info.total,
            info.num_classes,
            &info.sha256[..16.min(info.sha256.len())]
        ));
        if info.num_classes <= 10 {
            let counts: Vec<String> = info.counts.iter().map(usize::to_string).collect();
            s.push_str(&format!("    per class: {}\n", counts.join(" ")));
        }
    }
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}
