//! Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions on
//! AVX-512 CPUs.
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch
//! under it as `Y = A^T [U ⊙ V] A`, with `V = B^T d B` the transformed patch
//! and `U = G g G^T` the transformed kernel (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016). Summed over input
//! channels, the element-wise product becomes 16 independent matrix
//! products `M[ξ] = U[ξ] · V[ξ]` (`C_out x C_in` times `C_in x tiles`), 16
//! multiply-adds per tile and channel pair instead of the 36 of the direct
//! convolution: 2.25 times fewer. The products run on the direct
//! convolution's register tile ([`super::direct`]: 8 output channels x 48
//! tiles, the transformed kernel broadcast, the transformed input loaded
//! contiguously), so the only new code is the three transforms.
//!
//! The arithmetic differs from the direct convolution's (sums in another
//! order, through the transforms): outputs agree to about 1e-6 relative,
//! not bit for bit. [`set_enabled`] switches the path off for a
//! reproduction of results made before it existed.
//!
//! Used by the forward pass and, through the flipped kernel (also 3x3,
//! stride 1, padding 1), by the input gradient; the weight gradient keeps
//! its kernels.

use super::conv::ConvGeom;
use super::direct::{self, LANES, MR, NP};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Transformed positions per tile (4 x 4).
const XI: usize = 16;

/// Process-wide switch: on unless [`set_enabled`] turned it off.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path on (the default) or off for the whole process.
/// Off, every convolution takes the kernels it took before the path
/// existed, so a run reproduces results made before it bit for bit
/// (`model.winograd = false` in a config).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the Winograd path is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Everything about one convolution that does not depend on the image.
#[derive(Debug)]
pub(crate) struct Plan {
    g: ConvGeom,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    /// Tiles per image rounded up to whole vectors: the row length of the
    /// transformed input and of the products.
    tp: usize,
    /// Transformed kernel, `[ξ][block of 8 output channels][c_in][8]`.
    u: Vec<f32>,
    /// Row offsets of the transformed input's channels, `c * tp`.
    offs: Vec<u32>,
    /// Per tile: 1 unless it is the first (`not_first`) or last
    /// (`not_last`) of its tile row, whose neighbour in the input
    /// transform is the zero padding.
    not_first: Vec<f32>,
    not_last: Vec<f32>,
}

impl Plan {
    /// A plan for `g` with weights `w` `(C_out, C_in, 3, 3)`, or `None` when
    /// the path does not apply (switched off, CPU without AVX-512, another
    /// geometry, groups, output channels not a multiple of 8).
    pub fn new(g: &ConvGeom, w: &[f32]) -> Option<Self> {
        let applies = g.kh == 3
            && g.kw == 3
            && g.stride == 1
            && g.pad == 1
            && g.groups == 1
            && g.c_out.is_multiple_of(MR)
            && g.oh == g.h
            && g.ow == g.w
            // Even sizes: rows and columns split into whole tiles (the
            // transforms rely on `W = 2 TW`).
            && g.h.is_multiple_of(2)
            && g.w.is_multiple_of(2);
        if !applies || !enabled() || !direct::avx512() {
            return None;
        }
        let (th, tw) = (g.oh / 2, g.ow / 2);
        let tp = (th * tw).div_ceil(LANES) * LANES;
        if g.c_in * tp * XI >= u32::MAX as usize {
            return None;
        }
        let (cin, blocks) = (g.c_in, g.c_out / MR);
        let mut u = vec![0f32; XI * g.c_out * cin];
        for co in 0..g.c_out {
            for ci in 0..cin {
                let k = &w[(co * cin + ci) * 9..][..9];
                // tmp = G g (4 x 3), then U = tmp G^T (4 x 4), with
                // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
                let mut tmp = [[0f32; 3]; 4];
                for l in 0..3 {
                    let (g0, g1, g2) = (k[l], k[3 + l], k[6 + l]);
                    tmp[0][l] = g0;
                    tmp[1][l] = 0.5 * (g0 + g1 + g2);
                    tmp[2][l] = 0.5 * (g0 - g1 + g2);
                    tmp[3][l] = g2;
                }
                for (i, t) in tmp.iter().enumerate() {
                    let row = [
                        t[0],
                        0.5 * (t[0] + t[1] + t[2]),
                        0.5 * (t[0] - t[1] + t[2]),
                        t[2],
                    ];
                    for (j, v) in row.into_iter().enumerate() {
                        let xi = i * 4 + j;
                        u[((xi * blocks + co / MR) * cin + ci) * MR + co % MR] = v;
                    }
                }
            }
        }
        let offs = (0..cin).map(|c| (c * tp) as u32).collect();
        let edge = |at: usize| (0..tp).map(|t| f32::from(u8::from(t % tw != at))).collect();
        Some(Self {
            not_first: edge(0),
            not_last: edge(tw - 1),
            g: *g,
            th,
            tw,
            tp,
            u,
            offs,
        })
    }

