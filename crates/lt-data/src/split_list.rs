//! Split-list files in the ImageNet-LT / Places-LT / iNaturalist-2018 format.
//!
//! One image per line: `<relative/path> <integer label>`, the path resolved
//! against an image root. The label is the last whitespace-separated token, so
//! paths may contain spaces. Blank lines are ignored. Every split this crate
//! writes (full, long-tailed, validation) uses the same format, so a split can
//! be shared, diffed and re-used by the official Python code as well.
//!
//! Each written list gets a JSON sidecar (`<name>.json`, see [`SplitInfo`])
//! with its per-class counts, its many / medium / few sizes and the sha256 of
//! the list, so two people can check that they train on the same subset.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSource, Sample};
use crate::error::{DataError, Origin, Result};
use lt_core::fs::{sha256_hex, write_atomic};
use lt_core::stats::{ClassStats, GroupRule};

/// One line of a split list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// Path relative to the image root, with `/` separators.
    pub path: String,
    /// Class id.
    pub label: u32,
}

impl SplitEntry {
    /// A new entry.
    pub fn new(path: impl Into<String>, label: u32) -> Self {
        Self {
            path: path.into(),
            label,
        }
    }
}

/// Parses the text of a split list; `list` only names the file in errors.
/// Returns the entries with their 1-based line numbers.
pub fn parse_split_list(text: &str, list: &Path) -> Result<Vec<(SplitEntry, usize)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let parse_err = |message: String| DataError::Parse {
            path: list.to_path_buf(),
            line: line_no,
            message,
        };
        let Some(split_at) = line.rfind(char::is_whitespace) else {
            return Err(parse_err(format!(
                "expected `<relative/path> <label>`, found `{line}` (no label)"
            )));
        };
        let path = line[..split_at].trim_end();
        let label_text = &line[split_at + 1..];
        let label: u64 = label_text.parse().map_err(|_| {
            parse_err(format!(
                "label `{label_text}` is not a non-negative integer (line `{line}`)"
            ))
        })?;
        let label = u32::try_from(label).map_err(|_| DataError::LabelOutOfRange {
            path: list.to_path_buf(),
            line: line_no,
            label,
            num_classes: u32::MAX as usize,
        })?;
        out.push((SplitEntry::new(path, label), line_no));
    }
    Ok(out)
}

/// An image listed twice (whatever its labels): an error naming the list
/// and both lines. A repeated image would be drawn twice as often and could
/// carry two labels.
pub fn check_no_duplicates(entries: &[(SplitEntry, usize)], list: &Path) -> Result<()> {
    let mut seen: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(entries.len());
    for (e, line) in entries {
        if let Some(&first) = seen.get(e.path.as_str()) {
            return Err(DataError::DuplicateEntry {
                path: list.to_path_buf(),
                line: *line,
                first,
                image: e.path.clone(),
            });
        }
        seen.insert(&e.path, *line);
    }
    Ok(())
}

/// Reads a split list file into entries with their line numbers; an image
/// listed twice is an error ([`check_no_duplicates`]).
pub fn read_split_entries(list: &Path) -> Result<Vec<(SplitEntry, usize)>> {
    let text = std::fs::read_to_string(list).map_err(|e| DataError::io(list, e))?;
    // A byte-order mark (editors on Windows write one) is not part of the
    // first path.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let entries = parse_split_list(text, list)?;
    check_no_duplicates(&entries, list)?;
    Ok(entries)
}

