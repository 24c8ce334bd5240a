//! Tables and plots of a results directory built here: two samplers x two
//! seeds x five heads on a 20-class long-tailed set, with real `Evaluation`s,
//! tau sweeps and safetensors checkpoints, laid out as `cargo xtask sweep`
//! and `lt-cli eval` write them.

use std::path::{Path, PathBuf};

use lt_core::stats::{ClassStats, GroupRule};
use lt_core::{HeadId, ModelSelect, Split, TauBias, TauSelect};
use lt_metrics::{evaluate, Evaluation};
use lt_report::{self as report, ReportError, CELL_FILE, RESULTS_FILE};
use lt_run::{
    CellInfo, HeadResult, Results, ShiftedRow, ShiftedSet, ShiftedTest, SplitMetrics,
    Stage1Summary, TauPoint, TauSweep, KNOWN_PRIOR_LA,
};
use lt_samplers::{Imbalance, Strategy, TestShift};

const C: usize = 20;
const TEST_PER_CLASS: usize = 10;

/// Training counts 400 * 0.75^j: many (> 100), medium and few (< 20) classes.
fn train_counts() -> Vec<usize> {
    (0..C)
        .map(|j| (400.0 * 0.75f64.powi(j as i32)).round() as usize)
        .collect()
}

/// An evaluation whose class j has accuracy `acc(j)` (in tenths).
fn evaluation(acc: impl Fn(usize) -> f64) -> Evaluation {
    let mut logits = Vec::new();
    let mut labels = Vec::new();
    for y in 0..C {
        let correct = (acc(y) * TEST_PER_CLASS as f64).round() as usize;
        for i in 0..TEST_PER_CLASS {
            let pred = if i < correct { y } else { (y + 1) % C };
            let mut row = vec![0.0f32; C];
            row[pred] = 1.0;
            logits.extend(row);
            labels.push(y as u32);
        }
    }
    let stats = ClassStats::from_counts(train_counts());
    evaluate(&logits, C, &labels, &stats, &GroupRule::default()).unwrap()
}

/// Weight norms: decreasing with the class index for the joint head.
fn norms(norm: impl Fn(usize) -> f64) -> Option<Vec<f64>> {
    Some((0..C).map(norm).collect())
}

/// Accuracy of class j for a head; the shift makes samplers and seeds differ.
fn head_acc(head: &str, j: usize, shift: f64) -> f64 {
    let r = j as f64 / (C - 1) as f64;
    let a = match head {
        "joint" => 0.95 - 0.9 * r,
        "ncm" => 0.8 - 0.5 * r,
        "crt" => 0.85 - 0.5 * r,
        "tau_norm" => 0.85 - 0.45 * r,
        _ => 0.86 - 0.46 * r,
    };
    (a + shift).clamp(0.0, 1.0)
}

const HEADS: [(&str, &str); 5] = [
    ("joint", "Joint"),
    ("ncm", "NCM"),
    ("crt", "cRT"),
    ("tau_norm", "τ-norm"),
    ("lws", "LWS"),
];

