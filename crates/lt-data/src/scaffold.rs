//! From a folder of one's own images to split lists: the data half of
//! `lt-cli init`.
//!
//! * [`scan_class_folders`] lists `<root>/<class>/…/<file>` (one sub-folder
//!   per class, class ids in sorted folder-name order, files searched
//!   recursively), or [`scan_list`] takes an existing split list. Files that
//!   are not `.jpg` / `.jpeg` / `.png` are kept aside as [`Unreadable`] with
//!   their reason, never silently dropped; an empty class folder is an error
//!   naming it.
//! * [`check_images`] decodes every image (in parallel, `progress` called per
//!   image): a corrupt or truncated image joins the unreadable ones with the
//!   decoder's reason, and the image sizes are summarised ([`ImageSizes`]).
//! * [`stratified_split`] draws train / val / test per class with a seeded
//!   stream ([`crate::rng::stream`], purpose [`crate::rng::SPLIT`]), so the
//!   same seed gives the same lists; a given test split is kept as it is and
//!   the rest is split into train and val.
//!
//! Nothing here writes files: the caller writes the lists
//! ([`crate::split_list::write_split_with_info`]) once everything has been
//! checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Origin, Result};
use crate::split_list::{find_class_names, read_split_entries, SplitEntry};

/// A file that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The file, relative to the image root (`/` separators).
    pub path: String,
    /// Why it is not used (not an image file, the decoder's error, missing).
    pub reason: String,
}

/// The classes and images found under an image root.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The image root the entries' paths are relative to.
    pub root: PathBuf,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
    /// Every image candidate, class by class, paths in sorted order.
    pub entries: Vec<SplitEntry>,
    /// Files left out, with their reasons.
    pub unreadable: Vec<Unreadable>,
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")
}

fn utf8(path: &Path, name: std::ffi::OsString) -> Result<String> {
    name.into_string().map_err(|n| {
        DataError::layout(
            path,
            format!("file name {n:?} is not valid UTF-8 and cannot go into a split list"),
        )
    })
}

/// Every non-hidden file under `dir` (recursively), as paths relative to
/// `dir` with `/` separators, sorted.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let entry = entry.map_err(|e| DataError::io(&d, e))?;
            let name = utf8(&entry.path(), entry.file_name())?;
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            if entry.path().is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lists `<root>/<class>/…`: one sub-folder per class (sorted names are the
/// class ids; hidden entries skipped), every `.jpg` / `.jpeg` / `.png` file
/// under a class folder an image of that class. Other files in class folders
/// are returned as [`Unreadable`] ("not an image file"), and so are image
/// files directly in `root` (they belong to no class).
///
/// Errors: `root` has no class folder; a class folder holds no image file
/// (the error names the folder).
pub fn scan_class_folders(root: &Path) -> Result<Scan> {
    let mut class_names = Vec::new();
    let mut unreadable = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        let name = utf8(&entry.path(), entry.file_name())?;
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            class_names.push(name);
        } else if is_image_name(&name) {
            unreadable.push(Unreadable {
                path: name,
                reason: "not in a class folder, so it has no class".into(),
            });
        }
    }
    if class_names.is_empty() {
        return Err(DataError::layout(
            root,
            "no class folders: expected one sub-folder per class holding its images",
        ));
    }
    class_names.sort();
    let num_classes = class_names.len();
    let mut entries = Vec::new();
    for (label, class) in class_names.iter().enumerate() {
        let dir = root.join(class);
        let mut n = 0usize;
        for f in files_under(&dir)? {
            let rel = format!("{class}/{f}");
            if is_image_name(&f) {
                entries.push(SplitEntry::new(rel, label as u32));
                n += 1;
            } else {
                unreadable.push(Unreadable {
                    path: rel,
                    reason: "not an image file (expected .jpg, .jpeg or .png)".into(),
                });
            }
        }
        if n == 0 {
            return Err(DataError::EmptyClass {
                path: dir,
                class: label,
                name: Some(class.clone()),
                num_classes,
            });
        }
    }
    unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Scan {
        root: root.to_path_buf(),
        class_names,
        entries,
        unreadable,
    })
}

