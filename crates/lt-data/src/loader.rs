//! The parallel batch loader.
//!
//! The caller (a sampler) decides which dataset indices form each batch; the
//! loader decodes and augments them on its own rayon pool, a background thread
//! keeps up to `prefetch_batches` finished batches waiting in a bounded
//! channel, and the consumer receives `f32` `(B, 3, H, W)` tensors with their
//! `u32` labels and the dataset indices.
//!
//! Determinism: sample `k` of an epoch (counting through the batches in the
//! order given) draws its augmentation from the stream
//! `(seed, AUGMENT, epoch, k)` (see [`crate::rng`]), so a given seed, epoch and
//! batch list always give the same tensors, for any thread count.
//!
//! Unreadable images (missing, corrupt, truncated) either abort the epoch
//! with an error naming the file and its list line (`on_unreadable = abort`,
//! the default) or are left out of their batch, logged, and counted
//! (`on_unreadable = skip`; see [`Loader::skipped`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSource};
use crate::decode::{decode_source, RgbImage};
use crate::error::{DataError, Result};
use crate::rng;
use crate::transform::{Preset, Transform};

/// What to do with an image that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreadable {
    /// Stop with an error naming the file (default).
    #[default]
    Abort,
    /// Leave the image out of its batch, log it, and count it.
    Skip,
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Decoding threads of the loader's own pool; 0 = one per available core.
    pub threads: usize,
    /// Finished batches that may wait for the consumer (channel capacity).
    pub prefetch_batches: usize,
    /// Keep decoded images in memory after first use (for small datasets
    /// such as CIFAR; about `W * H * 3` bytes per image).
    pub cache_decoded: bool,
    /// Seed of the augmentation streams.
    pub seed: u64,
    /// Abort on or skip unreadable images.
    pub on_unreadable: OnUnreadable,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            prefetch_batches: 2,
            cache_decoded: false,
            seed: 0,
            on_unreadable: OnUnreadable::Abort,
        }
    }
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Normalised images, `f32` `(B, 3, H, W)` on the CPU.
    pub images: Tensor,
    /// Labels, `u32` `(B,)`.
    pub labels: Tensor,
    /// The dataset index of each image (fewer than requested when unreadable
    /// images were skipped).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no images (never true for yielded batches).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Decoded-image cache, one slot per dataset index.
type Cache = Vec<OnceLock<RgbImage>>;

/// Everything the background thread needs, shared with the loader.
#[derive(Debug)]
struct Shared {
    dataset: Arc<Dataset>,
    transform: Transform,
    config: LoaderConfig,
    pool: rayon::ThreadPool,
    cache: Option<Cache>,
    skipped: AtomicUsize,
}

/// Parallel, prefetching batch loader over a dataset.
#[derive(Debug, Clone)]
pub struct Loader {
    shared: Arc<Shared>,
}

