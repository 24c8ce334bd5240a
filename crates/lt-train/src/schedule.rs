//! Learning-rate schedules: constant, cosine to `eta_min`, step decay, and a
//! linear warm-up that composes with any of them.
//!
//! The learning rate at a point of training is
//! `lr = base_lr * warmup(t) * decay(t)`, both factors evaluated on the
//! absolute position `t` (epoch or iteration, see [`StepUnit`]):
//!
//! * `decay` — [`DecayKind::Constant`]: 1. [`DecayKind::Cosine`]:
//!   `eta_min/base + (1 - eta_min/base) * (1 + cos(pi * p / P)) / 2`, with
//!   `P` the total number of positions and `p = t` ([`CosineOffset::Pre11`]) or
//!   `p = t + 1` ([`CosineOffset::Post11`]). [`DecayKind::Step`]:
//!   `gamma^k`, `k` = number of milestones `m` (0-based epochs) with
//!   `epoch >= m` (PyTorch `MultiStepLR`).
//! * `warmup` — 1 after `warmup_epochs`; before, with `s = warmup_start_factor`
//!   and `W` the warm-up length in positions, `s + (1 - s) * (t + 1) / W`.
//!   `s = 0` reproduces LDAM-DRW's `lr * epoch / 5` (1-based epoch).
//!
//! **Cosine offset.** PyTorch's `CosineAnnealingLR` stepped once at the start
//! of each epoch gives two different sequences depending on the PyTorch
//! version (before / after 1.1 the scheduler step moved after the optimiser
//! step). The reference version is not recorded. We default to
//! [`CosineOffset::Pre11`], whose first epoch runs at the base learning rate
//! and whose last epoch still learns (5-epoch LWS at 0.2: 0.2, 0.181, 0.131,
//! 0.069, 0.019); [`CosineOffset::Post11`] starts one step later and runs the
//! last epoch at lr 0.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// How often the learning rate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepUnit {
    /// Once, at the start of each epoch (the reference).
    #[default]
    Epoch,
    /// Before every iteration.
    Iteration,
}

/// The two readings of a per-epoch cosine schedule (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CosineOffset {
    /// Epoch `e` (0-based) runs at `cos(pi * e / T)`: starts at the base lr.
    #[default]
    #[serde(rename = "pre_1_1")]
    Pre11,
    /// Epoch `e` (0-based) runs at `cos(pi * (e + 1) / T)`: ends at `eta_min`.
    #[serde(rename = "post_1_1")]
    Post11,
}

/// Shape of the decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// No decay.
    Constant,
    /// Cosine annealing to `eta_min`.
    #[default]
    Cosine,
    /// Multiply by `gamma` at each milestone.
    Step,
}

