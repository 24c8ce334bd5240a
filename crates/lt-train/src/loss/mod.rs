//! Training losses, behind one trait and one registry.
//!
//! A stage's loss is chosen by `loss = { kind = "<id>", ... }` in its config
//! section (`[stage1]`, `[stage2.crt]`, ...); the default is cross-entropy.
//! Each loss is one file of this module implementing [`LossKind`] (its name,
//! its options, and how it builds a [`Loss`] for a run) plus one line in
//! [`REGISTRY`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_train::loss::{LossConfig, LossContext};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = LossConfig::default(); // cross-entropy
//! let loss = cfg.build(&LossContext { class_counts: &[10, 2], epochs: 1, cosine_scale: None })?;
//! let logits = Tensor::new(&[[2f32, 0.0], [0.0, 0.0]], &Device::Cpu)?;
//! let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
//! let l = loss.forward(&logits, &labels, 0)?.to_scalar::<f32>()?;
//! let want = ((1.0 + (-2f32).exp()).ln() + 2f32.ln()) / 2.0;
//! assert!((l - want).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```

mod class_balanced;
mod cross_entropy;
mod label_aware_smoothing;
mod ldam;
mod logit_adjusted;
pub mod weights;

pub use class_balanced::{CbForm, ClassBalanced, ClassBalancedLoss, Reweighted, ReweightedLoss};
pub use cross_entropy::CrossEntropy;
pub use label_aware_smoothing::{
    label_aware_epsilons, LabelAwareSmoothing, LabelAwareSmoothingLoss, SmoothingShape,
};
pub use ldam::{LdamDrw, LdamLoss};
pub use logit_adjusted::{BalancedSoftmax, LogitAdjusted, LogitAdjustedLoss};

use std::fmt;

use candle_core::Tensor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ConfigError;

/// A loss built for one run.
pub trait Loss: Send + Sync + fmt::Debug {
    /// The mean loss of a batch: logits `(B, C)`, labels `(B,)` u32, at
    /// `epoch` (0-based; losses with a schedule, such as deferred
    /// re-weighting, use it).
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        epoch: usize,
    ) -> candle_core::Result<Tensor>;
}

/// What a loss may depend on besides its options.
#[derive(Debug, Clone, Copy)]
pub struct LossContext<'a> {
    /// Training images per class (the class prior).
    pub class_counts: &'a [usize],
    /// Epochs of the stage.
    pub epochs: usize,
    /// `Some(s)` when the trained head's logits are cosines times `s`
    /// ([`lt_heads::Classifier::cosine_scale`]); LDAM's margins are in
    /// cosine units.
    pub cosine_scale: Option<f64>,
}

/// A kind of loss: its name, what it is, and how it is built.
pub trait LossKind: Sync {
    /// The `kind` in configs.
    fn id(&self) -> &'static str;
    /// One line for `--help` and the docs.
    fn about(&self) -> &'static str;
    /// Checks the options (every key but `kind`); the error names the key
    /// (relative to the `loss` table).
    fn check(&self, options: &toml::Table) -> Result<(), ConfigError>;
    /// Builds the loss.
    fn build(
        &self,
        options: &toml::Table,
        ctx: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError>;
}

/// Every loss, by name.
pub static REGISTRY: &[&dyn LossKind] = &[
    &cross_entropy::CrossEntropy {
        label_smoothing: 0.0,
    },
    &logit_adjusted::LogitAdjusted,
    &logit_adjusted::BalancedSoftmax,
    &ldam::LdamDrw,
    &class_balanced::ClassBalanced,
    &class_balanced::Reweighted,
    &label_aware_smoothing::LabelAwareSmoothing,
];

/// The loss named `id`.
pub fn find(id: &str) -> Option<&'static dyn LossKind> {
    REGISTRY.iter().copied().find(|k| k.id() == id)
}

fn names() -> String {
    REGISTRY
        .iter()
        .map(|k| k.id())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stage's `loss = { kind = "...", ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    /// The loss's name.
    pub kind: String,
    /// Its options (every key but `kind`).
    pub options: toml::Table,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: "cross_entropy".to_string(),
            options: toml::Table::new(),
        }
    }
}

