//! `lt-cli predict`: top-k classes of images with a run's head or an
//! exported model, as JSON lines or CSV.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lt_core::HeadId;
use lt_data::dataset::{Dataset, ImageSource, Sample};

use crate::ModelSource;

/// Image file extensions taken from an `--images` folder.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// An exported model (`lt-cli export`) instead of a run.
    #[arg(long, conflicts_with_all = ["config", "run"])]
    pub model: Option<PathBuf>,
    /// A folder of images (searched recursively: .jpg, .jpeg, .png).
    #[arg(long, conflicts_with = "list", required_unless_present = "list")]
    pub images: Option<PathBuf>,
    /// A split list (`<relative/path> <label>` per line); the top-1 accuracy
    /// is printed too.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Root of the list's paths (default: the run's `data.root`, or the
    /// list's folder with `--model`).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Head of the run (see `lt-cli heads`); with `--model`, the exported head.
    #[arg(long, value_parser = crate::head_arg)]
    pub head: Option<HeadId>,
    /// Classes per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Device of an exported model (`cpu`, `cuda:0`); a run uses its config's.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Every image file under `dir`, recursively, in path order.
fn find_images(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading folder {}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        bail!("--images {}: not a folder", dir.display());
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    if out.is_empty() {
        bail!(
            "--images {}: no image files (.{}) in the folder or below it",
            dir.display(),
            IMAGE_EXTENSIONS.join(", .")
        );
    }
    Ok(out)
}

/// The images to classify and, from a list, their labels.
fn inputs(a: &PredictArgs, num_classes: usize, run_root: Option<&Path>) -> Result<(Dataset, bool)> {
    if let Some(list) = &a.list {
        let root = match (&a.image_root, run_root) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r.to_path_buf(),
            (None, None) => list.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        let ds = lt_data::split_list::read_split_list(list, &root, Some(num_classes))
            .map_err(anyhow::Error::new)?;
        return Ok((ds, true));
    }
    let Some(dir) = &a.images else {
        bail!("give --images <folder> or --list <split list>");
    };
    let samples = find_images(dir)?
        .into_iter()
        .map(|p| Sample {
            image: ImageSource::File(p),
            label: 0,
        })
        .collect();
    Ok((Dataset::from_samples(samples, num_classes)?, false))
}

/// One class of a prediction.
#[derive(Debug, serde::Serialize)]
struct Ranked<'a> {
    class: usize,
    name: &'a str,
    prob: f64,
}

/// One output record.
#[derive(Debug, serde::Serialize)]
struct Record<'a> {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<u32>,
    top_k: Vec<Ranked<'a>>,
}

/// Softmax of one row of logits (in f64), classes by decreasing probability
/// (ties to the lower class id), the first `k`.
fn top_k(row: &[f32], k: usize) -> Vec<(usize, f64)> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|c| (c, e[c] / sum)).collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A model's logits of preprocessed images.
type LogitsFn =
    Box<dyn Fn(&candle_core::Tensor) -> Result<candle_core::Tensor, lt_train::TrainError>>;

