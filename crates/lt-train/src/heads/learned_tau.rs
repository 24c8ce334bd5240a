//! Learned τ: the τ of the τ-normalised classifier learned by gradient
//! descent instead of chosen on validation, the variant the decoupling
//! paper's appendix mentions. The joint head's weights stay frozen; only τ
//! (one scalar, or one per many / medium / few group with
//! `per_group = true`) is trained, with cross-entropy on class-balanced
//! batches of training features (cached: BN in eval mode, no augmentation),
//! without weight decay on τ.
//!
//! `z_j = (w_j / ‖w_j‖^τ_{g(j)}) · f` (plus b_j with `bias = "keep"`); the
//! learned τ is recorded in `results.json` beside the τ that `tau_norm`
//! chose on validation.

use candle_core::{DType, Tensor, Var};
use lt_core::stats::ShotGroup;
use lt_core::TauBias;
use lt_heads::{Classifier, DEFAULT_PREFIX};

use super::{Built, HeadContext, HeadInit, HeadMethod, TrainableHead, TrainedHead};
use crate::config::ConfigError;
use crate::settings::{Stage2Bn, StageSettings};
use crate::TrainError;

/// `learned_tau`: options `per_group` (false), `init_tau` (0: the joint
/// head without its bias) and `bias` (`drop`, as τ-norm; or `keep`).
#[derive(Debug)]
pub struct LearnedTau;

impl HeadMethod for LearnedTau {
    fn name(&self) -> &'static str {
        "learned_tau"
    }

    fn label(&self) -> &'static str {
        "τ-norm (learned τ)"
    }

    fn about(&self) -> &'static str {
        "tau-norm with tau (one, or one per group) learned on class-balanced training features"
    }

    fn training(&self) -> Option<&dyn TrainedHead> {
        Some(self)
    }

    fn build(&self, ctx: &HeadContext<'_>) -> Result<Built, TrainError> {
        let mut built = super::build_trained(self, self, ctx.exp)?;
        // Record the learned value(s) where evaluation reports a head's tau.
        let (tensors, _) = crate::checkpoint::load_checkpoint(&built.checkpoint, &ctx.exp.device)?;
        let name = format!("{DEFAULT_PREFIX}.tau");
        let tau = tensors
            .get(&name)
            .ok_or_else(|| {
                TrainError::Checkpoint(format!(
                    "{}: missing tensor `{name}`",
                    built.checkpoint.display()
                ))
            })?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        if tau.len() == 1 {
            built.tau = Some(tau[0]);
        }
        let mut settings = built
            .settings
            .take()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(m) = &mut settings {
            m.insert("learned_tau".into(), serde_json::json!(tau));
        }
        built.settings = Some(settings);
        Ok(built)
    }
}

struct Options {
    per_group: bool,
    init_tau: f64,
    bias: TauBias,
}

fn options(t: &toml::Table) -> Result<Options, ConfigError> {
    crate::loss::only_keys(t, &["per_group", "init_tau", "bias"])?;
    let per_group = match t.get("per_group") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => {
            return Err(ConfigError::at(
                "per_group",
                format!("must be true or false, got {v}"),
            ))
        }
    };
    let init_tau = crate::loss::float_option(t, "init_tau", 0.0, |_| true, "")?;
    let bias = match t.get("bias") {
        None => TauBias::Drop,
        Some(v) => v.clone().try_into().map_err(|_| {
            ConfigError::at("bias", format!("must be \"drop\" or \"keep\", got {v}"))
        })?,
    };
    Ok(Options {
        per_group,
        init_tau,
        bias,
    })
}

impl TrainedHead for LearnedTau {
    fn default_settings(&self) -> StageSettings {
        StageSettings {
            weight_decay: 0.0,
            bn: Stage2Bn::Eval,
            augment: false,
            ..StageSettings::stage2(10)
        }
    }