impl LossConfig {
    /// Plain cross-entropy (left out of saved configs, so that configs written
    /// before losses were configurable keep their hash).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the kind and its options; keys are relative to the `loss`
    /// table.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let kind = find(&self.kind).ok_or_else(|| {
            ConfigError::at(
                "kind",
                format!("unknown loss `{}`, expected one of: {}", self.kind, names()),
            )
        })?;
        kind.check(&self.options)
    }

    /// Builds the loss for a run.
    pub fn build(&self, ctx: &LossContext<'_>) -> Result<Box<dyn Loss>, ConfigError> {
        self.validate()?;
        let kind = find(&self.kind).expect("validated");
        kind.build(&self.options, ctx)
    }
}

impl Serialize for LossConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = self.options.clone();
        t.insert("kind".into(), toml::Value::String(self.kind.clone()));
        t.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LossConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut options = toml::Table::deserialize(d)?;
        let kind = match options.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(serde::de::Error::custom(format!(
                    "`kind` must be a string, got {other}"
                )))
            }
            None => return Err(serde::de::Error::missing_field("kind")),
        };
        Ok(LossConfig { kind, options })
    }
}

/// Fails, naming the first class without a training image, for the losses
/// whose per-class quantity (`what`) is infinite at a count of 0.
pub(crate) fn require_every_class(counts: &[usize], what: &str) -> Result<(), ConfigError> {
    match counts.iter().position(|&n| n == 0) {
        Some(c) => Err(ConfigError::at(
            "kind",
            format!("class {c} has no training image: its {what} is infinite"),
        )),
        None => Ok(()),
    }
}

