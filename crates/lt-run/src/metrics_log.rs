//! `metrics.jsonl`: one JSON line per evaluated epoch and stage.
//!
//! The log is append-only while a stage trains. A resumed or restarted stage
//! drops its own lines past the epoch it restarts from; the lines it keeps are
//! copied byte for byte, never re-serialised, so a resume changes no digit of
//! an earlier record.

use std::io::Write;
use std::path::Path;

use lt_core::fs::FsError;
use lt_core::Stage;
use serde::{Deserialize, Serialize};

use crate::RunError;

/// Metrics of one split at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Top-1 accuracy (micro).
    pub top1: f64,
    /// Many-shot accuracy (mean of per-class accuracies), if the group is not empty.
    pub many: Option<f64>,
    /// Medium-shot accuracy.
    pub medium: Option<f64>,
    /// Few-shot accuracy.
    pub few: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
}

impl SplitMetrics {
    /// The short summary of a full evaluation with its mean loss.
    pub fn of(e: &lt_metrics::Evaluation, loss: f64) -> Self {
        SplitMetrics {
            top1: e.top1,
            many: e.many,
            medium: e.medium,
            few: e.few,
            loss,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// `stage1`, or the trained head (`crt`, `lws`, ...).
    pub stage: Stage,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimiser steps so far.
    pub global_step: u64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training top-1 over the epoch (on the sampled, augmented batches).
    pub train_top1: f64,
    /// Images per second over the epoch.
    pub images_per_sec: f64,
    /// Validation metrics, when evaluated this epoch.
    pub val: Option<SplitMetrics>,
    /// Test metrics, when evaluated this epoch.
    pub test: Option<SplitMetrics>,
    /// Whether this epoch is the best so far on validation.
    pub is_best: bool,
}

fn serialise(path: &Path, record: &EpochRecord) -> Result<String, RunError> {
    serde_json::to_string(record).map_err(|source| RunError::Json {
        path: path.to_path_buf(),
        what: "metrics record",
        source,
    })
}

/// Appends one record to the log.
pub fn append_record(path: &Path, record: &EpochRecord) -> Result<(), RunError> {
    let mut line = serialise(path, record)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| FsError::new("opening", path, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| FsError::new("appending to", path, e))?;
    Ok(())
}

/// The lines of the log with their records (an absent file is empty).
///
/// A last line without its newline that does not parse is a record cut by a
/// crash or a full disk while it was appended: it is dropped with a warning
/// (the epoch it described is redone on resume). Any other bad line is an
/// error naming the file and line.
fn read_lines(path: &Path) -> Result<Vec<(String, EpochRecord)>, RunError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("reading", path, e).into()),
    };
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let count = text.lines().count();
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(r) => out.push((l.to_string(), r)),
            Err(_) if torn_tail && i + 1 == count => {
                tracing::warn!(
                    "{}:{}: dropping a cut last line (the process stopped while writing it)",
                    path.display(),
                    i + 1
                );
            }
            Err(source) => {
                return Err(RunError::BadLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// Reads every record of the log (an absent file is empty).
pub fn read_records(path: &Path) -> Result<Vec<EpochRecord>, RunError> {
    Ok(read_lines(path)?.into_iter().map(|(_, r)| r).collect())
}

/// Keeps only the records a resumed or restarted stage has not redone: those
/// of other stages, and of `stage` up to epoch `keep_through` (0 drops them
/// all). Kept lines are copied unchanged.
pub fn truncate_records(path: &Path, stage: &Stage, keep_through: usize) -> Result<(), RunError> {
    if !path.exists() {
        return Ok(());
    }
    let mut text = String::new();
    for (line, r) in read_lines(path)? {
        if &r.stage != stage || r.epoch <= keep_through {
            text.push_str(&line);
            text.push('\n');
        }
    }
    Ok(lt_core::fs::write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stage: &str, epoch: usize) -> EpochRecord {
        EpochRecord {
            stage: stage.parse().unwrap(),
            epoch,
            global_step: epoch as u64 * 10,
            lr: 0.1,
            train_loss: 1.0,
            train_top1: 0.5,
            images_per_sec: 100.0,
            val: None,
            test: None,
            is_best: false,
        }
    }

    #[test]
    fn append_read_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        for r in [
            rec("stage1", 1),
            rec("stage1", 2),
            rec("crt", 1),
            rec("stage1", 3),
        ] {
            append_record(&p, &r).unwrap();
        }
        assert_eq!(read_records(&p).unwrap().len(), 4);
        truncate_records(&p, &Stage::Stage1, 1).unwrap();
        let left = read_records(&p).unwrap();
        assert_eq!(left, vec![rec("stage1", 1), rec("crt", 1)]);
        std::fs::write(&p, "{not json}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:1"), "{e}");
    }

    #[test]
    fn a_cut_last_line_is_dropped_and_other_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        append_record(&p, &rec("stage1", 1)).unwrap();
        let full = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{full}{}", &full[..full.len() / 2])).unwrap();
        assert_eq!(read_records(&p).unwrap(), vec![rec("stage1", 1)]);
        // Truncating for a resume removes the cut line from the file.
        truncate_records(&p, &Stage::Stage1, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), full);
        // A bad line that ends with its newline is not a cut append.
        std::fs::write(&p, format!("{full}{{oops}}\n")).unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:2"), "{e}");
    }

    #[test]
    fn truncation_copies_kept_lines_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        // A value whose shortest round trip is not how it was written.
        let line = r#"{"stage":"stage1","epoch":1,"global_step":3,"lr":0.1000000000000000055511151231257827,"train_loss":2.30258509299404568401,"train_top1":0.1,"images_per_sec":99.5,"val":null,"test":null,"is_best":false}"#;
        std::fs::write(&p, format!("{line}\n")).unwrap();
        append_record(&p, &rec("stage1", 2)).unwrap();
        truncate_records(&p, &Stage::Stage1, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{line}\n"));
    }
}
