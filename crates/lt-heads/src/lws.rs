//! Learnable weight scaling (LWS).

use crate::linear::head_logits;
use crate::vars::{check_features, check_shape, matrix_dims, register, var_name};
use crate::{Classifier, HeadError, LinearHead};
use candle_core::{Module, Tensor, Var};
use candle_nn::VarMap;

/// The joint head with one learnable scale per class multiplying the whole
/// logit: `z_j = s_j (w_j . f + b_j)`, so the scale covers the bias too.
///
/// `s` starts at 1 (the reference initialisation; the paper's reading
/// `s = 1 / ||w||^tau` is not what the code does). `W` and `b` are frozen: they
/// are registered in the `VarMap` as `{prefix}.weight` / `{prefix}.bias` so a
/// checkpoint holds the whole head, but the forward pass uses detached copies of
/// them, so a backward pass produces gradients for `{prefix}.scales` only, and an
/// optimiser that updates only variables with a gradient leaves them (and their
/// weight decay) alone.
#[derive(Debug, Clone)]
pub struct LwsHead {
    weight: Var,
    bias: Var,
    scales: Var,
    /// `Some(s)`: rescales the logits of a cosine head of scale `s` (see
    /// [`LinearHead`]).
    cosine: Option<f64>,
}

impl LwsHead {
    /// LWS on top of a trained joint head; `W` and `b` are copied from it.
    pub fn from_linear(
        varmap: &VarMap,
        prefix: &str,
        linear: &LinearHead,
    ) -> Result<Self, HeadError> {
        Ok(
            Self::new(varmap, prefix, linear.weight(), linear.bias())?
                .cosine(linear.cosine_scale()),
        )
    }

    /// The same head over cosine logits of scale `s` (`Some(s)`) or affine
    /// ones (`None`).
    pub fn cosine(self, scale: Option<f64>) -> Self {
        Self {
            cosine: scale,
            ..self
        }
    }

    /// LWS on top of a weight `(C, d)` and bias `(C)` (f32), scales set to 1.
    pub fn new(
        varmap: &VarMap,
        prefix: &str,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<Self, HeadError> {
        let (c, _) = matrix_dims("LWS weight", weight)?;
        check_shape("LWS bias", bias, &[c])?;
        let ones = Tensor::ones(c, weight.dtype(), weight.device())?;
        let weight = register(varmap, &var_name(prefix, "weight"), weight)?;
        let bias = register(varmap, &var_name(prefix, "bias"), bias)?;
        let scales = register(varmap, &var_name(prefix, "scales"), &ones)?;
        Ok(Self {
            weight,
            bias,
            scales,
            cosine: None,
        })
    }

    /// The per-class scales `(C)`; the only trainable tensor of the head.
    pub fn scales(&self) -> &Tensor {
        self.scales.as_tensor()
    }

    /// The scales variable (`{prefix}.scales`).
    pub fn scales_var(&self) -> &Var {
        &self.scales
    }

    /// The frozen weight variable (`{prefix}.weight`); never receives a gradient
    /// through this head.
    pub fn weight_var(&self) -> &Var {
        &self.weight
    }

    /// The frozen bias variable (`{prefix}.bias`).
    pub fn bias_var(&self) -> &Var {
        &self.bias
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Classifier for LwsHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        check_features("LWS head", features, self.weight.dims()[1])?;
        let z = head_logits(
            features,
            &self.weight.as_detached_tensor(),
            &self.bias.as_detached_tensor(),
            self.cosine,
        )?;
        z.broadcast_mul(self.scales.as_tensor())
    }

    fn cosine_scale(&self) -> Option<f64> {
        self.cosine
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        let s = self.scales.as_tensor().unsqueeze(1)?;
        Ok(Some(self.weight.as_tensor().broadcast_mul(&s)?))
    }

    fn fold(&self) -> candle_core::Result<crate::Fold> {
        if self.cosine.is_some() {
            return Ok(crate::Fold::Refused(
                crate::linear::COSINE_NOT_LINEAR.into(),
            ));
        }
        crate::LinearLayer {
            weight: self.weight.as_detached_tensor(),
            bias: self.bias.as_detached_tensor(),
        }
        .scale_rows(&self.scales.as_detached_tensor())
        .map(crate::Fold::Linear)
    }
}

impl Module for LwsHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(xs)
    }
}
