//! The crate's error type.

/// Why a sampler could not be built or restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// The label list is empty.
    #[error("labels: the dataset has no samples")]
    EmptyLabels,
    /// A label is not below `num_classes`.
    #[error("labels[{index}] = {label} is out of range: num_classes is {num_classes}")]
    LabelOutOfRange {
        /// Position in the label list.
        index: usize,
        /// The offending label.
        label: u32,
        /// The declared number of classes.
        num_classes: usize,
    },
    /// The class-balanced strategy must be able to draw every class.
    #[error(
        "strategy {strategy}: class {class} has no samples, so it cannot be drawn \
         (labels must cover 0..num_classes; num_classes = {num_classes})"
    )]
    EmptyClass {
        /// The first class without samples.
        class: usize,
        /// The declared number of classes.
        num_classes: usize,
        /// The strategy, as displayed.
        strategy: String,
    },
    /// `batch_size` is 0.
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    /// `world_size` is 0.
    #[error("world_size must be at least 1")]
    ZeroWorldSize,
    /// `rank` is not below `world_size`.
    #[error("rank {rank} is out of range: world_size is {world_size}")]
    RankOutOfRange {
        /// The configured rank.
        rank: usize,
        /// The configured number of ranks.
        world_size: usize,
    },
    /// The global batch cannot be split evenly over the ranks.
    #[error(
        "batch_size {batch_size} is not a multiple of world_size {world_size}: \
         every rank must get an equal share of each global batch"
    )]
    BatchNotDivisible {
        /// The global batch size.
        batch_size: usize,
        /// The number of ranks.
        world_size: usize,
    },
    /// `per_class` is 0 in the class-balanced strategy.
    #[error("strategy class_balanced: per_class must be at least 1")]
    ZeroPerClass,
    /// The power strategy's exponent is NaN or infinite.
    #[error("strategy power: q = {q} must be a finite number")]
    InvalidPower {
        /// The configured exponent.
        q: f64,
    },
    /// `total_epochs` is too small for the progressively-balanced schedule.
    #[error(
        "strategy progressively_balanced: total_epochs = {total_epochs} must be at least \
         {minimum} for lambda = {lambda}"
    )]
    InvalidTotalEpochs {
        /// The configured number of epochs.
        total_epochs: usize,
        /// The smallest valid value for this schedule.
        minimum: usize,
        /// The schedule, as displayed.
        lambda: String,
    },
    /// The configured epoch length yields no batch at all.
    #[error(
        "epoch_length {epoch_length} gives no batch: {num_samples} samples, \
         batch_size {batch_size}"
    )]
    EmptyEpoch {
        /// The configured epoch length, as displayed.
        epoch_length: String,
        /// Number of samples N.
        num_samples: usize,
        /// The global batch size.
        batch_size: usize,
    },
    /// The epoch would hold more indices than fit in memory addresses.
    #[error("epoch_length {epoch_length} with batch_size {batch_size} overflows")]
    EpochTooLong {
        /// The configured epoch length, as displayed.
        epoch_length: String,
        /// The global batch size.
        batch_size: usize,
    },
    /// A saved state does not belong to this sampler's labels or config.
    #[error(
        "sampler state mismatch in `{field}`: the sampler has {expected}, the state has {found}"
    )]
    StateMismatch {
        /// The state field that differs.
        field: &'static str,
        /// This sampler's value.
        expected: String,
        /// The saved value.
        found: String,
    },
    /// A saved state is internally inconsistent (edited or corrupted).
    #[error("sampler state is invalid: {reason}")]
    InvalidState {
        /// What is wrong.
        reason: String,
    },
    /// A shifted test set's imbalance is not a finite number >= 1.
    #[error(
        "imbalance {value} must be a finite number >= 1 (the largest over the smallest \
         class count of a shifted test set)"
    )]
    InvalidImbalance {
        /// The value given.
        value: f64,
    },
    /// A shifted test set needs at least one image of every class.
    #[error(
        "shifted test sets: class {class} has no image in the split (every one of the \
         {num_classes} classes needs one; the split should be balanced)"
    )]
    NoTestImages {
        /// The first class without an image.
        class: usize,
        /// The declared number of classes.
        num_classes: usize,
    },
    /// The head-to-tail class order of a shifted test set is not a
    /// permutation of the classes.
    #[error("shifted test sets: the class order is not a permutation of the classes: {reason}")]
    InvalidClassOrder {
        /// What is wrong.
        reason: String,
    },
}
