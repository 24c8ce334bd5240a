//! `lt-cli init <image folder | split list>`: split lists, class names, class
//! statistics, a histogram and a ready config for a data set of one's own.
//! The scanning and splitting are `lt_data::scaffold`, the config
//! `lt_train::scaffold`, the plot `lt_report::class_counts`; this file
//! composes them, writes the files (each atomically, the config last, and
//! only once everything has been checked) and prints what it did.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lt_core::stats::{ClassStats, GroupRule, GroupThresholds};
use lt_data::scaffold::{self, ImageSizes, SplitFractions, Unreadable};
use lt_data::split_list::{write_split_with_info, SplitEntry, CLASS_NAMES_FILE};
use lt_train::scaffold::{scaffold_config, ScaffoldInput};
use serde::Serialize;

/// Files `init` writes in its output folder.
pub const TRAIN_FILE: &str = "train.txt";
/// Validation list.
pub const VAL_FILE: &str = "val.txt";
/// Test list (kept when it exists).
pub const TEST_FILE: &str = "test.txt";
/// The files left out, with their reasons.
pub const UNREADABLE_FILE: &str = "unreadable.txt";
/// Class statistics.
pub const STATS_FILE: &str = "stats.json";
/// The ready config.
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A folder with one sub-folder per class, or an existing split list
    /// (`<relative/path> <label>` per line).
    source: PathBuf,
    /// Image root of a split list (default: the list's folder).
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Where the lists, statistics and config go (default: `data/<name>`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Name of the data set and experiment (default: the folder's or list's name).
    #[arg(long)]
    name: Option<String>,
    /// Run directory of the config (default: `runs/<name>`).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Fraction of each class held out for validation (model and τ selection).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Fraction of each class held out for test (0: no test split, val is reported).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// An existing test split to keep (paths relative to the image root);
    /// default: `<out>/test.txt` when it exists.
    #[arg(long, value_name = "LIST")]
    test_list: Option<PathBuf>,
    /// Seed of the split (and of the experiment).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Many-shot: more than this many training images.
    #[arg(long, default_value_t = GroupThresholds::default().many_above)]
    many_above: usize,
    /// Few-shot: fewer than this many training images.
    #[arg(long, default_value_t = GroupThresholds::default().few_below)]
    few_below: usize,
    /// Replace the lists and config of an earlier `init` (its test split is
    /// kept unless --no-keep-test).
    #[arg(long)]
    force: bool,
    /// Draw a new test split even when `<out>/test.txt` exists.
    #[arg(long)]
    no_keep_test: bool,
}

#[derive(Debug, Serialize)]
struct ClassRow {
    id: usize,
    name: String,
    train: usize,
    val: usize,
    test: usize,
    group: &'static str,
}

#[derive(Debug, Serialize)]
struct Stats {
    name: String,
    root: String,
    num_classes: usize,
    images: usize,
    train: usize,
    val: usize,
    test: usize,
    imbalance_ratio: Option<f64>,
    rule: String,
    many_medium_few: [usize; 3],
    image_sizes: Option<ImageSizes>,
    unreadable: usize,
    seed: u64,
    val_fraction: f64,
    test_fraction: Option<f64>,
    test_kept_from: Option<String>,
    classes: Vec<ClassRow>,
}

macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn counts(entries: &[SplitEntry], c: usize) -> Vec<usize> {
    let mut v = vec![0; c];
    for e in entries {
        v[e.label as usize] += 1;
    }
    v
}

fn name_of(p: &Path) -> String {
    let stem = if p.is_dir() {
        p.file_name()
    } else {
        p.file_stem()
    };
    stem.map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| "my_data".to_string())
}

/// Whether `inner` is `outer` or inside it (both resolved when they exist).
fn is_within(inner: &Path, outer: &Path) -> bool {
    let abs = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    // `out` may not exist yet: resolve its nearest existing ancestor.
    let mut probe = inner.to_path_buf();
    let mut rest = Vec::new();
    while !probe.exists() {
        match (probe.file_name(), probe.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_os_string());
                probe = p.to_path_buf();
            }
            _ => break,
        }
        if probe.as_os_str().is_empty() {
            probe = PathBuf::from(".");
        }
    }
    let mut full = abs(&probe);
    for n in rest.iter().rev() {
        full.push(n);
    }
    full.starts_with(abs(outer))
}

