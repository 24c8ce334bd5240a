//! `lt-cli export`: one head of a run folded into a plain linear layer and
//! written with the backbone as one self-contained safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lt_core::HeadId;

use crate::ModelSource;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// The head to fold into `fc` (see `lt-cli heads`; heads whose logits are
    /// not a linear layer of the features are refused).
    #[arg(long, default_value = "joint", value_parser = crate::head_arg)]
    pub head: HeadId,
    /// The file to write (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export(a: &ExportArgs, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    let exp = crate::open_source(&a.source, "config.export.toml")?;
    let meta = lt_train::export::export_model(&exp, &a.head, &a.out)
        .with_context(|| format!("exporting head `{}`", a.head))?;
    let tau = meta.tau.map_or(String::new(), |t| format!(", tau = {t}"));
    let _ = writeln!(
        out,
        "exported {} ({}{tau}) of {} ({}, {} classes, epoch {} of {}) to {}",
        meta.head,
        meta.head_label,
        meta.source_run,
        meta.arch,
        meta.num_classes,
        meta.epoch,
        meta.checkpoint,
        a.out.display()
    );
    Ok(())
}
