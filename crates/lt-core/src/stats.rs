//! Class statistics: per-class training counts and the many / medium / few
//! grouping used by every long-tailed benchmark.
//!
//! Groups are defined by *training* counts, as the reference evaluation does:
//! many-shot `n > 100`, medium-shot `20 <= n <= 100`, few-shot `n < 20`. The
//! thresholds are configurable, and a second rule (fixed class-index ranges,
//! used by some CIFAR-LT peers) is available as [`GroupRule::IndexRanges`].

use serde::{Deserialize, Serialize};

/// One of the three shot groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShotGroup {
    /// Classes with many training images (`n > many_above`).
    Many,
    /// Classes in between.
    Medium,
    /// Classes with few training images (`n < few_below`).
    Few,
}

impl ShotGroup {
    /// All groups in table order.
    pub const ALL: [ShotGroup; 3] = [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few];

    /// Lower-case name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ShotGroup::Many => "many",
            ShotGroup::Medium => "medium",
            ShotGroup::Few => "few",
        }
    }
}

/// Count thresholds of the many / medium / few split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupThresholds {
    /// A class is many-shot when its training count is strictly above this (100).
    pub many_above: usize,
    /// A class is few-shot when its training count is strictly below this (20).
    pub few_below: usize,
}

impl Default for GroupThresholds {
    fn default() -> Self {
        Self {
            many_above: 100,
            few_below: 20,
        }
    }
}

impl GroupThresholds {
    /// The group of a class with `count` training images.
    pub fn group_of(&self, count: usize) -> ShotGroup {
        if count > self.many_above {
            ShotGroup::Many
        } else if count < self.few_below {
            ShotGroup::Few
        } else {
            ShotGroup::Medium
        }
    }
}

/// How classes are assigned to groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum GroupRule {
    /// By training count (the reference rule).
    TrainCount(GroupThresholds),
    /// By class index: classes `0..many_end` are many-shot, `many_end..medium_end`
    /// medium-shot, the rest few-shot (MiSLAS-style CIFAR ranges).
    IndexRanges {
        /// End (exclusive) of the many-shot index range.
        many_end: usize,
        /// End (exclusive) of the medium-shot index range.
        medium_end: usize,
    },
}

impl Default for GroupRule {
    fn default() -> Self {
        GroupRule::TrainCount(GroupThresholds::default())
    }
}

impl std::fmt::Display for GroupRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupRule::TrainCount(t) => write!(
                f,
                "train_count (many > {}, medium {}..={}, few < {})",
                t.many_above, t.few_below, t.many_above, t.few_below
            ),
            GroupRule::IndexRanges {
                many_end,
                medium_end,
            } => write!(
                f,
                "index_ranges (many 0..{many_end}, medium {many_end}..{medium_end}, few {medium_end}..)"
            ),
        }
    }
}

/// Per-class training counts of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    counts: Vec<usize>,
}

impl ClassStats {
    /// Counts the labels of a split with `num_classes` classes. Labels outside
    /// `0..num_classes` are the caller's bug and are rejected earlier by the
    /// readers; here they are ignored.
    pub fn from_labels(labels: &[u32], num_classes: usize) -> Self {
        let mut counts = vec![0usize; num_classes];
        for &l in labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        Self { counts }
    }

    /// Wraps known per-class counts.
    pub fn from_counts(counts: Vec<usize>) -> Self {
        Self { counts }
    }

    /// Per-class counts, indexed by label.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.counts.len()
    }

    /// Total number of samples.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// The log class prior, ln(n_j / N) per class (logit adjustment); the
    /// error is the first class without an image (its log prior is −∞).
    pub fn log_prior(&self) -> Result<Vec<f64>, usize> {
        let total = self.total() as f64;
        match self.counts().iter().position(|&n| n == 0) {
            Some(c) => Err(c),
            None => Ok(self
                .counts()
                .iter()
                .map(|&n| (n as f64 / total).ln())
                .collect()),
        }
    }

    /// Largest over smallest class count (the imbalance ratio rho); `None` when a
    /// class is empty.
    pub fn imbalance_ratio(&self) -> Option<f64> {
        let max = *self.counts.iter().max()?;
        let min = *self.counts.iter().min()?;
        (min > 0).then(|| max as f64 / min as f64)
    }

    /// The group of every class under `rule`.
    pub fn groups(&self, rule: &GroupRule) -> Vec<ShotGroup> {
        (0..self.counts.len())
            .map(|c| match rule {
                GroupRule::TrainCount(t) => t.group_of(self.counts[c]),
                GroupRule::IndexRanges {
                    many_end,
                    medium_end,
                } => {
                    if c < *many_end {
                        ShotGroup::Many
                    } else if c < *medium_end {
                        ShotGroup::Medium
                    } else {
                        ShotGroup::Few
                    }
                }
            })
            .collect()
    }

    /// Number of classes in each group, in [`ShotGroup::ALL`] order.
    pub fn group_sizes(&self, rule: &GroupRule) -> [usize; 3] {
        let mut sizes = [0; 3];
        for g in self.groups(rule) {
            sizes[g as usize] += 1;
        }
        sizes
    }

    /// A printable summary (for a `split-stats` command): totals, imbalance
    /// ratio, the rule, and group sizes; with the alternate flag (`{:#}`) also
    /// one line per class with its name (when given), count and group.
    pub fn summary<'a>(
        &'a self,
        rule: &'a GroupRule,
        class_names: Option<&'a [String]>,
    ) -> StatsSummary<'a> {
        StatsSummary {
            stats: self,
            rule,
            class_names,
        }
    }
}

