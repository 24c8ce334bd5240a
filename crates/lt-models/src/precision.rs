//! [`Precision`]: the dtype a backbone computes in.
//!
//! Mixed precision as PyTorch's autocast does it for convolutional nets:
//! the variables (the master weights) and the BN running statistics stay
//! f32; the forward pass casts the input and each convolution's weights to
//! bf16, convolutions run in bf16 with f32 accumulation (cuDNN on CUDA),
//! batch norm computes its statistics and normalises in f32 and hands bf16
//! to the next layer, and the features come back in f32, so the head, the
//! loss and every gradient reaching a variable are f32 (the casts are
//! differentiable). bf16 has f32's exponent range, so no loss scaling is
//! needed.
//!
//! On the CPU, bf16 convolutions are computed in f32 and rounded (candle
//! has no CPU half convolution): the numerics match, the speed does not
//! improve. Use it there for tests only.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// The dtype of a backbone's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default, and the reference).
    #[default]
    F32,
    /// bf16 activations and convolutions, f32 weights, BN statistics,
    /// features and loss.
    Bf16,
}

impl Precision {
    /// The dtype activations are computed in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name used in configs (`"f32"`, `"bf16"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
