//! `report.html`: the page of a sweep (two samplers x two seeds, every kind
//! of figure) and of a tiny run (three classes, one head, nothing optional)
//! is complete, well formed, self-contained and escaped; and a real headless
//! Chromium renders it (non-blank screenshot, no console message). The
//! browser test skips, saying why, where no Chromium is installed
//! (`apt-get install -y chromium`; or point `LT_CHROMIUM` at a binary).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lt_core::stats::{ClassStats, GroupRule};
use lt_core::{HeadId, ModelSelect, Split, TauBias, TauSelect};
use lt_metrics::{evaluate, Evaluation};
use lt_report::{self as report, Provenance, ReportSummary, CELL_FILE, HTML_FILE, RESULTS_FILE};
use lt_run::data_info::SplitSummary;
use lt_run::{
    CellInfo, DataInfo, HeadResult, Results, ShiftedRow, ShiftedSet, ShiftedTest, SplitMetrics,
    Stage1Summary, TauPoint, TauSweep,
};
use lt_samplers::{Imbalance, Strategy, TestShift};

/// A dataset name, head label and config text a careless page would break on.
const NASTY: &str = "<script>alert('x')</script> & \"q\"";

/// A class name to escape.
const CLASS: &str = "<b>bold</b> & co";

const PER_CLASS: usize = 10;

/// Training counts of `c` classes: 200 * 0.6^j.
fn counts(c: usize) -> Vec<usize> {
    (0..c)
        .map(|j| (200.0 * 0.6f64.powi(j as i32)).round().max(1.0) as usize)
        .collect()
}

/// An evaluation whose class j has accuracy `acc(j)`, with confidences
/// spread over the calibration bins.
fn evaluation(c: usize, acc: impl Fn(usize) -> f64) -> Evaluation {
    let mut logits = Vec::new();
    let mut labels = Vec::new();
    for y in 0..c {
        let correct = (acc(y) * PER_CLASS as f64).round() as usize;
        for i in 0..PER_CLASS {
            let pred = if i < correct { y } else { (y + 1) % c };
            let mut row = vec![0.0f32; c];
            row[pred] = 0.5 + 0.4 * i as f32;
            logits.extend(row);
            labels.push(y as u32);
        }
    }
    let stats = ClassStats::from_counts(counts(c));
    evaluate(&logits, c, &labels, &stats, &GroupRule::default()).unwrap()
}

fn head(id: &str, label: &str, evaluation: Evaluation) -> HeadResult {
    HeadResult {
        head: id.parse::<HeadId>().unwrap(),
        label: label.into(),
        checkpoint: "checkpoints/stage1_best.safetensors".into(),
        epoch: 2,
        split: Split::Test,
        evaluation,
        val: None,
        tau: None,
        tau_sweep: None,
        settings: None,
        weight_norms: None,
    }
}

fn results(name: &str, c: usize, seed: u64, strategy: Strategy) -> Results {
    let rule = GroupRule::default();
    let stats = ClassStats::from_counts(counts(c));
    Results::new(
        name.into(),
        "0123abcd".into(),
        seed,
        "resnet8".into(),
        strategy,
        Split::Test,
        rule.clone(),
        stats.group_sizes(&rule),
        counts(c),
        "sha".into(),
        Stage1Summary {
            model_select: ModelSelect::BestVal,
            checkpoint: "checkpoints/stage1_best.safetensors".into(),
            epoch: 2,
            last_epoch: Some(2),
            best_val: None,
            last_val: None,
            last_test: None,
        },
    )
}