/// Writes one run directory as `lt-cli eval` does; returns it.
fn write_run(root: &Path, sampler: (&str, Strategy, usize), seed: u64, with_cell: bool) -> PathBuf {
    let (key, strategy, order) = sampler;
    let dir = root.join("cifar20").join(key).join(format!("seed{seed}"));
    let shift = 0.02 * seed as f64 - 0.05 * order as f64;
    let curve: Vec<TauPoint> = (0..=10)
        .map(|i| {
            let tau = i as f64 / 5.0;
            let m = |base: f64| base - 0.1 * (tau - 1.0).powi(2) + shift;
            let metrics = SplitMetrics {
                top1: m(0.6),
                many: Some(m(0.8)),
                medium: Some(m(0.6)),
                few: Some(m(0.3)),
                loss: 1.0,
            };
            TauPoint {
                tau,
                select: metrics.clone(),
                report: Some(metrics),
            }
        })
        .collect();
    let stats = ClassStats::from_counts(train_counts());
    let rule = GroupRule::default();
    let mut results = Results::new(
        format!("cifar20_{key}_seed{seed}"),
        "abc".into(),
        seed,
        "resnet8".into(),
        strategy,
        Split::Test,
        rule.clone(),
        stats.group_sizes(&rule),
        train_counts(),
        "sha".into(),
        Stage1Summary {
            model_select: ModelSelect::BestVal,
            checkpoint: "runs/elsewhere/checkpoints/stage1_best.safetensors".into(),
            epoch: 3,
            last_epoch: Some(3),
            best_val: None,
            last_val: None,
            last_test: None,
        },
    );
    for (h, label) in HEADS {
        let weight_norms = match h {
            "joint" => norms(|j| 3.0 - 0.1 * j as f64),
            "crt" => norms(|j| 1.0 + 0.01 * j as f64),
            "tau_norm" => norms(|j| (3.0 - 0.1 * j as f64).powf(0.1)),
            "lws" => norms(|j| (3.0 - 0.1 * j as f64) * (1.0 + 0.05 * j as f64)),
            _ => None,
        };
        let tau_sweep = (h == "tau_norm").then(|| TauSweep {
            select_split: Split::Val,
            report_split: Split::Test,
            bias: TauBias::Drop,
            selection: TauSelect::SweepOnVal,
            chosen: 0.9 + 0.1 * seed as f64,
            curve: curve.clone(),
        });
        results.heads.push(HeadResult {
            head: h.parse::<HeadId>().unwrap(),
            label: label.into(),
            checkpoint: "runs/elsewhere/checkpoints/stage1_best.safetensors".into(),
            epoch: 3,
            split: Split::Test,
            evaluation: evaluation(|j| head_acc(h, j, shift)),
            val: None,
            tau: (h == "tau_norm").then_some(0.9),
            tau_sweep,
            settings: None,
            weight_norms,
        });
    }
    results.shifted_test = Some(shifted(shift));
    results.write(&dir.join(RESULTS_FILE)).unwrap();
    if with_cell {
        let cell = CellInfo {
            dataset: "cifar20".into(),
            dataset_order: 0,
            sampler: key.into(),
            sampler_label: Some(key.to_uppercase()),
            sampler_order: order,
            seed,
        };
        cell.write(&dir.join(CELL_FILE)).unwrap();
    }
    dir
}

/// The shifted-test section `lt-cli eval` writes: forward-10, uniform,
/// backward-10; the joint head falls most from forward to backward.
fn shifted(shift: f64) -> ShiftedTest {
    let imbalance = Imbalance::new(10.0).unwrap();
    let set = |shift, images| ShiftedSet {
        shift,
        images,
        class_counts: vec![],
    };
    let row = |head: &str, label: &str, top1: [f64; 3]| ShiftedRow {
        head: head.into(),
        label: label.into(),
        top1: top1.iter().map(|a| a + shift).collect(),
    };
    ShiftedTest {
        split: Split::Test,
        seed: 0,
        per_class: TEST_PER_CLASS,
        sets: vec![
            set(TestShift::Forward { imbalance }, 76),
            set(TestShift::Uniform, 200),
            set(TestShift::Backward { imbalance }, 76),
        ],
        heads: HEADS
            .iter()
            .enumerate()
            .map(|(k, (h, label))| {
                let k = k as f64;
                row(h, label, [0.8 - 0.02 * k, 0.55 + 0.01 * k, 0.3 + 0.05 * k])
            })
            .collect(),
        reference: Some(row(
            KNOWN_PRIOR_LA,
            "LA (known test prior)",
            [0.85, 0.62, 0.6],
        )),
    }
}

