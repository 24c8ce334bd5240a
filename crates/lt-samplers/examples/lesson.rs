//! A lesson in re-sampling a long-tailed dataset.
//!
//! ```text
//! cargo run -p lt-samplers --example lesson
//! ```
//!
//! In a long-tailed training set a few head classes have many images and the
//! tail classes few. Drawing every image equally often (instance-balanced)
//! lets the head dominate the loss, so the classifier learns to favour it.
//! Re-sampling changes how often each *class* is drawn: p_j ∝ n_j^q, with
//! q = 1 instance-balanced, q = 0 class-balanced and q = ½ square-root.
//! The program draws one epoch under each and prints how often each class
//! came up next to that formula.

use lt_samplers::{EpochLength, Sampler, SamplerConfig, SamplerError, Strategy};

fn main() -> Result<(), SamplerError> {
    // Four classes with 100, 30, 10 and 3 images (N = 143). The sampler only
    // needs the label of every dataset index; their order does not matter.
    let counts = [100usize, 30, 10, 3];
    let labels: Vec<u32> = (0u32..)
        .zip(counts)
        .flat_map(|(class, n)| std::iter::repeat_n(class, n))
        .collect();
    let n_total = labels.len() as f64;

    for (strategy, q) in [
        (Strategy::InstanceBalanced, 1.0),
        (Strategy::class_balanced(), 0.0),
        (Strategy::SquareRoot, 0.5),
    ] {
        // A normal epoch is floor(N / B) batches: 128 draws here, too few to
        // see the 3-image class's share clearly. A long epoch of 10,000
        // batches of 16 shows the law, not the noise.
        let config = SamplerConfig {
            strategy: strategy.clone(),
            batch_size: 16,
            epoch_length: EpochLength::Batches(10_000),
            seed: 0,
            ..SamplerConfig::default()
        };
        let mut sampler = Sampler::new(&labels, counts.len(), config)?;
        let mut drawn = [0usize; 4];
        for index in sampler.next_epoch().into_iter().flatten() {
            drawn[labels[index] as usize] += 1;
        }
        let total: usize = drawn.iter().sum();

        // The theory, computed by hand: p_j = n_j^q / sum_k n_k^q.
        let weight = |n: usize| (n as f64).powf(q);
        let norm: f64 = counts.iter().map(|&n| weight(n)).sum();

        println!("{strategy}  (q = {q})");
        println!("  class  n_j   drawn  theory  views per image");
        for (j, &n) in counts.iter().enumerate() {
            let share = drawn[j] as f64 / total as f64;
            // How often one image of class j is seen per N draws, relative
            // to instance-balanced (1.0): the price of balancing the classes.
            let views = share * n_total / n as f64;
            println!(
                "  {j:>5} {n:>4}  {share:.4}  {:.4}  {views:>6.2}",
                weight(n) / norm
            );
        }
        println!();
    }
    // What to read from the tables:
    // * q = 1: the head class takes 70% of the draws and the 3-image class
    //   2%; the classifier sees the tail too rarely to learn it.
    // * q = 0: every class gets 25%, but each tail image is repeated about
    //   12 times as often as under q = 1 while head images are under-used;
    //   fine for re-training only the classifier on frozen features (cRT),
    //   prone to over-fitting the tail when learning the features.
    // * q = 1/2: a compromise; the head still leads, the tail is lifted.
    // q = 1 and q = 0 match the theory to the printed digits: instance-balanced
    // walks permutations of the dataset (each image once per pass) and the
    // reference class-balanced sampler walks the classes in a cycle.
    // Square-root draws i.i.d., so it is off by sampling noise that shrinks
    // as the epoch grows.
    Ok(())
}