pub fn init(a: &InitArgs, out: &mut String) -> Result<()> {
    if !a.source.exists() {
        bail!("{}: no such folder or split list", a.source.display());
    }
    let from_folder = a.source.is_dir();
    let name = a.name.clone().unwrap_or_else(|| name_of(&a.source));
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("data").join(&name));
    if from_folder && is_within(&out_dir, &a.source) {
        bail!(
            "--out {} is inside the image folder {} (its sub-folders are the classes); \
             choose another --out",
            out_dir.display(),
            a.source.display()
        );
    }
    let config_path = out_dir.join(CONFIG_FILE);
    if config_path.exists() && !a.force {
        bail!(
            "{} exists (an earlier `lt-cli init`); --force writes new lists and config \
             (keeping {}/{TEST_FILE} unless --no-keep-test)",
            config_path.display(),
            out_dir.display()
        );
    }
    let fractions = SplitFractions {
        val: a.val_fraction,
        test: a.test_fraction,
        seed: a.seed,
    };
    fractions.check()?;

    let mut scan = if from_folder {
        scaffold::scan_class_folders(&a.source)?
    } else {
        let root = match &a.image_root {
            Some(r) => r.clone(),
            None => a
                .source
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        scaffold::scan_list(&a.source, &root)?
    };
    let num_classes = scan.class_names.len();
    let bar = lt_train::progress::bar(scan.entries.len() as u64, "checking");
    let sizes = scaffold::check_images(&mut scan, &|| bar.inc(1))?;
    bar.finish_and_clear();

    let kept_from = match &a.test_list {
        Some(l) => Some(l.clone()),
        None => {
            let own = out_dir.join(TEST_FILE);
            (own.is_file() && !a.no_keep_test).then_some(own)
        }
    };
    let kept = match &kept_from {
        Some(l) => Some(
            scaffold::read_kept_test(l, &scan)
                .with_context(|| format!("keeping the test split {}", l.display()))?,
        ),
        None => None,
    };
    let splits = scaffold::stratified_split(&scan, fractions, kept.as_deref())?;

    let rule = GroupRule::TrainCount(GroupThresholds {
        many_above: a.many_above,
        few_below: a.few_below,
    });
    let train_counts = counts(&splits.train, num_classes);
    let val_counts = counts(&splits.val, num_classes);
    let test_counts = counts(&splits.test, num_classes);
    let stats = ClassStats::from_counts(train_counts.clone());
    let groups = stats.groups(&rule);
    let sizes_of_groups = stats.group_sizes(&rule);

    let train_path = out_dir.join(TRAIN_FILE);
    let val_path = out_dir.join(VAL_FILE);
    let test_path = match (&kept_from, splits.test.is_empty()) {
        (Some(l), _) => Some(l.clone()),
        (None, true) => None,
        (None, false) => Some(out_dir.join(TEST_FILE)),
    };
    let run_dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&name));
    let (config_text, _) = scaffold_config(&ScaffoldInput {
        name: name.clone(),
        run_dir,
        root: scan.root.clone(),
        train_list: train_path.clone(),
        val_list: val_path.clone(),
        test_list: test_path.clone(),
        num_classes,
        train_images: splits.train.len(),
        image_size: sizes.and_then(|s| s.uniform),
        group_rule: rule.clone(),
        seed: a.seed,
    })?;
    let classes: Vec<ClassRow> = (0..num_classes)
        .map(|c| ClassRow {
            id: c,
            name: scan.class_names[c].clone(),
            train: train_counts[c],
            val: val_counts[c],
            test: test_counts[c],
            group: groups[c].name(),
        })
        .collect();
    let summary = Stats {
        name: name.clone(),
        root: scan.root.display().to_string(),
        num_classes,
        images: splits.train.len() + splits.val.len() + splits.test.len(),
        train: splits.train.len(),
        val: splits.val.len(),
        test: splits.test.len(),
        imbalance_ratio: stats.imbalance_ratio(),
        rule: rule.to_string(),
        many_medium_few: sizes_of_groups,
        image_sizes: sizes,
        unreadable: scan.unreadable.len(),
        seed: a.seed,
        val_fraction: a.val_fraction,
        test_fraction: kept_from.is_none().then_some(a.test_fraction),
        test_kept_from: kept_from.as_ref().map(|p| p.display().to_string()),
        classes,
    };

    // Everything is checked; write. The config goes last, so a config on
    // disk means its lists are there.
    let how = format!(
        "lt-cli init: stratified per class, val fraction {}, test fraction {}, seed {}",
        a.val_fraction,
        match &kept_from {
            Some(p) => format!("0 (test split kept from {})", p.display()),
            None => a.test_fraction.to_string(),
        },
        a.seed
    );
    write_split_with_info(&train_path, &splits.train, num_classes, &how)?;
    write_split_with_info(&val_path, &splits.val, num_classes, &how)?;
    if kept_from.is_none() {
        if let Some(p) = &test_path {
            write_split_with_info(p, &splits.test, num_classes, &how)?;
        }
    }
    let mut names = scan.class_names.join("\n");
    names.push('\n');
    lt_core::fs::write_atomic(&out_dir.join(CLASS_NAMES_FILE), names.as_bytes())?;
    lt_core::fs::write_atomic(
        &out_dir.join(STATS_FILE),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    let plots = lt_report::class_counts::save_class_counts(
        &out_dir.join("class_counts"),
        &format!("{name}: training images per class"),
        &scan.class_names,
        &train_counts,
        &rule,
    )?;
    lt_core::fs::write_atomic(
        &out_dir.join(UNREADABLE_FILE),
        scaffold::unreadable_text(&scan.unreadable).as_bytes(),
    )?;
    lt_core::fs::write_atomic(&config_path, config_text.as_bytes())?;

    print_summary(
        out,
        &summary,
        &scan.unreadable,
        &out_dir,
        &plots,
        &config_path,
    );
    Ok(())
}

