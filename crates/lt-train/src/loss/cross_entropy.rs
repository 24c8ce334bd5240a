//! Softmax cross-entropy, the reference loss of every stage, with optional
//! label smoothing.

use candle_core::Tensor;

use super::{float_option, only_keys, Loss, LossContext, LossKind};
use crate::config::ConfigError;

/// `kind = "cross_entropy"`, option `label_smoothing` = ε in [0, 1)
/// (default 0): the target puts 1 − ε on the label and ε / C on every
/// class, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`, so the loss is
/// (1 − ε)·(−log p_y) + ε·mean_j(−log p_j).
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy {
    /// ε.
    pub label_smoothing: f64,
}

/// The mean of (1 − ε)·(−log p_y) + ε·mean_j(−log p_j) over the batch; ε = 0
/// is candle's own cross-entropy (the reference arithmetic, unchanged).
pub(crate) fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if eps == 0.0 {
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    let (lsm, nll) = super::log_softmax_and_nll(logits, labels)?;
    let uniform = lsm.mean(1)?.neg()?;
    ((nll * (1.0 - eps))? + (uniform * eps)?)?.mean_all()
}

impl Loss for CrossEntropy {
    fn forward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _epoch: usize,
    ) -> candle_core::Result<Tensor> {
        smoothed_cross_entropy(logits, labels, self.label_smoothing)
    }
}

impl LossKind for CrossEntropy {
    fn id(&self) -> &'static str {
        "cross_entropy"
    }

    fn about(&self) -> &'static str {
        "softmax cross-entropy (the reference); option label_smoothing"
    }

    fn check(&self, options: &toml::Table) -> Result<(), ConfigError> {
        only_keys(options, &["label_smoothing"])?;
        float_option(
            options,
            "label_smoothing",
            0.0,
            |v| (0.0..1.0).contains(&v),
            "in [0, 1)",
        )?;
        Ok(())
    }

    fn build(
        &self,
        options: &toml::Table,
        _: &LossContext<'_>,
    ) -> Result<Box<dyn Loss>, ConfigError> {
        self.check(options)?;
        let label_smoothing = float_option(options, "label_smoothing", 0.0, |_| true, "")?;
        Ok(Box::new(CrossEntropy { label_smoothing }))
    }
}