/// One run of the sweep: joint, NCM, τ-norm (with its sweep) and cRT, on
/// 8 classes; shifted-test results for sampler `ib`.
fn sweep_run(root: &Path, sampler: &str, order: usize, seed: u64) -> PathBuf {
    const C: usize = 8;
    let dir = root.join("tiny").join(sampler).join(format!("seed{seed}"));
    let strategy = if sampler == "ib" {
        Strategy::InstanceBalanced
    } else {
        Strategy::class_balanced()
    };
    let shift = 0.03 * seed as f64 - 0.05 * order as f64;
    let mut r = results(&format!("tiny_{sampler}"), C, seed, strategy);
    let acc = |base: f64, slope: f64| {
        move |j: usize| (base - slope * j as f64 / (C - 1) as f64 + shift).clamp(0.0, 1.0)
    };
    let mut joint = head("joint", "Joint", evaluation(C, acc(0.95, 0.9)));
    joint.weight_norms = Some((0..C).map(|j| 2.0 - 0.1 * j as f64).collect());
    r.heads.push(joint);
    r.heads
        .push(head("ncm", NASTY, evaluation(C, acc(0.8, 0.4))));
    let mut tau = head("tau_norm", "τ-norm", evaluation(C, acc(0.85, 0.4)));
    tau.tau = Some(0.8);
    tau.weight_norms = Some((0..C).map(|j| 1.0 - 0.01 * j as f64).collect());
    tau.tau_sweep = Some(TauSweep {
        select_split: Split::Val,
        report_split: Split::Test,
        bias: TauBias::Drop,
        selection: TauSelect::SweepOnVal,
        chosen: 0.8,
        curve: (0..=10)
            .map(|i| {
                let t = i as f64 / 5.0;
                let m = |b: f64| b - 0.1 * (t - 1.0).powi(2) + shift;
                let metrics = SplitMetrics {
                    top1: m(0.6),
                    many: Some(m(0.8)),
                    medium: Some(m(0.6)),
                    few: Some(m(0.3)),
                    loss: 1.0,
                };
                TauPoint {
                    tau: t,
                    select: metrics.clone(),
                    report: Some(metrics),
                }
            })
            .collect(),
    });
    r.heads.push(tau);
    let mut crt = head("crt", "cRT", evaluation(C, acc(0.85, 0.5)));
    crt.weight_norms = Some(vec![1.0; C]);
    r.heads.push(crt);
    if sampler == "ib" {
        let imbalance = Imbalance::new(10.0).unwrap();
        let set = |shift, images| ShiftedSet {
            shift,
            images,
            class_counts: vec![],
        };
        let row = |h: &str, label: &str, base: f64| ShiftedRow {
            head: h.into(),
            label: label.into(),
            top1: vec![base + 0.2, base, base - 0.2 + shift],
        };
        r.shifted_test = Some(ShiftedTest {
            split: Split::Test,
            seed: 0,
            per_class: PER_CLASS,
            sets: vec![
                set(TestShift::Forward { imbalance }, 30),
                set(TestShift::Uniform, 80),
                set(TestShift::Backward { imbalance }, 30),
            ],
            heads: vec![row("joint", "Joint", 0.5), row("crt", "cRT", 0.55)],
            reference: None,
        });
    }
    r.write(&dir.join(RESULTS_FILE)).unwrap();
    CellInfo {
        dataset: NASTY.into(),
        dataset_order: 0,
        sampler: sampler.into(),
        sampler_label: Some(sampler.to_uppercase()),
        sampler_order: order,
        seed,
    }
    .write(&dir.join(CELL_FILE))
    .unwrap();
    // The commands that trained it (the second one resumed it).
    let trained = format!("lt-cli run 'configs/tiny <{sampler}>.toml' --set seed={seed}");
    lt_run::Commands {
        commands: vec![
            lt_run::CommandRecord {
                command: trained.clone(),
                version: "9.9.8".into(),
            },
            lt_run::CommandRecord {
                command: format!("{trained} --resume"),
                version: "9.9.9".into(),
            },
        ],
    }
    .write(&lt_run::RunDir::new(&dir).commands())
    .unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!("name = \"tiny\"\n# {NASTY}\n[data]\nroot = \"a < b && c\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.eval.toml"),
        format!("name = \"tiny\"\n# {NASTY}\n[data]\nroot = \"a < b && c\"\n"),
    )
    .unwrap();
    let split = |list: &str, counts: Vec<usize>| SplitSummary {
        list: list.into(),
        sha256: "00".into(),
        total: counts.iter().sum(),
        counts,
    };
    // The class names, beside the training list (one of them unkind).
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let names: Vec<String> = (0..C)
        .map(|j| {
            if j == 3 {
                CLASS.to_string()
            } else {
                format!("class{j}")
            }
        })
        .collect();
    std::fs::write(data.join("classes.txt"), names.join("\n")).unwrap();
    DataInfo {
        num_classes: C,
        train: split(&data.join("train.txt").display().to_string(), counts(C)),
        val: Some(split("data/tiny/val.txt", vec![2; C])),
        test: Some(split("data/tiny/test.txt", vec![PER_CLASS; C])),
        imbalance_ratio: None,
        group_sizes: [1, 1, 1],
        group_rule: "by training count".into(),
    }
    .write(&lt_run::RunDir::new(&dir).data_info())
    .unwrap();
    dir
}

