//! 2-D convolution on the CPU: im2col + `gemm`, one image per rayon task.
//!
//! Forward, input gradient and weight gradient are three custom ops. The
//! forward op's backward applies the other two, so autograd never goes through
//! candle's own (single-threaded, per-group) convolution code. Groups are
//! looped inside each kernel: a grouped convolution costs one task per image,
//! not one candle op per group.

use super::batch_norm::BnRelu;
use super::cpu::{
    assume_init, f32_slice, par_written_init, par_zeroed, par_zeroed_init, sgemm, split_range,
    threads, Mat, MatMut, Scratch,
};
use super::direct;
use super::lanes::{Lanes, PartLanes};
use super::simd;
use super::winograd;
use super::winograd_f4;
use super::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Shapes of one convolution, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Checks `x` `(N, C_in, H, W)` against `w` `(C_out, C_in / groups, KH, KW)`.
    pub fn new(x: &[usize], w: &[usize], p: Conv2dParams) -> Result<Self> {
        let (&[n, c_in, h, wd], &[c_out, cig, kh, kw]) = (x, w) else {
            bail!("conv2d: expected 4-d input and weight, got {x:?} and {w:?}");
        };
        if p.stride == 0 || p.groups == 0 {
            bail!("conv2d: stride and groups must be positive, got {p:?}");
        }
        if c_in % p.groups != 0 || c_out % p.groups != 0 || cig * p.groups != c_in {
            bail!(
                "conv2d: input {x:?} and weight {w:?} do not match groups = {}",
                p.groups
            );
        }
        if h + 2 * p.padding < kh || wd + 2 * p.padding < kw || kh == 0 || kw == 0 {
            bail!(
                "conv2d: kernel {kh}x{kw} larger than the padded input {h}x{wd} (padding {})",
                p.padding
            );
        }
        Ok(Self {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: p.stride,
            pad: p.padding,
            groups: p.groups,
            oh: (h + 2 * p.padding - kh) / p.stride + 1,
            ow: (wd + 2 * p.padding - kw) / p.stride + 1,
        })
    }

    pub(crate) fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    pub(crate) fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of the im2col matrix of one group.
    pub(crate) fn kdim(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }
    pub(crate) fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    /// A 1x1, stride-1, unpadded convolution reads the input as its own
    /// im2col matrix.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    pub(crate) fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.kdim() * self.ohw()
        }
    }
    pub(crate) fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.c_out, self.oh, self.ow))
    }

    /// Output columns `lo..hi` whose input column `ow * stride + kj - pad`
    /// lies inside the image.
    fn ow_range(&self, kj: usize) -> (usize, usize) {
        let lo = if self.pad > kj {
            (self.pad - kj).div_ceil(self.stride)
        } else {
            0
        };
        let hi = if self.w + self.pad > kj {
            ((self.w + self.pad - kj - 1) / self.stride + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input row read by output row `oy` at kernel row `ki`, if inside.
    fn in_row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.stride + ki)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

/// Unfolds one group of one image, `x` `(cig, H, W)`, into `col`
/// `(cig * KH * KW, OH * OW)`.
fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    if g.stride == 1 && g.ow == g.w {
        im2col_same(g, x, col);
    } else if g.stride > 1 {
        im2col_strided(g, x, col);
    } else {
        im2col_rows(g, x, col);
    }
}

/// An input row split into its `stride` phases: `phase p` holds columns
/// `p, p + s, p + 2s, ...`. With the row so split, the input columns a
/// strided tap reads (`ox * s + kj - pad` for consecutive `ox`) are
/// consecutive in one phase: a copy, not a strided gather per element.
struct Phases {
    s: usize,
    /// Floats per phase, `ceil(W / s)`.
    len: usize,
    buf: Vec<f32>,
}

impl Phases {
    fn new(w: usize, s: usize) -> Self {
        let len = w.div_ceil(s);
        Phases {
            s,
            len,
            buf: vec![0f32; s * len],
        }
    }

    /// `buf[p * len + i] = row[i * s + p]`.
    fn split(&mut self, row: &[f32]) {
        let (s, len) = (self.s, self.len);
        if s == 2 {
            let (even, odd) = self.buf.split_at_mut(len);
            let pairs = row.len() / 2;
            for (i, pair) in row.chunks_exact(2).enumerate() {
                even[i] = pair[0];
                odd[i] = pair[1];
            }
            if row.len() % 2 == 1 {
                even[pairs] = row[row.len() - 1];
            }
            return;
        }
        for (i, chunk) in row.chunks(s).enumerate() {
            for (p, &v) in chunk.iter().enumerate() {
                self.buf[p * len + i] = v;
            }
        }
    }

    /// The inverse of [`Phases::split`]: `row[i * s + p] = buf[p * len + i]`.
    fn merge(&self, row: &mut [f32]) {
        let (s, len) = (self.s, self.len);
        if s == 2 {
            let (even, odd) = self.buf.split_at(len);
            let pairs = row.len() / 2;
            let n = row.len();
            for (i, pair) in row.chunks_exact_mut(2).enumerate() {
                pair[0] = even[i];
                pair[1] = odd[i];
            }
            if n % 2 == 1 {
                row[n - 1] = even[pairs];
            }
            return;
        }
        for (i, chunk) in row.chunks_mut(s).enumerate() {
            for (p, v) in chunk.iter_mut().enumerate() {
                *v = self.buf[p * len + i];
            }
        }
    }

    /// The `n` consecutive floats of the phase holding input column `ix`,
    /// from that column on (`ix, ix + s, ...`).
    fn run(&self, ix: usize, n: usize) -> std::ops::Range<usize> {
        let start = (ix % self.s) * self.len + ix / self.s;
        start..start + n
    }
}

/// [`im2col`] for strides above 1, one input row at a time: the row is
/// split into its phases once and each of the `KW` taps is a copy from one
/// of them.
fn im2col_strided(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (hw, ohw, s, ow) = (g.hw(), g.ohw(), g.stride, g.ow);
    let mut phases = Phases::new(g.w, s);
    let ranges: Vec<(usize, usize)> = (0..g.kw).map(|kj| g.ow_range(kj)).collect();
    for c in 0..g.cig() {
        let xc = &x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let row0 = (c * g.kh + ki) * g.kw;
            for oy in 0..g.oh {
                let Some(iy) = g.in_row(oy, ki) else {
                    for kj in 0..g.kw {
                        col[(row0 + kj) * ohw + oy * ow..][..ow].fill(0.0);
                    }
                    continue;
                };
                phases.split(&xc[iy * g.w..(iy + 1) * g.w]);
                for (kj, &(lo, hi)) in ranges.iter().enumerate() {
                    let d = &mut col[(row0 + kj) * ohw + oy * ow..][..ow];
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    if lo < hi {
                        let src = phases.run(lo * s + kj - g.pad, hi - lo);
                        d[lo..hi].copy_from_slice(&phases.buf[src]);
                    }
                }
            }
        }
    }
}

