//! DisAlign (Zhang et al., CVPR 2021): adaptive calibration of the frozen
//! joint head, z' = (1 + σ(x)·α) ⊙ z + σ(x)·β, with per-class magnitude α
//! (initialised to 1) and margin β (0), and a confidence σ(x) = sigmoid of a
//! learned linear map of the feature (weight initialised to 0.1, bias as
//! PyTorch's `nn.Linear`), as the authors' `DisAlignLinear` does it. Trained
//! with generalised re-weighting (`loss = { kind = "reweighted", rho = 1.2 }`)
//! under instance-balanced sampling, on cached features by default.

use candle_core::{Tensor, Var};
use lt_heads::{Classifier, LinearHead, DEFAULT_PREFIX};
use lt_samplers::Strategy;

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::loss::LossConfig;
use crate::settings::{Stage2Bn, StageSettings};
use crate::TrainError;

/// `disalign`: no options of its own; its loss is a stage setting.
#[derive(Debug)]
pub struct DisAlign;

impl HeadMethod for DisAlign {
    fn name(&self) -> &'static str {
        "disalign"
    }

    fn label(&self) -> &'static str {
        "DisAlign"
    }

    fn about(&self) -> &'static str {
        "adaptive calibration (1 + s(x) a) z + s(x) b of the frozen joint head, re-weighted loss"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        super::build_trained(self, self, ctx.exp)
    }
}

impl TrainedHead for DisAlign {
    fn default_settings(&self) -> StageSettings {
        StageSettings {
            sampler: Strategy::InstanceBalanced,
            shuffle_in_batch: false,
            loss: LossConfig {
                kind: "reweighted".into(),
                options: toml::Table::new(),
            },
            bn: Stage2Bn::Eval,
            augment: false,
            ..StageSettings::stage2(10)
        }
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        let j = init.joint;
        let dev = j.weight().device();
        let (c, d) = (j.num_classes(), j.in_dim());
        let reg = |name: &str, t: &Tensor| super::register_var(init.vars, name, t);
        // The frozen joint head (its kind kept: a cosine joint head stays
        // cosine); registered so that checkpoints hold it.
        let joint = LinearHead::from_tensors(init.vars, DEFAULT_PREFIX, j.weight(), j.bias())?
            .cosine(j.cosine_scale());
        // nn.Linear(d, 1): its weight is then set to 0.1; its bias keeps
        // PyTorch's U(-1/sqrt(d), 1/sqrt(d)), drawn from the head's seed.
        let (_, b0) = lt_heads::pytorch_linear_init(d, 1, init.seed)?;
        let conf_weight = reg("fc.confidence.weight", &Tensor::full(0.1f32, (1, d), dev)?)?;
        let conf_bias = reg("fc.confidence.bias", &Tensor::new(b0.as_slice(), dev)?)?;
        let magnitude = reg(
            "fc.magnitude",
            &Tensor::ones(c, candle_core::DType::F32, dev)?,
        )?;
        let margin = reg(
            "fc.margin",
            &Tensor::zeros(c, candle_core::DType::F32, dev)?,
        )?;
        Ok(Box::new(DisAlignHead {
            joint,
            conf_weight,
            conf_bias,
            magnitude,
            margin,
        }))
    }
}

/// The frozen joint head with DisAlign's adaptive calibration.
#[derive(Debug)]
pub struct DisAlignHead {
    joint: LinearHead,
    conf_weight: Var,
    conf_bias: Var,
    magnitude: Var,
    margin: Var,
}

impl Classifier for DisAlignHead {
    fn logits(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        // Frozen: its variables are not trained (the optimiser never sees
        // them), so the logits are detached.
        let z = self.joint.logits(f)?.detach();
        let conf = candle_nn::ops::sigmoid(
            &f.matmul(&self.conf_weight.as_tensor().t()?)?
                .broadcast_add(self.conf_bias.as_tensor())?,
        )?;
        let scale = conf
            .broadcast_mul(&self.magnitude.as_tensor().unsqueeze(0)?)?
            .affine(1.0, 1.0)?;
        let shift = conf.broadcast_mul(&self.margin.as_tensor().unsqueeze(0)?)?;
        (z * scale)? + shift
    }

    fn fold(&self) -> candle_core::Result<lt_heads::Fold> {
        Ok(lt_heads::Fold::Refused(
            "DisAlign scales and shifts every logit by a per-image confidence \
             sigmoid(v . f + c), which is not linear in the features"
                .into(),
        ))
    }
}

impl TrainableHead for DisAlignHead {
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            (
                format!("{DEFAULT_PREFIX}.confidence.bias"),
                self.conf_bias.clone(),
            ),
            (
                format!("{DEFAULT_PREFIX}.confidence.weight"),
                self.conf_weight.clone(),
            ),
            (
                format!("{DEFAULT_PREFIX}.magnitude"),
                self.magnitude.clone(),
            ),
            (format!("{DEFAULT_PREFIX}.margin"), self.margin.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;
    use lt_heads::LinearHead;

    #[test]
    fn hand_computed_calibration() {
        let dev = Device::Cpu;
        let (jv, vars) = (VarMap::new(), VarMap::new());
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &dev).unwrap();
        let b = Tensor::new(&[0.0f32, 1.0], &dev).unwrap();
        let joint = LinearHead::from_tensors(&jv, "fc", &w, &b).unwrap();
        let h = DisAlign
            .init(&HeadInit {
                joint: &joint,
                vars: &vars,
                options: &toml::Table::new(),
                seed: 5,
                class_counts: &[4, 1],
                groups: &[],
            })
            .unwrap();
        let data = vars.data().lock().unwrap().clone();
        let cb = data["fc.confidence.bias"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        assert!(cb.abs() <= 1.0 / 2f64.sqrt());
        // f = (1, 1): z = (1, 3), sigma = sigmoid(0.1 + 0.1 + cb).
        let f = Tensor::new(&[[1f32, 1.0]], &dev).unwrap();
        let s = 1.0 / (1.0 + (-(0.2 + cb)).exp());
        let z: Vec<f32> = h
            .logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Initially magnitude 1, margin 0: (1 + s) z.
        assert!((z[0] as f64 - (1.0 + s)).abs() < 1e-5);
        assert!((z[1] as f64 - 3.0 * (1.0 + s)).abs() < 1e-5);
        // Magnitude (2, 0) and margin (0, -1): (1 + 2s) * 1 and 3 - s.
        data["fc.magnitude"]
            .set(&Tensor::new(&[2f32, 0.0], &dev).unwrap())
            .unwrap();
        data["fc.margin"]
            .set(&Tensor::new(&[0f32, -1.0], &dev).unwrap())
            .unwrap();
        let z: Vec<f32> = h
            .logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((z[0] as f64 - (1.0 + 2.0 * s)).abs() < 1e-5);
        assert!((z[1] as f64 - (3.0 - s)).abs() < 1e-5);
        // The joint head stays frozen: only the calibration trains.
        let names: Vec<String> = h.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(
            !names.iter().any(|n| n == "fc.weight" || n == "fc.bias"),
            "{names:?}"
        );
        let loss = h.logits(&f).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let w = vars.data().lock().unwrap()["fc.weight"].clone();
        assert!(g.get(w.as_tensor()).is_none());
    }
}
