//! Convolution followed by batch norm (+ residual, + ReLU) as one op.
//!
//! As separate ops, candle's backward accumulates the batch-norm input
//! gradient into a fresh zeroed tensor before the convolution's backward
//! reads it: a memset and an add over the full activation, on the calling
//! thread while the kernels' workers wait. Fused, that gradient never leaves
//! the op. The convolution output (the batch-norm input) is kept inside the
//! op for the backward pass, exactly as candle would keep the separate
//! tensor.

use super::batch_norm::{
    affine_in_place, bn_train_bwd_with, bn_train_fwd_with, BnRelu, BnSaved, EpilogueKind,
    GradPlaneSums, PlaneSums, ReluMask,
};
use super::conv::{conv_bwd_data, conv_bwd_filter, conv_fwd_bn_relu_then, conv_fwd_then, ConvGeom};
use super::cpu::f32_slice;
use super::{Conv2dParams, Epilogue};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex, OnceLock};

/// `conv(x, w)` (the batch norm's input `z`) and its batch statistics
/// `(mean, biased variance)`: the per-plane sums are taken in each
/// convolution job while its images are in that worker's cache (see
/// [`PlaneSums`]; the same bits as a separate pass), saving a pass over `z`
/// through memory.
fn conv_with_stats(g: &ConvGeom, x: &[f32], w: &[f32]) -> (Vec<f32>, (Vec<f32>, Vec<f32>)) {
    let hw = g.oh * g.ow;
    let sums = PlaneSums::new(g.n, g.c_out);
    let z = conv_fwd_then(g, x, w, |first, ys| sums.add_images(first, ys, hw));
    let stats = sums.finish(&z, hw);
    (z, stats)
}

/// `conv(x, w)` with its batch statistics and the batch norm's affine map
/// ([`conv_with_stats`], [`BnSaved::new`]), no output written: for a
/// convolution that reads the activation through [`BnRelu`]
/// ([`conv_bn_train_fwd_bn_relu`]).
pub(crate) fn conv_bn_train_stats(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
) -> (Vec<f32>, BnSaved) {
    let (z, stats) = conv_with_stats(g, x, w);
    (z, BnSaved::new(gamma, beta, eps, stats))
}

/// [`conv_bn_train_fwd`] on the activation `max(x * scale + shift, 0)` of
/// a batch norm's input `x` ([`BnRelu`]): read through the map where the
/// convolution's plan can ([`conv_fwd_bn_relu_then`]), otherwise written
/// first and returned as the fourth value (to be kept for the weight
/// gradient as the activation would have been). The same bits either way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_train_fwd_bn_relu(
    g: &ConvGeom,
    x: &[f32],
    map: BnRelu<'_>,
    w: &[f32],
    residual: Option<&[f32]>,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, BnSaved, Option<Vec<f32>>) {
    let hw = g.oh * g.ow;
    let sums = PlaneSums::new(g.n, g.c_out);
    let then = |first, ys: &mut [f32]| sums.add_images(first, ys, hw);
    let (z, written) = match conv_fwd_bn_relu_then(g, x, map, w, then) {
        Some(z) => (z, None),
        None => {
            let a = map.apply(x, g.h * g.w);
            (conv_fwd_then(g, &a, w, then), Some(a))
        }
    };
    let stats = sums.finish(&z, hw);
    let (y, bn) = bn_train_fwd_with(&z, residual, (g.c_out, hw), gamma, beta, eps, relu, stats);
    (z, y, bn, written)
}

/// `conv(x, w)` (the batch norm's input `z`), then `epilogue(bn(z) (+
/// residual))` with batch statistics ([`conv_with_stats`]). Returns `z`,
/// the output and the saved statistics.
pub(crate) fn conv_bn_train_fwd(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    residual: Option<&[f32]>,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, BnSaved) {
    let (z, stats) = conv_with_stats(g, x, w);
    let dims = (g.c_out, g.oh * g.ow);
    let (y, bn) = bn_train_fwd_with(&z, residual, dims, gamma, beta, eps, relu, stats);
    (z, y, bn)
}

