//! Long-tailed subsets of balanced datasets.
//!
//! * Profiles ([`Profile`]): *exponential*, `n_i = floor(n_max * (1/rho)^(i/(C-1)))`
//!   for class `i = 0..C` in label order (class 0 is the head), and *step*,
//!   where the first classes keep `n_max` images and the last `floor(mu * C)`
//!   classes keep `floor(n_max / rho)` (`mu = 0.5` by default, as LDAM-DRW).
//! * Selection ([`numpy_subset`]): the exact LDAM-DRW procedure
//!   (`imbalance_cifar.py`): NumPy's legacy global generator seeded once with
//!   `np.random.seed(seed)`, then for each class in ascending order its indices
//!   in dataset order are shuffled with `np.random.shuffle` and the first `n_i`
//!   are kept; classes are stacked in label order. With seed 0 and the CIFAR
//!   training sets this gives the CIFAR-10-LT / CIFAR-100-LT subsets used by
//!   LDAM-DRW, MiSLAS, RIDE, SADE and BagofTricks-LT.
//! * Validation ([`balanced_holdout`]): a balanced, seeded hold-out taken from
//!   the training images *not* in the long-tailed subset, like ImageNet-LT's
//!   validation split, so model selection never looks at the test set.
//!
//! The per-class counts of the formula are computed in `f64` with the same
//! operations as the Python code (`int(n_max * imb_factor ** (i / (C - 1.0)))`
//! with `imb_factor = 1 / rho`), so the totals are bit-for-bit the published
//! ones: CIFAR-10-LT 12406 / 13996 / 20431 and CIFAR-100-LT 10847 / 12608 /
//! 19573 at rho = 100 / 50 / 10.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng;

/// The shape of a long-tailed class distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Profile {
    /// `n_i = floor(n_max * (1/rho)^(i/(C-1)))`.
    Exponential,
    /// The first `C - floor(mu * C)` classes keep `n_max`, the others
    /// `floor(n_max / rho)`.
    Step {
        /// Fraction of classes that are minority classes (LDAM-DRW: 0.5).
        #[serde(default = "default_mu")]
        mu: f64,
    },
}

fn default_mu() -> f64 {
    0.5
}

impl Profile {
    /// The step profile with half the classes in the minority.
    pub fn step() -> Self {
        Profile::Step { mu: default_mu() }
    }
}

/// Per-class counts of a long-tailed profile with imbalance ratio `rho`
/// (`n_max / n_min`), for `num_classes` classes with at most `n_max` images.
pub fn class_counts(
    profile: Profile,
    n_max: usize,
    num_classes: usize,
    rho: f64,
) -> Result<Vec<usize>> {
    if !(rho.is_finite() && rho >= 1.0) {
        return Err(DataError::config(
            "rho",
            format!("imbalance ratio must be a finite number >= 1, got {rho}"),
        ));
    }
    if num_classes == 0 {
        return Err(DataError::config("num_classes", "must be at least 1"));
    }
    let imb_factor = 1.0 / rho;
    let n_max_f = n_max as f64;
    Ok(match profile {
        Profile::Exponential => {
            if num_classes == 1 {
                return Ok(vec![n_max]);
            }
            let denom = num_classes as f64 - 1.0;
            (0..num_classes)
                .map(|i| (n_max_f * imb_factor.powf(i as f64 / denom)) as usize)
                .collect()
        }
        Profile::Step { mu } => {
            if !(0.0..=1.0).contains(&mu) {
                return Err(DataError::config(
                    "mu",
                    format!("minority fraction must be in [0, 1], got {mu}"),
                ));
            }
            let minority = (mu * num_classes as f64).floor() as usize;
            let tail = (n_max_f * imb_factor) as usize;
            (0..num_classes)
                .map(|i| {
                    if i < num_classes - minority {
                        n_max
                    } else {
                        tail
                    }
                })
                .collect()
        }
    })
}

