//! ImageNet-LT, Places-LT and iNaturalist 2018: split lists only (the user
//! supplies the images).
//!
//! * ImageNet-LT / Places-LT: the published `ImageNet_LT_{train,val,test}.txt`
//!   and `Places_LT_{train,val,test}.txt` (OLTR's shared folder, linked from
//!   the official code's README; there is no direct URL and no published
//!   digest). Sources: the files, a folder holding them, or a `.tar(.gz)` of
//!   them, or URLs of any of these.
//! * iNaturalist 2018: the official `train2018.json` / `val2018.json`
//!   annotations (downloaded as `.json.tar.gz` with known digests by default),
//!   converted to `iNaturalist18_{train,val}.txt` with one
//!   `<file_name> <category_id>` line per annotation, in annotation order; the
//!   image root is the folder holding `train_val2018/`.
//!
//! Structural problems are errors naming the file and line (missing label,
//! label beyond the class count, a class without training images); totals
//! that differ from the published ones are reported as notes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::source::{self, Resolved};
use super::{FetchDataset, FetchOptions, FetchReport, Progress, SourceRecord};
use crate::error::{DataError, Result};
use crate::split_list::{
    parse_split_list, read_split_list, write_split_with_info, SplitEntry, SplitInfo,
};
use lt_core::stats::{ClassStats, GroupRule};

/// Parsed list entries with their line numbers.
type Lines = Vec<(SplitEntry, usize)>;
/// A parsed list: split name, where it came from, entries.
type ParsedList = (&'static str, PathBuf, Lines);

/// Published facts about a list-only dataset.
struct ListSpec {
    /// File name prefix of the published lists.
    prefix: &'static str,
    /// Split names, in the order they are written.
    splits: &'static [&'static str],
    /// Published class count.
    classes: usize,
    /// Published totals, by split.
    totals: &'static [usize],
    /// Published many / medium / few class counts of the training list.
    groups: Option<[usize; 3]>,
}

fn spec(d: FetchDataset) -> ListSpec {
    match d {
        FetchDataset::ImagenetLt => ListSpec {
            prefix: "ImageNet_LT",
            splits: &["train", "val", "test"],
            classes: 1000,
            totals: &[115_846, 20_000, 50_000],
            groups: Some([385, 479, 136]),
        },
        FetchDataset::PlacesLt => ListSpec {
            prefix: "Places_LT",
            splits: &["train", "val", "test"],
            classes: 365,
            totals: &[62_500, 7_300, 36_500],
            groups: Some([131, 163, 71]),
        },
        _ => ListSpec {
            prefix: "iNaturalist18",
            splits: &["train", "val"],
            classes: 8142,
            totals: &[437_513, 24_426],
            groups: None,
        },
    }
}

fn is_tar(path: &Path) -> bool {
    let n = path.to_string_lossy().to_ascii_lowercase();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

fn base_name(name: &str) -> &str {
    name.trim_end_matches('/')
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
}

/// Resolves every given source; a folder expands to the files in it that
/// `wanted` accepts (by file name).
fn gather(
    opts: &FetchOptions,
    given: &[String],
    wanted: &dyn Fn(&str) -> bool,
    progress: &dyn Progress,
) -> Result<Vec<Resolved>> {
    let mut out = Vec::new();
    for g in given {
        let p = PathBuf::from(g);
        if !source::is_url(g) && p.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| DataError::io(&p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && wanted(base_name(&f.to_string_lossy())))
                .collect();
            names.sort();
            for f in names {
                out.push(source::verify(
                    &f.display().to_string(),
                    &f,
                    opts,
                    progress,
                )?);
            }
        } else {
            out.push(source::resolve(g, opts, progress)?);
        }
    }
    Ok(out)
}

/// Calls `handle(member name, display path, reader)` for every file (or
/// archive member) among `sources` whose base name `wanted` accepts.
fn for_each_wanted(
    sources: &[Resolved],
    wanted: &dyn Fn(&str) -> bool,
    progress: &dyn Progress,
    handle: &mut dyn FnMut(&str, PathBuf, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    for s in sources {
        let path = &s.record.path;
        if is_tar(path) {
            let mut tar = source::open_tar(path, progress)?;
            let bad = |e: std::io::Error| {
                DataError::layout(path, format!("not a readable tar(.gz) archive: {e}"))
            };
            for entry in tar.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
                let base = base_name(&name).to_string();
                if entry.header().entry_type().is_file() && wanted(&base) {
                    handle(&base, path.join(&name), &mut entry)?;
                }
            }
        } else {
            let base = base_name(&path.to_string_lossy()).to_string();
            if wanted(&base) {
                let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
                handle(&base, path.clone(), &mut f)?;
            }
        }
    }
    Ok(())
}

