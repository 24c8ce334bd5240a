//! Evaluation metrics for long-tailed recognition, on the host.
//!
//! Logits come as a row-major `&[f32]` of shape `(N, C)` (for a candle tensor:
//! `logits.flatten_all()?.to_vec1::<f32>()?`), labels as `&[u32]`. [`evaluate`]
//! computes in one pass:
//!
//! * micro top-1 (the reference "All") and top-5 (k clamped to C);
//! * per-class accuracy on the test labels, their mean ([`Evaluation::macro_acc`]),
//!   and the many / medium / few means, with classes grouped by their
//!   **training** counts through [`lt_data::stats`] (reference: many > 100,
//!   medium 20–100, few < 20);
//! * the confusion matrix, macro-F1 and the expected calibration error (15 bins).
//!
//! Conventions: the prediction is the first index of the largest logit, as
//! `torch.argmax`; for top-k, equal logits rank by class index. A class with no
//! test sample has per-class accuracy NaN and is left out of every mean; a group
//! without any evaluated class is `None`. Empty input, a label out of range and
//! NaN or infinite logits are errors, never silent numbers.
//!
//! [`report`] turns a directory of runs (each with the `results.json` of
//! `lt-cli eval`) into CSV / JSON / markdown tables with mean ± std over seeds
//! and, with the default feature `plot`, the study's figures as PNG and SVG
//! (module `plot`, drawn with an embedded font: no system font needed). Depend on
//! `lt-metrics` with `default-features = false` to leave plotting out.
//!
//! ```
//! use lt_data::stats::{ClassStats, GroupRule, GroupThresholds};
//! use lt_metrics::{evaluate, markdown_table, mean_std};
//!
//! # fn main() -> Result<(), lt_metrics::MetricsError> {
//! // Three classes with 150, 50 and 5 training images: many, medium, few.
//! let train = ClassStats::from_counts(vec![150, 50, 5]);
//! let rule = GroupRule::TrainCount(GroupThresholds::default());
//! let logits = [
//!     2.0f32, 1.0, 0.0, // predicts 0, label 0
//!     0.0, 3.0, 1.0, //    predicts 1, label 1
//!     1.0, 0.0, 0.5, //    predicts 0, label 2
//!     0.0, 0.0, 4.0, //    predicts 2, label 2
//! ];
//! let labels = [0u32, 1, 2, 2];
//! let e = evaluate(&logits, 3, &labels, &train, &rule)?;
//! assert_eq!(e.top1, 0.75);
//! assert_eq!((e.many, e.medium, e.few), (Some(1.0), Some(1.0), Some(0.5)));
//! assert_eq!(e.top5, 1.0); // k = min(5, 3)
//! assert_eq!(e.confusion().get(2, 0), 1);
//!
//! let table = markdown_table(&[("Joint", &e)]);
//! assert!(table.contains("| Joint | 100.0 | 100.0 | 50.0 | 75.0 |"));
//! let (mean, std) = mean_std(&[0.40, 0.44]); // sample std over seeds
//! assert!((mean - 0.42).abs() < 1e-12 && (std - 0.02 * 2f64.sqrt()).abs() < 1e-12);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod calibration;
mod confusion;
#[cfg(feature = "candle")]
pub mod device;
mod error;
mod evaluation;
#[cfg(feature = "plot")]
pub mod plot;
pub mod report;
mod rows;
mod table;

pub use calibration::{calibration, Calibration, CalibrationBin, ECE_BINS};
pub use confusion::ConfusionMatrix;
pub use error::MetricsError;
pub use evaluation::{
    evaluate, evaluate_scores, predictions, top_k_accuracy, Evaluation, SampleScore, TOP5,
};
pub use table::{markdown_table, mean_std};
