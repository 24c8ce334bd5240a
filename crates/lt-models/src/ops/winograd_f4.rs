//! Winograd F(4x4, 3x3) for the forward pass (and, through the flipped
//! kernel, the input gradient) of 3x3, stride-1, padding-1 convolutions
//! on maps of 16x16 and more: 36 products per 4x4 block of outputs
//! instead of F(2x2, 3x3)'s 16 per 2x2 ([`super::winograd`]), so 44 %
//! fewer multiply-adds on the register tile and 44 % fewer transformed
//! values to write, read and transform back.
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
//! register tile as F(2x2, 3x3)'s; the transforms are plane passes that
//! the compiler vectorises over whole rows of tiles, on the instruction
//! set the convolution kernels were detected for.
//!
//! The weight gradient stays on F(2x2, 3x3) or the direct kernel. Maps
//! under 16x16 stay on F(2x2, 3x3) too: an 8x8 map has 4 tiles of 4x4,
//! and the register tile's 16 lanes would compute 12 padding tiles.
//! [`set_enabled`] switches this plan off (F(2x2, 3x3) takes its maps),
//! for a reproduction of results made before it existed.

use super::conv::ConvGeom;
use super::direct::{self, LANES, MR, NP};
use super::winograd;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Transformed positions per tile (6 x 6).
const XI: usize = 36;

/// Floats added to each row of the transformed input and products, and
/// to each block of ξ, so that no two streams are a multiple of 4 KiB
/// apart (the same reason as F(2x2, 3x3)'s padding).
const ROW_PAD: usize = 16;

/// Largest transformed input per image (`36 x C_in x tiles` floats): the
/// same 512 KiB of L2 cache as F(2x2, 3x3)'s limit.
const MAX_TRANSFORMED_INPUT: usize = 16 * 8192;

