//! Convolution with a per-channel bias and a fused epilogue, forward only:
//! the layer of an inference network whose eval-mode batch norm was folded
//! into the convolution (see [`crate::backbone::Inference`]).
//!
//! The bias, the residual and the ReLU are applied in place on the
//! convolution's output, one image at a time in parallel, so the layer writes
//! one activation instead of three (convolution, batch-norm affine map,
//! residual add + ReLU) and allocates one.

use super::conv::{conv_fwd, ConvGeom};
use super::cpu::f32_slice;
use super::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// `(x, w, bias) -> act(conv(x, w) + bias[c] (+ residual))`. The residual
/// is held by the op (a `CustomOp3` has three operands) and read from its
/// storage. No backward pass: inference only.
#[derive(Debug)]
pub(crate) struct ConvBiasOp {
    pub params: Conv2dParams,
    pub relu: bool,
    /// Contiguous, on the CPU, f32.
    pub residual: Option<Tensor>,
}

impl CustomOp3 for ConvBiasOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-bias"
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
        const OP: &str = "conv2d_bias";
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.params)?;
        let co = g.c_out;
        let (x, w, bias) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if bias.len() != co {
            bail!("{OP}: {} biases for {co} output channels", bias.len());
        }
        let guard = match &self.residual {
            Some(r) => {
                if r.dims() != g.out_shape().dims() {
                    bail!(
                        "{OP}: residual {:?} does not match output {:?}",
                        r.dims(),
                        g.out_shape()
                    );
                }
                Some(r.storage_and_layout())
            }
            None => None,
        };
        let residual = match &guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(s) => Some(f32_slice(s, layout, OP)?),
                _ => bail!("{OP}: the residual is not on the CPU"),
            },
            None => None,
        };
        let mut y = conv_fwd(&g, x, w);
        let ohw = g.oh * g.ow;
        if ohw > 0 {
            let relu = self.relu;
            // One image per job: its planes are contiguous, and a job as
            // large as an image keeps the scheduling cost negligible.
            let per_image = co * ohw;
            y.par_chunks_mut(per_image).enumerate().for_each(|(i, yi)| {
                for (ch, plane) in yi.chunks_exact_mut(ohw).enumerate() {
                    let start = i * per_image + ch * ohw;
                    let r = residual.map(|r| &r[start..start + ohw]);
                    epilogue_plane(plane, bias[ch], r, relu);
                }
            });
        }
        Ok((CpuStorage::F32(y), g.out_shape()))
    }
}

/// `plane = act(plane + b (+ r))` in place.
fn epilogue_plane(plane: &mut [f32], b: f32, r: Option<&[f32]>, relu: bool) {
    match (r, relu) {
        (Some(r), true) => plane
            .iter_mut()
            .zip(r)
            .for_each(|(v, &r)| *v = (*v + b + r).max(0.0)),
        (Some(r), false) => plane.iter_mut().zip(r).for_each(|(v, &r)| *v = *v + b + r),
        (None, true) => plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
        (None, false) => plane.iter_mut().for_each(|v| *v += b),
    }
}