/// Two samplers (listed in grid order "ib" then "cb"), two seeds.
fn sweep_dir(with_cell: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (sampler, seed) in [
        (("ib", Strategy::InstanceBalanced, 0), 0),
        (("ib", Strategy::InstanceBalanced, 0), 1),
        (("cb", Strategy::class_balanced(), 1), 0),
        (("cb", Strategy::class_balanced(), 1), 1),
    ] {
        write_run(dir.path(), sampler, seed, with_cell);
    }
    dir
}

fn assert_png(path: &Path) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()))
        .to_rgb8();
    assert!(
        img.width() >= 100 && img.height() >= 100,
        "{}",
        path.display()
    );
    let first = *img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| **p != first).count();
    // Axes, text and lines: a real plot colours far more than a few pixels.
    assert!(
        differing > img.width() as usize * 4,
        "{}: almost blank ({differing} pixels differ from the background)",
        path.display()
    );
    let coloured = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.max(g).max(b) - r.min(g).min(b) > 60
        })
        .count();
    assert!(coloured > 100, "{}: no coloured line", path.display());
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let head = text.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "{}: not an SVG",
        path.display()
    );
    assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "{}: no line element",
        path.display()
    );
    assert!(text.contains("<text"), "{}: no text", path.display());
    assert_balanced_tags(&text, path);
}

/// XML-ish well-formedness: every element opened is closed, in order.
fn assert_balanced_tags(text: &str, path: &Path) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let end = start
            + rest[start..]
                .find('>')
                .unwrap_or_else(|| panic!("{}: unterminated tag", path.display()));
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(closing) = tag.strip_prefix('/') {
            let open = stack.pop();
            assert_eq!(
                open,
                Some(closing.trim()),
                "{}: mismatched </{closing}>",
                path.display()
            );
        } else {
            stack.push(tag.split_whitespace().next().unwrap_or(""));
        }
    }
    assert!(stack.is_empty(), "{}: unclosed {stack:?}", path.display());
}