/// Checks a set of lists (train first) and returns the class count.
fn check_lists(spec: &ListSpec, lists: &[ParsedList], notes: &mut Vec<String>) -> Result<usize> {
    let (_, train_path, train) = &lists[0];
    if train.is_empty() {
        return Err(DataError::EmptySplit {
            path: train_path.clone(),
        });
    }
    let classes = train
        .iter()
        .map(|(e, _)| e.label as usize)
        .max()
        .unwrap_or(0)
        + 1;
    let labels: Vec<u32> = train.iter().map(|(e, _)| e.label).collect();
    let stats = ClassStats::from_labels(&labels, classes);
    if let Some(class) = stats.counts().iter().position(|&n| n == 0) {
        return Err(DataError::EmptyClass {
            path: train_path.clone(),
            class,
            name: None,
            num_classes: classes,
        });
    }
    if classes != spec.classes {
        notes.push(format!(
            "{}: {classes} classes, the published lists have {}",
            train_path.display(),
            spec.classes
        ));
    }
    for (i, (_, path, entries)) in lists.iter().enumerate() {
        if entries.is_empty() {
            return Err(DataError::EmptySplit { path: path.clone() });
        }
        if let Some((e, line)) = entries.iter().find(|(e, _)| e.label as usize >= classes) {
            return Err(DataError::LabelOutOfRange {
                path: path.clone(),
                line: *line,
                label: u64::from(e.label),
                num_classes: classes,
            });
        }
        if entries.len() != spec.totals[i] {
            notes.push(format!(
                "{}: {} images, the published list has {}",
                path.display(),
                entries.len(),
                spec.totals[i]
            ));
        }
    }
    let groups = stats.group_sizes(&GroupRule::default());
    tracing::info!(
        many = groups[0],
        medium = groups[1],
        few = groups[2],
        "training classes by count (>100 / 20..=100 / <20)"
    );
    if let Some(expected) = spec.groups {
        if groups != expected {
            notes.push(format!(
                "{}: many / medium / few = {groups:?}, published {expected:?}",
                train_path.display()
            ));
        }
    }
    Ok(classes)
}

/// Writes the checked lists and, with an image root, checks the images exist.
fn write_lists(
    opts: &FetchOptions,
    spec: &ListSpec,
    lists: Vec<ParsedList>,
    classes: usize,
    how: &str,
) -> Result<Vec<(PathBuf, SplitInfo)>> {
    let dir = opts.dataset_dir();
    let mut out = Vec::new();
    for (split, from, entries) in lists {
        let entries: Vec<SplitEntry> = entries.into_iter().map(|(e, _)| e).collect();
        let p = dir.join(format!("{}_{split}.txt", spec.prefix));
        let info = write_split_with_info(
            &p,
            &entries,
            classes,
            &format!("{how} (from {})", from.display()),
        )?;
        if let Some(root) = &opts.image_root {
            read_split_list(&p, root, Some(classes))?;
        }
        out.push((p, info));
    }
    Ok(out)
}

fn records_and_notes(sources: Vec<Resolved>, notes: &mut Vec<String>) -> Vec<SourceRecord> {
    sources
        .into_iter()
        .map(|s| {
            notes.extend(s.note);
            s.record
        })
        .collect()
}