/// Reads a split list and resolves its paths against `image_root`.
///
/// Checks, each failure naming the list file and line: every line has a
/// label; no image is listed twice; every label is below `num_classes` (when given; otherwise the class
/// count is the largest label + 1); every listed image exists; the split is
/// not empty; and every class has at least one image (labels are contiguous).
pub fn read_split_list(
    list: &Path,
    image_root: &Path,
    num_classes: Option<usize>,
) -> Result<Dataset> {
    let entries = read_split_entries(list)?;
    if entries.is_empty() {
        return Err(DataError::EmptySplit {
            path: list.to_path_buf(),
        });
    }
    let num_classes = match num_classes {
        Some(c) => {
            if let Some((e, line)) = entries.iter().find(|(e, _)| e.label as usize >= c) {
                return Err(DataError::LabelOutOfRange {
                    path: list.to_path_buf(),
                    line: *line,
                    label: u64::from(e.label),
                    num_classes: c,
                });
            }
            c
        }
        None => {
            entries
                .iter()
                .map(|(e, _)| e.label as usize)
                .max()
                .unwrap_or(0)
                + 1
        }
    };
    let paths: Vec<PathBuf> = entries
        .iter()
        .map(|(e, _)| image_root.join(&e.path))
        .collect();
    // Checking existence up front turns a missing file into an error naming
    // the list line, instead of a decode failure deep inside an epoch. The
    // stat calls run in parallel: iNaturalist lists have 437k lines.
    if let Some(pos) = paths.par_iter().position_first(|p| !p.is_file()) {
        return Err(DataError::MissingImage {
            path: paths[pos].clone(),
            origin: Some(Origin {
                file: list.to_path_buf(),
                line: entries[pos].1,
            }),
        });
    }
    let lines: Vec<u32> = entries.iter().map(|(_, l)| *l as u32).collect();
    let samples = paths
        .into_iter()
        .zip(&entries)
        .map(|(p, (e, _))| Sample {
            image: ImageSource::File(p),
            label: e.label,
        })
        .collect();
    let dataset = Dataset::from_samples(samples, num_classes)?.with_origin(list, lines);
    dataset.check_all_classes_present(list)?;
    Ok(dataset)
}

/// The split-list entries of `indices` of a file-backed dataset, with paths
/// relative to `image_root` (so a subset, e.g. a long-tailed one, can be
/// written with [`write_split_list`] and shared). In-memory images and files
/// outside `image_root` cannot be listed and are errors.
pub fn dataset_entries(
    dataset: &Dataset,
    indices: &[usize],
    image_root: &Path,
) -> Result<Vec<SplitEntry>> {
    indices
        .iter()
        .map(|&i| {
            if i >= dataset.len() {
                return Err(DataError::IndexOutOfRange {
                    batch: 0,
                    index: i,
                    len: dataset.len(),
                });
            }
            let ImageSource::File(p) = dataset.image(i) else {
                return Err(DataError::layout(
                    image_root,
                    format!("sample {i} is an in-memory image and has no path to list"),
                ));
            };
            let rel = p.strip_prefix(image_root).map_err(|_| {
                DataError::layout(
                    p,
                    format!("is not under the image root {}", image_root.display()),
                )
            })?;
            let text = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            Ok(SplitEntry::new(text, dataset.label(i)))
        })
        .collect()
}

/// The text of a split list: one `path label` line per entry, `\n`-terminated.
pub fn split_list_text(entries: &[SplitEntry]) -> String {
    let mut s = String::with_capacity(entries.len() * 32);
    for e in entries {
        s.push_str(&e.path);
        s.push(' ');
        s.push_str(&e.label.to_string());
        s.push('\n');
    }
    s
}

/// Writes a split list atomically (temp file + rename) and returns the sha256
/// of its contents. Rejects paths that would not read back (empty, or with a
/// line break).
pub fn write_split_list(path: &Path, entries: &[SplitEntry]) -> Result<String> {
    if let Some(bad) = entries
        .iter()
        .find(|e| e.path.trim().is_empty() || e.path.contains(['\n', '\r']))
    {
        return Err(DataError::layout(
            path,
            format!("cannot write image path {:?} into a split list", bad.path),
        ));
    }
    let text = split_list_text(entries);
    write_atomic(path, text.as_bytes())?;
    Ok(sha256_hex(text.as_bytes()))
}

/// Summary of a written split list, stored next to it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// File name of the list.
    pub list: String,
    /// sha256 of the list file's bytes.
    pub sha256: String,
    /// Number of classes.
    pub num_classes: usize,
    /// Number of images.
    pub total: usize,
    /// Images per class, indexed by label.
    pub counts: Vec<usize>,
    /// Number of many / medium / few-shot classes of this list's own counts
    /// under the default rule (meaningful for training lists).
    pub many_medium_few: [usize; 3],
    /// How the split was made (profile, rho, seed, source order, ...).
    pub how: String,
}

/// Path of the JSON sidecar of a split list (`a/b.txt` -> `a/b.json`).
pub fn info_path(list: &Path) -> PathBuf {
    list.with_extension("json")
}

