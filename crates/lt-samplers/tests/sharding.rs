//! Shards are disjoint, equally long slices of one global stream.

mod common;

use common::*;
use lt_samplers::{Sampler, SamplerConfig, Strategy};

fn sharded(
    strategy: &Strategy,
    world_size: usize,
    rank: usize,
    shuffle_in_batch: bool,
) -> SamplerConfig {
    SamplerConfig {
        strategy: strategy.clone(),
        batch_size: 16,
        seed: 42,
        rank,
        world_size,
        shuffle_in_batch,
        ..SamplerConfig::default()
    }
}

/// For every strategy, with and without the in-batch shuffle, and W = 2, 4,
/// 8: the ranks' batches are equally long, and laid side by side in rank
/// order they are exactly the single-process global batches.
#[test]
fn shards_partition_the_global_stream() {
    let counts = long_tailed_counts(10, 60, 10.0);
    let labels = labels_from_counts(&counts);
    for strategy in all_strategies() {
        for shuffle_in_batch in [false, true] {
            let mut global =
                Sampler::new(&labels, 10, sharded(&strategy, 1, 0, shuffle_in_batch)).unwrap();
            let global_epochs: Vec<Vec<Vec<usize>>> = (0..3).map(|_| global.next_epoch()).collect();
            for world_size in [2, 4, 8] {
                let mut ranks: Vec<Sampler> = (0..world_size)
                    .map(|r| {
                        Sampler::new(
                            &labels,
                            10,
                            sharded(&strategy, world_size, r, shuffle_in_batch),
                        )
                        .unwrap()
                    })
                    .collect();
                for (e, global_epoch) in global_epochs.iter().enumerate() {
                    let shards: Vec<Vec<Vec<usize>>> =
                        ranks.iter_mut().map(|s| s.next_epoch()).collect();
                    for shard in &shards {
                        assert_eq!(shard.len(), global_epoch.len());
                        assert!(shard.iter().all(|b| b.len() == 16 / world_size));
                    }
                    for (b, global_batch) in global_epoch.iter().enumerate() {
                        let joined: Vec<usize> =
                            shards.iter().flat_map(|s| s[b].iter().copied()).collect();
                        assert_eq!(
                            &joined, global_batch,
                            "{strategy}, W = {world_size}, shuffle {shuffle_in_batch}, epoch {e}, batch {b}"
                        );
                    }
                }
            }
        }
    }
}

/// Instance-balanced shards hold disjoint index sets within an epoch.
#[test]
fn instance_balanced_shards_are_disjoint() {
    let labels = labels_from_counts(&long_tailed_counts(10, 60, 10.0));
    let world_size = 4;
    let mut seen = vec![usize::MAX; labels.len()];
    for rank in 0..world_size {
        let mut s = Sampler::new(
            &labels,
            10,
            sharded(&Strategy::InstanceBalanced, world_size, rank, true),
        )
        .unwrap();
        for i in s.next_epoch().into_iter().flatten() {
            assert_eq!(
                seen[i],
                usize::MAX,
                "index {i} on ranks {} and {rank}",
                seen[i]
            );
            seen[i] = rank;
        }
    }
}

/// The in-batch shuffle reorders a global batch without changing its items.
#[test]
fn in_batch_shuffle_only_reorders() {
    let labels = labels_from_counts(&long_tailed_counts(10, 60, 10.0));
    for strategy in all_strategies() {
        let mut plain = Sampler::new(&labels, 10, sharded(&strategy, 1, 0, false)).unwrap();
        let mut shuffled = Sampler::new(&labels, 10, sharded(&strategy, 1, 0, true)).unwrap();
        let mut reordered = 0;
        for _ in 0..2 {
            for (a, b) in plain.next_epoch().into_iter().zip(shuffled.next_epoch()) {
                reordered += usize::from(a != b);
                let (mut a, mut b) = (a, b);
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "{strategy}");
            }
        }
        assert!(reordered > 0, "{strategy}: the shuffle changed nothing");
    }
}
