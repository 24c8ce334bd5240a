//! Sources: known archives, download, verification and unpacking.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{file_identity, FetchDataset, FetchOptions, Progress, SourceRecord};
use crate::error::{DataError, Result};
use lt_core::fs::sha256_file;

/// What an archive contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An official CIFAR binary release.
    CifarBinary,
    /// CIFAR as `<top>/{train,test}/<class>/<file>` JPEGs.
    CifarImageFolder,
    /// iNaturalist 2018 training annotations (`train2018.json`).
    InatTrainJson,
    /// iNaturalist 2018 validation annotations (`val2018.json`).
    InatValJson,
}

/// An archive with a published (or project-recorded) sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownArchive {
    /// File name.
    pub file_name: &'static str,
    /// Where it is published, if anywhere.
    pub url: Option<&'static str>,
    /// sha256, lower-case hex.
    pub sha256: &'static str,
    /// Size in bytes, where recorded.
    pub size: Option<u64>,
    /// The dataset.
    pub dataset: FetchDataset,
    /// Its contents.
    pub kind: ArchiveKind,
    /// Who records the digest.
    pub provenance: &'static str,
}

/// Archives this crate can verify.
///
/// The CIFAR authors publish only md5 digests for their archives
/// (`cifar-10-binary.tar.gz` c32a1d4ab5d03f1284b67883e8d87530,
/// `cifar-100-binary.tar.gz` 03b5dce01913d631647c71ecec9e9cb8); the sha256
/// digests below are the ones TensorFlow Datasets records in its checksum
/// files for the same URLs (with matching sizes), as are the iNaturalist
/// ones. ImageNet-LT and Places-LT split lists are published in a shared
/// folder without any digest, so they are not in this table: their digests
/// are computed, recorded in the marker and reported as unverifiable.
pub const KNOWN_ARCHIVES: &[KnownArchive] = &[
    KnownArchive {
        file_name: "cifar-10-binary.tar.gz",
        url: Some("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        size: Some(170_052_171),
        dataset: FetchDataset::Cifar10,
        kind: ArchiveKind::CifarBinary,
        provenance: "TensorFlow Datasets checksums (authors publish md5 only)",
    },
    KnownArchive {
        file_name: "cifar-100-binary.tar.gz",
        url: Some("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
        sha256: "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        size: Some(168_513_733),
        dataset: FetchDataset::Cifar100,
        kind: ArchiveKind::CifarBinary,
        provenance: "TensorFlow Datasets checksums (authors publish md5 only)",
    },
    KnownArchive {
        file_name: "cifar10-jpg.tar.gz",
        url: None,
        sha256: "fdf0b4f6a0ce0e8a5d81bb436b49a9fb87e6911e1442da8db80f1a61ec5517e3",
        size: None,
        dataset: FetchDataset::Cifar10,
        kind: ArchiveKind::CifarImageFolder,
        provenance: "the project's offline data folder",
    },
    KnownArchive {
        file_name: "cifar100-jpg.tar.gz",
        url: None,
        sha256: "4cb4a0dc2a2b9fb5abb47eddb1c59e7817b4c52124264294f3436a8546a62f45",
        size: None,
        dataset: FetchDataset::Cifar100,
        kind: ArchiveKind::CifarImageFolder,
        provenance: "the project's offline data folder",
    },
    KnownArchive {
        file_name: "train2018.json.tar.gz",
        url: Some(
            "https://ml-inat-competition-datasets.s3.amazonaws.com/2018/train2018.json.tar.gz",
        ),
        sha256: "be550dd4e2692458e508dd03e3a8d79f087453e2ad570a438a4ff198a7abc68f",
        size: Some(20_951_917),
        dataset: FetchDataset::Inaturalist2018,
        kind: ArchiveKind::InatTrainJson,
        provenance: "TensorFlow Datasets checksums",
    },
    KnownArchive {
        file_name: "val2018.json.tar.gz",
        url: Some("https://ml-inat-competition-datasets.s3.amazonaws.com/2018/val2018.json.tar.gz"),
        sha256: "e23c47d61d3aa2a9095090dbc49de861445d9a8144884a78222873f11f7ef43e",
        size: Some(1_276_686),
        dataset: FetchDataset::Inaturalist2018,
        kind: ArchiveKind::InatValJson,
        provenance: "TensorFlow Datasets checksums",
    },
];

/// Whether `s` is a URL rather than a local path.
pub(crate) fn is_url(s: &str) -> bool {
    ["http://", "https://", "ftp://", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// A source that is on disk and verified.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub record: SourceRecord,
    pub known: Option<&'static KnownArchive>,
    /// A note for the report when the source could not be verified.
    pub note: Option<String>,
}

/// Downloads `url` to `dest` with curl, resuming a partial `dest.part`.
///
/// Downloading shells out to `curl` (present on every supported system)
/// rather than linking an HTTP client: it brings TLS, redirects, retries and
/// `--continue-at -` resume for free, and the build stays lean for machines
/// that only ever use local archives.
pub(crate) fn download(url: &str, dest: &Path, progress: &dyn Progress) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    progress.start(
        &format!("downloading {url} (curl shows progress)"),
        None,
        true,
    );
    let command = format!(
        "curl --fail --location --retry 3 --continue-at - --output {} {url}",
        part.display()
    );
    let status = Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--retry",
            "3",
            "--continue-at",
            "-",
            "--output",
        ])
        .arg(&part)
        .arg(url)
        .status();
    progress.finish();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(DataError::Command {
                command,
                message: format!(
                    "{s}; the partial download {} is kept and resumed by the next run",
                    part.display()
                ),
            })
        }
        Err(e) => {
            return Err(DataError::Command {
                command,
                message: format!(
                "{e}; install curl, or download the file yourself and pass it with --source PATH"
            ),
            })
        }
    }
    std::fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))
}

