//! `report.html`: the whole report of a results directory (one run or a
//! sweep) as one self-contained page.
//!
//! The page is built from what the other outputs are built from (the
//! [`Run`]s read by [`crate::load_runs`], the [`SummaryRow`]s of
//! [`crate::summarize`], the shifted-test statistics and τ curves, and the
//! figures as drawn for `plots/`), so it shows the same numbers as
//! `summary.md` and the PNG/SVG files. It holds, per dataset: the class
//! statistics, the Many / Medium / Few / All table, the stage 1 × classifier
//! matrix, and per stage-1 sampler every figure inline as SVG (per-class
//! accuracy, τ curve, weight norms, reliability diagrams, shifted test
//! sets), the shifted-test table, the τ curve and the per-class accuracies
//! as tables; then every run with its heads, stage-1 summary, data splits,
//! resolved config and the commands that trained it (`commands.json`); the
//! warnings; and the command and version that wrote the page.
//!
//! Nothing is loaded from elsewhere: no script, no stylesheet or font
//! file, no image link; a little inline CSS only, so the page reads the
//! same offline. Every string that comes from a file (names, config text,
//! paths) is escaped ([`escape`]).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use lt_core::stats::{ClassStats, ShotGroup};

use super::series::{class_counts, class_order, num_classes, per_class_mean, tau_curve};
use super::{groups, heads_of, label_in, Run, Stat, SummaryRow};
use crate::shifted::shifted_stats;
use crate::tables::pct;

/// File name of the page, inside the report directory.
pub const HTML_FILE: &str = "report.html";

/// What wrote the report: shown at the foot of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The command line (program name and arguments, shell-quoted).
    pub command: String,
    /// The version of the tools (the workspace's).
    pub version: String,
}

