//! lt-data: datasets, split lists, long-tailed subsets, class statistics,
//! augmentation and the parallel batch loader.

pub mod stats;