/// Takes an existing split list (paths relative to `image_root`) as the pool
/// of images. Class names come from a `classes.txt` beside the list or in
/// `image_root` ([`find_class_names`]), else they are `class_<id>`. Errors:
/// the list's own (bad line, duplicate), an empty list, a class without any
/// image.
pub fn scan_list(list: &Path, image_root: &Path) -> Result<Scan> {
    let entries = read_split_entries(list)?;
    if entries.is_empty() {
        return Err(DataError::EmptySplit {
            path: list.to_path_buf(),
        });
    }
    let num_classes = entries
        .iter()
        .map(|(e, _)| e.label as usize)
        .max()
        .unwrap_or(0)
        + 1;
    let mut counts = vec![0usize; num_classes];
    for (e, _) in &entries {
        counts[e.label as usize] += 1;
    }
    let class_names = match find_class_names(list, image_root, num_classes)? {
        Some((names, _)) => names,
        None => (0..num_classes).map(|i| format!("class_{i}")).collect(),
    };
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        return Err(DataError::EmptyClass {
            path: list.to_path_buf(),
            class: c,
            name: Some(class_names[c].clone()),
            num_classes,
        });
    }
    let mut entries: Vec<SplitEntry> = entries.into_iter().map(|(e, _)| e).collect();
    entries.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    Ok(Scan {
        root: image_root.to_path_buf(),
        class_names,
        entries,
        unreadable: Vec::new(),
    })
}

/// The sizes of the readable images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSizes {
    /// Smallest width and height seen.
    pub min: (u32, u32),
    /// Largest width and height seen.
    pub max: (u32, u32),
    /// The one size of every image, when they all share it.
    pub uniform: Option<(u32, u32)>,
}

/// Decodes every entry of `scan` (in parallel; `progress` is called once per
/// image) and moves those that cannot be read (missing, corrupt, truncated,
/// unsupported) to `scan.unreadable` with the decoder's reason. Returns the
/// sizes of the readable ones, or `None` when none is readable.
///
/// Errors: a class left without any readable image (naming the class and
/// the reasons of its files).
pub fn check_images(scan: &mut Scan, progress: &(dyn Fn() + Sync)) -> Result<Option<ImageSizes>> {
    let results: Vec<std::result::Result<(u32, u32), String>> = scan
        .entries
        .par_iter()
        .map(|e| {
            let r = crate::decode::decode_file(&scan.root.join(&e.path), None)
                .map(|img| (img.width, img.height))
                .map_err(|err| reason_of(&err));
            progress();
            r
        })
        .collect();
    let mut kept = Vec::with_capacity(scan.entries.len());
    let mut sizes: Option<ImageSizes> = None;
    let mut bad_by_class: HashMap<u32, Vec<Unreadable>> = HashMap::new();
    for (e, r) in scan.entries.drain(..).zip(results) {
        match r {
            Ok((w, h)) => {
                sizes = Some(match sizes {
                    None => ImageSizes {
                        min: (w, h),
                        max: (w, h),
                        uniform: Some((w, h)),
                    },
                    Some(s) => ImageSizes {
                        min: (s.min.0.min(w), s.min.1.min(h)),
                        max: (s.max.0.max(w), s.max.1.max(h)),
                        uniform: s.uniform.filter(|&u| u == (w, h)),
                    },
                });
                kept.push(e);
            }
            Err(reason) => bad_by_class.entry(e.label).or_default().push(Unreadable {
                path: e.path,
                reason,
            }),
        }
    }
    let present: BTreeSet<u32> = kept.iter().map(|e| e.label).collect();
    for c in 0..scan.class_names.len() as u32 {
        if !present.contains(&c) {
            let bad = bad_by_class.get(&c).cloned().unwrap_or_default();
            let shown: Vec<String> = bad
                .iter()
                .take(3)
                .map(|u| format!("{}: {}", u.path, u.reason))
                .collect();
            return Err(DataError::layout(
                scan.root.join(&scan.class_names[c as usize]),
                format!(
                    "class {c} ({}) has no readable image: its {} image files cannot be \
                     decoded ({}{})",
                    scan.class_names[c as usize],
                    bad.len(),
                    shown.join("; "),
                    if bad.len() > 3 { "; ..." } else { "" }
                ),
            ));
        }
    }
    scan.entries = kept;
    let mut bad: Vec<Unreadable> = bad_by_class.into_values().flatten().collect();
    scan.unreadable.append(&mut bad);
    scan.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(sizes)
}

/// The error and its causes on one line (`a: b: c`), without the path,
/// which the caller lists beside it.
fn reason_of(err: &DataError) -> String {
    match err {
        DataError::MissingImage { .. } => "does not exist".into(),
        DataError::Decode { source, .. } => {
            let mut parts = vec![source.to_string()];
            let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&**source);
            while let Some(e) = cur {
                let s = e.to_string();
                if !parts.iter().any(|p| p.contains(&s)) {
                    parts.push(s);
                }
                cur = e.source();
            }
            format!("cannot decode: {}", parts.join(": "))
        }
        other => lt_core::error_chain(other),
    }
}

