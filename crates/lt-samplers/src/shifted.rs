//! Shifted test distributions: seeded sub-samples of a balanced test split
//! whose class distribution is long-tailed, forward (the training order) or
//! backward (reversed), as "test-agnostic long-tailed recognition" (Zhang et
//! al., SADE, NeurIPS 2022) evaluates.
//!
//! With n_max images per class available and C classes ranked from head to
//! tail (position r = 0 the class with the most training images), an
//! imbalance ρ keeps
//!
//! * forward: ⌊n_max · ρ^(−r/(C−1))⌋ images of the class at position r,
//! * backward: ⌊n_max · ρ^(−(C−1−r)/(C−1))⌋ (the tail of training is the head
//!   of the test set),
//! * uniform: the whole split,
//!
//! the counts SADE's CIFAR loaders compute (`img_max * imb_factor ** (r /
//! (C - 1.0))` truncated to an integer, with `imb_factor` = 1/ρ). n_max is
//! the smallest class count of the split (every class's count when the
//! split is balanced, as CIFAR's, ImageNet-LT's and Places-LT's test splits
//! are).
//!
//! Which images are kept: class c's dataset indices, in ascending order, are
//! shuffled by a ChaCha8 generator keyed `(seed, 5, c, 0)` (see the crate's
//! determinism notes), and the first n_c are kept. The permutation does not
//! depend on ρ or the direction, so at one seed a set at a larger count of a
//! class holds every image a smaller count holds (forward 50 ⊂ forward 25 per
//! class), as SADE's sets from one NumPy seed do. The chosen indices are
//! returned in ascending order.
//!
//! ```
//! use lt_samplers::{shifted_test_set, Imbalance, TestShift};
//!
//! // 4 classes, 10 test images each, labels 0 0 ... 3 3.
//! let labels: Vec<u32> = (0..40).map(|i| i / 10).collect();
//! let order = [0, 1, 2, 3]; // head to tail by training count
//! let shift = TestShift::Forward { imbalance: Imbalance::new(10.0)? };
//! let set = shifted_test_set(&labels, 4, &order, shift, 7)?;
//! // 10 * 10^(-r/3): 10, 4.64, 2.15, 1.
//! assert_eq!(set.class_counts, [10, 4, 2, 1]);
//! assert_eq!(set.indices.len(), 17);
//! assert!(set.indices.iter().all(|&i| i < 40));
//! let backward = TestShift::Backward { imbalance: Imbalance::new(10.0)? };
//! assert_eq!(shifted_test_set(&labels, 4, &order, backward, 7)?.class_counts, [1, 2, 4, 10]);
//! # Ok::<(), lt_samplers::SamplerError>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rng::{derived_rng, shuffle, Purpose};
use crate::SamplerError;

/// The imbalances SADE reports besides uniform: 50, 25, 10, 5 and 2.
pub const STANDARD_IMBALANCES: [f64; 5] = [50.0, 25.0, 10.0, 5.0, 2.0];

/// An imbalance ratio ρ = n_max / n_min: a finite number ≥ 1.
///
/// Checked when built ([`Imbalance::new`]) and when deserialised, so a config
/// key holding one reports a bad value with the key's path.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Imbalance(f64);

impl Imbalance {
    /// The ratio, if it is finite and at least 1.
    pub fn new(ratio: f64) -> Result<Self, SamplerError> {
        if ratio.is_finite() && ratio >= 1.0 {
            Ok(Imbalance(ratio))
        } else {
            Err(SamplerError::InvalidImbalance { value: ratio })
        }
    }

    /// The ratio ρ.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The standard list, [`STANDARD_IMBALANCES`].
    pub fn standard() -> Vec<Imbalance> {
        STANDARD_IMBALANCES.iter().map(|&r| Imbalance(r)).collect()
    }
}

impl TryFrom<f64> for Imbalance {
    type Error = SamplerError;
    fn try_from(ratio: f64) -> Result<Self, SamplerError> {
        Imbalance::new(ratio)
    }
}

impl From<Imbalance> for f64 {
    fn from(i: Imbalance) -> f64 {
        i.0
    }
}

