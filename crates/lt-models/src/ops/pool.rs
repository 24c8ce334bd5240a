//! Max pooling on the CPU with an argmax backward (PyTorch semantics: the
//! first maximum of a window, in row-major window order, takes the gradient).

use super::cpu::f32_slice;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Window geometry of one max-pool call, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolGeom {
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeom {
    pub fn new(h: usize, w: usize, kernel: usize, stride: usize, pad: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            bail!("max_pool2d: kernel and stride must be positive, got {kernel} and {stride}");
        }
        if 2 * pad > kernel {
            bail!("max_pool2d: padding {pad} must be at most half the kernel {kernel}");
        }
        if h + 2 * pad < kernel || w + 2 * pad < kernel {
            bail!(
                "max_pool2d: kernel {kernel} larger than the padded input {h}x{w} (padding {pad})"
            );
        }
        Ok(Self {
            h,
            w,
            kernel,
            stride,
            pad,
            oh: (h + 2 * pad - kernel) / stride + 1,
            ow: (w + 2 * pad - kernel) / stride + 1,
        })
    }

    /// Input index range `lo..hi` covered by output position `o` along an
    /// axis of length `len`.
    fn window(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.pad);
        let hi = (start + self.kernel).saturating_sub(self.pad).min(len);
        (lo, hi)
    }
}

/// Pools every `(H, W)` plane of `x`; returns the output and, per output
/// element, the index inside its input plane of the element it took.
fn pool_fwd(x: &[f32], g: &PoolGeom) -> (Vec<f32>, Vec<u32>) {
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let planes = x.len().checked_div(hw).unwrap_or(0);
    let mut y = vec![0f32; planes * ohw];
    let mut idx = vec![0u32; planes * ohw];
    if ohw == 0 {
        return (y, idx);
    }
    y.par_chunks_mut(ohw)
        .zip(idx.par_chunks_mut(ohw))
        .enumerate()
        .for_each(|(p, (yp, ip))| {
            let xp = &x[p * hw..(p + 1) * hw];
            for oy in 0..g.oh {
                let (y0, y1) = g.window(oy, g.h);
                for ox in 0..g.ow {
                    let (x0, x1) = g.window(ox, g.w);
                    let mut best = f32::NEG_INFINITY;
                    let mut at = y0 * g.w + x0;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let v = xp[iy * g.w + ix];
                            if v > best || v.is_nan() {
                                best = v;
                                at = iy * g.w + ix;
                                if v.is_nan() {
                                    break;
                                }
                            }
                        }
                        if best.is_nan() {
                            break;
                        }
                    }
                    yp[oy * g.ow + ox] = best;
                    ip[oy * g.ow + ox] = at as u32;
                }
            }
        });
    (y, idx)
}

/// Max pooling `x -> y`, keeping the argmax for the backward pass.
#[derive(Debug)]
pub(crate) struct MaxPool2dOp {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    argmax: Arc<OnceLock<Vec<u32>>>,
}

impl MaxPool2dOp {
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        Self {
            kernel,
            stride,
            pad,
            argmax: Arc::new(OnceLock::new()),
        }
    }
}

impl CustomOp1 for MaxPool2dOp {
    fn name(&self) -> &'static str {
        "lt-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "max_pool2d";
        let &[n, c, h, w] = l.dims() else {
            bail!(
                "{OP}: expected an (N, C, H, W) input, got shape {:?}",
                l.dims()
            );
        };
        let g = PoolGeom::new(h, w, self.kernel, self.stride, self.pad)?;
        if h * w > u32::MAX as usize {
            bail!("{OP}: plane of {h}x{w} too large");
        }
        let x = f32_slice(s, l, OP)?;
        let (y, idx) = pool_fwd(x, &g);
        if self.argmax.set(idx).is_err() {
            bail!("{OP}: a max-pool op instance was applied twice");
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (_, _, h, w) = x.dims4()?;
        let op = MaxPoolBwdOp {
            hw: h * w,
            argmax: self.argmax.clone(),
            x_shape: x.shape().clone(),
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Scatters `dy` to the argmax positions: `dy -> dx`.
#[derive(Debug)]
struct MaxPoolBwdOp {
    hw: usize,
    argmax: Arc<OnceLock<Vec<u32>>>,
    x_shape: Shape,
}

impl CustomOp1 for MaxPoolBwdOp {
    fn name(&self) -> &'static str {
        "lt-max-pool2d-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "max_pool2d backward";
        let dy = f32_slice(s, l, OP)?;
        let Some(idx) = self.argmax.get() else {
            bail!("{OP}: backward before forward");
        };
        if idx.len() != dy.len() {
            bail!(
                "{OP}: gradient of {} values for {} outputs",
                dy.len(),
                idx.len()
            );
        }
        let mut dx = vec![0f32; self.x_shape.elem_count()];
        let hw = self.hw;
        let planes = dx.len().checked_div(hw).unwrap_or(0);
        let ohw = dy.len().checked_div(planes).unwrap_or(0);
        if ohw > 0 {
            dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
                let r = p * ohw..(p + 1) * ohw;
                for (&i, &d) in idx[r.clone()].iter().zip(&dy[r]) {
                    dxp[i as usize] += d;
                }
            });
        }
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_maximum_wins_ties_and_padding_is_ignored() {
        let g = PoolGeom::new(2, 2, 3, 2, 1).unwrap();
        assert_eq!((g.oh, g.ow), (1, 1));
        let (y, idx) = pool_fwd(&[-5.0, -3.0, -3.0, -7.0], &g);
        assert_eq!(y, vec![-3.0]);
        assert_eq!(idx, vec![1]);
    }

    #[test]
    fn geometry_rejects_large_padding() {
        assert!(PoolGeom::new(8, 8, 3, 2, 2).is_err());
        assert!(PoolGeom::new(8, 8, 0, 2, 0).is_err());
    }
}
