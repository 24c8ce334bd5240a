//! Fetching datasets: the verify / unpack / index logic behind
//! `cargo xtask fetch-data`.
//!
//! Every dataset goes through the same steps:
//!
//! 1. **Source.** A URL (downloaded with `curl --continue-at -` into
//!    `<root>/downloads/`, so an interrupted download resumes) or a local file.
//!    With no source, the published URLs are used where there are any.
//! 2. **Verify.** The sha256 of every source is computed and looked up in
//!    [`KNOWN_ARCHIVES`]. A known digest identifies the archive; a file named
//!    like a known archive with another digest is an error (corrupt or wrong
//!    file); an unknown file is accepted only if `--sha256` pins it or, failing
//!    that, after the content checks pass, with a warning and its digest
//!    recorded. Nothing is ever verified against an invented checksum: where
//!    no digest is published, the table says so.
//! 3. **Unpack / index.** Archives are unpacked into a staging folder inside
//!    the dataset folder and moved into place only when complete; the layout
//!    (binary release or image folder) is detected from the contents.
//! 4. **Split lists.** Written atomically with a JSON summary each (per-class
//!    counts, many / medium / few sizes, sha256), see [`crate::split_list`].
//! 5. **Marker.** `.fetch-complete.json` in the dataset folder, written last,
//!    records the source digests and the list digests. A second run with the
//!    same (or no) source finds it and does nothing; a run interrupted before
//!    it is redone from the start, removing stale staging folders.
//!
//! Layout under `--root` (default `./data`):
//!
//! | dataset | folder | lists |
//! |---|---|---|
//! | `cifar10`, `cifar100` | `<root>/<ds>/{train,test}/<class>/<file>` | `<ds>_train.txt`, `<ds>_test.txt`, `<ds>_lt_r{100,50,10}_{train,val}.txt` |
//! | `imagenet-lt` | `<root>/imagenet_lt/` | `ImageNet_LT_{train,val,test}.txt` (image root supplied by the user) |
//! | `places-lt` | `<root>/places_lt/` | `Places_LT_{train,val,test}.txt` (image root supplied by the user) |
//! | `inaturalist2018` | `<root>/inaturalist2018/` | `iNaturalist18_{train,val}.txt` (image root: the folder holding `train_val2018/`) |
//!
//! CIFAR paths in the lists are relative to `<root>/<ds>/`. The CIFAR binary
//! release is decoded on unpack to PNG files named `<index>.png` (the record's
//! index in the release's train or test order) in the image-folder layout, so
//! everything downstream reads one layout and the file names keep the release
//! order. How "dataset order" is recovered for each archive is described by
//! [`cifar_file_order_note`] and in the source of the CIFAR step.

pub mod auto;
mod bars;
mod cifar;
mod lists;
mod source;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::split_list::SplitInfo;
use lt_core::fs::{sha256_file, write_atomic};

pub use bars::Bars;
pub use cifar::{cifar_file_order_note, CIFAR_RHOS, CIFAR_VAL_PER_CLASS, CIFAR_VAL_SEED};
pub use source::{KnownArchive, KNOWN_ARCHIVES};

/// A dataset `fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchDataset {
    /// CIFAR-10 (binary release or image-folder archive).
    Cifar10,
    /// CIFAR-100 (binary release or image-folder archive).
    Cifar100,
    /// ImageNet-LT split lists.
    ImagenetLt,
    /// Places-LT split lists.
    PlacesLt,
    /// iNaturalist 2018 annotations, converted to split lists.
    Inaturalist2018,
}

impl FetchDataset {
    /// All datasets.
    pub const ALL: [FetchDataset; 5] = [
        FetchDataset::Cifar10,
        FetchDataset::Cifar100,
        FetchDataset::ImagenetLt,
        FetchDataset::PlacesLt,
        FetchDataset::Inaturalist2018,
    ];