/// The text of the unreadable-files report: one `path<TAB>reason` line each.
pub fn unreadable_text(unreadable: &[Unreadable]) -> String {
    let mut s = String::new();
    for u in unreadable {
        s.push_str(&u.path);
        s.push('\t');
        s.push_str(&u.reason.replace(['\n', '\r', '\t'], " "));
        s.push('\n');
    }
    s
}

/// How [`stratified_split`] divides each class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    /// Fraction of each class that goes to val (at least one image).
    pub val: f64,
    /// Fraction of each class that goes to test (at least one image when
    /// positive; ignored when a test split is kept).
    pub test: f64,
    /// Seed of the draw.
    pub seed: u64,
}

impl SplitFractions {
    /// Checks the fractions: `val` in (0, 1), `test` in [0, 1), their sum
    /// below 1.
    pub fn check(&self) -> Result<()> {
        if !(self.val > 0.0 && self.val < 1.0) {
            return Err(DataError::config(
                "val fraction",
                format!("{} is not in (0, 1)", self.val),
            ));
        }
        if !(self.test >= 0.0 && self.test < 1.0) {
            return Err(DataError::config(
                "test fraction",
                format!("{} is not in [0, 1)", self.test),
            ));
        }
        if self.val + self.test >= 1.0 {
            return Err(DataError::config(
                "val + test fractions",
                format!("{} + {} leaves nothing to train on", self.val, self.test),
            ));
        }
        Ok(())
    }
}

/// Train, val and test entries, each sorted by (label, path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splits {
    /// Training entries.
    pub train: Vec<SplitEntry>,
    /// Validation entries.
    pub val: Vec<SplitEntry>,
    /// Test entries (empty when there is no test split).
    pub test: Vec<SplitEntry>,
}

/// Reads a test split to keep: its entries (paths relative to `scan.root`),
/// checked against the scan (an image the scan labels differently is an
/// error naming the line; a listed image must exist; every class needs a
/// test image).
pub fn read_kept_test(list: &Path, scan: &Scan) -> Result<Vec<SplitEntry>> {
    let entries = read_split_entries(list)?;
    let num_classes = scan.class_names.len();
    let labels: HashMap<&str, u32> = scan
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.label))
        .collect();
    let mut seen = vec![false; num_classes];
    for (e, line) in &entries {
        if e.label as usize >= num_classes {
            return Err(DataError::LabelOutOfRange {
                path: list.to_path_buf(),
                line: *line,
                label: u64::from(e.label),
                num_classes,
            });
        }
        if let Some(&l) = labels.get(e.path.as_str()) {
            if l != e.label {
                return Err(DataError::Parse {
                    path: list.to_path_buf(),
                    line: *line,
                    message: format!(
                        "`{}` has label {} here but is in the folder of class {l} ({})",
                        e.path, e.label, scan.class_names[l as usize]
                    ),
                });
            }
        } else if !scan.root.join(&e.path).is_file() {
            return Err(DataError::MissingImage {
                path: scan.root.join(&e.path),
                origin: Some(Origin {
                    file: list.to_path_buf(),
                    line: *line,
                }),
            });
        }
        seen[e.label as usize] = true;
    }
    if let Some(c) = seen.iter().position(|s| !s) {
        return Err(DataError::EmptyClass {
            path: list.to_path_buf(),
            class: c,
            name: Some(scan.class_names[c].clone()),
            num_classes,
        });
    }
    Ok(entries.into_iter().map(|(e, _)| e).collect())
}