impl fmt::Display for Imbalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class distribution of a test set drawn from a balanced split.
///
/// Serialised with a `direction` tag: `{ direction = "forward", imbalance =
/// 50.0 }`, `{ direction = "uniform" }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "snake_case", deny_unknown_fields)]
pub enum TestShift {
    /// Long-tailed in the training order: the class with the most training
    /// images keeps the most test images.
    Forward {
        /// Largest over smallest class count of the test set.
        imbalance: Imbalance,
    },
    /// The whole balanced split.
    Uniform,
    /// Long-tailed in the reverse order: the training tail is the test head.
    Backward {
        /// Largest over smallest class count of the test set.
        imbalance: Imbalance,
    },
}

impl TestShift {
    /// Forward sets from the most imbalanced down, uniform, then backward
    /// sets from the least imbalanced up: the left-to-right order of SADE's
    /// tables (forward-50 ... uniform ... backward-50 for
    /// [`STANDARD_IMBALANCES`]).
    pub fn sequence(imbalances: &[Imbalance]) -> Vec<TestShift> {
        let mut sorted = imbalances.to_vec();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        sorted.dedup();
        let mut out: Vec<TestShift> = sorted
            .iter()
            .map(|&imbalance| TestShift::Forward { imbalance })
            .collect();
        out.push(TestShift::Uniform);
        out.extend(
            sorted
                .iter()
                .rev()
                .map(|&imbalance| TestShift::Backward { imbalance }),
        );
        out
    }

    /// The imbalance ρ (1 for uniform).
    pub fn imbalance(self) -> f64 {
        match self {
            TestShift::Forward { imbalance } | TestShift::Backward { imbalance } => imbalance.0,
            TestShift::Uniform => 1.0,
        }
    }

    /// A signed position on an imbalance axis: ln ρ forward, 0 uniform,
    /// −ln ρ backward (forward sets to the right of uniform).
    pub fn signed_log_imbalance(self) -> f64 {
        match self {
            TestShift::Forward { imbalance } => imbalance.0.ln(),
            TestShift::Uniform => 0.0,
            TestShift::Backward { imbalance } => -imbalance.0.ln(),
        }
    }

    /// A short name: `forward-50`, `uniform`, `backward-2.5`.
    pub fn name(self) -> String {
        match self {
            TestShift::Forward { imbalance } => format!("forward-{imbalance}"),
            TestShift::Uniform => "uniform".into(),
            TestShift::Backward { imbalance } => format!("backward-{imbalance}"),
        }
    }

    /// The number of images kept of the class at `position` (0 = head of
    /// training) out of `num_classes`, with `per_class` (n_max) available;
    /// uniform keeps `per_class`.
    pub fn class_count(self, position: usize, num_classes: usize, per_class: usize) -> usize {
        let (imbalance, steps) = match self {
            TestShift::Uniform => return per_class,
            TestShift::Forward { imbalance } => (imbalance.0, position),
            TestShift::Backward { imbalance } => {
                (imbalance.0, num_classes.saturating_sub(1 + position))
            }
        };
        if num_classes < 2 {
            return per_class;
        }
        // As SADE: n_max * (1 / rho) ** (r / (C - 1.0)), truncated.
        let exponent = steps as f64 / (num_classes - 1) as f64;
        let n = per_class as f64 * (1.0 / imbalance).powf(exponent);
        (n as usize).min(per_class)
    }
}