/// The 32-bit Mersenne Twister MT19937 (Matsumoto and Nishimura, 1998),
/// seeded with `init_genrand`, as NumPy's legacy `RandomState` uses it.
///
/// Written by hand because the LDAM-DRW subsets are defined by NumPy's
/// *legacy* shuffle stream (`np.random.seed` + `np.random.shuffle`): no
/// maintained Rust crate reproduces that exact combination of seeding, 32-bit
/// output and masked-rejection bounded draws, and the standard CIFAR-LT
/// subsets can only be reproduced bit-for-bit with it. Everything else in the
/// project uses `ChaCha8Rng`.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; Self::N],
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;
    const MATRIX_A: u32 = 0x9908_b0df;
    const UPPER: u32 = 0x8000_0000;
    const LOWER: u32 = 0x7fff_ffff;

    /// `init_genrand(seed)`; NumPy's `np.random.seed(s)` for an integer
    /// `0 <= s < 2^32` does exactly this.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; Self::N];
        state[0] = seed;
        for i in 1..Self::N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            state,
            index: Self::N,
        }
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let y = (self.state[i] & Self::UPPER) | (self.state[(i + 1) % Self::N] & Self::LOWER);
            let mut v = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= Self::MATRIX_A;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    /// `genrand_int32`: the next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// NumPy's legacy `random_interval(max)`: uniform in `0..=max` by masked
    /// rejection on 32-bit outputs (mask = smallest all-ones value >= max).
    pub fn random_interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// NumPy's legacy `shuffle` of a 1-D array: Fisher-Yates from the last
    /// position down, `j = random_interval(i)` for `i = n-1 ..= 1`.
    ///
    /// # Panics
    /// If the slice has more than `u32::MAX` elements.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        assert!(
            xs.len() <= u32::MAX as usize,
            "slice too long for MT19937 shuffle"
        );
        for i in (1..xs.len()).rev() {
            let j = self.random_interval(i as u32) as usize;
            xs.swap(i, j);
        }
    }
}

fn indices_by_class(labels: &[u32], num_classes: usize) -> Result<Vec<Vec<usize>>> {
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class
            .get_mut(l as usize)
            .ok_or_else(|| {
                DataError::config(
                    "labels",
                    format!("sample {i} has label {l} but there are {num_classes} classes"),
                )
            })?
            .push(i);
    }
    Ok(by_class)
}

/// The LDAM-DRW subset: keeps `counts[c]` images of every class `c`, chosen by
/// NumPy's legacy shuffle seeded with `seed` (LDAM-DRW: 0). `labels` are in
/// dataset order; the result lists the kept dataset indices class by class,
/// each class in shuffled order, exactly as `imbalance_cifar.py` stacks them.
pub fn numpy_subset(labels: &[u32], counts: &[usize], seed: u32) -> Result<Vec<usize>> {
    let by_class = indices_by_class(labels, counts.len())?;
    let mut rng = Mt19937::new(seed);
    let mut out = Vec::with_capacity(counts.iter().sum());
    for (class, (mut idx, &n)) in by_class.into_iter().zip(counts).enumerate() {
        if n > idx.len() {
            return Err(DataError::config(
                "counts",
                format!(
                    "class {class} has {} images but the long-tailed profile asks for {n}",
                    idx.len()
                ),
            ));
        }
        rng.shuffle(&mut idx);
        out.extend_from_slice(&idx[..n]);
    }
    Ok(out)
}

/// A long-tailed subset request for any dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongTailSpec {
    /// The profile (`"exponential"` or `{"step": {"mu": 0.5}}`).
    pub profile: Profile,
    /// Imbalance ratio `n_max / n_min` (e.g. 100, 50, 10).
    pub rho: f64,
    /// Images of the head class; `None` = the size of the smallest class, so
    /// that every class can supply its share.
    #[serde(default)]
    pub n_max: Option<usize>,
    /// Seed of the NumPy-compatible selection (LDAM-DRW: 0).
    #[serde(default)]
    pub seed: u32,
}

