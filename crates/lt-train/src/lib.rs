//! lt-train