    fn default_options(&self) -> toml::Table {
        toml::Table::from_iter([
            ("per_group".to_string(), toml::Value::Boolean(false)),
            ("init_tau".to_string(), toml::Value::Float(0.0)),
            ("bias".to_string(), toml::Value::String("drop".into())),
        ])
    }

    fn check_options(&self, t: &toml::Table) -> Result<(), ConfigError> {
        options(t).map(|_| ())
    }

    fn init(&self, init: &HeadInit<'_>) -> Result<Box<dyn TrainableHead>, TrainError> {
        let o = options(init.options).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let dev = init.joint.weight().device();
        // A cosine joint head scores with unit rows: τ has no norm to rescale
        // (ln 1 = 0 below), so the head stays the joint head whatever τ
        // learns, instead of rescaling raw rows the joint head never used.
        let cosine = init.joint.cosine_scale();
        let joint_weight = if cosine.is_some() {
            lt_heads::normalize_rows(&init.joint.weight().detach())?
        } else {
            init.joint.weight().clone()
        };
        let weight = super::register_var(init.vars, "fc.weight", &joint_weight)?;
        let bias = super::register_var(init.vars, "fc.bias", init.joint.bias())?;
        let n_tau = if o.per_group { 3 } else { 1 };
        let tau0 = Tensor::full(o.init_tau as f32, n_tau, dev)?;
        let tau = super::register_var(init.vars, "fc.tau", &tau0)?;
        let c = init.joint.num_classes();
        let group_of: Vec<u32> = if o.per_group {
            if init.groups.len() != c {
                return Err(TrainError::Invalid(format!(
                    "learned_tau: {} class groups for {c} classes",
                    init.groups.len()
                )));
            }
            init.groups
                .iter()
                .map(|g| match g {
                    ShotGroup::Many => 0,
                    ShotGroup::Medium => 1,
                    ShotGroup::Few => 2,
                })
                .collect()
        } else {
            vec![0; c]
        };
        let log_norms = if cosine.is_some() {
            Tensor::zeros(c, joint_weight.dtype(), dev)?
        } else {
            let norms = joint_weight.detach().sqr()?.sum(1)?.sqrt()?;
            check_norms(&norms.to_vec1::<f32>()?)?;
            norms.log()?
        };
        Ok(Box::new(LearnedTauHead {
            weight,
            bias,
            tau,
            log_norms,
            cosine,
            group_of: Tensor::new(group_of.as_slice(), dev)?,
            keep_bias: o.bias == TauBias::Keep,
        }))
    }
}

/// Refuses a joint head the τ scaling is undefined on. The head divides each
/// class row by ‖w_j‖^τ through ln ‖w_j‖: a zero row (ln 0 = −∞, and 0·∞ at
/// τ = 0) or an infinite / NaN one turns every logit of that class into NaN,
/// and no τ fixes that, so training stops here naming the classes instead of
/// learning τ on NaN losses.
fn check_norms(norms: &[f32]) -> Result<(), TrainError> {
    let classes = |bad: fn(f32) -> bool| -> Vec<usize> {
        (0..norms.len()).filter(|&j| bad(norms[j])).collect()
    };
    let zero = classes(|n| n == 0.0);
    if !zero.is_empty() {
        return Err(TrainError::Invalid(format!(
            "learned_tau: classifier weight norms are zero for classes {zero:?} (of {}); \
             stage 1 collapsed, so there is no class direction for τ to rescale: retrain \
             stage 1 (e.g. a lower learning rate or weight decay)",
            norms.len()
        )));
    }
    let non_finite = classes(|n| !n.is_finite());
    if !non_finite.is_empty() {
        return Err(TrainError::Invalid(format!(
            "learned_tau: classifier weight norms are not finite for classes {non_finite:?} \
             (of {}); stage 1 diverged: retrain it (e.g. a lower learning rate)",
            norms.len()
        )));
    }
    Ok(())
}