    /// Command-line name (`cifar10`, `imagenet-lt`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FetchDataset::Cifar10 => "cifar10",
            FetchDataset::Cifar100 => "cifar100",
            FetchDataset::ImagenetLt => "imagenet-lt",
            FetchDataset::PlacesLt => "places-lt",
            FetchDataset::Inaturalist2018 => "inaturalist2018",
        }
    }

    /// Folder under the data root.
    pub fn dir_name(self) -> &'static str {
        match self {
            FetchDataset::Cifar10 => "cifar10",
            FetchDataset::Cifar100 => "cifar100",
            FetchDataset::ImagenetLt => "imagenet_lt",
            FetchDataset::PlacesLt => "places_lt",
            FetchDataset::Inaturalist2018 => "inaturalist2018",
        }
    }
}

impl std::fmt::Display for FetchDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FetchDataset {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        FetchDataset::ALL
            .into_iter()
            .find(|d| d.name() == norm)
            .ok_or_else(|| {
                DataError::config(
                    "dataset",
                    format!(
                        "unknown dataset `{s}`; expected one of {}",
                        FetchDataset::ALL.map(|d| d.name()).join(", ")
                    ),
                )
            })
    }
}

/// What to fetch and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// The dataset.
    pub dataset: FetchDataset,
    /// URLs or local files; empty = the published URLs (where there are any).
    pub sources: Vec<String>,
    /// Data root (`./data` by default in the CLI).
    pub root: PathBuf,
    /// Accept a source that is not in [`KNOWN_ARCHIVES`] if its sha256 is this.
    pub sha256: Option<String>,
    /// ImageNet-LT / Places-LT / iNaturalist: also check that every listed
    /// image exists under this folder.
    pub image_root: Option<PathBuf>,
    /// Redo everything even if the dataset is complete.
    pub force: bool,
}

impl FetchOptions {
    /// Options for `dataset` under `root`, published sources, no extras.
    pub fn new(dataset: FetchDataset, root: impl Into<PathBuf>) -> Self {
        Self {
            dataset,
            sources: Vec::new(),
            root: root.into(),
            sha256: None,
            image_root: None,
            force: false,
        }
    }

    /// The dataset's folder, `<root>/<dir_name>`.
    pub fn dataset_dir(&self) -> PathBuf {
        self.root.join(self.dataset.dir_name())
    }
}

/// Progress reporting hooks (the CLI shows them as progress bars).
pub trait Progress: Sync {
    /// A new step; `total` in bytes when `bytes`, else in items.
    fn start(&self, message: &str, total: Option<u64>, bytes: bool);
    /// `n` more bytes or items done.
    fn inc(&self, n: u64);
    /// The step is done.
    fn finish(&self);
}

/// Progress hooks that do nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>, _: bool) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
}

/// One verified source, as recorded in the marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The URL or path given.
    pub given: String,
    /// The local file that was verified.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (seconds since the epoch), to recognise it
    /// again without re-hashing.
    pub mtime: u64,
    /// Its sha256.
    pub sha256: String,
    /// How it was verified (known archive name, `--sha256`, or unverified).
    pub verified: String,
}

/// Contents of `.fetch-complete.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Marker format version.
    pub format: u32,
    /// The dataset.
    pub dataset: FetchDataset,
    /// The sources as given (URLs, files or folders; empty = published URLs).
    pub given: Vec<String>,
    /// The files it was built from.
    pub sources: Vec<SourceRecord>,
    /// Written list files (names relative to the dataset folder) and their sha256.
    pub lists: Vec<(String, String)>,
}

const MARKER_FORMAT: u32 = 1;

/// Name of the completion marker in the dataset folder.
pub const MARKER_FILE: &str = ".fetch-complete.json";

/// What a fetch did.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchReport {
    /// The dataset folder.
    pub dataset_dir: PathBuf,
    /// True when the dataset was already complete and nothing was done.
    pub already_complete: bool,
    /// The written (or existing) split lists, with their summaries.
    pub lists: Vec<(PathBuf, SplitInfo)>,
    /// The sources and how they were verified.
    pub sources: Vec<SourceRecord>,
    /// Things the user should know (assumptions, unverifiable digests, counts
    /// that differ from the published ones); not logged here, for the caller
    /// to show.
    pub notes: Vec<String>,
}

