//! Evaluation metrics for long-tailed recognition, on the host.
//!
//! Logits come as a row-major `&[f32]` of shape `(N, C)` (for a candle tensor:
//! `logits.flatten_all()?.to_vec1::<f32>()?`), labels as `&[u32]`. [`evaluate`]
//! computes in one pass:
//!
//! * micro top-1 (the reference "All") and top-5 (k clamped to C);
//! * per-class accuracy on the test labels, their mean ([`Evaluation::macro_acc`]),
//!   and the many / medium / few means, with classes grouped by their
//!   **training** counts through [`lt_core::stats`] (reference: many > 100,
//!   medium 20–100, few < 20);
//! * the confusion matrix, macro-F1 and the expected calibration error (15 bins).
//!
//! Conventions: the prediction is the first index of the largest logit, as
//! `torch.argmax`; for top-k, equal logits rank by class index. A class with no
//! test sample has per-class accuracy NaN and is left out of every mean; a group
//! without any evaluated class is `None`. Empty input, a label out of range and
//! NaN or infinite logits are errors, never silent numbers.
//!
//! The crate holds metric functions only: tables, plots and the reading of
//! result directories are `lt-report`'s, and the files of a run `lt-run`'s.
//!
//! ```
//! use lt_core::stats::{ClassStats, GroupRule, GroupThresholds};
//! use lt_metrics::evaluate;
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
//! assert!((e.macro_acc - 2.5 / 3.0).abs() < 1e-12);
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
mod rows;

pub use calibration::{calibration, Calibration, CalibrationBin, ECE_BINS};
pub use confusion::ConfusionMatrix;
pub use error::MetricsError;
pub use evaluation::{
    evaluate, evaluate_scores, evaluate_with_loss, predictions, subset_top1, top_k_accuracy,
    Evaluation, SampleScore, TOP5,
};
