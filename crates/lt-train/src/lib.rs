//! lt-train: optimiser, learning-rate schedules, checkpoints, experiment
//! configuration, the stage-1 and stage-2 training loops and the evaluation of
//! every classifier head.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod heads;
pub mod model;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod schedule;
pub mod seed;
pub mod stage1;
pub mod stage2;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{RunOptions, StartMode, TrainReport};
