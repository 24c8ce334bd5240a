//! Sampler configuration: the strategy, the epoch length and the sharding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything that fixes a sampler's stream besides the labels.
///
/// Every field has a default (see [`SamplerConfig::default`]), so a config
/// file only names what it changes:
///
/// ```toml
/// strategy = { kind = "class_balanced" }   # class_cycle, 4 per class
/// batch_size = 512
/// seed = 7
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// How dataset indices are drawn.
    pub strategy: Strategy,
    /// Global batch size B: the number of indices per step summed over all ranks.
    pub batch_size: usize,
    /// How many global batches an epoch has.
    pub epoch_length: EpochLength,
    /// Seed of every random choice; the same on every rank.
    pub seed: u64,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// Number of data-parallel ranks W; `batch_size` must be a multiple of it.
    pub world_size: usize,
    /// Permute each global batch before sharding (the reference's
    /// `shuffle: true` in its CB, cRT and LWS configs). It changes which
    /// rank sees which items, never which items a batch holds.
    pub shuffle_in_batch: bool,
}

impl Default for SamplerConfig {
    /// Instance-balanced, batch 128, `floor(N / B)` batches, seed 0, a single
    /// rank, no in-batch shuffle.
    fn default() -> Self {
        Self {
            strategy: Strategy::InstanceBalanced,
            batch_size: 128,
            epoch_length: EpochLength::Floor,
            seed: 0,
            rank: 0,
            world_size: 1,
            shuffle_in_batch: false,
        }
    }
}

/// The sampling strategy. Class j has n_j samples, N in total, C classes.
///
/// Serialised with a `kind` tag, e.g.
/// `{ kind = "power", q = 0.5 }` or
/// `{ kind = "progressively_balanced", total_epochs = 90 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", from = "StrategyRepr")]
#[non_exhaustive]
pub enum Strategy {
    /// q = 1: a fresh uniform permutation of the dataset each epoch;
    /// p_j = n_j / N.
    #[default]
    InstanceBalanced,
    /// q = 0: every class equally often; p_j = 1 / C. Every class needs at
    /// least one sample.
    ClassBalanced {
        /// How classes and items are chosen (default `class_cycle`).
        draw: CbDraw,
        /// Items taken per class visit (the reference's `num_samples_cls`;
        /// default 4).
        per_class: usize,
    },
    /// q = 1/2, as the reference: i.i.d. instance draws with replacement,
    /// item weight n_c^(-1/2), so p_j = sqrt(n_j) / sum_k sqrt(n_k).
    SquareRoot,
    /// Any power q: p_j = n_j^q / sum_k n_k^q (0 for an empty class); the
    /// class is drawn i.i.d., the item from that class's reshuffled cycle.
    Power {
        /// The exponent q; any finite value (q = 1 instance-like, q = 0
        /// class-uniform, q < 0 favours the tail further).
        q: f64,
    },
    /// p_j(t) = (1 - l_t) n_j / N + l_t / C for 0-based epoch t, where C
    /// counts the non-empty classes; the class is drawn i.i.d., the item
    /// from that class's reshuffled cycle.
    ProgressivelyBalanced {
        /// T, the planned number of epochs.
        total_epochs: usize,
        /// How l_t grows with the epoch (default `t_over_t_minus_1`).
        lambda: PbLambda,
    },
}

fn default_per_class() -> usize {
    Strategy::REFERENCE_PER_CLASS
}

/// What [`Strategy`] is read through: serde ignores extra keys next to the
/// tag of a unit variant even with `deny_unknown_fields`, so the unit
/// variants are read as empty struct variants, which do reject them
/// (`{ kind = "instance_balanced", q = 1.0 }` is an error, not a silent IB).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum StrategyRepr {
    InstanceBalanced {},
    ClassBalanced {
        #[serde(default)]
        draw: CbDraw,
        #[serde(default = "default_per_class")]
        per_class: usize,
    },
    SquareRoot {},
    Power {
        q: f64,
    },
    ProgressivelyBalanced {
        total_epochs: usize,
        #[serde(default)]
        lambda: PbLambda,
    },
}

impl From<StrategyRepr> for Strategy {
    fn from(repr: StrategyRepr) -> Self {
        match repr {
            StrategyRepr::InstanceBalanced {} => Self::InstanceBalanced,
            StrategyRepr::ClassBalanced { draw, per_class } => {
                Self::ClassBalanced { draw, per_class }
            }
            StrategyRepr::SquareRoot {} => Self::SquareRoot,
            StrategyRepr::Power { q } => Self::Power { q },
            StrategyRepr::ProgressivelyBalanced {
                total_epochs,
                lambda,
            } => Self::ProgressivelyBalanced {
                total_epochs,
                lambda,
            },
        }
    }
}

impl Strategy {
    /// Items per class visit in the reference class-balanced sampler.
    pub const REFERENCE_PER_CLASS: usize = 4;

    /// The reference class-balanced sampler: class cycle, 4 items per visit.
    pub fn class_balanced() -> Self {
        Self::ClassBalanced {
            draw: CbDraw::ClassCycle,
            per_class: Self::REFERENCE_PER_CLASS,
        }
    }

