//! lt-metrics