/// [`im2col`], one output row at a time (any geometry).
fn im2col_rows(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (hw, ohw, s) = (g.hw(), g.ohw(), g.stride);
    for c in 0..g.cig() {
        let xc = &x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ohw..(row + 1) * ohw];
                let (lo, hi) = g.ow_range(kj);
                for oy in 0..g.oh {
                    let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    let Some(iy) = g.in_row(oy, ki) else {
                        d.fill(0.0);
                        continue;
                    };
                    let xrow = &xc[iy * g.w..(iy + 1) * g.w];
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    if lo < hi {
                        let ix0 = lo * s + kj - g.pad;
                        if s == 1 {
                            d[lo..hi].copy_from_slice(&xrow[ix0..ix0 + hi - lo]);
                        } else {
                            for (o, v) in d[lo..hi].iter_mut().zip(xrow[ix0..].iter().step_by(s)) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 and "same" width (`OW == W`): each row of `col`
/// is the input plane shifted by a constant flat offset, so it is one
/// contiguous copy followed by zeroing the columns that wrapped around
/// (instead of one short copy per output row).
fn im2col_same(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (hw, ohw, w) = (g.hw(), g.ohw(), g.w);
    for ki in 0..g.kh {
        // Output rows whose input row `oy + ki - pad` is inside the image.
        let oy_lo = g.pad.saturating_sub(ki).min(g.oh);
        let oy_hi = (g.h + g.pad).saturating_sub(ki).min(g.oh).max(oy_lo);
        for kj in 0..g.kw {
            let (lo, hi) = g.ow_range(kj);
            // Flat source offset of output element (oy, ox): (ki-pad)*W + kj-pad.
            let off = (ki * w + kj) as isize - (g.pad * w + g.pad) as isize;
            // Destination range whose source lies inside the plane; the few
            // elements clipped here are wrapped columns, zeroed below.
            // Clamped to the valid rows: with a kernel larger than the
            // image (1x1 maps deep in a network), `-off` can pass them.
            let a = ((oy_lo * w) as isize).max(-off).min((oy_hi * w) as isize) as usize;
            let b = ((oy_hi * w) as isize)
                .min(hw as isize - off)
                .max(a as isize) as usize;
            for c in 0..g.cig() {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ohw..(row + 1) * ohw];
                let xc = &x[c * hw..(c + 1) * hw];
                dst[..oy_lo * w].fill(0.0);
                dst[oy_hi * w..].fill(0.0);
                if a < b {
                    let src = (a as isize + off) as usize;
                    dst[a..b].copy_from_slice(&xc[src..src + (b - a)]);
                }
                dst[oy_lo * w..a].fill(0.0);
                dst[b..oy_hi * w].fill(0.0);
                // Wrapped columns: a strided loop over rows per column (a
                // slice fill per row would be a libc call for one element).
                for t in (0..lo).chain(hi..w) {
                    for oy in oy_lo..oy_hi {
                        dst[oy * w + t] = 0.0;
                    }
                }
            }
        }
    }
}

/// Folds `col` `(cig * KH * KW, OH * OW)` back into `dx` `(cig, H, W)`,
/// adding overlapping contributions (the adjoint of [`im2col`]).
fn col2im(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    if g.stride > 1 {
        return col2im_strided(g, col, dx);
    }
    let hw = g.hw();
    let ohw = g.ohw();
    for c in 0..g.cig() {
        let dxc = &mut dx[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &col[row * ohw..(row + 1) * ohw];
                let (lo, hi) = g.ow_range(kj);
                if lo >= hi {
                    continue;
                }
                for oy in 0..g.oh {
                    let Some(iy) = g.in_row(oy, ki) else {
                        continue;
                    };
                    let d = &src[oy * g.ow + lo..oy * g.ow + hi];
                    let ix0 = lo + kj - g.pad;
                    let xrow = &mut dxc[iy * g.w..(iy + 1) * g.w];
                    for (o, v) in xrow[ix0..ix0 + hi - lo].iter_mut().zip(d) {
                        *o += *v;
                    }
                }
            }
        }
    }
}

/// [`col2im`] for strides above 1, one input row at a time: the row of
/// `dx` is split into its phases, each tap adds a contiguous run into one
/// of them, and the row is merged back. Every element receives its sums in
/// the order of the row-by-row loop (by `ki`, then `kj`: for a given `ki`
/// only one output row reads an input row), so the result is the same to
/// the bit.
fn col2im_strided(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    let (hw, ohw, s, ow) = (g.hw(), g.ohw(), g.stride, g.ow);
    let mut phases = Phases::new(g.w, s);
    let ranges: Vec<(usize, usize)> = (0..g.kw).map(|kj| g.ow_range(kj)).collect();
    for c in 0..g.cig() {
        let dxc = &mut dx[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let row0 = (c * g.kh + ki) * g.kw;
            for oy in 0..g.oh {
                let Some(iy) = g.in_row(oy, ki) else {
                    continue;
                };
                let xrow = &mut dxc[iy * g.w..(iy + 1) * g.w];
                phases.split(xrow);
                for (kj, &(lo, hi)) in ranges.iter().enumerate() {
                    if lo >= hi {
                        continue;
                    }
                    let d = &col[(row0 + kj) * ohw + oy * ow..][lo..hi];
                    let dst = phases.run(lo * s + kj - g.pad, hi - lo);
                    for (o, v) in phases.buf[dst].iter_mut().zip(d) {
                        *o += *v;
                    }
                }
                phases.merge(xrow);
            }
        }
    }
}

/// Inner gemm parallelism: images are spread over the pool when there are
/// enough of them, otherwise each gemm uses the pool itself.
fn inner_parallelism(n: usize) -> Parallelism {
    let t = threads();
    if n >= t || t == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(t)
    }
}

/// Builds the `n * per_image` output, running `f(image_index, out_image,
/// scratch)` on every (zeroed) image in parallel; `scratch` holds
/// `scratch_len` floats, one buffer per rayon job.
fn map_images<F>(n: usize, per_image: usize, scratch_len: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
{
    if per_image == 0 {
        return Vec::new();
    }
    par_zeroed_init(
        n * per_image,
        per_image,
        || vec![0f32; scratch_len],
        |scratch, i, o| f(i, o, scratch),
    )
}

/// [`map_images`] for kernels that write every output element: the
/// output is not zeroed first.
///
/// # Safety
/// `f` must initialise every element of the image's output it is given.
unsafe fn map_images_written<F>(n: usize, per_image: usize, scratch_len: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>], &mut [f32]) + Sync + Send,
{
    if per_image == 0 {
        return Vec::new();
    }
    // SAFETY: forwarded: `f` writes every element of each image.
    unsafe {
        par_written_init(
            n * per_image,
            per_image,
            || vec![0f32; scratch_len],
            |scratch, i, o| f(i, o, scratch),
        )
    }
}

/// `y = conv(x, w)`: per image and group, `y_g = W_g * im2col(x_g)`.
pub(crate) fn conv_fwd(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    conv_fwd_then(g, x, w, |_, _| {})
}

/// [`conv_fwd`], handing each job's output, right after the kernel wrote
/// it and while it is still in that worker's cache, to `then(first image,
/// outputs of its images)`: an epilogue there costs no extra pass over the
/// activation through memory.
pub(crate) fn conv_fwd_then(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    then: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (cig, cog, kdim, hw, ohw) = (g.cig(), g.cog(), g.kdim(), g.hw(), g.ohw());
    if let Some(plan) = winograd_f4_plan(g, w) {
        return f4_forward(&plan, g, x, None, then);
    }
    if let Some(plan) = winograd_plan(g, w) {
        // SAFETY: `Plan::run` writes every element of its image's output.
        return unsafe {
            map_images_written(g.n, g.c_out * ohw, plan.scratch_len(), |i, yi, scratch| {
                plan.run(&x[i * g.c_in * hw..(i + 1) * g.c_in * hw], yi, scratch);
                // SAFETY: `Plan::run` wrote every element of `yi`.
                then(i, assume_init(yi));
            })
        };
    }
    if let Some(plan) = direct_plan(g, w) {
        // SAFETY: as above, for the direct plan.
        return unsafe {
            map_images_written(g.n, g.c_out * ohw, plan.scratch_len(), |i, yi, xpad| {
                plan.run(&x[i * g.c_in * hw..(i + 1) * g.c_in * hw], yi, xpad);
                // SAFETY: the direct plan wrote every element of `yi`.
                then(i, assume_init(yi));
            })
        };
    }
    let par = inner_parallelism(g.n);
    map_images(g.n, g.c_out * ohw, g.col_len(), |i, yi, col| {
        let xi = &x[i * g.c_in * hw..(i + 1) * g.c_in * hw];
        for grp in 0..g.groups {
            let xg = &xi[grp * cig * hw..(grp + 1) * cig * hw];
            let rhs = if g.pointwise() {
                xg
            } else {
                im2col(g, xg, col);
                &*col
            };
            sgemm(
                cog,
                ohw,
                kdim,
                MatMut {
                    data: &mut yi[grp * cog * ohw..(grp + 1) * cog * ohw],
                    rs: ohw,
                    cs: 1,
                },
                false,
                Mat {
                    data: &w[grp * cog * kdim..(grp + 1) * cog * kdim],
                    rs: kdim,
                    cs: 1,
                },
                Mat {
                    data: rhs,
                    rs: ohw,
                    cs: 1,
                },
                par,
            );
        }
        then(i, yi);
    })
}

/// [`conv_fwd_then`] on the activation `max(z * scale + shift, 0)` of a
/// batch norm's input `z` ([`BnRelu`]), which the kernel computes as it
/// reads `z`: the activation is never written. `None` where the plan this
/// convolution takes cannot read through the map (only F(4x4, 3x3)'s
/// can): the caller then writes the activation ([`BnRelu::apply`]) and
/// takes [`conv_fwd_then`]. Either way the same bits.
pub(crate) fn conv_fwd_bn_relu_then(
    g: &ConvGeom,
    z: &[f32],
    bn: BnRelu<'_>,
    w: &[f32],
    then: impl Fn(usize, &mut [f32]) + Sync,
) -> Option<Vec<f32>> {
    let plan = winograd_f4_plan(g, w)?;
    Some(f4_forward(&plan, g, z, Some(bn), then))
}

/// [`conv_fwd_then`] by an F(4x4, 3x3) plan, the input read through `bn`
/// where it is given.
fn f4_forward(
    plan: &winograd_f4::Plan,
    g: &ConvGeom,
    x: &[f32],
    bn: Option<BnRelu<'_>>,
    then: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let hw = g.hw();
    // Groups of `images` images per call (the last may hold fewer).
    let (images, per_image) = (plan.images(), g.c_out * g.ohw());
    if per_image == 0 {
        return Vec::new();
    }
    // SAFETY: `Plan::run` writes every element of its images' output.
    unsafe {
        par_written_init(
            g.n * per_image,
            images * per_image,
            || Scratch::take(plan.scratch_len()),
            |scratch, grp, ys| {
                let (i, k) = (grp * images, ys.len() / per_image);
                plan.run(&x[i * g.c_in * hw..(i + k) * g.c_in * hw], bn, ys, scratch);
                // SAFETY: `Plan::run` wrote every element of `ys`.
                then(i, assume_init(ys));
            },
        )
    }
}

thread_local! {
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the direct (AVX-512) convolution disabled in this thread,
/// so tests cover the portable im2col + gemm path on any machine.
#[cfg(test)]
pub(crate) fn with_portable_conv<R>(f: impl FnOnce() -> R) -> R {
    let old = PORTABLE_ONLY.with(|c| c.replace(true));
    let r = f();
    PORTABLE_ONLY.with(|c| c.set(old));
    r
}

fn direct_plan(g: &ConvGeom, w: &[f32]) -> Option<direct::Plan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    direct::Plan::new(g, w)
}

fn winograd_plan(g: &ConvGeom, w: &[f32]) -> Option<winograd::Plan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    winograd::Plan::new(g, w)
}

