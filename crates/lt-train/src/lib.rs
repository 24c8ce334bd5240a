//! lt-train: optimiser, learning-rate schedules, checkpoints, experiment
//! configuration, the stage-1 and stage-2 training loops and the evaluation of
//! every classifier head.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod error;
pub mod optim;
pub mod schedule;

pub use error::TrainError;
