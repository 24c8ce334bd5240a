//! Reader for the official CIFAR-10 and CIFAR-100 *binary* releases.
//!
//! * CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin`
//!   (train, in that order) and `test_batch.bin`; each record is 1 label byte
//!   then 3072 pixel bytes: the 1024 red values of the 32x32 image row by row,
//!   then green, then blue. Class names: `batches.meta.txt`.
//! * CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`; each record is
//!   a coarse label byte, a fine label byte, then the same 3072 bytes. The fine
//!   label (100 classes) is the label used. Class names: `fine_label_names.txt`.
//!
//! Records keep the release order, which is the "dataset order" the LDAM-DRW
//! long-tailed subset is defined on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSource, Sample};
use crate::error::{DataError, Result};

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Pixel bytes per record (`3 * 32 * 32`).
pub const PIXELS: usize = 3 * SIDE * SIDE;

/// Which CIFAR release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CifarKind {
    /// CIFAR-10.
    Cifar10,
    /// CIFAR-100 (fine labels).
    Cifar100,
}

/// Train or test part of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CifarSplit {
    /// The 50,000 training images.
    Train,
    /// The 10,000 test images.
    Test,
}

impl CifarSplit {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            CifarSplit::Train => "train",
            CifarSplit::Test => "test",
        }
    }
}

impl CifarKind {
    /// `cifar10` or `cifar100`.
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar10",
            CifarKind::Cifar100 => "cifar100",
        }
    }

    /// Number of (fine) classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// Training images per class in the official release (5000 or 500), the
    /// `n_max` of the long-tailed profiles.
    pub fn train_per_class(self) -> usize {
        50_000 / self.num_classes()
    }

    /// Test images per class in the official release.
    pub fn test_per_class(self) -> usize {
        10_000 / self.num_classes()
    }

    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + PIXELS,
            CifarKind::Cifar100 => 2 + PIXELS,
        }
    }

    /// The directory the release archive unpacks to.
    pub fn release_dir(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }

    /// Binary files of a split, in release order.
    pub fn files(self, split: CifarSplit) -> &'static [&'static str] {
        match (self, split) {
            (CifarKind::Cifar10, CifarSplit::Train) => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (CifarKind::Cifar10, CifarSplit::Test) => &["test_batch.bin"],
            (CifarKind::Cifar100, CifarSplit::Train) => &["train.bin"],
            (CifarKind::Cifar100, CifarSplit::Test) => &["test.bin"],
        }
    }

    /// The class-name file of the release.
    pub fn label_names_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "batches.meta.txt",
            CifarKind::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarRecord {
    /// The (fine) label.
    pub label: u32,
    /// The coarse label (CIFAR-100 only).
    pub coarse_label: Option<u32>,
    /// 32x32 RGB pixels, interleaved row-major (`R G B R G B ...`).
    pub pixels: Arc<[u8]>,
}

/// Converts the release's planar layout (all R, all G, all B) to interleaved
/// RGB.
pub fn planar_to_interleaved(planar: &[u8]) -> Vec<u8> {
    let n = planar.len() / 3;
    let mut out = vec![0u8; n * 3];
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        px[0] = planar[i];
        px[1] = planar[n + i];
        px[2] = planar[2 * n + i];
    }
    out
}

/// Parses the bytes of one binary file; `path` names it in errors.
pub fn parse_cifar_bytes(bytes: &[u8], path: &Path, kind: CifarKind) -> Result<Vec<CifarRecord>> {
    let rec = kind.record_len();
    if bytes.is_empty() {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
        });
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(DataError::CifarFormat {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes is not a whole number of {rec}-byte {} records ({} whole records and {} trailing bytes: truncated file or wrong dataset?)",
                bytes.len(),
                kind.name(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
        });
    }
    let classes = kind.num_classes();
    bytes
        .chunks_exact(rec)
        .enumerate()
        .map(|(i, r)| {
            let (coarse, label, px) = match kind {
                CifarKind::Cifar10 => (None, r[0], &r[1..]),
                CifarKind::Cifar100 => {
                    if r[0] >= 20 {
                        return Err(DataError::LabelOutOfRange {
                            path: path.to_path_buf(),
                            line: i + 1,
                            label: u64::from(r[0]),
                            num_classes: 20,
                        });
                    }
                    (Some(u32::from(r[0])), r[1], &r[2..])
                }
            };
            if label as usize >= classes {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    line: i + 1,
                    label: u64::from(label),
                    num_classes: classes,
                });
            }
            Ok(CifarRecord {
                label: u32::from(label),
                coarse_label: coarse,
                pixels: Arc::from(planar_to_interleaved(px)),
            })
        })
        .collect()
}

