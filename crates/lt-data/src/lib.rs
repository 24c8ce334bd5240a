//! lt-data: datasets, split lists, long-tailed subsets, class statistics,
//! augmentation, the parallel batch loader, and dataset fetching.
//!
//! | module | what |
//! |---|---|
//! | [`dataset`] | [`Dataset`]: labelled image sources (files or in-memory RGB) |
//! | [`split_list`] | `relative/path label` lists (ImageNet-LT / Places-LT / iNaturalist format), read with checks, written atomically with a JSON summary |
//! | [`cifar`] | the official CIFAR-10 / CIFAR-100 binary releases |
//! | [`image_folder`] | `<root>/<split>/<class>/<file>` folders |
//! | [`scaffold`] | a folder of one's own images (or a split list) to checked, stratified, seeded train / val / test lists (`lt-cli init`) |
//! | [`longtail`] | exponential / step profiles, the exact LDAM-DRW (NumPy) subset, balanced validation hold-outs |
//! | [`decode`] | JPEG / PNG to 8-bit RGB (grayscale, CMYK, alpha handled; truncated files rejected) |
//! | [`transform`] | the reference augmentation presets and normalisations |
//! | [`loader`] | decode + augment on a rayon pool, prefetching batches of `f32 (B, 3, H, W)` tensors |
//! | `fetch` | verify / unpack / index behind `cargo xtask fetch-data` (feature `fetch`) |
//! | [`error`] | [`DataError`], naming the file and line of bad input |
//!
//! Contracts: labels are `u32` in `0..num_classes`; the loader never chooses
//! indices (a sampler does); every random choice is seeded and independent of
//! thread scheduling.
//!
//! # Example
//!
//! A long-tailed subset of a small in-memory dataset, loaded as augmented
//! batches:
//!
//! ```
//! use std::sync::Arc;
//! use lt_data::dataset::{Dataset, ImageSource, Sample};
//! use lt_data::loader::{Loader, LoaderConfig};
//! use lt_data::longtail::{class_counts, numpy_subset, Profile};
//! use lt_core::stats::GroupRule;
//! use lt_data::transform::{Preset, Transform};
//!
//! // 3 classes x 40 grey 32x32 images.
//! let samples = (0..120)
//!     .map(|i| Sample {
//!         image: ImageSource::Rgb8 {
//!             width: 32,
//!             height: 32,
//!             data: Arc::from(vec![(i * 2) as u8; 32 * 32 * 3]),
//!         },
//!         label: (i % 3) as u32,
//!     })
//!     .collect();
//! let full = Dataset::from_samples(samples, 3)?;
//!
//! // Exponential profile with imbalance ratio 10: 40, 12, 4 images.
//! let counts = class_counts(Profile::Exponential, 40, 3, 10.0)?;
//! assert_eq!(counts, [40, 12, 4]);
//! let lt = full.subset(&numpy_subset(full.labels(), &counts, 0)?);
//! assert_eq!(lt.stats().counts(), &[40, 12, 4]);
//! println!("{}", lt.stats().summary(&GroupRule::default(), None));
//!
//! // Batches chosen by the caller, augmented as CIFAR training images.
//! let loader = Loader::new(
//!     Arc::new(lt),
//!     Transform::new(Preset::CifarTrain),
//!     LoaderConfig { threads: 2, seed: 1, ..Default::default() },
//! )?;
//! let batches = vec![(0..16).collect(), (16..56).collect()];
//! let mut seen = 0;
//! for batch in loader.epoch(0, batches) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims()[1..], [3, 32, 32]);
//!     assert_eq!(batch.labels.dims(), &[batch.len()]);
//!     seen += batch.len();
//! }
//! assert_eq!(seen, 56);
//! # Ok::<(), lt_data::error::DataError>(())
//! ```
//!
//! Reading a fetched split (after `cargo xtask fetch-data cifar10`):
//!
//! ```no_run
//! use std::path::Path;
//! let root = Path::new("data/cifar10");
//! let train = lt_data::split_list::read_split_list(
//!     &root.join("cifar10_lt_r100_train.txt"),
//!     root,
//!     Some(10),
//! )?;
//! assert_eq!(train.len(), 12406);
//! # Ok::<(), lt_data::error::DataError>(())
//! ```

pub mod cifar;
pub mod dataset;
pub mod decode;
pub mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod image_folder;
pub mod loader;
pub mod longtail;
pub mod rng;
pub mod scaffold;
pub mod split_list;
pub mod transform;

pub use dataset::{Dataset, ImageSource, Sample};
pub use error::DataError;
pub use loader::{Batch, Loader, LoaderConfig, OnUnreadable};
pub use transform::{Normalization, Preset, Transform};
