//! A head written as one plain linear layer, for export.
//!
//! Many heads are affine in the features once built: the joint and cRT heads,
//! tau-norm (`w_j / ||w_j||^tau`, bias dropped or kept), LWS
//! (`s_j w_j`, `s_j b_j`), post-hoc logit adjustment (a bias shift). Such a
//! head *folds* into one `z = W f + b` ([`LinearLayer`]) that gives the same
//! logits up to float rounding, so an exported model needs only the backbone
//! and a matrix product. A head whose logits are not affine in the features
//! (cosine heads, NCM with a normalised feature or the l2 distance,
//! DisAlign's per-image confidence) refuses, saying why
//! ([`Fold::Refused`]).

use candle_core::{DType, Tensor};

/// A plain linear layer `z = W f + b`.
#[derive(Debug, Clone)]
pub struct LinearLayer {
    /// `(C, d)` f32.
    pub weight: Tensor,
    /// `(C)` f32.
    pub bias: Tensor,
}

impl LinearLayer {
    /// A layer without bias (a zero bias of the right length).
    pub fn without_bias(weight: &Tensor) -> candle_core::Result<Self> {
        let c = weight.dim(0)?;
        Ok(Self {
            weight: weight.detach(),
            bias: Tensor::zeros(c, DType::F32, weight.device())?,
        })
    }

    /// The logits `f W^T + b` of features `(N, d)`.
    pub fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        features
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }

    /// Every row (class) of the weight and the bias multiplied by
    /// `scales` `(C)`: the layer of `s_j z_j`.
    pub fn scale_rows(&self, scales: &Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.broadcast_mul(&scales.unsqueeze(1)?)?,
            bias: (&self.bias * scales)?,
        })
    }

    /// The layer of `z_j - shift_j`.
    pub fn shift_bias(&self, shift: &Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.clone(),
            bias: (&self.bias - shift)?,
        })
    }
}

impl crate::Classifier for LinearLayer {
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        crate::vars::check_features("linear layer", features, self.weight.dim(1)?)?;
        LinearLayer::logits(self, features)
    }

    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.weight.clone()))
    }

    fn fold(&self) -> candle_core::Result<Fold> {
        Ok(Fold::Linear(self.clone()))
    }
}

/// Whether a head folds into a linear layer ([`crate::Classifier::fold`]).
#[derive(Debug, Clone)]
pub enum Fold {
    /// The head's logits are exactly this layer's.
    Linear(LinearLayer),
    /// Not foldable: why (one sentence, e.g. which term is not linear).
    Refused(String),
}

impl Fold {
    /// The layer, or the reason it does not exist.
    pub fn into_result(self) -> Result<LinearLayer, String> {
        match self {
            Fold::Linear(l) => Ok(l),
            Fold::Refused(why) => Err(why),
        }
    }

    /// Applies `f` to a folded layer; a refusal stays one.
    pub fn map(
        self,
        f: impl FnOnce(LinearLayer) -> candle_core::Result<LinearLayer>,
    ) -> candle_core::Result<Fold> {
        Ok(match self {
            Fold::Linear(l) => Fold::Linear(f(l)?),
            refused => refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Classifier, LinearHead, LwsHead, NcmConfig, NcmDistance, NcmFeature, NcmHead, TauBias,
        TauNormHead,
    };
    use candle_core::Device;
    use candle_nn::VarMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn assert_folds(head: &dyn Classifier, f: &Tensor) {
        let layer = head.fold().unwrap().into_result().unwrap();
        let d = max_diff(&layer.logits(f).unwrap(), &head.logits(f).unwrap());
        assert!(d < 1e-5, "{d}");
    }

    /// Every affine head folds to its own logits; the others say why not.
    #[test]
    fn affine_heads_fold_and_the_others_refuse() {
        let dev = Device::Cpu;
        let f = Tensor::new(&[[1f32, -2.0, 0.5], [0.3, 0.7, -1.1]], &dev).unwrap();
        let joint = LinearHead::new(&VarMap::new(), "fc", 3, 4, 7, &dev).unwrap();
        assert_folds(&joint, &f);
        for bias in [TauBias::Drop, TauBias::Keep] {
            assert_folds(&TauNormHead::from_linear(&joint, 0.7, bias).unwrap(), &f);
        }
        let vars = VarMap::new();
        let lws = LwsHead::from_linear(&vars, "fc", &joint).unwrap();
        lws.scales_var()
            .set(&Tensor::new(&[0.5f32, 2.0, 1.5, 0.25], &dev).unwrap())
            .unwrap();
        assert_folds(&lws, &f);
        let labels = [0u32, 1];
        let fit = |feature, distance| {
            NcmHead::fit(&f, &labels, 2, NcmConfig { feature, distance }).unwrap()
        };
        assert_folds(&fit(NcmFeature::Un, NcmDistance::Cos), &f);
        for (feature, distance, says) in [
            (NcmFeature::Cl2n, NcmDistance::L2, "normalises"),
            (NcmFeature::L2n, NcmDistance::Cos, "normalises"),
            (NcmFeature::Un, NcmDistance::L2, "-||f||^2"),
        ] {
            let why = fit(feature, distance)
                .fold()
                .unwrap()
                .into_result()
                .unwrap_err();
            assert!(why.contains(says), "{why}");
        }
        let cosine = joint.clone().cosine(Some(30.0));
        let why = cosine.fold().unwrap().into_result().unwrap_err();
        assert!(why.contains("cosine"), "{why}");
    }
}
