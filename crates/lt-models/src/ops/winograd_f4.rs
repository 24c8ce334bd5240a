//! Winograd F(4x4, 3x3) for 3x3, stride-1, padding-1 convolutions: the
//! forward pass (and, through the flipped kernel, the input gradient) on
//! maps with heights a multiple of 4 and widths a multiple of 8 ([`Plan`]),
//! and the weight gradient on maps of 16x16 and more ([`FilterPlan`]). 36
//! products per 4x4 block of outputs instead of F(2x2, 3x3)'s 16 per 2x2
//! ([`super::winograd`]): 44 % fewer multiply-adds on the register tile,
//! and 44 % fewer transformed values to write, read and transform back.
//!
//! Each 4x4 block of outputs ("tile") is `Y = A^T [U ⊙ V] A` with
//! `V = B^T d B` the transformed 6x6 input patch under it and `U = G g G^T`
//! the transformed kernel, at the interpolation points 0, ±1, ±2 and ∞
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016):
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6]         [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6]         [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24 1/12  1/6]         [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12 1/6]
//!       [0  4  0 -5 0 1]       [ 0     0    1]
//! ```
//!
//! The larger coefficients cost accuracy: outputs agree with the direct
//! convolution to a few 1e-6 relative (F(2x2, 3x3): about 1e-6), which
//! the gradient checks and a training run's accuracy do not notice (see
//! the README's performance section). The products run on the same
//! register tiles as F(2x2, 3x3)'s; the transforms work on 8 tiles at a
//! time in AVX2 registers (on AVX-512 CPUs too), the column phases of
//! the tiles split and merged by lane shuffles.
//!
//! An 8x8 map has 4 tiles: the forward plan lays 4 images side by side
//! on one row of the transformed operands, so that the register tile's
//! 16 lanes hold real tiles (36 x 16 products per 4 images against
//! F(2x2, 3x3)'s 16 x 16 per image). The weight gradient lays whole
//! images of 16 lanes each side by side (as F(2x2, 3x3)'s does), so it
//! leaves 8x8 maps to F(2x2, 3x3), and layers of more than
//! [`MAX_FILTER_PAIRS`] channel pairs too. [`set_enabled`] switches both
//! plans off, for a reproduction of results made before they existed.

use super::batch_norm::BnRelu;
use super::conv::ConvGeom;
use super::cpu::{par_written_init, write_floats};
use super::direct::{self, LANES, MR, V};
use super::lanes::{Lanes, PartLanes};
use super::winograd::{
    self, block_products, Operands, ProductRows, Rows, Transformed, MIN_FILTER_ROW, ROW_PAD,
};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Transformed positions per tile (6 x 6).
const XI: usize = 36;

/// Process-wide switch: on unless [`set_enabled`] turned it off.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the F(4x4, 3x3) plans on (the default) or off for the whole
/// process. Off, the convolutions they take go to F(2x2, 3x3) (or the
/// direct kernel) as before they existed, so a run reproduces results
/// made before them bit for bit (`model.winograd_f4 = false` in a
/// config).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the F(4x4, 3x3) plan is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `G`: the kernel transform `U = G g G^T` ([`transform_block`]) and the
/// weight gradient's `dg = G^T dU G` ([`gradient_lanes`]), in double
/// precision, by products with its rows (a division per coefficient made
/// the transform of a 64 x 64 kernel take half a millisecond).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Kernels transformed ([`transform_block`]: output channels) or folded
/// ([`fold_channel`]: input channels) together: one 256-bit vector of
/// doubles.
const KERNEL_LANES: usize = 4;