/// [`conv_bn_train_fwd`] for a forward pass that keeps nothing for a
/// backward one: the batch norm runs in place on the convolution's output
/// ([`affine_in_place`]), which becomes the op's output. Returns it and the
/// statistics.
fn conv_bn_train_fwd_only(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    residual: Option<&[f32]>,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
) -> (Vec<f32>, BnSaved) {
    let (mut z, stats) = conv_with_stats(g, x, w);
    let bn = BnSaved::new(gamma, beta, eps, stats);
    affine_in_place(&mut z, residual, (g.c_out, g.oh * g.ow), &bn, relu);
    (z, bn)
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug)]
struct Saved {
    g: ConvGeom,
    /// Convolution output, the batch norm's input (empty when the op was
    /// applied for a forward pass only).
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
    /// Whether a backward pass may follow (an operand tracks gradients):
    /// without one, the batch norm's input is not kept and its output is
    /// written over it.
    backward: bool,
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
        let affine = (&gb[..co], &gb[co..]);
        let relu = self.epilogue.relu();
        let (y, saved) = if self.backward {
            let (z, y, bn) = conv_bn_train_fwd(&g, x, w, residual, affine, self.eps, relu);
            // The weights are not copied: the backward pass reads them from
            // the packed operand, which the graph keeps anyway.
            (y, Saved { g, z, bn })
        } else {
            let (y, bn) = conv_bn_train_fwd_only(&g, x, w, residual, affine, self.eps, relu);
            (
                y,
                Saved {
                    g,
                    z: Vec::new(),
                    bn,
                },
            )
        };
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
            residual: add,
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
    /// Whether the forward pass added a residual before the ReLU.
    residual: bool,
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
        // Without a residual the ReLU's mask comes from `z` (already read),
        // not from `y`.
        let mask = match (self.relu, self.residual) {
            (false, _) => ReluMask::Off,
            (true, true) => ReluMask::Output(y),
            (true, false) => ReluMask::FromInput,
        };
        let sums = GradPlaneSums::new(dims.0, dims.1);
        let bn = bn_train_bwd_with(&s.z, mask, dy, dims, &s.bn, self.want_dres, &sums);
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
    // candle records the op (and keeps it for a backward pass) exactly
    // when one of its operands tracks gradients.
    let backward = [x, w, weight, bias].iter().any(|t| t.track_op())
        || epilogue.residual().is_some_and(Tensor::track_op);
    let op = ConvBnOp {
        params: p,
        w_dims: w.dims4()?,
        eps,
        epilogue: epilogue.kind(),
        backward,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batch_norm::bn_train_fwd;
    use crate::ops::conv::conv_fwd;
    use crate::ops::cpu::test_data as data;
    use crate::ops::Conv2dParams;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The batch statistics taken inside the convolution's jobs equal those
    /// of a separate pass over its output, bit for bit, and so does
    /// everything after them: on Winograd F(4x4, 3x3) (one image per job,
    /// and 8x8 maps in groups, the last one short), F(2x2, 3x3), stride 2
    /// (im2col + gemm) and 1x1, with and without a residual.
    #[test]
    fn in_job_statistics_match_a_separate_pass_bit_for_bit() {
        let cases: [(usize, usize, usize, usize, usize, usize); 5] = [
            // (images, channels in, size, channels out, kernel, stride)
            (3, 16, 32, 16, 3, 1),
            (7, 64, 8, 64, 3, 1),
            (2, 8, 6, 8, 3, 1),
            (3, 16, 16, 32, 3, 2),
            (3, 16, 8, 24, 1, 1),
        ];
        for (seed, &(n, ci, s, co, k, stride)) in cases.iter().enumerate() {
            let p = Conv2dParams {
                stride,
                padding: k / 2,
                groups: 1,
            };
            let g = ConvGeom::new(&[n, ci, s, s], &[co, ci, k, k], p).unwrap();
            let x = data(n * ci * s * s, 4 * seed + 1);
            let w: Vec<f32> = data(co * ci * k * k, 4 * seed + 2)
                .iter()
                .map(|v| v * 0.2 + 0.01)
                .collect();
            let gamma: Vec<f32> = data(co, 4 * seed + 3).iter().map(|v| v + 1.5).collect();
            let beta = data(co, 4 * seed + 4);
            let hw = g.oh * g.ow;
            let r = data(n * co * hw, 4 * seed + 5);
            for residual in [None, Some(&r[..])] {
                let z = conv_fwd(&g, &x, &w);
                let (y, bn) = bn_train_fwd(&z, residual, (n, co, hw), &gamma, &beta, 1e-5, true);
                let (z2, y2, bn2) =
                    conv_bn_train_fwd(&g, &x, &w, residual, (&gamma, &beta), 1e-5, true);
                let what = format!("case {seed}, residual {}", residual.is_some());
                assert_eq!(bits(&z), bits(&z2), "{what}: conv output");
                assert_eq!(bits(&bn.mean), bits(&bn2.mean), "{what}: mean");
                assert_eq!(bits(&bn.var), bits(&bn2.var), "{what}: variance");
                assert_eq!(bits(&y), bits(&y2), "{what}: output");
                // The forward-only op: the batch norm in place on the
                // convolution's output, with and without the ReLU.
                for relu in [true, false] {
                    let (y, bn) =
                        bn_train_fwd(&z, residual, (n, co, hw), &gamma, &beta, 1e-5, relu);
                    let (y3, bn3) =
                        conv_bn_train_fwd_only(&g, &x, &w, residual, (&gamma, &beta), 1e-5, relu);
                    let what = format!("{what}, relu {relu}, forward only");
                    assert_eq!(bits(&bn.mean), bits(&bn3.mean), "{what}: mean");
                    assert_eq!(bits(&bn.var), bits(&bn3.var), "{what}: variance");
                    assert_eq!(bits(&y), bits(&y3), "{what}: output");
                }
            }
        }
    }

    /// The backward's per-plane sums taken in the jobs of the convolution
    /// that makes the gradient, and a ReLU mask recomputed from the batch
    /// norm's input, give the gradients of the separate passes bit for bit:
    /// the gradient made by Winograd F(4x4, 3x3) (one image per job, and
    /// 8x8 maps in groups), F(2x2, 3x3) and a stride-2 convolution.
    #[test]
    fn in_job_gradient_sums_and_recomputed_masks_match_bit_for_bit() {
        use crate::ops::batch_norm::{bn_train_bwd, bn_train_bwd_with, GradPlaneSums, ReluMask};
        use crate::ops::conv::conv_bwd_data_then;
        // (images, channels, size; the producer's output channels, stride)
        let cases = [
            (3, 16, 32, 16, 1),
            (7, 64, 8, 32, 1),
            (2, 8, 6, 8, 1),
            (3, 16, 16, 8, 2),
        ];
        for (seed, &(n, c, size, c2, stride)) in cases.iter().enumerate() {
            let p = Conv2dParams {
                stride: 1,
                padding: 1,
                groups: 1,
            };
            let g = ConvGeom::new(&[n, c, size, size], &[c, c, 3, 3], p).unwrap();
            let hw = size * size;
            let x = data(n * c * hw, 6 * seed + 1);
            let w: Vec<f32> = data(c * c * 9, 6 * seed + 2)
                .iter()
                .map(|v| v * 0.2)
                .collect();
            let gamma: Vec<f32> = data(c, 6 * seed + 3).iter().map(|v| v + 1.5).collect();
            let beta = data(c, 6 * seed + 4);
            let r = data(n * c * hw, 6 * seed + 5);
            // The convolution whose input gradient is the batch norm's
            // output gradient.
            let pp = Conv2dParams {
                stride,
                padding: 1,
                groups: 1,
            };
            let gp = ConvGeom::new(&[n, c, size, size], &[c2, c, 3, 3], pp).unwrap();
            let e = data(n * c2 * gp.oh * gp.ow, 6 * seed + 6);
            let wp: Vec<f32> = data(c2 * c * 9, 6 * seed + 7)
                .iter()
                .map(|v| v * 0.3)
                .collect();
            for residual in [None, Some(&r[..])] {
                let (z, y, bn) =
                    conv_bn_train_fwd(&g, &x, &w, residual, (&gamma, &beta), 1e-5, true);
                let mask = match residual {
                    None => ReluMask::FromInput,
                    Some(_) => ReluMask::Output(&y),
                };
                let want_dz = residual.is_some();
                let sums = GradPlaneSums::new(n, c);
                let dy = conv_bwd_data_then(&gp, &e, &wp, |first, dys| {
                    sums.add_images(first, dys, (&z, mask, &bn), hw);
                });
                let want = bn_train_bwd(&z, &y, &dy, (n, c, hw), &bn, true, want_dz);
                let fresh = GradPlaneSums::new(n, c);
                for (how, sums) in [("in the jobs", &sums), ("afterwards", &fresh)] {
                    let got = bn_train_bwd_with(&z, mask, &dy, (n, c, hw), &bn, want_dz, sums);
                    let what = format!("case {seed}, residual {}, sums {how}", residual.is_some());
                    assert_eq!(bits(&got.dx), bits(&want.dx), "{what}: dx");
                    assert_eq!(bits(&got.dgamma), bits(&want.dgamma), "{what}: dgamma");
                    assert_eq!(bits(&got.dbeta), bits(&want.dbeta), "{what}: dbeta");
                    assert_eq!(
                        got.dz.as_deref().map(bits),
                        want.dz.as_deref().map(bits),
                        "{what}: dz"
                    );
                }
            }
        }
    }
}