    /// Floats of per-image scratch: the transformed input, the products of
    /// one block of output channels, and and rows for the transforms.
    pub fn scratch_len(&self) -> usize {
        let (w, plane) = (self.g.w, self.th * self.g.w);
        let input = w + 4 * plane;
        let output = 10 * self.tp + plane;
        XI * self.g.c_in * self.tp + XI * MR * self.tp + input.max(output)
    }

    /// Convolves one image: `x` `(C_in, H, W)` into `y` `(C_out, H, W)`,
    /// every element of which is written; `scratch` may hold anything.
    pub fn run(&self, x: &[f32], y: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        let g = &self.g;
        let (cin, hw, tp) = (g.c_in, g.h * g.w, self.tp);
        assert!(
            scratch.len() >= self.scratch_len(),
            "winograd conv: scratch too small"
        );
        assert!(
            x.len() == cin * hw && y.len() == g.c_out * hw,
            "winograd conv: bad image"
        );
        let (v, rest) = scratch.split_at_mut(XI * cin * tp);
        let (m, band) = rest.split_at_mut(XI * MR * tp);
        // SAFETY: AVX-512F was detected when the plan was made.
        unsafe { self.transform_input(x, v, band) };
        let blocks = g.c_out / MR;
        for blk in 0..blocks {
            for xi in 0..XI {
                let vx = &v[xi * cin * tp..(xi + 1) * cin * tp];
                let u = &self.u[(xi * blocks + blk) * cin * MR..][..cin * MR];
                let mut t0 = 0;
                while t0 < tp {
                    let nv = ((tp - t0) / LANES).min(NP / LANES);
                    // SAFETY: AVX-512F was detected when the plan was made;
                    // `u` holds `cin * MR` floats; the largest read is
                    // `offs[cin-1] + t0 + nv*16 <= (cin-1)*tp + tp`, inside
                    // `vx` (`cin * tp`); row `r` is written at
                    // `(xi*MR + r)*tp + t0 .. + nv*16 <= (xi*MR + r + 1)*tp`,
                    // inside `m` (`XI * MR * tp`).
                    unsafe {
                        let out = m.as_mut_ptr().add(xi * MR * tp + t0);
                        direct::tile_into(nv, &vx[t0..], &self.offs, u, out, tp);
                    }
                    t0 += nv * LANES;
                }
            }
            // SAFETY: as above.
            unsafe { self.transform_output(m, &mut y[blk * MR * hw..(blk + 1) * MR * hw], band) };
        }
    }