impl LongTailSpec {
    /// Exponential profile with ratio `rho`, `n_max` from the data, seed 0:
    /// the CIFAR-LT recipe.
    pub fn exponential(rho: f64) -> Self {
        Self {
            profile: Profile::Exponential,
            rho,
            n_max: None,
            seed: 0,
        }
    }

    /// A one-line description for split summaries.
    pub fn describe(&self) -> String {
        let profile = match self.profile {
            Profile::Exponential => "exponential".to_string(),
            Profile::Step { mu } => format!("step (mu {mu})"),
        };
        format!(
            "{profile} profile, rho {}, n_max {}, numpy-legacy shuffle seed {}",
            self.rho,
            self.n_max
                .map_or_else(|| "= smallest class".to_string(), |n| n.to_string()),
            self.seed
        )
    }
}

/// A long-tailed subset: the per-class target counts and the kept indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongTail {
    /// Images kept per class.
    pub counts: Vec<usize>,
    /// Kept dataset indices, class by class (see [`numpy_subset`]).
    pub indices: Vec<usize>,
}

/// Builds the long-tailed subset `spec` of a dataset with `labels`.
pub fn long_tailed_subset(
    labels: &[u32],
    num_classes: usize,
    spec: &LongTailSpec,
) -> Result<LongTail> {
    let by_class = indices_by_class(labels, num_classes)?;
    let smallest = by_class.iter().map(Vec::len).min().unwrap_or(0);
    let n_max = spec.n_max.unwrap_or(smallest);
    let counts = class_counts(spec.profile, n_max, num_classes, spec.rho)?;
    let indices = numpy_subset(labels, &counts, spec.seed)?;
    Ok(LongTail { counts, indices })
}

/// A balanced hold-out split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdout {
    /// Held-out dataset indices, class by class, ascending within a class.
    pub indices: Vec<usize>,
    /// Per class, how many of its held-out images had to be taken from the
    /// training subset because too few images were left outside it (in
    /// CIFAR-LT the head class uses every training image).
    pub overlap: Vec<usize>,
}