#[test]
fn report_of_a_sweep_has_every_table_and_plot() {
    let dir = sweep_dir(true);
    let summary = report::regenerate(dir.path()).unwrap();
    assert_eq!(summary.runs, 4);
    if cfg!(feature = "plot") {
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    }
    let out = dir.path().join("report");
    assert_eq!(summary.out_dir, out);

    // Tables.
    for f in [
        "runs.csv",
        "runs.json",
        "summary.csv",
        "summary.json",
        "summary.md",
    ] {
        assert!(summary.tables.contains(&out.join(f)), "{f}");
    }
    let runs_csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(runs_csv.lines().count(), 1 + 4 * 5);
    assert!(runs_csv.starts_with("dataset,sampler,sampler_label,seed,head,"));
    let runs_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("runs.json")).unwrap()).unwrap();
    assert_eq!(runs_json.as_array().unwrap().len(), 20);
    assert_eq!(runs_json[0]["run_dir"], "cifar20/ib/seed0");

    // Mean and sample std over seeds, checked against the evaluations.
    let row = summary
        .rows
        .iter()
        .find(|r| r.sampler == "ib" && r.head == "joint")
        .unwrap();
    let e0 = evaluation(|j| head_acc("joint", j, 0.0));
    let e1 = evaluation(|j| head_acc("joint", j, 0.02));
    let (mean, std) = report::mean_std(&[e0.top1, e1.top1]);
    let all = row.all.unwrap();
    assert_eq!((all.mean, all.std, all.n), (mean, std, 2));
    assert_eq!(row.seeds, vec![0, 1]);
    let (fmean, _) = report::mean_std(&[e0.few.unwrap(), e1.few.unwrap()]);
    assert_eq!(row.few.unwrap().mean, fmean);
    assert_eq!(row.tau, None);
    let tau = summary
        .rows
        .iter()
        .find(|r| r.sampler == "cb" && r.head == "tau_norm")
        .unwrap();
    assert_eq!(tau.tau.unwrap().mean, 0.9);

    // Grid order (ib before cb) and the paper's head order and names.
    let order: Vec<(&str, &str)> = summary
        .rows
        .iter()
        .map(|r| (r.sampler_label.as_str(), r.head_label.as_str()))
        .collect();
    assert_eq!(order[0], ("IB", "Joint"));
    assert_eq!(order[4], ("IB", "LWS"));
    assert_eq!(order[5], ("CB", "Joint"));
    assert_eq!(order[8], ("CB", "τ-norm"));

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let expected = format!(
        "| IB | Joint | {:.1} ± {:.1} |",
        100.0 * row.many.unwrap().mean,
        100.0 * row.many.unwrap().std
    );
    assert!(md.contains(&expected), "{expected}\n{md}");
    assert!(md.contains("| Stage 1 | Method | Many | Medium | Few | All | Seeds |"));
    assert!(
        md.contains("| Stage 1 | Joint | NCM | cRT | τ-norm | LWS |"),
        "{md}"
    );
    if cfg!(feature = "plot") {
        assert!(md.contains("](plots/cifar20/samplers.png)"), "{md}");
    }
    // The shifted-test table: rows = heads and the reference, columns =
    // forward ... uniform ... backward, mean ± std over seeds.
    assert!(
        md.contains("| Method | forward-10 | uniform | backward-10 |"),
        "{md}"
    );
    let (m, sd) = report::mean_std(&[0.8 + e_shift(0, 0), 0.8 + e_shift(1, 0)]);
    let expected = format!("| Joint | {:.1} ± {:.1} |", 100.0 * m, 100.0 * sd);
    assert!(md.contains(&expected), "{expected}\n{md}");
    assert!(md.contains("| LA (known test prior) |"), "{md}");
    assert!(summary.tables.contains(&out.join("shifted.csv")));
    let shifted_csv = std::fs::read_to_string(out.join("shifted.csv")).unwrap();
    // 4 runs x (5 heads + reference) x 3 sets.
    assert_eq!(shifted_csv.lines().count(), 1 + 4 * 6 * 3);
    assert!(shifted_csv.contains(",joint,Joint,forward-10,forward,10,76,"));
    let summary_csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(summary_csv.lines().count(), 1 + 2 * 5);

    // Regenerating gives the same tables.
    let again = report::regenerate(dir.path()).unwrap();
    assert_eq!(again.rows, summary.rows);
    assert_eq!(std::fs::read_to_string(out.join("summary.md")).unwrap(), md);

    if cfg!(feature = "plot") {
        check_plots(&out, &summary.plots);
    } else {
        assert!(summary.plots.is_empty());
    }
}

/// The accuracy shift of sampler `order` and `seed` in [`write_run`].
fn e_shift(seed: u64, order: usize) -> f64 {
    0.02 * seed as f64 - 0.05 * order as f64
}

/// Six figures as PNG and SVG: five per sampler and one per dataset.
fn check_plots(out: &Path, written: &[PathBuf]) {
    let plots = out.join("plots/cifar20");
    let mut expected = vec![plots.join("samplers.png"), plots.join("samplers.svg")];
    for s in ["ib", "cb"] {
        for f in ["per_class", "tau", "weight_norms", "reliability", "shifted"] {
            expected.push(plots.join(format!("{f}_{s}.png")));
            expected.push(plots.join(format!("{f}_{s}.svg")));
        }
    }
    let mut got = written.to_vec();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    for p in &expected {
        assert!(p.is_file(), "{}", p.display());
        match p.extension().unwrap().to_str().unwrap() {
            "png" => assert_png(p),
            _ => assert_svg(p),
        }
    }
    // Every head of the weight-norm plot is drawn.
    let svg = std::fs::read_to_string(plots.join("weight_norms_ib.svg")).unwrap();
    for name in ["Joint", "cRT", "τ-norm", "LWS"] {
        assert!(
            svg.contains(name),
            "{name} missing from the weight-norm legend"
        );
    }
    assert!(!svg.contains("NCM"));
    // A reliability panel per head, each titled with its ECE.
    let svg = std::fs::read_to_string(plots.join("reliability_ib.svg")).unwrap();
    for name in [
        "Joint: ECE",
        "NCM: ECE",
        "cRT: ECE",
        "τ-norm: ECE",
        "LWS: ECE",
    ] {
        assert!(
            svg.contains(name),
            "{name} missing from the reliability diagram"
        );
    }
    assert!(svg.contains("perfect calibration"));
    // Every head and the reference on the shifted-test plot.
    let svg = std::fs::read_to_string(plots.join("shifted_cb.svg")).unwrap();
    for name in [
        "Joint",
        "LWS",
        "LA (known test prior)",
        "forward-10",
        "backward-10",
    ] {
        assert!(
            svg.contains(name),
            "{name} missing from the shifted-test plot"
        );
    }
}