/// Runs `predict`; the records go to `--out` or `out`.
pub fn predict(a: &PredictArgs, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // The model: logits of preprocessed images, its preprocessing, names.
    let (logits, names, dataset, labelled, transform, device, what): (
        LogitsFn,
        Vec<String>,
        Dataset,
        bool,
        _,
        _,
        String,
    ) = match &a.model {
        Some(path) => {
            let device = lt_train::config::parse_device(&a.device)?;
            let m = lt_train::export::ExportedModel::load(path, &device)
                .with_context(|| format!("loading exported model {}", path.display()))?;
            if let Some(h) = &a.head {
                if h.as_str() != m.meta.head {
                    bail!(
                        "{} holds the head `{}`, not `{h}` (export another head with \
                         `lt-cli export --head {h}`)",
                        path.display(),
                        m.meta.head
                    );
                }
            }
            let (ds, labelled) = inputs(a, m.meta.num_classes, None)?;
            let transform = m.transform()?;
            let what = format!("{} ({})", path.display(), m.meta.head_label);
            let names = m.meta.class_names.clone();
            (
                Box::new(move |x| m.logits(x)),
                names,
                ds,
                labelled,
                transform,
                device,
                what,
            )
        }
        None => {
            let exp = crate::open_source(&a.source, "config.predict.toml")?;
            let head = a
                .head
                .clone()
                .unwrap_or_else(|| HeadId::new_static("joint"));
            let (ds, labelled) = inputs(a, exp.num_classes(), Some(&exp.config.data.root))?;
            let transform = exp.transform(exp.config.data.eval_preset);
            let names = lt_train::export::class_names(&exp)?;
            let model = lt_train::export::build_head(&exp, &head)
                .with_context(|| format!("building head `{head}`"))?;
            let what = match model.tau {
                Some(t) => format!("{} ({}, tau = {t})", exp.run.root().display(), model.label),
                None => format!("{} ({})", exp.run.root().display(), model.label),
            };
            (
                Box::new(move |x| model.logits(x)),
                names,
                ds,
                labelled,
                transform,
                exp.device.clone(),
                what,
            )
        }
    };
    let dataset = Arc::new(dataset);
    let c = names.len();
    let host = lt_train::export::dataset_logits(
        logits,
        dataset.clone(),
        transform,
        a.batch_size,
        2,
        &device,
    )
    .context("prediction failed")?;
    let k = a.top_k.min(c);
    let mut text = String::new();
    if a.format == Format::Csv {
        let mut head = vec!["image".to_string()];
        if labelled {
            head.push("label".into());
        }
        for r in 1..=k {
            head.extend([
                format!("class_{r}"),
                format!("name_{r}"),
                format!("prob_{r}"),
            ]);
        }
        let _ = writeln!(text, "{}", head.join(","));
    }
    let mut hits = 0usize;
    for (i, row) in host.chunks_exact(c).enumerate() {
        let image = dataset.image(i).describe();
        let label = labelled.then(|| dataset.label(i));
        let ranked = top_k(row, k);
        if label.is_some_and(|y| ranked[0].0 == y as usize) {
            hits += 1;
        }
        match a.format {
            Format::Jsonl => {
                let rec = Record {
                    image,
                    label,
                    top_k: ranked
                        .iter()
                        .map(|&(class, prob)| Ranked {
                            class,
                            name: &names[class],
                            prob,
                        })
                        .collect(),
                };
                let _ = writeln!(text, "{}", serde_json::to_string(&rec)?);
            }
            Format::Csv => {
                let mut fields = vec![csv_field(&image)];
                if let Some(y) = label {
                    fields.push(y.to_string());
                }
                for &(class, prob) in &ranked {
                    fields.extend([
                        class.to_string(),
                        csv_field(&names[class]),
                        format!("{prob}"),
                    ]);
                }
                let _ = writeln!(text, "{}", fields.join(","));
            }
        }
    }
    let n = dataset.len();
    let accuracy = labelled.then(|| {
        format!(
            "top-1 accuracy: {:.2}% ({hits} of {n} images of {}) with {what}",
            100.0 * hits as f64 / n as f64,
            a.list.as_deref().unwrap_or(Path::new("?")).display()
        )
    });
    match &a.out {
        Some(path) => {
            lt_core::fs::write_atomic(path, text.as_bytes())?;
            let _ = writeln!(out, "wrote {} predictions to {}", n, path.display());
            if let Some(acc) = accuracy {
                let _ = writeln!(out, "{acc}");
            }
        }
        None => {
            out.push_str(&text);
            if let Some(acc) = accuracy {
                eprintln!("{acc}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_softmax() {
        let r = top_k(&[1.0, 3.0, 2.0, 3.0], 3);
        assert_eq!(r.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 2]);
        let all: f64 = top_k(&[1.0, 3.0, 2.0, 3.0], 4).iter().map(|p| p.1).sum();
        assert!((all - 1.0).abs() < 1e-12);
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