fn winograd_f4_plan(g: &ConvGeom, w: &[f32]) -> Option<winograd_f4::Plan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    winograd_f4::Plan::new(g, w)
}

fn winograd_f4_filter_plan(g: &ConvGeom) -> Option<winograd_f4::FilterPlan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    winograd_f4::FilterPlan::new(g)
}

fn winograd_filter_plan(g: &ConvGeom) -> Option<winograd::FilterPlan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    winograd::FilterPlan::new(g)
}

fn direct_filter_plan(g: &ConvGeom) -> Option<direct::FilterPlan> {
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    // A Winograd plan goes first where both apply: 2.25 (F(2x2, 3x3)) or
    // 4 (F(4x4, 3x3)) times fewer products win over the direct tile. On
    // AVX2, whose weight-gradient tile sweeps its grid in four passes, a
    // CIFAR stage-1 layer's forward and backward went 17.2 -> 16.4 ms
    // (`conv_ops`, AVX2-only EPYC, F(2x2, 3x3)); on AVX-512 the ResNet-32
    // training step went 409.2 / 405.5 / 398.6 -> 422.9 / 424.0 / 414.2
    // img/s (`resnet_step`, 3 alternating pairs, Intel Xeon), ResNet-50's
    // unchanged.
    if winograd_f4::FilterPlan::new(g).is_some() || winograd::FilterPlan::new(g).is_some() {
        return None;
    }
    direct::FilterPlan::new(g)
}

