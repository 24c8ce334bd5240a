//! Epoch samplers for long-tailed recognition.
//!
//! A [`Sampler`] takes the label of every dataset index (plus a seed, rank
//! and world size) and yields, epoch by epoch, this rank's batches of dataset
//! indices. The crate has no tensor or image dependency.
//!
//! ```
//! use lt_samplers::{Sampler, SamplerConfig, SamplerState, Strategy};
//!
//! // 3 classes with 6, 3 and 1 samples.
//! let labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2];
//! let config = SamplerConfig {
//!     strategy: Strategy::class_balanced(),
//!     batch_size: 4,
//!     seed: 7,
//!     ..SamplerConfig::default()
//! };
//! let mut sampler = Sampler::new(&labels, 3, config.clone())?;
//! let epoch = sampler.next_epoch();
//! assert_eq!(epoch.len(), 10 / 4); // floor(N / B) batches
//! assert!(epoch.iter().all(|batch| batch.len() == 4));
//! // A class visit takes 4 consecutive items of one class.
//! assert!(epoch[0].iter().all(|&i| labels[i] == labels[epoch[0][0]]));
//!
//! // Save with a checkpoint, resume later: the stream continues exactly.
//! let saved = serde_json::to_string(&sampler.state()).unwrap();
//! let expected = sampler.next_epoch();
//! let mut resumed = Sampler::new(&labels, 3, config)?;
//! resumed.restore(serde_json::from_str::<SamplerState>(&saved).unwrap())?;
//! assert_eq!(resumed.next_epoch(), expected);
//! # Ok::<(), lt_samplers::SamplerError>(())
//! ```
//!
//! Besides training epochs, [`shifted`] draws the evaluation's shifted test
//! sets: seeded sub-samples of a balanced test split that are forward or
//! backward long-tailed at a given imbalance ([`shifted_test_set`]).
//!
//! # Strategies
//!
//! Class j has n_j samples, N in total, C classes. Every strategy is an
//! instance of p_j ∝ n_j^q for some q (the progressive one moves q's two
//! ends over time).
//!
//! | [`Strategy`] | q | p_j (class share of the stream) | how an epoch is drawn |
//! |---|---|---|---|
//! | `instance_balanced` | 1 | n_j / N | a fresh uniform permutation of the dataset each epoch; the epoch is its first `batches * B` indices (each index at most once when that is ≤ N) |
//! | `class_balanced`, `class_cycle` (reference) | 0 | 1 / C | classes walked in a cycle reshuffled at every wrap; each visit takes `per_class` (4) consecutive items from the class's own reshuffled cycle |
//! | `class_balanced`, `class_uniform_iid` | 0 | 1 / C | i.i.d. uniform class, then `per_class` items uniformly with replacement |
//! | `square_root` (reference) | ½ | √n_j / Σ_k √n_k | i.i.d. instance draws with replacement, item weight n_c^(−½) (drawn as class then uniform item, the same law) |
//! | `power` | q | n_j^q / Σ_k n_k^q | i.i.d. class draw, item from the class's reshuffled cycle |
//! | `progressively_balanced` | 1 → 0 | (1 − l_t) n_j / N + l_t / C | i.i.d. class draw with p_j(t), item from the class's reshuffled cycle |
//!
//! For the progressive strategy t is the 0-based epoch and T =
//! `total_epochs`; l_t = t / (T − 1) (reference: epoch 0 instance-balanced,
//! epoch T − 1 fully class-balanced) or t / T (the paper's formula, which
//! never reaches full balance); l_t is clamped to 1 past T. [`Sampler::class_probabilities`]
//! returns the p_j of any epoch.
//!
//! Classes without samples: `class_balanced` refuses them
//! ([`SamplerError::EmptyClass`]), since the reference would have to draw
//! them; every other strategy gives them p_j = 0 (and the progressive C counts
//! only non-empty classes).
//!
//! # Reference defaults and peer switches
//!
//! The defaults follow the official code of Kang et al. (ICLR 2020); peers'
//! choices are one switch away.
//!
//! | Setting | Reference default | Peer alternatives |
//! |---|---|---|
//! | [`CbDraw`] (`draw`) | `class_cycle` | `class_uniform_iid` (BagofTricks-LT, with `per_class = 1`) |
//! | `per_class` | 4 (MiSLAS too) | 1 |
//! | [`EpochLength`] | `floor`: ⌊N / B⌋ batches, partial batch dropped | `ceil` (MiSLAS stage 2), `nominal` (n_max · C items, rounded down to whole batches), `{ batches = n }` |
//! | square-root draw | i.i.d. instances (`square_root`) | class then next item of its cycle: `{ kind = "power", q = 0.5 }` |
//! | [`PbLambda`] (`lambda`) | `t_over_t_minus_1` | `t_over_t` (BagofTricks-LT) |
//! | `shuffle_in_batch` | `false` (`true` in the reference's CB, cRT and LWS configs) | |
//!
//! In a config file:
//!
//! ```toml
//! strategy = { kind = "class_balanced", draw = "class_cycle", per_class = 4 }
//! batch_size = 512
//! epoch_length = "floor"          # or "ceil", "nominal", { batches = 1000 }
//! seed = 0
//! shuffle_in_batch = true
//! ```
//!
//! # Distributed sampling
//!
//! With W ranks every rank draws the same global epoch (same seed, same
//! labels): a list of global batches of B = `batch_size` indices. Rank r
//! keeps positions `[r B / W, (r + 1) B / W)` of each global batch, so shards
//! are disjoint slices of equal length whose union is exactly the global
//! stream. B must be a multiple of W. Because the global stream does not
//! depend on W, a run resumed with another world size continues it. The
//! in-batch shuffle permutes each global batch before it is split.
//!
//! # Determinism and resumption
//!
//! The stream depends only on the labels, `num_classes` and the config minus
//! rank and world size, and is the same on every platform for every strategy
//! except `power` with q outside {0, ½, 1}, whose weights n_j^q go through the
//! platform's `exp`/`ln` (last-bit differences there can, very rarely, move a
//! draw that lands on a class boundary). All randomness comes from
//! [`rand_chacha::ChaCha8Rng`] keyed by `(seed, purpose, a, b)` as four
//! little-endian `u64`s: purpose 1 with a = epoch for an epoch's draws
//! (permutations, i.i.d. class and item draws), 2 with b = pass for the
//! class cycle's reshuffles, 3 with a = class, b = pass for a class's item
//! cycle, 4 with a = epoch for the in-batch shuffle, 5 with a = class for
//! the class's permutation in a shifted test set ([`shifted`]). Bounded integers
//! (Lemire's unbiased multiply-and-reject on 64-bit outputs), floats in
//! \[0, 1) (top 53 bits), Fisher-Yates shuffles and the cumulative-sum
//! categorical draw are written in this crate, not taken from `rand`, whose
//! helpers do not promise value-stable output across releases.
//!
//! A reshuffle always starts from the class's ascending index list, so a
//! cycle is fully described by (pass, position). [`SamplerState`] is
//! therefore small (the epoch counter and two integers per cycle) and a
//! restored sampler draws exactly what an uninterrupted one would.

#![warn(missing_docs)]

mod config;
mod cycle;
mod error;
mod probabilities;
mod rng;
mod sampler;
pub mod shifted;

pub use config::{CbDraw, EpochLength, PbLambda, SamplerConfig, Strategy};
pub use error::SamplerError;
pub use sampler::{Sampler, SamplerState};
pub use shifted::{
    head_to_tail, shifted_test_set, Imbalance, ShiftedTestSet, TestShift, STANDARD_IMBALANCES,
};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