/// Splits the images of `scan` per class: each class's images (in path
/// order) are shuffled with the stream `(seed, SPLIT, 0, class)`, then the
/// first `round(test · n)` go to test, the next `round(val · n)` to val
/// (each at least one image when its fraction is positive) and the rest to
/// train. With `kept_test`, those images are the test split and the other
/// images of the scan are split into train and val only.
///
/// Errors: a class too small to give every split an image (naming its folder
/// and count).
pub fn stratified_split(
    scan: &Scan,
    fractions: SplitFractions,
    kept_test: Option<&[SplitEntry]>,
) -> Result<Splits> {
    fractions.check()?;
    let num_classes = scan.class_names.len();
    let kept: BTreeSet<&str> = kept_test
        .unwrap_or_default()
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    let mut per_class: Vec<Vec<&SplitEntry>> = vec![Vec::new(); num_classes];
    for e in &scan.entries {
        if !kept.contains(e.path.as_str()) {
            per_class[e.label as usize].push(e);
        }
    }
    let test_fraction = if kept_test.is_some() {
        0.0
    } else {
        fractions.test
    };
    let mut out = Splits::default();
    for (c, mut items) in per_class.into_iter().enumerate() {
        items.sort_by(|a, b| a.path.cmp(&b.path));
        let n = items.len();
        let take = |f: f64| -> usize {
            if f > 0.0 {
                ((f * n as f64).round() as usize).max(1)
            } else {
                0
            }
        };
        let (n_test, n_val) = (take(test_fraction), take(fractions.val));
        if n < n_test + n_val + 1 {
            let need = 1 + usize::from(test_fraction > 0.0) + 1;
            return Err(DataError::layout(
                scan.root.join(&scan.class_names[c]),
                format!(
                    "class {c} ({}) has {n} usable image{} {}; a split into {} needs at \
                     least {need}",
                    scan.class_names[c],
                    if n == 1 { "" } else { "s" },
                    if kept.is_empty() {
                        "".to_string()
                    } else {
                        "outside the kept test split".to_string()
                    },
                    if test_fraction > 0.0 {
                        "train / val / test"
                    } else {
                        "train / val"
                    }
                ),
            ));
        }
        let mut rng = crate::rng::stream(fractions.seed, crate::rng::SPLIT, 0, c as u64);
        items.shuffle(&mut rng);
        out.test
            .extend(items[..n_test].iter().map(|e| (*e).clone()));
        out.val
            .extend(items[n_test..n_test + n_val].iter().map(|e| (*e).clone()));
        out.train
            .extend(items[n_test + n_val..].iter().map(|e| (*e).clone()));
    }
    if let Some(t) = kept_test {
        out.test = t.to_vec();
    }
    for v in [&mut out.train, &mut out.val, &mut out.test] {
        v.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn scan_check_and_split() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let ok = png(8, 8);
        for i in 0..20 {
            touch(&r.join(format!("b/{i:02}.png")), &ok);
        }
        for i in 0..5 {
            touch(&r.join(format!("a/sub/{i}.png")), &ok);
        }
        touch(&r.join("a/notes.txt"), b"hello");
        touch(&r.join("a/broken.jpg"), b"not a jpeg");
        touch(&r.join("a/.DS_Store"), b"x");
        touch(&r.join("stray.png"), &ok);
        let mut scan = scan_class_folders(r).unwrap();
        assert_eq!(scan.class_names, ["a", "b"]);
        assert_eq!(scan.entries.len(), 26);
        assert_eq!(scan.unreadable.len(), 2);
        let sizes = check_images(&mut scan, &|| {}).unwrap().unwrap();
        assert_eq!(sizes.uniform, Some((8, 8)));
        let paths: Vec<&str> = scan.unreadable.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(paths, ["a/broken.jpg", "a/notes.txt", "stray.png"]);
        assert!(
            scan.unreadable[0].reason.starts_with("cannot decode"),
            "{:?}",
            scan.unreadable
        );
        assert!(scan.unreadable[1].reason.contains("not an image file"));
        let f = SplitFractions {
            val: 0.2,
            test: 0.2,
            seed: 3,
        };
        let s = stratified_split(&scan, f, None).unwrap();
        let count = |v: &[SplitEntry], c: u32| v.iter().filter(|e| e.label == c).count();
        assert_eq!(
            [count(&s.train, 0), count(&s.val, 0), count(&s.test, 0)],
            [3, 1, 1]
        );
        assert_eq!(
            [count(&s.train, 1), count(&s.val, 1), count(&s.test, 1)],
            [12, 4, 4]
        );
        assert_eq!(s, stratified_split(&scan, f, None).unwrap());
        let other = stratified_split(&scan, SplitFractions { seed: 4, ..f }, None).unwrap();
        assert_ne!(s.test, other.test);
        // A kept test split stays; the rest goes to train and val.
        let kept = s.test.clone();
        let again = stratified_split(&scan, SplitFractions { seed: 9, ..f }, Some(&kept)).unwrap();
        assert_eq!(again.test, kept);
        assert_eq!(again.train.len() + again.val.len(), 25 - kept.len());
    }

    #[test]
    fn empty_and_small_classes_are_errors_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("a/1.png"), &png(4, 4));
        std::fs::create_dir_all(r.join("b")).unwrap();
        let e = scan_class_folders(r).unwrap_err().to_string();
        assert!(
            e.contains("class 1 (b) has no images") && e.contains("/b"),
            "{e}"
        );
        touch(&r.join("b/1.png"), &png(4, 4));
        let scan = scan_class_folders(r).unwrap();
        let f = SplitFractions {
            val: 0.1,
            test: 0.1,
            seed: 0,
        };
        let e = stratified_split(&scan, f, None).unwrap_err().to_string();
        assert!(
            e.contains("class 0 (a) has 1 usable image") && e.contains("needs at least 3"),
            "{e}"
        );
    }
}