fn sweep_report() -> (tempfile::TempDir, ReportSummary) {
    let dir = tempfile::tempdir().unwrap();
    for (sampler, order) in [("ib", 0), ("cb", 1)] {
        for seed in [0, 1] {
            sweep_run(dir.path(), sampler, order, seed);
        }
    }
    let provenance = Provenance {
        command: "lt-cli report 'runs/my sweep'".into(),
        version: "9.9.9".into(),
    };
    let summary = report::regenerate_with(dir.path(), &provenance).unwrap();
    (dir, summary)
}

/// A run as small as `configs/ci_tiny.toml` makes, with less: three
/// classes, one head, no τ sweep, no weight norms, no shifted tests, no
/// config or data files.
fn tiny_report() -> (tempfile::TempDir, ReportSummary) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = results("ci_tiny", 3, 0, Strategy::InstanceBalanced);
    r.heads.push(head(
        "joint",
        "Joint",
        evaluation(3, |j| 1.0 - 0.4 * j as f64),
    ));
    r.write(&dir.path().join(RESULTS_FILE)).unwrap();
    let summary = report::regenerate(dir.path()).unwrap();
    (dir, summary)
}

/// Elements without a closing tag in HTML.
const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];

/// Every element opened is closed, in order (void elements and `<x/>`
/// aside); text holds no raw `<`, attributes no raw `<`.
fn assert_well_formed(html: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    let mut offset = 0;
    while let Some(start) = rest.find('<') {
        let end = start
            + rest[start..]
                .find('>')
                .unwrap_or_else(|| panic!("unterminated tag at byte {}", offset + start));
        let tag = &rest[start + 1..end];
        assert!(
            !tag.contains('<'),
            "a raw `<` inside a tag at byte {}: {tag}",
            offset + start
        );
        let first = tag.chars().next().unwrap_or(' ');
        assert!(
            first.is_ascii_alphabetic() || "/!?".contains(first),
            "a raw `<` in text at byte {}: <{}",
            offset + start,
            &tag[..tag.len().min(40)]
        );
        offset += end + 1;
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') || tag.ends_with('/') {
            continue;
        }
        if let Some(closing) = tag.strip_prefix('/') {
            let open = stack.pop();
            assert_eq!(
                open.as_deref(),
                Some(closing.trim()),
                "mismatched </{closing}>"
            );
        } else {
            let name = tag.split_whitespace().next().unwrap_or("").to_lowercase();
            if !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
}

/// No script, no external resource: nothing to fetch, offline or not.
fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        "src=",
        "@import",
        "url(",
        "http://",
        "https://",
        "xlink:href",
    ] {
        // The SVG namespace URI is a name, not a fetch.
        let hits = lower.matches(bad).count();
        let allowed = if bad == "http://" {
            lower
                .matches("xmlns=\"http://www.w3.org/2000/svg\"")
                .count()
        } else {
            0
        };
        assert_eq!(hits, allowed, "`{bad}` in the page");
    }
    for href in lower.split("href=\"").skip(1) {
        assert!(href.starts_with('#'), "a link leaving the page: {href:.60}");
    }
}

