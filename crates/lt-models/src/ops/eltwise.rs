//! Fused elementwise ops: `relu(a + b)` in one pass with a one-pass backward
//! (candle's `relu` backward alone is a comparison, a cast, a product and an
//! accumulation, each a full pass with its own allocation).

use super::cpu::{f32_slice, par_zeroed};
use super::simd;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Elements per rayon task.
const GRAIN: usize = 16 * 1024;

/// `(a, b) -> relu(a + b)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "lt-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "add_relu";
        if l1.dims() != l2.dims() {
            bail!("{OP}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let (a, b) = (f32_slice(s1, l1, OP)?, f32_slice(s2, l2, OP)?);
        let y = par_zeroed(a.len(), GRAIN, |i, y| {
            let r = i * GRAIN..i * GRAIN + y.len();
            simd::add_relu(&a[r.clone()], &b[r], y);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let dz = y.apply_op2_no_bwd(&dy.contiguous()?, &ReluMaskOp)?;
        Ok((a.track_op().then(|| dz.clone()), b.track_op().then_some(dz)))
    }
}

/// `(y, dy) -> dy * (y > 0)`: the gradient through a ReLU from its output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReluMaskOp;

impl CustomOp2 for ReluMaskOp {
    fn name(&self) -> &'static str {
        "lt-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "relu backward";
        if l1.dims() != l2.dims() {
            bail!("{OP}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let (y, dy) = (f32_slice(s1, l1, OP)?, f32_slice(s2, l2, OP)?);
        let dz = par_zeroed(y.len(), GRAIN, |i, o| {
            let r = i * GRAIN..i * GRAIN + o.len();
            simd::relu_mask(&y[r.clone()], &dy[r], o);
        });
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
}