/// For a stride-1 convolution, the input gradient is itself a stride-1
/// convolution of `dy` with the spatially flipped, in/out-swapped kernel and
/// padding `K - 1 - P`: the forward kernel's long reduction (`C_out * K * K`)
/// beats a gemm over only `C_out` followed by a col2im scatter.
fn flipped_geometry(g: &ConvGeom) -> Option<ConvGeom> {
    if g.stride != 1 || g.kh != g.kw || g.pad + 1 > g.kh {
        return None;
    }
    let p = Conv2dParams {
        stride: 1,
        padding: g.kh - 1 - g.pad,
        groups: g.groups,
    };
    let t = ConvGeom::new(
        &[g.n, g.c_out, g.oh, g.ow],
        &[g.c_in, g.cog(), g.kh, g.kw],
        p,
    )
    .ok()?;
    (t.oh == g.h && t.ow == g.w).then_some(t)
}

/// `W'[g*cig + ci, co, ki, kj] = W[g*cog + co, ci, K-1-ki, K-1-kj]`.
///
/// Input channels in parallel: for the large kernels of 224² networks
/// (2.4 M weights in ResNet-50's last stage) a serial copy on the calling
/// thread was about 1 % of a training step with the workers idle.
fn flip_kernel(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cig, cog, kk) = (g.cig(), g.cog(), g.kh * g.kw);
    par_zeroed(w.len(), (cog * kk).max(1), |row, dst| {
        let (grp, ci) = (row / cig, row % cig);
        for (co, dst) in dst.chunks_exact_mut(kk).enumerate() {
            let src = &w[((grp * cog + co) * cig + ci) * kk..][..kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    })
}

/// `dx = conv^T(dy, w)`.
pub(crate) fn conv_bwd_data(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    conv_bwd_data_then(g, dy, w, |_, _| {})
}

/// [`conv_bwd_data`], handing each job's input gradient to `then(first
/// image, gradients of its images)` while it is in that worker's cache
/// (as [`conv_fwd_then`]).
pub(crate) fn conv_bwd_data_then(
    g: &ConvGeom,
    dy: &[f32],
    w: &[f32],
    then: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    if let Some(t) = flipped_geometry(g) {
        return conv_fwd_then(&t, dy, &flip_kernel(g, w), then);
    }
    // General stride: per image and group, `dx_g = col2im(W_g^T * dy_g)`.
    let (cig, cog, kdim, hw, ohw) = (g.cig(), g.cog(), g.kdim(), g.hw(), g.ohw());
    let par = inner_parallelism(g.n);
    map_images(g.n, g.c_in * hw, g.col_len(), |i, dxi, dcol| {
        let dyi = &dy[i * g.c_out * ohw..(i + 1) * g.c_out * ohw];
        for grp in 0..g.groups {
            let lhs = Mat {
                data: &w[grp * cog * kdim..(grp + 1) * cog * kdim],
                rs: 1,
                cs: kdim,
            };
            let rhs = Mat {
                data: &dyi[grp * cog * ohw..(grp + 1) * cog * ohw],
                rs: ohw,
                cs: 1,
            };
            let dxg = &mut dxi[grp * cig * hw..(grp + 1) * cig * hw];
            if g.pointwise() {
                let dst = MatMut {
                    data: dxg,
                    rs: ohw,
                    cs: 1,
                };
                sgemm(kdim, ohw, cog, dst, false, lhs, rhs, par);
            } else {
                let dst = MatMut {
                    data: &mut *dcol,
                    rs: ohw,
                    cs: 1,
                };
                sgemm(kdim, ohw, cog, dst, false, lhs, rhs, par);
                col2im(g, dcol, dxg);
            }
        }
        then(i, dxi);
    })
}

/// `partial(0) + ... + partial(parts - 1)`, the parts computed in parallel
/// (each a worker's accumulator of `len` floats).
fn sum_parts(
    parts: usize,
    len: usize,
    partial: impl Fn(usize) -> Vec<f32> + Sync + Send,
) -> Vec<f32> {
    (0..parts)
        .into_par_iter()
        .map(partial)
        .reduce_with(|mut a, b| {
            simd::add_assign(&mut a, &b);
            a
        })
        .unwrap_or_else(|| vec![0f32; len])
}

/// The Winograd weight-gradient plan a layer takes where one applies
/// (`conv_bwd_filter` prefers it to the direct one: [`direct_filter_plan`]),
/// fed a batch of images at a time.
enum WinogradFilter {
    F4(winograd_f4::FilterPlan),
    F2(winograd::FilterPlan),
}

impl WinogradFilter {
    fn new(g: &ConvGeom) -> Option<Self> {
        winograd_f4_filter_plan(g)
            .map(Self::F4)
            .or_else(|| winograd_filter_plan(g).map(Self::F2))
    }

    /// Images per batch.
    fn batch(&self) -> usize {
        match self {
            Self::F4(p) => p.batch(),
            Self::F2(p) => p.batch(),
        }
    }

    fn lanes_len(&self) -> usize {
        match self {
            Self::F4(p) => p.lanes_len(),
            Self::F2(p) => p.lanes_len(),
        }
    }

    /// Floats of scratch per worker: the plan's, and where F(2x2, 3x3)
    /// reads its input through a map (`mapped`), a batch of the written
    /// activation.
    fn scratch_len(&self, g: &ConvGeom, mapped: bool) -> usize {
        match self {
            Self::F4(p) => p.scratch_len(),
            Self::F2(p) => p.scratch_len() + usize::from(mapped) * p.batch() * g.c_in * g.hw(),
        }
    }

    /// Adds the products of `k` images `xs` (read through `bn` where it is
    /// given) and their output gradients `dys` to `lanes`.
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        g: &ConvGeom,
        xs: &[f32],
        bn: Option<BnRelu<'_>>,
        dys: &[f32],
        k: usize,
        lanes: &mut Lanes,
        scratch: &mut [f32],
    ) {
        match (self, bn) {
            (Self::F4(p), bn) => p.accumulate(xs, bn, dys, k, lanes, scratch),
            (Self::F2(p), None) => p.accumulate(xs, dys, k, lanes, scratch),
            // F(2x2, 3x3)'s transforms do not read through the map: the
            // batch is written through it into the worker's scratch, in
            // cache, rather than the whole activation through memory.
            (Self::F2(p), Some(bn)) => {
                let (written, scratch) = scratch.split_at_mut(xs.len());
                bn.apply_into(xs, g.hw(), written);
                p.accumulate(written, dys, k, lanes, scratch);
            }
        }
    }

    /// The weight gradient of `x` (read through `bn` where it is given) and
    /// `dy`: each worker feeds its share of the images ([`split_range`]) to
    /// the plan in batches, into its own lane accumulator.
    fn weight_gradient(
        &self,
        g: &ConvGeom,
        x: &[f32],
        bn: Option<BnRelu<'_>>,
        dy: &[f32],
    ) -> Vec<f32> {
        let (hw, ohw) = (g.hw(), g.ohw());
        let parts = threads().min(g.n).max(1);
        let (batch, scratch_len) = (self.batch(), self.scratch_len(g, bn.is_some()));
        let partial = |part: usize| {
            let mut lanes = Lanes::new(self.lanes_len());
            let mut scratch = Scratch::take(scratch_len);
            let images = split_range(g.n, parts, part);
            let mut i = images.start;
            while i < images.end {
                let k = batch.min(images.end - i);
                let xs = &x[i * g.c_in * hw..(i + k) * g.c_in * hw];
                let dys = &dy[i * g.c_out * ohw..(i + k) * g.c_out * ohw];
                self.accumulate(g, xs, bn, dys, k, &mut lanes, &mut scratch);
                i += k;
            }
            lanes.into_vec()
        };
        let lanes = PartLanes::new((0..parts).into_par_iter().map(partial).collect());
        match self {
            Self::F4(p) => p.finish(&lanes),
            Self::F2(p) => p.finish(&lanes),
        }
    }
}