#[test]
fn runs_without_cell_files_are_grouped_by_their_results() {
    let dir = sweep_dir(false);
    let runs = report::load_runs(dir.path()).unwrap();
    assert_eq!(runs.len(), 4);
    // Dataset = config name; samplers by kind in the paper's order.
    assert_eq!(runs[0].dataset, "cifar20_cb_seed0");
    let summary = report::regenerate(dir.path()).unwrap();
    let labels: Vec<&str> = summary
        .rows
        .iter()
        .map(|r| r.sampler_label.as_str())
        .collect();
    assert!(labels.contains(&"IB") && labels.contains(&"CB"));
    assert!(summary.rows.iter().all(|r| r.seeds.len() == 1));
}

#[test]
fn missing_weight_norms_are_warnings_and_bad_runs_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(dir.path(), ("ib", Strategy::InstanceBalanced, 0), 0, true);
    // Results as schema version 1 wrote them: no weight norms.
    let mut r = Results::read(&run.join(RESULTS_FILE)).unwrap();
    for h in &mut r.heads {
        h.weight_norms = None;
    }
    r.write(&run.join(RESULTS_FILE)).unwrap();
    let summary = report::regenerate(dir.path()).unwrap();
    assert!(
        summary.warnings.iter().any(|w| w.contains("weight norms")),
        "{:?}",
        summary.warnings
    );
    if cfg!(feature = "plot") {
        assert!(summary
            .warnings
            .iter()
            .any(|w| w.contains("weight_norms") && w.contains("skipped")));
        assert!(!dir
            .path()
            .join("report/plots/cifar20/weight_norms_ib.png")
            .exists());
        assert!(dir
            .path()
            .join("report/plots/cifar20/per_class_ib.png")
            .is_file());
    }

    // A second run that cannot be read is left out; the first is reported.
    let bad = write_run(dir.path(), ("ib", Strategy::InstanceBalanced, 0), 1, true);
    std::fs::write(bad.join(RESULTS_FILE), "{\"heads\": [{\"head\": 1}]}").unwrap();
    let summary = report::regenerate(dir.path()).unwrap();
    assert_eq!(summary.runs, 1);
    let e = report::load_run(&bad).unwrap_err();
    assert!(matches!(e, ReportError::Run(_)), "{e}");
    assert!(e.to_string().contains("results.json"), "{e}");
    std::fs::write(bad.join(RESULTS_FILE), "{\"schema_version\": 7}").unwrap();
    assert!(report::load_run(&bad).is_err());
    let good = write_run(dir.path(), ("ib", Strategy::InstanceBalanced, 0), 1, true);
    std::fs::write(good.join(CELL_FILE), "{\"dataset\": 3}").unwrap();
    let e = report::load_run(&good).unwrap_err().to_string();
    assert!(e.contains("cell.json"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = report::regenerate(empty.path()).unwrap_err();
    assert!(matches!(e, ReportError::NoRuns(_)), "{e}");
    assert!(e.to_string().contains("lt-cli eval"), "{e}");
}