/// Writes a split list and its [`SplitInfo`] sidecar, logs the per-class
/// counts and the hash, and returns the info.
pub fn write_split_with_info(
    path: &Path,
    entries: &[SplitEntry],
    num_classes: usize,
    how: &str,
) -> Result<SplitInfo> {
    let sha256 = write_split_list(path, entries)?;
    let labels: Vec<u32> = entries.iter().map(|e| e.label).collect();
    let stats = ClassStats::from_labels(&labels, num_classes);
    let info = SplitInfo {
        list: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256,
        num_classes,
        total: stats.total(),
        counts: stats.counts().to_vec(),
        many_medium_few: stats.group_sizes(&GroupRule::default()),
        how: how.to_string(),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(|e| DataError::Json {
        path: info_path(path),
        source: e,
    })?;
    write_atomic(&info_path(path), &json)?;
    tracing::info!(
        list = %path.display(),
        total = info.total,
        sha256 = %info.sha256,
        counts = ?info.counts,
        "wrote split list ({how})"
    );
    Ok(info)
}

/// Reads the JSON sidecar of a split list.
pub fn read_split_info(list: &Path) -> Result<SplitInfo> {
    let p = info_path(list);
    let bytes = std::fs::read(&p).map_err(|e| DataError::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Json { path: p, source: e })
}

/// The file of class names: one name per line, line `i` names class `i`.
pub use lt_core::classes::CLASS_NAMES_FILE;

/// Reads a [`CLASS_NAMES_FILE`]: one name per line (trimmed; blank lines at
/// the end ignored), exactly `num_classes` of them
/// ([`lt_core::classes::parse_class_names`]).
pub fn read_class_names(path: &Path, num_classes: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    lt_core::classes::parse_class_names(&text, num_classes).map_err(|e| DataError::Parse {
        path: path.to_path_buf(),
        line: e.line,
        message: e.message,
    })
}

/// The class names of a split list: [`CLASS_NAMES_FILE`] next to the list,
/// else in `root`; `None` when neither exists.
pub fn find_class_names(
    list: &Path,
    root: &Path,
    num_classes: usize,
) -> Result<Option<(Vec<String>, PathBuf)>> {
    let beside = list
        .parent()
        .unwrap_or(Path::new("."))
        .join(CLASS_NAMES_FILE);
    for file in [beside, root.join(CLASS_NAMES_FILE)] {
        if file.is_file() {
            return Ok(Some((read_class_names(&file, num_classes)?, file)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {

    #[test]
    fn class_names_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("lists/train.txt");
        assert!(find_class_names(&list, dir.path(), 2).unwrap().is_none());
        std::fs::write(dir.path().join(CLASS_NAMES_FILE), "cat\n dog \n\n").unwrap();
        let (names, file) = find_class_names(&list, dir.path(), 2).unwrap().unwrap();
        assert_eq!(names, ["cat", "dog"]);
        assert_eq!(file, dir.path().join(CLASS_NAMES_FILE));
        let e = find_class_names(&list, dir.path(), 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("classes.txt") && e.contains("2 class names for 3"),
            "{e}"
        );
    }
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a/1.jpg", "a/2.jpg", "b/with space.jpg"] {
            touch(dir.path(), f);
        }
        let list = dir.path().join("list.txt");
        (dir, list)
    }

    #[test]
    fn reads_a_valid_list() {
        let (dir, list) = fixture();
        std::fs::write(&list, "a/1.jpg 0\n\na/2.jpg\t0\r\nb/with space.jpg 1\n").unwrap();
        let d = read_split_list(&list, dir.path(), None).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.num_classes(), 2);
        assert_eq!(d.labels(), &[0, 0, 1]);
        assert_eq!(
            d.image(2),
            &ImageSource::File(dir.path().join("b/with space.jpg"))
        );
        assert_eq!(d.origin(2).unwrap().line, 4);
        let d = read_split_list(&list, dir.path(), Some(2)).unwrap();
        assert_eq!(d.num_classes(), 2);
    }

    fn err_of(text: &str, classes: Option<usize>) -> String {
        let (dir, list) = fixture();
        std::fs::write(&list, text).unwrap();
        read_split_list(&list, dir.path(), classes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_lists_name_file_and_line() {
        let e = err_of("a/1.jpg 0\na/2.jpg\n", None);
        assert!(e.contains("list.txt:2") && e.contains("no label"), "{e}");
        let e = err_of("a/1.jpg 0\na/2.jpg x\n", None);
        assert!(
            e.contains("list.txt:2") && e.contains("not a non-negative integer"),
            "{e}"
        );
        let e = err_of("a/1.jpg 0\na/2.jpg -1\n", None);
        assert!(e.contains("list.txt:2"), "{e}");
        let e = err_of("a/1.jpg 0\na/2.jpg 2\n", Some(2));
        assert!(
            e.contains("list.txt:2") && e.contains("label 2 is out of range"),
            "{e}"
        );
        let e = err_of("a/1.jpg 0\na/missing.jpg 1\n", None);
        assert!(
            e.contains("missing.jpg does not exist") && e.contains("list.txt:2"),
            "{e}"
        );
        let e = err_of("a/1.jpg 0\na/2.jpg 2\n", None);
        assert!(e.contains("class 1 has no images"), "{e}");
        let e = err_of("a/1.jpg 0\n", Some(3));
        assert!(e.contains("class 1 has no images"), "{e}");
        let e = err_of("\n\n", None);
        assert!(e.contains("empty"), "{e}");
        let e = err_of("a/1.jpg 99999999999\n", None);
        assert!(e.contains("list.txt:1"), "{e}");
    }

    #[test]
    fn subsets_of_a_dataset_can_be_listed() {
        let (dir, list) = fixture();
        std::fs::write(&list, "a/1.jpg 0\na/2.jpg 0\nb/with space.jpg 1\n").unwrap();
        let d = read_split_list(&list, dir.path(), None).unwrap();
        let e = dataset_entries(&d, &[2, 0], dir.path()).unwrap();
        assert_eq!(
            e,
            [
                SplitEntry::new("b/with space.jpg", 1),
                SplitEntry::new("a/1.jpg", 0)
            ]
        );
        assert!(dataset_entries(&d, &[3], dir.path()).is_err());
        assert!(dataset_entries(&d, &[0], Path::new("/elsewhere")).is_err());
    }

    #[test]
    fn write_round_trips_with_info() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.txt");
        let entries = vec![
            SplitEntry::new("x/1.png", 1),
            SplitEntry::new("x/2.png", 0),
            SplitEntry::new("y/3.png", 1),
        ];
        let info = write_split_with_info(&p, &entries, 3, "test").unwrap();
        assert_eq!(info.counts, vec![1, 2, 0]);
        assert_eq!(info.total, 3);
        assert_eq!(
            info.sha256,
            sha256_hex(std::fs::read(&p).unwrap().as_slice())
        );
        assert_eq!(read_split_info(&p).unwrap(), info);
        let back: Vec<SplitEntry> = read_split_entries(&p)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(back, entries);
        assert!(write_split_list(&p, &[SplitEntry::new("a\nb", 0)]).is_err());
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bom.txt");
        std::fs::write(&p, "\u{feff}a/x.jpg 0\nb/y.jpg 1\n").unwrap();
        let e = read_split_entries(&p).unwrap();
        assert_eq!(e[0].0.path, std::path::PathBuf::from("a/x.jpg"));
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn an_image_listed_twice_names_the_list_and_both_lines() {
        let (dir, list) = fixture();
        // Same image, same or another label, with a blank line in between.
        for text in [
            "a/1.jpg 0\na/2.jpg 0\n\nb/3.jpg 1\na/2.jpg 0\n",
            "a/1.jpg 0\na/2.jpg 0\n\nb/3.jpg 1\na/2.jpg 1\n",
        ] {
            std::fs::write(&list, text).unwrap();
            for e in [
                read_split_entries(&list).unwrap_err(),
                read_split_list(&list, dir.path(), None).unwrap_err(),
            ] {
                assert!(
                    matches!(
                        e,
                        DataError::DuplicateEntry {
                            line: 5,
                            first: 2,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                let shown = e.to_string();
                assert!(
                    shown.contains(&format!("{}:5", list.display()))
                        && shown.contains("a/2.jpg")
                        && shown.contains("line 2"),
                    "{shown}"
                );
            }
        }
        // The same file name in two folders is two images.
        std::fs::write(&list, "a/1.jpg 0\nb/1.jpg 1\n").unwrap();
        assert_eq!(read_split_entries(&list).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_list_shows_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.txt");
        let e = read_split_entries(&p).unwrap_err();
        let chain = lt_core::error_chain(&e);
        assert!(chain.contains("absent.txt"), "{chain}");
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }
}
