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
//! let loss = cfg.build(&LossContext { class_counts: &[10, 2], epochs: 1 })?;
//! let logits = Tensor::new(&[[2f32, 0.0], [0.0, 0.0]], &Device::Cpu)?;
//! let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
//! let l = loss.forward(&logits, &labels, 0)?.to_scalar::<f32>()?;
//! let want = ((1.0 + (-2f32).exp()).ln() + 2f32.ln()) / 2.0;
//! assert!((l - want).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```

mod cross_entropy;

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
pub static REGISTRY: &[&dyn LossKind] = &[&cross_entropy::CrossEntropy];

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
            kind: cross_entropy::CrossEntropy.id().to_string(),
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
}
