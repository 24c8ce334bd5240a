//! `lt-cli convert`: a PyTorch checkpoint (`.pth`, `.pth.tar`) to a
//! safetensors file, or into a run as its finished stage 1.
//!
//! ```text
//! lt-cli convert resnext50_uniform_e90.pth resnext50.safetensors [--arch resnext50_32x4d]
//! lt-cli convert resnext50_uniform_e90.pth --config configs/imagenet_lt_x50.toml [--overwrite]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::ModelSource;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint: a torchvision state dict, a training
    /// checkpoint with a `state_dict`, or a classifier-balancing release.
    pub input: PathBuf,
    /// The safetensors file to write (torchvision names, the classifier as
    /// `fc.*`); leave out with --config / --run.
    pub output: Option<PathBuf>,
    /// Check the backbone against this architecture (default: the one its
    /// keys and shapes match).
    #[arg(long, conflicts_with_all = ["config", "run"])]
    pub arch: Option<lt_train::torch_import::Arch>,
    /// Import it as the finished stage 1 of this run instead (its backbone
    /// and joint head), ready for `eval`, `tau-sweep`, `retrain`, `run --resume`.
    #[command(flatten)]
    pub run: ModelSource,
    /// Replace the run's stage 1, removing what was built on it.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn convert(a: &ConvertArgs, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    let into_run = a.run.config.is_some() || a.run.run.is_some();
    match (&a.output, into_run) {
        (Some(_), true) => bail!("give an output file or --config / --run, not both"),
        (None, false) => bail!("give an output file, or --config / --run to import into a run"),
        _ => {}
    }
    if let Some(output) = &a.output {
        let r = lt_train::torch_import::convert(&a.input, output, a.arch)
            .with_context(|| format!("converting {}", a.input.display()))?;
        let _ = writeln!(
            out,
            "{} ({}, {}): {} tensors written to {}{}",
            a.input.display(),
            r.layout,
            r.arch,
            r.tensors,
            output.display(),
            if r.classifier.is_empty() {
                String::new()
            } else {
                format!(" (classifier: {})", r.classifier.join(", "))
            }
        );
        if !r.ignored.is_empty() {
            let _ = writeln!(out, "not converted: {}", summarise(&r.ignored));
        }
        return Ok(());
    }
    let exp = crate::open_source(&a.run, "config.toml")?;
    let r = lt_train::torch_import::import_stage1(&exp, &a.input, a.overwrite)
        .with_context(|| format!("importing {} as stage 1", a.input.display()))?;
    let _ = writeln!(
        out,
        "{} ({}, sha256 {}) imported as stage 1 of {}: {}",
        a.input.display(),
        r.layout,
        r.source_sha256,
        exp.run.root().display(),
        r.checkpoints
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !r.removed.is_empty() {
        let _ = writeln!(
            out,
            "removed the previous stage 1 and what was built on it: {}",
            summarise(
                &r.removed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            )
        );
    }
    if !r.ignored.is_empty() {
        let _ = writeln!(out, "not imported: {}", summarise(&r.ignored));
    }
    Ok(())
}

/// At most eight names, then a count.
fn summarise(names: &[String]) -> String {
    let mut s = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(&format!(", ... and {} more", names.len() - 8));
    }
    s
}