/// A learning-rate schedule as written in an experiment config
/// (`[stage1.schedule]`, `[stage2.crt.schedule]`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Decay shape.
    pub kind: DecayKind,
    /// Per epoch (reference) or per iteration.
    pub per: StepUnit,
    /// Cosine offset convention (cosine only).
    pub cosine_offset: CosineOffset,
    /// Final learning rate of the cosine (0 in the reference).
    pub eta_min: f64,
    /// Epochs (0-based) from which each further `gamma` applies (step only).
    pub milestones: Vec<usize>,
    /// Multiplicative factor per milestone (step only).
    pub gamma: f64,
    /// Length of the linear warm-up in epochs (0 = none).
    pub warmup_epochs: usize,
    /// Warm-up factor before the first step (see the module docs).
    pub warmup_start_factor: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: DecayKind::Cosine,
            per: StepUnit::Epoch,
            cosine_offset: CosineOffset::Pre11,
            eta_min: 0.0,
            milestones: Vec::new(),
            gamma: 0.1,
            warmup_epochs: 0,
            warmup_start_factor: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Checks the values; errors name the offending key.
    pub fn validate(&self, total_epochs: usize) -> Result<(), TrainError> {
        let bad = |key: &str, msg: String| Err(TrainError::Schedule(format!("`{key}`: {msg}")));
        if !(self.eta_min >= 0.0 && self.eta_min.is_finite()) {
            return bad(
                "eta_min",
                format!("must be finite and >= 0, got {}", self.eta_min),
            );
        }
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return bad(
                "gamma",
                format!("must be finite and > 0, got {}", self.gamma),
            );
        }
        if !(0.0..=1.0).contains(&self.warmup_start_factor) {
            return bad(
                "warmup_start_factor",
                format!("must be in [0, 1], got {}", self.warmup_start_factor),
            );
        }
        if self.warmup_epochs > total_epochs {
            return bad(
                "warmup_epochs",
                format!(
                    "{} is longer than the {total_epochs} epochs of training",
                    self.warmup_epochs
                ),
            );
        }
        if self.kind != DecayKind::Step && !self.milestones.is_empty() {
            return bad("milestones", "only used with kind = \"step\"".into());
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return bad("milestones", "must be strictly increasing".into());
        }
        Ok(())
    }

    /// Binds the schedule to a base learning rate and a training length.
    pub fn build(
        &self,
        base_lr: f64,
        total_epochs: usize,
        iters_per_epoch: usize,
    ) -> Result<LrSchedule, TrainError> {
        self.validate(total_epochs)?;
        if !(base_lr >= 0.0 && base_lr.is_finite()) {
            return Err(TrainError::Schedule(format!(
                "`lr` must be finite and >= 0, got {base_lr}"
            )));
        }
        Ok(LrSchedule {
            config: self.clone(),
            base_lr,
            total_epochs: total_epochs.max(1),
            iters_per_epoch: iters_per_epoch.max(1),
        })
    }
}

/// A [`ScheduleConfig`] bound to a base learning rate and a training length.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    config: ScheduleConfig,
    base_lr: f64,
    total_epochs: usize,
    iters_per_epoch: usize,
}

impl LrSchedule {
    /// The base learning rate.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// Whether the rate changes every iteration (otherwise only at epoch starts).
    pub fn per_iteration(&self) -> bool {
        self.config.per == StepUnit::Iteration
    }

