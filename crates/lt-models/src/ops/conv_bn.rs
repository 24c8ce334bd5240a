//! Convolution followed by batch norm (+ residual, + ReLU) as one op.
//!
//! As separate ops, candle's backward accumulates the batch-norm input
//! gradient into a fresh zeroed tensor before the convolution's backward
//! reads it: a memset and an add over the full activation, on the calling
//! thread while the kernels' workers wait. Fused, that gradient never leaves
//! the op. The convolution output (the batch-norm input) is kept inside the
//! op for the backward pass, exactly as candle would keep the separate
//! tensor.

use super::batch_norm::{bn_train_bwd, bn_train_fwd, BnSaved, EpilogueKind};
use super::conv::{conv_bwd_data, conv_bwd_filter, conv_fwd, ConvGeom};
use super::cpu::f32_slice;
use super::{Conv2dParams, Epilogue};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex, OnceLock};

/// What the forward pass keeps for the backward pass.
#[derive(Debug)]
struct Saved {
    g: ConvGeom,
    /// Convolution output, the batch norm's input.
    z: Vec<f32>,
    bn: BnSaved,
}

/// `(x, packed, residual) -> epilogue(bn(conv(x, w)) (+ residual))` where
/// `packed = cat(w.flatten(), gamma, beta)`; without a residual the third
/// operand is `x` again and ignored.
#[derive(Debug)]
struct ConvBnOp {
    params: Conv2dParams,
    w_dims: (usize, usize, usize, usize),
    eps: f64,
    epilogue: EpilogueKind,
    saved: Arc<OnceLock<Saved>>,
}

impl CustomOp3 for ConvBnOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "conv2d_batch_norm";
        let (co, ci, kh, kw) = self.w_dims;
        let g = ConvGeom::new(l1.dims(), &[co, ci, kh, kw], self.params)?;
        let x = f32_slice(s1, l1, OP)?;
        let packed = f32_slice(s2, l2, OP)?;
        let w_len = co * ci * kh * kw;
        if packed.len() != w_len + 2 * co {
            bail!(
                "{OP}: {} parameters for weight {:?} and {co} channels",
                packed.len(),
                self.w_dims
            );
        }
        let (w, gb) = packed.split_at(w_len);
        let residual = if self.epilogue == EpilogueKind::AddRelu {
            let r = f32_slice(s3, l3, OP)?;
            if l3.dims() != g.out_shape().dims() {
                bail!(
                    "{OP}: residual {:?} does not match output {:?}",
                    l3.dims(),
                    g.out_shape()
                );
            }
            Some(r)
        } else {
            None
        };
        let z = conv_fwd(&g, x, w);
        let dims = (g.n, g.c_out, g.oh * g.ow);
        let (y, bn) = bn_train_fwd(
            &z,
            residual,
            dims,
            &gb[..co],
            &gb[co..],
            self.eps,
            self.epilogue.relu(),
        );
        // The weights are not copied: the backward pass reads them from
        // the packed operand, which the graph keeps anyway.
        let saved = Saved { g, z, bn };
        if self.saved.set(saved).is_err() {
            bail!("{OP}: an op instance was applied twice");
        }
        Ok((CpuStorage::F32(y), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        residual: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let add = self.epilogue == EpilogueKind::AddRelu;
        let op = ConvBnBwdOp {
            saved: self.saved.clone(),
            packed: packed.clone(),
            relu: self.epilogue.relu(),
            want_dx: x.track_op(),
            want_dres: add && residual.track_op(),
            extra: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let Some((dpacked, dres)) = op.extra.lock().map_err(|_| poisoned())?.take() else {
            bail!("conv2d_batch_norm backward: gradients missing");
        };
        let dev = x.device();
        let dpacked = packed
            .track_op()
            .then(|| Tensor::from_vec(dpacked, packed.shape(), dev))
            .transpose()?;
        let dres = match dres {
            Some(d) => Some(Tensor::from_vec(d, residual.shape(), dev)?),
            None => None,
        };
        Ok((x.track_op().then_some(dx), dpacked, dres))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("conv2d_batch_norm: poisoned lock".into())
}

type Extra = (Vec<f32>, Option<Vec<f32>>);

/// Backward `(x, y, dy) -> dx`, leaving the packed parameter gradient and
/// the residual's gradient in `extra`.
#[derive(Debug)]
struct ConvBnBwdOp {
    saved: Arc<OnceLock<Saved>>,
    /// The forward pass's `cat(w.flatten(), gamma, beta)`.
    packed: Tensor,
    relu: bool,
    want_dx: bool,
    want_dres: bool,
    extra: Mutex<Option<Extra>>,
}

impl CustomOp3 for ConvBnBwdOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-batch-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "conv2d_batch_norm backward";
        let Some(s) = self.saved.get() else {
            bail!("{OP}: backward before forward");
        };
        let g = &s.g;
        let (x, y, dy) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if y.len() != s.z.len() || dy.len() != s.z.len() || x.len() != g.n * g.c_in * g.h * g.w {
            bail!(
                "{OP}: gradient {:?} does not match output {:?}",
                l3.dims(),
                g.out_shape()
            );
        }
        let dims = (g.n, g.c_out, g.oh * g.ow);
        let bn = bn_train_bwd(&s.z, y, dy, dims, &s.bn, self.relu, self.want_dres);
        let dw = conv_bwd_filter(g, x, &bn.dx);
        let dx = if self.want_dx {
            let (storage, layout) = self.packed.storage_and_layout();
            let Storage::Cpu(packed) = &*storage else {
                bail!("{OP}: the packed parameters are not on the CPU");
            };
            let w_len = g.c_out * g.kdim();
            let packed = f32_slice(packed, layout, OP)?;
            if packed.len() < w_len {
                bail!(
                    "{OP}: {} packed parameters for {w_len} weights",
                    packed.len()
                );
            }
            conv_bwd_data(g, &bn.dx, &packed[..w_len])
        } else {
            vec![0f32; x.len()]
        };
        let dpacked = [dw, bn.dgamma, bn.dbeta].concat();
        *self.extra.lock().map_err(|_| poisoned())? = Some((dpacked, bn.dz));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// See [`super::conv2d_batch_norm_train`].
pub(crate) fn conv2d_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = ConvBnOp {
        params: p,
        w_dims: w.dims4()?,
        eps,
        epilogue: epilogue.kind(),
        saved: Arc::new(OnceLock::new()),
    };
    let saved = op.saved.clone();
    let packed = Tensor::cat(&[&w.flatten_all()?, weight, bias], 0)?;
    let x = x.contiguous()?;
    let third = match epilogue.residual() {
        Some(r) => r.contiguous()?,
        None => x.clone(),
    };
    let y = x.apply_op3(&packed, &third, op)?;
    let Some(s) = saved.get() else {
        bail!("conv2d_batch_norm: statistics missing after the forward pass");
    };
    let c = s.bn.mean.len();
    let mean = Tensor::from_vec(s.bn.mean.clone(), c, x.device())?;
    let var = Tensor::from_vec(s.bn.var.clone(), c, x.device())?;
    Ok((y, mean, var))
}
