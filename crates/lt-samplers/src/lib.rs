//! lt-samplers