/// Draws `per_class` images of every class, seeded, preferring images *not*
/// in `train_subset`. Where a class has fewer than `per_class` images outside
/// the subset, the rest are drawn from its subset images and counted in
/// [`Holdout::overlap`] (and logged), never silently.
pub fn balanced_holdout(
    labels: &[u32],
    num_classes: usize,
    train_subset: &[usize],
    per_class: usize,
    seed: u64,
) -> Result<Holdout> {
    let by_class = indices_by_class(labels, num_classes)?;
    let mut in_train = vec![false; labels.len()];
    for &i in train_subset {
        *in_train.get_mut(i).ok_or_else(|| {
            DataError::config(
                "train_subset",
                format!("index {i} out of range for {} samples", labels.len()),
            )
        })? = true;
    }
    let mut indices = Vec::with_capacity(per_class * num_classes);
    let mut overlap = vec![0; num_classes];
    for (class, idx) in by_class.iter().enumerate() {
        if idx.len() < per_class {
            return Err(DataError::config(
                "val_per_class",
                format!(
                    "class {class} has {} images, fewer than the {per_class} requested",
                    idx.len()
                ),
            ));
        }
        let mut rng = rng::stream(seed, rng::HOLDOUT, 0, class as u64);
        let (mut free, mut used): (Vec<usize>, Vec<usize>) =
            idx.iter().partition(|&&i| !in_train[i]);
        let mut pick = |pool: &mut Vec<usize>, k: usize| -> Vec<usize> {
            // Partial Fisher-Yates: the first k positions become a uniform sample.
            let k = k.min(pool.len());
            for i in 0..k {
                let j = rng.random_range(i..pool.len());
                pool.swap(i, j);
            }
            pool[..k].to_vec()
        };
        let mut chosen = pick(&mut free, per_class);
        if chosen.len() < per_class {
            let extra = pick(&mut used, per_class - chosen.len());
            overlap[class] = extra.len();
            chosen.extend(extra);
        }
        chosen.sort_unstable();
        indices.extend(chosen);
    }
    let shared: usize = overlap.iter().sum();
    if shared > 0 {
        let classes: Vec<usize> = (0..num_classes).filter(|&c| overlap[c] > 0).collect();
        tracing::warn!(
            shared,
            ?classes,
            "validation hold-out: these classes have fewer than {per_class} images outside the training subset, so {shared} validation images are also training images"
        );
    }
    Ok(Holdout { indices, overlap })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_outputs() {
        // Reference values of the MT19937 paper's generator.
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
        assert_eq!(Mt19937::new(0).next_u32(), 2_357_136_044);
        let mut g = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.next_u32();
        }
        // The C++ standard requires the 10000th output of std::mt19937 to be this.
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn shuffle_matches_numpy_legacy() {
        // np.random.seed(0); a = np.arange(20); np.random.shuffle(a); then a
        // second shuffle of np.arange(7) continuing the same stream.
        let mut g = Mt19937::new(0);
        let mut a: Vec<usize> = (0..20).collect();
        g.shuffle(&mut a);
        assert_eq!(
            a,
            [18, 1, 19, 8, 10, 17, 6, 13, 4, 2, 5, 14, 9, 7, 16, 11, 3, 0, 15, 12]
        );
        let mut b: Vec<usize> = (0..7).collect();
        g.shuffle(&mut b);
        assert_eq!(b, [5, 2, 3, 4, 1, 0, 6]);
    }

    #[test]
    fn subset_matches_ldam_code() {
        // imbalance_cifar.py's gen_imbalanced_data on targets [i % 3 for i in
        // range(30)] with counts [10, 5, 2], computed with NumPy.
        let labels: Vec<u32> = (0..30).map(|i| i % 3).collect();
        let s = numpy_subset(&labels, &[10, 5, 2], 0).unwrap();
        assert_eq!(
            s,
            [6, 24, 12, 27, 3, 18, 21, 9, 0, 15, 10, 16, 4, 7, 28, 8, 11]
        );
        // A CIFAR-10-sized case: targets [i % 10 for i in range(50000)], rho 100.
        let labels: Vec<u32> = (0..50_000).map(|i| i % 10).collect();
        let counts = class_counts(Profile::Exponential, 5000, 10, 100.0).unwrap();
        let s = numpy_subset(&labels, &counts, 0).unwrap();
        assert_eq!(s.len(), 12406);
        assert_eq!(s.iter().sum::<usize>(), 309_550_124);
        assert_eq!(&s[..5], &[3980, 38330, 48360, 45720, 6360]);
        assert_eq!(&s[5000..5005], &[5971, 3321, 5211, 39351, 48001]);
        assert_eq!(&s[s.len() - 5..], &[22619, 669, 15789, 4339, 11629]);
        let e = numpy_subset(&labels, &[5001; 10], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 0 has 5000 images"), "{e}");
    }

    #[test]
    fn standard_cifar_lt_counts() {
        let c10 = |rho| class_counts(Profile::Exponential, 5000, 10, rho).unwrap();
        assert_eq!(
            c10(100.0),
            [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        );
        assert_eq!(
            c10(50.0),
            [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
        );
        assert_eq!(
            c10(10.0),
            [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
        );
        let total = |c: Vec<usize>| c.iter().sum::<usize>();
        assert_eq!(
            [total(c10(100.0)), total(c10(50.0)), total(c10(10.0))],
            [12406, 13996, 20431]
        );
        let c100 = |rho| class_counts(Profile::Exponential, 500, 100, rho).unwrap();
        assert_eq!(
            [total(c100(100.0)), total(c100(50.0)), total(c100(10.0))],
            [10847, 12608, 19573]
        );
        let r100 = c100(100.0);
        assert_eq!(&r100[..5], &[500, 477, 455, 434, 415]);
        assert_eq!(&r100[95..], &[6, 5, 5, 5, 5]);
        // Many / medium / few by count: 35 / 35 / 30 at rho 100.
        use lt_core::stats::{ClassStats, GroupRule};
        let g = |c| ClassStats::from_counts(c).group_sizes(&GroupRule::default());
        assert_eq!(g(c100(100.0)), [35, 35, 30]);
        assert_eq!(g(c100(50.0)), [41, 41, 18]);
        assert_eq!(g(c100(10.0)), [69, 31, 0]);
        assert_eq!(g(c10(100.0)), [8, 2, 0]);
    }

    #[test]
    fn step_profile() {
        let c = class_counts(Profile::step(), 500, 10, 10.0).unwrap();
        assert_eq!(c, [500, 500, 500, 500, 500, 50, 50, 50, 50, 50]);
        let c = class_counts(Profile::Step { mu: 0.3 }, 100, 10, 100.0).unwrap();
        assert_eq!(c, [100, 100, 100, 100, 100, 100, 100, 1, 1, 1]);
        let odd = class_counts(Profile::step(), 10, 5, 2.0).unwrap();
        assert_eq!(odd, [10, 10, 10, 5, 5]);
        assert!(class_counts(Profile::Step { mu: 1.5 }, 1, 2, 2.0).is_err());
        assert!(class_counts(Profile::Exponential, 1, 2, 0.5).is_err());
        assert!(class_counts(Profile::Exponential, 1, 2, f64::NAN).is_err());
        assert_eq!(class_counts(Profile::Exponential, 7, 1, 10.0).unwrap(), [7]);
    }

    #[test]
    fn spec_serde_and_generic_subset() {
        let spec: LongTailSpec =
            serde_json::from_str(r#"{"profile":{"step":{"mu":0.5}},"rho":4,"seed":3}"#).unwrap();
        assert_eq!(spec.profile, Profile::Step { mu: 0.5 });
        let spec2: LongTailSpec =
            serde_json::from_str(r#"{"profile":"exponential","rho":4}"#).unwrap();
        assert!(
            serde_json::from_str::<LongTailSpec>(r#"{"profile":"exponential","rho":4,"x":1}"#)
                .is_err()
        );
        assert_eq!(spec2, LongTailSpec::exponential(4.0));
        // Unequal classes: n_max defaults to the smallest class (8).
        let labels: Vec<u32> = (0..30)
            .map(|i| if i < 8 { 0 } else { 1 + (i % 2) })
            .collect();
        let lt = long_tailed_subset(&labels, 3, &spec).unwrap();
        assert_eq!(lt.counts, [8, 8, 2]);
        assert_eq!(lt.indices.len(), 18);
        assert_eq!(lt, long_tailed_subset(&labels, 3, &spec).unwrap());
        assert!(lt.indices[..8].iter().all(|&i| labels[i] == 0));
    }

    #[test]
    fn holdout_is_balanced_disjoint_and_seeded() {
        let labels: Vec<u32> = (0..300).map(|i| i % 3).collect();
        let counts = [100, 50, 10];
        let train = numpy_subset(&labels, &counts, 0).unwrap();
        let h = balanced_holdout(&labels, 3, &train, 20, 7).unwrap();
        assert_eq!(h.indices.len(), 60);
        assert_eq!(h.overlap, [20, 0, 0]);
        for c in 0..3u32 {
            assert_eq!(h.indices.iter().filter(|&&i| labels[i] == c).count(), 20);
        }
        for &i in &h.indices {
            if labels[i] != 0 {
                assert!(!train.contains(&i));
            }
        }
        assert_eq!(h, balanced_holdout(&labels, 3, &train, 20, 7).unwrap());
        assert_ne!(h, balanced_holdout(&labels, 3, &train, 20, 8).unwrap());
        assert!(balanced_holdout(&labels, 3, &train, 101, 7).is_err());
    }
}