fn file_identity(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok((meta.len(), mtime))
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let bytes = std::fs::read(dir.join(MARKER_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the marker's lists still exist unchanged.
fn lists_intact(dir: &Path, marker: &Marker) -> bool {
    marker.lists.iter().all(|(name, sha)| {
        sha256_file(&dir.join(name), |_| {})
            .map(|s| &s == sha)
            .unwrap_or(false)
    })
}

/// Whether the requested sources are the ones the marker was built from:
/// the same URLs, files or folders, and local files unchanged (same size and
/// modification time, or else the same sha256).
fn same_sources(opts: &FetchOptions, marker: &Marker) -> Result<bool> {
    if opts.sources.is_empty() {
        return Ok(true); // "make sure the dataset is there"
    }
    if opts.sources != marker.given {
        return Ok(false);
    }
    for rec in &marker.sources {
        if source::is_url(&rec.given) {
            continue;
        }
        if !rec.path.is_file() {
            return Ok(false);
        }
        let (size, mtime) = file_identity(&rec.path)?;
        if (size, mtime) != (rec.size, rec.mtime) && sha256_file(&rec.path, |_| {})? != rec.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Fetches, verifies, unpacks and indexes a dataset and writes its split
/// lists; does nothing when it is already complete (unless `force`).
pub fn fetch(opts: &FetchOptions, progress: &dyn Progress) -> Result<FetchReport> {
    let dir = opts.dataset_dir();
    if !opts.force {
        if let Some(marker) = read_marker(&dir) {
            if marker.format == MARKER_FORMAT
                && marker.dataset == opts.dataset
                && lists_intact(&dir, &marker)
                && same_sources(opts, &marker)?
            {
                let lists = marker
                    .lists
                    .iter()
                    .filter(|(n, _)| n.ends_with(".txt"))
                    .map(|(n, _)| {
                        let p = dir.join(n);
                        crate::split_list::read_split_info(&p).map(|i| (p, i))
                    })
                    .collect::<Result<Vec<_>>>()?;
                tracing::info!(dataset = %opts.dataset, dir = %dir.display(), "already complete; nothing to do");
                return Ok(FetchReport {
                    dataset_dir: dir,
                    already_complete: true,
                    lists,
                    sources: marker.sources,
                    notes: Vec::new(),
                });
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    // Invalidate first: a run that stops part-way must not look complete.
    let marker_path = dir.join(MARKER_FILE);
    if marker_path.exists() {
        std::fs::remove_file(&marker_path).map_err(|e| DataError::io(&marker_path, e))?;
    }
    let mut report = match opts.dataset {
        FetchDataset::Cifar10 | FetchDataset::Cifar100 => cifar::fetch_cifar(opts, progress)?,
        FetchDataset::ImagenetLt | FetchDataset::PlacesLt => lists::fetch_lt_lists(opts, progress)?,
        FetchDataset::Inaturalist2018 => lists::fetch_inaturalist(opts, progress)?,
    };
    let mut list_hashes = Vec::new();
    for (path, info) in &report.lists {
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        list_hashes.push((name, info.sha256.clone()));
    }
    let marker = Marker {
        format: MARKER_FORMAT,
        dataset: opts.dataset,
        given: opts.sources.clone(),
        sources: report.sources.clone(),
        lists: list_hashes,
    };
    let json = serde_json::to_vec_pretty(&marker).map_err(|e| DataError::Json {
        path: marker_path.clone(),
        source: e,
    })?;
    write_atomic(&marker_path, &json)?;
    report.already_complete = false;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_parse() {
        for d in FetchDataset::ALL {
            assert_eq!(d.name().parse::<FetchDataset>().unwrap(), d);
        }
        assert_eq!(
            "ImageNet_LT".parse::<FetchDataset>().unwrap(),
            FetchDataset::ImagenetLt
        );
        let e = "mnist".parse::<FetchDataset>().unwrap_err().to_string();
        assert!(e.contains("cifar10, cifar100"), "{e}");
    }
}
