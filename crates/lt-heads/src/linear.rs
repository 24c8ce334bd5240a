//! The linear head: the joint head of stage 1 and the cRT head of stage 2.

use crate::vars::{check_features, check_shape, matrix_dims, register, var_name};
use crate::{Classifier, CrtInit, HeadError};
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};

/// Draws the initial weight `(num_classes, in_dim)` and bias `(num_classes)` of a
/// PyTorch `nn.Linear`, on the host, from `ChaCha8Rng::seed_from_u64(seed)`.
///
/// PyTorch initialises the weight with `kaiming_uniform_(a = sqrt(5))`, whose
/// bound `sqrt(6 / ((1 + a^2) fan_in))` equals `1 / sqrt(fan_in)`, and the bias
/// with `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: both are `U(-b, b)` with
/// `b = 1 / sqrt(in_dim)`. The weight is drawn first, row-major, then the bias,
/// from the same stream; the same seed therefore always gives the same head.
pub fn pytorch_linear_init(
    in_dim: usize,
    num_classes: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<f32>), HeadError> {
    if in_dim == 0 {
        return Err(HeadError::ZeroSize {
            what: "feature dimension",
        });
    }
    if num_classes == 0 {
        return Err(HeadError::ZeroSize {
            what: "number of classes",
        });
    }
    let bound = (1.0 / (in_dim as f64).sqrt()) as f32;
    // `Uniform::new` only fails for an empty or non-finite range, which a positive
    // finite bound rules out.
    let dist = Uniform::new(-bound, bound).map_err(|e| HeadError::Shape {
        what: "linear init range",
        expected: "a finite, non-empty range".to_string(),
        got: e.to_string(),
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let weight = (0..num_classes * in_dim)
        .map(|_| dist.sample(&mut rng))
        .collect();
    let bias = (0..num_classes).map(|_| dist.sample(&mut rng)).collect();
    Ok((weight, bias))
}

/// A fully connected head `z = W f + b` with `W: (C, d)` and `b: (C)`.
///
/// Its parameters are `Var`s registered in a `VarMap` as `{prefix}.weight` and
/// `{prefix}.bias` (torchvision names with the prefix [`crate::DEFAULT_PREFIX`] =
/// `"fc"`), so they are saved and loaded with the rest of the model and trained
/// by any optimiser that walks the `VarMap`. If the names already exist with the
/// same shape, those variables are reused and overwritten.
///
/// A *cosine* head ([`LinearHead::cosine`], the LDAM-DRW classifier)
/// computes `z_j = s · (f / ||f||) . (w_j / ||w_j||)` instead: cosines times
/// the head's scale `s` (LDAM-DRW's s = 30), no bias (the bias variable
/// exists so that checkpoints keep one layout, but the logits never use it
/// and it never gets a gradient). Its argmax is that of the unit-norm rows
/// `w_j / ||w_j||` applied to `f`. The scale belongs to the head, not to a
/// loss, because every consumer of the logits needs it: a softmax over bare
/// cosines in [-1, 1] is nearly uniform, so confidences, ECE and post-hoc
/// logit adjustment (which adds log-priors in logit units) would all be
/// computed on the wrong scale.
#[derive(Debug, Clone)]
pub struct LinearHead {
    weight: Var,
    bias: Var,
    /// `Some(s)`: cosine logits times `s`.
    cosine: Option<f64>,
}

impl LinearHead {
    /// A freshly initialised head (see [`pytorch_linear_init`]) on `device`.
    pub fn new(
        varmap: &VarMap,
        prefix: &str,
        in_dim: usize,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, HeadError> {
        let (w, b) = pytorch_linear_init(in_dim, num_classes, seed)?;
        let weight = Tensor::from_vec(w, (num_classes, in_dim), device)?;
        let bias = Tensor::from_vec(b, num_classes, device)?;
        Self::from_tensors(varmap, prefix, &weight, &bias)
    }

    /// A head holding copies of `weight` `(C, d)` and `bias` `(C)` (f32), for
    /// example the `fc` of a stage-1 checkpoint.
    pub fn from_tensors(
        varmap: &VarMap,
        prefix: &str,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<Self, HeadError> {
        let (c, _) = matrix_dims("linear head weight", weight)?;
        check_shape("linear head bias", bias, &[c])?;
        let weight = register(varmap, &var_name(prefix, "weight"), weight)?;
        let bias = register(varmap, &var_name(prefix, "bias"), bias)?;
        Ok(Self {
            weight,
            bias,
            cosine: None,
        })
    }

    /// The same variables as a cosine head with logit scale `s` (`Some(s)`)
    /// or an affine one (`None`).
    pub fn cosine(self, scale: Option<f64>) -> Self {
        Self {
            cosine: scale,
            ..self
        }
    }

    /// Whether the logits are scaled cosine similarities (see [`LinearHead`]).
    pub fn is_cosine(&self) -> bool {
        self.cosine.is_some()
    }

    /// `Some(s)` for a cosine head of scale `s`, `None` for an affine one.
    pub fn cosine_scale(&self) -> Option<f64> {
        self.cosine
    }

    /// The stage-2 cRT head for a stage-1 joint head.
    ///
    /// [`CrtInit::Reinit`] (the reference) draws a fresh head of the same shape
    /// with `seed`, exactly as [`LinearHead::new`]; [`CrtInit::Finetune`] starts
    /// from a copy of the stage-1 weights and ignores `seed`. Either way the new
    /// head owns its own storage, so training it never changes `stage1`, unless
    /// both live in the same `VarMap` under the same prefix, where they are the
    /// same variables.
    pub fn for_crt(
        varmap: &VarMap,
        prefix: &str,
        init: CrtInit,
        stage1: &LinearHead,
        seed: u64,
    ) -> Result<Self, HeadError> {
        match init {
            CrtInit::Reinit => Self::new(
                varmap,
                prefix,
                stage1.in_dim(),
                stage1.num_classes(),
                seed,
                stage1.weight().device(),
            ),
            // Fine-tuning keeps the head's kind (cosine or affine).
            CrtInit::Finetune => {
                Ok(
                    Self::from_tensors(varmap, prefix, stage1.weight(), stage1.bias())?
                        .cosine(stage1.cosine_scale()),
                )
            }
        }
    }

    /// The weight `(C, d)`; gradients flow to it.
    pub fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    /// The bias `(C)`; gradients flow to it.
    pub fn bias(&self) -> &Tensor {
        self.bias.as_tensor()
    }

    /// The weight variable (to look up its gradient or give it to an optimiser).
    pub fn weight_var(&self) -> &Var {
        &self.weight
    }

    /// The bias variable.
    pub fn bias_var(&self) -> &Var {
        &self.bias
    }

    /// Feature dimension `d`.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// `features.matmul(W^T) + b`, shared by the linear and LWS heads.
pub(crate) fn affine(
    features: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    features.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// Rows divided by their L2 norm (at least 1e-12, as PyTorch's
/// `F.normalize`).
pub fn normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norms)
}

/// `scale · (f / ||f||) . r_j` for the rows `r_j` of `rows`: the logits of a
/// cosine head when the rows are unit vectors (see [`LinearHead`]).
pub fn cosine_logits(features: &Tensor, rows: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    normalize_rows(features)?.matmul(&rows.t()?)? * scale
}

/// The logits of a linear head's weight and bias: affine, or cosine with
/// the given scale.
pub(crate) fn head_logits(
    features: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    cosine: Option<f64>,
) -> candle_core::Result<Tensor> {
    match cosine {
        Some(scale) => cosine_logits(features, &normalize_rows(weight)?, scale),
        None => affine(features, weight, bias),
    }
}

impl Classifier for LinearHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        check_features("linear head", features, self.in_dim())?;
        head_logits(features, self.weight(), self.bias(), self.cosine)
    }

    fn cosine_scale(&self) -> Option<f64> {
        self.cosine
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        if self.is_cosine() {
            return Ok(Some(normalize_rows(self.weight())?));
        }
        Ok(Some(self.weight().clone()))
    }

    fn fold(&self) -> candle_core::Result<crate::Fold> {
        if self.is_cosine() {
            return Ok(crate::Fold::Refused(COSINE_NOT_LINEAR.into()));
        }
        Ok(crate::Fold::Linear(crate::LinearLayer {
            weight: self.weight().detach(),
            bias: self.bias().detach(),
        }))
    }
}

/// Why a cosine head does not fold into a linear layer.
pub const COSINE_NOT_LINEAR: &str =
    "a cosine head divides each feature vector by its norm, which no linear layer does";

impl Module for LinearHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.logits(xs)
    }
}

#[cfg(test)]
mod cosine_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cosine_logits_are_cosine_similarities_without_bias() {
        let vars = VarMap::new();
        let dev = Device::Cpu;
        let w = Tensor::new(&[[3f32, 4.0], [0.0, -2.0]], &dev).unwrap();
        let b = Tensor::new(&[10f32, 10.0], &dev).unwrap();
        let head = LinearHead::from_tensors(&vars, "fc", &w, &b)
            .unwrap()
            .cosine(Some(30.0));
        let f = Tensor::new(&[[2f32, 0.0]], &dev).unwrap();
        let z: Vec<f32> = head
            .logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // 30 · cos((1, 0), (0.6, 0.8)) = 18; cos((1, 0), (0, -1)) = 0.
        assert!((z[0] - 18.0).abs() < 1e-5 && z[1].abs() < 1e-6, "{z:?}");
        let loss = head.logits(&f).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(
            g.get(head.bias()).is_none(),
            "the bias of a cosine head has no gradient"
        );
        // Fine-tuning keeps the kind.
        let v2 = VarMap::new();
        let ft = LinearHead::for_crt(&v2, "fc", CrtInit::Finetune, &head, 0).unwrap();
        assert_eq!(ft.cosine_scale(), Some(30.0));
    }
}
