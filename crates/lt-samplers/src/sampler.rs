//! The sampler: labels in, epochs of this rank's batches of dataset indices out.

use serde::{Deserialize, Serialize};

use crate::config::{CbDraw, EpochLength, PbLambda, SamplerConfig, Strategy};
use crate::cycle::{CycleState, Cycles};
use crate::error::SamplerError;
use crate::probabilities::class_probabilities;
use crate::rng::{below, derived_rng, partial_shuffle, shuffle, Purpose, WeightedTable};

/// Version of the [`SamplerState`] layout.
const STATE_FORMAT: u32 = 1;

/// Draws epochs of dataset indices for one rank.
///
/// Every rank builds the same global epoch (a list of global batches of
/// `batch_size` indices, from the shared seed) and keeps positions
/// `[rank * B / W, (rank + 1) * B / W)` of each global batch. Shards are
/// therefore disjoint, equally long and together exactly the global stream,
/// whatever W is, and a run resumed with another world size continues the
/// same global stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    num_classes: usize,
    /// n_j per class.
    counts: Vec<usize>,
    /// Class j's dataset indices, ascending, are `by_class[offsets[j]..offsets[j + 1]]`.
    offsets: Vec<usize>,
    by_class: Vec<usize>,
    labels_fingerprint: u64,
    /// Global batches per epoch.
    num_batches: usize,
    epochs_drawn: usize,
    /// Class table for strategies whose p_j does not change over epochs.
    fixed_table: Option<WeightedTable>,
    /// Cycle over classes (class-balanced, class cycle).
    class_order: Option<Cycles>,
    /// One cycle over each class's items (class cycle, power, progressive).
    class_items: Option<Cycles>,
}

/// A sampler's position in its stream, to save with a checkpoint.
///
/// It records the epoch counter and where every reshuffled cycle stands
/// (pass number and position). The random generators need no saving: each
/// epoch's draws come from a generator keyed by (seed, epoch) and each
/// cycle's reshuffle from one keyed by (seed, class, pass), so the counters
/// reproduce them exactly. It also records what fixes the global stream
/// (seed, strategy, batch size, epoch length, in-batch shuffle, the labels'
/// size and fingerprint) so that [`Sampler::restore`] can refuse a state
/// from another run. Rank and world size are deliberately not recorded: a
/// run may resume on a different number of ranks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    format: u32,
    seed: u64,
    strategy: Strategy,
    batch_size: usize,
    epoch_length: EpochLength,
    shuffle_in_batch: bool,
    num_samples: usize,
    num_classes: usize,
    /// FNV-1a 64 of the class count and labels, as 16 hex digits (a string
    /// so that formats without full `u64` range, such as TOML, keep it).
    labels_fingerprint: String,
    epochs_drawn: usize,
    class_order: Option<CycleState>,
    class_items: Vec<CycleState>,
}

impl SamplerState {
    /// Number of epochs drawn when the state was taken.
    pub fn epochs_drawn(&self) -> usize {
        self.epochs_drawn
    }
}

impl Sampler {
    /// Builds a sampler over `labels` (label of each dataset index, in
    /// `0..num_classes`).
    ///
    /// Errors on empty labels, a label out of range, a class without samples
    /// under the class-balanced strategy (it could never be drawn; the other
    /// strategies give such a class probability 0), and invalid config values
    /// (see [`SamplerError`]).
    pub fn new(
        labels: &[u32],
        num_classes: usize,
        config: SamplerConfig,
    ) -> Result<Sampler, SamplerError> {
        check_sharding(&config)?;
        if labels.is_empty() {
            return Err(SamplerError::EmptyLabels);
        }
        let mut counts = vec![0usize; num_classes];
        for (index, &label) in labels.iter().enumerate() {
            match counts.get_mut(label as usize) {
                Some(count) => *count += 1,
                None => {
                    return Err(SamplerError::LabelOutOfRange {
                        index,
                        label,
                        num_classes,
                    })
                }
            }
        }
        check_strategy(&config.strategy, &counts)?;
        let num_batches = epoch_batches(&config, labels.len(), &counts)?;

        let mut offsets = Vec::with_capacity(num_classes + 1);
        offsets.push(0);
        for &n in &counts {
            offsets.push(offsets[offsets.len() - 1] + n);
        }
        let mut fill = offsets[..num_classes].to_vec();
        let mut by_class = vec![0usize; labels.len()];
        for (index, &label) in labels.iter().enumerate() {
            let slot = &mut fill[label as usize];
            by_class[*slot] = index;
            *slot += 1;
        }

        let strategy = &config.strategy;
        let fixed_table = match strategy {
            Strategy::SquareRoot | Strategy::Power { .. } => Some(WeightedTable::new(
                &class_probabilities(&counts, strategy, 0),
            )),
            _ => None,
        };
        let class_order = strategy.uses_class_cycle().then(|| {
            Cycles::new(
                config.seed,
                Purpose::ClassOrder,
                vec![0, num_classes],
                (0..num_classes).collect(),
            )
        });
        let class_items = strategy.uses_item_cycles().then(|| {
            Cycles::new(
                config.seed,
                Purpose::ClassItems,
                offsets.clone(),
                by_class.clone(),
            )
        });

        Ok(Sampler {
            labels_fingerprint: fingerprint(labels, num_classes),
            config,
            num_classes,
            counts,
            offsets,
            by_class,
            num_batches,
            epochs_drawn: 0,
            fixed_table,
            class_order,
            class_items,
        })
    }