pub(crate) fn fetch_lt_lists(opts: &FetchOptions, progress: &dyn Progress) -> Result<FetchReport> {
    let spec = spec(opts.dataset);
    if opts.sources.is_empty() {
        return Err(DataError::config(
            "source",
            format!(
                "the {} split lists have no direct download: they are in the OLTR project's shared folder (linked from the README of facebookresearch/classifier-balancing). Download {p}_train.txt, {p}_val.txt and {p}_test.txt and pass them, their folder, or a .tar(.gz) of them with --source",
                opts.dataset,
                p = spec.prefix
            ),
        ));
    }
    let names: Vec<String> = spec
        .splits
        .iter()
        .map(|s| format!("{}_{s}.txt", spec.prefix))
        .collect();
    let wanted_files = |n: &str| names.iter().any(|w| w == n);
    let wanted_sources = |n: &str| {
        wanted_files(n) || n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
    };
    let sources = gather(opts, &opts.sources, &wanted_sources, progress)?;
    let mut found: BTreeMap<String, (PathBuf, Lines)> = BTreeMap::new();
    for_each_wanted(
        &sources,
        &wanted_files,
        progress,
        &mut |name, path, reader| {
            let mut text = String::new();
            reader
                .read_to_string(&mut text)
                .map_err(|e| DataError::io(&path, e))?;
            let entries = parse_split_list(&text, &path)?;
            found.insert(name.to_string(), (path, entries));
            Ok(())
        },
    )?;
    let mut lists = Vec::new();
    for (split, name) in spec.splits.iter().zip(&names) {
        let (path, entries) = found.remove(name).ok_or_else(|| {
            DataError::config(
                "source",
                format!(
                    "{name} not found in the sources ({}); {} needs {}",
                    opts.sources.join(", "),
                    opts.dataset,
                    names.join(", ")
                ),
            )
        })?;
        lists.push((*split, path, entries));
    }
    let mut notes = Vec::new();
    let classes = check_lists(&spec, &lists, &mut notes)?;
    notes.push(format!(
        "{}: no sha256 is published for these lists; their digests are recorded in {}",
        opts.dataset,
        super::MARKER_FILE
    ));
    let written = write_lists(
        opts,
        &spec,
        lists,
        classes,
        &format!("official {} split list", spec.prefix),
    )?;
    Ok(FetchReport {
        dataset_dir: opts.dataset_dir(),
        already_complete: false,
        lists: written,
        sources: records_and_notes(sources, &mut notes),
        notes,
    })
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct Coco {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

/// One `<file_name> <category_id>` entry per annotation, in order; the
/// "line" of an entry is its 1-based annotation number.
fn coco_entries(coco: Coco, path: &Path) -> Result<Lines> {
    let files: HashMap<u64, String> = coco
        .images
        .into_iter()
        .map(|i| (i.id, i.file_name))
        .collect();
    coco.annotations
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let file = files.get(&a.image_id).ok_or_else(|| DataError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!(
                    "annotation {} refers to unknown image id {}",
                    i + 1,
                    a.image_id
                ),
            })?;
            let label = u32::try_from(a.category_id).map_err(|_| DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                line: i + 1,
                label: a.category_id,
                num_classes: u32::MAX as usize,
            })?;
            Ok((SplitEntry::new(file.clone(), label), i + 1))
        })
        .collect()
}

