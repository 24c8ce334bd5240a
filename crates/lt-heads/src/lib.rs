//! lt-heads