    /// Draws the next epoch: this rank's batches (each of length
    /// batch_size / world_size) of dataset indices.
    pub fn next_epoch(&mut self) -> Vec<Vec<usize>> {
        let epoch = self.epochs_drawn;
        let mut global = self.draw_global(epoch);
        self.epochs_drawn += 1;

        let b = self.config.batch_size;
        if self.config.shuffle_in_batch {
            let mut rng = derived_rng(self.config.seed, Purpose::BatchShuffle, epoch as u64, 0);
            for batch in global.chunks_exact_mut(b) {
                shuffle(batch, &mut rng);
            }
        }
        let local = self.local_batch_size();
        let start = self.config.rank * local;
        global
            .chunks_exact(b)
            .map(|batch| batch[start..start + local].to_vec())
            .collect()
    }

    /// Number of epochs drawn so far (0 before the first call).
    pub fn epochs_drawn(&self) -> usize {
        self.epochs_drawn
    }

    /// The sampler's position, to save with a checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            format: STATE_FORMAT,
            seed: self.config.seed,
            strategy: self.config.strategy.clone(),
            batch_size: self.config.batch_size,
            epoch_length: self.config.epoch_length,
            shuffle_in_batch: self.config.shuffle_in_batch,
            num_samples: self.by_class.len(),
            num_classes: self.num_classes,
            labels_fingerprint: format!("{:016x}", self.labels_fingerprint),
            epochs_drawn: self.epochs_drawn,
            class_order: self.class_order.as_ref().map(|c| c.states()[0]),
            class_items: self
                .class_items
                .as_ref()
                .map_or_else(Vec::new, |c| c.states().to_vec()),
        }
    }

    /// Continues from a saved state: the following epochs are exactly those
    /// the saving sampler would have drawn next (for this sampler's rank and
    /// world size, which may differ from the saving run's).
    ///
    /// Errors, leaving the sampler unchanged, when the state comes from other
    /// labels or another stream-defining config, or is inconsistent.
    pub fn restore(&mut self, state: SamplerState) -> Result<(), SamplerError> {
        fn mismatch(
            field: &'static str,
            expected: impl ToString,
            found: impl ToString,
        ) -> SamplerError {
            SamplerError::StateMismatch {
                field,
                expected: expected.to_string(),
                found: found.to_string(),
            }
        }
        let mine = self.state();
        if state.format != STATE_FORMAT {
            return Err(mismatch("format", mine.format, state.format));
        }
        if state.seed != mine.seed {
            return Err(mismatch("seed", mine.seed, state.seed));
        }
        if !state.strategy.matches(&mine.strategy) {
            return Err(mismatch("strategy", &mine.strategy, &state.strategy));
        }
        if state.batch_size != mine.batch_size {
            return Err(mismatch("batch_size", mine.batch_size, state.batch_size));
        }
        if state.epoch_length != mine.epoch_length {
            return Err(mismatch(
                "epoch_length",
                mine.epoch_length,
                state.epoch_length,
            ));
        }
        if state.shuffle_in_batch != mine.shuffle_in_batch {
            return Err(mismatch(
                "shuffle_in_batch",
                mine.shuffle_in_batch,
                state.shuffle_in_batch,
            ));
        }
        if state.num_samples != mine.num_samples {
            return Err(mismatch("num_samples", mine.num_samples, state.num_samples));
        }
        if state.num_classes != mine.num_classes {
            return Err(mismatch("num_classes", mine.num_classes, state.num_classes));
        }
        if state.labels_fingerprint != mine.labels_fingerprint {
            return Err(mismatch(
                "labels_fingerprint",
                &mine.labels_fingerprint,
                &state.labels_fingerprint,
            ));
        }
        let invalid = |reason: String| SamplerError::InvalidState { reason };
        match (&self.class_order, &state.class_order) {
            (Some(cycle), Some(saved)) => cycle.check(&[*saved], "class_order").map_err(invalid)?,
            (None, None) => {}
            (_, saved) => {
                return Err(invalid(format!(
                    "class_order is {} for strategy {}",
                    if saved.is_some() {
                        "present"
                    } else {
                        "missing"
                    },
                    self.config.strategy
                )))
            }
        }
        match &self.class_items {
            Some(cycles) => cycles
                .check(&state.class_items, "class_items")
                .map_err(invalid)?,
            None if state.class_items.is_empty() => {}
            None => {
                return Err(invalid(format!(
                    "class_items has {} cycles, strategy {} uses none",
                    state.class_items.len(),
                    self.config.strategy
                )))
            }
        }

        if let (Some(cycle), Some(saved)) = (&mut self.class_order, &state.class_order) {
            cycle.restore(&[*saved]);
        }
        if let Some(cycles) = &mut self.class_items {
            cycles.restore(&state.class_items);
        }
        self.epochs_drawn = state.epochs_drawn;
        Ok(())
    }

    /// The p_j the strategy targets in 0-based epoch `epoch` (the same for
    /// every epoch except under the progressively-balanced strategy).
    pub fn class_probabilities(&self, epoch: usize) -> Vec<f64> {
        class_probabilities(&self.counts, &self.config.strategy, epoch)
    }

    /// The configuration the sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Number of batches each epoch has (the same on every rank).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Indices per batch on this rank: batch_size / world_size.
    pub fn local_batch_size(&self) -> usize {
        self.config.batch_size / self.config.world_size
    }

    /// Number of samples N.
    pub fn num_samples(&self) -> usize {
        self.by_class.len()
    }

    /// Number of classes C (as declared, empty classes included).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// n_j for every class.
    pub fn class_counts(&self) -> &[usize] {
        &self.counts
    }

    /// The global epoch `epoch`: `num_batches * batch_size` indices in
    /// global-batch order, before any in-batch shuffle. Advances the cycles.
    fn draw_global(&mut self, epoch: usize) -> Vec<usize> {
        let total = self.num_batches * self.config.batch_size;
        let mut out = Vec::with_capacity(total);
        let mut rng = derived_rng(self.config.seed, Purpose::EpochDraws, epoch as u64, 0);
        match &self.config.strategy {
            Strategy::InstanceBalanced => {
                // Fresh permutations of the dataset, as many as the epoch
                // needs (one unless the epoch is longer than N); only the
                // used prefix is shuffled.
                let n = self.by_class.len();
                let mut perm: Vec<usize> = Vec::with_capacity(n);
                while out.len() < total {
                    let need = (total - out.len()).min(n);
                    perm.clear();
                    perm.extend(0..n);
                    partial_shuffle(&mut perm, need, &mut rng);
                    out.extend_from_slice(&perm[..need]);
                }
            }
            Strategy::ClassBalanced {
                draw: CbDraw::ClassCycle,
                per_class,
            } => {
                let (order, items) = match (&mut self.class_order, &mut self.class_items) {
                    (Some(order), Some(items)) => (order, items),
                    _ => unreachable!("class cycles are built for class_cycle"),
                };
                while out.len() < total {
                    let class = order.next(0);
                    // A visit always consumes its `per_class` items, even
                    // when the epoch ends inside it (as the reference, whose
                    // per-epoch generator drops the rest of the run).
                    for _ in 0..*per_class {
                        let item = items.next(class);
                        if out.len() < total {
                            out.push(item);
                        }
                    }
                }
            }
            Strategy::ClassBalanced {
                draw: CbDraw::ClassUniformIid,
                per_class,
            } => {
                while out.len() < total {
                    let class = below(&mut rng, self.num_classes);
                    let lo = self.offsets[class];
                    let n = self.counts[class];
                    for _ in 0..(*per_class).min(total - out.len()) {
                        out.push(self.by_class[lo + below(&mut rng, n)]);
                    }
                }
            }
            Strategy::SquareRoot => {
                // i.i.d. instances with weight n_c^(-1/2): the same law as a
                // class with p_j ∝ sqrt(n_j) followed by a uniform item.
                let table = self
                    .fixed_table
                    .as_ref()
                    .expect("table built for square_root");
                for _ in 0..total {
                    let class = table.sample(&mut rng);
                    let item = self.offsets[class] + below(&mut rng, self.counts[class]);
                    out.push(self.by_class[item]);
                }
            }
            Strategy::Power { .. } | Strategy::ProgressivelyBalanced { .. } => {
                let per_epoch;
                let table = match &self.fixed_table {
                    Some(table) => table,
                    None => {
                        per_epoch = WeightedTable::new(&self.class_probabilities(epoch));
                        &per_epoch
                    }
                };
                let items = self.class_items.as_mut().expect("item cycles built");
                for _ in 0..total {
                    out.push(items.next(table.sample(&mut rng)));
                }
            }
        }
        out
    }
}

