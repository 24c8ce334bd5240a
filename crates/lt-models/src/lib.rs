//! lt-models: the paper's backbones in candle.

pub mod ops;