/// `dw = sum_n dy_n * im2col(x_n)^T`, accumulated per worker then summed.
///
/// Both factors have the reduction (`OH * OW`) contiguous, so one must be
/// repacked: the product is oriented so that it is `dy` (`C_out` rows), not
/// the im2col matrix (`C_in * K * K` rows), which means accumulating into
/// the transposed gradient `(C_in/g * K * K, C_out/g)` per group.
pub(crate) fn conv_bwd_filter(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cig, cog, kdim, hw, ohw) = (g.cig(), g.cog(), g.kdim(), g.hw(), g.ohw());
    let w_len = g.c_out * kdim;
    let parts = threads().min(g.n).max(1);
    if let Some(plan) = direct_filter_plan(g) {
        let partial = |part: usize| {
            let mut lanes = Lanes::new(plan.lanes_len());
            let mut scratch = vec![0f32; plan.scratch_len()];
            for i in split_range(g.n, parts, part) {
                let xi = &x[i * g.c_in * hw..(i + 1) * g.c_in * hw];
                let dyi = &dy[i * g.c_out * ohw..(i + 1) * g.c_out * ohw];
                plan.accumulate(xi, dyi, &mut lanes, &mut scratch);
            }
            lanes.into_vec()
        };
        let lanes = PartLanes::new((0..parts).into_par_iter().map(partial).collect());
        return plan.finish(&lanes);
    }
    if let Some(filter) = WinogradFilter::new(g) {
        return filter.weight_gradient(g, x, None, dy);
    }
    let par = if parts > 1 {
        Parallelism::None
    } else {
        inner_parallelism(g.n)
    };
    let partial = |part: usize| {
        // Per group, column-major (cog x kdim): element (co, j) at j * cog + co.
        let mut dwt = vec![0f32; w_len];
        let mut col = vec![0f32; g.col_len()];
        for i in split_range(g.n, parts, part) {
            let xi = &x[i * g.c_in * hw..(i + 1) * g.c_in * hw];
            let dyi = &dy[i * g.c_out * ohw..(i + 1) * g.c_out * ohw];
            for grp in 0..g.groups {
                let xg = &xi[grp * cig * hw..(grp + 1) * cig * hw];
                let rhs = if g.pointwise() {
                    xg
                } else {
                    im2col(g, xg, &mut col);
                    &col
                };
                sgemm(
                    cog,
                    kdim,
                    ohw,
                    MatMut {
                        data: &mut dwt[grp * cog * kdim..(grp + 1) * cog * kdim],
                        rs: 1,
                        cs: cog,
                    },
                    true,
                    Mat {
                        data: &dyi[grp * cog * ohw..(grp + 1) * cog * ohw],
                        rs: ohw,
                        cs: 1,
                    },
                    Mat {
                        data: rhs,
                        rs: 1,
                        cs: ohw,
                    },
                    par,
                );
            }
        }
        dwt
    };
    let dwt = if parts == 1 {
        partial(0)
    } else {
        sum_parts(parts, w_len, partial)
    };
    // Back to `(C_out, kdim)`, output channels in parallel (a serial
    // transpose on the calling thread was about 1 % of a ResNet-50 step).
    par_zeroed(w_len, kdim.max(1), |row, dst| {
        let (grp, co) = (row / cog, row % cog);
        let src = &dwt[grp * cog * kdim..(grp + 1) * cog * kdim];
        for (j, d) in dst.iter_mut().enumerate() {
            *d = src[j * cog + co];
        }
    })
}

