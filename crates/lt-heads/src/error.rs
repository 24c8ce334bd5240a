//! The error type of every fallible head operation.

use std::path::PathBuf;

/// Errors raised while building, fitting, saving or loading a classifier head.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// An error from a tensor operation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A tensor had the wrong shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// Which input was wrong (for example `"NCM features"`).
        what: &'static str,
        /// The expected shape or dtype, in words.
        expected: String,
        /// What was passed.
        got: String,
    },

    /// A size argument (feature dimension, number of classes) was zero.
    #[error("{what} must be positive, got 0")]
    ZeroSize {
        /// Which size.
        what: &'static str,
    },

    /// A label was not in `0..num_classes`.
    #[error("label {label} at row {row} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Row of the offending label.
        row: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },

    /// The number of labels differs from the number of feature rows.
    #[error("{labels} labels for {rows} feature rows")]
    LabelCount {
        /// Number of labels passed.
        labels: usize,
        /// Number of feature rows.
        rows: usize,
    },

    /// A class has no training feature, so it has no centroid.
    #[error(
        "class {class} has no training features; every class needs at least one for its centroid"
    )]
    EmptyClass {
        /// The class without features.
        class: usize,
    },

    /// A feature value was NaN or infinite.
    #[error("non-finite feature value at row {row}, column {col}")]
    NonFiniteFeature {
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
    },

    /// A classifier weight row has zero norm, so `w / ||w||^tau` is undefined.
    #[error("row {class} of the classifier weight has zero norm; tau-normalisation with tau = {tau} is undefined")]
    ZeroNormRow {
        /// The class whose weight row is zero.
        class: usize,
        /// The requested tau.
        tau: f64,
    },

    /// A tau value was NaN or infinite.
    #[error("tau must be finite, got {0}")]
    InvalidTau(f64),

    /// `select_tau` got no point with a finite tau and a finite score.
    #[error("the tau curve has no point with a finite tau and a finite score")]
    EmptyTauCurve,

    /// A variable of that name already exists in the `VarMap` with another shape or dtype.
    #[error("variable `{name}` already exists in the VarMap as {existing}, cannot register it as {requested}")]
    VarConflict {
        /// Variable name.
        name: String,
        /// Shape and dtype of the existing variable.
        existing: String,
        /// Shape and dtype requested.
        requested: String,
    },

    /// The `VarMap` mutex was poisoned by a panic in another thread.
    #[error("the VarMap lock is poisoned")]
    PoisonedVarMap,

    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file was readable but its content is not what was expected.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
