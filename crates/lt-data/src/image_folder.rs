//! The image-folder layout `<root>/<split>/<class>/<file>`.
//!
//! Class ids are the class folder names in sorted (byte) order, which for
//! CIFAR-10 / CIFAR-100 is the official label order (both number their
//! classes alphabetically). Files are `.jpg`, `.jpeg` or `.png` (any case);
//! hidden files are ignored, other files are ignored with a warning.
//!
//! Within a class, the order of the files is the "dataset order" that seeded
//! subsets (the LDAM-DRW long-tailed subset) are defined on, so it is chosen
//! explicitly with [`FileOrder`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSource, Sample};
use crate::error::{DataError, Result};
use crate::split_list::SplitEntry;

/// Order of the files within a class folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOrder {
    /// By numeric value of the file stem when every stem in the folder is a
    /// non-negative integer (`2.png` before `10.png`), else by name. Files
    /// written as `<index>.<ext>` thereby keep their index order.
    #[default]
    NumericStem,
    /// By file name (bytes).
    Name,
}

/// The classes and files of one split of an image folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderSplit {
    /// Class names, indexed by label (sorted folder names).
    pub class_names: Vec<String>,
    /// `<split>/<class>/<file>` paths relative to the root, class by class in
    /// label order, files in the chosen [`FileOrder`].
    pub entries: Vec<SplitEntry>,
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")
}

fn utf8_name(entry: &std::fs::DirEntry) -> Result<String> {
    entry.file_name().into_string().map_err(|n| {
        DataError::layout(
            entry.path(),
            format!("file name {n:?} is not valid UTF-8 and cannot go into a split list"),
        )
    })
}

fn sort_files(files: &mut [String], order: FileOrder) {
    let stem_number = |f: &String| -> Option<u64> {
        let stem = f.rsplit_once('.').map_or(f.as_str(), |(s, _)| s);
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        stem.parse().ok()
    };
    match order {
        FileOrder::NumericStem if files.iter().all(|f| stem_number(f).is_some()) => {
            files.sort_by_key(|f| (stem_number(f), f.clone()));
        }
        _ => files.sort(),
    }
}

/// Lists the classes and images of `<root>/<split>/`.
///
/// Errors: the split folder is missing or holds no class folders (empty
/// split); a class folder holds no image (empty class).
pub fn scan_image_folder(root: &Path, split: &str, order: FileOrder) -> Result<ImageFolderSplit> {
    let split_dir = root.join(split);
    let read = |dir: &Path| std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e));
    let mut class_names = Vec::new();
    for entry in read(&split_dir)? {
        let entry = entry.map_err(|e| DataError::io(&split_dir, e))?;
        let name = utf8_name(&entry)?;
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            class_names.push(name);
        }
    }
    if class_names.is_empty() {
        return Err(DataError::EmptySplit { path: split_dir });
    }
    class_names.sort();
    let num_classes = class_names.len();
    let mut entries = Vec::new();
    let mut ignored = 0usize;
    for (label, class) in class_names.iter().enumerate() {
        let class_dir = split_dir.join(class);
        let mut files = Vec::new();
        for entry in read(&class_dir)? {
            let entry = entry.map_err(|e| DataError::io(&class_dir, e))?;
            let name = utf8_name(&entry)?;
            if name.starts_with('.') {
                continue;
            }
            if is_image_name(&name) && entry.path().is_file() {
                files.push(name);
            } else {
                ignored += 1;
            }
        }
        if files.is_empty() {
            return Err(DataError::EmptyClass {
                path: class_dir,
                class: label,
                name: Some(class.clone()),
                num_classes,
            });
        }
        sort_files(&mut files, order);
        entries.extend(
            files
                .into_iter()
                .map(|f| SplitEntry::new(format!("{split}/{class}/{f}"), label as u32)),
        );
    }
    if ignored > 0 {
        tracing::warn!(
            folder = %split_dir.display(),
            ignored,
            "ignored entries that are not .jpg/.jpeg/.png files"
        );
    }
    Ok(ImageFolderSplit {
        class_names,
        entries,
    })
}

/// Reads `<root>/<split>/` as a dataset with class names (see
/// [`scan_image_folder`]).
pub fn read_image_folder(root: &Path, split: &str, order: FileOrder) -> Result<Dataset> {
    let scan = scan_image_folder(root, split, order)?;
    let samples = scan
        .entries
        .iter()
        .map(|e| Sample {
            image: ImageSource::File(root.join(&e.path)),
            label: e.label,
        })
        .collect();
    Dataset::from_samples(samples, scan.class_names.len())?.with_class_names(scan.class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn classes_sorted_files_numeric() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for f in [
            "train/zebra/10.jpg",
            "train/zebra/2.jpg",
            "train/zebra/1.JPG",
            "train/apple/b.png",
            "train/apple/a10.jpeg",
            "train/apple/a2.jpeg",
            "train/apple/notes.txt",
            "train/apple/.hidden.jpg",
        ] {
            touch(&r.join(f));
        }
        let s = scan_image_folder(r, "train", FileOrder::NumericStem).unwrap();
        assert_eq!(s.class_names, ["apple", "zebra"]);
        let paths: Vec<_> = s.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "train/apple/a10.jpeg",
                "train/apple/a2.jpeg",
                "train/apple/b.png",
                "train/zebra/1.JPG",
                "train/zebra/2.jpg",
                "train/zebra/10.jpg"
            ]
        );
        let by_name = scan_image_folder(r, "train", FileOrder::Name).unwrap();
        assert_eq!(by_name.entries[3].path, "train/zebra/1.JPG");
        assert_eq!(by_name.entries[4].path, "train/zebra/10.jpg");
        let d = read_image_folder(r, "train", FileOrder::NumericStem).unwrap();
        assert_eq!(d.labels(), &[0, 0, 0, 1, 1, 1]);
        assert_eq!(d.class_names().unwrap()[1], "zebra");
    }

    #[test]
    fn empty_class_and_split_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("train/a/1.png"));
        std::fs::create_dir_all(r.join("train/b")).unwrap();
        touch(&r.join("train/b/readme.txt"));
        let e = scan_image_folder(r, "train", FileOrder::Name)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 1 (b) has no images"), "{e}");
        std::fs::create_dir_all(r.join("test")).unwrap();
        let e = scan_image_folder(r, "test", FileOrder::Name)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = scan_image_folder(r, "val", FileOrder::Name)
            .unwrap_err()
            .to_string();
        assert!(e.contains("val"), "{e}");
    }
}