/// The frozen joint head rescaled by a learnable τ per class group.
#[derive(Debug)]
pub struct LearnedTauHead {
    weight: Var,
    bias: Var,
    tau: Var,
    /// ln ‖w_j‖, `(C)`.
    log_norms: Tensor,
    /// Index into `tau` of each class, `(C)` u32.
    group_of: Tensor,
    keep_bias: bool,
    /// `Some(s)`: a cosine joint head of scale `s`, unit rows against
    /// normalised features, no bias.
    cosine: Option<f64>,
}

impl LearnedTauHead {
    /// The effective weight w_j / ‖w_j‖^τ_{g(j)} = w_j · exp(−τ ln ‖w_j‖).
    fn scaled_weight(&self) -> candle_core::Result<Tensor> {
        let tau_per_class = self.tau.as_tensor().index_select(&self.group_of, 0)?;
        let factor = (tau_per_class * &self.log_norms)?.neg()?.exp()?;
        self.weight
            .as_detached_tensor()
            .broadcast_mul(&factor.unsqueeze(1)?)
    }
}

impl Classifier for LearnedTauHead {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(scale) = self.cosine {
            return lt_heads::cosine_logits(features, &self.scaled_weight()?, scale);
        }
        let z = features.matmul(&self.scaled_weight()?.t()?)?;
        if self.keep_bias {
            z.broadcast_add(&self.bias.as_detached_tensor())
        } else {
            Ok(z)
        }
    }

    fn cosine_scale(&self) -> Option<f64> {
        self.cosine
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.scaled_weight()?))
    }

    fn fold(&self) -> candle_core::Result<lt_heads::Fold> {
        if self.cosine.is_some() {
            return Ok(lt_heads::Fold::Refused(lt_heads::COSINE_NOT_LINEAR.into()));
        }
        let weight = self.scaled_weight()?.detach();
        Ok(lt_heads::Fold::Linear(if self.keep_bias {
            lt_heads::LinearLayer {
                weight,
                bias: self.bias.as_detached_tensor(),
            }
        } else {
            lt_heads::LinearLayer::without_bias(&weight)?
        }))
    }
}