/// Process-wide switch: on unless [`set_enabled`] turned it off.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the F(4x4, 3x3) forward plan on (the default) or off for the
/// whole process. Off, the maps it takes go to F(2x2, 3x3) as before it
/// existed, so a run reproduces results made before it bit for bit
/// (`model.winograd_f4 = false` in a config).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the F(4x4, 3x3) plan is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `G g` for one column (or row) of three taps, in double precision.
fn filter_combination(g: [f64; 3]) -> [f64; 6] {
    let [g0, g1, g2] = g;
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// Everything about one convolution's forward pass that does not depend
/// on the image.
#[derive(Debug)]
pub(crate) struct Plan {
    g: ConvGeom,
    /// Tile rows and columns per image, and tiles per image.
    th: usize,
    tw: usize,
    tiles: usize,
    /// Tiles rounded up to whole register-tile lanes.
    tp: usize,
    /// Row stride of the transformed input and the products: `tp` plus
    /// [`ROW_PAD`].
    rs: usize,
    /// Transformed kernel, `[ξ][block of 8 output channels][c_in][8]`.
    u: Vec<f32>,
    /// Row offsets of the transformed input's channels, `c * rs`.
    offs: Vec<u32>,
    /// Per tile: 0 for the first (`not_first`) or last (`not_last`) of its
    /// tile row, whose neighbour in the column pass is the zero padding.
    not_first: Vec<f32>,
    not_last: Vec<f32>,
}

impl Plan {
    /// A plan for `g` with weights `w` `(C_out, C_in, 3, 3)`, or `None`
    /// where it does not apply: switched off (this plan or Winograd as a
    /// whole), a CPU without AVX2 and FMA, another geometry, sizes not a
    /// multiple of 4, or maps where F(2x2, 3x3) computes fewer products
    /// (fewer than 16 tiles of 4x4).
    pub fn new(g: &ConvGeom, w: &[f32]) -> Option<Self> {
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
        let tp = tiles.div_ceil(LANES) * LANES;
        // Register-tile columns per image and channel pair against
        // F(2x2, 3x3)'s.
        let tp2 = (4 * tiles).div_ceil(LANES) * LANES;
        if XI * tp >= 16 * tp2 || XI * g.c_in * tp > MAX_TRANSFORMED_INPUT {
            return None;
        }
        let rs = tp + ROW_PAD;
        if XI * (g.c_in * rs + ROW_PAD) >= u32::MAX as usize {
            return None;
        }
        let (cin, blocks) = (g.c_in, g.c_out / MR);
        let mut u = vec![0f32; XI * g.c_out * cin];
        for co in 0..g.c_out {
            for ci in 0..cin {
                let k = &w[(co * cin + ci) * 9..][..9];
                // tmp = G g (6 x 3), then U = tmp G^T (6 x 6).
                let cols: [[f64; 6]; 3] = std::array::from_fn(|l| {
                    filter_combination([k[l].into(), k[3 + l].into(), k[6 + l].into()])
                });
                let gg: [[f64; 3]; 6] = std::array::from_fn(|i| cols.map(|c| c[i]));
                for (i, gg) in gg.into_iter().enumerate() {
                    for (j, v) in filter_combination(gg).into_iter().enumerate() {
                        let xi = i * 6 + j;
                        u[((xi * blocks + co / MR) * cin + ci) * MR + co % MR] = v as f32;
                    }
                }
            }
        }
        let offs = (0..cin).map(|c| (c * rs) as u32).collect();
        let edge = |at: usize| (0..tp).map(|t| f32::from(u8::from(t % tw != at))).collect();
        Some(Self {
            g: *g,
            th,
            tw,
            tiles,
            tp,
            rs,
            u,
            offs,
            not_first: edge(0),
            not_last: edge(tw - 1),
        })
    }

    /// Floats between the transformed input's blocks of ξ.
    fn v_block(&self) -> usize {
        self.g.c_in * self.rs + ROW_PAD
    }

    /// Floats of band scratch the transforms need.
    fn band_len(&self) -> usize {
        let input = 6 * 4 * self.tp + self.g.w;
        let output = 24 * self.tp;
        input.max(output)
    }

    /// Floats of per-image scratch: the transformed input, the products of
    /// one block of output channels, and the transforms' planes.
    pub fn scratch_len(&self) -> usize {
        XI * self.v_block() + XI * MR * self.rs + self.band_len()
    }

    /// Convolves one image: `x` `(C_in, H, W)` into `y` `(C_out, H, W)`,
    /// every element of which is written; `scratch` may hold anything.
    pub fn run(&self, x: &[f32], y: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        let g = &self.g;
        let (cin, hw, tp, rs) = (g.c_in, g.h * g.w, self.tp, self.rs);
        assert!(
            scratch.len() >= self.scratch_len(),
            "winograd F(4x4, 3x3): scratch too small"
        );
        assert!(
            x.len() == cin * hw && y.len() == g.c_out * hw,
            "winograd F(4x4, 3x3): bad image"
        );
        let vb = self.v_block();
        let (v, rest) = scratch.split_at_mut(XI * vb);
        let (m, band) = rest.split_at_mut(XI * MR * rs);
        // SAFETY: AVX2 and FMA were detected when the plan was made.
        unsafe { self.transform_input(x, v, band) };
        let blocks = g.c_out / MR;
        for blk in 0..blocks {
            for xi in 0..XI {
                let vx = &v[xi * vb..][..cin * rs];
                let u = &self.u[(xi * blocks + blk) * cin * MR..][..cin * MR];
                let mut t0 = 0;
                while t0 < tp {
                    let nv = ((tp - t0) / LANES).min(NP / LANES);
                    // SAFETY: AVX2 and FMA were detected when the plan was
                    // made; `u` holds `cin * MR` floats; the largest read
                    // is `offs[cin-1] + t0 + nv*16 <= (cin-1)*rs + tp`,
                    // inside `vx` (`cin * rs`); row `r` is written at
                    // `(xi*MR + r)*rs + t0 .. + nv*16 <= (xi*MR + r)*rs + tp`,
                    // inside `m` (`XI * MR * rs`).
                    unsafe {
                        let out = m.as_mut_ptr().add(xi * MR * rs + t0);
                        direct::tile_into(nv, &vx[t0..], &self.offs, u, out, rs);
                    }
                    t0 += nv * LANES;
                }
            }
            // SAFETY: as above.
            unsafe { self.transform_output(m, &mut y[blk * MR * hw..(blk + 1) * MR * hw], band) };
        }
    }

    /// `V[ξ][c][t] = (B^T d B)[ξ]` for every channel `c` and tile `t`
    /// (`tp` of them; finite values past the image's, whose products no
    /// output reads), rows `rs` apart in blocks of [`Plan::v_block`].
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
    unsafe fn transform_input(&self, x: &[f32], v: &mut [f32], band: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use avx2::*;
            use std::arch::x86_64::*;
            let g = &self.g;
            let (h, w, th, tiles, tp, rs) = (g.h, g.w, self.th, self.tiles, self.tp, self.rs);
            let vb = self.v_block();
            // Planes of `4 tp` floats: whole chunks of 8 tiles, zeros past
            // the image's tiles; then one zero row.
            let pl = 4 * tp;
            let (comb, zero) = band[..6 * pl + w].split_at_mut(6 * pl);
            comb.fill(0.0);
            zero.fill(0.0);
            let (cp, zp) = (comb.as_mut_ptr(), zero.as_ptr());
            let (first, last) = (self.not_first.as_ptr(), self.not_last.as_ptr());
            assert!(x.len() >= g.c_in * h * w && v.len() >= (XI - 1) * vb + (g.c_in - 1) * rs + tp);
            let vp = v.as_mut_ptr();
            // SAFETY: AVX2 and FMA under the caller's contract. Reads: input
            // rows inside `x` (asserted), the zero row, and chunks of the
            // planes (`4 tp` floats each, `32 k + 32 <= 4 tp`); the masks
            // hold `tp` floats. Writes: plane rows (`ty w + w <= 4 tp`) and
            // rows of `v` (`tp` floats from `(6i + j) vb + c rs`, inside
            // `v` as asserted).
            unsafe {
                for c in 0..g.c_in {
                    let xc = x.as_ptr().add(c * h * w);
                    // Row pass: padded rows 4ty .. 4ty+5 are input rows 4ty-1
                    // .. 4ty+4 (zeros outside the image).
                    for ty in 0..th {
                        let d: [*const f32; 6] = std::array::from_fn(|k| {
                            let r = (4 * ty + k) as isize - 1;
                            if (0..h as isize).contains(&r) {
                                xc.add(r as usize * w)
                            } else {
                                zp
                            }
                        });
                        let o = cp.add(ty * w);
                        let mut col = 0;
                        while col < w {
                            let e = input_combination8(std::array::from_fn(|k| {
                                _mm256_loadu_ps(d[k].add(col))
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
                                _mm256_storeu_ps(vp.add((6 * i + j) * vb + c * rs + t), e);
                            }
                            prev3 = rot3;
                            cur = next;
                        }
                    }
                }
            }
            let _ = tiles;
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, v, band);
            unreachable!("winograd convolution needs AVX2")
        }
    }

    /// `y = A^T M A` per tile for one block of 8 output channels; `m` is
    /// `[ξ][8]` rows of `tp` products `rs` apart, `y` the block's
    /// `(8, H, W)` outputs. The row pass is element-wise over rows of
    /// tiles; the column pass gives the four outputs of 8 tiles in one
    /// output row, which are interleaved in registers and stored two tiles
    /// (8 floats, one tile row since `TW` is even) at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_output(&self, m: &[f32], y: &mut [MaybeUninit<f32>], band: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use avx2::*;
            use std::arch::x86_64::*;
            let g = &self.g;
            let (tp, tw, tiles, hw, w, rs) =
                (self.tp, self.tw, self.tiles, g.h * g.w, g.w, self.rs);
            assert!(m.len() >= (XI * MR - 1) * rs + tp && y.len() >= MR * hw);
            let s = band[..24 * tp].as_mut_ptr();
            let mp = m.as_ptr();
            // SAFETY: AVX2 and FMA under the caller's contract. Reads: rows
            // of `m` (`tp` floats from `(xi MR + r) rs`, inside `m` as
            // asserted) and of `s` (`24 tp` floats). Writes: `s`, and two
            // tiles of output row `4ty + a < H` at column `4 tx + 8 <= W`.
            unsafe {
                for r in 0..MR {
                    // Row pass: s[a][j] = (A^T m[.][j])[a].
                    for j in 0..6 {
                        let mut t = 0;
                        while t < tp {
                            let a = output_combination8(std::array::from_fn(|i| {
                                _mm256_loadu_ps(mp.add(((6 * i + j) * MR + r) * rs + t))
                            }));
                            for (k, a) in a.into_iter().enumerate() {
                                _mm256_storeu_ps(s.add((6 * k + j) * tp + t), a);
                            }
                            t += 8;
                        }
                    }
                    let yr = y.as_mut_ptr().add(r * hw).cast::<f32>();
                    // Column pass, output row 4ty + a of 8 tiles at a time.
                    for a in 0..4 {
                        let mut t = 0;
                        while t < tiles {
                            let b = output_combination8(std::array::from_fn(|j| {
                                _mm256_loadu_ps(s.add((6 * a + j) * tp + t))
                            }));
                            for (k, pair) in interleave4(b).into_iter().enumerate() {
                                let t2 = t + 2 * k;
                                if t2 < tiles {
                                    let (ty, tx) = (t2 / tw, t2 % tw);
                                    _mm256_storeu_ps(yr.add((4 * ty + a) * w + 4 * tx), pair);
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
            let _ = (m, y, band);
            unreachable!("winograd convolution needs AVX2")
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
    /// magnitudes that enter it.
    #[test]
    fn f4_matches_direct_convolution() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for (ci, h, w, co) in [
            (3, 16, 16, 8),
            (16, 32, 32, 16),
            (5, 16, 32, 8),
            (32, 20, 16, 16),
        ] {
            let g = geom(1, ci, h, w, co);
            let x: Vec<f32> = (0..ci * h * w)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..co * ci * 9)
                .map(|i| ((i * 53 % 97) as f32) / 48.0 - 1.0)
                .collect();
            let plan = Plan::new(&g, &wt).expect("F(4x4, 3x3) applies");
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let mut y = vec![MaybeUninit::new(f32::NAN); co * h * w];
            plan.run(&x, &mut y, &mut scratch);
            let want = reference(&g, &x, &wt);
            // Scale: the largest |x| * sum |w| over a 3x3 window of every channel.
            let scale = 9.0 * ci as f64;
            for (i, (got, want)) in y.iter().zip(&want).enumerate() {
                // SAFETY: `run` writes every output (NaN-filled before).
                let got = f64::from(unsafe { got.assume_init() });
                assert!(
                    (got - want).abs() <= 4e-6 * scale,
                    "{ci}x{h}x{w}->{co}: output {i}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn f4_declines_small_maps_and_other_geometries() {
        let w = vec![0f32; 8 * 8 * 9];
        assert!(
            Plan::new(&geom(1, 8, 8, 8, 8), &w).is_none(),
            "8x8: F(2x2, 3x3) is cheaper"
        );
        assert!(
            Plan::new(&geom(1, 8, 18, 16, 8), &w).is_none(),
            "18 rows: not whole tiles"
        );
        if direct::available() && winograd::enabled() && enabled() {
            assert!(Plan::new(&geom(1, 8, 16, 16, 8), &w).is_some());
        }
    }
}
