//! Softmax cross-entropy, the reference loss of every stage.

use candle_core::Tensor;

use super::{only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// `kind = "cross_entropy"`: the mean softmax cross-entropy.
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy;

impl Loss for CrossEntropy {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(logits, labels)
    }
}

impl LossKind for CrossEntropy {
    fn id(&self) -> &'static str {
        "cross_entropy"
    }

    fn about(&self) -> &'static str {
        "softmax cross-entropy (the reference)"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &[])
    }

    fn build(
        &self,
        options: &toml::Table,
        _: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        Ok(Box::new(CrossEntropy))
    }
}
