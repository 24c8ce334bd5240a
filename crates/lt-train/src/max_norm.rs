//! MaxNorm (Weight Balancing, Alshammari et al., CVPR 2022): after the
//! optimiser, every row of the constrained weights (one class's weight
//! vector for the classifier) whose L2 norm exceeds the radius r is scaled
//! back onto the ball of radius r: projected gradient descent on
//! ‖w_j‖ ≤ r.
//!
//! Which parameters: by default the classifier's weight only, as the
//! reference `MaxNorm_via_PGD` (it visits `fc.weight` and `fc.bias` and
//! gives 1-D tensors an infinite threshold); `scope = "all"` constrains
//! every trained tensor of two or more dimensions, row by row (a conv
//! filter is one row). 1-D parameters (biases, BN affine) are never touched.
//!
//! When: the reference code projects once per epoch, at the end of the
//! epoch's training phase, while the paper describes a projection after
//! every optimiser step. `every = "epoch"` (the code, the default) or
//! `"iteration"` (the paper).

use candle_core::{DType, Var};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// When the projection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxNormEvery {
    /// Once per epoch, after its last step (the reference code).
    #[default]
    Epoch,
    /// After every optimiser step (the paper).
    Iteration,
}

/// Which parameters are constrained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxNormScope {
    /// The classifier's weight (`fc.*` tensors of two or more dimensions).
    #[default]
    Classifier,
    /// Every trained tensor of two or more dimensions.
    All,
}

/// `max_norm = { radius = 0.1, every = "epoch", scope = "classifier" }` in a
/// stage's section; absent: no constraint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxNormConfig {
    /// r, the largest allowed row norm (Weight Balancing's value: 0.1).
    pub radius: f64,
    /// When the projection runs.
    #[serde(default)]
    pub every: MaxNormEvery,
    /// Which parameters it constrains.
    #[serde(default)]
    pub scope: MaxNormScope,
}

impl MaxNormConfig {
    /// Checks the radius.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.radius > 0.0 && self.radius.is_finite()) {
            return Err(format!(
                "radius must be finite and > 0, got {}",
                self.radius
            ));
        }
        Ok(())
    }

    fn applies_to(&self, name: &str, var: &Var) -> bool {
        var.rank() >= 2
            && match self.scope {
                MaxNormScope::Classifier => {
                    name.starts_with(&format!("{}.", lt_heads::DEFAULT_PREFIX))
                }
                MaxNormScope::All => true,
            }
    }

    /// Projects every constrained parameter of `params` onto the ball;
    /// returns how many rows were scaled.
    pub fn project(&self, params: &[(String, Var)]) -> Result<usize, TrainError> {
        let mut scaled = 0;
        for (name, var) in params {
            if !self.applies_to(name, var) {
                continue;
            }
            let w = var.as_detached_tensor();
            let rows = w.dim(0)?;
            let flat = w.reshape((rows, ()))?;
            let norms = flat.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?;
            let norms_host = norms.to_vec1::<f32>()?;
            let factors: Vec<f32> = norms_host
                .iter()
                .map(|&n| {
                    if n as f64 > self.radius {
                        (self.radius / n as f64) as f32
                    } else {
                        1.0
                    }
                })
                .collect();
            let over = factors.iter().filter(|&&f| f != 1.0).count();
            if over == 0 {
                continue;
            }
            let f = candle_core::Tensor::new(factors.as_slice(), w.device())?
                .to_dtype(w.dtype())?
                .unsqueeze(1)?;
            let projected = flat.broadcast_mul(&f)?.reshape(w.shape())?;
            var.set(&projected)?;
            scaled += over;
        }
        Ok(scaled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn var(data: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn rows_are_projected_onto_the_ball_and_vectors_are_left_alone() {
        let w = var(&[3.0, 4.0, 0.03, 0.04, 0.0, 0.0], &[3, 2]);
        let b = var(&[10.0, -10.0, 5.0], &[3]);
        let conv = var(&[1.0; 8], &[2, 1, 2, 2]);
        let params = vec![
            ("conv1.weight".to_string(), conv.clone()),
            ("fc.bias".to_string(), b.clone()),
            ("fc.weight".to_string(), w.clone()),
        ];
        let cfg = MaxNormConfig {
            radius: 0.1,
            every: MaxNormEvery::Iteration,
            scope: MaxNormScope::Classifier,
        };
        assert_eq!(cfg.project(&params).unwrap(), 1);
        let got = w.as_tensor().to_vec2::<f32>().unwrap();
        // (3, 4) has norm 5: scaled to norm 0.1 along the same direction.
        assert!((got[0][0] - 0.06).abs() < 1e-7 && (got[0][1] - 0.08).abs() < 1e-7);
        // Rows within the ball (norm 0.05, 0) are unchanged, bit for bit.
        assert_eq!(got[1], [0.03, 0.04]);
        assert_eq!(got[2], [0.0, 0.0]);
        // 1-D parameters and, in the classifier scope, other tensors: untouched.
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), [10.0, -10.0, 5.0]);
        assert_eq!(
            conv.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [1.0; 8]
        );
        // Scope all: each conv filter (a row of 4) is projected too.
        let all = MaxNormConfig {
            scope: MaxNormScope::All,
            ..cfg
        };
        assert_eq!(all.project(&params).unwrap(), 2);
        let filters = conv.as_tensor().reshape((2, 4)).unwrap();
        for n in filters
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        {
            assert!(n <= 0.1 + 1e-6, "{n}");
        }
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), [10.0, -10.0, 5.0]);
        // Every norm is now <= r; a second projection changes nothing.
        assert_eq!(all.project(&params).unwrap(), 0);
    }

    #[test]
    fn a_bad_radius_is_refused() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = MaxNormConfig {
                radius: r,
                every: MaxNormEvery::Epoch,
                scope: MaxNormScope::Classifier,
            };
            assert!(cfg.validate().unwrap_err().contains("radius"));
        }
    }
}