impl fmt::Display for TestShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A test set drawn by [`shifted_test_set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShiftedTestSet {
    /// Dataset indices of the kept images, ascending.
    pub indices: Vec<usize>,
    /// Images kept per class (by class id).
    pub class_counts: Vec<usize>,
    /// n_max: the smallest class count of the split.
    pub per_class: usize,
}

/// Classes ordered from head to tail by training count (largest first, ties
/// by class id): the order a forward set follows.
pub fn head_to_tail(train_counts: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..train_counts.len()).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(train_counts[c]), c));
    order
}

/// Draws the test set of `shift` from a split with `labels` (one per dataset
/// index) over `num_classes` classes; `order` lists every class once, from
/// the head of training to its tail (see [`head_to_tail`]). Deterministic in
/// `seed` (see the module docs for the draw).
///
/// Fails on empty labels, a label out of range, an `order` that is not a
/// permutation of the classes, or a class without any image in the split
/// (n_max would be 0).
pub fn shifted_test_set(
    labels: &[u32],
    num_classes: usize,
    order: &[usize],
    shift: TestShift,
    seed: u64,
) -> Result<ShiftedTestSet, SamplerError> {
    if labels.is_empty() {
        return Err(SamplerError::EmptyLabels);
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (index, &label) in labels.iter().enumerate() {
        by_class
            .get_mut(label as usize)
            .ok_or(SamplerError::LabelOutOfRange {
                index,
                label,
                num_classes,
            })?
            .push(index);
    }
    check_order(order, num_classes)?;
    if let Some(class) = by_class.iter().position(Vec::is_empty) {
        return Err(SamplerError::NoTestImages { class, num_classes });
    }
    let per_class = by_class.iter().map(Vec::len).min().unwrap_or(0);
    if shift == TestShift::Uniform {
        return Ok(ShiftedTestSet {
            indices: (0..labels.len()).collect(),
            class_counts: by_class.iter().map(Vec::len).collect(),
            per_class,
        });
    }
    let mut class_counts = vec![0; num_classes];
    let mut indices = Vec::new();
    for (position, &class) in order.iter().enumerate() {
        let n = shift.class_count(position, num_classes, per_class);
        let items = &mut by_class[class];
        let mut rng = derived_rng(seed, Purpose::ShiftedTest, class as u64, 0);
        shuffle(items, &mut rng);
        indices.extend_from_slice(&items[..n]);
        class_counts[class] = n;
    }
    indices.sort_unstable();
    Ok(ShiftedTestSet {
        indices,
        class_counts,
        per_class,
    })
}

fn check_order(order: &[usize], num_classes: usize) -> Result<(), SamplerError> {
    let bad = |reason: String| Err(SamplerError::InvalidClassOrder { reason });
    if order.len() != num_classes {
        return bad(format!("{} entries for {num_classes} classes", order.len()));
    }
    let mut seen = vec![false; num_classes];
    for &c in order {
        match seen.get_mut(c) {
            None => return bad(format!("class {c} is not below {num_classes}")),
            Some(true) => return bad(format!("class {c} is listed twice")),
            Some(s) => *s = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(classes: u32, per_class: u32) -> Vec<u32> {
        // Interleaved, so class order and index order differ.
        (0..classes * per_class).map(|i| i % classes).collect()
    }

    fn shift(forward: bool, rho: f64) -> TestShift {
        let imbalance = Imbalance::new(rho).unwrap();
        if forward {
            TestShift::Forward { imbalance }
        } else {
            TestShift::Backward { imbalance }
        }
    }

    /// CIFAR-100's test split (100 per class): the counts SADE's formula gives.
    #[test]
    fn cifar100_counts_follow_the_formula() {
        let labels = balanced(100, 100);
        let order: Vec<usize> = (0..100).collect();
        for rho in STANDARD_IMBALANCES {
            for forward in [true, false] {
                let s = shift(forward, rho);
                let set = shifted_test_set(&labels, 100, &order, s, 0).unwrap();
                for r in 0..100usize {
                    let e = if forward { r } else { 99 - r } as f64 / 99.0;
                    let want = (100.0 * (1.0 / rho).powf(e)) as usize;
                    assert_eq!(set.class_counts[r], want, "{s} class {r}");
                }
                assert_eq!(set.class_counts[if forward { 0 } else { 99 }], 100);
                let tail = set.class_counts[if forward { 99 } else { 0 }];
                // 100 / rho, up to the truncation of a rounded power.
                assert!((tail as f64 - 100.0 / rho).abs() <= 1.0, "{s}: {tail}");
                assert_eq!(
                    set.indices.len(),
                    set.class_counts.iter().sum::<usize>(),
                    "{s}"
                );
                // The kept images have exactly the requested class counts.
                let mut got = vec![0; 100];
                for &i in &set.indices {
                    got[labels[i] as usize] += 1;
                }
                assert_eq!(got, set.class_counts, "{s}");
                assert!(set.indices.windows(2).all(|w| w[0] < w[1]));
            }
        }
        // Known totals: forward and backward hold as many images.
        let f = shifted_test_set(&labels, 100, &order, shift(true, 50.0), 0).unwrap();
        let b = shifted_test_set(&labels, 100, &order, shift(false, 50.0), 0).unwrap();
        assert_eq!(f.indices.len(), b.indices.len());
        let u = shifted_test_set(&labels, 100, &order, TestShift::Uniform, 0).unwrap();
        assert_eq!(u.indices, (0..10_000).collect::<Vec<_>>());
        assert_eq!(u.class_counts, vec![100; 100]);
    }

    #[test]
    fn reproducible_per_seed_and_different_across_seeds() {
        let labels = balanced(10, 30);
        let order: Vec<usize> = (0..10).rev().collect();
        let s = shift(true, 10.0);
        let a = shifted_test_set(&labels, 10, &order, s, 3).unwrap();
        assert_eq!(a, shifted_test_set(&labels, 10, &order, s, 3).unwrap());
        let b = shifted_test_set(&labels, 10, &order, s, 4).unwrap();
        assert_eq!(a.class_counts, b.class_counts);
        assert_ne!(a.indices, b.indices);
        // The order decides which class is the head: class 9 here.
        assert_eq!(a.class_counts[9], 30);
        assert_eq!(a.class_counts[0], 3);
    }

    /// At one seed, a smaller count of a class keeps a subset of a larger one.
    #[test]
    fn sets_are_nested_across_imbalances() {
        let labels = balanced(5, 20);
        let order: Vec<usize> = (0..5).collect();
        let strong = shifted_test_set(&labels, 5, &order, shift(true, 20.0), 1).unwrap();
        let mild = shifted_test_set(&labels, 5, &order, shift(true, 2.0), 1).unwrap();
        assert!(strong.indices.iter().all(|i| mild.indices.contains(i)));
    }

    /// n_max is the smallest class of an unbalanced split.
    #[test]
    fn per_class_is_the_smallest_class() {
        let mut labels = balanced(3, 10);
        labels.extend([0, 0, 1]);
        let set = shifted_test_set(&labels, 3, &[0, 1, 2], shift(false, 1.0), 0).unwrap();
        assert_eq!(set.per_class, 10);
        assert_eq!(set.class_counts, [10, 10, 10]);
        let u = shifted_test_set(&labels, 3, &[0, 1, 2], TestShift::Uniform, 0).unwrap();
        assert_eq!(u.class_counts, [12, 11, 10]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let labels = balanced(3, 4);
        let s = shift(true, 2.0);
        for bad in [0.5, 0.0, -3.0, f64::NAN, f64::INFINITY] {
            let e = Imbalance::new(bad).unwrap_err();
            assert!(matches!(e, SamplerError::InvalidImbalance { .. }));
            assert!(e.to_string().contains("finite number >= 1"), "{e}");
        }
        assert_eq!(
            shifted_test_set(&[], 3, &[0, 1, 2], s, 0),
            Err(SamplerError::EmptyLabels)
        );
        assert!(matches!(
            shifted_test_set(&[0, 5], 3, &[0, 1, 2], s, 0),
            Err(SamplerError::LabelOutOfRange { index: 1, .. })
        ));
        for order in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
            let e = shifted_test_set(&labels, 3, order, s, 0).unwrap_err();
            assert!(matches!(e, SamplerError::InvalidClassOrder { .. }), "{e}");
        }
        let e = shifted_test_set(&[0, 2, 2], 3, &[0, 1, 2], s, 0).unwrap_err();
        assert_eq!(
            e,
            SamplerError::NoTestImages {
                class: 1,
                num_classes: 3
            }
        );
    }

    #[test]
    fn sequence_names_and_serde() {
        let seq =
            TestShift::sequence(&[Imbalance::new(2.0).unwrap(), Imbalance::new(50.0).unwrap()]);
        let names: Vec<String> = seq.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "forward-50",
                "forward-2",
                "uniform",
                "backward-2",
                "backward-50"
            ]
        );
        let x: Vec<f64> = seq.iter().map(|s| s.signed_log_imbalance()).collect();
        assert!(x.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(TestShift::sequence(&Imbalance::standard()).len(), 11);
        let json = serde_json::to_string(&seq[0]).unwrap();
        assert_eq!(json, r#"{"direction":"forward","imbalance":50.0}"#);
        assert_eq!(serde_json::from_str::<TestShift>(&json).unwrap(), seq[0]);
        assert_eq!(
            serde_json::to_string(&TestShift::Uniform).unwrap(),
            r#"{"direction":"uniform"}"#
        );
        let e = serde_json::from_str::<TestShift>(r#"{"direction":"backward","imbalance":0.5}"#)
            .unwrap_err();
        assert!(e.to_string().contains("0.5"), "{e}");
        let list: Vec<Imbalance> = toml::from_str::<toml::Table>("x = [50, 2.5]").unwrap()["x"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(
            list.iter().map(|i| i.get()).collect::<Vec<_>>(),
            [50.0, 2.5]
        );
    }

    #[test]
    fn head_to_tail_sorts_by_training_count() {
        assert_eq!(head_to_tail(&[5, 50, 5, 500]), [3, 1, 0, 2]);
    }
}
