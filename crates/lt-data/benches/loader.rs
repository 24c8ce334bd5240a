//! Loader throughput: `cargo bench -p lt-data` (or
//! `cargo bench -p lt-data --bench loader -- --threads 2`).
//!
//! Generates JPEG fixtures with the `image` encoder in a temp dir, then
//! measures images per second through the full path (file read, JPEG decode,
//! augmentation, normalisation, tensor) on the loader's own pool:
//!
//! * 32x32 JPEGs with `cifar_train` (pad + crop + flip), without and with the
//!   decoded-image cache; the target is >= 10,000 images/s on 2 threads;
//! * ~500x375 JPEGs to 224x224 with `imagenet_train` (RandomResizedCrop, flip,
//!   ColorJitter), `inaturalist_train` and `imagenet_eval`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use lt_data::dataset::Dataset;
use lt_data::loader::{Loader, LoaderConfig};
use lt_data::split_list::{read_split_list, write_split_list, SplitEntry};
use lt_data::transform::{Preset, Transform};
use rand::{Rng, SeedableRng};

/// A natural-looking test image: smooth colour gradients, a few blobs and
/// noise, so JPEG sizes are realistic (about 1 KB at 32x32).
fn synthetic(w: u32, h: u32, seed: u64) -> image::RgbImage {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let base: [f32; 3] = std::array::from_fn(|_| rng.random_range(40.0..200.0));
    let grad: [f32; 3] = std::array::from_fn(|_| rng.random_range(-80.0..80.0));
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
        .map(|_| {
            (
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.05..0.3),
                std::array::from_fn(|_| rng.random_range(-90.0..90.0)),
            )
        })
        .collect();
    image::RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let px: [u8; 3] = std::array::from_fn(|c| {
            let mut val = base[c] + grad[c] * (u - v);
            for (bx, by, r, col) in &blobs {
                let d2 = (u - bx).powi(2) + (v - by).powi(2);
                val += col[c] * (-d2 / (r * r)).exp();
            }
            val += rng.random_range(-12.0..12.0);
            val.clamp(0.0, 255.0) as u8
        });
        image::Rgb(px)
    })
}

fn write_fixtures(dir: &Path, n: usize, w: u32, h: u32, classes: u32) -> Dataset {
    std::fs::create_dir_all(dir).unwrap();
    let mut entries = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for i in 0..n {
        let name = format!("{i:05}.jpg");
        let mut buf = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(synthetic(w, h, i as u64))
            .write_to(&mut buf, image::ImageFormat::Jpeg)
            .unwrap();
        bytes += buf.get_ref().len();
        std::fs::write(dir.join(&name), buf.into_inner()).unwrap();
        entries.push(SplitEntry::new(name, i as u32 % classes));
    }
    let list = dir.join("list.txt");
    write_split_list(&list, &entries).unwrap();
    println!(
        "  fixtures: {n} JPEGs of {w}x{h}, {:.1} KB each on average",
        bytes as f64 / n as f64 / 1024.0
    );
    read_split_list(&list, dir, Some(classes as usize)).unwrap()
}

fn batches(n: usize, batch: usize, epoch: u64) -> Vec<Vec<usize>> {
    // A fixed shuffle per epoch, as a sampler would give.
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(epoch);
    for i in (1..n).rev() {
        idx.swap(i, rng.random_range(0..=i));
    }
    idx.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// Images per second over `epochs` epochs after one warm-up epoch.
fn measure(loader: &Loader, n: usize, batch: usize, epochs: u64) -> f64 {
    for b in loader.epoch(0, batches(n, batch, 0)) {
        b.unwrap();
    }
    let start = Instant::now();
    let mut images = 0usize;
    for e in 1..=epochs {
        for b in loader.epoch(e, batches(n, batch, e)) {
            let b = b.unwrap();
            images += b.len();
            std::hint::black_box(&b.images);
        }
    }
    images as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut threads = 2usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--threads") {
        threads = args.get(i + 1).and_then(|t| t.parse().ok()).unwrap_or(2);
    }
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "loader throughput, {threads} loader threads ({} cores available)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    println!("32x32 JPEG, cifar_train (pad 4, random crop 32, flip), batch 128:");
    let small = Arc::new(write_fixtures(&tmp.path().join("small"), 8192, 32, 32, 10));
    for cache_decoded in [false, true] {
        let loader = Loader::new(
            small.clone(),
            Transform::new(Preset::CifarTrain),
            LoaderConfig {
                threads,
                cache_decoded,
                ..Default::default()
            },
        )
        .unwrap();
        let rate = measure(&loader, small.len(), 128, 3);
        println!(
            "  cache_decoded = {cache_decoded:<5}: {rate:>9.0} images/s {}",
            if rate >= 10_000.0 {
                "(>= 10,000: ok)"
            } else {
                "(below the 10,000 target)"
            }
        );
    }

    println!("500x375 JPEG to 224x224, batch 64:");
    let large = Arc::new(write_fixtures(&tmp.path().join("large"), 384, 500, 375, 4));
    for preset in [
        Preset::ImagenetTrain,
        Preset::InaturalistTrain,
        Preset::ImagenetEval,
    ] {
        let loader = Loader::new(
            large.clone(),
            Transform::new(preset),
            LoaderConfig {
                threads,
                ..Default::default()
            },
        )
        .unwrap();
        let rate = measure(&loader, large.len(), 64, 2);
        println!("  {:<18}: {rate:>7.0} images/s", preset.name());
    }
}