/// [`conv_bwd_filter`] with the activation `max(z * scale + shift, 0)` of
/// a batch norm's input `z` ([`BnRelu`]) as the input, computed as the
/// kernel reads `z` (F(4x4, 3x3)) or a batch of images at a time into its
/// scratch (F(2x2, 3x3)); `None` where the plan this weight gradient takes
/// is neither (the caller writes the activation and takes
/// [`conv_bwd_filter`]). The same bits either way.
pub(crate) fn conv_bwd_filter_bn_relu(
    g: &ConvGeom,
    z: &[f32],
    bn: BnRelu<'_>,
    dy: &[f32],
) -> Option<Vec<f32>> {
    // Where a Winograd plan applies, `conv_bwd_filter` takes it: the
    // direct plan declines then ([`direct_filter_plan`]).
    let filter = WinogradFilter::new(g)?;
    Some(filter.weight_gradient(g, z, Some(bn), dy))
}

/// Forward convolution `(x, w) -> y` with its own backward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2dOp {
    pub params: Conv2dParams,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "lt-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.params)?;
        let x = f32_slice(s1, l1, "conv2d")?;
        let w = f32_slice(s2, l2, "conv2d")?;
        Ok((CpuStorage::F32(conv_fwd(&g, x, w)), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            let op = ConvBwdDataOp {
                params: self.params,
                x_dims: x.dims4()?,
            };
            Some(dy.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = ConvBwdFilterOp {
                params: self.params,
                w_dims: w.dims4()?,
            };
            Some(x.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Input gradient `(dy, w) -> dx`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBwdDataOp {
    pub params: Conv2dParams,
    pub x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvBwdDataOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-bwd-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let g = ConvGeom::new(&[n, c, h, w], l2.dims(), self.params)?;
        if l1.dims() != g.out_shape().dims() {
            bail!(
                "conv2d backward: gradient {:?} does not match output {:?}",
                l1.dims(),
                g.out_shape()
            );
        }
        let dy = f32_slice(s1, l1, "conv2d backward")?;
        let wt = f32_slice(s2, l2, "conv2d backward")?;
        Ok((
            CpuStorage::F32(conv_bwd_data(&g, dy, wt)),
            Shape::from(self.x_dims),
        ))
    }
}

/// Weight gradient `(x, dy) -> dw`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBwdFilterOp {
    pub params: Conv2dParams,
    pub w_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvBwdFilterOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-bwd-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (co, ci, kh, kw) = self.w_dims;
        let g = ConvGeom::new(l1.dims(), &[co, ci, kh, kw], self.params)?;
        if l2.dims() != g.out_shape().dims() {
            bail!(
                "conv2d backward: gradient {:?} does not match output {:?}",
                l2.dims(),
                g.out_shape()
            );
        }
        let x = f32_slice(s1, l1, "conv2d backward")?;
        let dy = f32_slice(s2, l2, "conv2d backward")?;
        Ok((
            CpuStorage::F32(conv_bwd_filter(&g, x, dy)),
            Shape::from(self.w_dims),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(h: usize, w: usize, k: usize, stride: usize, padding: usize) -> ConvGeom {
        let p = Conv2dParams {
            stride,
            padding,
            groups: 1,
        };
        ConvGeom::new(&[1, 2, h, w], &[3, 2, k, k], p).unwrap()
    }

    /// Stride 1, padding 1: a 3x3 convolution that keeps the map's size.
    fn same_3x3() -> Conv2dParams {
        Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        }
    }

    /// Which weight-gradient kernel a CIFAR stage-1 layer takes: Winograd,
    /// where the direct plan also applies, on AVX2 and AVX-512 alike.
    #[test]
    fn weight_gradient_prefers_winograd() {
        if !direct::available() || !winograd::enabled() {
            eprintln!("skipped: no AVX2, or Winograd switched off");
            return;
        }
        let g = ConvGeom::new(&[8, 16, 32, 32], &[16, 16, 3, 3], same_3x3()).unwrap();
        assert!(winograd_filter_plan(&g).is_some());
        assert!(direct_filter_plan(&g).is_none());
    }

    /// A convolution and a weight gradient that read their input through a
    /// batch norm's map and ReLU ([`BnRelu`]) give the bits of the same
    /// kernels on the activation written first: F(4x4, 3x3) reading
    /// through the map (32x32 maps, and 8x8 ones four images per call, the
    /// last call short), F(2x2, 3x3)'s weight gradient a batch at a time
    /// (8x8, 4x4), and maps neither takes (`None`, the caller writes the
    /// activation: 4x4 forward, 7x7).
    /// Negative scales and shifts, so that the ReLU cuts.
    #[test]
    fn reading_through_a_batch_norm_gives_the_bits_of_the_written_activation() {
        if !direct::available() || !winograd::enabled() || !winograd_f4::enabled() {
            eprintln!("skipped: no AVX2, or Winograd switched off");
            return;
        }
        let p = same_3x3();
        // (n, c, h, w, forward read through the map, weight gradient)
        for (n, c, h, w, fwd, filter) in [
            (3, 16, 32, 32, true, true),
            (6, 16, 8, 8, true, true),
            (2, 8, 4, 4, false, true),
            (2, 8, 7, 7, false, false),
        ] {
            let g = ConvGeom::new(&[n, c, h, w], &[c, c, 3, 3], p).unwrap();
            let wave = |len: usize, k: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * k % 211) as f32) / 70.0 - 1.5)
                    .collect()
            };
            let z = wave(n * c * h * w, 37);
            let wt = wave(c * c * 9, 53);
            let dy = wave(n * c * h * w, 71);
            let (scale, shift) = (wave(c, 29), wave(c, 83));
            let bn = BnRelu {
                scale: &scale,
                shift: &shift,
            };
            let y = bn.apply(&z, h * w);
            assert!(y.iter().filter(|&&v| v == 0.0).count() > y.len() / 10);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let fused = conv_fwd_bn_relu_then(&g, &z, bn, &wt, |_, _| {});
            assert_eq!(fused.is_some(), fwd, "{:?}: forward", (n, c, h, w));
            if let Some(fused) = fused {
                assert_eq!(
                    bits(&fused),
                    bits(&conv_fwd(&g, &y, &wt)),
                    "{:?}",
                    (n, c, h)
                );
            }
            let fused = conv_bwd_filter_bn_relu(&g, &z, bn, &dy);
            assert_eq!(fused.is_some(), filter, "{:?}: filter", (n, c, h, w));
            if let Some(fused) = fused {
                let want = conv_bwd_filter(&g, &y, &dy);
                assert_eq!(bits(&fused), bits(&want), "{:?}: filter", (n, c, h));
            }
        }
    }

    /// `<im2col(x), c> == <x, col2im(c)>` for all x, c: col2im is the adjoint.
    #[test]
    fn col2im_is_adjoint_of_im2col() {
        for (h, w, k, s, p) in [
            (5, 7, 3, 1, 1),
            (6, 5, 3, 2, 1),
            (9, 9, 7, 2, 3),
            (4, 4, 1, 2, 0),
            (3, 3, 3, 3, 0),
        ] {
            let g = geom(h, w, k, s, p);
            let x: Vec<f32> = (0..2 * h * w)
                .map(|i| ((i * 7 % 13) as f32) - 6.0)
                .collect();
            let c: Vec<f32> = (0..g.kdim() * g.ohw())
                .map(|i| ((i * 5 % 11) as f32) - 5.0)
                .collect();
            let mut col = vec![0f32; c.len()];
            im2col(&g, &x, &mut col);
            let mut dx = vec![0f32; x.len()];
            col2im(&g, &c, &mut dx);
            let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "shape {h}x{w} k{k} s{s} p{p}");
        }
    }

    #[test]
    fn same_width_im2col_matches_row_by_row() {
        for (h, w, k, p) in [
            (5, 7, 3, 1),
            (8, 8, 3, 1),
            (9, 6, 7, 3),
            (4, 4, 5, 2),
            (3, 3, 1, 0),
            // Kernels larger than the image.
            (1, 1, 3, 1),
            (2, 2, 5, 2),
            (1, 3, 3, 1),
            (2, 1, 7, 3),
        ] {
            let g = geom(h, w, k, 1, p);
            assert_eq!(g.ow, w);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            let mut fast = vec![f32::NAN; g.kdim() * g.ohw()];
            let mut slow = vec![f32::NAN; g.kdim() * g.ohw()];
            im2col_same(&g, &x, &mut fast);
            im2col_rows(&g, &x, &mut slow);
            assert_eq!(fast, slow, "shape {h}x{w} k{k} p{p}");
        }
    }

    /// Strided geometries of every kind the backbones have (3x3 s2 p1, the
    /// 7x7 s2 p3 stem, 1x1 s2 projections) and odd ones (odd widths, stride
    /// 3, kernels larger than the image).
    const STRIDED: [(usize, usize, usize, usize, usize); 9] = [
        (8, 8, 3, 2, 1),
        (7, 9, 3, 2, 1),
        (9, 9, 7, 2, 3),
        (4, 6, 1, 2, 0),
        (5, 5, 1, 2, 0),
        (7, 8, 3, 3, 1),
        (10, 11, 5, 3, 2),
        (2, 3, 5, 2, 2),
        (1, 1, 3, 2, 1),
    ];

    #[test]
    fn strided_im2col_matches_row_by_row() {
        for (h, w, k, s, p) in STRIDED {
            let g = geom(h, w, k, s, p);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            let mut fast = vec![f32::NAN; g.kdim() * g.ohw()];
            let mut slow = vec![f32::NAN; g.kdim() * g.ohw()];
            im2col_strided(&g, &x, &mut fast);
            im2col_rows(&g, &x, &mut slow);
            assert_eq!(fast, slow, "shape {h}x{w} k{k} s{s} p{p}");
        }
    }

    /// The strided col2im adds each element's terms in the order of the
    /// plain scatter (by tap row, then tap column), so the sums agree to
    /// the bit, not only to rounding.
    #[test]
    fn strided_col2im_matches_the_plain_scatter_bit_for_bit() {
        for (h, w, k, s, p) in STRIDED {
            let g = geom(h, w, k, s, p);
            let c: Vec<f32> = (0..g.kdim() * g.ohw())
                .map(|i| ((i * 7919 % 2003) as f32 / 1001.5 - 1.0) * 1e-3f32.powi((i % 3) as i32))
                .collect();
            let start: Vec<f32> = (0..2 * h * w).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut want = start.clone();
            for ci in 0..g.cig() {
                for ki in 0..k {
                    for kj in 0..k {
                        let row = (ci * k + ki) * k + kj;
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let (iy, ix) = (oy * s + ki, ox * s + kj);
                                if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                    continue;
                                }
                                want[ci * h * w + (iy - p) * w + ix - p] +=
                                    c[row * g.ohw() + oy * g.ow + ox];
                            }
                        }
                    }
                }
            }
            let mut got = start.clone();
            col2im(&g, &c, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "shape {h}x{w} k{k} s{s} p{p}");
        }
    }

    #[test]
    fn geometry_rejects_mismatched_groups() {
        let p = Conv2dParams {
            stride: 1,
            padding: 0,
            groups: 3,
        };
        assert!(ConvGeom::new(&[1, 4, 5, 5], &[6, 1, 3, 3], p).is_err());
        let p = Conv2dParams {
            stride: 1,
            padding: 0,
            groups: 1,
        };
        assert!(ConvGeom::new(&[1, 4, 2, 2], &[6, 4, 3, 3], p).is_err());
    }
}