    /// `V[ξ][c][t] = (B^T d B)[ξ]` for every channel `c` and tile `t`, with
    /// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    ///
    /// Per channel: the row pass combines the input rows under each tile
    /// row into four `(H/2, W)` planes (whole rows, contiguous); each plane
    /// is split into its even and odd columns, which with `W = 2 TW` are
    /// `(H/2, W/2)` planes in tile order; the column pass is then
    /// element-wise over rows of `tp` tiles, the neighbouring tile's column
    /// read one element over (and masked at the image's edge). Every loop
    /// runs over whole rows or planes, so it vectorises whatever the image
    /// size.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn transform_input(&self, x: &[f32], v: &mut [f32], band: &mut [f32]) {
        let g = &self.g;
        let (cin, tp, th, w) = (g.c_in, self.tp, self.th, g.w);
        let plane = th * w;
        let (zero, rest) = band.split_at_mut(w);
        let comb = &mut rest[..4 * plane];
        zero.fill(0.0);
        let zero = &*zero;
        let (first, last) = (&self.not_first[..tp], &self.not_last[..tp]);
        for c in 0..cin {
            let xc = &x[c * g.h * w..(c + 1) * g.h * w];
            // Row pass: padded rows 2ty .. 2ty+3 are input rows 2ty-1 ..
            // 2ty+2 (zeros outside the image).
            let row = |r: isize| {
                if (0..g.h as isize).contains(&r) {
                    &xc[r as usize * w..(r as usize + 1) * w]
                } else {
                    zero
                }
            };
            {
                let (c0, rest) = comb.split_at_mut(plane);
                let (c1, rest) = rest.split_at_mut(plane);
                let (c2, c3) = rest.split_at_mut(plane);
                for ty in 0..th {
                    let r = 2 * ty as isize;
                    let (a0, a1, a2, a3) = (row(r - 1), row(r), row(r + 1), row(r + 2));
                    let dst = ty * w..(ty + 1) * w;
                    let (c0, c1) = (&mut c0[dst.clone()], &mut c1[dst.clone()]);
                    let (c2, c3) = (&mut c2[dst.clone()], &mut c3[dst]);
                    for j in 0..w {
                        c0[j] = a0[j] - a2[j];
                        c1[j] = a1[j] + a2[j];
                        c2[j] = a2[j] - a1[j];
                        c3[j] = a1[j] - a3[j];
                    }
                }
            }
            // Padded columns 2tx .. 2tx+3 are input columns 2tx-1 .. 2tx+2:
            // the odd column of tile tx - 1, the even and odd of tile tx,
            // the even of tile tx + 1.
            for i in 0..4 {
                let vrow = |j: usize| ((4 * i + j) * cin + c) * tp;
                // SAFETY: AVX-512F by the caller's contract; each row of
                // `v` starts at `vrow(j)` and holds `tp` floats, inside `v`
                // (`XI * cin * tp`).
                unsafe {
                    column_pass(
                        &comb[i * plane..(i + 1) * plane],
                        first,
                        last,
                        v.as_mut_ptr(),
                        [vrow(0), vrow(1), vrow(2), vrow(3)],
                    )
                };
            }
        }
    }

    /// `y = A^T M A` per tile for one block of 8 output channels, with
    /// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`; `m` is `[ξ][8][tp]`, `y`
    /// the block's `(8, H, W)` outputs. Both passes are element-wise over
    /// rows of `tp` tiles; the two outputs of each tile in an output row
    /// are merged (with `W = 2 TW`, the merged plane is every other output
    /// row), then copied row by row.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn transform_output(&self, m: &[f32], y: &mut [MaybeUninit<f32>], band: &mut [f32]) {
        let g = &self.g;
        let (tp, th, hw, w) = (self.tp, self.th, g.h * g.w, g.w);
        let t_len = th * self.tw;
        let (sd, rest) = band.split_at_mut(8 * tp);
        let (y0, rest) = rest.split_at_mut(tp);
        let (y1, rest) = rest.split_at_mut(tp);
        let z = &mut rest[..th * w];
        for r in 0..MR {
            let e = |xi: usize| &m[(xi * MR + r) * tp..(xi * MR + r + 1) * tp];
            // Row pass: s_j = m_0j + m_1j + m_2j, d_j = m_1j - m_2j - m_3j.
            for j in 0..4 {
                let (a, b, c, dd) = (e(j), e(4 + j), e(8 + j), e(12 + j));
                let (sj, dj) = sd[2 * j * tp..(2 * j + 2) * tp].split_at_mut(tp);
                for t in 0..tp {
                    sj[t] = a[t] + b[t] + c[t];
                    dj[t] = b[t] - c[t] - dd[t];
                }
            }
            let yr = &mut y[r * hw..(r + 1) * hw];
            // Column pass: y_0 = v_0 + v_1 + v_2, y_1 = v_1 - v_2 - v_3,
            // for the s rows (output rows 2 ty) and the d rows (2 ty + 1).
            for half in 0..2 {
                let v = |j: usize| &sd[(2 * j + half) * tp..(2 * j + half + 1) * tp];
                let (v0, v1, v2, v3) = (v(0), v(1), v(2), v(3));
                for t in 0..tp {
                    y0[t] = v0[t] + v1[t] + v2[t];
                    y1[t] = v1[t] - v2[t] - v3[t];
                }
                // SAFETY: AVX-512F by the caller's contract.
                unsafe {
                    interleave(&y0[..t_len], &y1[..t_len], z);
                    for ty in 0..th {
                        let oy = 2 * ty + half;
                        copy_short(&z[ty * w..(ty + 1) * w], &mut yr[oy * w..(oy + 1) * w]);
                    }
                }
            }
        }
    }
}