    /// Learning rate for iteration `iter` (0-based, within the epoch) of epoch
    /// `epoch` (0-based). With per-epoch stepping `iter` is ignored.
    pub fn lr(&self, epoch: usize, iter: usize) -> f64 {
        let c = &self.config;
        let (t, total, warm) = match c.per {
            StepUnit::Epoch => (epoch, self.total_epochs, c.warmup_epochs),
            StepUnit::Iteration => {
                let n = self.iters_per_epoch;
                (
                    epoch * n + iter.min(n - 1),
                    self.total_epochs * n,
                    c.warmup_epochs * n,
                )
            }
        };
        let warmup = if t < warm {
            let s = c.warmup_start_factor;
            s + (1.0 - s) * (t + 1) as f64 / warm as f64
        } else {
            1.0
        };
        let lr = match c.kind {
            DecayKind::Constant => self.base_lr,
            DecayKind::Cosine => {
                let p = match c.cosine_offset {
                    CosineOffset::Pre11 => t,
                    CosineOffset::Post11 => t + 1,
                }
                .min(total);
                let cos = (1.0 + (std::f64::consts::PI * p as f64 / total as f64).cos()) / 2.0;
                c.eta_min + (self.base_lr - c.eta_min) * cos
            }
            DecayKind::Step => {
                let k = c.milestones.iter().filter(|&&m| epoch >= m).count();
                self.base_lr * c.gamma.powi(k as i32)
            }
        };
        lr * warmup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(offset: CosineOffset) -> ScheduleConfig {
        ScheduleConfig {
            cosine_offset: offset,
            ..Default::default()
        }
    }

    fn round3(x: f64) -> f64 {
        (x * 1000.0).round() / 1000.0
    }

    #[test]
    fn lws_five_epoch_cosine_both_offsets() {
        let pre = cosine(CosineOffset::Pre11).build(0.2, 5, 10).unwrap();
        let got: Vec<f64> = (0..5).map(|e| round3(pre.lr(e, 7))).collect();
        assert_eq!(got, vec![0.2, 0.181, 0.131, 0.069, 0.019]);
        let post = cosine(CosineOffset::Post11).build(0.2, 5, 10).unwrap();
        let got: Vec<f64> = (0..5).map(|e| round3(post.lr(e, 0))).collect();
        assert_eq!(got, vec![0.181, 0.131, 0.069, 0.019, 0.0]);
    }

    #[test]
    fn per_iteration_cosine_is_smooth() {
        let cfg = ScheduleConfig {
            per: StepUnit::Iteration,
            ..Default::default()
        };
        let s = cfg.build(1.0, 2, 4).unwrap();
        assert!(s.per_iteration());
        assert_eq!(s.lr(0, 0), 1.0);
        // Position 4 of 8 is the midpoint.
        assert!((s.lr(1, 0) - 0.5).abs() < 1e-12);
        let seq: Vec<f64> = (0..2)
            .flat_map(|e| (0..4).map(move |i| (e, i)))
            .map(|(e, i)| s.lr(e, i))
            .collect();
        assert!(seq.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn step_with_ldam_warmup() {
        // LDAM-DRW: 5-epoch warm-up lr*e/5 (1-based), x0.01 after 160, x0.0001 after 180.
        let cfg = ScheduleConfig {
            kind: DecayKind::Step,
            milestones: vec![160, 180],
            gamma: 0.01,
            warmup_epochs: 5,
            ..Default::default()
        };
        let s = cfg.build(0.1, 200, 100).unwrap();
        let warm: Vec<f64> = (0..6).map(|e| s.lr(e, 0)).collect();
        for (e, lr) in warm.iter().enumerate().take(5) {
            assert!((lr - 0.1 * (e + 1) as f64 / 5.0).abs() < 1e-12);
        }
        assert_eq!(warm[5], 0.1);
        assert_eq!(s.lr(159, 0), 0.1);
        assert!((s.lr(160, 0) - 1e-3).abs() < 1e-15);
        assert!((s.lr(199, 0) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn warmup_composes_with_cosine_and_start_factor() {
        let cfg = ScheduleConfig {
            warmup_epochs: 2,
            warmup_start_factor: 0.5,
            ..Default::default()
        };
        let s = cfg.build(1.0, 4, 1).unwrap();
        let cos = |e: f64| (1.0 + (std::f64::consts::PI * e / 4.0).cos()) / 2.0;
        assert!((s.lr(0, 0) - 0.75 * cos(0.0)).abs() < 1e-12);
        assert!((s.lr(1, 0) - cos(1.0)).abs() < 1e-12);
        assert!((s.lr(3, 0) - cos(3.0)).abs() < 1e-12);
    }

    #[test]
    fn constant_and_eta_min() {
        let c = ScheduleConfig {
            kind: DecayKind::Constant,
            ..Default::default()
        };
        assert_eq!(c.build(0.3, 3, 1).unwrap().lr(2, 0), 0.3);
        let c = ScheduleConfig {
            cosine_offset: CosineOffset::Post11,
            eta_min: 0.01,
            ..Default::default()
        };
        assert!((c.build(0.3, 3, 1).unwrap().lr(2, 0) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_key() {
        let c = ScheduleConfig {
            milestones: vec![3],
            ..Default::default()
        };
        let e = c.build(0.1, 10, 1).unwrap_err().to_string();
        assert!(e.contains("milestones"), "{e}");
        let c = ScheduleConfig {
            warmup_epochs: 20,
            ..Default::default()
        };
        assert!(c
            .build(0.1, 10, 1)
            .unwrap_err()
            .to_string()
            .contains("warmup_epochs"));
        let c = ScheduleConfig::default();
        assert!(c
            .build(f64::NAN, 10, 1)
            .unwrap_err()
            .to_string()
            .contains("lr"));
    }

    #[test]
    fn serde_names() {
        let c: ScheduleConfig =
            toml::from_str("kind = \"cosine\"\ncosine_offset = \"post_1_1\"\nper = \"iteration\"")
                .unwrap();
        assert_eq!(c.cosine_offset, CosineOffset::Post11);
        assert_eq!(c.per, StepUnit::Iteration);
        assert!(toml::from_str::<ScheduleConfig>("kindd = \"cosine\"").is_err());
    }
}