    /// The reference progressively-balanced sampler over `total_epochs` epochs.
    pub fn progressively_balanced(total_epochs: usize) -> Self {
        Self::ProgressivelyBalanced {
            total_epochs,
            lambda: PbLambda::TOverTMinus1,
        }
    }

    /// Whether items are taken from per-class reshuffled cycles.
    pub(crate) fn uses_item_cycles(&self) -> bool {
        matches!(
            self,
            Self::ClassBalanced {
                draw: CbDraw::ClassCycle,
                ..
            } | Self::Power { .. }
                | Self::ProgressivelyBalanced { .. }
        )
    }

    /// Whether classes are visited in a reshuffled cycle.
    pub(crate) fn uses_class_cycle(&self) -> bool {
        matches!(
            self,
            Self::ClassBalanced {
                draw: CbDraw::ClassCycle,
                ..
            }
        )
    }

    /// Same strategy up to float noise in `q` (JSON readers may round the
    /// last bit of a float).
    pub(crate) fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Power { q: a }, Self::Power { q: b }) => {
                (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
            }
            _ => self == other,
        }
    }
}

impl Strategy {
    /// The `kind` name in configs (`instance_balanced`, `class_balanced`,
    /// `square_root`, `power`, `progressively_balanced`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InstanceBalanced => "instance_balanced",
            Self::ClassBalanced { .. } => "class_balanced",
            Self::SquareRoot => "square_root",
            Self::Power { .. } => "power",
            Self::ProgressivelyBalanced { .. } => "progressively_balanced",
        }
    }

    /// The abbreviation of the paper's tables (`IB`, `CB`, `SR`, `PB`;
    /// `Power` for any other q).
    pub fn abbreviation(&self) -> &'static str {
        match self {
            Self::InstanceBalanced => "IB",
            Self::ClassBalanced { .. } => "CB",
            Self::SquareRoot => "SR",
            Self::Power { .. } => "Power",
            Self::ProgressivelyBalanced { .. } => "PB",
        }
    }

    /// Position in the paper's tables: IB, CB, SR, PB, then power.
    pub fn table_order(&self) -> usize {
        match self {
            Self::InstanceBalanced => 0,
            Self::ClassBalanced { .. } => 1,
            Self::SquareRoot => 2,
            Self::ProgressivelyBalanced { .. } => 3,
            Self::Power { .. } => 4,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InstanceBalanced => write!(f, "instance_balanced"),
            Self::ClassBalanced { draw, per_class } => {
                write!(f, "class_balanced({draw}, per_class={per_class})")
            }
            Self::SquareRoot => write!(f, "square_root"),
            Self::Power { q } => write!(f, "power(q={q})"),
            Self::ProgressivelyBalanced {
                total_epochs,
                lambda,
            } => write!(f, "progressively_balanced(T={total_epochs}, {lambda})"),
        }
    }
}

/// How the class-balanced sampler chooses classes and items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CbDraw {
    /// Reference: walk the classes in a cycle reshuffled at every wrap; each
    /// visit takes `per_class` consecutive items from the class's own
    /// reshuffled cycle. Classes are stratified, not i.i.d.
    #[default]
    ClassCycle,
    /// Peer variant (BagofTricks-LT): a uniform class, then `per_class`
    /// items uniformly with replacement (that peer uses `per_class = 1`).
    ClassUniformIid,
}

impl fmt::Display for CbDraw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClassCycle => "class_cycle",
            Self::ClassUniformIid => "class_uniform_iid",
        })
    }
}

/// The schedule of l_t in the progressively-balanced sampler (t is 0-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PbLambda {
    /// Reference: l_t = t / (T - 1): the first epoch is instance-balanced,
    /// epoch T - 1 (the last) fully class-balanced. Needs T >= 2.
    #[default]
    #[serde(rename = "t_over_t_minus_1")]
    TOverTMinus1,
    /// Peer variant (BagofTricks-LT, the paper's formula): l_t = t / T, which
    /// never reaches full class balance within T epochs.
    #[serde(rename = "t_over_t")]
    TOverT,
}

impl fmt::Display for PbLambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TOverTMinus1 => "t_over_t_minus_1",
            Self::TOverT => "t_over_t",
        })
    }
}

/// How many global batches of B indices an epoch has.
///
/// Serialised as `"floor"`, `"ceil"`, `"nominal"` or `{ batches = 100 }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EpochLength {
    /// Reference: floor(N / B), the partial batch dropped.
    #[default]
    Floor,
    /// ceil(N / B) full batches (MiSLAS stage 2); the last one is filled with
    /// further draws, for instance-balanced from a further fresh permutation.
    Ceil,
    /// floor(n_max * C / B): the class-aware sampler's nominal length
    /// (n_max the largest class count).
    Nominal,
    /// A fixed number of batches.
    Batches(usize),
}

impl fmt::Display for EpochLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Floor => f.write_str("floor"),
            Self::Ceil => f.write_str("ceil"),
            Self::Nominal => f.write_str("nominal"),
            Self::Batches(n) => write!(f, "batches({n})"),
        }
    }
}
