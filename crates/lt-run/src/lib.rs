//! lt-run: the files of a run directory, each defined once and typed.
//!
//! The training crate writes these files, the report and the sweep read them,
//! and nobody parses them as loose JSON:
//!
//! | module | file | type |
//! |---|---|---|
//! | [`layout`] | every path inside `<run_dir>/` | [`RunDir`] |
//! | [`results`] | `results.json` (versioned) | [`Results`] |
//! | [`metrics_log`] | `metrics.jsonl`, one line per evaluated epoch | [`EpochRecord`] |
//! | [`checkpoint_meta`] | the metadata of every checkpoint | [`CheckpointMeta`] |
//! | [`cell`] | `cell.json`: a run's place in a sweep grid | [`CellInfo`] |
//! | [`data_info`] | `data.json`: the identity of every split | [`DataInfo`] |
//! | [`lock`] | `lock`: one writer per run directory | [`RunLock`] |
//!
//! ```
//! use lt_core::{HeadId, Stage};
//! use lt_run::RunDir;
//!
//! let run = RunDir::new("runs/cifar100_lt_r100_short");
//! let crt = Stage::Head(HeadId::new_static("crt"));
//! assert!(run.last_checkpoint(&crt).ends_with("checkpoints/crt_last.safetensors"));
//! assert!(run.results().ends_with("results.json"));
//! ```
#![warn(missing_docs)]

pub mod cell;
pub mod checkpoint_meta;
pub mod commands;
pub mod data_info;
mod error;
pub mod export;
pub mod layout;
pub mod lock;
pub mod metrics_log;
pub mod results;
pub mod timings;

pub use cell::CellInfo;
pub use checkpoint_meta::{BestMetric, CheckpointMeta, RngState};
pub use commands::{CommandRecord, Commands};
pub use data_info::DataInfo;
pub use error::RunError;
pub use export::{ExportMeta, ExportNormalization, EXPORT_FORMAT_VERSION, EXPORT_METADATA_KEY};
pub use layout::RunDir;
pub use lock::RunLock;
pub use metrics_log::{EpochRecord, SplitMetrics};
pub use results::{
    HeadResult, Results, ShiftedRow, ShiftedSet, ShiftedTest, Stage1Summary, TauPoint, TauSweep,
    KNOWN_PRIOR_LA,
};
pub use timings::{Phase, Timings};

/// Reads a JSON artefact; errors name the file, and the line and column.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &'static str,
) -> Result<T, RunError> {
    let bytes = lt_core::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| RunError::Json {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Writes a JSON artefact atomically (pretty, with a final newline).
pub(crate) fn write_json<T: serde::Serialize>(
    path: &std::path::Path,
    what: &'static str,
    value: &T,
) -> Result<(), RunError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| RunError::Json {
        path: path.to_path_buf(),
        what,
        source,
    })?;
    bytes.push(b'\n');
    Ok(lt_core::fs::write_atomic(path, &bytes)?)
}