fn file_name_of(s: &str) -> String {
    s.trim_end_matches('/')
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(s)
        .to_string()
}

/// Computes the sha256 of `path` and decides whether to trust it (see the
/// module docs of [`crate::fetch`]).
pub(crate) fn verify(
    given: &str,
    path: &Path,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<Resolved> {
    let (size, mtime) = file_identity(path)?;
    progress.start(&format!("sha256 {}", path.display()), Some(size), true);
    let sha = sha256_file(path, |n| progress.inc(n))?;
    progress.finish();
    let name = file_name_of(&path.to_string_lossy());
    let known = KNOWN_ARCHIVES.iter().find(|k| k.sha256 == sha);
    if let Some(pin) = &opts.sha256 {
        if !pin.eq_ignore_ascii_case(&sha) {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                expected: pin.to_ascii_lowercase(),
                actual: sha,
            });
        }
    }
    let (verified, note) = if let Some(k) = known {
        if k.dataset != opts.dataset {
            return Err(DataError::layout(
                path,
                format!(
                    "this is {} (a {} archive), not a {} source",
                    k.file_name, k.dataset, opts.dataset
                ),
            ));
        }
        (
            format!("sha256 matches {} ({})", k.file_name, k.provenance),
            None,
        )
    } else if let Some(k) = KNOWN_ARCHIVES.iter().find(|k| k.file_name == name) {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: k.sha256.to_string(),
            actual: sha,
        });
    } else if opts.sha256.is_some() {
        ("sha256 matches --sha256".to_string(), None)
    } else {
        (
            "unverified: no published sha256".to_string(),
            Some(format!(
                "{} has sha256 {sha}, which is not a published digest; it was accepted after the content checks (pin it with --sha256 {sha})",
                path.display()
            )),
        )
    };
    Ok(Resolved {
        record: SourceRecord {
            given: given.to_string(),
            path: path.to_path_buf(),
            size,
            mtime,
            sha256: sha,
            verified,
        },
        known,
        note,
    })
}

/// Makes a source available locally (downloading URLs into
/// `<root>/downloads/`) and verifies it.
pub(crate) fn resolve(
    given: &str,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<Resolved> {
    if !is_url(given) {
        let path = PathBuf::from(given);
        if !path.exists() {
            return Err(DataError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "source not found"),
            ));
        }
        return verify(given, &path, opts, progress);
    }
    let dest = opts.root.join("downloads").join(file_name_of(given));
    if dest.is_file() {
        match verify(given, &dest, opts, progress) {
            Ok(r) => return Ok(r),
            Err(DataError::Checksum { .. }) => {
                tracing::warn!(file = %dest.display(), "earlier download has the wrong sha256; downloading again");
                std::fs::remove_file(&dest).map_err(|e| DataError::io(&dest, e))?;
            }
            Err(e) => return Err(e),
        }
    }
    download(given, &dest, progress)?;
    verify(given, &dest, opts, progress)
}

/// Opens a `.tar` or `.tar.gz` archive (gzip detected from the content).
pub(crate) fn open_tar<'a>(
    path: &Path,
    progress: &'a dyn Progress,
) -> Result<tar::Archive<Box<dyn Read + 'a>>> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let counted = Counting { inner: f, progress };
    let reader: Box<dyn Read + 'a> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    Ok(tar::Archive::new(reader))
}

