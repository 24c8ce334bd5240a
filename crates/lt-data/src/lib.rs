//! lt-data: datasets, split lists, long-tailed subsets, class statistics,
//! augmentation and the parallel batch loader.

pub mod cifar;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod fetch;
pub mod fsutil;
pub mod image_folder;
pub mod loader;
pub mod longtail;
pub mod rng;
pub mod split_list;
pub mod stats;
pub mod transform;
