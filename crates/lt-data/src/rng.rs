//! Seeded random streams.
//!
//! Every random choice of this crate comes from a `ChaCha8Rng` whose 256-bit
//! key is `(seed, purpose, a, b)` (four little-endian `u64`s), e.g.
//! `(seed, AUGMENT, epoch, position in epoch)`. ChaCha is a keyed
//! pseudo-random function, so distinct keys give independent streams, and a
//! sample's stream does not depend on which thread handles it or on what was
//! drawn before: results are the same for any thread count or schedule, and a
//! resumed run draws exactly what an uninterrupted one would.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Purpose tag of per-sample augmentation streams (`a` = epoch, `b` = position).
pub const AUGMENT: u64 = 0x6175_676d_656e_7401;
/// Purpose tag of the validation hold-out draw (`a` = 0, `b` = class).
pub const HOLDOUT: u64 = 0x686f_6c64_6f75_7402;
/// Purpose tag of the train / val / test split of `lt-cli init` (`a` = 0,
/// `b` = class).
pub const SPLIT: u64 = 0x7370_6c69_7400_0003;

/// The stream for `(seed, purpose, a, b)`.
pub fn stream(seed: u64, purpose: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([seed, purpose, a, b]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = stream(1, AUGMENT, 2, 3).next_u64();
        assert_eq!(a, stream(1, AUGMENT, 2, 3).next_u64());
        assert_ne!(a, stream(1, AUGMENT, 2, 4).next_u64());
        assert_ne!(a, stream(1, AUGMENT, 3, 3).next_u64());
        assert_ne!(a, stream(2, AUGMENT, 2, 3).next_u64());
        assert_ne!(a, stream(1, HOLDOUT, 2, 3).next_u64());
    }
}