impl Provenance {
    /// The command line of this process (the program by its file name) and
    /// the workspace version.
    pub fn of_this_process() -> Self {
        Self {
            command: lt_run::commands::this_command_line(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Escapes text for HTML element content and quoted attribute values:
/// `&`, `<`, `>`, `"` and `'`.
///
/// ```
/// assert_eq!(lt_report::escape("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
/// ```
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One figure as written under `plots/`, with its SVG text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InlinePlot {
    /// Dataset key.
    pub dataset: String,
    /// Sampler key; `None` for a figure of the whole dataset.
    pub sampler: Option<String>,
    /// Figure kind: `per_class`, `tau`, `weight_norms`, `reliability`,
    /// `shifted`, `samplers`.
    pub name: &'static str,
    /// The PNG and SVG files.
    pub files: [PathBuf; 2],
    /// The SVG document.
    pub svg: String,
}

/// Everything the page shows.
pub(crate) struct PageInput<'a> {
    pub runs: &'a [Run],
    pub rows: &'a [SummaryRow],
    pub plots: &'a [InlinePlot],
    pub results_dir: &'a Path,
    pub out_dir: &'a Path,
    pub provenance: &'a Provenance,
    pub warnings: &'a [String],
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;\
max-width:1280px;padding:1em 2em;color:#222;background:#fff;line-height:1.4}\
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:2em}\
h3{margin-top:1.6em}\
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}\
th,td{border:1px solid #ccc;padding:.2em .55em}th{background:#f0f0f0}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
tr:nth-child(even) td{background:#fafafa}td.best{font-weight:bold}\
figure{margin:1em 0}figure svg{max-width:100%;height:auto;display:block;\
border:1px solid #eee}figcaption{font-size:.85em;color:#555}\
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}\
code{background:#f3f3f3;padding:0 .2em}details{margin:.5em 0}\
summary{cursor:pointer;font-weight:600}\
nav ul{columns:2}.warn{color:#8a4b00}dl{display:grid;\
grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}dd{margin:0}";

/// Writes to a `String` (cannot fail).
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {
        let _ = write!($dst, $($arg)*);
    };
}

/// A number cell: percent with one decimal, `–` when absent.
fn pct_cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("<td class=\"n\">{:.1}</td>", 100.0 * v),
        _ => "<td class=\"n\">–</td>".into(),
    }
}

fn stat_cell(s: Option<Stat>) -> String {
    format!("<td class=\"n\">{}</td>", escape(&pct(s)))
}

fn text_cell(s: &str) -> String {
    format!("<td>{}</td>", escape(s))
}

fn header_row(cells: &[&str]) -> String {
    let mut h = String::from("<tr>");
    for c in cells {
        w!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr>\n");
    h
}

/// `path` relative to `base` when inside it, for display.
fn shown(path: &Path, base: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

/// The SVG document without an XML declaration or doctype (not allowed
/// inside HTML), ready to inline.
fn inline_svg(svg: &str) -> &str {
    let start = svg.find("<svg").unwrap_or(0);
    svg[start..].trim_end()
}

/// The page.
pub(crate) fn page(input: &PageInput<'_>) -> String {
    let PageInput {
        runs,
        rows,
        plots,
        results_dir,
        out_dir,
        provenance,
        warnings,
    } = *input;
    let title = format!("Results of {}", results_dir.display());
    let mut h = String::new();
    w!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"lt-report {}\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&provenance.version),
        escape(&title)
    );
    w!(h, "<h1>{}</h1>\n", escape(&title));
    w!(
        h,
        "<p>Top-1 accuracy in percent on the reported split: mean ± sample standard \
         deviation over seeds (one seed: no ±). Many / Medium / Few: mean per-class \
         accuracy of the classes grouped by training count; All: micro top-1. {} run{}.</p>\n",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );

    let datasets: Vec<&[Run]> = runs.chunk_by(|a, b| a.dataset == b.dataset).collect();
    // Contents.
    h.push_str("<nav><ul>\n");
    for (i, ds) in datasets.iter().enumerate() {
        w!(
            h,
            "<li><a href=\"#ds{i}\">{}</a></li>\n",
            escape(&ds[0].dataset)
        );
    }
    h.push_str("<li><a href=\"#runs\">Runs and configs</a></li>\n");
    if !warnings.is_empty() {
        h.push_str("<li><a href=\"#warnings\">Warnings</a></li>\n");
    }
    h.push_str("<li><a href=\"#about\">Report command and version</a></li>\n</ul></nav>\n");

    for (i, ds) in datasets.iter().enumerate() {
        dataset_section(&mut h, i, ds, rows, plots, out_dir);
    }

    h.push_str("<section id=\"runs\">\n<h2>Runs and configs</h2>\n");
    for (k, r) in runs.iter().enumerate() {
        run_section(&mut h, k, r, results_dir);
    }
    h.push_str("</section>\n");

    if !warnings.is_empty() {
        h.push_str("<section id=\"warnings\">\n<h2>Warnings</h2>\n<ul>\n");
        for wn in warnings {
            w!(h, "<li class=\"warn\">{}</li>\n", escape(wn));
        }
        h.push_str("</ul>\n</section>\n");
    }

    h.push_str("<section id=\"about\">\n<h2>Report command and version</h2>\n<dl>\n");
    w!(
        h,
        "<dt>report command</dt><dd><code>{}</code></dd>\n\
         <dt>version</dt><dd>lt-report {}</dd>\n\
         <dt>results directory</dt><dd><code>{}</code></dd>\n\
         <dt>report directory</dt><dd><code>{}</code> (tables as CSV, JSON and \
         markdown; plots as PNG and SVG under <code>plots/</code>)</dd>\n",
        escape(&provenance.command),
        escape(&provenance.version),
        escape(&results_dir.display().to_string()),
        escape(&out_dir.display().to_string())
    );
    h.push_str("</dl>\n</section>\n</body>\n</html>\n");
    h
}

/// One dataset: class statistics, tables, figures, per-class accuracies.
fn dataset_section(
    h: &mut String,
    i: usize,
    ds: &[Run],
    rows: &[SummaryRow],
    plots: &[InlinePlot],
    out_dir: &Path,
) {
    let dataset = ds[0].dataset.as_str();
    let ds_rows: Vec<&SummaryRow> = rows.iter().filter(|r| r.dataset == dataset).collect();
    w!(h, "<section id=\"ds{i}\">\n<h2>{}</h2>\n", escape(dataset));
    let mut splits: Vec<&str> = ds.iter().map(Run::split).collect();
    splits.sort();
    splits.dedup();
    let rule = ds[0].results.group_rule.as_str();
    w!(
        h,
        "<p>Split: {}. Groups: {}.</p>\n",
        escape(&splits.join(", ")),
        escape(rule)
    );

    let names = class_names(ds);
    class_statistics(h, ds, &names);

    // The Many / Medium / Few / All table.
    h.push_str("<h3>Many / Medium / Few / All</h3>\n<table class=\"summary\">\n");
    h.push_str(&header_row(&[
        "Stage 1", "Method", "Many", "Medium", "Few", "All", "τ", "Seeds",
    ]));
    let best = ds_rows
        .iter()
        .filter_map(|r| r.all.map(|s| s.mean))
        .fold(f64::NEG_INFINITY, f64::max);
    for r in &ds_rows {
        let all = stat_cell(r.all);
        let all = if r.all.is_some_and(|s| s.mean == best) {
            all.replace("<td class=\"n\">", "<td class=\"n best\">")
        } else {
            all
        };
        let tau = match r.tau {
            Some(t) if t.n > 1 => format!("{:.2} ± {:.2}", t.mean, t.std),
            Some(t) => format!("{:.2}", t.mean),
            None => "–".into(),
        };
        w!(
            h,
            "<tr>{}{}{}{}{}{all}<td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            text_cell(&r.sampler_label),
            text_cell(&r.head_label),
            stat_cell(r.many),
            stat_cell(r.medium),
            stat_cell(r.few),
            escape(&tau),
            r.seeds.len()
        );
    }
    h.push_str("</table>\n");

    // Stage 1 x classifier.
    let heads = heads_of(ds);
    let samplers = groups(ds);
    h.push_str(
        "<h3>All: stage 1 × classifier</h3>\n<table class=\"matrix\">\n<tr><th>Stage 1</th>",
    );
    for head in &heads {
        w!(h, "<th>{}</th>", escape(&label_in(ds, head)));
    }
    h.push_str("</tr>\n");
    for g in &samplers {
        w!(h, "<tr>{}", text_cell(&g[0].sampler_label));
        for head in &heads {
            let stat = ds_rows
                .iter()
                .find(|r| r.sampler == g[0].sampler && &r.head == head)
                .and_then(|r| r.all);
            h.push_str(&stat_cell(stat));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");

    let names = names.ok().flatten();
    for (j, g) in samplers.iter().enumerate() {
        sampler_section(h, i, j, g, plots, out_dir, names.as_ref());
    }

    let whole: Vec<&InlinePlot> = plots
        .iter()
        .filter(|p| p.dataset == dataset && p.sampler.is_none())
        .collect();
    if !whole.is_empty() {
        h.push_str("<h3>Stage-1 sampler × classifier</h3>\n");
        for p in whole {
            figure(h, p, out_dir);
        }
    }
    h.push_str("</section>\n");
}

/// The class names of a dataset and their file: [`CLASS_NAMES_FILE`]
/// beside the training list that the first run's `data.json` names (a
/// relative list path is taken from the working directory, as training
/// took it). `Ok(None)` without a file; the file's error in words.
///
/// [`CLASS_NAMES_FILE`]: lt_core::classes::CLASS_NAMES_FILE
fn class_names(ds: &[Run]) -> Result<Option<(Vec<String>, PathBuf)>, String> {
    let Ok(info) = lt_run::DataInfo::read(&lt_run::RunDir::new(&ds[0].dir).data_info()) else {
        return Ok(None);
    };
    let file = Path::new(&info.train.list)
        .parent()
        .unwrap_or(Path::new("."))
        .join(lt_core::classes::CLASS_NAMES_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    let classes = ds[0].results.train_class_counts.len();
    std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            lt_core::classes::parse_class_names(&text, classes).map_err(|e| e.to_string())
        })
        .map(|names| Some((names, file.clone())))
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Classes, images, imbalance ratio and group sizes of the training split
/// (from the first run of the dataset), the other splits' sizes when the
/// run directory has its `data.json`, the class names' file, and the
/// class-count histogram.
fn class_statistics(
    h: &mut String,
    ds: &[Run],
    names: &Result<Option<(Vec<String>, PathBuf)>, String>,
) {
    let r = &ds[0].results;
    let stats = ClassStats::from_counts(r.train_class_counts.clone());
    h.push_str("<h3>Class statistics</h3>\n<table class=\"classes\">\n");
    let counts = stats.counts();
    let row = |h: &mut String, k: &str, v: String| {
        w!(
            h,
            "<tr><th>{}</th><td class=\"n\">{}</td></tr>\n",
            escape(k),
            escape(&v)
        );
    };
    row(h, "classes", stats.num_classes().to_string());
    row(h, "training images", stats.total().to_string());
    if let (Some(max), Some(min)) = (counts.iter().max(), counts.iter().min()) {
        row(h, "images per class (max / min)", format!("{max} / {min}"));
    }
    row(
        h,
        "imbalance ratio",
        stats
            .imbalance_ratio()
            .map_or("undefined (empty class)".into(), |x| format!("{x:.2}")),
    );
    let [many, medium, few] = r.group_sizes;
    row(
        h,
        "many / medium / few classes",
        format!("{many} / {medium} / {few}"),
    );
    if let Ok(info) = lt_run::DataInfo::read(&lt_run::RunDir::new(&ds[0].dir).data_info()) {
        for (name, split) in [("validation", &info.val), ("test", &info.test)] {
            if let Some(s) = split {
                row(
                    h,
                    &format!("{name} images ({})", s.list),
                    s.total.to_string(),
                );
            }
        }
        row(h, "training list", info.train.list.clone());
    }
    match names {
        Ok(Some((_, file))) => row(h, "class names", file.display().to_string()),
        Ok(None) => row(h, "class names", "none (class ids)".into()),
        Err(e) => row(h, "class names", format!("not read: {e}")),
    }
    h.push_str("</table>\n");
    #[cfg(feature = "plot")]
    {
        let shown: &[String] = match names {
            Ok(Some((n, _))) => n,
            _ => &[],
        };
        let fig = crate::class_counts::class_counts_figure(
            &format!("{}: training images per class", ds[0].dataset),
            shown,
            counts,
            &r.group_rule_config,
        );
        if let Ok(svg) = crate::plot::render_svg(&fig) {
            w!(
                h,
                "<figure class=\"plot\" data-plot=\"class_counts\">\n{}\n\
                 <figcaption>class_counts (classes by training images, coloured by \
                 group)</figcaption>\n</figure>\n",
                inline_svg(&svg)
            );
        }
    }
}

/// One stage-1 sampler of a dataset: its figures and tables.
fn sampler_section(
    h: &mut String,
    i: usize,
    j: usize,
    g: &[Run],
    plots: &[InlinePlot],
    out_dir: &Path,
    names: Option<&(Vec<String>, PathBuf)>,
) {
    w!(
        h,
        "<section id=\"ds{i}-s{j}\">\n<h3>Stage 1: {} ({} run{})</h3>\n",
        escape(&g[0].sampler_label),
        g.len(),
        if g.len() == 1 { "" } else { "s" }
    );
    let mine = |name: &str| {
        plots.iter().find(|p| {
            p.dataset == g[0].dataset
                && p.sampler.as_deref() == Some(&g[0].sampler)
                && p.name == name
        })
    };
    let figures: [(&str, &str); 5] = [
        ("per_class", "Per-class accuracy"),
        ("tau", "τ-norm: accuracy against τ"),
        ("weight_norms", "Classifier weight norms"),
        ("reliability", "Reliability diagrams"),
        ("shifted", "Shifted test distributions"),
    ];
    for (name, heading) in figures {
        let plot = mine(name);
        match name {
            "tau" => {
                if plot.is_some() || tau_curve(g).is_some() {
                    w!(h, "<h4>{}</h4>\n", escape(heading));
                }
                if let Some(p) = plot {
                    figure(h, p, out_dir);
                }
                tau_table(h, g);
            }
            "shifted" => {
                if let Some(stats) = shifted_stats(g) {
                    w!(h, "<h4>{}</h4>\n", escape(heading));
                    if let Some(p) = plot {
                        figure(h, p, out_dir);
                    }
                    w!(
                        h,
                        "<p>Top-1 on sub-samples of the test split, forward / backward \
                         long-tailed at each imbalance ({} run{}).</p>\n<table class=\"shifted\">\n",
                        stats.runs,
                        if stats.runs == 1 { "" } else { "s" }
                    );
                    let mut head = vec!["Method".to_string()];
                    head.extend(stats.shifts.iter().map(|s| s.name()));
                    let head: Vec<&str> = head.iter().map(String::as_str).collect();
                    h.push_str(&header_row(&head));
                    for row in &stats.rows {
                        w!(h, "<tr>{}", text_cell(&row.label));
                        for s in &row.top1 {
                            h.push_str(&stat_cell(*s));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</table>\n");
                }
            }
            _ => {
                if let Some(p) = plot {
                    w!(h, "<h4>{}</h4>\n", escape(heading));
                    figure(h, p, out_dir);
                }
            }
        }
    }
    per_class_table(h, g, names.map(|(n, _)| n.as_slice()));
    h.push_str("</section>\n");
}

/// A figure: the SVG inline, captioned with its files.
fn figure(h: &mut String, p: &InlinePlot, out_dir: &Path) {
    w!(
        h,
        "<figure class=\"plot\" data-plot=\"{}\">\n{}\n<figcaption>{} ",
        escape(p.name),
        inline_svg(&p.svg),
        escape(p.name)
    );
    let files: Vec<String> = p
        .files
        .iter()
        .map(|f| format!("<code>{}</code>", escape(&shown(f, out_dir))))
        .collect();
    w!(h, "({})</figcaption>\n</figure>\n", files.join(", "));
}

/// The τ curve as a table (in a collapsed block).
fn tau_table(h: &mut String, g: &[Run]) {
    let Some(curve) = tau_curve(g) else {
        return;
    };
    if let Some((t, how)) = &curve.chosen {
        let value = if t.n > 1 {
            format!("{:.2} ± {:.2}", t.mean, t.std)
        } else {
            format!("{:.2}", t.mean)
        };
        w!(
            h,
            "<p>Chosen τ: {} ({}).</p>\n",
            escape(&value),
            escape(how)
        );
    }
    w!(
        h,
        "<details><summary>τ curve ({}, {} run{})</summary>\n<table class=\"tau\">\n",
        escape(&curve.split),
        curve.runs,
        if curve.runs == 1 { "" } else { "s" }
    );
    h.push_str(&header_row(&["τ", "Many", "Medium", "Few", "All"]));
    for (tau, v) in &curve.points {
        w!(h, "<tr><td class=\"n\">{tau:.2}</td>");
        for x in v {
            h.push_str(&pct_cell(Some(*x)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</details>\n");
}

/// Per-class accuracy of every head (mean over seeds), classes by training
/// count, in a collapsed block.
fn per_class_table(h: &mut String, g: &[Run], names: Option<&[String]>) {
    let classes = num_classes(g);
    if classes == 0 {
        return;
    }
    let heads = heads_of(g);
    let means: Vec<(String, Vec<f64>)> = heads
        .iter()
        .filter_map(|head| per_class_mean(g, head, classes).map(|m| (label_in(g, head), m)))
        .collect();
    let order = class_order(g, classes).unwrap_or_else(|| (0..classes).collect());
    let counts = class_counts(g, classes);
    let groups: Option<Vec<ShotGroup>> =
        counts.map(|c| ClassStats::from_counts(c.to_vec()).groups(&g[0].results.group_rule_config));
    let names = names.filter(|n| n.len() == classes);
    w!(
        h,
        "<details><summary>Per-class accuracy ({} classes, by training images)</summary>\n\
         <table class=\"per-class\">\n<tr><th>Class</th>{}<th>Training images</th><th>Group</th>",
        classes,
        if names.is_some() { "<th>Name</th>" } else { "" }
    );
    for (label, _) in &means {
        w!(h, "<th>{}</th>", escape(label));
    }
    h.push_str("</tr>\n");
    for &c in &order {
        w!(h, "<tr><td class=\"n\">{c}</td>");
        if let Some(n) = names {
            h.push_str(&text_cell(&n[c]));
        }
        match counts {
            Some(n) => {
                w!(h, "<td class=\"n\">{}</td>", n[c]);
            }
            None => h.push_str("<td class=\"n\">–</td>"),
        }
        let group = groups.as_ref().map_or("–", |gs| gs[c].name());
        h.push_str(&text_cell(group));
        for (_, m) in &means {
            h.push_str(&pct_cell(Some(m[c])));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</details>\n");
}

/// One run: identity, stage 1, every head, and its configs.
fn run_section(h: &mut String, k: usize, r: &Run, results_dir: &Path) {
    let res = &r.results;
    w!(
        h,
        "<section id=\"run{k}\">\n<h3>{}</h3>\n<dl>\n",
        escape(&shown(&r.dir, results_dir))
    );
    let s1 = &res.stage1;
    let items: [(&str, String); 9] = [
        ("dataset", r.dataset.clone()),
        ("stage 1", r.sampler_label.clone()),
        ("seed", r.seed.to_string()),
        ("config", res.config_name.clone()),
        ("config hash", res.config_hash.clone()),
        ("architecture", res.arch.clone()),
        ("reported split", r.split().to_string()),
        (
            "stage-1 checkpoint",
            format!(
                "{} (epoch {}, {})",
                s1.checkpoint, s1.epoch, s1.model_select
            ),
        ),
        ("training list sha256", res.train_split_sha256.clone()),
    ];
    for (key, value) in items {
        w!(h, "<dt>{}</dt><dd>{}</dd>\n", escape(key), escape(&value));
    }
    training_commands(h, &r.dir);
    h.push_str("</dl>\n<table class=\"run\">\n");
    let k_label = res.heads.first().map_or("Top-5".to_string(), |x| {
        format!("Top-{}", x.evaluation.top5_k)
    });
    h.push_str(&header_row(&[
        "Method", "Many", "Medium", "Few", "All", &k_label, "Macro", "Macro-F1", "ECE", "τ",
        "Epoch",
    ]));
    for head in &res.heads {
        let e = &head.evaluation;
        w!(
            h,
            "<tr>{}{}{}{}{}{}{}{}{}<td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            text_cell(&head.label),
            pct_cell(e.many),
            pct_cell(e.medium),
            pct_cell(e.few),
            pct_cell(Some(e.top1)),
            pct_cell(Some(e.top5)),
            pct_cell(Some(e.macro_acc)),
            pct_cell(Some(e.macro_f1)),
            pct_cell(Some(e.ece)),
            head.tau.map_or("–".into(), |t| format!("{t:.2}")),
            head.epoch
        );
    }
    h.push_str("</table>\n");
    if !res.skipped.is_empty() {
        w!(
            h,
            "<p>Not evaluated: {}.</p>\n",
            escape(&res.skipped.join("; "))
        );
    }
    for wn in &r.warnings {
        w!(h, "<p class=\"warn\">{}</p>\n", escape(wn));
    }
    configs(h, &r.dir);
    h.push_str("</section>\n");
}

/// The commands that trained the run, from its `commands.json` (the page's
/// own command, at its foot, only drew the report).
fn training_commands(h: &mut String, dir: &Path) {
    let path = dir.join(lt_run::layout::COMMANDS_FILE);
    let dd = match lt_run::Commands::read(&path) {
        Ok(c) if !c.commands.is_empty() => c
            .commands
            .iter()
            .map(|c| {
                format!(
                    "<code>{}</code> (version {})",
                    escape(&c.command),
                    escape(&c.version)
                )
            })
            .collect::<Vec<_>>()
            .join("<br>\n"),
        Ok(_) => "not recorded (<code>commands.json</code> is empty)".to_string(),
        Err(_) if !path.exists() => {
            "not recorded (no <code>commands.json</code>: trained before it was written)"
                .to_string()
        }
        Err(e) => format!("cannot be read: {}", escape(&e.to_string())),
    };
    w!(h, "<dt>training command</dt><dd>{dd}</dd>\n");
}

/// The run's resolved configs (`config.toml`, `config.<command>.toml`),
/// each distinct text once, naming the files that hold it.
fn configs(h: &mut String, dir: &Path) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("config") && n.ends_with(".toml")
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    // config.toml (stage 1) first, then the others by name.
    files.sort_by_key(|p| {
        (
            p.file_name() != Some(lt_run::layout::CONFIG_FILE.as_ref()),
            p.clone(),
        )
    });
    let mut texts: Vec<(Vec<String>, String)> = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => format!("(cannot be read: {e})"),
        };
        match texts.iter_mut().find(|(_, t)| *t == text) {
            Some((names, _)) => names.push(name),
            None => texts.push((vec![name], text)),
        }
    }
    if texts.is_empty() {
        h.push_str("<p>No resolved config in the run directory.</p>\n");
    }
    for (names, text) in texts {
        w!(
            h,
            "<details class=\"config\"><summary>Config: {}</summary>\n<pre>{}</pre>\n</details>\n",
            escape(&names.join(", ")),
            escape(&text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape("<script>&'\""), "&lt;script&gt;&amp;&#39;&quot;");
        assert_eq!(escape("τ-norm"), "τ-norm");
    }

    #[test]
    fn svg_declaration_is_dropped() {
        assert_eq!(
            inline_svg("<?xml version=\"1.0\"?>\n<svg a=\"1\"></svg>\n"),
            "<svg a=\"1\"></svg>"
        );
        assert_eq!(inline_svg("<svg></svg>"), "<svg></svg>");
    }
}
