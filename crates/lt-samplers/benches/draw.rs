//! Time to draw 1,000,000 indices over an iNaturalist-sized long tail
//! (8,142 classes, counts from 1,000 down to 2, N ≈ 437k) for every strategy.
//!
//! ```text
//! cargo bench -p lt-samplers --bench draw
//! ```
//!
//! One epoch is 1,000 global batches of 1,000 indices. Each strategy draws
//! three epochs; the median epoch time is reported, along with the time to
//! build the sampler and to restore a saved state. Target: well under a
//! second per strategy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lt_samplers::{CbDraw, EpochLength, Sampler, SamplerConfig, Strategy};

const CLASSES: usize = 8_142;
const BATCH: usize = 1_000;
const BATCHES: usize = 1_000;

/// Zipf-like counts n_i = max(2, floor(1000 (k / (i + k))^a)) with k = 610
/// and a chosen so that the last class has 2: about 437k samples, close to
/// iNaturalist 2018's 437,513.
fn inat_like_labels() -> Vec<u32> {
    let k = 610.0;
    let a = (500.0f64).ln() / ((CLASSES as f64 - 1.0 + k) / k).ln();
    let counts: Vec<usize> = (0..CLASSES)
        .map(|i| ((1000.0 * (k / (i as f64 + k)).powf(a)) as usize).max(2))
        .collect();
    // Interleave classes so dataset order carries no class information.
    let mut labels: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
        .collect();
    let n = labels.len();
    for i in 0..n {
        let j = (i * 7_919) % n;
        labels.swap(i, j);
    }
    labels
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let labels = inat_like_labels();
    println!(
        "{} samples, {CLASSES} classes; {} indices per epoch ({BATCHES} batches of {BATCH})",
        labels.len(),
        BATCH * BATCHES
    );
    let strategies: Vec<(Strategy, usize)> = vec![
        (Strategy::InstanceBalanced, 1),
        (Strategy::class_balanced(), 1),
        (
            Strategy::ClassBalanced {
                draw: CbDraw::ClassUniformIid,
                per_class: 1,
            },
            1,
        ),
        (Strategy::SquareRoot, 1),
        (Strategy::Power { q: 0.5 }, 1),
        (Strategy::progressively_balanced(90), 1),
        (Strategy::class_balanced(), 8),
    ];
    println!(
        "{:<48} {:>6} {:>11} {:>11} {:>10} {:>11}",
        "strategy", "ranks", "build", "epoch (1M)", "ns/index", "restore"
    );
    for (strategy, world_size) in strategies {
        let config = SamplerConfig {
            strategy: strategy.clone(),
            batch_size: BATCH,
            epoch_length: EpochLength::Batches(BATCHES),
            seed: 1,
            rank: world_size - 1,
            world_size,
            shuffle_in_batch: false,
        };
        let start = Instant::now();
        let mut sampler = Sampler::new(&labels, CLASSES, config.clone()).expect("valid config");
        let build = start.elapsed();
        let mut times = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let epoch = black_box(sampler.next_epoch());
            times.push(start.elapsed());
            assert_eq!(epoch.len(), BATCHES);
        }
        let epoch = median(times);
        let state = sampler.state();
        let mut resumed = Sampler::new(&labels, CLASSES, config).expect("valid config");
        let start = Instant::now();
        resumed.restore(state).expect("own state");
        let restore = start.elapsed();
        println!(
            "{:<48} {:>6} {:>9.1}ms {:>9.1}ms {:>10.1} {:>9.1}ms",
            strategy.to_string(),
            world_size,
            build.as_secs_f64() * 1e3,
            epoch.as_secs_f64() * 1e3,
            epoch.as_secs_f64() * 1e9 / (BATCH * BATCHES) as f64,
            restore.as_secs_f64() * 1e3,
        );
    }
}
