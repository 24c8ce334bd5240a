//! Batch normalisation with explicit train / eval modes and PyTorch's
//! running-statistics semantics.
//!
//! # Modes
//!
//! * [`BnMode::Train`]: normalise with the batch statistics (biased variance)
//!   and update the running statistics in place:
//!   `running = (1 - momentum) * running + momentum * batch`, where the
//!   variance term is the *unbiased* batch variance (`n / (n - 1)` times the
//!   biased one, `n = N * H * W`), as `torch.nn.BatchNorm2d` does.
//! * [`BnMode::Eval`]: normalise with the running statistics; nothing changes.
//!
//! # Synchronised statistics
//!
//! While a [`crate::sync_bn`] reducer is installed on the thread, training
//! mode normalises with the mean and variance of the global batch of all
//! data-parallel ranks (SyncBN) and updates the running statistics with them;
//! without one (the default) nothing changes.
//!
//! # Frozen parameters, running statistics still updated
//!
//! The decoupling paper's stage 2 (cRT, LWS) freezes every backbone parameter,
//! BN γ and β included, yet keeps BN in training mode, so BN normalises with
//! (class-balanced) batch statistics and keeps updating its running
//! statistics. That is not a third mode here: run the backbone with
//! [`BnMode::Train`], give the optimiser none of the backbone's
//! [`parameters`](crate::Backbone::parameters), and `detach()` the features
//! before the head so no backward pass walks the backbone graph. The running
//! statistics are updated by the forward pass itself, never by the optimiser.

use crate::error::{ModelError, Result};
use crate::init::Conv;
use crate::ops::{self, Epilogue};
use candle_core::{DType, Device, Tensor, Var};

/// Numerical-stability term added to the variance (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Weight of the new batch statistics in the running averages (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// How batch normalisation behaves during a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BnMode {
    /// Batch statistics; running statistics are updated.
    Train,
    /// Running statistics; nothing is updated.
    Eval,
}

impl BnMode {
    /// True for [`BnMode::Train`].
    pub fn is_train(self) -> bool {
        self == BnMode::Train
    }
}

impl From<bool> for BnMode {
    /// `true` is [`BnMode::Train`], as in `candle_nn::ModuleT::forward_t`.
    fn from(train: bool) -> Self {
        if train {
            BnMode::Train
        } else {
            BnMode::Eval
        }
    }
}