fn page_of(summary: &ReportSummary) -> String {
    let path = summary.out_dir.join(HTML_FILE);
    assert!(summary.tables.contains(&path), "{:?}", summary.tables);
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn sweep_page_has_every_table_and_figure_inline_and_escapes_strings() {
    let (dir, summary) = sweep_report();
    let html = page_of(&summary);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_well_formed(&html);
    assert_self_contained(&html);

    // Tables: one summary, one matrix and one class-statistics table for the
    // dataset; per sampler a τ curve and a per-class table; the shifted
    // table for `ib` only; one table per run.
    let count = |needle: &str| html.matches(needle).count();
    assert_eq!(count("<table class=\"summary\">"), 1);
    assert_eq!(count("<table class=\"matrix\">"), 1);
    assert_eq!(count("<table class=\"classes\">"), 1);
    assert_eq!(count("<table class=\"tau\">"), 2);
    assert_eq!(count("<table class=\"per-class\">"), 2);
    assert_eq!(count("<table class=\"shifted\">"), 1);
    assert_eq!(count("<table class=\"run\">"), 4);
    assert_eq!(
        count("<tr>"),
        count("</tr>"),
        "rows are opened and closed alike"
    );
    // The numbers of summary.md, cell for cell.
    let row = summary
        .rows
        .iter()
        .find(|r| r.sampler == "ib" && r.head == "joint")
        .unwrap();
    let many = row.many.unwrap();
    let cell = format!(
        "<td class=\"n\">{:.1} ± {:.1}</td>",
        100.0 * many.mean,
        100.0 * many.std
    );
    assert!(html.contains(&cell), "{cell}");
    assert!(html.contains("<td class=\"n\">0.80</td>"), "chosen τ");
    for metric in ["Many", "Medium", "Few", "All"] {
        assert!(html.contains(&format!("<th>{metric}</th>")));
    }

    // Every figure written under plots/ is inline, as drawn.
    let svgs: Vec<&PathBuf> = summary
        .plots
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    // Per sampler: per-class, τ, weight norms, reliability; shifted for
    // `ib`; and the sampler figure of the dataset.
    assert_eq!(svgs.len(), 2 * 4 + 1 + 1, "{svgs:?}");
    // ... and the class-count histogram of the dataset.
    assert_eq!(count("<svg"), svgs.len() + 1);
    assert_eq!(count("</svg>"), svgs.len() + 1);
    assert_eq!(count("data-plot=\"class_counts\""), 1);
    for p in svgs {
        let svg = std::fs::read_to_string(p).unwrap();
        let start = svg.find("<svg").unwrap();
        assert!(
            html.contains(svg[start..].trim_end()),
            "{} is not inline",
            p.display()
        );
    }

    // Strings from files are escaped: dataset and head names, config text.
    assert!(!html.contains(NASTY));
    assert!(!html.contains("<script"));
    let escaped = report::escape(NASTY);
    assert!(
        html.contains(&format!("<h2>{escaped}</h2>")),
        "dataset name"
    );
    assert!(html.contains(&format!("<td>{escaped}</td>")), "head label");
    assert!(html.contains("root = &quot;a &lt; b &amp;&amp; c&quot;"));
    assert!(!html.contains(CLASS));
    assert!(html.contains("<th>Name</th>"));
    assert!(html.contains(&format!("<td>{}</td>", report::escape(CLASS))));
    assert!(html.contains("<td>class0</td>"));
    // Identical configs are shown once, naming both files.
    assert!(html.contains("Config: config.toml, config.eval.toml"));
    assert_eq!(count("<details class=\"config\">"), 4);

    // Class statistics, from the results and data.json.
    assert!(html.contains("<th>imbalance ratio</th><td class=\"n\">"));
    assert!(html.contains("test images (data/tiny/test.txt)"));

    // Each run's training commands, labelled apart from the report command.
    for (sampler, seed) in [("ib", 0), ("ib", 1), ("cb", 0), ("cb", 1)] {
        let trained =
            format!("lt-cli run &#39;configs/tiny &lt;{sampler}&gt;.toml&#39; --set seed={seed}");
        let want = format!(
            "<dt>training command</dt><dd><code>{trained}</code> (version 9.9.8)<br>\n\
             <code>{trained} --resume</code> (version 9.9.9)</dd>"
        );
        assert!(html.contains(&want), "{want}");
    }
    assert_eq!(count("<dt>training command</dt>"), 4);

    // Report command and version.
    assert!(html.contains(
        "<dt>report command</dt><dd><code>lt-cli report &#39;runs/my sweep&#39;</code></dd>"
    ));
    assert!(html.contains("lt-report 9.9.9"));

    // Written atomically: no temp file is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("report"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn tiny_run_page_is_valid() {
    let (_dir, summary) = tiny_report();
    let html = page_of(&summary);
    assert_well_formed(&html);
    assert_self_contained(&html);
    assert!(html.contains("<table class=\"summary\">"));
    assert!(html.contains("<table class=\"run\">"));
    assert!(html.contains("No resolved config in the run directory."));
    assert!(
        html.contains("<dt>training command</dt><dd>not recorded (no <code>commands.json</code>")
    );
    assert!(!html.contains("<table class=\"tau\">"));
    if cfg!(feature = "plot") {
        // Class counts, per-class, reliability and the sampler figure; no τ
        // or weight norms.
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(!html.contains("<th>Name</th>"));
        assert!(html.contains("id=\"warnings\""));
    }
}

/// Chromium, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LT_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LT_CHROMIUM={} is not a file", p.display()))
        };
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "none of {} on PATH and LT_CHROMIUM unset (apt-get install -y chromium)",
        names.join(", ")
    ))
}

