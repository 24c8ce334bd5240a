//! Seeded random draws whose values are fixed by this crate's own code.
//!
//! The only external randomness is the ChaCha8 keystream of
//! [`rand_chacha::ChaCha8Rng`], which `rand_chacha` documents as portable and
//! value-stable. Everything built on top of it (bounded integers, unit floats,
//! shuffles, weighted draws) is implemented here rather than taken from `rand`,
//! because several `rand` helpers (`gen_range`, `shuffle`, `WeightedIndex`)
//! are documented as free to change their output between releases. Pinning
//! the algorithms here keeps a seed's stream identical on every platform and
//! across dependency upgrades.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a derived generator is used for; part of its key so that different
/// purposes never share a keystream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Purpose {
    /// Per-epoch draws of the strategy (permutations, i.i.d. class and item draws).
    EpochDraws = 1,
    /// Reshuffles of the cycle over classes (class-balanced sampling).
    ClassOrder = 2,
    /// Reshuffles of one class's cycle over its items.
    ClassItems = 3,
    /// In-batch permutations applied before sharding.
    BatchShuffle = 4,
    /// A class's permutation when a shifted test set is drawn from it.
    ShiftedTest = 5,
}

/// A ChaCha8 generator keyed by `(seed, purpose, a, b)`.
///
/// The 256-bit key is the four values as little-endian `u64`s, in that order;
/// the stream id and the word position start at zero. Deriving a fresh
/// generator per (epoch) or per (class, pass) means the sampler state never
/// has to carry generator internals: the counters alone reproduce the stream.
pub(crate) fn derived_rng(seed: u64, purpose: Purpose, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    key[16..24].copy_from_slice(&a.to_le_bytes());
    key[24..32].copy_from_slice(&b.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Uniform integer in `0..n` (`n > 0`), without bias.
///
/// Lemire's multiply-and-reject method ("Fast Random Integer Generation in an
/// Interval", 2019) on 64-bit outputs: the high word of `x * n` is the result,
/// and the rare low words below `2^64 mod n` are redrawn.
#[inline]
pub(crate) fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    debug_assert!(n > 0, "below(0) has no valid result");
    let n = n as u64;
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as usize
}

/// Uniform `f64` in `[0, 1)`: the top 53 bits of one 64-bit output, scaled.
#[inline]
pub(crate) fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    (rng.next_u64() >> 11) as f64 * SCALE
}

/// Forward Fisher-Yates on the first `k` positions of `items`.
///
/// Afterwards `items[..k]` is a uniformly random ordered selection of `k`
/// items without replacement; with `k == items.len()` (or `len - 1`) the
/// whole slice is a uniform permutation.
pub(crate) fn partial_shuffle<T>(items: &mut [T], k: usize, rng: &mut ChaCha8Rng) {
    let len = items.len();
    for i in 0..k.min(len.saturating_sub(1)) {
        let j = i + below(rng, len - i);
        items.swap(i, j);
    }
}

/// Uniform permutation of the whole slice in place.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    partial_shuffle(items, items.len(), rng);
}

/// Categorical draws over classes by cumulative sum and binary search.
#[derive(Clone, Debug)]
pub(crate) struct WeightedTable {
    cumulative: Vec<f64>,
    /// Last index with positive weight; guards the (rounding-only) case
    /// where `u * total` lands on `total`.
    last_positive: usize,
}

impl WeightedTable {
    /// Builds the table from non-negative weights with a positive sum.
    pub(crate) fn new(weights: &[f64]) -> Self {
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        let mut last_positive = 0;
        for (j, &w) in weights.iter().enumerate() {
            debug_assert!(w >= 0.0 && w.is_finite());
            if w > 0.0 {
                last_positive = j;
            }
            acc += w;
            cumulative.push(acc);
        }
        debug_assert!(acc > 0.0, "weights must have a positive sum");
        Self {
            cumulative,
            last_positive,
        }
    }

    /// Draws an index with probability proportional to its weight; an index
    /// of weight zero is never returned.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        let x = unit_f64(rng) * total;
        // First j with cumulative[j] > x: zero-weight entries repeat the
        // previous sum and so are skipped.
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.last_positive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_streams_differ_by_every_key_part() {
        let base = derived_rng(7, Purpose::EpochDraws, 3, 4).next_u64();
        assert_eq!(base, derived_rng(7, Purpose::EpochDraws, 3, 4).next_u64());
        assert_ne!(base, derived_rng(8, Purpose::EpochDraws, 3, 4).next_u64());
        assert_ne!(base, derived_rng(7, Purpose::ClassOrder, 3, 4).next_u64());
        assert_ne!(base, derived_rng(7, Purpose::EpochDraws, 4, 4).next_u64());
        assert_ne!(base, derived_rng(7, Purpose::EpochDraws, 3, 5).next_u64());
    }

    /// The key is `(seed, purpose, a, b)` as little-endian words.
    #[test]
    fn key_layout_is_documented_one() {
        let mut key = [0u8; 32];
        key[0..8].copy_from_slice(&5u64.to_le_bytes());
        key[8..16].copy_from_slice(&3u64.to_le_bytes());
        key[16..24].copy_from_slice(&11u64.to_le_bytes());
        key[24..32].copy_from_slice(&13u64.to_le_bytes());
        let mut direct = ChaCha8Rng::from_seed(key);
        let mut derived = derived_rng(5, Purpose::ClassItems, 11, 13);
        for _ in 0..40 {
            assert_eq!(direct.next_u64(), derived.next_u64());
        }
    }

    /// Pins the derived draws: a change here changes every seed's stream and
    /// must be deliberate.
    #[test]
    fn draws_are_value_stable() {
        let mut rng = derived_rng(0, Purpose::EpochDraws, 0, 0);
        let ints: Vec<usize> = (0..8).map(|_| below(&mut rng, 1000)).collect();
        let unit = unit_f64(&mut rng);
        let mut perm: Vec<usize> = (0..8).collect();
        shuffle(&mut perm, &mut rng);
        assert_eq!(ints, [249, 318, 370, 604, 265, 306, 265, 759]);
        assert_eq!(unit.to_bits(), 0x3fee_545c_cb99_fc05);
        assert_eq!(perm, [1, 2, 0, 4, 3, 7, 5, 6]);
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = derived_rng(1, Purpose::EpochDraws, 0, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            let v = below(&mut rng, 7);
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn unit_f64_is_in_half_open_interval() {
        let mut rng = derived_rng(2, Purpose::EpochDraws, 0, 0);
        for _ in 0..10_000 {
            let u = unit_f64(&mut rng);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = derived_rng(3, Purpose::EpochDraws, 0, 0);
        let mut v: Vec<usize> = (0..100).collect();
        shuffle(&mut v, &mut rng);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn weighted_table_never_returns_zero_weight() {
        let table = WeightedTable::new(&[0.0, 1.0, 0.0, 3.0, 0.0]);
        let mut rng = derived_rng(4, Purpose::EpochDraws, 0, 0);
        let mut counts = [0usize; 5];
        for _ in 0..4000 {
            counts[table.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[0] + counts[2] + counts[4], 0);
        assert!(counts[1] > 800 && counts[1] < 1200, "{counts:?}");
    }
}