/// A 2-D batch-normalisation layer over `(N, C, H, W)` inputs.
///
/// Its four tensors are named `{name}.weight`, `{name}.bias` (trainable) and
/// `{name}.running_mean`, `{name}.running_var` (buffers), as in torchvision.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    name: String,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    /// A freshly initialised layer: γ = 1, β = 0, running mean 0, running
    /// variance 1, all f32 on `device`.
    pub fn new(name: impl Into<String>, channels: usize, device: &Device) -> Result<Self> {
        let ones = || Var::ones(channels, DType::F32, device);
        let zeros = || Var::zeros(channels, DType::F32, device);
        Ok(Self {
            name: name.into(),
            weight: ones()?,
            bias: zeros()?,
            running_mean: zeros()?,
            running_var: ones()?,
        })
    }

    /// The layer's name prefix (e.g. `layer1.0.bn2`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.weight.elem_count()
    }

    /// The scale γ.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The shift β.
    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// The running mean (a buffer, never trained).
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running (unbiased) variance (a buffer, never trained).
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// Every tensor with its full name: the two parameters, then the two buffers.
    pub fn named_vars(&self) -> [(String, Var); 4] {
        [
            (format!("{}.weight", self.name), self.weight.clone()),
            (format!("{}.bias", self.name), self.bias.clone()),
            (
                format!("{}.running_mean", self.name),
                self.running_mean.clone(),
            ),
            (
                format!("{}.running_var", self.name),
                self.running_var.clone(),
            ),
        ]
    }

    /// Normalises `x` `(N, C, H, W)`; in [`BnMode::Train`] also updates the
    /// running statistics (see the module docs for the formula).
    pub fn forward_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.forward_with(x, Epilogue::None, mode)
    }

    /// `relu(self.forward_t(x))`, fused into one pass where the kernels allow.
    pub fn forward_relu_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.forward_with(x, Epilogue::Relu, mode)
    }

    /// `relu(self.forward_t(x) + residual)`, the end of a residual block,
    /// fused into one pass where the kernels allow.
    pub fn forward_add_relu_t(
        &self,
        x: &Tensor,
        residual: &Tensor,
        mode: BnMode,
    ) -> Result<Tensor> {
        self.forward_with(x, Epilogue::AddRelu(residual), mode)
    }

    /// `self.forward_t(conv(x))` with `epilogue`. In [`BnMode::Train`] the
    /// convolution and the normalisation run as one fused op, which spares
    /// the zero-fill and the separate pass over the convolution's output
    /// (measured ~5% of a ResNet-32 training step); eval uses the plain ops.
    pub(crate) fn forward_conv_t(
        &self,
        conv: &Conv,
        x: &Tensor,
        epilogue: Epilogue<'_>,
        mode: BnMode,
    ) -> Result<Tensor> {
        if mode == BnMode::Eval || crate::sync_bn::active().is_some() {
            return self.forward_with(&conv.forward(x)?, epilogue, mode);
        }
        let count = self.conv_batch_count(conv, x.dims4()?)?;
        let p = conv.params();
        let (cw, w, b) = (
            conv.weight(),
            self.weight.as_tensor(),
            self.bias.as_tensor(),
        );
        let (y, mean, var) = ops::conv2d_batch_norm_train(x, cw, p, w, b, BN_EPS, epilogue)?;
        self.update_running_stats(&mean, &var, count)?;
        Ok(y)
    }

    /// The number of values per channel this layer normalises after `conv`
    /// on an input of dimensions `x`; a [`ModelError::BatchTooSmall`] under 2
    /// (no variance).
    pub(crate) fn conv_batch_count(
        &self,
        conv: &Conv,
        x: (usize, usize, usize, usize),
    ) -> Result<usize> {
        let (n, c_out, oh, ow) = conv.out_dims(x)?;
        let count = n * oh * ow;
        if count < 2 {
            return Err(ModelError::BatchTooSmall {
                layer: self.name.clone(),
                shape: vec![n, c_out, oh, ow],
            });
        }
        Ok(count)
    }

    fn forward_with(&self, x: &Tensor, epilogue: Epilogue<'_>, mode: BnMode) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        match mode {
            BnMode::Eval => {
                // Detached: the running statistics are constants of the
                // forward pass, so backward must not compute gradients for them.
                let rm = self.running_mean.as_tensor().detach();
                let rv = self.running_var.as_tensor().detach();
                Ok(ops::batch_norm_eval(x, w, b, &rm, &rv, BN_EPS, epilogue)?)
            }
            BnMode::Train => {
                let (n, _c, h, w_) = x.dims4()?;
                let count = n * h * w_;
                if count < 2 {
                    return Err(ModelError::BatchTooSmall {
                        layer: self.name.clone(),
                        shape: x.dims().to_vec(),
                    });
                }
                if let Some(reducer) = crate::sync_bn::active() {
                    return self.forward_sync(x, epilogue, &reducer);
                }
                let (y, mean, var) = ops::batch_norm_train(x, w, b, BN_EPS, epilogue)?;
                self.update_running_stats(&mean, &var, count)?;
                Ok(y)
            }
        }
    }

    /// Training mode with statistics of the global batch (see
    /// [`crate::sync_bn`]); composed from candle ops, epilogue included.
    fn forward_sync(
        &self,
        x: &Tensor,
        epilogue: Epilogue<'_>,
        reducer: &std::sync::Arc<dyn crate::sync_bn::StatReducer>,
    ) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        let (y, mean, var, total) = crate::sync_bn::batch_norm_train(x, w, b, BN_EPS, reducer)?;
        self.update_running_stats(&mean, &var, total)?;
        // ReLU with PyTorch's derivative (0 at 0), as the fused kernels; candle's
        // `relu` passes the gradient at 0.
        let relu = |z: Tensor| -> Result<Tensor> {
            let positive = z.gt(0.0)?.to_dtype(z.dtype())?;
            Ok((z * positive)?)
        };
        Ok(match epilogue {
            Epilogue::None => y,
            Epilogue::Relu => relu(y)?,
            Epilogue::AddRelu(r) => relu((y + r)?)?,
        })
    }

    /// `running = (1 - m) * running + m * batch`, with the unbiased variance.
    pub(crate) fn update_running_stats(
        &self,
        batch_mean: &Tensor,
        biased_var: &Tensor,
        count: usize,
    ) -> Result<()> {
        let m = BN_MOMENTUM;
        let unbiased = (biased_var.detach() * (count as f64 / (count as f64 - 1.0)))?;
        let rm = self.running_mean.as_tensor().detach();
        let rv = self.running_var.as_tensor().detach();
        let new_mean = ((rm * (1.0 - m))? + (batch_mean.detach() * m)?)?;
        let new_var = ((rv * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean
            .set(&new_mean.to_dtype(self.running_mean.dtype())?)?;
        self.running_var
            .set(&new_var.to_dtype(self.running_var.dtype())?)?;
        Ok(())
    }
}
