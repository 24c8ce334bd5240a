//! SGD with momentum, L2 weight decay and optional Nesterov, with state that
//! can be saved and restored by parameter name.
//!
//! candle's own `SGD` has neither momentum nor weight decay and `AdamW` keeps
//! private state, so the reference optimiser is written here. The update is
//! PyTorch's `torch.optim.SGD` with dampening 0:
//!
//! ```text
//! g' = g + wd * w
//! v  = mu * v + g'
//! d  = g' + mu * v   (Nesterov)   or   d = v
//! w  = w - lr * d
//! ```
//!
//! Only parameters that received a gradient are touched: a frozen tensor (no
//! gradient) is neither decayed nor moved, and BN running statistics are never
//! handed to the optimiser in the first place.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Hyper-parameters of [`SgdMomentum`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Initial learning rate (the schedule overrides it every step or epoch).
    pub lr: f64,
    /// Momentum factor `mu` (0.9 in the reference).
    pub momentum: f64,
    /// L2 weight decay added to the gradient of every trained tensor.
    pub weight_decay: f64,
    /// Nesterov momentum (off in the reference).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
        }
    }
}

/// Name prefix of momentum buffers in a saved state.
const MOMENTUM_PREFIX: &str = "momentum.";

/// SGD with momentum over a fixed, named list of trainable variables.
#[derive(Debug)]
pub struct SgdMomentum {
    params: Vec<(String, Var)>,
    config: SgdConfig,
    lr: f64,
    /// Momentum buffers by parameter name; absent until the first update of
    /// that parameter (equivalent to a zero buffer, as in PyTorch).
    momentum: BTreeMap<String, Tensor>,
    /// Learning-rate multipliers by parameter name (absent: 1).
    lr_scales: BTreeMap<String, f64>,
}