/// Display adapter returned by [`ClassStats::summary`].
#[derive(Debug, Clone, Copy)]
pub struct StatsSummary<'a> {
    stats: &'a ClassStats,
    rule: &'a GroupRule,
    class_names: Option<&'a [String]>,
}

impl std::fmt::Display for StatsSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.stats;
        let counts = s.counts();
        let max = counts.iter().max().copied().unwrap_or(0);
        let min = counts.iter().min().copied().unwrap_or(0);
        writeln!(
            f,
            "classes {}, images {}, per class max {max} / min {min}, imbalance ratio {}",
            s.num_classes(),
            s.total(),
            s.imbalance_ratio().map_or_else(
                || "undefined (empty class)".to_string(),
                |r| format!("{r:.2}")
            )
        )?;
        writeln!(f, "groups by {}", self.rule)?;
        let groups = s.groups(self.rule);
        for g in ShotGroup::ALL {
            let (classes, images) = groups
                .iter()
                .zip(counts)
                .filter(|(gg, _)| **gg == g)
                .fold((0, 0), |(c, n), (_, k)| (c + 1, n + k));
            writeln!(
                f,
                "  {:<6} {classes:>6} classes {images:>9} images",
                g.name()
            )?;
        }
        if f.alternate() {
            writeln!(f, "{:>6}  {:<24} {:>8}  group", "class", "name", "count")?;
            for (c, (&n, g)) in counts.iter().zip(&groups).enumerate() {
                let name = self
                    .class_names
                    .and_then(|names| names.get(c))
                    .map_or("", String::as_str);
                writeln!(f, "{c:>6}  {name:<24} {n:>8}  {}", g.name())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_strict_at_both_ends() {
        let t = GroupThresholds::default();
        assert_eq!(t.group_of(101), ShotGroup::Many);
        assert_eq!(t.group_of(100), ShotGroup::Medium);
        assert_eq!(t.group_of(20), ShotGroup::Medium);
        assert_eq!(t.group_of(19), ShotGroup::Few);
        assert_eq!(t.group_of(0), ShotGroup::Few);
    }

    #[test]
    fn counts_and_groups() {
        let labels = [0u32, 0, 1, 2, 2, 2];
        let s = ClassStats::from_labels(&labels, 4);
        assert_eq!(s.counts(), &[2, 1, 3, 0]);
        assert_eq!(s.total(), 6);
        assert_eq!(s.imbalance_ratio(), None);
        let rule = GroupRule::TrainCount(GroupThresholds {
            many_above: 2,
            few_below: 2,
        });
        assert_eq!(
            s.groups(&rule),
            vec![
                ShotGroup::Medium,
                ShotGroup::Few,
                ShotGroup::Many,
                ShotGroup::Few
            ]
        );
        assert_eq!(s.group_sizes(&rule), [1, 1, 2]);
    }

    #[test]
    fn index_ranges() {
        let s = ClassStats::from_counts(vec![5; 10]);
        let rule = GroupRule::IndexRanges {
            many_end: 3,
            medium_end: 7,
        };
        assert_eq!(s.group_sizes(&rule), [3, 4, 3]);
    }
    #[test]
    fn summary_table() {
        let s = ClassStats::from_counts(vec![500, 50, 5]);
        let rule = GroupRule::default();
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let short = s.summary(&rule, Some(&names)).to_string();
        assert!(short.contains("classes 3, images 555"), "{short}");
        assert!(short.contains("imbalance ratio 100.00"), "{short}");
        assert!(
            short.contains("many        1 classes       500 images"),
            "{short}"
        );
        assert!(!short.contains("  b  "), "{short}");
        let long = format!("{:#}", s.summary(&rule, Some(&names)));
        assert!(
            long.contains("     2  c                               5  few"),
            "{long}"
        );
    }
}
