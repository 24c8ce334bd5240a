//! MiSLAS stage 2 (Zhong et al., CVPR 2021), as `dvlab-research/MiSLAS`
//! trains it: the stage-1 classifier fine-tuned (not re-initialised)
//! together with a learnable scale per class (LWS, z_j = s_j (w_j·f + b_j)),
//! under class-balanced sampling (one image per class visit), with
//! label-aware smoothing and "shift learning" on BN: the frozen backbone
//! runs with BN in train mode, so the BN running statistics follow the
//! re-balanced data while the BN affine parameters stay frozen (no backbone
//! parameter is optimised). Its CIFAR-100-LT ρ = 100 settings: 10 epochs,
//! batch 128, lr 0.1 with per-epoch cosine, weight decay 2e-4, smoothing
//! 0.4 (head) to 0.1 (tail), and the classifier's learning rate
//! `lr_factor` = 0.2 times the scales'.
//!
//! This head needs the backbone in the loop (BN shift), so it never trains
//! on cached features unless `bn = "eval"` and `augment = false` are set.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use lt_heads::{Classifier, CrtInit, LinearHead, DEFAULT_PREFIX};
use lt_samplers::{CbDraw, Strategy};

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::config::ConfigError;
use crate::loss::LossConfig;
use crate::settings::StageSettings;
use crate::TrainError;

/// `mislas`: option `lr_factor` (0.2), the classifier's learning-rate
/// multiplier.
#[derive(Debug)]
pub struct Mislas;

impl HeadMethod for Mislas {
    fn name(&self) -> &'static str {
        "mislas"
    }

    fn label(&self) -> &'static str {
        "MiSLAS"
    }

    fn about(&self) -> &'static str {
        "MiSLAS stage 2: fine-tuned classifier + LWS, label-aware smoothing, BN shift learning"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

fn lr_factor(options: &toml::Table) -> Result<f64, ConfigError> {
    crate::loss::float_option(options, "lr_factor", 0.2, |v| v >= 0.0, ">= 0")
}

impl TrainedHead for Mislas {
    fn default_settings(&self) -> StageSettings {
        StageSettings {
            batch_size: 128,
            lr: 0.1,
            weight_decay: 2e-4,
            sampler: Strategy::ClassBalanced {
                draw: CbDraw::ClassCycle,
                per_class: 1,
            },
            loss: LossConfig {
                kind: "label_aware_smoothing".into(),
                options: toml::Table::new(),
            },
            ..StageSettings::stage2(10)
        }
    }

    fn default_options(&self) -> toml::Table {
        toml::Table::from_iter([("lr_factor".to_string(), toml::Value::Float(0.2))])
    }

    fn check_options(&self, options: &toml::Table) -> Result<(), ConfigError> {
        crate::loss::only_keys(options, &["lr_factor"])?;
        lr_factor(options).map(|_| ())
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        Ok(Box::new(MislasHead::new(init.vars, init.joint)?))
    }

    fn lr_scales(&self, options: &toml::Table) -> Result<Vec<(String, f64)>, TrainError> {
        let f = lr_factor(options).map_err(|e| TrainError::Invalid(e.to_string()))?;
        Ok(vec![
            (format!("{DEFAULT_PREFIX}.weight"), f),
            (format!("{DEFAULT_PREFIX}.bias"), f),
        ])
    }
}

/// The fine-tuned linear head times a learnable scale per class.
#[derive(Debug)]
pub struct MislasHead {
    linear: LinearHead,
    scales: Var,
}

impl MislasHead {
    /// A copy of `joint` with scales 1, registered as `fc.weight`, `fc.bias`,
    /// `fc.scales`.
    pub fn new(vars: &VarMap, joint: &LinearHead) -> Result<Self, TrainError> {
        let linear = LinearHead::for_crt(vars, DEFAULT_PREFIX, CrtInit::Finetune, joint, 0)?;
        let ones = Tensor::ones(
            joint.num_classes(),
            candle_core::DType::F32,
            joint.weight().device(),
        )?;
        let scales = super::register_var(vars, &format!("{DEFAULT_PREFIX}.scales"), &ones)?;
        Ok(MislasHead { linear, scales })
    }
}

impl Classifier for MislasHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        self.linear
            .logits(features)?
            .broadcast_mul(self.scales.as_tensor())
    }

    fn cosine_scale(&self) -> Option<f64> {
        self.linear.cosine_scale()
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        let s = self.scales.as_tensor().unsqueeze(1)?;
        Ok(Some(self.linear.weight().broadcast_mul(&s)?))
    }

    fn fold(&self) -> candle_core::Result<lt_heads::Fold> {
        let scales = self.scales.as_detached_tensor();
        self.linear.fold()?.map(|l| l.scale_rows(&scales))
    }
}

impl TrainableHead for MislasHead {
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            (
                format!("{DEFAULT_PREFIX}.weight"),
                self.linear.weight_var().clone(),
            ),
            (
                format!("{DEFAULT_PREFIX}.bias"),
                self.linear.bias_var().clone(),
            ),
            (format!("{DEFAULT_PREFIX}.scales"), self.scales.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fine_tuned_classifier_times_scales() {
        let dev = Device::Cpu;
        let (jv, vars) = (VarMap::new(), VarMap::new());
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 1.0], &dev).unwrap();
        let joint = LinearHead::from_tensors(&jv, "fc", &w, &b).unwrap();
        let h = MislasHead::new(&vars, &joint).unwrap();
        let f = Tensor::new(&[[1f32, 1.0]], &dev).unwrap();
        let z: Vec<f32> = h
            .logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(z, [1.5, 3.0]);
        h.scales
            .set(&Tensor::new(&[2f32, 0.5], &dev).unwrap())
            .unwrap();
        let z: Vec<f32> = h
            .logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(z, [3.0, 1.5]);
        // The classifier trains too (not frozen as in LWS), at lr_factor.
        let loss = h.logits(&f).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(h.linear.weight()).is_some() && g.get(h.scales.as_tensor()).is_some());
        let scales = Mislas.lr_scales(&toml::Table::new()).unwrap();
        assert_eq!(scales, [("fc.weight".into(), 0.2), ("fc.bias".into(), 0.2)]);
        let bad: toml::Table = toml::from_str("lr_factor = -1").unwrap();
        let e = Mislas
            .check_options(&bad)
            .unwrap_err()
            .within("stage2.mislas");
        assert_eq!(e.key.as_deref(), Some("stage2.mislas.lr_factor"));
    }
}
