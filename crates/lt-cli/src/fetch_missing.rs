//! `lt-cli run` / `train` on a CIFAR config whose data is not there yet:
//! fetch it first (`lt_data::fetch::auto` says what and from where; the fetch
//! is `lt_data::fetch::fetch`, verified as `cargo xtask fetch-data` verifies).

use std::path::Path;

use anyhow::{Context, Result};
use lt_data::fetch::auto::{auto_sources, missing_cifar, ARCHIVE_DIR, SOURCE_ENV};
use lt_data::fetch::{fetch, Bars, FetchOptions};
use lt_train::config::ExperimentConfig;

use crate::ConfigArgs;

/// Fetches the CIFAR data set the config of `args` names when it is
/// missing; does nothing otherwise (a config that does not load is left to
/// the command itself to report).
pub fn ensure(args: &ConfigArgs) -> Result<()> {
    let Ok(cfg) = ExperimentConfig::load(&args.config, &args.set) else {
        return Ok(());
    };
    let d = &cfg.data;
    let lists: Vec<&Path> = [
        Some(&d.train_list),
        d.val_list.as_ref(),
        d.test_list.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.as_path())
    .collect();
    let Some((dataset, root)) = missing_cifar(&d.root, &lists) else {
        return Ok(());
    };
    let mut opts = FetchOptions::new(dataset, root);
    opts.sources = auto_sources(
        dataset,
        Path::new(ARCHIVE_DIR),
        std::env::var(SOURCE_ENV).ok(),
    );
    match opts.sources.first() {
        Some(s) => tracing::info!(
            "{} is missing: fetching {dataset} from {s} into {}",
            d.root.display(),
            opts.dataset_dir().display()
        ),
        None => tracing::info!(
            "{} is missing and {ARCHIVE_DIR} holds no {dataset} archive: downloading the \
             official release into {}",
            d.root.display(),
            opts.dataset_dir().display()
        ),
    }
    let report = fetch(&opts, &Bars::new()).with_context(|| {
        format!("fetching the missing {dataset} data set (as `cargo xtask fetch-data {dataset}`)")
    })?;
    for s in &report.sources {
        tracing::info!("{dataset}: source {} ({})", s.given, s.verified);
    }
    for n in &report.notes {
        tracing::info!("note: {n}");
    }
    tracing::info!(
        "{dataset}: wrote {} split lists to {}",
        report.lists.len(),
        report.dataset_dir.display()
    );
    Ok(())
}