/// The column pass of the input transform for one row combination `comb`
/// (`(H/2, W)`, tile row after tile row): with `e`, `o` the even and odd
/// columns of tile t, `v0 = o[t-1] - o[t]`, `v1 = e + o`, `v2 = o - e`,
/// `v3 = e - e[t+1]`, the neighbours masked at the edges of a tile row by
/// `first` and `last`, written at `v + rows[j]` for `tp` tiles. The halves
/// are split in registers and the neighbours shifted in registers too (a
/// reload one element over would stall on the stores just made).
///
/// # Safety
/// The CPU must support AVX-512F; `first` and `last` must hold `tp`
/// floats, a multiple of 16, `comb.len() <= 2 * tp`, and `v + rows[j] ..
/// + tp` must be writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn column_pass(comb: &[f32], first: &[f32], last: &[f32], v: *mut f32, rows: [usize; 4]) {
    use std::arch::x86_64::*;
    let tp = first.len();
    debug_assert!(tp.is_multiple_of(LANES) && last.len() == tp && comb.len() <= 2 * tp);
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let len = comb.len();
    // Even and odd halves of chunk k (32 floats of `comb`, zeros past it).
    let halves = |k: usize| {
        let mask = |start: usize| -> __mmask16 {
            let n = len.saturating_sub(start).min(LANES);
            if n == LANES {
                !0
            } else {
                (1u16 << n) - 1
            }
        };
        let (s0, s1) = (2 * LANES * k, 2 * LANES * k + LANES);
        // SAFETY: each mask covers only elements below `len`.
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask(s0), comb.as_ptr().wrapping_add(s0)),
                _mm512_maskz_loadu_ps(mask(s1), comb.as_ptr().wrapping_add(s1)),
            )
        };
        (
            _mm512_permutex2var_ps(a, ie, b),
            _mm512_permutex2var_ps(a, io, b),
        )
    };
    let chunks = tp / LANES;
    let mut o_last = _mm512_setzero_ps();
    let (mut e, mut o) = halves(0);
    for k in 0..chunks {
        let (e_next, o_next) = if k + 1 < chunks {
            halves(k + 1)
        } else {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        };
        // [o_last[15], o[0..15]] and [e[1..16], e_next[0]].
        let o_prev = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
            _mm512_castps_si512(o),
            _mm512_castps_si512(o_last),
        ));
        let e_after = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(
            _mm512_castps_si512(e_next),
            _mm512_castps_si512(e),
        ));
        // SAFETY: `k * 16 + 16 <= tp` for `first`, `last` and every row.
        unsafe {
            let f = _mm512_loadu_ps(first.as_ptr().add(k * LANES));
            let l = _mm512_loadu_ps(last.as_ptr().add(k * LANES));
            let out = |j: usize| v.add(rows[j] + k * LANES);
            _mm512_storeu_ps(out(0), _mm512_sub_ps(_mm512_mul_ps(o_prev, f), o));
            _mm512_storeu_ps(out(1), _mm512_add_ps(e, o));
            _mm512_storeu_ps(out(2), _mm512_sub_ps(o, e));
            _mm512_storeu_ps(out(3), _mm512_sub_ps(e, _mm512_mul_ps(e_after, l)));
        }
        o_last = o;
        e = e_next;
        o = o_next;
    }
}

/// Never called: plans are only made when AVX-512F is present.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn column_pass(_: &[f32], _: &[f32], _: &[f32], _: *mut f32, _: [usize; 4]) {
    unreachable!("winograd convolution needs AVX-512F")
}

/// [`super::cpu::write_floats`] for the short rows of small images: masked
/// vector loads and stores instead of a call to `memcpy`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn copy_short(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let n = src.len();
    assert!(dst.len() == n);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut k = 0;
        while k < n {
            let len = (n - k).min(LANES);
            let mask: __mmask16 = if len == LANES { !0 } else { (1u16 << len) - 1 };
            // SAFETY: the mask covers `k .. k + len <= n` of both slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(k));
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(k).cast::<f32>(), mask, v);
            }
            k += len;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    super::cpu::write_floats(dst, src);
}