pub(crate) fn fetch_inaturalist(
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<FetchReport> {
    let spec = spec(opts.dataset);
    let given: Vec<String> = if opts.sources.is_empty() {
        source::KNOWN_ARCHIVES
            .iter()
            .filter(|k| k.dataset == FetchDataset::Inaturalist2018)
            .filter_map(|k| k.url.map(str::to_string))
            .collect()
    } else {
        opts.sources.clone()
    };
    let split_of = |n: &str| -> Option<&'static str> {
        if n.starts_with("train2018.json") {
            Some("train")
        } else if n.starts_with("val2018.json") {
            Some("val")
        } else {
            None
        }
    };
    let wanted_sources = |n: &str| split_of(n).is_some();
    let wanted_json = |n: &str| n == "train2018.json" || n == "val2018.json";
    let sources = gather(opts, &given, &wanted_sources, progress)?;
    let mut found: BTreeMap<&'static str, (PathBuf, Lines)> = BTreeMap::new();
    for_each_wanted(
        &sources,
        &wanted_json,
        progress,
        &mut |name, path, reader| {
            progress.start(&format!("reading {}", path.display()), None, false);
            let coco: Coco =
                serde_json::from_reader(std::io::BufReader::new(reader)).map_err(|e| {
                    DataError::Json {
                        path: path.clone(),
                        source: e,
                    }
                })?;
            progress.finish();
            let entries = coco_entries(coco, &path)?;
            if let Some(split) = split_of(name) {
                found.insert(split, (path, entries));
            }
            Ok(())
        },
    )?;
    let mut lists = Vec::new();
    for split in spec.splits {
        let (path, entries) = found.remove(split).ok_or_else(|| {
            DataError::config(
                "source",
                format!(
                    "{split}2018.json not found in the sources ({}); pass train2018.json(.tar.gz) and val2018.json(.tar.gz) or their folder",
                    given.join(", ")
                ),
            )
        })?;
        lists.push((*split, path, entries));
    }
    let mut notes = Vec::new();
    let classes = check_lists(&spec, &lists, &mut notes)?;
    let written = write_lists(
        opts,
        &spec,
        lists,
        classes,
        "iNaturalist 2018 annotations as <file_name> <category_id>, annotation order",
    )?;
    Ok(FetchReport {
        dataset_dir: opts.dataset_dir(),
        already_complete: false,
        lists: written,
        sources: records_and_notes(sources, &mut notes),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{fetch, NoProgress};

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn lt_opts(root: &Path, d: FetchDataset, sources: Vec<String>) -> FetchOptions {
        let mut o = FetchOptions::new(d, root);
        o.sources = sources;
        o
    }

    #[test]
    fn imagenet_lt_lists_from_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("lists");
        write(
            &src.join("ImageNet_LT_train.txt"),
            "train/a/1.JPEG 0\ntrain/b/2.JPEG 1\ntrain/b/3.JPEG 1\n",
        );
        write(
            &src.join("ImageNet_LT_val.txt"),
            "train/a/4.JPEG 0\ntrain/b/5.JPEG 1\n",
        );
        write(&src.join("ImageNet_LT_test.txt"), "val/a/6.JPEG 0\n");
        write(&src.join("ImageNet_LT_open.txt"), "ignored 5\n");
        let root = tmp.path().join("data");
        let o = lt_opts(
            &root,
            FetchDataset::ImagenetLt,
            vec![src.display().to_string()],
        );
        let r = fetch(&o, &NoProgress).unwrap();
        assert_eq!(r.lists.len(), 3);
        assert_eq!(r.lists[0].1.counts, [1, 2]);
        assert_eq!(r.sources.len(), 3);
        assert!(r.notes.iter().any(|n| n.contains("no sha256 is published")));
        assert!(r.notes.iter().any(|n| n.contains("1000")));
        let text = std::fs::read_to_string(root.join("imagenet_lt/ImageNet_LT_val.txt")).unwrap();
        assert_eq!(text, "train/a/4.JPEG 0\ntrain/b/5.JPEG 1\n");
        assert!(fetch(&o, &NoProgress).unwrap().already_complete);
        // A damaged list is noticed and rewritten.
        let val = root.join("imagenet_lt/ImageNet_LT_val.txt");
        std::fs::write(&val, "x 0\n").unwrap();
        assert!(!fetch(&o, &NoProgress).unwrap().already_complete);
        assert_eq!(std::fs::read_to_string(&val).unwrap(), text);
        // A changed source is noticed too.
        write(
            &src.join("ImageNet_LT_test.txt"),
            "val/a/6.JPEG 0\nval/b/7.JPEG 1\n",
        );
        let r = fetch(&o, &NoProgress).unwrap();
        assert!(!r.already_complete);
        assert_eq!(r.lists[2].1.total, 2);
        assert!(fetch(&o, &NoProgress).unwrap().already_complete);

        // With an image root, missing images are reported with their line.
        let mut with_root = o.clone();
        with_root.force = true;
        with_root.image_root = Some(tmp.path().join("images"));
        for f in [
            "train/a/1.JPEG",
            "train/b/2.JPEG",
            "train/b/3.JPEG",
            "train/a/4.JPEG",
        ] {
            write(&tmp.path().join("images").join(f), "x");
        }
        let e = fetch(&with_root, &NoProgress).unwrap_err().to_string();
        assert!(
            e.contains("5.JPEG does not exist") && e.contains("ImageNet_LT_val.txt:2"),
            "{e}"
        );
    }

    #[test]
    fn bad_lt_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("l");
        let root = tmp.path().join("data");
        let run = |train: &str, val: &str| {
            write(&src.join("Places_LT_train.txt"), train);
            write(&src.join("Places_LT_val.txt"), val);
            write(&src.join("Places_LT_test.txt"), "t/1.jpg 0\n");
            let o = lt_opts(
                &root,
                FetchDataset::PlacesLt,
                vec![src.display().to_string()],
            );
            fetch(&o, &NoProgress).unwrap_err().to_string()
        };
        let e = run("a/1.jpg 0\na/2.jpg\n", "v 0\n");
        assert!(
            e.contains("Places_LT_train.txt:2") && e.contains("no label"),
            "{e}"
        );
        let e = run("a/1.jpg 0\na/2.jpg 2\n", "v 0\n");
        assert!(e.contains("class 1 has no images"), "{e}");
        let e = run("a/1.jpg 0\na/2.jpg 1\n", "v 0\nw 2\n");
        assert!(
            e.contains("Places_LT_val.txt:2") && e.contains("label 2"),
            "{e}"
        );
        std::fs::remove_file(src.join("Places_LT_test.txt")).unwrap();
        let o = lt_opts(
            &root,
            FetchDataset::PlacesLt,
            vec![src.display().to_string()],
        );
        let e = fetch(&o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("Places_LT_test.txt not found"), "{e}");
        let o = lt_opts(&root, FetchDataset::PlacesLt, vec![]);
        let e = fetch(&o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("--source"), "{e}");
    }

    fn tar_gz(path: &Path, files: &[(&str, &str)]) {
        let f = std::fs::File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn inaturalist_json_to_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let train = r#"{"info":{},"images":[{"id":10,"file_name":"train_val2018/Plantae/1/a.jpg","width":5},
            {"id":11,"file_name":"train_val2018/Aves/0/b.jpg"},{"id":12,"file_name":"train_val2018/Aves/0/c.jpg"}],
            "annotations":[{"id":1,"image_id":11,"category_id":0},{"id":2,"image_id":10,"category_id":1},
            {"id":3,"image_id":12,"category_id":0}],"categories":[]}"#;
        let val = r#"{"images":[{"id":20,"file_name":"train_val2018/Aves/0/d.jpg"}],
            "annotations":[{"id":9,"image_id":20,"category_id":0}]}"#;
        let arch = tmp.path().join("train2018.json.tar.gz");
        tar_gz(&arch, &[("train2018.json", train)]);
        let valp = tmp.path().join("val2018.json");
        std::fs::write(&valp, val).unwrap();
        let root = tmp.path().join("data");
        let o = lt_opts(
            &root,
            FetchDataset::Inaturalist2018,
            vec![arch.display().to_string(), valp.display().to_string()],
        );
        // A local file named like the official archive must have its digest.
        let e = fetch(&o, &NoProgress).unwrap_err().to_string();
        assert!(
            e.contains("sha256 mismatch") && e.contains("be550dd4"),
            "{e}"
        );
        let arch2 = tmp.path().join("mine-train2018.json.tar.gz");
        std::fs::rename(&arch, &arch2).unwrap();
        let dir = tmp.path().join("both");
        std::fs::create_dir_all(&dir).unwrap();
        // Folder sources: only file names starting with train2018.json / val2018.json count.
        std::fs::rename(&valp, dir.join("val2018.json")).unwrap();
        tar_gz(
            &dir.join("train2018.json.tgz"),
            &[("x/train2018.json", train)],
        );
        let o = lt_opts(
            &root,
            FetchDataset::Inaturalist2018,
            vec![dir.display().to_string()],
        );
        let r = fetch(&o, &NoProgress).unwrap();
        let text =
            std::fs::read_to_string(root.join("inaturalist2018/iNaturalist18_train.txt")).unwrap();
        assert_eq!(
            text,
            "train_val2018/Aves/0/b.jpg 0\ntrain_val2018/Plantae/1/a.jpg 1\ntrain_val2018/Aves/0/c.jpg 0\n"
        );
        assert_eq!(r.lists[1].1.counts, [1, 0]);
        assert!(
            r.notes.iter().any(|n| n.contains("437513")),
            "{:?}",
            r.notes
        );

        let bad = r#"{"images":[],"annotations":[{"image_id":1,"category_id":0}]}"#;
        std::fs::write(dir.join("val2018.json"), bad).unwrap();
        let e = fetch(&o, &NoProgress).unwrap_err().to_string();
        assert!(
            e.contains("unknown image id 1") && e.contains("val2018.json:1"),
            "{e}"
        );
        std::fs::write(dir.join("val2018.json"), "{\"images\": [").unwrap();
        let e = fetch(&o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
    }
}
