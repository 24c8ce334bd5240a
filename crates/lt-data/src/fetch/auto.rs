//! Fetching a missing CIFAR data set on first use (`lt-cli run`).
//!
//! A config whose image root is `<dir>/cifar10` or `<dir>/cifar100` (the
//! folders `fetch` writes, e.g. `data/cifar100`) names a data set this crate
//! can build. When that root or one of its lists is missing,
//! [`missing_cifar`] says which data set to fetch under which root, and
//! [`auto_sources`] where from: the `LT_FETCH_SOURCE` environment variable
//! (a URL or archive) when set, else the image-folder archive in
//! [`ARCHIVE_DIR`] when it is there, else the official download. The fetch
//! itself is [`super::fetch`], with the same verification as
//! `cargo xtask fetch-data`.

use std::path::{Path, PathBuf};

use super::source::ArchiveKind;
use super::{FetchDataset, KNOWN_ARCHIVES};

/// Folder (relative to the working directory) searched for the CIFAR
/// image-folder archives (`cifar10-jpg.tar.gz`, `cifar100-jpg.tar.gz`).
pub const ARCHIVE_DIR: &str = "../shared/data";

/// Environment variable naming the source (URL or archive) of a missing
/// data set, in place of [`ARCHIVE_DIR`] or the official download.
pub const SOURCE_ENV: &str = "LT_FETCH_SOURCE";

/// The CIFAR data set to fetch, and the data root to fetch it under, when
/// `image_root` is a CIFAR folder (`<dir>/cifar10` or `<dir>/cifar100`) and
/// it, or one of `lists`, does not exist. `None` when nothing is missing or
/// the data is not CIFAR.
pub fn missing_cifar(image_root: &Path, lists: &[&Path]) -> Option<(FetchDataset, PathBuf)> {
    let name = image_root.file_name()?.to_str()?;
    let dataset = [FetchDataset::Cifar10, FetchDataset::Cifar100]
        .into_iter()
        .find(|d| d.dir_name() == name)?;
    let missing = !image_root.is_dir() || lists.iter().any(|l| !l.is_file());
    if !missing {
        return None;
    }
    let root = match image_root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((dataset, root))
}

/// The sources to fetch `dataset` from: `env_source` when given, else the
/// image-folder archive in `archive_dir` when it exists, else none (the
/// official download).
pub fn auto_sources(
    dataset: FetchDataset,
    archive_dir: &Path,
    env_source: Option<String>,
) -> Vec<String> {
    if let Some(s) = env_source.filter(|s| !s.trim().is_empty()) {
        return vec![s];
    }
    KNOWN_ARCHIVES
        .iter()
        .filter(|k| k.dataset == dataset && k.kind == ArchiveKind::CifarImageFolder)
        .map(|k| archive_dir.join(k.file_name))
        .find(|p| p.is_file())
        .map(|p| vec![p.display().to_string()])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_missing_cifar_folders_and_finds_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data/cifar100");
        let list = root.join("cifar100_lt_r100_train.txt");
        assert_eq!(
            missing_cifar(&root, &[&list]),
            Some((FetchDataset::Cifar100, tmp.path().join("data")))
        );
        std::fs::create_dir_all(&root).unwrap();
        assert!(missing_cifar(&root, &[&list]).is_some());
        std::fs::write(&list, "x 0\n").unwrap();
        assert_eq!(missing_cifar(&root, &[&list]), None);
        // Not CIFAR: never fetched.
        let other = tmp.path().join("data/flowers");
        assert_eq!(missing_cifar(&other, &[&other.join("t.txt")]), None);
        assert_eq!(
            missing_cifar(Path::new("cifar10"), &[]),
            Some((FetchDataset::Cifar10, PathBuf::from(".")))
        );

        let archives = tmp.path().join("shared");
        assert!(auto_sources(FetchDataset::Cifar10, &archives, None).is_empty());
        std::fs::create_dir_all(&archives).unwrap();
        std::fs::write(archives.join("cifar10-jpg.tar.gz"), b"x").unwrap();
        let s = auto_sources(FetchDataset::Cifar10, &archives, None);
        assert_eq!(
            s,
            [archives.join("cifar10-jpg.tar.gz").display().to_string()]
        );
        assert!(auto_sources(FetchDataset::Cifar100, &archives, None).is_empty());
        let s = auto_sources(FetchDataset::Cifar10, &archives, Some("u.tar.gz".into()));
        assert_eq!(s, ["u.tar.gz"]);
    }
}
