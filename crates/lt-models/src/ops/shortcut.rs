//! The parameter-free "option A" shortcut of the CIFAR ResNets on the CPU:
//! keep every `stride`-th row and column, then add zero channels before and
//! after. One pass each way; the backward is the transposed copy.

use super::cpu::{f32_slice, par_zeroed};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Geometry of one zero-pad shortcut: input `(n, c, h, w)`, output
/// `(n, front + c + back, oh, ow)` with `oh = ceil(h / stride)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ZeroPadGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub front: usize,
    pub back: usize,
}

impl ZeroPadGeom {
    pub fn new(dims: &[usize], stride: usize, front: usize, back: usize) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            bail!("zero_pad_shortcut: expected an (N, C, H, W) input, got shape {dims:?}");
        };
        if stride == 0 {
            bail!("zero_pad_shortcut: stride must be positive");
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            stride,
            front,
            back,
        })
    }

    pub fn oh(&self) -> usize {
        self.h.div_ceil(self.stride)
    }

    pub fn ow(&self) -> usize {
        self.w.div_ceil(self.stride)
    }

    pub fn out_channels(&self) -> usize {
        self.front + self.c + self.back
    }

    pub fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.out_channels(), self.oh(), self.ow()))
    }
}

/// Copies the strided samples of input plane `xp` (`h x w`) into output
/// plane `yp` (`oh x ow`).
fn subsample_plane(xp: &[f32], yp: &mut [f32], g: &ZeroPadGeom) {
    let (s, ow) = (g.stride, g.ow());
    for (oy, yrow) in yp.chunks_exact_mut(ow).enumerate() {
        let xrow = &xp[oy * s * g.w..(oy * s + 1) * g.w];
        for (y, x) in yrow.iter_mut().zip(xrow.iter().step_by(s)) {
            *y = *x;
        }
    }
}

/// The transpose of [`subsample_plane`]: `dyp` (`oh x ow`) into the strided
/// positions of the zeroed `dxp` (`h x w`).
fn scatter_plane(dyp: &[f32], dxp: &mut [f32], g: &ZeroPadGeom) {
    let (s, ow) = (g.stride, g.ow());
    for (oy, dyrow) in dyp.chunks_exact(ow).enumerate() {
        let dxrow = &mut dxp[oy * s * g.w..(oy * s + 1) * g.w];
        for (dx, dy) in dxrow.iter_mut().step_by(s).zip(dyrow) {
            *dx = *dy;
        }
    }
}

/// `x -> pad_channels(x[:, :, ::stride, ::stride], front, back)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZeroPadShortcutOp {
    pub stride: usize,
    pub front: usize,
    pub back: usize,
}

impl CustomOp1 for ZeroPadShortcutOp {
    fn name(&self) -> &'static str {
        "lt-zero-pad-shortcut"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "zero_pad_shortcut";
        let g = ZeroPadGeom::new(l.dims(), self.stride, self.front, self.back)?;
        let x = f32_slice(s, l, OP)?;
        Ok((CpuStorage::F32(zero_pad_fwd(&g, x)), g.out_shape()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let g = ZeroPadGeom::new(x.dims(), self.stride, self.front, self.back)?;
        Ok(Some(
            dy.contiguous()?
                .apply_op1_no_bwd(&ZeroPadShortcutBwdOp { geom: g })?,
        ))
    }
}

/// `dy -> dx`: the input channels' gradient, scattered back to the strided
/// positions (zero elsewhere); the padding channels' gradient is dropped.
#[derive(Debug, Clone, Copy)]
struct ZeroPadShortcutBwdOp {
    geom: ZeroPadGeom,
}

impl CustomOp1 for ZeroPadShortcutBwdOp {
    fn name(&self) -> &'static str {
        "lt-zero-pad-shortcut-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "zero_pad_shortcut backward";
        let g = self.geom;
        if l.shape() != &g.out_shape() {
            bail!(
                "{OP}: gradient of shape {:?} for an output of shape {:?}",
                l.dims(),
                g.out_shape().dims()
            );
        }
        let dy = f32_slice(s, l, OP)?;
        Ok((
            CpuStorage::F32(zero_pad_bwd(&g, dy)),
            Shape::from((g.n, g.c, g.h, g.w)),
        ))
    }
}

/// The shortcut's output `(n, front + c + back, oh, ow)` of `x` `(n, c, h, w)`.
pub(crate) fn zero_pad_fwd(g: &ZeroPadGeom, x: &[f32]) -> Vec<f32> {
    let (hw, ohw, co) = (g.h * g.w, g.oh() * g.ow(), g.out_channels());
    let len = g.out_shape().elem_count();
    if ohw == 0 {
        return vec![0.0; len];
    }
    // One output plane per job; the padding planes stay zero.
    par_zeroed(len, ohw, |p, yp| {
        let (b, ch) = (p / co, p % co);
        if (g.front..g.front + g.c).contains(&ch) {
            let src = (b * g.c + ch - g.front) * hw;
            subsample_plane(&x[src..src + hw], yp, g);
        }
    })
}

/// The input's gradient `(n, c, h, w)` from the output's `dy`: the input
/// channels' gradient scattered back to the strided positions (zero
/// elsewhere); the padding channels' gradient is dropped.
pub(crate) fn zero_pad_bwd(g: &ZeroPadGeom, dy: &[f32]) -> Vec<f32> {
    let (hw, ohw, co) = (g.h * g.w, g.oh() * g.ow(), g.out_channels());
    let len = g.n * g.c * hw;
    if hw == 0 {
        return vec![0.0; len];
    }
    par_zeroed(len, hw, |p, dxp| {
        let (b, ch) = (p / g.c, p % g.c);
        let src = (b * co + g.front + ch) * ohw;
        scatter_plane(&dy[src..src + ohw], dxp, g);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sizes_keep_the_first_of_every_stride() {
        let g = ZeroPadGeom::new(&[1, 1, 5, 3], 2, 0, 0).unwrap();
        assert_eq!((g.oh(), g.ow()), (3, 2));
        let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
        let mut y = vec![0f32; 6];
        subsample_plane(&x, &mut y, &g);
        assert_eq!(y, [0.0, 2.0, 6.0, 8.0, 12.0, 14.0]);
        let mut dx = vec![0f32; 15];
        scatter_plane(&y, &mut dx, &g);
        let want: Vec<f32> = (0..15)
            .map(|i| {
                if (i / 3) % 2 == 0 && (i % 3) % 2 == 0 {
                    i as f32
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(dx, want);
    }
}