/// One block of 8 output channels' kernels `w` `(8, C_in, 3, 3)`
/// transformed into `dst` `[ξ][C_in][8]`: `U = G g G^T` in double
/// precision, rounded to `f32`, [`KERNEL_LANES`] output channels at a time
/// (contiguous in `dst`) in vectors of doubles, products and sums apart
/// (no fused multiply-add) and in the order of `G`'s rows, so that each
/// lane is rounded as the kernel alone in scalar code.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`direct::available`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn transform_block(w: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let cin = w.len() / (9 * MR);
    assert!(
        w.len() == MR * cin * 9 && dst.len() == XI * cin * MR,
        "winograd F(4x4, 3x3): bad kernel block"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 under the caller's contract; the loads are inside
        // `w` and the stores inside `dst` (asserted lengths).
        unsafe {
            let (add, mul) = (|a, b| _mm256_add_pd(a, b), |a, b| _mm256_mul_pd(a, b));
            let gv = G.map(|r| r.map(|c| _mm256_set1_pd(c)));
            let combine = |t: [__m256d; 3]| -> [__m256d; 6] {
                gv.map(|r| add(add(mul(r[0], t[0]), mul(r[1], t[1])), mul(r[2], t[2])))
            };
            let dp = dst.as_mut_ptr().cast::<f32>();
            for ci in 0..cin {
                for r0 in (0..MR).step_by(KERNEL_LANES) {
                    let tap = |q: usize, t: usize| f64::from(w[((r0 + q) * cin + ci) * 9 + t]);
                    let k: [__m256d; 9] = std::array::from_fn(|t| {
                        _mm256_set_pd(tap(3, t), tap(2, t), tap(1, t), tap(0, t))
                    });
                    // tmp = G g (6 x 3): column l of a kernel is taps l,
                    // 3 + l and 6 + l.
                    let cols: [[__m256d; 6]; 3] =
                        std::array::from_fn(|l| combine([k[l], k[3 + l], k[6 + l]]));
                    // Row i of U = tmp G^T, from row i of tmp.
                    let tmp: [[__m256d; 3]; 6] = std::array::from_fn(|i| cols.map(|c| c[i]));
                    for (i, t) in tmp.into_iter().enumerate() {
                        for (j, v) in combine(t).into_iter().enumerate() {
                            _mm_storeu_ps(
                                dp.add(((6 * i + j) * cin + ci) * MR + r0),
                                _mm256_cvtpd_ps(v),
                            );
                        }
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, dst);
        unreachable!("winograd convolution needs AVX2")
    }
}

/// The transformed kernel `[ξ][block of 8 output channels][C_in][8]` of
/// weights `w` `(C_out, C_in, 3, 3)` (`C_out = blocks * 8`).
///
/// Two passes, each in parallel: blocks of output channels (the
/// transform, into `[block][ξ][C_in][8]`), then positions (each block's
/// `C_in x 8` values copied into place). In the training step this runs
/// twice per layer and step (forward and input gradient); done kernel by
/// kernel in scalar code, the second pass reading a `[C_out][C_in][ξ]`
/// buffer 36 floats apart, it took 3 % of a CIFAR ResNet-32 step.
fn transform_kernel(w: &[f32], cout: usize, cin: usize, blocks: usize) -> Vec<f32> {
    let per_block = (XI * cin * MR).max(1);
    // SAFETY: each chunk is one block's `XI x C_in x 8` values, every one
    // written by `transform_block`; AVX2 and FMA: F(4x4, 3x3) plans are
    // only made where they were detected ([`Tiles::new`]).
    let by_block = unsafe {
        par_written_init(
            blocks * per_block,
            per_block,
            || (),
            |_, blk, dst| {
                transform_block(&w[blk * MR * cin * 9..][..MR * cin * 9], dst);
            },
        )
    };
    let chunk = (blocks * cin * MR).max(1);
    // SAFETY: each chunk is one position's `C_out x C_in` values (`C_out
    // = blocks * MR`), every one written below.
    unsafe {
        par_written_init(
            XI * cout * cin,
            chunk,
            || (),
            |_, xi, dst| {
                for (blk, dst) in dst.chunks_exact_mut(cin * MR).enumerate() {
                    let src = &by_block[blk * per_block + xi * cin * MR..][..cin * MR];
                    write_floats(dst, src);
                }
            },
        )
    }
}

/// The tiling of one convolution's images, shared by the forward pass
/// ([`Plan`]) and the weight gradient ([`FilterPlan`]), with the
/// transforms between images and tiles.
#[derive(Debug)]
struct Tiles {
    g: ConvGeom,
    /// Tile rows per image, and tiles per image.
    th: usize,
    tiles: usize,
    /// Images whose tiles lie side by side on one row of the transformed
    /// operands (image after image), so that small maps fill the register
    /// tile's 16 lanes: 4 images of 8x8 (4 tiles each).
    images: usize,
    /// Tiles of `images` images rounded up to whole register-tile lanes.
    tp: usize,
    /// Per tile: 0 for the first (`not_first`) or last (`not_last`) of its
    /// tile row, whose neighbour in the column pass is the zero padding.
    not_first: Vec<f32>,
    not_last: Vec<f32>,
    /// Per pair of tiles `2p, 2p + 1` of the row (one tile row of one
    /// image, `TW` being even): where its first output row starts in the
    /// images' outputs, channel 0 (`b C_out H W + 4 ty W + 4 tx`); the
    /// output transform's stores would otherwise divide four times per
    /// pair.
    pair_at: Vec<usize>,
}

impl Tiles {
    /// The tiling of `g` with `images` images per row (`None`: as many as
    /// fill 16 lanes), or `None` where F(4x4, 3x3) does not apply: switched
    /// off (this path or Winograd as a whole), a CPU without AVX2 and FMA,
    /// another geometry, heights not a multiple of 4 or widths not a
    /// multiple of 8, or where F(2x2, 3x3) computes fewer products per
    /// image (one 8x8 map per row: 36 x 16 lanes for 4 tiles, against
    /// 16 x 16 for F(2x2, 3x3)'s 16 tiles).
    fn new(g: &ConvGeom, images: Option<usize>) -> Option<Self> {
        let applies = g.kh == 3
            && g.kw == 3
            && g.stride == 1
            && g.pad == 1
            && g.groups == 1
            && g.c_out.is_multiple_of(MR)
            && g.oh == g.h
            && g.ow == g.w
            // Whole tiles, and an even number per tile row (the output
            // transform stores two tiles at a time).
            && g.h.is_multiple_of(4)
            && g.w.is_multiple_of(8);
        if !applies || !enabled() || !winograd::enabled() || !direct::available() {
            return None;
        }
        let (th, tw) = (g.h / 4, g.w / 4);
        let tiles = th * tw;
        let images = images.unwrap_or(LANES.div_ceil(tiles)).max(1);
        let tp = (images * tiles).div_ceil(LANES) * LANES;
        // Register-tile columns per image and channel pair against
        // F(2x2, 3x3)'s (which lays one image per row).
        let tp2 = (4 * tiles).div_ceil(LANES) * LANES;
        if XI * tp >= 16 * tp2 * images {
            return None;
        }
        let edge = |at: usize| (0..tp).map(|t| f32::from(u8::from(t % tw != at))).collect();
        let pair_at = (0..images * tiles / 2)
            .map(|p| {
                let (b, t) = (2 * p / tiles, 2 * p % tiles);
                b * g.c_out * g.h * g.w + 4 * (t / tw) * g.w + 4 * (t % tw)
            })
            .collect();
        Some(Self {
            g: *g,
            th,
            tiles,
            images,
            tp,
            not_first: edge(0),
            not_last: edge(tw - 1),
            pair_at,
        })
    }

    /// Floats of band scratch the transforms need: the input transform's
    /// six planes of `4 tp` floats and a zero row of `W` (the gradient
    /// transform's planes and the output transform's 24 rows of `tp` fit
    /// in the planes).
    fn band_len(&self) -> usize {
        6 * 4 * self.tp + self.g.w
    }

    /// `V[ξ][c][col0 + t] = (B^T d B)[ξ]` for every channel `c` and tile
    /// `t` of `images` (at most the plan's) images `x` `(images, C_in, H,
    /// W)` (read through `bn`'s affine map and a ReLU where it is given:
    /// [`BnRelu`]), image after image
    /// (`tp` of them; finite values past the images', whose products no
    /// output reads), at `at` ([`Rows`]).
    ///
    /// Per channel: the row pass combines the six input rows under each
    /// tile row into six `(H/4, W)` planes (whole rows, contiguous); the
    /// column pass takes each plane 8 tiles (32 floats) at a time, splits
    /// them into their four column phases in registers (with `W = 4 TW`
    /// the plane is in tile order), and takes the neighbouring tiles'
    /// columns from the chunks before and after by a lane rotation (masked
    /// at the image's edge).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_input(
        &self,
        x: &[f32],
        bn: Option<BnRelu<'_>>,
        images: usize,
        v: &mut [f32],
        band: &mut [f32],
        at: Rows,
    ) {
        // SAFETY: forwarded, the caller's contract.
        unsafe {
            match bn {
                None => self.transform_input_as::<false>(x, BnRelu::NONE, images, v, band, at),
                Some(bn) => self.transform_input_as::<true>(x, bn, images, v, band, at),
            }
        }
    }

    /// [`Tiles::transform_input`], the input read through `bn` where
    /// `MAPPED` (`bn` is not read otherwise): a compile-time switch, so
    /// that the plain transform keeps its loop as it was.
    ///
    /// # Safety
    /// As for [`Tiles::transform_input`].
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_input_as<const MAPPED: bool>(
        &self,
        x: &[f32],
        bn: BnRelu<'_>,
        images: usize,
        v: &mut [f32],
        band: &mut [f32],
        at: Rows,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use avx2::*;
            use std::arch::x86_64::*;
            let g = &self.g;
            let (h, w, th, tp) = (g.h, g.w, self.th, self.tp);
            // Planes of `4 tp` floats: whole chunks of 8 tiles, zeros past
            // the image's tiles; then one zero row.
            let pl = 4 * tp;
            let (comb, zero) = band[..6 * pl + w].split_at_mut(6 * pl);
            comb.fill(0.0);
            zero.fill(0.0);
            let (cp, zp) = (comb.as_mut_ptr(), zero.as_ptr());
            let (first, last) = (self.not_first.as_ptr(), self.not_last.as_ptr());
            assert!(
                images <= self.images
                    && x.len() >= images * g.c_in * h * w
                    && at.at(XI - 1, g.c_in - 1) + tp <= v.len()
                    && (!MAPPED || bn.scale.len() == g.c_in && bn.shift.len() == g.c_in),
                "winograd F(4x4, 3x3): bad input transform"
            );
            let vp = v.as_mut_ptr();
            // SAFETY: AVX2 and FMA under the caller's contract. Reads: input
            // rows inside `x` (asserted), the zero row, and chunks of the
            // planes (`4 tp` floats each, `32 k + 32 <= 4 tp`); the masks
            // hold `tp` floats. Writes: plane rows (`(b th + ty) w + w <=
            // 4 tp`) and
            // rows of `v` (`tp` floats from `at.at(6i + j, c)`, inside `v`
            // as asserted for the last).
            unsafe {
                for c in 0..g.c_in {
                    // The batch norm's map of this channel, where the input
                    // is read through one: `max(x * scale + shift, 0)`,
                    // rounded after the product and after the sum as
                    // [`super::simd::affine_plane`] rounds it.
                    let zero = _mm256_setzero_ps();
                    let (scale, shift) = if MAPPED {
                        (_mm256_set1_ps(bn.scale[c]), _mm256_set1_ps(bn.shift[c]))
                    } else {
                        (zero, zero)
                    };
                    // Row pass: padded rows 4ty .. 4ty+5 are input rows 4ty-1
                    // .. 4ty+4 (zeros outside the image); the planes hold
                    // the images' tile rows one after the other.
                    for bt in 0..images * th {
                        let (b, ty) = (bt / th, bt % th);
                        let xc = x.as_ptr().add((b * g.c_in + c) * h * w);
                        // The next channel's rows 4ty .. 4ty+3 (the next
                        // image's, after the last channel; an address past
                        // `x` is harmless to a prefetch): the rows of a
                        // plane are read once and not far apart, and
                        // waiting for them was a third of this transform.
                        prefetch_rows(xc.wrapping_add(h * w + 4 * ty * w), 4 * w);
                        let inside = |k: usize| {
                            let r = (4 * ty + k) as isize - 1;
                            (0..h as isize).contains(&r).then_some(r as usize)
                        };
                        let d: [*const f32; 6] = std::array::from_fn(|k| match inside(k) {
                            Some(r) => xc.add(r * w),
                            None => zp,
                        });
                        // The padding stays zero under the map: its rows
                        // take no shift (`max(0 * scale + 0, 0) = +0`, the
                        // plain transform's zero).
                        let shifts: [__m256; 6] =
                            std::array::from_fn(|k| if inside(k).is_some() { shift } else { zero });
                        let o = cp.add((b * th + ty) * w);
                        let mut col = 0;
                        while col < w {
                            let e = input_combination8(std::array::from_fn(|k| {
                                let x = _mm256_loadu_ps(d[k].add(col));
                                if MAPPED {
                                    let y = _mm256_add_ps(_mm256_mul_ps(x, scale), shifts[k]);
                                    _mm256_max_ps(y, zero)
                                } else {
                                    x
                                }
                            }));
                            for (i, e) in e.into_iter().enumerate() {
                                _mm256_storeu_ps(o.add(i * pl + col), e);
                            }
                            col += 8;
                        }
                    }
                    // Column pass: padded columns 4tx .. 4tx+5 are input
                    // columns 4tx-1 .. 4tx+4: phase 3 of tile tx - 1, phases 0
                    // to 3 of tile tx, phase 0 of tile tx + 1.
                    let chunks = tp / 8;
                    for i in 0..6 {
                        let plane = cp.add(i * pl);
                        let load = |k: usize| -> [__m256; 4] {
                            if k < chunks {
                                phases4(std::array::from_fn(|j| {
                                    _mm256_loadu_ps(plane.add(32 * k + 8 * j))
                                }))
                            } else {
                                [_mm256_setzero_ps(); 4]
                            }
                        };
                        let mut cur = load(0);
                        // Phase 3 rotated up one lane: lane 0 holds the tile
                        // before the chunk's last.
                        let mut prev3 = _mm256_setzero_ps();
                        for k in 0..chunks {
                            let next = load(k + 1);
                            let rot3 = rotate_up(cur[3]);
                            let d0 = _mm256_blend_ps::<1>(rot3, prev3);
                            let d5 =
                                _mm256_blend_ps::<0x80>(rotate_down(cur[0]), rotate_down(next[0]));
                            let t = 8 * k;
                            let e = input_combination8([
                                _mm256_mul_ps(d0, _mm256_loadu_ps(first.add(t))),
                                cur[0],
                                cur[1],
                                cur[2],
                                cur[3],
                                _mm256_mul_ps(d5, _mm256_loadu_ps(last.add(t))),
                            ]);
                            for (j, e) in e.into_iter().enumerate() {
                                _mm256_storeu_ps(vp.add(at.at(6 * i + j, c) + t), e);
                            }
                            prev3 = rot3;
                            cur = next;
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, bn, v, band, at);
            unreachable!("winograd convolution needs AVX2")
        }
    }

    /// `y = A^T M A` per tile for block `blk` of 8 output channels of
    /// `images` images; `m` is `[8][ξ]` rows of `tp` products `ms` apart,
    /// `y` the images' `(images, C_out, H, W)` outputs, of which the
    /// block's are written. The row pass is element-wise over rows of
    /// tiles; the column pass gives the four outputs of 8 tiles in one
    /// output row, which are interleaved in registers and stored two tiles
    /// (8 floats, one tile row since `TW` is even) at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_output(
        &self,
        m: &[f32],
        ms: usize,
        y: &mut [MaybeUninit<f32>],
        images: usize,
        blk: usize,
        band: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use avx2::*;
            use std::arch::x86_64::*;
            let g = &self.g;
            let (tp, tiles, hw, w) = (self.tp, self.tiles, g.h * g.w, g.w);
            let all = images * tiles;
            assert!(
                images <= self.images
                    && (blk + 1) * MR <= g.c_out
                    && m.len() >= (XI * MR - 1) * ms + tp
                    && y.len() >= images * g.c_out * hw,
                "winograd F(4x4, 3x3): bad output transform"
            );
            let s = band[..24 * tp].as_mut_ptr();
            let mp = m.as_ptr();
            // SAFETY: AVX2 and FMA under the caller's contract. Reads: rows
            // of `m` (`tp` floats from `(r XI + xi) ms`, inside `m` as
            // asserted) and of `s` (`24 tp` floats). Writes: `s`, and two
            // tiles of output row `4ty + a < H` at column `4 tx + 8 <= W` of
            // channel `blk MR + r < C_out` of image `b < images`.
            unsafe {
                for r in 0..MR {
                    // Row pass: s[a][j] = (A^T m[.][j])[a].
                    for j in 0..6 {
                        let mut t = 0;
                        while t < tp {
                            let a = output_combination8(std::array::from_fn(|i| {
                                _mm256_loadu_ps(mp.add((r * XI + 6 * i + j) * ms + t))
                            }));
                            for (k, a) in a.into_iter().enumerate() {
                                _mm256_storeu_ps(s.add((6 * k + j) * tp + t), a);
                            }
                            t += 8;
                        }
                    }
                    let yp = y.as_mut_ptr().cast::<f32>();
                    let channel = (blk * MR + r) * hw;
                    // Column pass, output row 4ty + a of 8 tiles at a time.
                    for a in 0..4 {
                        let mut t = 0;
                        while t < all {
                            let b = output_combination8(std::array::from_fn(|j| {
                                _mm256_loadu_ps(s.add((6 * a + j) * tp + t))
                            }));
                            for (k, pair) in interleave4(b).into_iter().enumerate() {
                                let t2 = t + 2 * k;
                                if t2 < all {
                                    let at = self.pair_at[t2 / 2] + channel + a * w;
                                    _mm256_storeu_ps(yp.add(at), pair);
                                }
                            }
                            t += 8;
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (m, ms, y, images, blk, band);
            unreachable!("winograd convolution needs AVX2")
        }
    }

    /// `D[ξ][co][col0 + t] = (A dY A^T)[ξ]` for every output channel `co`
    /// and tile `t` of one image's output gradient `dy` `(C_out, H, W)`
    /// (`tp` of them, zeros past the image's), at `at` ([`Rows`]), with
    /// `A` the transpose of the `A^T` above: the gradient with respect to
    /// the products `M`, since `Y = A^T M A`. The row pass combines the
    /// four output rows of each tile row into six planes; the column pass
    /// combines each plane's four column phases (the tiles of the output
    /// do not overlap: no neighbours).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_grad(&self, dy: &[f32], d: &mut [f32], band: &mut [f32], at: Rows) {
        #[cfg(target_arch = "x86_64")]
        {
            use avx2::*;
            use std::arch::x86_64::*;
            let g = &self.g;
            let (h, w, th, tp) = (g.h, g.w, self.th, self.tp);
            // Planes of `4 tp` floats, zeros past the image's tiles.
            let pl = 4 * tp;
            let comb = &mut band[..6 * pl];
            comb.fill(0.0);
            let cp = comb.as_mut_ptr();
            assert!(
                dy.len() >= g.c_out * h * w && at.at(XI - 1, g.c_out - 1) + tp <= d.len(),
                "winograd F(4x4, 3x3): bad gradient transform"
            );
            let dp = d.as_mut_ptr();
            // SAFETY: AVX2 and FMA under the caller's contract. Reads: rows
            // of `dy` (asserted) and chunks of the planes (`32 k + 32 <=
            // 4 tp`). Writes: plane rows (`ty w + w <= 4 tp`) and rows of
            // `d` (`tp` floats from `at.at(6i + j, co)`, inside `d` as
            // asserted for the last).
            unsafe {
                for co in 0..g.c_out {
                    let yc = dy.as_ptr().add(co * h * w);
                    for ty in 0..th {
                        // As in `transform_input`.
                        prefetch_rows(yc.wrapping_add(h * w + 4 * ty * w), 4 * w);
                        let o = cp.add(ty * w);
                        let mut col = 0;
                        while col < w {
                            let e = grad_combination8(std::array::from_fn(|k| {
                                _mm256_loadu_ps(yc.add((4 * ty + k) * w + col))
                            }));
                            for (i, e) in e.into_iter().enumerate() {
                                _mm256_storeu_ps(o.add(i * pl + col), e);
                            }
                            col += 8;
                        }
                    }
                    for i in 0..6 {
                        let plane = cp.add(i * pl);
                        for k in 0..tp / 8 {
                            let p = phases4(std::array::from_fn(|j| {
                                _mm256_loadu_ps(plane.add(32 * k + 8 * j))
                            }));
                            for (j, e) in grad_combination8(p).into_iter().enumerate() {
                                _mm256_storeu_ps(dp.add(at.at(6 * i + j, co) + 8 * k), e);
                            }
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (dy, d, band, at);
            unreachable!("winograd convolution needs AVX2")
        }
    }
}

/// Largest transformed input per image (`36 x C_in x tiles` floats) the
/// forward plan takes: the same 512 KiB of L2 cache as F(2x2, 3x3)'s
/// limit, and the same exception for maps of many tiles
/// ([`winograd::takes_large_map`]: ResNet-50's 56x56 layers).
pub(super) const MAX_TRANSFORMED_INPUT: usize = 16 * 8192;

/// Everything about one convolution's forward pass that does not depend
/// on the image.
#[derive(Debug)]
pub(crate) struct Plan {
    t: Tiles,
    /// Row stride of the transformed input and the products: `tp` plus
    /// [`ROW_PAD`].
    rs: usize,
    /// Transformed kernel, `[ξ][block of 8 output channels][c_in][8]`.
    u: Vec<f32>,
    /// Row offsets of the transformed input's channels, `c * rs`.
    offs: Vec<u32>,
    /// Positions per pass of [`winograd::grouped_products`] where the
    /// transformed input exceeds [`MAX_TRANSFORMED_INPUT`]; `None`: block
    /// by block.
    group: Option<usize>,
}

impl Plan {
    /// A plan for `g` with weights `w` `(C_out, C_in, 3, 3)`, or `None`
    /// where it does not apply ([`Tiles::new`], or a transformed input too
    /// large for the L2 cache on a map of few tiles:
    /// [`winograd::takes_large_map`]).
    pub fn new(g: &ConvGeom, w: &[f32]) -> Option<Self> {
        let t = Tiles::new(g, None)?;
        if XI * g.c_in * t.tp > MAX_TRANSFORMED_INPUT && !winograd::takes_large_map(t.tp) {
            return None;
        }
        let rs = t.tp + ROW_PAD;
        if XI * Rows::padded_block(g.c_in, rs) >= u32::MAX as usize {
            return None;
        }
        let (cin, blocks) = (g.c_in, g.c_out / MR);
        let u = transform_kernel(w, g.c_out, cin, blocks);
        let offs = (0..cin).map(|c| (c * rs) as u32).collect();
        let group = (XI * g.c_in * t.tp > MAX_TRANSFORMED_INPUT)
            .then(|| winograd::position_group(cin, rs, XI));
        Some(Self {
            t,
            rs,
            u,
            offs,
            group,
        })
    }

    /// Floats between the transformed input's blocks of ξ.
    fn v_block(&self) -> usize {
        Rows::padded_block(self.t.g.c_in, self.rs)
    }

    /// Images per call of [`Plan::run`] (more than one for maps under
    /// 16x16).
    pub fn images(&self) -> usize {
        self.t.images
    }

    /// Floats of scratch per call: the transformed input, the products of
    /// one block of output channels (of all of them with a position
    /// group), and the transforms' planes.
    pub fn scratch_len(&self) -> usize {
        XI * self.v_block() + XI * self.product_rows() * self.t.tp + self.t.band_len()
    }

    fn product_rows(&self) -> usize {
        winograd::product_rows(self.group, self.t.g.c_out)
    }

    /// Convolves `k` images (at most [`Plan::images`]): `x` `(k, C_in, H,
    /// W)`, read through `bn` where it is given ([`BnRelu`]), into `y` `(k,
    /// C_out, H, W)`, every element of which is written; `scratch` may
    /// hold anything.
    pub fn run(
        &self,
        x: &[f32],
        bn: Option<BnRelu<'_>>,
        y: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let g = &self.t.g;
        let (cin, hw, tp, rs) = (g.c_in, g.h * g.w, self.t.tp, self.rs);
        assert!(
            scratch.len() >= self.scratch_len(),
            "winograd F(4x4, 3x3): scratch too small"
        );
        let k = x.len() / (cin * hw).max(1);
        assert!(
            k >= 1 && k <= self.t.images && x.len() == k * cin * hw && y.len() == k * g.c_out * hw,
            "winograd F(4x4, 3x3): bad images"
        );
        let vb = self.v_block();
        let (v, rest) = scratch.split_at_mut(XI * vb);
        // Unpadded product rows, as in [`winograd::Plan::run`]: with the
        // padding, a block's products at 16 tiles per row (36 x 8 rows)
        // took 36 KiB, more than the L1 cache.
        let (m, band) = rest.split_at_mut(XI * self.product_rows() * tp);
        let at = Rows {
            block: vb,
            row: rs,
            col0: 0,
        };
        // SAFETY: AVX2 and FMA were detected when the plan was made.
        unsafe { self.t.transform_input(x, bn, k, v, band, at) };
        let blocks = g.c_out / MR;
        // Each output channel's 36 rows together: the output transform
        // reads rows `6 i + j` of one channel, which at `(ξ MR + r) tp`
        // were 48 rows apart (12 KiB at 64 tiles per row: the same L1
        // cache set).
        let rows = ProductRows {
            position: tp,
            row: XI * tp,
        };
        if let Some(group) = self.group {
            let per_block = XI * MR * tp;
            let t = Operands {
                v,
                vb,
                rs,
                tp,
                offs: &self.offs,
            };
            winograd::grouped_products(XI, group, t, &self.u, blocks, m, per_block, rows);
            for (blk, m) in m.chunks_exact(per_block).enumerate() {
                // SAFETY: AVX2 and FMA were detected when the plan was made.
                unsafe { self.t.transform_output(m, tp, y, k, blk, band) };
            }
            return;
        }
        for blk in 0..blocks {
            block_products(
                XI,
                Operands {
                    v,
                    vb,
                    rs,
                    tp,
                    offs: &self.offs,
                },
                &self.u[blk * cin * MR..],
                blocks * cin * MR,
                m,
                rows,
            );
            // SAFETY: AVX2 and FMA were detected when the plan was made.
            unsafe { self.t.transform_output(m, tp, y, k, blk, band) };
        }
    }
}

/// Largest `C_in x C_out` of the weight gradient: its lane accumulator
/// holds `36 x 16` floats per pair (2.25 MiB at 32 x 32); wider layers
/// take F(2x2, 3x3).
const MAX_FILTER_PAIRS: usize = 32 * 32;

/// Weight gradient by F(4x4, 3x3): `dL/dU[ξ][co][ci] = sum over tiles of
/// D[ξ][co][t] V[ξ][ci][t]` (`D = A dY A^T`, `V = B^T d B`) and `dL/dg =
/// G^T dL/dU G`: 36 products per 16 outputs instead of F(2x2, 3x3)'s 64,
/// summed by the direct weight-gradient tile ([`direct::wtile`]) over the
/// tiles of several images at once, as [`winograd::FilterPlan`] does.
#[derive(Debug)]
pub(crate) struct FilterPlan {
    t: Tiles,
    /// Images per row of the transformed operands.
    batch: usize,
    /// Row offsets of the transformed input's channels, `c * row`.
    offs: Vec<u32>,
}

impl FilterPlan {
    /// A plan for `g`, or `None` where it does not apply ([`Tiles::new`],
    /// or more than [`MAX_FILTER_PAIRS`] channel pairs).
    pub fn new(g: &ConvGeom) -> Option<Self> {
        let t = Tiles::new(g, Some(1))?;
        if g.c_in * g.c_out > MAX_FILTER_PAIRS {
            return None;
        }
        let batch = MIN_FILTER_ROW.div_ceil(t.tp).clamp(1, g.n.max(1));
        let row = batch * t.tp;
        if XI * Rows::padded_block(g.c_in.max(g.c_out), row) >= u32::MAX as usize {
            return None;
        }
        let offs = (0..g.c_in).map(|c| (c * row) as u32).collect();
        Some(Self { t, batch, offs })
    }

    /// Images per call of [`FilterPlan::accumulate`].
    pub fn batch(&self) -> usize {
        self.batch
    }

    fn row(&self) -> usize {
        self.batch * self.t.tp
    }

    /// Floats between the transformed inputs' blocks of ξ (`c_in` rows
    /// each) and between the output gradients' (`c_out` rows).
    fn blocks(&self) -> (usize, usize) {
        let g = &self.t.g;
        (
            Rows::padded_block(g.c_in, self.row()),
            Rows::padded_block(g.c_out, self.row()),
        )
    }

    /// Floats of scratch: the transformed inputs and output gradients of
    /// one batch of images, and the transforms' planes; it may hold
    /// anything when passed.
    pub fn scratch_len(&self) -> usize {
        let (vb, db) = self.blocks();
        XI * (vb + db) + self.t.band_len()
    }

    /// Floats of the lane accumulator [`FilterPlan::accumulate`] adds into:
    /// 16 partial sums per transformed weight.
    pub fn lanes_len(&self) -> usize {
        let g = &self.t.g;
        XI * g.c_out * g.c_in * V
    }

    /// Adds the products of `k <= batch` images (`x` `(k, C_in, H, W)`,
    /// read through `bn` where it is given ([`BnRelu`]), `dy` `(k, C_out,
    /// H, W)`) to `lanes`.
    pub fn accumulate(
        &self,
        x: &[f32],
        bn: Option<BnRelu<'_>>,
        dy: &[f32],
        k: usize,
        lanes: &mut Lanes,
        scratch: &mut [f32],
    ) {
        let t = &self.t;
        let g = &t.g;
        let (cin, cout, hw, tp, row) = (g.c_in, g.c_out, g.h * g.w, t.tp, self.row());
        assert!(
            k >= 1 && k <= self.batch && x.len() == k * cin * hw && dy.len() == k * cout * hw,
            "winograd F(4x4, 3x3) filter: bad images"
        );
        assert!(
            scratch.len() >= self.scratch_len() && lanes.len() == self.lanes_len(),
            "winograd F(4x4, 3x3) filter: bad scratch"
        );
        let (vb, db) = self.blocks();
        let (v, rest) = scratch.split_at_mut(XI * vb);
        let (d, band) = rest.split_at_mut(XI * db);
        for b in 0..k {
            let col0 = b * tp;
            let block = |block| Rows { block, row, col0 };
            // SAFETY: AVX2 and FMA were detected when the plan was made.
            unsafe {
                let xb = &x[b * cin * hw..(b + 1) * cin * hw];
                t.transform_input(xb, bn, 1, v, band, block(vb));
                let dyb = &dy[b * cout * hw..(b + 1) * cout * hw];
                t.transform_grad(dyb, d, band, block(db));
            }
        }
        let operands = Transformed {
            v,
            vb,
            d,
            db,
            row,
            filled: k * tp,
        };
        // SAFETY: `sum_products` writes every lane on an `init` call.
        unsafe {
            lanes.update(|out, init| {
                winograd::sum_products(XI, operands, &self.offs, cin, cout, out, init)
            })
        }
    }

    /// The weight gradient `(C_out, C_in, 3, 3)` from the summed lanes:
    /// `dU = sum of each weight's 16 lanes`, then `dg = G^T dU G` in
    /// double precision, output channels in parallel.
    pub fn finish(&self, lanes: &PartLanes) -> Vec<f32> {
        let g = &self.t.g;
        let (cin, cout) = (g.c_in, g.c_out);
        let init = || vec![0f32; XI * cin * V];
        super::cpu::par_zeroed_init_per_chunk(cout * cin * 9, cin * 9, init, |summed, co, dw| {
            // Output channel `co`'s lanes, position after position.
            for (xi, s) in summed.chunks_exact_mut(cin * V).enumerate() {
                let at = (xi * cout + co) * cin * V;
                lanes.sum_into(at..at + cin * V, s);
            }
            // SAFETY: AVX2 and FMA: F(4x4, 3x3) plans are only made where
            // they were detected ([`Tiles::new`]).
            unsafe { fold_channel(summed, dw) };
        })
    }
}

/// `dg = G^T dU G` of `N` kernels at once, lane by lane (`du[ξ][lane]`),
/// in double precision, rounded to `f32` (`[tap][lane]`). Every sum starts
/// from `-0.0` and adds its terms in order, as `Iterator::sum` does, so a
/// lane's value is that of the kernel alone.
#[inline(always)]
fn gradient_lanes<const N: usize>(du: &[[f64; N]; XI]) -> [[f32; N]; 9] {
    // tmp = G^T dU (3 x 6), then dg = tmp G (3 x 3).
    let mut tmp = [[[0f64; N]; 6]; 3];
    for (k, tmp) in tmp.iter_mut().enumerate() {
        for (j, t) in tmp.iter_mut().enumerate() {
            let mut acc = [-0.0f64; N];
            for (i, g) in G.iter().enumerate() {
                for (a, d) in acc.iter_mut().zip(du[6 * i + j]) {
                    *a += g[k] * d;
                }
            }
            *t = acc;
        }
    }
    let mut dw = [[0f32; N]; 9];
    for (k, t) in tmp.iter().enumerate() {
        for l in 0..3 {
            let mut acc = [-0.0f64; N];
            for (t, g) in t.iter().zip(G) {
                for (a, t) in acc.iter_mut().zip(t) {
                    *a += t * g[l];
                }
            }
            dw[3 * k + l] = acc.map(|v| v as f32);
        }
    }
    dw
}

/// One output channel's weight gradient `dw` `(C_in, 3, 3)` from its
/// summed lanes `summed` `[ξ][C_in][V]`: each transformed weight's `V`
/// lanes summed in order in double precision, then [`gradient_lanes`],
/// [`KERNEL_LANES`] input channels at a time, the rest one by one (kernel
/// by kernel in scalar code, this fold was 1.5 % of a CIFAR ResNet-32
/// training step).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`direct::available`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn fold_channel(summed: &[f32], dw: &mut [f32]) {
    let cin = dw.len() / 9;
    let du_lanes = |ci: usize, q: usize, xi: usize| -> f64 {
        let mut acc = -0.0f64;
        for &v in &summed[(xi * cin + ci + q) * V..][..V] {
            acc += f64::from(v);
        }
        acc
    };
    let mut ci = 0;
    while ci + KERNEL_LANES <= cin {
        // The four channels' lanes, 4 x 4 at a time transposed so that
        // each vector holds one lane of the four, added in lane order.
        #[cfg(target_arch = "x86_64")]
        let du: [[f64; KERNEL_LANES]; XI] = std::array::from_fn(|xi| {
            use std::arch::x86_64::*;
            let rows = &summed[(xi * cin + ci) * V..][..KERNEL_LANES * V];
            // SAFETY: AVX2 under the caller's contract; the loads read
            // `rows` (4 x 4 floats at `q V + l0 + 4 <= 4 V`).
            unsafe {
                let mut acc = _mm256_set1_pd(-0.0);
                for l0 in (0..V).step_by(4) {
                    let r: [__m128; 4] =
                        std::array::from_fn(|q| _mm_loadu_ps(rows.as_ptr().add(q * V + l0)));
                    let (t0, t1) = (_mm_unpacklo_ps(r[0], r[1]), _mm_unpacklo_ps(r[2], r[3]));
                    let (t2, t3) = (_mm_unpackhi_ps(r[0], r[1]), _mm_unpackhi_ps(r[2], r[3]));
                    for lane in [
                        _mm_movelh_ps(t0, t1),
                        _mm_movehl_ps(t1, t0),
                        _mm_movelh_ps(t2, t3),
                        _mm_movehl_ps(t3, t2),
                    ] {
                        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(lane));
                    }
                }
                let mut du = [0f64; KERNEL_LANES];
                _mm256_storeu_pd(du.as_mut_ptr(), acc);
                du
            }
        });
        #[cfg(not(target_arch = "x86_64"))]
        let du: [[f64; KERNEL_LANES]; XI] =
            std::array::from_fn(|xi| std::array::from_fn(|q| du_lanes(ci, q, xi)));
        for (t, g) in gradient_lanes(&du).iter().enumerate() {
            for (q, &g) in g.iter().enumerate() {
                dw[(ci + q) * 9 + t] = g;
            }
        }
        ci += KERNEL_LANES;
    }
    for ci in ci..cin {
        let du: [[f64; 1]; XI] = std::array::from_fn(|xi| [du_lanes(ci, 0, xi)]);
        for (t, g) in gradient_lanes(&du).iter().enumerate() {
            dw[ci * 9 + t] = g[0];
        }
    }
}

/// The transforms' arithmetic and lane shuffles, on 8 tiles at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    fn splat(v: f32) -> __m256 {
        // SAFETY: AVX is implied by the callers' AVX2.
        unsafe { _mm256_set1_ps(v) }
    }

    /// `B^T d` on vectors.
    #[inline(always)]
    pub(super) unsafe fn input_combination8(d: [__m256; 6]) -> [__m256; 6] {
        let [d0, d1, d2, d3, d4, d5] = d;
        let (four, five, two) = (splat(4.0), splat(5.0), splat(2.0));
        // SAFETY: AVX2 under the caller's contract.
        unsafe {
            let (add, sub, mul) = (
                |a, b| _mm256_add_ps(a, b),
                |a, b| _mm256_sub_ps(a, b),
                |a, b| _mm256_mul_ps(a, b),
            );
            let d42 = sub(d4, d2);
            let d31 = sub(d3, d1);
            [
                add(sub(mul(four, d0), mul(five, d2)), d4),
                sub(add(d3, d4), mul(four, add(d1, d2))),
                add(sub(d4, d3), mul(four, sub(d1, d2))),
                add(d42, mul(two, d31)),
                sub(d42, mul(two, d31)),
                add(sub(mul(four, d1), mul(five, d3)), d5),
            ]
        }
    }

    /// `A d` on vectors, for the output gradient's four rows (or columns)
    /// of a tile.
    #[inline(always)]
    pub(super) unsafe fn grad_combination8(y: [__m256; 4]) -> [__m256; 6] {
        let [y0, y1, y2, y3] = y;
        // SAFETY: AVX2 under the caller's contract.
        unsafe {
            let (add, sub, mul) = (
                |a, b| _mm256_add_ps(a, b),
                |a, b| _mm256_sub_ps(a, b),
                |a, b| _mm256_mul_ps(a, b),
            );
            let (s02, s13) = (add(y0, y2), add(y1, y3));
            let t02 = add(y0, mul(splat(4.0), y2));
            let t13 = add(mul(splat(2.0), y1), mul(splat(8.0), y3));
            [
                y0,
                add(s02, s13),
                sub(s02, s13),
                add(t02, t13),
                sub(t02, t13),
                y3,
            ]
        }
    }

    /// `A^T m` on vectors.
    #[inline(always)]
    pub(super) unsafe fn output_combination8(m: [__m256; 6]) -> [__m256; 4] {
        let [m0, m1, m2, m3, m4, m5] = m;
        // SAFETY: AVX2 under the caller's contract.
        unsafe {
            let (add, sub, mul) = (
                |a, b| _mm256_add_ps(a, b),
                |a, b| _mm256_sub_ps(a, b),
                |a, b| _mm256_mul_ps(a, b),
            );
            let (s12, d12, s34, d34) = (add(m1, m2), sub(m1, m2), add(m3, m4), sub(m3, m4));
            [
                add(add(m0, s12), s34),
                add(d12, mul(splat(2.0), d34)),
                add(s12, mul(splat(4.0), s34)),
                add(add(d12, mul(splat(8.0), d34)), m5),
            ]
        }
    }

    /// 32 floats (8 tiles of 4 columns, in order) into the tiles' four
    /// column phases, each a vector of 8 tiles in order.
    #[inline(always)]
    pub(super) unsafe fn phases4(a: [__m256; 4]) -> [__m256; 4] {
        // SAFETY: AVX2 under the caller's contract.
        unsafe {
            let u0 = _mm256_unpacklo_ps(a[0], a[1]);
            let u1 = _mm256_unpackhi_ps(a[0], a[1]);
            let u2 = _mm256_unpacklo_ps(a[2], a[3]);
            let u3 = _mm256_unpackhi_ps(a[2], a[3]);
            let cast = _mm256_castps_pd;
            let back = _mm256_castpd_ps;
            // Lanes hold tiles 0 2 4 6 | 1 3 5 7.
            let p = [
                back(_mm256_unpacklo_pd(cast(u0), cast(u2))),
                back(_mm256_unpackhi_pd(cast(u0), cast(u2))),
                back(_mm256_unpacklo_pd(cast(u1), cast(u3))),
                back(_mm256_unpackhi_pd(cast(u1), cast(u3))),
            ];
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            p.map(|p| _mm256_permutevar8x32_ps(p, order))
        }
    }

    /// The inverse of [`phases4`]: four outputs of 8 tiles into 4 vectors
    /// of two tiles' four outputs each.
    #[inline(always)]
    pub(super) unsafe fn interleave4(b: [__m256; 4]) -> [__m256; 4] {
        // SAFETY: AVX2 under the caller's contract.
        unsafe {
            let u0 = _mm256_unpacklo_ps(b[0], b[1]);
            let u1 = _mm256_unpackhi_ps(b[0], b[1]);
            let u2 = _mm256_unpacklo_ps(b[2], b[3]);
            let u3 = _mm256_unpackhi_ps(b[2], b[3]);
            let cast = _mm256_castps_pd;
            let back = _mm256_castpd_ps;
            // Tiles 0 | 4, 1 | 5, 2 | 6, 3 | 7.
            let w0 = back(_mm256_unpacklo_pd(cast(u0), cast(u2)));
            let w1 = back(_mm256_unpackhi_pd(cast(u0), cast(u2)));
            let w2 = back(_mm256_unpacklo_pd(cast(u1), cast(u3)));
            let w3 = back(_mm256_unpackhi_pd(cast(u1), cast(u3)));
            [
                _mm256_permute2f128_ps::<0x20>(w0, w1),
                _mm256_permute2f128_ps::<0x20>(w2, w3),
                _mm256_permute2f128_ps::<0x31>(w0, w1),
                _mm256_permute2f128_ps::<0x31>(w2, w3),
            ]
        }
    }

    /// Asks for the cache lines of `len` floats from `p` into L1. A hint:
    /// addresses outside any allocation are ignored by the CPU.
    #[inline(always)]
    pub(super) fn prefetch_rows(p: *const f32, len: usize) {
        let mut at = 0;
        while at < len {
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault; `wrapping_add` makes no claim about the allocation.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at).cast::<i8>()) };
            at += 16;
        }
    }

    /// Lane `l` gets lane `l - 1` (lane 0 gets lane 7).
    #[inline(always)]
    pub(super) unsafe fn rotate_up(v: __m256) -> __m256 {
        // SAFETY: AVX2 under the caller's contract.
        unsafe { _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6)) }
    }

    /// Lane `l` gets lane `l + 1` (lane 7 gets lane 0).
    #[inline(always)]
    pub(super) unsafe fn rotate_down(v: __m256) -> __m256 {
        // SAFETY: AVX2 under the caller's contract.
        unsafe { _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Conv2dParams;

    fn geom(n: usize, ci: usize, h: usize, w: usize, co: usize) -> ConvGeom {
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        ConvGeom::new(&[n, ci, h, w], &[co, ci, 3, 3], p).unwrap()
    }

    /// Direct 3x3 convolution in double precision.
    fn reference(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (h, wd) = (g.h as isize, g.w as isize);
        let mut y = vec![0f64; g.c_out * g.h * g.w];
        for co in 0..g.c_out {
            for oy in 0..h {
                for ox in 0..wd {
                    let mut acc = 0f64;
                    for ci in 0..g.c_in {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                if (0..h).contains(&iy) && (0..wd).contains(&ix) {
                                    let xv = x[(ci * g.h + iy as usize) * g.w + ix as usize];
                                    let wv =
                                        w[((co * g.c_in + ci) * 3 + ky as usize) * 3 + kx as usize];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                    }
                    y[(co * g.h + oy as usize) * g.w + ox as usize] = acc;
                }
            }
        }
        y
    }

    /// Every output of every tile, the edges' too, against a double
    /// precision direct convolution: within a few 1e-6 of the sum of the
    /// magnitudes that enter it. Small maps run several images per call,
    /// the last call with fewer; the entry point (`conv_fwd`) takes this
    /// path and gives the same bits.
    #[test]
    fn f4_matches_direct_convolution() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        // (n, c_in, h, w, c_out, images per call)
        for (n, ci, h, w, co, per_call) in [
            (1, 3, 16, 16, 8, 1),
            (2, 16, 32, 32, 16, 1),
            (1, 5, 16, 32, 8, 1),
            (1, 32, 20, 16, 16, 1),
            (7, 64, 8, 8, 64, 4),
            (3, 8, 8, 16, 8, 2),
            (5, 3, 4, 8, 8, 8),
        ] {
            let g = geom(n, ci, h, w, co);
            let (chw, ohw) = (ci * h * w, co * h * w);
            let x: Vec<f32> = (0..n * chw)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..co * ci * 9)
                .map(|i| ((i * 53 % 97) as f32) / 48.0 - 1.0)
                .collect();
            let plan = Plan::new(&g, &wt).expect("F(4x4, 3x3) applies");
            assert_eq!(plan.images(), per_call, "{:?}", (n, ci, h, w, co));
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let mut y = vec![MaybeUninit::new(f32::NAN); n * ohw];
            for i in (0..n).step_by(per_call) {
                let k = per_call.min(n - i);
                plan.run(
                    &x[i * chw..(i + k) * chw],
                    None,
                    &mut y[i * ohw..(i + k) * ohw],
                    &mut scratch,
                );
            }
            // SAFETY: `run` writes every output (NaN-filled before, and
            // NaN fails the comparison below).
            let y: Vec<f32> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
            // Scale: the largest |x| * sum |w| over a 3x3 window of every channel.
            let scale = 9.0 * ci as f64;
            let gi = geom(1, ci, h, w, co);
            for b in 0..n {
                let want = reference(&gi, &x[b * chw..(b + 1) * chw], &wt);
                for (i, (got, want)) in y[b * ohw..(b + 1) * ohw].iter().zip(&want).enumerate() {
                    let got = f64::from(*got);
                    assert!(
                        (got - want).abs() <= 4e-6 * scale,
                        "{n}x{ci}x{h}x{w}->{co}: image {b} output {i}: {got} against {want}"
                    );
                }
            }
            assert_eq!(super::super::conv::conv_fwd(&g, &x, &wt), y);
        }
    }

    /// The weight gradient, every tap, against a double precision direct
    /// sum, over batches that fill the plan's row and one that does not
    /// (the absent images' columns must add nothing); and the entry point
    /// (`conv_bwd_filter`) takes this path where it applies.
    #[test]
    fn f4_weight_gradient_matches_direct_sum() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for (n, ci, h, w, co) in [(5, 16, 32, 32, 16), (19, 8, 16, 16, 8), (3, 3, 20, 16, 8)] {
            let g = geom(n, ci, h, w, co);
            let x: Vec<f32> = (0..n * ci * h * w)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let dy: Vec<f32> = (0..n * co * h * w)
                .map(|i| ((i * 53 % 97) as f32) / 48.0 - 1.0)
                .collect();
            let plan = FilterPlan::new(&g).expect("F(4x4, 3x3) applies");
            assert!(
                plan.batch() < n || n < 4,
                "{n} images: one partial batch at least"
            );
            let mut lanes = Lanes::new(plan.lanes_len());
            // The scratch may hold anything, NaN included.
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let (chw, ohw) = (ci * h * w, co * h * w);
            // The short batch first, on the untouched scratch.
            let (b, short) = (plan.batch(), n % plan.batch());
            let mut sizes = vec![short; usize::from(short > 0)];
            sizes.extend(std::iter::repeat_n(b, n / b));
            let mut i = 0;
            for k in sizes {
                plan.accumulate(
                    &x[i * chw..(i + k) * chw],
                    None,
                    &dy[i * ohw..(i + k) * ohw],
                    k,
                    &mut lanes,
                    &mut scratch,
                );
                i += k;
            }
            let got = plan.finish(&PartLanes::new(vec![lanes.into_vec()]));
            // The entry point, which takes this path, sums the same
            // products in another order (images split between workers).
            let entry = Some(super::super::conv::conv_bwd_filter(&g, &x, &dy));
            let (hi, wi) = (h as isize, w as isize);
            for o in 0..co {
                for c in 0..ci {
                    for tap in 0..9 {
                        let (ky, kx) = ((tap / 3) as isize, (tap % 3) as isize);
                        let (mut want, mut scale) = (0f64, 0f64);
                        for b in 0..n {
                            for oy in 0..hi {
                                for ox in 0..wi {
                                    let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                    if (0..hi).contains(&iy) && (0..wi).contains(&ix) {
                                        let p = f64::from(
                                            dy[((b * co + o) * h + oy as usize) * w + ox as usize],
                                        ) * f64::from(
                                            x[((b * ci + c) * h + iy as usize) * w + ix as usize],
                                        );
                                        want += p;
                                        scale += p.abs();
                                    }
                                }
                            }
                        }
                        let at = (o * ci + c) * 9 + tap;
                        for (path, dw) in
                            [("plan", Some(&got)), ("conv_bwd_filter", entry.as_ref())]
                        {
                            let Some(dw) = dw else { continue };
                            let got = f64::from(dw[at]);
                            assert!(
                                (got - want).abs() <= 1e-5 * scale,
                                "{path} {:?}: dw[{o}][{c}][{tap}] = {got} against {want} (sum of magnitudes {scale})",
                                (n, ci, h, w, co)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f4_declines_other_geometries() {
        let w = vec![0f32; 8 * 8 * 9];
        assert!(
            Plan::new(&geom(1, 8, 18, 16, 8), &w).is_none(),
            "18 rows: not whole tiles"
        );
        assert!(
            Plan::new(&geom(1, 8, 16, 12, 8), &w).is_none(),
            "12 columns: an odd number of tiles per row"
        );
        assert!(
            FilterPlan::new(&geom(1, 8, 8, 8, 8)).is_none(),
            "8x8 weight gradient: one image per row, F(2x2, 3x3) is cheaper"
        );
        if direct::available() && winograd::enabled() && enabled() {
            assert!(Plan::new(&geom(1, 8, 16, 16, 8), &w).is_some());
        }
    }
    /// The products a group of positions at a time over every block
    /// (`winograd::grouped_products`) against block by block: the same
    /// bits, for groups that divide the 36 positions and groups that
    /// leave a short last one, with several images per call.
    #[test]
    fn f4_grouped_products_equal_block_by_block() {
        if !direct::available() || !winograd::enabled() || !enabled() {
            eprintln!("skipped: no AVX2, or Winograd switched off");
            return;
        }
        let g = geom(3, 16, 8, 16, 16);
        let x: Vec<f32> = (0..3 * 16 * 8 * 16)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..16 * 16 * 9)
            .map(|i| ((i * 53 % 97) as f32) / 48.0 - 1.0)
            .collect();
        let mut plan = Plan::new(&g, &w).expect("F(4x4, 3x3) applies");
        assert_eq!((plan.images(), plan.group), (2, None));
        let run = |plan: &Plan| {
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let mut y = vec![MaybeUninit::new(f32::NAN); 2 * 16 * 8 * 16];
            plan.run(&x[..2 * 16 * 8 * 16], None, &mut y, &mut scratch);
            // SAFETY: `run` writes every output.
            y.iter()
                .map(|v| unsafe { v.assume_init() })
                .collect::<Vec<f32>>()
        };
        let want = run(&plan);
        assert!(want.iter().all(|v| v.is_finite()));
        for group in [2, 4, 10, 36] {
            plan.group = Some(group);
            assert_eq!(run(&plan), want, "group {group}");
        }
    }

    /// Values for the bit-for-bit tests below: mixed signs and magnitudes,
    /// with zeros of both signs, a few huge and tiny values, and large
    /// ones of both signs that cancel.
    fn awkward(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match (i * 7 + seed) % 41 {
                0 => -0.0,
                1 => 0.0,
                2 => 3.0e38,
                3 => -1.0e-40,
                // Cancelling large values: a sum's order shows in its bits.
                4 => 1.0e20,
                5 => -1.0e20,
                k => {
                    ((i * 131 + seed * 17) % 1009) as f32 / 97.0
                        * if k % 2 == 0 { 1.0 } else { -1.0 }
                }
            })
            .collect()
    }

    /// The kernel transform (vectors of four kernels, output channels in
    /// lanes) against one kernel at a time in scalar code, as it was
    /// computed before: the same bits, `[ξ][block][C_in][8]`, including
    /// the stem's 3 input channels and more than one block.
    #[test]
    fn kernel_transform_equals_scalar_bit_for_bit() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        let rows = |g: [f64; 3]| G.map(|r| r[0] * g[0] + r[1] * g[1] + r[2] * g[2]);
        for (cout, cin) in [(8, 3), (16, 16), (24, 5), (64, 64)] {
            let w = awkward(cout * cin * 9, cout + cin);
            let blocks = cout / MR;
            let got = transform_kernel(&w, cout, cin, blocks);
            assert_eq!(got.len(), XI * cout * cin);
            for co in 0..cout {
                for ci in 0..cin {
                    let k = &w[(co * cin + ci) * 9..][..9];
                    let cols: [[f64; 6]; 3] = std::array::from_fn(|l| {
                        rows([k[l].into(), k[3 + l].into(), k[6 + l].into()])
                    });
                    let gg: [[f64; 3]; 6] = std::array::from_fn(|i| cols.map(|c| c[i]));
                    for (i, gg) in gg.into_iter().enumerate() {
                        for (j, v) in rows(gg).iter().enumerate() {
                            let at = (((6 * i + j) * blocks + co / MR) * cin + ci) * MR + co % MR;
                            assert_eq!(
                                got[at].to_bits(),
                                (*v as f32).to_bits(),
                                "{cout}x{cin}: kernel ({co}, {ci}), position {}",
                                6 * i + j
                            );
                        }
                    }
                }
            }
        }
    }

    /// The weight gradient's fold (four input channels in lanes, then the
    /// rest one by one) against one kernel at a time in scalar code, as it
    /// was computed before: the same bits.
    #[test]
    fn gradient_fold_equals_scalar_bit_for_bit() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for cin in [1, 3, 4, 5, 7, 16] {
            // C_in 5: sums of negative zeros only.
            let summed = if cin == 5 {
                vec![-0.0; XI * cin * V]
            } else {
                // Each weight's lanes: small values of both signs and, at
                // lanes that move with the weight, 1e20 and -1e20, which
                // swallow in double precision the small ones added before
                // the second of them: the order of the lanes shows in the
                // sum. (No larger values: one would dominate every tap's
                // sum over the 36 positions and hide the rest.)
                let mut v: Vec<f32> = (0..XI * cin * V)
                    .map(|i| ((i * 131 + cin * 17) % 1009) as f32 / 97.0 - 5.0)
                    .collect();
                for (k, lanes) in v.chunks_exact_mut(V).enumerate() {
                    lanes[k % V] = 1.0e20;
                    lanes[(k + 5) % V] = -1.0e20;
                }
                v
            };
            let mut got = vec![f32::NAN; cin * 9];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { fold_channel(&summed, &mut got) };
            for ci in 0..cin {
                let du: [f64; XI] = std::array::from_fn(|xi| {
                    let l = &summed[(xi * cin + ci) * V..][..V];
                    l.iter().map(|&v| f64::from(v)).sum()
                });
                let tmp: [[f64; 6]; 3] = std::array::from_fn(|k| {
                    std::array::from_fn(|j| (0..6).map(|i| G[i][k] * du[6 * i + j]).sum())
                });
                for (k, t) in tmp.iter().enumerate() {
                    for l in 0..3 {
                        let want = (0..6).map(|j| t[j] * G[j][l]).sum::<f64>() as f32;
                        assert_eq!(
                            got[ci * 9 + 3 * k + l].to_bits(),
                            want.to_bits(),
                            "C_in {cin}: channel {ci}, tap {}",
                            3 * k + l
                        );
                    }
                }
            }
        }
    }
}