fn print_summary(
    out: &mut String,
    s: &Stats,
    unreadable: &[Unreadable],
    out_dir: &Path,
    plots: &[PathBuf; 2],
    config: &Path,
) {
    outln!(
        out,
        "{}: {} classes, {} images in {}",
        s.name,
        s.num_classes,
        s.images,
        s.root
    );
    let w = s
        .classes
        .iter()
        .map(|c| c.name.chars().count())
        .chain([5])
        .max()
        .unwrap_or(5);
    let pad = |t: &str| format!("{t}{}", " ".repeat(w - t.chars().count()));
    outln!(
        out,
        "  {:>4}  {}  {:>6}  {:>5}  {:>5}  group",
        "id",
        pad("class"),
        "train",
        "val",
        "test"
    );
    let shown = if s.classes.len() > 30 {
        20
    } else {
        s.classes.len()
    };
    for c in &s.classes[..shown] {
        outln!(
            out,
            "  {:>4}  {}  {:>6}  {:>5}  {:>5}  {}",
            c.id,
            pad(&c.name),
            c.train,
            c.val,
            c.test,
            c.group
        );
    }
    if shown < s.classes.len() {
        outln!(
            out,
            "  ... ({} more classes in {})",
            s.classes.len() - shown,
            out_dir.join(STATS_FILE).display()
        );
    }
    outln!(
        out,
        "  total {} / {} / {} (train / val / test){}",
        s.train,
        s.val,
        s.test,
        match &s.test_kept_from {
            Some(p) => format!("; test split kept from {p}"),
            None => String::new(),
        }
    );
    match s.imbalance_ratio {
        Some(r) => outln!(out, "imbalance ratio (train): {r:.2}"),
        None => outln!(out, "imbalance ratio (train): undefined"),
    }
    outln!(
        out,
        "groups by {}: many {} / medium {} / few {}",
        s.rule,
        s.many_medium_few[0],
        s.many_medium_few[1],
        s.many_medium_few[2]
    );
    if let Some(z) = &s.image_sizes {
        match z.uniform {
            Some((w, h)) => outln!(out, "image size: {w}x{h} (every image)"),
            None => outln!(
                out,
                "image sizes: {}x{} to {}x{}",
                z.min.0,
                z.min.1,
                z.max.0,
                z.max.1
            ),
        }
    }
    if unreadable.is_empty() {
        outln!(out, "unreadable files: none");
    } else {
        outln!(
            out,
            "left out {} unreadable file{} (listed in {}):",
            unreadable.len(),
            if unreadable.len() == 1 { "" } else { "s" },
            out_dir.join(UNREADABLE_FILE).display()
        );
        for u in unreadable.iter().take(20) {
            outln!(out, "  {}: {}", u.path, u.reason);
        }
        if unreadable.len() > 20 {
            outln!(out, "  ... ({} more)", unreadable.len() - 20);
        }
    }
    let mut files = vec![TRAIN_FILE.to_string(), VAL_FILE.to_string()];
    if s.test > 0 && s.test_kept_from.is_none() {
        files.push(TEST_FILE.to_string());
    }
    files.extend([CLASS_NAMES_FILE, STATS_FILE, UNREADABLE_FILE].map(String::from));
    files.extend(
        plots
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    );
    outln!(out, "wrote {} in {}", files.join(", "), out_dir.display());
    outln!(out, "wrote {}", config.display());
    outln!(out, "next: lt-cli run --config {}", config.display());
}