/// `dst[2k] = even[k]`, `dst[2k + 1] = odd[k]`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn interleave(even: &[f32], odd: &[f32], dst: &mut [f32]) {
    let n = even.len();
    assert!(odd.len() == n && dst.len() == 2 * n);
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        while k + LANES <= n {
            // SAFETY: `k + 16 <= n` and `2k + 32 <= dst.len()`, checked by
            // the loop condition and the assert.
            unsafe {
                let a = _mm512_loadu_ps(even.as_ptr().add(k));
                let b = _mm512_loadu_ps(odd.as_ptr().add(k));
                _mm512_storeu_ps(
                    dst.as_mut_ptr().add(2 * k),
                    _mm512_permutex2var_ps(a, lo, b),
                );
                let q = dst.as_mut_ptr().add(2 * k + LANES);
                _mm512_storeu_ps(q, _mm512_permutex2var_ps(a, hi, b));
            }
            k += LANES;
        }
    }
    for k in k..n {
        dst[2 * k] = even[k];
        dst[2 * k + 1] = odd[k];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv_fwd, with_portable_conv};
    use crate::ops::Conv2dParams;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    #[test]
    fn winograd_matches_im2col_gemm() {
        if !direct::avx512() || !enabled() {
            return;
        }
        // (n, c_in, h, w, c_out): the CIFAR stages, a stem, tile counts
        // that are not whole vectors (6x10: 15 tiles; 14x14: 49), a
        // non-square map, a single tile.
        let cases = [
            (2, 16, 32, 32, 16),
            (2, 32, 16, 16, 32),
            (3, 64, 8, 8, 64),
            (2, 3, 32, 32, 16),
            (1, 5, 6, 10, 8),
            (1, 8, 14, 14, 24),
            (2, 4, 4, 12, 8),
            (1, 3, 2, 2, 8),
        ];
        for (n, ci, h, w, co) in cases {
            let p = Conv2dParams {
                stride: 1,
                padding: 1,
                groups: 1,
            };
            let g = ConvGeom::new(&[n, ci, h, w], &[co, ci, 3, 3], p).unwrap();
            let x = data(n * ci * h * w, 1);
            let wt = data(co * ci * 9, 2);
            let plan = Plan::new(&g, &wt).expect("winograd applies");
            // Scratch full of garbage: the plan must not depend on it.
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let per = co * h * w;
            let mut y = vec![f32::NAN; n * per];
            for i in 0..n {
                plan.run(
                    &x[i * ci * h * w..(i + 1) * ci * h * w],
                    crate::ops::cpu::as_uninit(&mut y[i * per..(i + 1) * per]),
                    &mut scratch,
                );
            }
            let want = with_portable_conv(|| conv_fwd(&g, &x, &wt));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (k, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-6 * scale * (ci as f32).sqrt() + 1e-6,
                    "{a} vs {b} at {k} for {:?}",
                    (n, ci, h, w, co)
                );
            }
            // The entry point takes this path.
            assert_eq!(conv_fwd(&g, &x, &wt), y);
        }
    }

    #[test]
    fn winograd_declines_other_geometries() {
        let p = |stride, padding, groups| Conv2dParams {
            stride,
            padding,
            groups,
        };
        let w = data(16 * 16 * 9, 3);
        for (x, wd, prm) in [
            ([1, 16, 8, 8], [16, 16, 3, 3], p(2, 1, 1)),
            ([1, 16, 8, 8], [16, 16, 3, 3], p(1, 0, 1)),
            ([1, 16, 8, 8], [16, 8, 3, 3], p(1, 1, 2)),
            ([1, 16, 7, 7], [16, 16, 3, 3], p(1, 1, 1)),
            ([1, 16, 8, 8], [12, 16, 3, 3], p(1, 1, 1)),
        ] {
            let g = ConvGeom::new(&x, &wd, prm).unwrap();
            assert!(Plan::new(&g, &w).is_none(), "{x:?} {wd:?} {prm:?}");
        }
    }
}