fn check_sharding(config: &SamplerConfig) -> Result<(), SamplerError> {
    if config.batch_size == 0 {
        return Err(SamplerError::ZeroBatchSize);
    }
    if config.world_size == 0 {
        return Err(SamplerError::ZeroWorldSize);
    }
    if config.rank >= config.world_size {
        return Err(SamplerError::RankOutOfRange {
            rank: config.rank,
            world_size: config.world_size,
        });
    }
    if !config.batch_size.is_multiple_of(config.world_size) {
        return Err(SamplerError::BatchNotDivisible {
            batch_size: config.batch_size,
            world_size: config.world_size,
        });
    }
    Ok(())
}

fn check_strategy(strategy: &Strategy, counts: &[usize]) -> Result<(), SamplerError> {
    match strategy {
        Strategy::ClassBalanced { per_class, .. } => {
            if *per_class == 0 {
                return Err(SamplerError::ZeroPerClass);
            }
            if let Some(class) = counts.iter().position(|&n| n == 0) {
                return Err(SamplerError::EmptyClass {
                    class,
                    num_classes: counts.len(),
                    strategy: strategy.to_string(),
                });
            }
        }
        Strategy::Power { q } if !q.is_finite() => {
            return Err(SamplerError::InvalidPower { q: *q })
        }
        Strategy::ProgressivelyBalanced {
            total_epochs,
            lambda,
        } => {
            let minimum = match lambda {
                PbLambda::TOverTMinus1 => 2,
                PbLambda::TOverT => 1,
            };
            if *total_epochs < minimum {
                return Err(SamplerError::InvalidTotalEpochs {
                    total_epochs: *total_epochs,
                    minimum,
                    lambda: lambda.to_string(),
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Global batches per epoch for the configured epoch length.
fn epoch_batches(
    config: &SamplerConfig,
    num_samples: usize,
    counts: &[usize],
) -> Result<usize, SamplerError> {
    let b = config.batch_size;
    let too_long = || SamplerError::EpochTooLong {
        epoch_length: config.epoch_length.to_string(),
        batch_size: b,
    };
    let batches = match config.epoch_length {
        EpochLength::Floor => num_samples / b,
        EpochLength::Ceil => num_samples.div_ceil(b),
        EpochLength::Nominal => {
            let n_max = counts.iter().copied().max().unwrap_or(0);
            n_max.checked_mul(counts.len()).ok_or_else(too_long)? / b
        }
        EpochLength::Batches(n) => n,
    };
    if batches == 0 {
        return Err(SamplerError::EmptyEpoch {
            epoch_length: config.epoch_length.to_string(),
            num_samples,
            batch_size: b,
        });
    }
    batches.checked_mul(b).ok_or_else(too_long)?;
    Ok(batches)
}

/// FNV-1a 64 over the class count and the labels (little-endian); written
/// out because it is a few lines and only guards against restoring a state
/// into a sampler over other labels.
fn fingerprint(labels: &[u32], num_classes: usize) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(&(num_classes as u64).to_le_bytes());
    for label in labels {
        feed(&label.to_le_bytes());
    }
    hash
}