/// Reports bytes read from the archive file as progress.
struct Counting<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Unpacks a tar(.gz) archive into `dest` (which must not exist yet), refusing
/// entries that would land outside it.
pub(crate) fn unpack(archive: &Path, dest: &Path, progress: &dyn Progress) -> Result<usize> {
    let size = std::fs::metadata(archive)
        .map_err(|e| DataError::io(archive, e))?
        .len();
    progress.start(
        &format!("unpacking {}", archive.display()),
        Some(size),
        true,
    );
    std::fs::create_dir_all(dest).map_err(|e| DataError::io(dest, e))?;
    let mut tar = open_tar(archive, progress)?;
    let bad = |e: std::io::Error| {
        DataError::layout(archive, format!("not a readable tar(.gz) archive: {e}"))
    };
    let mut files = 0usize;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.display().to_string();
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| DataError::layout(archive, format!("cannot unpack entry {name}: {e}")))?;
        if !inside {
            return Err(DataError::layout(
                archive,
                format!("entry {name} points outside the archive folder"),
            ));
        }
        if entry.header().entry_type().is_file() {
            files += 1;
        }
    }
    progress.finish();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::NoProgress;

    #[test]
    fn urls_and_names() {
        assert!(is_url("https://x/y.tar.gz"));
        assert!(is_url("file:///tmp/a"));
        assert!(!is_url("/tmp/a"));
        assert_eq!(file_name_of("https://a/b/c.tar.gz"), "c.tar.gz");
        assert_eq!(file_name_of("c.tar.gz"), "c.tar.gz");
        for k in KNOWN_ARCHIVES {
            assert_eq!(k.sha256.len(), 64);
            assert!(k
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn verify_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mine.tar.gz");
        std::fs::write(&f, b"hello").unwrap();
        let sha = lt_core::fs::sha256_hex(b"hello");
        let mut opts = FetchOptions::new(FetchDataset::Cifar10, dir.path());
        let r = verify("mine.tar.gz", &f, &opts, &NoProgress).unwrap();
        assert!(r.known.is_none() && r.note.is_some());
        assert_eq!(r.record.sha256, sha);
        opts.sha256 = Some(sha.to_uppercase());
        let r = verify("mine.tar.gz", &f, &opts, &NoProgress).unwrap();
        assert!(r.note.is_none());
        opts.sha256 = Some("00".repeat(32));
        assert!(matches!(
            verify("x", &f, &opts, &NoProgress),
            Err(DataError::Checksum { .. })
        ));
        // A file named like a known archive must have its digest.
        let fake = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&fake, b"not it").unwrap();
        let opts = FetchOptions::new(FetchDataset::Cifar10, dir.path());
        let e = verify("x", &fake, &opts, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sha256 mismatch") && e.contains("c4a38c50"),
            "{e}"
        );
    }

    #[test]
    fn unpack_refuses_escaping_entries() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tar");
        {
            let f = std::fs::File::create(&archive).unwrap();
            let mut b = tar::Builder::new(f);
            let mut h = tar::Header::new_gnu();
            let data = b"x";
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so the builder does not normalise it.
            h.as_old_mut().name[..9].copy_from_slice(b"../evil.t");
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
            b.finish().unwrap();
        }
        let e = unpack(&archive, &dir.path().join("out"), &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(!dir.path().join("evil.t").exists());
        let e = unpack(
            &dir.path().join("missing.tar"),
            &dir.path().join("o2"),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.tar"), "{e}");
    }
    #[test]
    fn download_resumes_a_partial_file() {
        if Command::new("curl").arg("--version").output().is_err() {
            eprintln!("skipping: curl is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let remote = dir.path().join("remote/data.tar.gz");
        std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
        std::fs::write(&remote, &payload).unwrap();
        let url = format!("file://{}", remote.display());
        let root = dir.path().join("root");
        // An interrupted earlier download: the first 30,000 bytes.
        let part = root.join("downloads/data.tar.gz.part");
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        std::fs::write(&part, &payload[..30_000]).unwrap();
        let mut opts = FetchOptions::new(FetchDataset::Cifar10, &root);
        opts.sha256 = Some(lt_core::fs::sha256_hex(&payload));
        let r = resolve(&url, &opts, &NoProgress).unwrap();
        assert_eq!(r.record.path, root.join("downloads/data.tar.gz"));
        assert_eq!(std::fs::read(&r.record.path).unwrap(), payload);
        assert!(!part.exists());
        // A download that fails keeps no final file.
        let e = resolve(
            &format!("file://{}/missing.tar.gz", dir.path().display()),
            &opts,
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("curl") && e.contains("missing.tar.gz"), "{e}");
        assert!(!root.join("downloads/missing.tar.gz").exists());
    }
}