/// Log-softmax of the logits `(B, C)` and each row's −log p of its label
/// `(B,)`: the two terms every softmax loss here is made of.
pub(crate) fn log_softmax_and_nll(
    logits: &Tensor,
    labels: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let lsm = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = lsm
        .gather(&labels.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?;
    Ok((lsm, nll))
}

/// A number option: its value (integers accepted), `default` when absent;
/// `ok` checks the range, `range` says it in words.
pub(crate) fn float_option(
    options: &toml::Table,
    key: &str,
    default: f64,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<f64, ConfigError> {
    let v = match options.get(key) {
        None => return Ok(default),
        Some(toml::Value::Float(f)) => *f,
        Some(toml::Value::Integer(i)) => *i as f64,
        Some(other) => {
            return Err(ConfigError::at(
                key,
                format!("must be a number, got {other}"),
            ))
        }
    };
    if !v.is_finite() || !ok(v) {
        return Err(ConfigError::at(
            key,
            format!("must be finite and {range}, got {v}"),
        ));
    }
    Ok(v)
}

/// Rejects every option but those named.
pub(crate) fn only_keys(options: &toml::Table, allowed: &[&str]) -> Result<(), ConfigError> {
    match options.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ConfigError::at(
            k,
            format!(
                "unknown key `{k}`{}",
                if allowed.is_empty() {
                    " (this loss has no options)".to_string()
                } else {
                    format!(", expected one of: {}", allowed.join(", "))
                }
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_losses_and_keys_are_named() {
        let c = LossConfig {
            kind: "focal".into(),
            options: toml::Table::new(),
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("focal") && e.contains("cross_entropy"), "{e}");
        let mut c = LossConfig::default();
        c.options.insert("gamma".into(), toml::Value::Float(2.0));
        let e = c.validate().unwrap_err().within("stage1.loss");
        assert_eq!(e.key.as_deref(), Some("stage1.loss.gamma"));
        let parsed: LossConfig = toml::from_str("kind = \"cross_entropy\"").unwrap();
        assert!(parsed.is_default());
    }

    fn build(kind: &str, options: &str, counts: &[usize]) -> Box<dyn Loss> {
        let mut t: toml::Table = toml::from_str(options).unwrap();
        t.insert("kind".into(), toml::Value::String(kind.into()));
        let cfg: LossConfig = toml::Value::Table(t).try_into().unwrap();
        cfg.build(&LossContext {
            class_counts: counts,
            epochs: 1,
            cosine_scale: None,
        })
        .unwrap()
    }

    fn value(loss: &dyn Loss, logits: &[f32], c: usize, labels: &[u32]) -> f64 {
        let dev = candle_core::Device::Cpu;
        let z = Tensor::from_slice(logits, (labels.len(), c), &dev).unwrap();
        let y = Tensor::new(labels, &dev).unwrap();
        loss.forward(&z, &y, 0).unwrap().to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn hand_computed_values() {
        // Label smoothing 0.1 on logits (2, 0, 0), label 0:
        // 0.9 (lse - 2) + 0.1 (lse - 2/3), lse = ln(e^2 + 2).
        let lse = (2f64.exp() + 2.0).ln();
        let want = 0.9 * (lse - 2.0) + 0.1 * (lse - 2.0 / 3.0);
        let ce = build("cross_entropy", "label_smoothing = 0.1", &[1, 1, 1]);
        assert!((value(ce.as_ref(), &[2., 0., 0.], 3, &[0]) - want).abs() < 1e-6);
        // Logit adjustment with priors 0.75 / 0.25 and equal logits: the
        // adjusted logits are log prior, so the loss of class 1 is -ln 0.25.
        let la = build("logit_adjusted", "", &[3, 1]);
        assert!((value(la.as_ref(), &[0., 0.], 2, &[1]) - 4f64.ln()).abs() < 1e-6);
        // tau scales the adjustment: tau = 0 is plain cross-entropy (ln 2).
        let la0 = build("logit_adjusted", "tau = 0", &[3, 1]);
        assert!((value(la0.as_ref(), &[0., 0.], 2, &[1]) - 2f64.ln()).abs() < 1e-6);
        // Balanced Softmax is the logit-adjusted loss at tau = 1.
        let bs = build("balanced_softmax", "", &[3, 1]);
        let z = [0.3f32, -1.2, 2.0, 0.5];
        assert_eq!(
            value(bs.as_ref(), &z, 2, &[0, 1]),
            value(la.as_ref(), &z, 2, &[0, 1])
        );
        // Without smoothing the default is candle's cross-entropy, bit for bit.
        let plain = build("cross_entropy", "", &[1, 1]);
        let dev = candle_core::Device::Cpu;
        let zt = Tensor::from_slice(&z, (2, 2), &dev).unwrap();
        let y = Tensor::new(&[0u32, 1], &dev).unwrap();
        assert_eq!(
            plain
                .forward(&zt, &y, 0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            candle_nn::loss::cross_entropy(&zt, &y)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        );
    }

    fn value_at(loss: &dyn Loss, logits: &[f32], c: usize, labels: &[u32], epoch: usize) -> f64 {
        let dev = candle_core::Device::Cpu;
        let z = Tensor::from_slice(logits, (labels.len(), c), &dev).unwrap();
        let y = Tensor::new(labels, &dev).unwrap();
        loss.forward(&z, &y, epoch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    #[test]
    fn ldam_margins_and_deferred_weights_follow_the_formulas() {
        // Counts 16 and 1: raw margins 16^-1/4 = 1/2 and 1, scaled so the
        // largest is 0.5.
        let m = LdamLoss::margins(&[16, 1], 0.5);
        assert!((m[0] - 0.25).abs() < 1e-12 && (m[1] - 0.5).abs() < 1e-12);
        // Equal logits, label 1: the true logit drops by 0.5, times s = 30.
        let mut t: toml::Table = toml::from_str("kind = \"ldam_drw\"").unwrap();
        let cfg: LossConfig = toml::Value::Table(t.clone()).try_into().unwrap();
        let ctx = LossContext {
            class_counts: &[16, 1],
            epochs: 10,
            cosine_scale: None,
        };
        let ldam = cfg.build(&ctx).unwrap();
        let want = (1.0 + (-15f64).exp()).ln() + 15.0;
        assert!((value_at(ldam.as_ref(), &[0., 0.], 2, &[1], 0) - want).abs() < 1e-4);
        // Two images: a plain mean before epoch 0.8 * 10 = 8, the
        // effective-number weighted mean from it.
        let z = [0.2f32, -0.1, 0.4, 0.3];
        let y = [0u32, 1];
        let per_image = |i: usize| {
            let (a, b) = (z[2 * i] as f64, z[2 * i + 1] as f64);
            let (a, b) = if y[i] == 0 {
                (a - 0.25, b)
            } else {
                (a, b - 0.5)
            };
            let (a, b) = (30.0 * a, 30.0 * b);
            let lse = a.max(b) + ((a - a.max(b)).exp() + (b - a.max(b)).exp()).ln();
            lse - if y[i] == 0 { a } else { b }
        };
        let (l0, l1) = (per_image(0), per_image(1));
        assert!((value_at(ldam.as_ref(), &z, 2, &y, 7) - (l0 + l1) / 2.0).abs() < 1e-3);
        let w = weights::effective_number_weights(&[16, 1], 0.9999);
        let weighted = (w[0] * l0 + w[1] * l1) / (w[0] + w[1]);
        assert!((value_at(ldam.as_ref(), &z, 2, &y, 8) - weighted).abs() < 1e-3);
        // drw = false never re-weights.
        t.insert("drw".into(), toml::Value::Boolean(false));
        let cfg: LossConfig = toml::Value::Table(t).try_into().unwrap();
        let plain = cfg.build(&ctx).unwrap();
        assert!((value_at(plain.as_ref(), &z, 2, &y, 9) - (l0 + l1) / 2.0).abs() < 1e-3);
        // On a cosine head of scale s_h the logits arrive as s_h · cos: the
        // loss is the same function of the cosines, for s_h = s (factor 1)
        // and for another s_h.
        for head in [30.0, 16.0] {
            let on_cosine = cfg
                .build(&LossContext {
                    cosine_scale: Some(head),
                    ..ctx
                })
                .unwrap();
            let scaled: Vec<f32> = z.iter().map(|v| v * head as f32).collect();
            let got = value_at(on_cosine.as_ref(), &scaled, 2, &y, 9);
            assert!((got - (l0 + l1) / 2.0).abs() < 1e-3, "s_h = {head}: {got}");
        }
    }

    #[test]
    fn reweighted_and_smoothing_losses_hand_values() {
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        // Class-balanced, paper form: mean of w_y * nll; counts 1 and 1 give
        // weights 1, so it is cross-entropy.
        let cb = build("class_balanced", "form = \"softmax_ce\"", &[1, 1]);
        let want = (lse(1.0, 0.0) - 1.0 + lse(0.0, 2.0) - 2.0) / 2.0;
        assert!((value(cb.as_ref(), &[1., 0., 0., 2.], 2, &[0, 1]) - want).abs() < 1e-6);
        // Code form: BCE of the softmax probabilities against the one-hot,
        // averaged over the B*C elements; p = (1/2, 1/2) gives ln 2 each.
        let cb = build("class_balanced", "", &[1, 1]);
        assert!((value(cb.as_ref(), &[0., 0.], 2, &[0]) - 2f64.ln()).abs() < 1e-6);
        // p = (0.8, 0.2) for label 0: -(ln 0.8 + ln 0.8) / 2.
        let z = [0.8f64.ln() as f32, 0.2f64.ln() as f32];
        assert!((value(cb.as_ref(), &z, 2, &[0]) + 0.8f64.ln()).abs() < 1e-6);
        // Saturated probabilities (a wrong class holds all the mass) keep a
        // finite loss and gradient.
        let dev = candle_core::Device::Cpu;
        let var = candle_core::Var::from_slice(&[0f32, 200.0, -200.0], (1, 3), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let l = cb.forward(var.as_tensor(), &y, 0).unwrap();
        assert!(l.to_scalar::<f32>().unwrap().is_finite());
        let g = l
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert!(g.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
        // Generalised re-weighting, counts 3 : 1, rho = 1: weights 0.5, 1.5,
        // weighted mean.
        let rw = build("reweighted", "rho = 1", &[3, 1]);
        let (l0, l1) = (lse(1.0, 0.0) - 1.0, lse(0.0, 2.0) - 2.0);
        let want = (0.5 * l0 + 1.5 * l1) / 2.0;
        assert!((value(rw.as_ref(), &[1., 0., 0., 2.], 2, &[0, 1]) - want).abs() < 1e-6);
        // Label-aware smoothing: counts 10 and 1 give eps 0.4 (head) and 0.1
        // (tail) whatever the shape; label 1 on logits (1, 0).
        let las = build("label_aware_smoothing", "shape = \"linear\"", &[10, 1]);
        let l = lse(1.0, 0.0);
        let want = 0.9 * l + 0.1 * (l - 0.5);
        assert!((value(las.as_ref(), &[1., 0.], 2, &[1]) - want).abs() < 1e-6);
        // The shapes between the ends: a class halfway (t = 1/2).
        let mid = |shape| label_aware_epsilons(&[11, 6, 1], 0.4, 0.1, shape)[1];
        assert!((mid(SmoothingShape::Linear) - 0.25).abs() < 1e-12);
        let s = (std::f64::consts::FRAC_PI_4).sin();
        assert!((mid(SmoothingShape::Concave) - (0.1 + 0.3 * s)).abs() < 1e-12);
        assert!((mid(SmoothingShape::Convex) - (0.1 + 0.3 * (1.0 - s))).abs() < 1e-12);
        assert_eq!(
            label_aware_epsilons(&[11, 6, 1], 0.4, 0.1, SmoothingShape::Concave)[0],
            0.4
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = candle_core::Device::Cpu;
        let z0 = [0.3f32, -1.2, 2.0, 0.5, 0.1, -0.4];
        let labels = [2u32, 0];
        for (kind, options) in [
            ("cross_entropy", "label_smoothing = 0.2"),
            ("logit_adjusted", "tau = 0.5"),
            ("ldam_drw", "drw_start = 0.0\ns = 2.0"),
            ("class_balanced", ""),
            ("class_balanced", "form = \"softmax_ce\"\nbeta = 0.9"),
            ("reweighted", ""),
            ("label_aware_smoothing", ""),
        ] {
            let loss = build(kind, options, &[10, 4, 1]);
            let var = candle_core::Var::from_slice(&z0, (2, 3), &dev).unwrap();
            let y = Tensor::new(&labels, &dev).unwrap();
            let l = loss.forward(var.as_tensor(), &y, 0).unwrap();
            let grads = l.backward().unwrap();
            let g = grads
                .get(&var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let h = 1e-2f32;
            for i in 0..z0.len() {
                let (mut up, mut down) = (z0, z0);
                up[i] += h;
                down[i] -= h;
                let num = (value(loss.as_ref(), &up, 3, &labels)
                    - value(loss.as_ref(), &down, 3, &labels))
                    / (2.0 * h as f64);
                assert!(
                    (num - g[i] as f64).abs() < 1e-3,
                    "{kind} [{i}]: {num} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn out_of_range_options_name_the_key() {
        let check = |kind: &str, options: &str| {
            let mut t: toml::Table = toml::from_str(options).unwrap();
            t.insert("kind".into(), toml::Value::String(kind.into()));
            let cfg: LossConfig = toml::Value::Table(t).try_into().unwrap();
            cfg.validate()
                .unwrap_err()
                .within("stage1.loss")
                .to_string()
        };
        let e = check("cross_entropy", "label_smoothing = 1.0");
        assert!(
            e.contains("stage1.loss.label_smoothing") && e.contains("[0, 1)"),
            "{e}"
        );
        let e = check("ldam_drw", "drw_start = 1.5");
        assert!(e.contains("stage1.loss.drw_start"), "{e}");
        let e = check("class_balanced", "form = \"focal\"");
        assert!(e.contains("stage1.loss.form"), "{e}");
        let e = check("label_aware_smoothing", "smooth_head = 1.0");
        assert!(e.contains("stage1.loss.smooth_head"), "{e}");
        let e = check("reweighted", "rho = -1");
        assert!(e.contains("stage1.loss.rho"), "{e}");
        let e = check("logit_adjusted", "tau = -1");
        assert!(e.contains("stage1.loss.tau"), "{e}");
        let e = check("balanced_softmax", "tau = 2");
        assert!(
            e.contains("stage1.loss.tau") && e.contains("no options"),
            "{e}"
        );
        let cfg = LossConfig {
            kind: "logit_adjusted".into(),
            options: toml::Table::new(),
        };
        let e = cfg
            .build(&LossContext {
                class_counts: &[3, 0],
                epochs: 1,
                cosine_scale: None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 1"), "{e}");
    }
}