/// Reads one binary file. Errors name the file and, for a bad label, the
/// 1-based record number (reported as the line).
pub fn read_cifar_file(path: &Path, kind: CifarKind) -> Result<Vec<CifarRecord>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_cifar_bytes(&bytes, path, kind)
}

/// Reads a class-name file (one name per non-empty line).
pub fn read_label_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Reads a split of an unpacked binary release in `dir` (the directory that
/// holds the `.bin` files) as in-memory RGB images, in release order, with the
/// class names when the name file is present.
pub fn read_cifar(dir: &Path, kind: CifarKind, split: CifarSplit) -> Result<Dataset> {
    let mut samples = Vec::new();
    for f in kind.files(split) {
        let path: PathBuf = dir.join(f);
        for r in read_cifar_file(&path, kind)? {
            samples.push(Sample {
                image: ImageSource::Rgb8 {
                    width: SIDE as u32,
                    height: SIDE as u32,
                    data: r.pixels,
                },
                label: r.label,
            });
        }
    }
    let mut dataset = Dataset::from_samples(samples, kind.num_classes())?;
    let names_path = dir.join(kind.label_names_file());
    if names_path.is_file() {
        let names = read_label_names(&names_path)?;
        if names.len() != kind.num_classes() {
            return Err(DataError::layout(
                &names_path,
                format!(
                    "{} class names, expected {}",
                    names.len(),
                    kind.num_classes()
                ),
            ));
        }
        dataset = dataset.with_class_names(names)?;
    }
    dataset.check_all_classes_present(dir)?;
    Ok(dataset)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record whose pixel (y, x) has R = label, G = y, B = x.
    pub(crate) fn record(kind: CifarKind, label: u8) -> Vec<u8> {
        let mut r = Vec::with_capacity(kind.record_len());
        if kind == CifarKind::Cifar100 {
            r.push(label / 5);
        }
        r.push(label);
        r.extend(std::iter::repeat_n(label, SIDE * SIDE));
        for y in 0..SIDE {
            r.extend(std::iter::repeat_n(y as u8, SIDE));
        }
        for _ in 0..SIDE {
            r.extend(0..SIDE as u8);
        }
        r
    }

    #[test]
    fn parses_records_in_order_and_interleaves() {
        for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
            let bytes: Vec<u8> = [3u8, 1, 7].iter().flat_map(|&l| record(kind, l)).collect();
            let recs = parse_cifar_bytes(&bytes, Path::new("f.bin"), kind).unwrap();
            assert_eq!(recs.iter().map(|r| r.label).collect::<Vec<_>>(), [3, 1, 7]);
            let px = &recs[2].pixels;
            // pixel (y=5, x=9)
            let o = (5 * SIDE + 9) * 3;
            assert_eq!(&px[o..o + 3], &[7, 5, 9]);
            if kind == CifarKind::Cifar100 {
                assert_eq!(recs[2].coarse_label, Some(1));
            }
        }
    }

    #[test]
    fn bad_files_are_errors() {
        let k = CifarKind::Cifar10;
        let mut bytes = record(k, 1);
        bytes.extend(record(k, 2));
        let e = parse_cifar_bytes(&bytes[..bytes.len() - 10], Path::new("b.bin"), k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.bin") && e.contains("trailing"), "{e}");
        let mut bad = record(k, 1);
        bad.extend(record(k, 10));
        let e = parse_cifar_bytes(&bad, Path::new("b.bin"), k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.bin:2") && e.contains("label 10"), "{e}");
        let e = parse_cifar_bytes(&[], Path::new("b.bin"), k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn reads_a_release_directory() {
        let dir = tempfile::tempdir().unwrap();
        let k = CifarKind::Cifar10;
        for (i, f) in k.files(CifarSplit::Train).iter().enumerate() {
            let bytes: Vec<u8> = (0..10u8)
                .filter(|l| (*l as usize + i).is_multiple_of(2) || i == 0)
                .flat_map(|l| record(k, l))
                .collect();
            std::fs::write(dir.path().join(f), bytes).unwrap();
        }
        let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
        std::fs::write(dir.path().join("batches.meta.txt"), names + "\n").unwrap();
        let d = read_cifar(dir.path(), k, CifarSplit::Train).unwrap();
        assert_eq!(d.num_classes(), 10);
        assert_eq!(&d.labels()[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(d.class_names().unwrap()[3], "class3");
        assert!(matches!(d.image(0), ImageSource::Rgb8 { width: 32, .. }));
        let e = read_cifar(dir.path(), k, CifarSplit::Test)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test_batch.bin"), "{e}");
    }
}