impl SgdMomentum {
    /// Creates the optimiser over `params` (name, var). Parameters are kept
    /// sorted by name so that updates and saved state do not depend on the
    /// order the caller collected them in.
    pub fn new(mut params: Vec<(String, Var)>, config: SgdConfig) -> Result<Self, TrainError> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in params.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(TrainError::Optimizer(format!(
                    "parameter `{}` given twice",
                    pair[0].0
                )));
            }
        }
        if !(config.momentum >= 0.0 && config.momentum.is_finite()) {
            return Err(TrainError::Optimizer(format!(
                "momentum must be finite and >= 0, got {}",
                config.momentum
            )));
        }
        if config.nesterov && config.momentum <= 0.0 {
            return Err(TrainError::Optimizer(
                "nesterov momentum requires momentum > 0".into(),
            ));
        }
        if !(config.weight_decay >= 0.0 && config.weight_decay.is_finite()) {
            return Err(TrainError::Optimizer(format!(
                "weight_decay must be finite and >= 0, got {}",
                config.weight_decay
            )));
        }
        Ok(Self {
            params,
            lr: config.lr,
            config,
            momentum: BTreeMap::new(),
            lr_scales: BTreeMap::new(),
        })
    }

    /// Multiplies the learning rate of parameter `name` by `scale` (a
    /// parameter group with its own learning rate, as MiSLAS gives its
    /// fine-tuned classifier `lr_factor` times the scales' rate). The
    /// schedule still sets the base rate.
    pub fn set_lr_scale(&mut self, name: &str, scale: f64) -> Result<(), TrainError> {
        if !self.params.iter().any(|(n, _)| n == name) {
            return Err(TrainError::Optimizer(format!(
                "learning-rate scale for `{name}`, which is not an optimised parameter"
            )));
        }
        if !(scale >= 0.0 && scale.is_finite()) {
            return Err(TrainError::Optimizer(format!(
                "learning-rate scale of `{name}` must be finite and >= 0, got {scale}"
            )));
        }
        self.lr_scales.insert(name.to_string(), scale);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate used by the next [`step`](Self::step).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Names of the optimised parameters, sorted.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// The optimised parameters (name, variable), sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Applies one update with the gradients in `grads`. Returns the number of
    /// parameters that had a gradient (and were therefore updated).
    pub fn step(&mut self, grads: &GradStore) -> Result<usize, TrainError> {
        let mu = self.config.momentum;
        let wd = self.config.weight_decay;
        let mut updated = 0;
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Everything below works on detached tensors: an update computed
            // from the variable itself would record the op graph, and each
            // momentum buffer would keep every earlier one alive.
            let w = var.as_detached_tensor();
            let g = g.detach();
            let g = if wd != 0.0 { (g + (&w * wd)?)? } else { g };
            let d = if mu != 0.0 {
                let v = match self.momentum.get(name) {
                    Some(v) => ((v * mu)? + &g)?,
                    None => g.clone(),
                };
                let d = if self.config.nesterov {
                    (&g + (&v * mu)?)?
                } else {
                    v.clone()
                };
                self.momentum.insert(name.clone(), v);
                d
            } else {
                g
            };
            let lr = self.lr * self.lr_scales.get(name).copied().unwrap_or(1.0);
            var.set(&(w - (d * lr)?)?)?;
            updated += 1;
        }
        Ok(updated)
    }

    /// Backpropagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<usize, TrainError> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// Momentum buffers keyed `momentum.<parameter name>`, for checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        self.momentum
            .iter()
            .map(|(n, t)| (format!("{MOMENTUM_PREFIX}{n}"), t.clone()))
            .collect()
    }

    /// Restores momentum buffers from tensors produced by
    /// [`state_tensors`](Self::state_tensors). Keys without the `momentum.`
    /// prefix are ignored (checkpoints also hold the model); a buffer for an
    /// unknown parameter or with the wrong shape is an error.
    pub fn load_state_tensors(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        let mut momentum = BTreeMap::new();
        for (key, t) in tensors {
            let Some(name) = key.strip_prefix(MOMENTUM_PREFIX) else {
                continue;
            };
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                return Err(TrainError::Optimizer(format!(
                    "saved momentum for `{name}`, which is not an optimised parameter"
                )));
            };
            if var.shape() != t.shape() {
                return Err(TrainError::Optimizer(format!(
                    "saved momentum for `{name}` has shape {:?}, parameter has {:?}",
                    t.shape(),
                    var.shape()
                )));
            }
            let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
            momentum.insert(name.to_string(), t);
        }
        self.momentum = momentum;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn var(v: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// Loss = sum(c * w) has gradient c, so the update can be done by hand.
    fn linear_loss(w: &Var, c: &[f32]) -> Tensor {
        let c = Tensor::new(c, &Device::Cpu).unwrap();
        (w.as_tensor() * c).unwrap().sum_all().unwrap()
    }

    #[test]
    fn momentum_and_decay_match_hand_computation() {
        let w = var(&[1.0, -2.0]);
        let frozen = var(&[3.0, 4.0]);
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let mut opt = SgdMomentum::new(
            vec![("w".into(), w.clone()), ("frozen".into(), frozen.clone())],
            cfg,
        )
        .unwrap();
        let c = [0.5f32, -1.0];
        // Hand computation in f64.
        let (mut hw, mut hv) = ([1.0f64, -2.0], [0.0f64, 0.0]);
        for _ in 0..3 {
            // Only `w` takes part in the loss: `frozen` gets no gradient.
            let loss = linear_loss(&w, &c);
            assert_eq!(opt.backward_step(&loss).unwrap(), 1);
            for i in 0..2 {
                let g = c[i] as f64 + 0.01 * hw[i];
                hv[i] = 0.9 * hv[i] + g;
                hw[i] -= 0.1 * hv[i];
            }
            close(&values(&w), &hw);
        }
        // The buffers are plain values, not graph nodes that would keep every
        // earlier step alive.
        assert!(opt.state_tensors().values().all(|t| !t.track_op()));
        // Never decayed nor moved: it had no gradient.
        assert_eq!(values(&frozen), vec![3.0, 4.0]);
        assert!(!opt.state_tensors().contains_key("momentum.frozen"));
    }

    #[test]
    fn nesterov_matches_hand_computation() {
        let w = var(&[1.0]);
        let cfg = SgdConfig {
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: true,
        };
        let mut opt = SgdMomentum::new(vec![("w".into(), w.clone())], cfg).unwrap();
        let (mut hw, mut hv) = (1.0f64, 0.0f64);
        for _ in 0..3 {
            opt.backward_step(&linear_loss(&w, &[2.0])).unwrap();
            let g = 2.0 + 0.1 * hw;
            hv = 0.9 * hv + g;
            hw -= 0.5 * (g + 0.9 * hv);
            close(&values(&w), &[hw]);
        }
    }

    #[test]
    fn plain_sgd_without_momentum() {
        let w = var(&[1.0]);
        let cfg = SgdConfig {
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut opt = SgdMomentum::new(vec![("w".into(), w.clone())], cfg).unwrap();
        opt.backward_step(&linear_loss(&w, &[2.0])).unwrap();
        close(&values(&w), &[0.0]);
        assert!(opt.state_tensors().is_empty());
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-3,
            nesterov: false,
        };
        let c = [0.3f32, -0.7, 1.1];
        let a = var(&[1.0, 2.0, 3.0]);
        let mut opt_a = SgdMomentum::new(vec![("p".into(), a.clone())], cfg).unwrap();
        for _ in 0..4 {
            opt_a.backward_step(&linear_loss(&a, &c)).unwrap();
        }
        // Second run: two steps, save, rebuild, restore, two more steps.
        let b = var(&[1.0, 2.0, 3.0]);
        let mut opt_b = SgdMomentum::new(vec![("p".into(), b.clone())], cfg).unwrap();
        for _ in 0..2 {
            opt_b.backward_step(&linear_loss(&b, &c)).unwrap();
        }
        let saved: std::collections::HashMap<_, _> = opt_b.state_tensors().into_iter().collect();
        let b2 = var(&values(&b));
        let mut opt_b2 = SgdMomentum::new(vec![("p".into(), b2.clone())], cfg).unwrap();
        opt_b2.load_state_tensors(&saved).unwrap();
        for _ in 0..2 {
            opt_b2.backward_step(&linear_loss(&b2, &c)).unwrap();
        }
        assert_eq!(values(&a), values(&b2));
    }

    #[test]
    fn rejects_bad_state_and_config() {
        let w = var(&[1.0]);
        let mut opt =
            SgdMomentum::new(vec![("w".into(), w.clone())], SgdConfig::default()).unwrap();
        let mut bad = std::collections::HashMap::new();
        bad.insert(
            "momentum.other".to_string(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        );
        assert!(opt.load_state_tensors(&bad).is_err());
        let mut bad = std::collections::HashMap::new();
        bad.insert(
            "momentum.w".to_string(),
            Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
        );
        assert!(opt.load_state_tensors(&bad).is_err());
        let dup = SgdMomentum::new(
            vec![("w".into(), w.clone()), ("w".into(), w)],
            SgdConfig::default(),
        );
        assert!(dup.is_err());
    }
}
