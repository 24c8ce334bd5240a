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
        .for_each(|(p, (yp, ip))| pool_plane(&x[p * hw..(p + 1) * hw], g, yp, ip));
    (y, idx)
}

super::simd::dispatch! {
    /// [`pool_plane_impl`] for the CPU's best instruction set.
    fn pool_plane(xp: &[f32], g: &PoolGeom, yp: &mut [f32], ip: &mut [u32]) {
        pool_plane_impl(xp, g, yp, ip)
    }
}

/// Pools one plane. Candidates are visited window row by window row and,
/// within a row, kernel column by kernel column for a whole output row at a
/// time (a strided, branch-light inner loop over `ox`), which keeps
/// PyTorch's order: a strictly larger value or the first NaN replaces the
/// running maximum, so the first maximum in row-major window order wins.
#[inline(always)]
fn pool_plane_impl(xp: &[f32], g: &PoolGeom, yp: &mut [f32], ip: &mut [u32]) {
    let s = g.stride;
    // One input row split into its `s` phases: `phases[r * pw + j] =
    // xrow[j * s + r]`, so a kernel column reads a contiguous run.
    let pw = g.w.div_ceil(s);
    let mut phases = vec![f32::NEG_INFINITY; s * pw];
    for oy in 0..g.oh {
        let (y0, y1) = g.window(oy, g.h);
        let best = &mut yp[oy * g.ow..(oy + 1) * g.ow];
        let arg = &mut ip[oy * g.ow..(oy + 1) * g.ow];
        best.fill(f32::NEG_INFINITY);
        for (ox, a) in arg.iter_mut().enumerate() {
            *a = (y0 * g.w + g.window(ox, g.w).0) as u32;
        }
        for iy in y0..y1 {
            let xrow = &xp[iy * g.w..(iy + 1) * g.w];
            for (ix, &v) in xrow.iter().enumerate() {
                phases[(ix % s) * pw + ix / s] = v;
            }
            for kj in 0..g.kernel {
                // Output columns whose input column `ox * s + kj - pad` is inside.
                let lo = g.pad.saturating_sub(kj).div_ceil(s);
                let hi = if g.w + g.pad > kj {
                    ((g.w + g.pad - kj - 1) / s + 1).min(g.ow)
                } else {
                    0
                };
                if lo >= hi {
                    continue;
                }
                // Input column of `lo`, then every `s`-th: phase `r`, from `j0`.
                let ix0 = lo * s + kj - g.pad;
                let (r, j0) = (ix0 % s, ix0 / s);
                let src = &phases[r * pw + j0..r * pw + j0 + (hi - lo)];
                let first = (iy * g.w + ix0) as u32;
                let step = s as u32;
                let runs = best[lo..hi].iter_mut().zip(&mut arg[lo..hi]).zip(src);
                for (t, ((b, a), &v)) in runs.enumerate() {
                    // Branch-free select, so the loop vectorises.
                    let take = v > *b || (v.is_nan() && !b.is_nan());
                    *b = if take { v } else { *b };
                    *a = if take { first + t as u32 * step } else { *a };
                }
            }
        }
    }
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

    /// Window by window, PyTorch's loop.
    fn naive(x: &[f32], g: &PoolGeom) -> (Vec<f32>, Vec<u32>) {
        let (mut y, mut idx) = (Vec::new(), Vec::new());
        for oy in 0..g.oh {
            let (y0, y1) = g.window(oy, g.h);
            for ox in 0..g.ow {
                let (x0, x1) = g.window(ox, g.w);
                let (mut best, mut at) = (f32::NEG_INFINITY, y0 * g.w + x0);
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let v = x[iy * g.w + ix];
                        if v > best || (v.is_nan() && !best.is_nan()) {
                            best = v;
                            at = iy * g.w + ix;
                        }
                    }
                }
                y.push(best);
                idx.push(at as u32);
            }
        }
        (y, idx)
    }

    #[test]
    fn row_sweep_matches_window_by_window_with_ties_and_nans() {
        for (h, w, k, s, p) in [
            (9, 7, 3, 2, 1),
            (6, 6, 2, 2, 0),
            (5, 8, 3, 1, 1),
            (7, 7, 5, 3, 2),
            (2, 3, 3, 2, 1),
        ] {
            let g = PoolGeom::new(h, w, k, s, p).unwrap();
            // Few distinct values, so windows have ties; a NaN and -inf too.
            let mut x: Vec<f32> = (0..h * w).map(|i| ((i * 7 + 3) % 5) as f32).collect();
            x[h * w / 2] = f32::NAN;
            x[0] = f32::NEG_INFINITY;
            let (mut y, mut idx) = (vec![0f32; g.oh * g.ow], vec![0u32; g.oh * g.ow]);
            pool_plane(&x, &g, &mut y, &mut idx);
            let (y_want, idx_want) = naive(&x, &g);
            assert_eq!(idx, idx_want, "{h}x{w} k{k} s{s} p{p}");
            for (a, b) in y.iter().zip(&y_want) {
                assert!(a == b || (a.is_nan() && b.is_nan()));
            }
        }
        // An all -inf window keeps its first element.
        let g = PoolGeom::new(2, 2, 2, 2, 0).unwrap();
        let (mut y, mut idx) = (vec![0f32; 1], vec![7u32; 1]);
        pool_plane(&[f32::NEG_INFINITY; 4], &g, &mut y, &mut idx);
        assert_eq!((y[0], idx[0]), (f32::NEG_INFINITY, 0));
    }

    #[test]
    fn geometry_rejects_large_padding() {
        assert!(PoolGeom::new(8, 8, 3, 2, 2).is_err());
        assert!(PoolGeom::new(8, 8, 0, 2, 0).is_err());
    }
}