impl Loader {
    /// A loader over `dataset` with `transform`.
    pub fn new(dataset: Arc<Dataset>, transform: Transform, config: LoaderConfig) -> Result<Self> {
        transform.validate()?;
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lt-data-{i}"))
            .build()
            .map_err(|e| DataError::config("loader.threads", e.to_string()))?;
        let cache = config
            .cache_decoded
            .then(|| (0..dataset.len()).map(|_| OnceLock::new()).collect());
        Ok(Self {
            shared: Arc::new(Shared {
                dataset,
                transform,
                config,
                pool,
                cache,
                skipped: AtomicUsize::new(0),
            }),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.shared.dataset
    }

    /// The transform.
    pub fn transform(&self) -> &Transform {
        &self.shared.transform
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.config
    }

    /// Unreadable images skipped so far (all epochs).
    pub fn skipped(&self) -> usize {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Starts loading one epoch in the background and returns its batches in
    /// order. Dropping the iterator early stops the work. Sample `k` of the
    /// epoch (counting through the batches) gets augmentation stream `k`.
    pub fn epoch(&self, epoch: u64, batches: Vec<Vec<usize>>) -> BatchIter {
        let positions = batches
            .iter()
            .scan(0usize, |next, b| {
                let first = *next;
                *next += b.len();
                Some(first)
            })
            .collect();
        self.epoch_at(epoch, batches, positions)
    }

    /// [`Loader::epoch`] with the epoch position of each batch's first sample
    /// given explicitly: a data-parallel rank that loads only its slice of
    /// every global batch passes the slices' global positions, so that every
    /// sample is augmented exactly as in a single-process run, whatever the
    /// number of ranks.
    ///
    /// # Panics
    ///
    /// When `positions` and `batches` differ in length (a caller bug).
    pub fn epoch_at(
        &self,
        epoch: u64,
        batches: Vec<Vec<usize>>,
        positions: Vec<usize>,
    ) -> BatchIter {
        assert_eq!(
            positions.len(),
            batches.len(),
            "Loader::epoch_at: one position per batch"
        );
        let capacity = self.shared.config.prefetch_batches;
        let (tx, rx) = bounded(capacity);
        let shared = self.shared.clone();
        let total = batches.len();
        let handle = std::thread::Builder::new()
            .name(format!("lt-data-epoch-{epoch}"))
            .spawn(move || {
                let skipped_before = shared.skipped.load(Ordering::Relaxed);
                for (b, (indices, position)) in batches.into_iter().zip(positions).enumerate() {
                    let result = shared.load(epoch, b, position, &indices);
                    let stop = result.is_err();
                    match result {
                        Ok(None) => continue,
                        Ok(Some(batch)) => {
                            if tx.send(Ok(batch)).is_err() {
                                return; // consumer gone
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                    if stop {
                        return;
                    }
                }
                let skipped = shared.skipped.load(Ordering::Relaxed) - skipped_before;
                if skipped > 0 {
                    tracing::warn!(
                        epoch,
                        skipped,
                        "skipped {skipped} unreadable images this epoch"
                    );
                }
            });
        match handle {
            Ok(h) => BatchIter {
                rx: Some(rx),
                handle: Some(h),
                remaining: total,
            },
            Err(e) => {
                let (tx, rx) = bounded(1);
                let _ = tx.send(Err(DataError::config(
                    "loader",
                    format!("cannot start the loader thread: {e}"),
                )));
                BatchIter {
                    rx: Some(rx),
                    handle: None,
                    remaining: 1,
                }
            }
        }
    }

    /// Loads one batch now, on the calling thread plus the pool. `position`
    /// is the epoch position of its first sample (it selects the augmentation
    /// streams). `Ok(None)` when every image was unreadable and skipped.
    pub fn load_batch(
        &self,
        epoch: u64,
        position: usize,
        indices: &[usize],
    ) -> Result<Option<Batch>> {
        self.shared.load(epoch, 0, position, indices)
    }
}

impl Shared {
    fn decode(&self, index: usize) -> Result<RgbImage> {
        let source = self.dataset.image(index);
        match (&self.cache, source) {
            (Some(cache), ImageSource::File(_)) => {
                if let Some(img) = cache[index].get() {
                    return Ok(img.clone());
                }
                let img = decode_source(source, self.dataset.origin(index))?;
                Ok(cache[index].get_or_init(|| img).clone())
            }
            _ => decode_source(source, self.dataset.origin(index)),
        }
    }

    fn load(
        &self,
        epoch: u64,
        batch: usize,
        position: usize,
        indices: &[usize],
    ) -> Result<Option<Batch>> {
        let len = self.dataset.len();
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange { batch, index, len });
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let t = &self.transform;
        let seed = self.config.seed;
        // One closure per sample: decode, then augment into `out`.
        let run = |k: usize, img: &RgbImage, out: &mut [f32]| -> Result<()> {
            let mut r = rng::stream(seed, rng::AUGMENT, epoch, (position + k) as u64);
            t.apply(img, &mut r, out).map_err(|e| DataError::Decode {
                what: self.dataset.image(indices[k]).describe(),
                origin: self.dataset.origin(indices[k]),
                source: Box::new(e),
            })
        };
        let fixed_size = !matches!(t.preset, Preset::None | Preset::CifarEval);
        let (w, h, data, results) = if fixed_size {
            // Fused: each worker decodes and writes straight into the batch.
            let (w, h) = t.output_size(1, 1);
            let per = 3 * w as usize * h as usize;
            let mut data = vec![0f32; per * indices.len()];
            let results: Vec<Result<()>> = self.pool.install(|| {
                data.par_chunks_mut(per)
                    .enumerate()
                    .map(|(k, out)| run(k, &self.decode(indices[k])?, out))
                    .collect()
            });
            (w, h, data, results)
        } else {
            // Sizes depend on the images: decode first, check they agree.
            let decoded: Vec<Result<RgbImage>> = self
                .pool
                .install(|| indices.par_iter().map(|&i| self.decode(i)).collect());
            let Some(first) = decoded.iter().flatten().next() else {
                let results = decoded.into_iter().map(|r| r.map(|_| ())).collect();
                return self.finish(indices, 0, 0, Vec::new(), results);
            };
            let (w, h) = t.output_size(first.width, first.height);
            for (k, d) in decoded.iter().enumerate() {
                if let Ok(img) = d {
                    if t.output_size(img.width, img.height) != (w, h) {
                        return Err(DataError::config(
                            "transform.preset",
                            format!(
                                "`{}` keeps image sizes, but batch {batch} mixes {w}x{h} and {}x{} ({}); use a cropping preset",
                                t.preset.name(),
                                img.width,
                                img.height,
                                self.dataset.image(indices[k]).describe()
                            ),
                        ));
                    }
                }
            }
            let per = 3 * w as usize * h as usize;
            let mut data = vec![0f32; per * indices.len()];
            let results: Vec<Result<()>> = self.pool.install(|| {
                data.par_chunks_mut(per)
                    .zip(decoded.into_par_iter())
                    .enumerate()
                    .map(|(k, (out, img))| run(k, &img?, out))
                    .collect()
            });
            (w, h, data, results)
        };
        self.finish(indices, w, h, data, results)
    }

    /// Applies the unreadable-image policy and builds the tensors.
    fn finish(
        &self,
        indices: &[usize],
        w: u32,
        h: u32,
        mut data: Vec<f32>,
        results: Vec<Result<()>>,
    ) -> Result<Option<Batch>> {
        let per = 3 * w as usize * h as usize;
        let mut kept = Vec::with_capacity(indices.len());
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => kept.push(k),
                Err(e)
                    if e.is_unreadable_image()
                        && self.config.on_unreadable == OnUnreadable::Skip =>
                {
                    let total = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(skipped_total = total, "skipping unreadable image: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        if kept.len() < indices.len() {
            // Compact the kept samples to the front.
            for (slot, &k) in kept.iter().enumerate() {
                if slot != k {
                    data.copy_within(k * per..(k + 1) * per, slot * per);
                }
            }
            data.truncate(kept.len() * per);
        }
        let idx: Vec<usize> = kept.iter().map(|&k| indices[k]).collect();
        let labels: Vec<u32> = idx.iter().map(|&i| self.dataset.label(i)).collect();
        let b = idx.len();
        let images = Tensor::from_vec(data, (b, 3, h as usize, w as usize), &Device::Cpu)?;
        let labels = Tensor::from_vec(labels, b, &Device::Cpu)?;
        Ok(Some(Batch {
            images,
            labels,
            indices: idx,
        }))
    }
}

/// The batches of one epoch, produced in the background.
///
/// Yields `Err` once and then ends if a batch fails (bad index, unreadable
/// image under `abort`).
#[derive(Debug)]
pub struct BatchIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        match &item {
            Some(_) => self.remaining = self.remaining.saturating_sub(1),
            None => {
                self.remaining = 0;
                self.rx = None;
                if let Some(h) = self.handle.take() {
                    if h.join().is_err() {
                        return Some(Err(DataError::config(
                            "loader",
                            "the loader thread panicked",
                        )));
                    }
                }
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Closing the channel first makes the producer stop at its next send.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Sample;
    use crate::transform::Normalization;
    use image::ImageFormat;

    fn rgb_dataset(n: usize) -> Arc<Dataset> {
        let samples = (0..n)
            .map(|i| Sample {
                image: ImageSource::Rgb8 {
                    width: 32,
                    height: 32,
                    data: Arc::from(vec![(i * 7 % 256) as u8; 32 * 32 * 3]),
                },
                label: (i % 3) as u32,
            })
            .collect();
        Arc::new(Dataset::from_samples(samples, 3).unwrap())
    }

    fn collect(loader: &Loader, epoch: u64, batches: Vec<Vec<usize>>) -> Vec<Batch> {
        loader.epoch(epoch, batches).map(|b| b.unwrap()).collect()
    }

    fn images(b: &Batch) -> Vec<f32> {
        b.images.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn batches_have_shapes_labels_and_indices() {
        let loader = Loader::new(
            rgb_dataset(10),
            Transform::new(Preset::CifarEval).with_normalization(Normalization::identity()),
            LoaderConfig {
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let out = collect(&loader, 0, vec![vec![0, 4, 5], vec![9]]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].images.dims(), &[3, 3, 32, 32]);
        assert_eq!(out[0].labels.to_vec1::<u32>().unwrap(), [0, 1, 2]);
        assert_eq!(out[0].indices, [0, 4, 5]);
        let v = images(&out[1]);
        assert!((v[0] - (63.0 / 255.0)).abs() < 1e-6);
        let e = loader.epoch(0, vec![vec![1], vec![10]]).collect::<Vec<_>>();
        assert!(e[0].is_ok());
        let msg = e[1].as_ref().unwrap_err().to_string();
        assert!(msg.contains("index 10 is out of range"), "{msg}");
    }

    #[test]
    fn same_seed_same_batches_for_any_thread_count() {
        let batches = vec![vec![3, 1, 4, 1, 5], vec![9, 2, 6]];
        let run = |threads, seed| {
            let l = Loader::new(
                rgb_dataset(10),
                Transform::new(Preset::CifarTrain),
                LoaderConfig {
                    threads,
                    seed,
                    ..Default::default()
                },
            )
            .unwrap();
            collect(&l, 3, batches.clone())
                .iter()
                .map(images)
                .collect::<Vec<_>>()
        };
        let a = run(1, 7);
        assert_eq!(a, run(2, 7));
        assert_eq!(a, run(4, 7));
        assert_ne!(a, run(2, 8));
        // A batch's augmentation depends on the epoch position, not the batch split.
        let l = Loader::new(
            rgb_dataset(10),
            Transform::new(Preset::CifarTrain),
            LoaderConfig {
                seed: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let one = l.load_batch(3, 5, &[9, 2, 6]).unwrap().unwrap();
        assert_eq!(images(&one), a[1]);

        // Two data-parallel ranks, each loading its half of every global batch
        // at the halves' global positions, see the single-process images.
        let global = vec![vec![3, 1, 4, 8], vec![9, 2, 6, 0]];
        let whole: Vec<Vec<f32>> = collect(&l, 3, global.clone()).iter().map(images).collect();
        for rank in 0..2 {
            let halves: Vec<Vec<usize>> = global
                .iter()
                .map(|b| b[2 * rank..2 * rank + 2].to_vec())
                .collect();
            let positions = vec![2 * rank, 4 + 2 * rank];
            let got: Vec<Vec<f32>> = l
                .epoch_at(3, halves, positions)
                .map(|b| images(&b.unwrap()))
                .collect();
            for (g, w) in got.iter().zip(&whole) {
                let per_image = w.len() / 4;
                assert_eq!(g[..], w[2 * rank * per_image..(2 * rank + 2) * per_image]);
            }
        }
        // Without the positions (counting from 0 on each rank), rank 1 would
        // draw other augmentations.
        let naive: Vec<Vec<f32>> = l
            .epoch(3, global.iter().map(|b| b[2..].to_vec()).collect())
            .map(|b| images(&b.unwrap()))
            .collect();
        let per_image = whole[0].len() / 4;
        assert_ne!(naive[0][..], whole[0][2 * per_image..]);
    }

    fn jpeg_dataset(dir: &std::path::Path) -> Arc<Dataset> {
        let img = image::DynamicImage::ImageRgb8(crate::decode::tests::pattern(40, 30));
        let good = crate::decode::tests::encode(&img, ImageFormat::Jpeg);
        std::fs::write(dir.join("a.jpg"), &good).unwrap();
        std::fs::write(dir.join("b.jpg"), &good[..good.len() / 2]).unwrap();
        std::fs::write(
            dir.join("c.png"),
            crate::decode::tests::encode(&img, ImageFormat::Png),
        )
        .unwrap();
        std::fs::write(dir.join("list.txt"), "a.jpg 0\nb.jpg 1\nc.png 1\nd.jpg 0\n").unwrap();
        std::fs::write(dir.join("d.jpg"), &good).unwrap();
        let d = crate::split_list::read_split_list(&dir.join("list.txt"), dir, None).unwrap();
        std::fs::remove_file(dir.join("d.jpg")).unwrap(); // vanished after listing
        Arc::new(d)
    }

    #[test]
    fn unreadable_images_abort_or_skip() {
        let dir = tempfile::tempdir().unwrap();
        let ds = jpeg_dataset(dir.path());
        let t = Transform {
            crop_size: 24,
            ..Transform::new(Preset::ImagenetEval)
        };
        let t = Transform {
            resize_shorter: 24,
            ..t
        };
        let abort = Loader::new(ds.clone(), t.clone(), LoaderConfig::default()).unwrap();
        let r: Vec<_> = abort.epoch(0, vec![vec![0, 1, 2], vec![2]]).collect();
        assert_eq!(r.len(), 1, "stops after the error");
        let e = lt_core::error_chain(r[0].as_ref().unwrap_err());
        assert!(
            e.contains("b.jpg") && e.contains("list.txt:2") && e.contains("truncated"),
            "{e}"
        );

        for cache_decoded in [false, true] {
            let skip = Loader::new(
                ds.clone(),
                t.clone(),
                LoaderConfig {
                    on_unreadable: OnUnreadable::Skip,
                    cache_decoded,
                    ..Default::default()
                },
            )
            .unwrap();
            let out = collect(&skip, 0, vec![vec![0, 1, 2], vec![1, 3], vec![3, 2]]);
            assert_eq!(out.len(), 2, "the all-unreadable batch is dropped");
            assert_eq!(out[0].indices, [0, 2]);
            assert_eq!(out[0].images.dims(), &[2, 3, 24, 24]);
            assert_eq!(out[0].labels.to_vec1::<u32>().unwrap(), [0, 1]);
            assert_eq!(out[1].indices, [2]);
            assert_eq!(skip.skipped(), 4);
            // Image 0 (JPEG) and 2 (PNG of the same pixels) are close.
            let v = images(&out[0]);
            let n = 3 * 24 * 24;
            let diff: f32 = (0..n).map(|i| (v[i] - v[n + i]).abs()).sum::<f32>() / n as f32;
            assert!(diff < 0.2, "{diff}");
        }
    }

    #[test]
    fn cache_gives_identical_batches() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::DynamicImage::ImageRgb8(crate::decode::tests::pattern(32, 32));
        let jpg = crate::decode::tests::encode(&img, ImageFormat::Jpeg);
        let mut list = String::new();
        for i in 0..6 {
            std::fs::write(dir.path().join(format!("{i}.jpg")), &jpg).unwrap();
            list.push_str(&format!("{i}.jpg {}\n", i % 2));
        }
        std::fs::write(dir.path().join("l.txt"), list).unwrap();
        let ds = Arc::new(
            crate::split_list::read_split_list(&dir.path().join("l.txt"), dir.path(), None)
                .unwrap(),
        );
        let mk = |cache_decoded| {
            Loader::new(
                ds.clone(),
                Transform::new(Preset::CifarTrain),
                LoaderConfig {
                    cache_decoded,
                    prefetch_batches: 0,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let (plain, cached) = (mk(false), mk(true));
        let batches = vec![vec![0, 1, 2], vec![3, 4, 5]];
        for epoch in 0..2 {
            let a: Vec<_> = collect(&plain, epoch, batches.clone())
                .iter()
                .map(images)
                .collect();
            let b: Vec<_> = collect(&cached, epoch, batches.clone())
                .iter()
                .map(images)
                .collect();
            assert_eq!(a, b);
        }
        // Early drop of the iterator does not hang.
        let mut it = cached.epoch(5, vec![vec![0]; 50]);
        assert!(it.next().unwrap().is_ok());
        drop(it);
    }

    #[test]
    fn mixed_sizes_need_a_cropping_preset() {
        let samples = [16u32, 20]
            .iter()
            .map(|&s| Sample {
                image: ImageSource::Rgb8 {
                    width: s,
                    height: s,
                    data: Arc::from(vec![0u8; (s * s * 3) as usize]),
                },
                label: 0,
            })
            .collect();
        let ds = Arc::new(Dataset::from_samples(samples, 1).unwrap());
        let l = Loader::new(
            ds.clone(),
            Transform::new(Preset::None),
            LoaderConfig::default(),
        )
        .unwrap();
        let e = l.load_batch(0, 0, &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("cropping preset"), "{e}");
        let l = Loader::new(
            ds,
            Transform::new(Preset::ImagenetTrain),
            LoaderConfig::default(),
        )
        .unwrap();
        let b = l.load_batch(0, 0, &[0, 1]).unwrap().unwrap();
        assert_eq!(b.images.dims(), &[2, 3, 224, 224]);
    }

    #[test]
    fn config_serde() {
        let c: LoaderConfig =
            serde_json::from_str(r#"{"threads":2,"on_unreadable":"skip"}"#).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.on_unreadable, OnUnreadable::Skip);
        assert_eq!(c.prefetch_batches, 2);
        assert!(serde_json::from_str::<LoaderConfig>(r#"{"thread":2}"#).is_err());
    }
}
