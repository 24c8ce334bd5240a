//! The error type of the metrics.

/// Invalid input to a metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// There is no sample to evaluate.
    #[error("no samples to evaluate (empty labels)")]
    Empty,

    /// The number of classes is zero.
    #[error("the number of classes must be positive")]
    ZeroClasses,

    /// The logits do not hold `labels.len() * num_classes` values.
    #[error("{len} logits do not form a {rows} x {num_classes} matrix (expected {} values)", rows * num_classes)]
    LogitShape {
        /// Number of logit values passed.
        len: usize,
        /// Number of labels (rows).
        rows: usize,
        /// Number of classes (columns).
        num_classes: usize,
    },

    /// A label is not in `0..num_classes`.
    #[error("label {label} at row {row} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Row of the label.
        row: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },

    /// A per-sample score is impossible (prediction out of range, or a
    /// confidence outside (0, 1], which non-finite logits produce).
    #[error("invalid score at row {row}: {reason}")]
    BadScore {
        /// Row of the sample.
        row: usize,
        /// What is wrong.
        reason: String,
    },

    /// A tensor operation failed while scoring logits on their device.
    #[error("scoring logits on the device: {0}")]
    Device(String),

    /// A logit is NaN or infinite.
    #[error("non-finite logit {value} at row {row}, class {class}")]
    NonFiniteLogit {
        /// Row of the logit.
        row: usize,
        /// Class (column) of the logit.
        class: usize,
        /// The value.
        value: f32,
    },

    /// The training class statistics cover a different number of classes.
    #[error("training statistics cover {stats} classes but the logits have {num_classes}")]
    StatsMismatch {
        /// Classes in the training statistics.
        stats: usize,
        /// Classes in the logits.
        num_classes: usize,
    },

    /// Labels and predictions differ in length.
    #[error("{labels} labels but {predictions} predictions")]
    LengthMismatch {
        /// Number of labels.
        labels: usize,
        /// Number of predictions.
        predictions: usize,
    },

    /// `top_k_accuracy` was asked for k = 0.
    #[error("k must be at least 1")]
    ZeroK,

    /// A sample index is not below the number of samples.
    #[error("sample index {index} is out of range for {len} samples")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// Number of samples.
        len: usize,
    },

    /// The calibration error was asked for zero bins.
    #[error("the number of calibration bins must be at least 1")]
    ZeroBins,
}