/// Runs headless Chromium on `page` with `extra` arguments; returns stdout
/// and stderr. Killed after two minutes.
fn run_chromium(bin: &Path, profile: &Path, page: &Path, extra: &[&str]) -> (String, String) {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish in 120 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "{} failed: {status}\n{err}",
        bin.display()
    );
    (out, err)
}

/// Console messages Chromium logged (`--enable-logging=stderr`): the page
/// has no script, so any is a fault (a parse or resource error).
fn console_messages(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn chromium_renders_the_page() {
    let bin = match chromium() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: no headless browser: {why}");
            return;
        }
    };
    if !cfg!(feature = "plot") {
        println!("skipped: lt-report built without `plot`: no figures to render");
        return;
    }
    let (dir, summary) = sweep_report();
    let page = summary.out_dir.join(HTML_FILE);
    let html = std::fs::read_to_string(&page).unwrap();
    let profile = tempfile::tempdir().unwrap();

    // The DOM the browser built: every table and SVG of the source survives
    // parsing (nothing misnested and dropped), and the console is silent.
    let (dom, err) = run_chromium(&bin, profile.path(), &page, &["--dump-dom"]);
    assert!(
        console_messages(&err).is_empty(),
        "console messages:\n{}",
        console_messages(&err).join("\n")
    );
    for tag in ["<table", "<svg", "<figure", "<polyline", "<details"] {
        assert_eq!(
            dom.matches(tag).count(),
            html.matches(tag).count(),
            "{tag}: the browser's DOM differs from the page"
        );
    }
    assert!(dom.contains("</html>"));

    // A screenshot of the page, tall enough for the tables and the first
    // figures: not blank, with the plots' coloured lines drawn.
    let shot = dir.path().join("report.png");
    let (_, err) = run_chromium(
        &bin,
        profile.path(),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,6000",
        ],
    );
    assert!(
        console_messages(&err).is_empty(),
        "console messages:\n{}",
        console_messages(&err).join("\n")
    );
    let img = image::open(&shot)
        .unwrap_or_else(|e| panic!("{}: {e}", shot.display()))
        .to_rgb8();
    assert_eq!((img.width(), img.height()), (1280, 6000));
    let luma: Vec<f64> = img
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64
        })
        .collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let variance = luma.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / luma.len() as f64;
    assert!(
        variance > 50.0,
        "screenshot almost blank: variance {variance:.1}"
    );
    // Rows of the screenshot holding a saturated colour (plot lines and
    // bars; text and table rules are grey): several figures' worth.
    let coloured_rows = (0..img.height())
        .filter(|&y| {
            (0..img.width()).any(|x| {
                let [r, g, b] = img.get_pixel(x, y).0;
                r.max(g).max(b) - r.min(g).min(b) > 80
            })
        })
        .count();
    assert!(
        coloured_rows > 800,
        "only {coloured_rows} rows with a coloured pixel: the figures did not render"
    );
    if let Some(keep) = std::env::var_os("LT_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