impl TrainableHead for LearnedTauHead {
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![(format!("{DEFAULT_PREFIX}.tau"), self.tau.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;
    use lt_heads::LinearHead;

    /// The head on a joint classifier with rows `w` and bias (0.5, -0.5).
    fn init_on(
        w: [[f32; 2]; 2],
        options: &str,
        groups: &[ShotGroup],
    ) -> Result<(VarMap, Box<dyn TrainableHead>), TrainError> {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let jv = VarMap::new();
        let w = Tensor::new(&w, &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
        let joint = LinearHead::from_tensors(&jv, "fc", &w, &b).unwrap();
        let options: toml::Table = toml::from_str(options).unwrap();
        let h = LearnedTau.init(&HeadInit {
            joint: &joint,
            vars: &vars,
            options: &options,
            seed: 0,
            class_counts: &[10, 1],
            groups,
        })?;
        Ok((vars, h))
    }

    fn head(options: &str, groups: &[ShotGroup]) -> (VarMap, Box<dyn TrainableHead>) {
        // Rows of norm 2 and 1.
        init_on([[2.0, 0.0], [0.0, 1.0]], options, groups).unwrap()
    }

    fn refusal(w: [[f32; 2]; 2]) -> String {
        match init_on(w, "", &[ShotGroup::Many, ShotGroup::Few]) {
            Ok((_, h)) => panic!("accepted; logits {:?}", logits(h.as_ref())),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_collapsed_joint_head_is_refused_naming_the_classes() {
        // Stage 1 collapsed to an all-zero classifier: ln 0 would make every
        // logit NaN.
        let e = refusal([[0.0, 0.0], [0.0, 0.0]]);
        assert!(
            e.starts_with(
                "learned_tau: classifier weight norms are zero for classes [0, 1] (of 2)"
            ) && e.contains("stage 1 collapsed"),
            "{e}"
        );
        let e = refusal([[2.0, 0.0], [0.0, 0.0]]);
        assert!(e.contains("zero for classes [1] (of 2)"), "{e}");
        // A diverged row: ln ∞ times the initial τ = 0 is NaN.
        let e = refusal([[f32::INFINITY, 0.0], [0.0, 1.0]]);
        assert!(
            e.starts_with("learned_tau: classifier weight norms are not finite for classes [0]")
                && e.contains("stage 1 diverged"),
            "{e}"
        );
        let e = refusal([[2.0, 0.0], [f32::NAN, 1.0]]);
        assert!(e.contains("not finite for classes [1]"), "{e}");
    }

    fn logits(h: &dyn TrainableHead) -> Vec<f32> {
        let f = Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap();
        h.logits(&f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn hand_computed_logits_and_tau_gradient() {
        let groups = [ShotGroup::Many, ShotGroup::Few];
        // init_tau = 0: the joint head without its bias.
        let (_, h) = head("", &groups);
        assert_eq!(logits(h.as_ref()), [2.0, 1.0]);
        // tau = 1: unit rows, so f . w / ||w|| = (1, 1); the bias is kept.
        let (_, h) = head("init_tau = 1.0\nbias = \"keep\"", &groups);
        let z = logits(h.as_ref());
        assert!(
            (z[0] - 1.5).abs() < 1e-6 && (z[1] - 0.5).abs() < 1e-6,
            "{z:?}"
        );
        // Per group: tau (1, _, 0) for (many, few) = (1, 1).
        let (vars, h) = head("per_group = true", &groups);
        let tau = vars.data().lock().unwrap()["fc.tau"].clone();
        tau.set(&Tensor::new(&[1f32, 7.0, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        let z = logits(h.as_ref());
        assert!(
            (z[0] - 1.0).abs() < 1e-6 && (z[1] - 1.0).abs() < 1e-6,
            "{z:?}"
        );
        // Only tau trains; d z_0 / d tau = -ln 2 * z_0 at tau = 1.
        assert_eq!(h.trainable().len(), 1);
        let f = Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap();
        let z0 = h
            .logits(&f)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = z0.backward().unwrap();
        let gt = g.get(&tau).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (gt[0] + 2f32.ln()).abs() < 1e-5 && gt[1] == 0.0 && gt[2] == 0.0,
            "{gt:?}"
        );
    }

    #[test]
    fn on_a_cosine_joint_head_tau_changes_nothing() {
        // Raw rows of norm 2 and 1; the cosine head scores 10 · f / ||f||
        // against unit rows: f = (1, 1) gives 10 · (1/√2, 1/√2) whatever the
        // raw norms.
        let dev = Device::Cpu;
        let (vars, jv) = (VarMap::new(), VarMap::new());
        let w = Tensor::new(&[[2f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
        let joint = LinearHead::from_tensors(&jv, "fc", &w, &b)
            .unwrap()
            .cosine(Some(10.0));
        let options: toml::Table = toml::from_str("bias = \"keep\"").unwrap();
        let h = LearnedTau
            .init(&HeadInit {
                joint: &joint,
                vars: &vars,
                options: &options,
                seed: 0,
                class_counts: &[10, 1],
                groups: &[ShotGroup::Many, ShotGroup::Few],
            })
            .unwrap();
        let tau = vars.data().lock().unwrap()["fc.tau"].clone();
        let s = 10.0 * std::f32::consts::FRAC_1_SQRT_2;
        assert_eq!(h.cosine_scale(), Some(10.0));
        for t in [0f32, 1.0, 7.4] {
            tau.set(&Tensor::new(&[t], &dev).unwrap()).unwrap();
            let z = logits(h.as_ref());
            assert!(
                (z[0] - s).abs() < 1e-5 && (z[1] - s).abs() < 1e-5,
                "{t}: {z:?}"
            );
        }
        // No gradient moves tau, and the head does not fold to a linear layer.
        let f = Tensor::new(&[[1f32, 3.0]], &dev).unwrap();
        let g = h.logits(&f).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = g.get(&tau).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gt, [0.0]);
        assert!(matches!(h.fold().unwrap(), lt_heads::Fold::Refused(_)));
    }
}
