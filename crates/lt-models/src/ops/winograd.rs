//! Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions on
//! CPUs with AVX2 and FMA (AVX-512 where present).
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
//! contiguously), so the new code is the transforms: of the input, of the
//! products back to outputs, and of the output gradient for the weight
//! gradient ([`FilterPlan`], on the direct weight-gradient tile).
//!
//! Used where F(4x4, 3x3) ([`super::winograd_f4`]) declines (sizes not a
//! multiple of 4 and 8, switched off; for the weight gradient also maps
//! under 16x16 and wide layers): by the forward pass and, through the
//! flipped kernel (also 3x3, stride 1, padding 1), by the input gradient;
//! by the weight gradient where the direct kernel declines (short grids,
//! where the alternative is im2col + gemm). Only where the transformed operands stay in cache
//! ([`MAX_TRANSFORMED_INPUT`], [`MAX_FILTER_PAIRS`]): the CIFAR ResNets,
//! and, on AVX2 and AVX-512 alike, maps of 64 tiles and more
//! ([`takes_large_map`]: ResNet-50's 28x28 and 14x14 layers), the forward
//! products a group of positions at a time over all output channels
//! ([`grouped_products`]), the weight gradient of wide layers by gemm. Maps 8
//! or a multiple of 16 wide are transformed in registers, chunk by chunk
//! of 16 tiles (AVX-512) or 8 (AVX2), with the same bits as the
//! plane-by-plane transforms that other even widths take.
//!
//! The arithmetic differs from the direct convolution's (sums in another
//! order, through the transforms): outputs agree to about 1e-6 relative,
//! not bit for bit. [`set_enabled`] switches the path off for a
//! reproduction of results made before it existed.

use super::conv::ConvGeom;
use super::direct::{self, LANES, MR, NP, V};
use super::isa::Isa;
use super::lanes::{Lanes, PartLanes};
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

/// Everything about one convolution's forward pass that does not depend
/// on the image.
#[derive(Debug)]
pub(crate) struct Plan {
    t: Tiles,
    /// Transformed kernel, `[ξ][block of 8 output channels][c_in][8]`.
    u: Vec<f32>,
    /// Row offsets of the transformed input's channels, `c * rs`.
    offs: Vec<u32>,
    /// Row stride of the transformed input and of the products: `tp`
    /// plus one cache line.
    rs: usize,
    /// Positions per pass of [`grouped_products`] where the transformed
    /// input exceeds [`MAX_TRANSFORMED_INPUT`]; `None`: block by block.
    group: Option<usize>,
}

/// Floats added to each row of the forward pass's transformed input and
/// products, so that their rows and their 16 blocks are not a power of two
/// apart (16 streams 16 KiB apart share a set of the L1 cache). Measured
/// on the ResNet-32 step, 4 alternating runs each: 340–414 img/s with the
/// transformed input padded against 326–405 unpadded (AVX-512 EPYC),
/// within that machine's noise but not below it; padding the products too
/// took the output transform from 12 % to 6 % of the time of a CIFAR
/// stage-1 convolution's forward and backward (`conv_ops` bench, AVX2
/// EPYC). The arithmetic is the same.
pub(super) const ROW_PAD: usize = 16;

impl Plan {
    /// A plan for `g` with weights `w` `(C_out, C_in, 3, 3)`, or `None` when
    /// the path does not apply (see [`Tiles::new`]) or the transformed
    /// input is too large ([`MAX_TRANSFORMED_INPUT`], [`takes_large_map`]).
    pub fn new(g: &ConvGeom, w: &[f32]) -> Option<Self> {
        let t = Tiles::new(g)?;
        if g.c_in * t.tp > MAX_TRANSFORMED_INPUT && !takes_large_map(t.tp) {
            return None;
        }
        if g.c_in * t.tp * XI >= u32::MAX as usize {
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
        let rs = t.tp + ROW_PAD;
        let offs = (0..cin).map(|c| (c * rs) as u32).collect();
        let group = (g.c_in * t.tp > MAX_TRANSFORMED_INPUT).then(|| position_group(cin, rs, XI));
        Some(Self {
            t,
            u,
            offs,
            rs,
            group,
        })
    }

    /// Floats between the transformed input's blocks of ξ.
    fn v_block(&self) -> usize {
        Rows::padded_block(self.t.g.c_in, self.rs)
    }

    /// Floats of per-image scratch: the transformed input, the products of
    /// one block of output channels (of all of them with a position
    /// group), and rows for the transforms.
    pub fn scratch_len(&self) -> usize {
        let t = &self.t;
        XI * self.v_block() + XI * self.product_rows() * t.tp + t.band_len()
    }

    fn product_rows(&self) -> usize {
        product_rows(self.group, self.t.g.c_out)
    }

    /// Convolves one image: `x` `(C_in, H, W)` into `y` `(C_out, H, W)`,
    /// every element of which is written; `scratch` may hold anything.
    pub fn run(&self, x: &[f32], y: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        let g = &self.t.g;
        let (cin, hw, tp, rs) = (g.c_in, g.h * g.w, self.t.tp, self.rs);
        assert!(
            scratch.len() >= self.scratch_len(),
            "winograd conv: scratch too small"
        );
        assert!(
            x.len() == cin * hw && y.len() == g.c_out * hw,
            "winograd conv: bad image"
        );
        let vb = self.v_block();
        let (v, rest) = scratch.split_at_mut(XI * vb);
        // The products' rows are not padded: the padding is for the
        // transformed input's rows, which the tile reads one per channel;
        // the products are written and read in order (unpadded, F(4x4,
        // 3x3)'s fit the L1 cache at 16 tiles per row).
        let (m, band) = rest.split_at_mut(XI * self.product_rows() * tp);
        let at = Rows {
            block: vb,
            row: rs,
            col0: 0,
        };
        // SAFETY: AVX2 and FMA were detected when the plan was made.
        unsafe { self.t.transform_input(x, v, band, at) };
        let blocks = g.c_out / MR;
        let rows = ProductRows {
            position: MR * tp,
            row: tp,
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
            grouped_products(XI, group, t, &self.u, blocks, m, per_block, rows);
            for (blk, m) in m.chunks_exact(per_block).enumerate() {
                // SAFETY: AVX2 and FMA were detected when the plan was made.
                unsafe {
                    self.t
                        .transform_output(m, tp, &mut y[blk * MR * hw..(blk + 1) * MR * hw], band)
                };
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
            unsafe {
                self.t
                    .transform_output(m, tp, &mut y[blk * MR * hw..(blk + 1) * MR * hw], band)
            };
        }
    }
}

/// Largest transformed input per image and ξ (`C_in x tiles` floats) the
/// path takes (but see [`takes_large_map`]): 16 of them (512 KiB) stay in
/// a core's L2 cache while every block of output channels reads them. The
/// CIFAR ResNets' maps are at most 4,096; ResNet-50's 3x3 layers at 224²
/// are 12,544 to 50,176, and there a training step at batch 16 ran at 3.8
/// img/s through this path against 5.6 on the direct and gemm kernels
/// (AMD EPYC with AVX-512, 2 threads, before the AVX2 tile's rework).
const MAX_TRANSFORMED_INPUT: usize = 8192;

/// Tiles per row of the transformed operands from which a forward plan
/// ([`Plan`], [`super::winograd_f4::Plan`]) takes a map whatever the size
/// of its transformed input, running its
/// products a group of positions at a time ([`grouped_products`]); so
/// does the weight gradient's ([`FilterPlan`]) within its channel pairs.
///
/// The transformed kernel (`XI x C_in x C_out`) is read once per image,
/// each value for a whole row of tiles. `conv_ops`, batch 16, AVX2-only
/// AMD EPYC, 2 threads, against im2col + gemm: forward 28x28x128 (196
/// tiles) 23.0 -> 14.3 ms, 56x56x64 (F(4x4, 3x3), 196 tiles) 28.8 -> 9.8
/// ms, 14x14x256 (49 tiles, 64 lanes) 21.3 -> 19.2 ms (block by block it
/// only tied with gemm, 21.9 ms); forward + backward of the 56x56 layer
/// 47.7 -> 41.5 ms with the weight gradient on [`FilterPlan`] too, of
/// the 28x28 and 14x14 layers (wider than its lane accumulators: gemm on
/// the transformed operands, two images per call) 55.7 / 56.4 -> 49.8 /
/// 50.1 ms and 65.1 / 69.0 -> 60.5 / 63.0 ms. Maps
/// of fewer tiles waste more of the register tile's lanes and stay on
/// gemm, which rounds less.
///
/// On AVX-512 (Intel Xeon, 2 threads, `conv_ops --filter imagenet-3x3-`,
/// 2 alternating pairs) forward + backward of ResNet-50's 56x56, 28x28 and
/// 14x14 layers went 54.9 / 54.2 -> 37.3 / 37.8 ms, 49.2 / 49.6 -> 33.5 /
/// 33.4 ms and 43.2 / 45.3 -> 38.3 / 38.5 ms against im2col + gemm (the
/// limit above was measured there before the transforms and products were
/// reworked); a ResNet-50 training step at batch 16 5.5 / 5.5 / 5.6 ->
/// 5.7 / 5.9 / 5.8 img/s, inference at batch 64 21.7 / 22.7 -> 24.7 /
/// 24.1, ResNet-10 training at batch 32 31.8 / 32.2 -> 36.1 / 37.8.
const LARGE_MAP_TILES: usize = 64;

/// Whether a forward plan with rows of `tp` tiles takes a map whose
/// transformed input exceeds its cache limit (see [`LARGE_MAP_TILES`]).
pub(super) fn takes_large_map(tp: usize) -> bool {
    tp >= LARGE_MAP_TILES
}

/// Largest `C_in x C_out` of the weight gradient's lane accumulators:
/// they hold `16 x 16` floats per pair (4 MiB at 64 x 64). Wider layers
/// take the plan only on large maps ([`takes_large_map`]), their products
/// summed by gemm (one sum per transformed weight; lane accumulators of
/// 128 x 128 pairs were hardly faster than im2col + gemm on ResNet-50's
/// 28x28 layer, of 256 x 256 much slower on its 14x14 layer).
const MAX_FILTER_PAIRS: usize = 64 * 64;

/// Where the transforms write the row of ξ and channel `c`: at
/// `xi * block + c * row + col0`, the image's tiles from column `col0`.
/// `block` is not a multiple of 4 KiB where it can be helped: the 16 rows
/// of one channel are written together, and 16 streams a power of two
/// apart share a set of the L1 cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    pub(super) block: usize,
    pub(super) row: usize,
    pub(super) col0: usize,
}

impl Rows {
    /// Floats between the blocks of ξ for `channels` rows of `row` floats:
    /// a cache line past them, so that no two blocks are a multiple of
    /// 4 KiB apart because the rows happen to be (64 channels of 32-float
    /// rows were 8 KiB apart).
    pub(super) fn padded_block(channels: usize, row: usize) -> usize {
        channels * row + ROW_PAD
    }

    pub(super) fn at(&self, xi: usize, c: usize) -> usize {
        xi * self.block + c * self.row + self.col0
    }
}

/// The tiling of one convolution's images, shared by the forward pass
/// ([`Plan`]) and the weight gradient ([`FilterPlan`]), with the
/// transforms between images and tiles.
#[derive(Debug)]
struct Tiles {
    g: ConvGeom,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    /// Tiles per image rounded up to whole vectors: the row length of the
    /// transformed input and of the products.
    tp: usize,
    /// Per tile: 1 unless it is the first (`not_first`) or last
    /// (`not_last`) of its tile row, whose neighbour in the input
    /// transform is the zero padding.
    not_first: Vec<f32>,
    not_last: Vec<f32>,
    /// The instruction set whose register-level transforms this width
    /// takes ([`register_level`]); `None`: plane by plane.
    registers: Option<Isa>,
}

impl Tiles {
    /// The tiling of `g`, or `None` when the path does not apply (switched
    /// off, CPU without AVX2 and FMA, another geometry, groups, output
    /// channels not a multiple of 8, odd sizes).
    fn new(g: &ConvGeom) -> Option<Self> {
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
        if !applies || !enabled() || !direct::available() {
            return None;
        }
        let (th, tw) = (g.oh / 2, g.ow / 2);
        let tp = (th * tw).div_ceil(LANES) * LANES;
        let edge = |at: usize| (0..tp).map(|t| f32::from(u8::from(t % tw != at))).collect();
        Some(Self {
            g: *g,
            th,
            tw,
            tp,
            not_first: edge(0),
            not_last: edge(tw - 1),
            registers: register_level(g.w),
        })
    }

    /// Floats of band scratch the transforms need.
    fn band_len(&self) -> usize {
        let (w, plane) = (self.g.w, self.th * self.g.w);
        let input = w + 4 * plane;
        let output = 10 * self.tp + plane;
        input.max(output)
    }

    /// `V[ξ][c][col0 + t] = (B^T d B)[ξ]` for every channel `c` and tile `t`
    /// (`tp` of them; the padding tiles past the image get finite values,
    /// zeros plane by plane, whatever the rows hold in registers, and no
    /// output reads their products), at `at` ([`Rows`]), with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
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
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_input(&self, x: &[f32], v: &mut [f32], band: &mut [f32], at: Rows) {
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
            if let Some(isa) = self.registers {
                let vrow = |i: usize, j: usize| at.at(4 * i + j, c);
                assert!(
                    vrow(3, 3) + tp <= v.len(),
                    "winograd: transformed input too small"
                );
                let rows = std::array::from_fn(|i| std::array::from_fn(|j| vrow(i, j)));
                // SAFETY: `register_level` checked the CPU for `isa` and
                // the width; every row of `v` written starts at
                // `vrow(i, j)` and holds `tp` floats, inside `v` (asserted
                // for the last).
                unsafe { input_chunks(isa, xc, g.h, w, first, last, v.as_mut_ptr(), rows) };
                continue;
            }
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
                    combine_rows([a0, a1, a2, a3], [c0, c1, c2, c3], |[a0, a1, a2, a3]| {
                        [a0 - a2, a1 + a2, a2 - a1, a1 - a3]
                    });
                }
            }
            // Padded columns 2tx .. 2tx+3 are input columns 2tx-1 .. 2tx+2:
            // the odd column of tile tx - 1, the even and odd of tile tx,
            // the even of tile tx + 1.
            for i in 0..4 {
                let vrow = |j: usize| at.at(4 * i + j, c);
                assert!(
                    vrow(3) + tp <= v.len(),
                    "winograd: transformed input too small"
                );
                // SAFETY: each row of
                // `v` starts at `vrow(j)` and holds `tp` floats, inside `v`
                // (asserted for the last).
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
    /// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`; `m` is `[ξ][8]` rows of
    /// `tp` products, `ms >= tp` floats apart, `y`
    /// the block's `(8, H, W)` outputs. Both passes are element-wise over
    /// rows of `tp` tiles; the two outputs of each tile in an output row
    /// are merged (with `W = 2 TW`, the merged plane is every other output
    /// row), then copied row by row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_output(
        &self,
        m: &[f32],
        ms: usize,
        y: &mut [MaybeUninit<f32>],
        band: &mut [f32],
    ) {
        let g = &self.g;
        let (tp, th, hw, w) = (self.tp, self.th, g.h * g.w, g.w);
        let t_len = th * self.tw;
        let (sd, rest) = band.split_at_mut(8 * tp);
        let (y0, rest) = rest.split_at_mut(tp);
        let (y1, rest) = rest.split_at_mut(tp);
        let z = &mut rest[..th * w];
        for r in 0..MR {
            if let Some(isa) = self.registers {
                let yr = &mut y[r * hw..(r + 1) * hw];
                // SAFETY: `register_level` checked the CPU for `isa` and
                // the width; `m` holds `XI * MR` rows `ms` apart.
                unsafe { output_chunks(isa, &m[..XI * MR * ms], ms, r, tp, g.h, w, yr) };
                continue;
            }
            let e = |xi: usize| &m[(xi * MR + r) * ms..][..tp];
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
                // SAFETY: slices only (the AVX-512 loops check the CPU).
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

    /// `D[ξ][co][col0 + t] = (A dY A^T)[ξ]` for every output channel `co`
    /// and tile `t` of one image's output gradient `dy` `(C_out, H, W)`
    /// (`tp` of them, zeros past the image's), at `at` ([`Rows`]), with
    /// `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`: the gradient with respect to
    /// the products `M`, since `Y = A^T M A`. Row pass over each pair of
    /// output rows, then the column pass on its even and odd columns, as in
    /// [`Tiles::transform_input`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA ([`direct::available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_grad(&self, dy: &[f32], d: &mut [f32], band: &mut [f32], at: Rows) {
        let g = &self.g;
        let (cout, tp, th, w) = (g.c_out, self.tp, self.th, g.w);
        let plane = th * w;
        let comb = &mut band[..4 * plane];
        for co in 0..cout {
            let yc = &dy[co * g.h * w..(co + 1) * g.h * w];
            if let Some(isa) = self.registers {
                let drow = |i: usize, j: usize| at.at(4 * i + j, co);
                assert!(
                    drow(3, 3) + tp <= d.len(),
                    "winograd: transformed gradient too small"
                );
                let rows = std::array::from_fn(|i| std::array::from_fn(|j| drow(i, j)));
                // SAFETY: as in `transform_input`.
                unsafe { grad_chunks(isa, yc, g.h, w, tp, d.as_mut_ptr(), rows) };
                continue;
            }
            {
                let (c0, rest) = comb.split_at_mut(plane);
                let (c1, rest) = rest.split_at_mut(plane);
                let (c2, c3) = rest.split_at_mut(plane);
                for ty in 0..th {
                    let y0 = &yc[2 * ty * w..(2 * ty + 1) * w];
                    let y1 = &yc[(2 * ty + 1) * w..(2 * ty + 2) * w];
                    let dst = ty * w..(ty + 1) * w;
                    let (c0, c1) = (&mut c0[dst.clone()], &mut c1[dst.clone()]);
                    let (c2, c3) = (&mut c2[dst.clone()], &mut c3[dst]);
                    combine_rows([y0, y1, y1, y1], [c0, c1, c2, c3], |[y0, y1, _, _]| {
                        [y0, y0 + y1, y0 - y1, -y1]
                    });
                }
            }
            for i in 0..4 {
                let drow = |j: usize| at.at(4 * i + j, co);
                assert!(
                    drow(3) + tp <= d.len(),
                    "winograd: transformed gradient too small"
                );
                // SAFETY: each row of
                // `d` starts at `drow(j)` and holds `tp` floats, inside `d`
                // (asserted for the last).
                unsafe {
                    grad_column_pass(
                        &comb[i * plane..(i + 1) * plane],
                        tp,
                        d.as_mut_ptr(),
                        [drow(0), drow(1), drow(2), drow(3)],
                    )
                };
            }
        }
    }
}

/// Images whose tiles the weight gradient lays side by side on one row, at
/// least this many tiles: each call of the register tile then sums a long
/// enough row to pay for adding its 24 accumulators to memory (the CIFAR
/// ResNet's 8x8 maps have 16 tiles per image).
pub(super) const MIN_FILTER_ROW: usize = 256;

/// Weight gradient by Winograd F(2x2, 3x3): with `U = G g G^T` and
/// `Y = A^T [U ⊙ V] A`, `dL/dU[ξ][co][ci] = sum over tiles of
/// D[ξ][co][t] V[ξ][ci][t]` (`D = A dY A^T`) and `dL/dg = G^T dL/dU G`:
/// 16 products over the tiles instead of 9 taps over the pixels (2.25
/// times fewer multiply-adds), summed by the direct weight-gradient tile
/// ([`direct::wtile`]) over the tiles of several images at once. The
/// direct weight gradient comes first where it applies (long grids, the
/// 32x32 maps of a CIFAR ResNet): at 16 channels the transforms cost
/// about what the saved multiply-adds do (measured within noise of each
/// other on the ResNet-32 step); on the shorter grids, where the
/// alternative is im2col + gemm, this path is the faster.
#[derive(Debug)]
pub(crate) struct FilterPlan {
    t: Tiles,
    /// Images per row of the transformed operands.
    batch: usize,
    /// Row offsets of the transformed input's channels, `c * row`.
    offs: Vec<u32>,
    /// More than [`MAX_FILTER_PAIRS`] channel pairs on a large map
    /// ([`takes_large_map`]): the products go through gemm into plain
    /// sums, one per transformed weight, instead of 16 lanes each.
    wide: bool,
}

impl FilterPlan {
    /// A plan for `g`, or `None` when the path does not apply (see
    /// [`Tiles::new`]) or its operands are too large for the caches
    /// ([`MAX_TRANSFORMED_INPUT`] but for [`takes_large_map`],
    /// [`MAX_FILTER_PAIRS`]).
    pub fn new(g: &ConvGeom) -> Option<Self> {
        let t = Tiles::new(g)?;
        let large = takes_large_map(t.tp);
        let wide = g.c_in * g.c_out > MAX_FILTER_PAIRS;
        if (g.c_in * t.tp > MAX_TRANSFORMED_INPUT || wide) && !large {
            return None;
        }
        // Wide layers one image per gemm call: forward + backward of
        // ResNet-50's 28x28 and 14x14 layers (`conv_ops`, 2 pairs) 49.9 /
        // 47.8 -> 46.8 / 46.6 ms and 63.3 / 59.9 -> 62.1 / 59.1 ms against
        // two and four images per call; five and sixteen were slower.
        let batch = if wide {
            1
        } else {
            MIN_FILTER_ROW.div_ceil(t.tp).clamp(1, g.n.max(1))
        };
        let row = batch * t.tp;
        if g.c_in * row * XI >= u32::MAX as usize {
            return None;
        }
        let offs = (0..g.c_in).map(|c| (c * row) as u32).collect();
        Some(Self {
            t,
            batch,
            offs,
            wide,
        })
    }

    /// Partial sums per transformed weight: 16 lanes, or 1 ([`Self::wide`]).
    fn sums_per_weight(&self) -> usize {
        if self.wide {
            1
        } else {
            V
        }
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
    /// one batch of images, and rows for the transforms; it may hold
    /// anything when passed.
    pub fn scratch_len(&self) -> usize {
        let (vb, db) = self.blocks();
        XI * (vb + db) + self.t.band_len()
    }

    /// Floats of the lane accumulator [`FilterPlan::accumulate`] adds into:
    /// 16 partial sums per transformed weight.
    pub fn lanes_len(&self) -> usize {
        let g = &self.t.g;
        XI * g.c_out * g.c_in * self.sums_per_weight()
    }

    /// Adds the products of `k <= batch` images (`x` `(k, C_in, H, W)`,
    /// `dy` `(k, C_out, H, W)`) to `lanes`.
    pub fn accumulate(
        &self,
        x: &[f32],
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
            "winograd filter: bad images"
        );
        assert!(
            scratch.len() >= self.scratch_len() && lanes.len() == self.lanes_len(),
            "winograd filter: bad scratch"
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
                t.transform_input(xb, v, band, block(vb));
                let dyb = &dy[b * cout * hw..(b + 1) * cout * hw];
                t.transform_grad(dyb, d, band, block(db));
            }
        }
        if self.wide {
            // `dU[ξ][co][ci] += sum over the row's tiles of D V`: row-major
            // `C_out x C_in` per position, the reduction contiguous in both.
            // SAFETY: every sum is written (zeroed) on the `init` call.
            unsafe {
                lanes.update(|out, init| {
                    if init {
                        out.fill(MaybeUninit::new(0.0));
                    }
                    let du = super::cpu::assume_init(out);
                    for (xi, du) in du.chunks_exact_mut(cout * cin).enumerate() {
                        super::cpu::sgemm(
                            cout,
                            cin,
                            k * tp,
                            super::cpu::MatMut {
                                data: du,
                                rs: cin,
                                cs: 1,
                            },
                            true,
                            super::cpu::Mat {
                                data: &d[xi * db..],
                                rs: row,
                                cs: 1,
                            },
                            super::cpu::Mat {
                                data: &v[xi * vb..],
                                rs: 1,
                                cs: row,
                            },
                            gemm::Parallelism::None,
                        );
                    }
                })
            }
            return;
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
            lanes.update(|out, init| sum_products(XI, operands, &self.offs, cin, cout, out, init))
        }
    }

    /// The weight gradient `(C_out, C_in, 3, 3)` from the summed lanes:
    /// `dU = sum of each weight's 16 lanes`, then `dg = G^T dU G`, output
    /// channels in parallel.
    pub fn finish(&self, lanes: &PartLanes) -> Vec<f32> {
        let g = &self.t.g;
        let (cin, cout, per) = (g.c_in, g.c_out, self.sums_per_weight());
        let init = || vec![0f32; XI * cin * per];
        super::cpu::par_zeroed_init_per_chunk(cout * cin * 9, cin * 9, init, |summed, co, dw| {
            // Output channel `co`'s lanes, position after position.
            for (xi, s) in summed.chunks_exact_mut(cin * per).enumerate() {
                let at = (xi * cout + co) * cin * per;
                lanes.sum_into(at..at + cin * per, s);
            }
            // SAFETY: AVX2 and FMA: Winograd plans are only made where they
            // were detected.
            unsafe { fold_channel(summed, per, dw) };
        })
    }
}

/// `dg = G^T dU G` per lane (`du[ξ][lane]`, `dg[tap][lane]`), with `G^T`
/// of F(2x2, 3x3) by halves, sums and differences. Lane by lane the
/// operations of one kernel alone, so the lanes' values do not depend on
/// `N`.
#[inline(always)]
fn gradient_lanes<T: Copy, const N: usize>(
    du: &[[T; N]; XI],
    add: impl Fn(T, T) -> T,
    sub: impl Fn(T, T) -> T,
    half: impl Fn(T) -> T,
) -> [[T; N]; 9] {
    // tmp = G^T dU (3 x 4), then dg = tmp G (3 x 3).
    let tmp: [[[T; N]; 4]; 3] = [
        std::array::from_fn(|j| {
            std::array::from_fn(|q| add(du[j][q], half(add(du[4 + j][q], du[8 + j][q]))))
        }),
        std::array::from_fn(|j| std::array::from_fn(|q| half(sub(du[4 + j][q], du[8 + j][q])))),
        std::array::from_fn(|j| {
            std::array::from_fn(|q| add(half(add(du[4 + j][q], du[8 + j][q])), du[12 + j][q]))
        }),
    ];
    // Placeholders (`T` has no zero of its own): every tap is written below.
    let mut dw = [[du[0][0]; N]; 9];
    for (k, t) in tmp.iter().enumerate() {
        dw[3 * k] = std::array::from_fn(|q| add(t[0][q], half(add(t[1][q], t[2][q]))));
        dw[3 * k + 1] = std::array::from_fn(|q| half(sub(t[1][q], t[2][q])));
        dw[3 * k + 2] = std::array::from_fn(|q| add(half(add(t[1][q], t[2][q])), t[3][q]));
    }
    dw
}

/// One output channel's weight gradient `dw` `(C_in, 3, 3)` from its
/// summed lanes `summed` `[ξ][C_in][per]`: each transformed weight's `per`
/// partial sums added in order from `-0.0` (as `Iterator::sum`), then
/// [`gradient_lanes`]; 8 input channels per vector where `per` is 16 (the
/// lanes, transposed 8 x 8 in registers) or 1, the rest one by one
/// (kernel by kernel in scalar code, this fold was about 1 % of a CIFAR
/// ResNet-32 training step).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`direct::available`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn fold_channel(summed: &[f32], per: usize, dw: &mut [f32]) {
    let cin = dw.len() / 9;
    assert!(summed.len() >= XI * cin * per, "winograd filter: bad lanes");
    let mut ci = 0;
    #[cfg(target_arch = "x86_64")]
    if per == V || per == 1 {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 under the caller's contract; every load reads 8
        // floats of rows `ci .. ci + 8 <= C_in` of `summed` (asserted).
        unsafe {
            while ci + 8 <= cin {
                let du: [[__m256; 1]; XI] = std::array::from_fn(|xi| {
                    let p = summed.as_ptr().add((xi * cin + ci) * per);
                    let mut acc = _mm256_set1_ps(-0.0);
                    if per == 1 {
                        acc = _mm256_add_ps(acc, _mm256_loadu_ps(p));
                    } else {
                        for half in 0..V / 8 {
                            let rows =
                                std::array::from_fn(|q| _mm256_loadu_ps(p.add(q * per + 8 * half)));
                            for lane in transpose8(rows) {
                                acc = _mm256_add_ps(acc, lane);
                            }
                        }
                    }
                    [acc]
                });
                let g = gradient_lanes(
                    &du,
                    |a, b| _mm256_add_ps(a, b),
                    |a, b| _mm256_sub_ps(a, b),
                    |a| _mm256_mul_ps(_mm256_set1_ps(0.5), a),
                );
                let mut taps = [[0f32; 8]; 9];
                for (t, g) in taps.iter_mut().zip(g) {
                    _mm256_storeu_ps(t.as_mut_ptr(), g[0]);
                }
                for (q, dw) in dw[ci * 9..(ci + 8) * 9].chunks_exact_mut(9).enumerate() {
                    for (d, t) in dw.iter_mut().zip(&taps) {
                        *d = t[q];
                    }
                }
                ci += 8;
            }
        }
    }
    for ci in ci..cin {
        let du: [[f32; 1]; XI] =
            std::array::from_fn(|xi| [summed[(xi * cin + ci) * per..][..per].iter().sum()]);
        let g = gradient_lanes(&du, |a, b| a + b, |a, b| a - b, |a| 0.5 * a);
        for (d, g) in dw[ci * 9..][..9].iter_mut().zip(g) {
            *d = g[0];
        }
    }
}

/// The 8 x 8 transpose of `rows`: element `q` of result `l` is element
/// `l` of row `q`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transpose8(rows: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs, then quadruples within each 128-bit half, then the halves.
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let s0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// One image's (or row of images') transformed input for the forward
/// products: `positions` blocks `vb` floats apart of `C_in` rows `rs`
/// apart, `tp` tiles each; `offs[c] = c * rs`.
pub(super) struct Operands<'a> {
    pub(super) v: &'a mut [f32],
    pub(super) vb: usize,
    pub(super) rs: usize,
    pub(super) tp: usize,
    pub(super) offs: &'a [u32],
}

/// Where [`block_products`] writes the products: row `r` of position ξ at
/// `ξ position + r row`, `tp` floats.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProductRows {
    pub(super) position: usize,
    pub(super) row: usize,
}

/// The forward products of one block of 8 output channels, `m[ξ position +
/// r row + t] = sum over c of U[ξ][c][r] V[ξ][c][t]` ([`ProductRows`]), by
/// the direct convolution's register tile ([`direct::tile_into`]), for
/// both Winograd forward plans; `u` holds the block's transformed kernel
/// for ξ = 0 at its start, each next ξ `u_stride` floats on (`C_in x 8`
/// floats each).
pub(super) fn block_products(
    positions: usize,
    t: Operands<'_>,
    u: &[f32],
    u_stride: usize,
    m: &mut [f32],
    at: ProductRows,
) {
    let Operands {
        v,
        vb,
        rs,
        tp,
        offs,
    } = t;
    let cin = offs.len();
    assert!(
        tp.is_multiple_of(LANES)
            && rs >= tp
            && cin >= 1
            && v.len() >= (positions - 1) * vb + cin * rs
            && u.len() >= (positions - 1) * u_stride + cin * MR
            && m.len() >= (positions - 1) * at.position + (MR - 1) * at.row + tp,
        "winograd: bad forward operands"
    );
    // Positions two at a time: a strip of a single vector (16 lanes) is
    // computed for both at once ([`direct::tile_pair_into`]).
    let mut xi = 0;
    while xi < positions {
        let n = (positions - xi).min(2);
        let vx: [&[f32]; 2] = std::array::from_fn(|i| &v[(xi + i % n) * vb..][..cin * rs]);
        let ux: [&[f32]; 2] = std::array::from_fn(|i| &u[(xi + i % n) * u_stride..][..cin * MR]);
        let mut t0 = 0;
        while t0 < tp {
            let nv = ((tp - t0) / LANES).min(NP / LANES);
            // SAFETY: AVX2 and FMA were detected when the calling plan was
            // made; each `ux[i]` holds `cin * MR` floats; the largest read
            // is `offs[cin-1] + t0 + nv*16 <= (cin-1)*rs + tp`, inside
            // `vx[i]` (`cin * rs`); row `r` of position `p` is written at
            // `p position + r row + t0 .. + nv*16 <= p position + r row +
            // tp`, inside `m` (asserted).
            unsafe {
                let out: [*mut f32; 2] =
                    std::array::from_fn(|i| m.as_mut_ptr().add((xi + i % n) * at.position + t0));
                if nv == 1 && n == 2 {
                    direct::tile_pair_into([&vx[0][t0..], &vx[1][t0..]], offs, ux, out, at.row);
                } else {
                    for i in 0..n {
                        direct::tile_into(nv, &vx[i][t0..], offs, ux[i], out[i], at.row);
                    }
                }
            }
            t0 += nv * LANES;
        }
        xi += n;
    }
}

/// Bytes of transformed input one pass of [`grouped_products`] reads for
/// every block of output channels: half a core's L2 cache (512 KiB on the
/// EPYCs measured).
const GROUP_BYTES: usize = 256 << 10;

/// Positions ξ per pass of [`grouped_products`] for a transformed input
/// of `C_in` rows `rs` floats apart: as many as [`GROUP_BYTES`] hold, an
/// even number (the register tile pairs positions) from 2 to `positions`.
pub(super) fn position_group(cin: usize, rs: usize, positions: usize) -> usize {
    let per = cin * rs * std::mem::size_of::<f32>();
    (GROUP_BYTES / per.max(1) / 2 * 2).clamp(2, positions)
}

/// Rows of products per position a forward plan holds at once: one
/// block's, or every output channel's where the products go a group of
/// positions at a time ([`grouped_products`]).
pub(super) fn product_rows(group: Option<usize>, c_out: usize) -> usize {
    if group.is_some() {
        c_out
    } else {
        MR
    }
}

/// The forward products of every block of 8 output channels, for a
/// transformed input too large for the L2 cache ([`takes_large_map`]):
/// a group of `group` positions at a time for all blocks, so that the
/// group's transformed input stays in L2 while every block reads it
/// (block by block, each block read all of it from further away: 32 MiB
/// per image of a 14x14 map with 256 channels). Block `blk`'s products go
/// to `m[blk per_block ..]` as [`ProductRows`] `at` lays them; each is the
/// same chain of multiply-adds as [`block_products`] block by block
/// computes, so the same bits. `u` is the whole transformed kernel,
/// `[ξ][block][C_in][8]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn grouped_products(
    positions: usize,
    group: usize,
    t: Operands<'_>,
    u: &[f32],
    blocks: usize,
    m: &mut [f32],
    per_block: usize,
    at: ProductRows,
) {
    let Operands {
        v,
        vb,
        rs,
        tp,
        offs,
    } = t;
    let (cin, u_stride) = (offs.len(), blocks * offs.len() * MR);
    let mut x0 = 0;
    while x0 < positions {
        let n = group.min(positions - x0);
        for blk in 0..blocks {
            block_products(
                n,
                Operands {
                    v: &mut v[x0 * vb..],
                    vb,
                    rs,
                    tp,
                    offs,
                },
                &u[x0 * u_stride + blk * cin * MR..],
                u_stride,
                &mut m[blk * per_block + x0 * at.position..],
                at,
            );
        }
        x0 += n;
    }
}

/// The transformed operands of a batch of images for the weight gradient:
/// `positions` blocks (one per ξ) of `C_in` input rows `vb` floats apart
/// and of `C_out` gradient rows `db` apart, rows of `row` floats of which
/// the first `filled` hold the images' tiles.
pub(super) struct Transformed<'a> {
    pub(super) v: &'a mut [f32],
    pub(super) vb: usize,
    pub(super) d: &'a mut [f32],
    pub(super) db: usize,
    pub(super) row: usize,
    pub(super) filled: usize,
}

/// `lanes[((ξ C_out + co) C_in + ci) 16 + l] += sum over the tiles t = l
/// (mod 16) of D[ξ][co][t] V[ξ][ci][t]`, by the direct weight-gradient tile
/// ([`direct::wtile`]), for both Winograd weight gradients (F(2x2, 3x3)
/// here, F(4x4, 3x3) in [`super::winograd_f4`]); `offs[c] = c * row`.
/// The columns past `filled` (absent images) are zeroed in `v` and `d`
/// first, so they add nothing whatever the scratch held there. With
/// `init` every lane is written (`0 + sum`), and `lanes` may start
/// uninitialised.
///
/// # Safety
/// Unless `init` is set, every lane must be initialised.
pub(super) unsafe fn sum_products(
    positions: usize,
    t: Transformed<'_>,
    offs: &[u32],
    cin: usize,
    cout: usize,
    lanes: &mut [MaybeUninit<f32>],
    init: bool,
) {
    let Transformed {
        v,
        vb,
        d,
        db,
        row,
        filled,
    } = t;
    assert!(
        row.is_multiple_of(LANES)
            && offs.len() == cin
            && v.len() >= (positions - 1) * vb + cin * row
            && d.len() >= (positions - 1) * db + cout * row
            && lanes.len() == positions * cout * cin * V
            && cout.is_multiple_of(MR),
        "winograd filter: bad operands"
    );
    if filled < row {
        for xi in 0..positions {
            for co in 0..cout {
                d[xi * db + co * row..][filled..row].fill(0.0);
            }
            for ci in 0..cin {
                v[xi * vb + ci * row..][filled..row].fill(0.0);
            }
        }
    }
    for xi in 0..positions {
        let vx = &v[xi * vb..][..cin * row];
        for blk in 0..cout / MR {
            let co0 = xi * cout + blk * MR;
            let dd = &d[xi * db + blk * MR * row..][..MR * row];
            let out = &mut lanes[co0 * cin * V..(co0 + MR) * cin * V];
            let mut c = 0;
            while c < cin {
                let nk = (cin - c).min(3);
                let offs = &offs[c..c + nk];
                // SAFETY: AVX2 and FMA were detected when the calling plan
                // was made; `dd` holds MR rows of `row` floats (a multiple
                // of 16); `vx` holds `cin` rows of `row`, so `offs[j] + row
                // <= vx.len()`; `out` holds MR rows of `cin * 16` lanes,
                // initialised unless `init` (the contract), and `c + nk <=
                // cin`. The loops cover every lane (`cout` is a multiple of
                // MR), so an `init` call writes them all.
                unsafe {
                    match nk {
                        3 => direct::wtile::<3>(vx, offs, dd, row, out, cin, c, init),
                        2 => direct::wtile::<2>(vx, offs, dd, row, out, cin, c, init),
                        _ => direct::wtile::<1>(vx, offs, dd, row, out, cin, c, init),
                    }
                }
                c += nk;
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
/// On CPUs without AVX-512 the same pass runs on AVX2.
///
/// # Safety
/// `first` and `last` must hold `tp` floats, a multiple of 16, `comb.len()
/// <= 2 * tp`, and `v + rows[j] .. + tp` must be writable.
#[inline(always)]
unsafe fn column_pass(comb: &[f32], first: &[f32], last: &[f32], v: *mut f32, rows: [usize; 4]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded under the caller's contract; plans exist only
    // where AVX2 and FMA do, and the AVX-512 pass runs where that does.
    unsafe {
        if direct::avx512() {
            column_pass_avx512(comb, first, last, v, rows)
        } else {
            column_pass_avx2(comb, first, last, v, rows)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (comb, first, last, v, rows);
        unreachable!("winograd convolution needs AVX2")
    }
}

/// Floats of `comb` around chunk `k` of 8 tiles, `comb[16 k - 2 .. 16 k +
/// 18]`, zeros outside `comb`: the chunk's columns and their neighbours'.
#[cfg(target_arch = "x86_64")]
fn chunk_with_neighbours(comb: &[f32], k: usize) -> [f32; 20] {
    let mut buf = [0f32; 20];
    for (i, b) in buf.iter_mut().enumerate() {
        if let Some(&x) = (16 * k + i).checked_sub(2).and_then(|j| comb.get(j)) {
            *b = x;
        }
    }
    buf
}

/// The even and odd elements of `p[0..16]`: the even and odd columns of 8
/// tiles.
///
/// # Safety
/// The CPU must support AVX2; `p .. p + 16` must be readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave8(p: *const f32) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    // SAFETY: readable by the contract.
    let (a, b) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
    split_avx2(a, b)
}

/// Even and odd elements of the 16 floats `(a, b)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn split_avx2(
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then the 64-bit
    // pairs in the order 0, 2, 1, 3.
    let order =
        |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    (
        order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
        order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
    )
}

/// [`column_pass`] on AVX2, 8 tiles at a time: the neighbours' columns are
/// the odd elements one tile back and the even ones one tile on, read from
/// `comb` (or from a zero-padded copy of the chunk at its ends). The same
/// operations in the same order as the AVX-512 pass, so the same bits.
///
/// # Safety
/// As for [`column_pass`], and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn column_pass_avx2(
    comb: &[f32],
    first: &[f32],
    last: &[f32],
    v: *mut f32,
    rows: [usize; 4],
) {
    use std::arch::x86_64::*;
    let (tp, n) = (first.len(), comb.len());
    debug_assert!(tp.is_multiple_of(8) && last.len() == tp && n <= 2 * tp);
    for k in 0..tp / 8 {
        let s0 = 16 * k;
        // SAFETY: in place, `comb[s0 - 2 .. s0 + 18]` is inside `comb`;
        // the copy holds 20 floats.
        let ((e, o), (_, o_prev), (e_after, _)) = unsafe {
            if s0 >= 2 && s0 + 18 <= n {
                let p = comb.as_ptr().add(s0);
                (
                    deinterleave8(p),
                    deinterleave8(p.sub(2)),
                    deinterleave8(p.add(2)),
                )
            } else {
                let buf = chunk_with_neighbours(comb, k);
                let p = buf.as_ptr();
                (
                    deinterleave8(p.add(2)),
                    deinterleave8(p),
                    deinterleave8(p.add(4)),
                )
            }
        };
        // SAFETY: `8 k + 8 <= tp` for `first`, `last` and every row of `v`.
        unsafe {
            let f = _mm256_loadu_ps(first.as_ptr().add(8 * k));
            let l = _mm256_loadu_ps(last.as_ptr().add(8 * k));
            let out = |j: usize| v.add(rows[j] + 8 * k);
            _mm256_storeu_ps(out(0), _mm256_sub_ps(_mm256_mul_ps(o_prev, f), o));
            _mm256_storeu_ps(out(1), _mm256_add_ps(e, o));
            _mm256_storeu_ps(out(2), _mm256_sub_ps(o, e));
            _mm256_storeu_ps(out(3), _mm256_sub_ps(e, _mm256_mul_ps(e_after, l)));
        }
    }
}

/// [`column_pass`] on AVX-512.
///
/// # Safety
/// As for [`column_pass`], and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn column_pass_avx512(
    comb: &[f32],
    first: &[f32],
    last: &[f32],
    v: *mut f32,
    rows: [usize; 4],
) {
    use std::arch::x86_64::*;
    let tp = first.len();
    debug_assert!(tp.is_multiple_of(LANES) && last.len() == tp && comb.len() <= 2 * tp);
    let halves = |k: usize| halves(comb, k);
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

/// `c[i][j] = f([a[0][j], a[1][j], a[2][j], a[3][j]])[i]` for every `j`
/// of the rows `c` (the `a` at least as long), in blocks of 8: the
/// compiler's own vector loop wants 32 elements or more and left the rows
/// of small maps (8 and 16 floats) scalar.
#[inline(always)]
fn combine_rows(a: [&[f32]; 4], c: [&mut [f32]; 4], f: impl Fn([f32; 4]) -> [f32; 4]) {
    const B: usize = 8;
    let n = c[0].len();
    assert!(c.iter().all(|c| c.len() == n) && a.iter().all(|a| a.len() >= n));
    let [c0, c1, c2, c3] = c;
    let mut j = 0;
    while j + B <= n {
        let a: [&[f32; B]; 4] = a.map(|r| r[j..j + B].try_into().expect("a block of B"));
        let mut o = [[0f32; B]; 4];
        for l in 0..B {
            let v = f([a[0][l], a[1][l], a[2][l], a[3][l]]);
            for (o, v) in o.iter_mut().zip(v) {
                o[l] = v;
            }
        }
        c0[j..j + B].copy_from_slice(&o[0]);
        c1[j..j + B].copy_from_slice(&o[1]);
        c2[j..j + B].copy_from_slice(&o[2]);
        c3[j..j + B].copy_from_slice(&o[3]);
        j += B;
    }
    for j in j..n {
        let v = f([a[0][j], a[1][j], a[2][j], a[3][j]]);
        (c0[j], c1[j], c2[j], c3[j]) = (v[0], v[1], v[2], v[3]);
    }
}

/// Which register-level transforms ([`input_chunks`], [`grad_chunks`],
/// [`output_chunks`]) read and write rows of width `w` directly, if any.
/// On AVX-512 a chunk is 16 tiles, 32 floats: part of one row (`w` a
/// multiple of 32), two rows (16) or four (8). On AVX2 it is 8 tiles, 16
/// floats: part of one row (a multiple of 16) or two (8). Other widths,
/// and CPUs without AVX2, take the plane-by-plane transforms.
fn register_level(w: usize) -> Option<Isa> {
    if direct::avx512() && (w.is_multiple_of(32) || w == 16 || w == 8) {
        Some(Isa::Avx512)
    } else if direct::available() && (w.is_multiple_of(16) || w == 8) {
        Some(Isa::Avx2)
    } else {
        None
    }
}

/// [`Tiles::transform_input`] for one channel `x` (`h` rows of `w`) in
/// registers, on the instruction set `isa` ([`input_chunks_avx512`],
/// [`input_chunks_avx2`]).
///
/// # Safety
/// `register_level(w) == Some(isa)` held on this CPU; `first` and `last`
/// hold `tp` floats (a multiple of 16) and `v + rows[i][j] .. + tp` must
/// be writable.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn input_chunks(
    isa: Isa,
    x: &[f32],
    h: usize,
    w: usize,
    first: &[f32],
    last: &[f32],
    v: *mut f32,
    rows: [[usize; 4]; 4],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded under the caller's contract.
    unsafe {
        match isa {
            Isa::Avx512 => input_chunks_avx512(x, h, w, first, last, v, rows),
            _ => input_chunks_avx2(x, h, w, first, last, v, rows),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, x, h, w, first, last, v, rows);
        unreachable!("the register-level transforms need AVX2")
    }
}

/// [`Tiles::transform_grad`] for one channel `dy` in registers, on `isa`.
///
/// # Safety
/// `register_level(w) == Some(isa)` held on this CPU; `tp` is a multiple
/// of 16 and `d + rows[i][j] .. + tp` must be writable.
#[inline(always)]
unsafe fn grad_chunks(
    isa: Isa,
    dy: &[f32],
    h: usize,
    w: usize,
    tp: usize,
    d: *mut f32,
    rows: [[usize; 4]; 4],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded under the caller's contract.
    unsafe {
        match isa {
            Isa::Avx512 => grad_chunks_avx512(dy, h, w, tp, d, rows),
            _ => grad_chunks_avx2(dy, h, w, tp, d, rows),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, dy, h, w, tp, d, rows);
        unreachable!("the register-level transforms need AVX2")
    }
}

/// [`Tiles::transform_output`] for output channel `r` of the block in
/// registers, on `isa`.
///
/// # Safety
/// `register_level(w) == Some(isa)` held on this CPU; `m` holds `XI * MR`
/// rows of `tp` floats (a multiple of 16), `ms >= tp` apart, and `y` is
/// the `(h, w)` plane.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_chunks(
    isa: Isa,
    m: &[f32],
    ms: usize,
    r: usize,
    tp: usize,
    h: usize,
    w: usize,
    y: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded under the caller's contract.
    unsafe {
        match isa {
            Isa::Avx512 => output_chunks_avx512(m, ms, r, tp, h, w, y),
            _ => output_chunks_avx2(m, ms, r, tp, h, w, y),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, m, ms, r, tp, h, w, y);
        unreachable!("the register-level transforms need AVX2")
    }
}

/// Rows `2 ty + m` of the plane `x` (`h` rows of `w`, a width with
/// AVX-512 [`register_level`] transforms) under the tiles `16 k .. 16 k +
/// 16`, in row-combination order (flat position `ty * w + col`, 32
/// floats), zeros for rows outside the image.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_chunk_avx512(
    x: &[f32],
    h: usize,
    w: usize,
    m: isize,
    k: usize,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == h * w && register_level(w) == Some(Isa::Avx512));
    let base = |ty: usize| {
        let r = 2 * ty as isize + m;
        (r >= 0 && (r as usize) < h).then(|| r as usize * w)
    };
    // SAFETY (every load): a row inside the image holds `w` floats from
    // `base`, and each load reads at most `w` of them from a column
    // below `w` (w = 8: the masked lanes only).
    let load16 = |ty: usize, col: usize| match base(ty) {
        Some(b) => unsafe { _mm512_loadu_ps(x.as_ptr().add(b + col)) },
        None => _mm512_setzero_ps(),
    };
    if w.is_multiple_of(32) {
        let p0 = 2 * LANES * k;
        let (ty, col) = (p0 / w, p0 % w);
        (load16(ty, col), load16(ty, col + LANES))
    } else if w == LANES {
        (load16(2 * k, 0), load16(2 * k + 1, 0))
    } else {
        // w == 8: four half rows, two per vector.
        let half = |ty: usize, high: bool, into: __m512| match base(ty) {
            Some(b) if high => unsafe {
                _mm512_mask_loadu_ps(into, 0xFF00, x.as_ptr().wrapping_add(b).wrapping_sub(8))
            },
            Some(b) => unsafe { _mm512_mask_loadu_ps(into, 0x00FF, x.as_ptr().add(b)) },
            None => into,
        };
        let ty = 4 * k;
        let z = _mm512_setzero_ps();
        (
            half(ty + 1, true, half(ty, false, z)),
            half(ty + 3, true, half(ty + 2, false, z)),
        )
    }
}

/// The inverse of [`row_chunk_avx512`]: writes `a`, `b` (32 floats in row order)
/// to rows `2 ty + m` of the plane `y`, skipping rows past the image.
///
/// # Safety
/// The CPU must support AVX-512F; `y` must be `h` rows of `w`
/// (a width with AVX-512 [`register_level`] transforms).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_row_chunk_avx512(
    y: &mut [MaybeUninit<f32>],
    h: usize,
    w: usize,
    m: usize,
    k: usize,
    a: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    debug_assert!(y.len() == h * w && register_level(w) == Some(Isa::Avx512));
    let base = |ty: usize| (2 * ty + m < h).then(|| (2 * ty + m) * w);
    let p = y.as_mut_ptr().cast::<f32>();
    // SAFETY (every store): as for the loads of `row_chunk_avx512`.
    let store16 = |ty: usize, col: usize, v: __m512| {
        if let Some(b) = base(ty) {
            unsafe { _mm512_storeu_ps(p.add(b + col), v) };
        }
    };
    if w.is_multiple_of(32) {
        let p0 = 2 * LANES * k;
        let (ty, col) = (p0 / w, p0 % w);
        store16(ty, col, a);
        store16(ty, col + LANES, b);
    } else if w == LANES {
        store16(2 * k, 0, a);
        store16(2 * k + 1, 0, b);
    } else {
        let half = |ty: usize, high: bool, v: __m512| match base(ty) {
            Some(b) if high => unsafe {
                _mm512_mask_storeu_ps(p.wrapping_add(b).wrapping_sub(8), 0xFF00, v)
            },
            Some(b) => unsafe { _mm512_mask_storeu_ps(p.add(b), 0x00FF, v) },
            None => {}
        };
        let ty = 4 * k;
        half(ty, false, a);
        half(ty + 1, true, a);
        half(ty + 2, false, b);
        half(ty + 3, true, b);
    }
}

/// Even and odd elements of the 32 floats `(a, b)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn split_avx512(
    a: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    (
        _mm512_permutex2var_ps(a, ie, b),
        _mm512_permutex2var_ps(a, io, b),
    )
}

/// [`input_chunks`] on AVX-512, entirely in registers: per chunk of 16
/// tiles, the four input rows under them are loaded
/// ([`row_chunk_avx512`]), combined (row pass), split into even and odd
/// columns and combined again (column pass, the neighbours shifted in from
/// the previous and next chunk); V row `4i + j` is written at `v +
/// rows[i][j]`.
///
/// # Safety
/// The CPU must support AVX-512F; `first` and `last` hold `tp` floats (a
/// multiple of 16) and `v + rows[i][j] .. + tp` must be writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_chunks_avx512(
    x: &[f32],
    h: usize,
    w: usize,
    first: &[f32],
    last: &[f32],
    v: *mut f32,
    rows: [[usize; 4]; 4],
) {
    use std::arch::x86_64::*;
    let tp = first.len();
    // The four row combinations of chunk k, each as (even, odd) columns.
    let combined = |k: usize| -> [(__m512, __m512); 4] {
        let (am, bm) = row_chunk_avx512(x, h, w, -1, k);
        let (a0, b0) = row_chunk_avx512(x, h, w, 0, k);
        let (a1, b1) = row_chunk_avx512(x, h, w, 1, k);
        let (a2, b2) = row_chunk_avx512(x, h, w, 2, k);
        [
            split_avx512(_mm512_sub_ps(am, a1), _mm512_sub_ps(bm, b1)),
            split_avx512(_mm512_add_ps(a0, a1), _mm512_add_ps(b0, b1)),
            split_avx512(_mm512_sub_ps(a1, a0), _mm512_sub_ps(b1, b0)),
            split_avx512(_mm512_sub_ps(a0, a2), _mm512_sub_ps(b0, b2)),
        ]
    };
    let chunks = tp / LANES;
    let z = _mm512_setzero_ps();
    let mut o_last = [z; 4];
    let mut cur = combined(0);
    for k in 0..chunks {
        let next = if k + 1 < chunks {
            combined(k + 1)
        } else {
            [(z, z); 4]
        };
        // SAFETY: `k * 16 + 16 <= tp` for the masks and every row.
        let (f, l) = unsafe {
            (
                _mm512_loadu_ps(first.as_ptr().add(k * LANES)),
                _mm512_loadu_ps(last.as_ptr().add(k * LANES)),
            )
        };
        for i in 0..4 {
            let ((e, o), (e_next, _)) = (cur[i], next[i]);
            // [o_last[15], o[0..15]] and [e[1..16], e_next[0]].
            let o_prev = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
                _mm512_castps_si512(o),
                _mm512_castps_si512(o_last[i]),
            ));
            let e_after = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(
                _mm512_castps_si512(e_next),
                _mm512_castps_si512(e),
            ));
            // SAFETY: writable by the function's contract.
            unsafe {
                let out = |j: usize| v.add(rows[i][j] + k * LANES);
                _mm512_storeu_ps(out(0), _mm512_sub_ps(_mm512_mul_ps(o_prev, f), o));
                _mm512_storeu_ps(out(1), _mm512_add_ps(e, o));
                _mm512_storeu_ps(out(2), _mm512_sub_ps(o, e));
                _mm512_storeu_ps(out(3), _mm512_sub_ps(e, _mm512_mul_ps(e_after, l)));
            }
            o_last[i] = o;
        }
        cur = next;
    }
}

/// [`grad_chunks`] on AVX-512, in registers as [`input_chunks_avx512`]
/// (no neighbours: the gradient's 2x2 tiles do not overlap); tiles past
/// the image get zeros.
///
/// # Safety
/// The CPU must support AVX-512F; `tp` is a multiple of 16 and
/// `d + rows[i][j] .. + tp` must be writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_chunks_avx512(
    dy: &[f32],
    h: usize,
    w: usize,
    tp: usize,
    d: *mut f32,
    rows: [[usize; 4]; 4],
) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    for k in 0..tp / LANES {
        let (a0, b0) = row_chunk_avx512(dy, h, w, 0, k);
        let (a1, b1) = row_chunk_avx512(dy, h, w, 1, k);
        let combined = [
            split_avx512(a0, b0),
            split_avx512(_mm512_add_ps(a0, a1), _mm512_add_ps(b0, b1)),
            split_avx512(_mm512_sub_ps(a0, a1), _mm512_sub_ps(b0, b1)),
            split_avx512(_mm512_sub_ps(z, a1), _mm512_sub_ps(z, b1)),
        ];
        for (i, &(e, o)) in combined.iter().enumerate() {
            // SAFETY: writable by the function's contract.
            unsafe {
                let out = |j: usize| d.add(rows[i][j] + k * LANES);
                _mm512_storeu_ps(out(0), e);
                _mm512_storeu_ps(out(1), _mm512_add_ps(e, o));
                _mm512_storeu_ps(out(2), _mm512_sub_ps(e, o));
                _mm512_storeu_ps(out(3), _mm512_sub_ps(z, o));
            }
        }
    }
}

/// [`output_chunks`] on AVX-512: per chunk of 16 tiles, the 16 products
/// are combined (row pass, column pass), the two outputs of each tile in
/// an output row merged, and the rows stored ([`store_row_chunk_avx512`]).
///
/// # Safety
/// The CPU must support AVX-512F; as for [`output_chunks`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_chunks_avx512(
    m: &[f32],
    ms: usize,
    r: usize,
    tp: usize,
    h: usize,
    w: usize,
    y: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    assert!(ms >= tp && m.len() >= (XI * MR - 1) * ms + tp && r < MR);
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for k in 0..tp / LANES {
        // SAFETY: `(xi * MR + r) * ms + k * 16 + 16 <= (XI * MR - 1) * ms + tp`.
        let e =
            |xi: usize| unsafe { _mm512_loadu_ps(m.as_ptr().add((xi * MR + r) * ms + k * LANES)) };
        let mut s = [_mm512_setzero_ps(); 4];
        let mut d = [_mm512_setzero_ps(); 4];
        for j in 0..4 {
            let (a, b, c, dd) = (e(j), e(4 + j), e(8 + j), e(12 + j));
            s[j] = _mm512_add_ps(_mm512_add_ps(a, b), c);
            d[j] = _mm512_sub_ps(_mm512_sub_ps(b, c), dd);
        }
        for (half, v) in [s, d].into_iter().enumerate() {
            let y0 = _mm512_add_ps(_mm512_add_ps(v[0], v[1]), v[2]);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(v[1], v[2]), v[3]);
            let (a, b) = (
                _mm512_permutex2var_ps(y0, lo, y1),
                _mm512_permutex2var_ps(y0, hi, y1),
            );
            // SAFETY: `y` is the plane, by the contract.
            unsafe { store_row_chunk_avx512(y, h, w, half, k, a, b) };
        }
    }
}

/// Rows `2 ty + m` of the plane `x` (`h` rows of `w`, a width with AVX2
/// [`register_level`] transforms) under the tiles `8 k .. 8 k + 8`, in
/// row-combination order (flat position `ty * w + col`, 16 floats), zeros
/// for rows outside the image.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_chunk_avx2(
    x: &[f32],
    h: usize,
    w: usize,
    m: isize,
    k: usize,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == h * w && (w.is_multiple_of(16) || w == 8));
    let base = |ty: usize| {
        let r = 2 * ty as isize + m;
        (r >= 0 && (r as usize) < h).then(|| r as usize * w)
    };
    // SAFETY (every load): a row inside the image holds `w` floats from
    // `base`, and each load reads 8 of them from a column at most `w - 8`.
    let load8 = |ty: usize, col: usize| match base(ty) {
        Some(b) => unsafe { _mm256_loadu_ps(x.as_ptr().add(b + col)) },
        None => _mm256_setzero_ps(),
    };
    if w == 8 {
        (load8(2 * k, 0), load8(2 * k + 1, 0))
    } else {
        let p0 = 16 * k;
        let (ty, col) = (p0 / w, p0 % w);
        (load8(ty, col), load8(ty, col + 8))
    }
}

/// The inverse of [`row_chunk_avx2`]: writes `a`, `b` (16 floats in row
/// order) to rows `2 ty + m` of the plane `y`, skipping rows past the
/// image.
///
/// # Safety
/// The CPU must support AVX2; `y` must be `h` rows of `w` (a width with
/// AVX2 [`register_level`] transforms).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_row_chunk_avx2(
    y: &mut [MaybeUninit<f32>],
    h: usize,
    w: usize,
    m: usize,
    k: usize,
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    debug_assert!(y.len() == h * w && (w.is_multiple_of(16) || w == 8));
    let base = |ty: usize| (2 * ty + m < h).then(|| (2 * ty + m) * w);
    let p = y.as_mut_ptr().cast::<f32>();
    // SAFETY (every store): as for the loads of `row_chunk_avx2`.
    let store8 = |ty: usize, col: usize, v: __m256| {
        if let Some(b) = base(ty) {
            unsafe { _mm256_storeu_ps(p.add(b + col), v) };
        }
    };
    if w == 8 {
        store8(2 * k, 0, a);
        store8(2 * k + 1, 0, b);
    } else {
        let p0 = 16 * k;
        let (ty, col) = (p0 / w, p0 % w);
        store8(ty, col, a);
        store8(ty, col + 8, b);
    }
}

/// [`input_chunks`] on AVX2: [`input_chunks_avx512`] with chunks of 8
/// tiles, the neighbours' columns rotated in across the two 128-bit
/// halves. The same operations in the same order as the plane-by-plane
/// transform, so the same bits for every tile of the image.
///
/// # Safety
/// The CPU must support AVX2 and FMA; as for [`input_chunks`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_chunks_avx2(
    x: &[f32],
    h: usize,
    w: usize,
    first: &[f32],
    last: &[f32],
    v: *mut f32,
    rows: [[usize; 4]; 4],
) {
    use std::arch::x86_64::*;
    let tp = first.len();
    debug_assert!(tp.is_multiple_of(8) && last.len() == tp);
    // The four row combinations of chunk k, each as (even, odd) columns.
    let combined = |k: usize| -> [(__m256, __m256); 4] {
        let (am, bm) = row_chunk_avx2(x, h, w, -1, k);
        let (a0, b0) = row_chunk_avx2(x, h, w, 0, k);
        let (a1, b1) = row_chunk_avx2(x, h, w, 1, k);
        let (a2, b2) = row_chunk_avx2(x, h, w, 2, k);
        [
            split_avx2(_mm256_sub_ps(am, a1), _mm256_sub_ps(bm, b1)),
            split_avx2(_mm256_add_ps(a0, a1), _mm256_add_ps(b0, b1)),
            split_avx2(_mm256_sub_ps(a1, a0), _mm256_sub_ps(b1, b0)),
            split_avx2(_mm256_sub_ps(a0, a2), _mm256_sub_ps(b0, b2)),
        ]
    };
    // Lane i takes lane i - 1 (right) or i + 1 (left), cyclically; a blend
    // then brings in the lane that crossed from the neighbouring chunk.
    let right = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
    let left = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0);
    let chunks = tp / 8;
    let z = _mm256_setzero_ps();
    let mut o_last = [z; 4];
    let mut cur = combined(0);
    for k in 0..chunks {
        let next = if k + 1 < chunks {
            combined(k + 1)
        } else {
            [(z, z); 4]
        };
        // SAFETY: `8 k + 8 <= tp` for the masks and every row.
        let (f, l) = unsafe {
            (
                _mm256_loadu_ps(first.as_ptr().add(8 * k)),
                _mm256_loadu_ps(last.as_ptr().add(8 * k)),
            )
        };
        for i in 0..4 {
            let ((e, o), (e_next, _)) = (cur[i], next[i]);
            // [o_last[7], o[0..7]] and [e[1..8], e_next[0]].
            let o_prev = _mm256_blend_ps::<0b0000_0001>(
                _mm256_permutevar8x32_ps(o, right),
                _mm256_permutevar8x32_ps(o_last[i], right),
            );
            let e_after = _mm256_blend_ps::<0b1000_0000>(
                _mm256_permutevar8x32_ps(e, left),
                _mm256_permutevar8x32_ps(e_next, left),
            );
            // SAFETY: writable by the function's contract.
            unsafe {
                let out = |j: usize| v.add(rows[i][j] + 8 * k);
                _mm256_storeu_ps(out(0), _mm256_sub_ps(_mm256_mul_ps(o_prev, f), o));
                _mm256_storeu_ps(out(1), _mm256_add_ps(e, o));
                _mm256_storeu_ps(out(2), _mm256_sub_ps(o, e));
                _mm256_storeu_ps(out(3), _mm256_sub_ps(e, _mm256_mul_ps(e_after, l)));
            }
            o_last[i] = o;
        }
        cur = next;
    }
}

/// [`grad_chunks`] on AVX2, 8 tiles at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; as for [`grad_chunks`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_chunks_avx2(
    dy: &[f32],
    h: usize,
    w: usize,
    tp: usize,
    d: *mut f32,
    rows: [[usize; 4]; 4],
) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    for k in 0..tp / 8 {
        let (a0, b0) = row_chunk_avx2(dy, h, w, 0, k);
        let (a1, b1) = row_chunk_avx2(dy, h, w, 1, k);
        let combined = [
            split_avx2(a0, b0),
            split_avx2(_mm256_add_ps(a0, a1), _mm256_add_ps(b0, b1)),
            split_avx2(_mm256_sub_ps(a0, a1), _mm256_sub_ps(b0, b1)),
            split_avx2(_mm256_sub_ps(z, a1), _mm256_sub_ps(z, b1)),
        ];
        for (i, &(e, o)) in combined.iter().enumerate() {
            // SAFETY: writable by the function's contract.
            unsafe {
                let out = |j: usize| d.add(rows[i][j] + 8 * k);
                _mm256_storeu_ps(out(0), e);
                _mm256_storeu_ps(out(1), _mm256_add_ps(e, o));
                _mm256_storeu_ps(out(2), _mm256_sub_ps(e, o));
                _mm256_storeu_ps(out(3), _mm256_sub_ps(z, o));
            }
        }
    }
}

/// [`output_chunks`] on AVX2, 8 tiles at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; as for [`output_chunks`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_chunks_avx2(
    m: &[f32],
    ms: usize,
    r: usize,
    tp: usize,
    h: usize,
    w: usize,
    y: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    assert!(ms >= tp && m.len() >= (XI * MR - 1) * ms + tp && r < MR);
    for k in 0..tp / 8 {
        // SAFETY: `(xi * MR + r) * ms + 8 k + 8 <= (XI * MR - 1) * ms + tp`.
        let e = |xi: usize| unsafe { _mm256_loadu_ps(m.as_ptr().add((xi * MR + r) * ms + 8 * k)) };
        let mut s = [_mm256_setzero_ps(); 4];
        let mut d = [_mm256_setzero_ps(); 4];
        for j in 0..4 {
            let (a, b, c, dd) = (e(j), e(4 + j), e(8 + j), e(12 + j));
            s[j] = _mm256_add_ps(_mm256_add_ps(a, b), c);
            d[j] = _mm256_sub_ps(_mm256_sub_ps(b, c), dd);
        }
        for (half, v) in [s, d].into_iter().enumerate() {
            let y0 = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]);
            let y1 = _mm256_sub_ps(_mm256_sub_ps(v[1], v[2]), v[3]);
            // [y0_0 y1_0 .. y0_3 y1_3] and [y0_4 y1_4 .. y0_7 y1_7].
            let (lo, hi) = (_mm256_unpacklo_ps(y0, y1), _mm256_unpackhi_ps(y0, y1));
            let (a, b) = (
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            );
            // SAFETY: `y` is the plane, by the contract.
            unsafe { store_row_chunk_avx2(y, h, w, half, k, a, b) };
        }
    }
}

/// The even and odd elements of `comb[32 k .. 32 k + 32]` (zeros past the
/// end of `comb`): for a row combination in tile order, the even and odd
/// columns of tiles `16 k .. 16 k + 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn halves(comb: &[f32], k: usize) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let len = comb.len();
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
}

/// The column pass of the output-gradient transform `A dY A^T`, with
/// `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`, for one row combination
/// `comb` in tile order: with `e`, `o` the even and odd columns of tile t,
/// `d0 = e`, `d1 = e + o`, `d2 = e - o`, `d3 = -o`, written at
/// `d + rows[j]` for `tp` tiles (zeros for the tiles past `comb`).
///
/// # Safety
/// `tp` must be a multiple of 16 with `comb.len() <= 2 * tp`, and `d +
/// rows[j] .. + tp` must be writable.
#[inline(always)]
unsafe fn grad_column_pass(comb: &[f32], tp: usize, d: *mut f32, rows: [usize; 4]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `column_pass`.
    unsafe {
        if direct::avx512() {
            grad_column_pass_avx512(comb, tp, d, rows)
        } else {
            grad_column_pass_avx2(comb, tp, d, rows)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (comb, tp, d, rows);
        unreachable!("winograd convolution needs AVX2")
    }
}

/// [`grad_column_pass`] on AVX2, 8 tiles at a time (`0 - o`, not `-o`,
/// as on AVX-512: they differ at zero).
///
/// # Safety
/// As for [`grad_column_pass`], and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_column_pass_avx2(comb: &[f32], tp: usize, d: *mut f32, rows: [usize; 4]) {
    use std::arch::x86_64::*;
    let n = comb.len();
    debug_assert!(tp.is_multiple_of(8) && n <= 2 * tp);
    for k in 0..tp / 8 {
        let s0 = 16 * k;
        // SAFETY: in place, `comb[s0 .. s0 + 16]` is inside `comb`.
        let (e, o) = unsafe {
            if s0 + 16 <= n {
                deinterleave8(comb.as_ptr().add(s0))
            } else {
                deinterleave8(chunk_with_neighbours(comb, k).as_ptr().add(2))
            }
        };
        // SAFETY: `8 k + 8 <= tp` for every row, writable by the contract.
        unsafe {
            let out = |j: usize| d.add(rows[j] + 8 * k);
            _mm256_storeu_ps(out(0), e);
            _mm256_storeu_ps(out(1), _mm256_add_ps(e, o));
            _mm256_storeu_ps(out(2), _mm256_sub_ps(e, o));
            _mm256_storeu_ps(out(3), _mm256_sub_ps(_mm256_setzero_ps(), o));
        }
    }
}

/// [`grad_column_pass`] on AVX-512.
///
/// # Safety
/// As for [`grad_column_pass`], and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_column_pass_avx512(comb: &[f32], tp: usize, d: *mut f32, rows: [usize; 4]) {
    use std::arch::x86_64::*;
    debug_assert!(tp.is_multiple_of(LANES) && comb.len() <= 2 * tp);
    for k in 0..tp / LANES {
        let (e, o) = halves(comb, k);
        // SAFETY: `k * 16 + 16 <= tp` for every row, writable by the
        // contract.
        unsafe {
            let out = |j: usize| d.add(rows[j] + k * LANES);
            _mm512_storeu_ps(out(0), e);
            _mm512_storeu_ps(out(1), _mm512_add_ps(e, o));
            _mm512_storeu_ps(out(2), _mm512_sub_ps(e, o));
            _mm512_storeu_ps(out(3), _mm512_sub_ps(_mm512_setzero_ps(), o));
        }
    }
}

/// [`super::cpu::write_floats`] for the short rows of small images: masked
/// vector loads and stores instead of a call to `memcpy`.
///
/// # Safety
/// None beyond the slices' (the AVX-512 loop runs only where detected).
#[inline(always)]
unsafe fn copy_short(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if direct::avx512() {
        // SAFETY: AVX-512F detected.
        return unsafe { copy_short_avx512(src, dst) };
    }
    super::cpu::write_floats(dst, src);
}

/// [`copy_short`] on AVX-512.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_short_avx512(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let n = src.len();
    assert!(dst.len() == n);
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
}

/// `dst[2k] = even[k]`, `dst[2k + 1] = odd[k]`.
///
/// # Safety
/// None beyond the slices' (the AVX-512 loop runs only where detected).
#[inline(always)]
unsafe fn interleave(even: &[f32], odd: &[f32], dst: &mut [f32]) {
    let n = even.len();
    assert!(odd.len() == n && dst.len() == 2 * n);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    if direct::avx512() {
        // SAFETY: AVX-512F detected; lengths asserted above.
        return unsafe { interleave_avx512(even, odd, dst) };
    } else if direct::available() {
        // SAFETY: AVX2 detected; lengths asserted above.
        k = unsafe { interleave_avx2(even, odd, dst) };
    }
    for k in k..n {
        dst[2 * k] = even[k];
        dst[2 * k + 1] = odd[k];
    }
}

/// [`interleave`] on AVX2 for the whole blocks of 8; returns how many
/// elements of `even` it did.
///
/// # Safety
/// The CPU must support AVX2; `odd` as long as `even`, `dst` twice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleave_avx2(even: &[f32], odd: &[f32], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = even.len();
    let mut k = 0;
    while k + 8 <= n {
        // SAFETY: `k + 8 <= n` and `2k + 16 <= dst.len()`, by the loop
        // condition and the contract.
        unsafe {
            let a = _mm256_loadu_ps(even.as_ptr().add(k));
            let b = _mm256_loadu_ps(odd.as_ptr().add(k));
            // [a0 b0 a1 b1 | a4 b4 a5 b5] and [a2 b2 a3 b3 | a6 b6 a7 b7].
            let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let q = dst.as_mut_ptr().add(2 * k);
            _mm256_storeu_ps(q, _mm256_permute2f128_ps::<0x20>(lo, hi));
            _mm256_storeu_ps(q.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
        }
        k += 8;
    }
    k
}

/// [`interleave`] on AVX-512.
///
/// # Safety
/// The CPU must support AVX-512F; `odd` as long as `even`, `dst` twice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_avx512(even: &[f32], odd: &[f32], dst: &mut [f32]) {
    let n = even.len();
    let mut k = 0;
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

    use crate::ops::cpu::test_data as data;

    /// A 3x3, stride-1, padding-1 convolution of `n` images.
    fn geom(n: usize, ci: usize, h: usize, w: usize, co: usize) -> ConvGeom {
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        ConvGeom::new(&[n, ci, h, w], &[co, ci, 3, 3], p).unwrap()
    }

    #[test]
    fn winograd_matches_im2col_gemm() {
        if !direct::available() || !enabled() {
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
            // Register-level widths (8, 16, 32) with tile rows that end
            // inside a chunk of 16 tiles.
            (2, 8, 6, 16, 8),
            (1, 8, 10, 8, 16),
            (2, 8, 2, 32, 8),
            (1, 8, 4, 64, 8),
        ];
        for (n, ci, h, w, co) in cases {
            let g = geom(n, ci, h, w, co);
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
            // The entry point takes this path, where F(4x4, 3x3) does not.
            if super::super::winograd_f4::Plan::new(&g, &wt).is_none() {
                assert_eq!(conv_fwd(&g, &x, &wt), y);
            }
        }
    }

    #[test]
    fn winograd_weight_gradient_matches_im2col_gemm() {
        if !direct::available() || !enabled() {
            return;
        }
        // (n, c_in, h, w, c_out): batches that fill a row of tiles, leave
        // the last call short (5 images of 16 tiles, 16 per row), and
        // 4x4 maps (4 tiles) many to a row.
        let cases = [
            (2, 16, 32, 32, 16),
            (3, 32, 16, 16, 32),
            (5, 64, 8, 8, 64),
            (2, 3, 32, 32, 16),
            (1, 5, 6, 10, 8),
            (7, 8, 4, 4, 16),
            (2, 8, 6, 16, 8),
            (3, 8, 10, 8, 16),
            (2, 8, 2, 32, 8),
            // 18 images in batches of 16: a short batch.
            (18, 8, 8, 8, 16),
        ];
        for (n, ci, h, w, co) in cases {
            let g = geom(n, ci, h, w, co);
            let x = data(n * ci * h * w, 4);
            let dy = data(n * co * h * w, 5);
            let plan = FilterPlan::new(&g).expect("winograd applies");
            let mut lanes = Lanes::new(plan.lanes_len());
            // The scratch may hold anything, NaN included.
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let (per_x, per_dy) = (ci * h * w, co * h * w);
            // The short batch first, on the untouched scratch.
            let (b, short) = (plan.batch(), n % plan.batch());
            let mut sizes = vec![short; usize::from(short > 0)];
            sizes.extend(std::iter::repeat_n(b, n / b));
            let mut i = 0;
            for k in sizes {
                let (xs, dys) = (
                    &x[i * per_x..(i + k) * per_x],
                    &dy[i * per_dy..(i + k) * per_dy],
                );
                plan.accumulate(xs, dys, k, &mut lanes, &mut scratch);
                i += k;
            }
            let got = plan.finish(&PartLanes::new(vec![lanes.into_vec()]));
            let want = with_portable_conv(|| crate::ops::conv::conv_bwd_filter(&g, &x, &dy));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = 4e-6 * scale * ((n * h * w) as f32).sqrt();
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{a} vs {b} at {k} for {:?}",
                    (n, ci, h, w, co)
                );
            }
        }
    }

    /// The column passes against their formulas element by element, on
    /// AVX2 and, where the CPU has it, AVX-512: bit for bit, including
    /// the zero tiles past `comb` and the chunks at its ends.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn column_passes_match_their_formulas_on_every_instruction_set() {
        if !direct::available() {
            eprintln!("skipped: the CPU has no AVX2");
            return;
        }
        // (tiles per row, tile rows, tp): whole chunks, a short last row,
        // a single chunk, padding tiles past the image.
        for (tw, th, tp) in [
            (16, 16, 256),
            (8, 8, 64),
            (4, 4, 16),
            (5, 3, 16),
            (3, 2, 32),
        ] {
            let comb = data(2 * tw * th, 7);
            let edge = |at: usize| -> Vec<f32> {
                (0..tp).map(|t| f32::from(u8::from(t % tw != at))).collect()
            };
            let (first, last) = (edge(0), edge(tw - 1));
            let at = |i: usize| comb.get(i).copied().unwrap_or(0.0);
            let mut want = vec![0f32; 4 * tp];
            let mut want_grad = vec![0f32; 4 * tp];
            for t in 0..tp {
                let (e, o) = (at(2 * t), at(2 * t + 1));
                let o_prev = if t == 0 { 0.0 } else { at(2 * t - 1) };
                let e_after = at(2 * t + 2);
                let v = [o_prev * first[t] - o, e + o, o - e, e - e_after * last[t]];
                let d = [e, e + o, e - o, 0.0 - o];
                for j in 0..4 {
                    want[j * tp + t] = v[j];
                    want_grad[j * tp + t] = d[j];
                }
            }
            let rows = [0, tp, 2 * tp, 3 * tp];
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut runs: Vec<(&str, Vec<f32>, Vec<f32>)> = Vec::new();
            let (mut v, mut d) = (vec![f32::NAN; 4 * tp], vec![f32::NAN; 4 * tp]);
            // SAFETY: AVX2 checked above; `first`, `last` hold `tp` floats,
            // `comb` at most `2 tp`, every row `tp` floats of `v` and `d`.
            unsafe {
                column_pass_avx2(&comb, &first, &last, v.as_mut_ptr(), rows);
                grad_column_pass_avx2(&comb, tp, d.as_mut_ptr(), rows);
            }
            runs.push(("avx2", v, d));
            if direct::avx512() {
                let (mut v, mut d) = (vec![f32::NAN; 4 * tp], vec![f32::NAN; 4 * tp]);
                // SAFETY: as above, on AVX-512F.
                unsafe {
                    column_pass_avx512(&comb, &first, &last, v.as_mut_ptr(), rows);
                    grad_column_pass_avx512(&comb, tp, d.as_mut_ptr(), rows);
                }
                runs.push(("avx512", v, d));
            }
            for (isa, v, d) in runs {
                assert_eq!(bits(&v), bits(&want), "{isa} input pass, tw={tw} th={th}");
                assert_eq!(
                    bits(&d),
                    bits(&want_grad),
                    "{isa} gradient pass, tw={tw} th={th}"
                );
            }
        }
    }

    /// The register-level transforms, on every instruction set the CPU
    /// has and the width allows, give the plane-by-plane transforms' bits
    /// for every tile of the image (the padding tiles past it may differ:
    /// nothing reads their products, and their gradient is zero).
    #[test]
    fn register_level_transforms_match_plane_by_plane() {
        if !direct::available() {
            eprintln!("skipped: the CPU has no AVX2");
            return;
        }
        let (ci, co) = (3, 8);
        // (h, w): the CIFAR maps, tile rows ending inside a chunk, a
        // width that is 16 but not 32 times something, a single row pair.
        for (h, w) in [
            (32, 32),
            (16, 16),
            (8, 8),
            (6, 16),
            (10, 8),
            (2, 32),
            (4, 64),
            (4, 48),
        ] {
            let mut t = Tiles::new(&geom(1, ci, h, w, co)).expect("winograd applies");
            let (tp, real) = (t.tp, t.th * t.tw);
            let x = data(ci * h * w, 11);
            let dy = data(co * h * w, 12);
            // Products rows apart by more than their length, as in `Plan`.
            let ms = tp + ROW_PAD;
            let m = data(XI * MR * ms, 13);
            let mut band = vec![f32::NAN; t.band_len()];
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Each transform's output (the image's tiles of every row of
            // V and D, every element of Y) on one path.
            let mut run = |t: &Tiles| {
                let (mut v, mut d) = (vec![f32::NAN; XI * ci * tp], vec![f32::NAN; XI * co * tp]);
                let mut y = vec![f32::NAN; MR * h * w];
                // SAFETY: AVX2 and FMA checked above, and `register_level`
                // by each path below; `v` and `d` hold 16 rows of `tp`
                // per channel, `m` 16 x 8 rows `ms` apart, `y` the block's
                // planes.
                unsafe {
                    let at = |c: usize| Rows {
                        block: c * tp,
                        row: tp,
                        col0: 0,
                    };
                    t.transform_input(&x, &mut v, &mut band, at(ci));
                    t.transform_grad(&dy, &mut d, &mut band, at(co));
                    t.transform_output(&m, ms, crate::ops::cpu::as_uninit(&mut y), &mut band);
                }
                let tiles = |rows: &[f32]| -> Vec<u32> {
                    rows.chunks(tp).flat_map(|r| bits(&r[..real])).collect()
                };
                (tiles(&v), tiles(&d), bits(&y))
            };
            t.registers = None;
            let want = run(&t);
            let mut isas = vec![Isa::Avx2];
            if direct::avx512() {
                isas.push(Isa::Avx512);
            }
            for isa in isas {
                let fits = match isa {
                    Isa::Avx512 => w % 32 == 0 || w == 16 || w == 8,
                    _ => w % 16 == 0 || w == 8,
                };
                if !fits {
                    continue;
                }
                t.registers = Some(isa);
                let got = run(&t);
                assert!(got.0 == want.0, "{isa} input transform, {h}x{w}");
                assert!(got.1 == want.1, "{isa} gradient transform, {h}x{w}");
                assert!(got.2 == want.2, "{isa} output transform, {h}x{w}");
            }
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
        if !direct::available() || !enabled() {
            return;
        }
        // Too large for the caches but taken (see `takes_large_map`):
        // ResNet-50's first 3x3 layers at 224²; 128 x 128 channels are too
        // wide for the weight gradient's lane accumulators on small maps.
        let big = ConvGeom::new(&[1, 64, 56, 56], &[64, 64, 3, 3], p(1, 1, 1)).unwrap();
        assert!(Plan::new(&big, &data(64 * 64 * 9, 4)).is_some());
        assert!(FilterPlan::new(&big).is_some());
        let wide = ConvGeom::new(&[1, 128, 8, 8], &[128, 128, 3, 3], p(1, 1, 1)).unwrap();
        assert!(Plan::new(&wide, &data(128 * 128 * 9, 5)).is_some());
        assert!(FilterPlan::new(&wide).is_none());
    }

    /// Maps of many tiles whose transformed input exceeds the cache limit:
    /// the forward plans take them (ResNet-50's 56x56, 28x28 and 14x14
    /// layers, not 12x12 ones), and F(2x2, 3x3)'s weight-gradient plan
    /// within its channel pairs, with the results of im2col + gemm to
    /// rounding.
    #[test]
    fn large_maps_take_the_winograd_plans() {
        use crate::ops::winograd_f4;
        if !direct::available() || !enabled() || !winograd_f4::enabled() {
            eprintln!("skipped: no AVX2, or Winograd switched off");
            return;
        }
        let w = |ci: usize, co: usize| data(co * ci * 9, 6);
        let r50_28 = geom(1, 128, 28, 28, 128);
        assert!(Plan::new(&r50_28, &w(128, 128)).is_some());
        assert!(winograd_f4::Plan::new(&r50_28, &w(128, 128)).is_none());
        // 128 x 128 channel pairs: gemm over the transformed operands.
        assert_eq!(FilterPlan::new(&r50_28).map(|p| p.wide), Some(true));
        assert!(Plan::new(&geom(1, 256, 14, 14, 256), &w(256, 256)).is_some());
        assert!(Plan::new(&geom(1, 256, 12, 12, 256), &w(256, 256)).is_none());
        let r50_56 = geom(1, 64, 56, 56, 64);
        assert!(winograd_f4::Plan::new(&r50_56, &w(64, 64)).is_some());
        assert!(winograd_f4::FilterPlan::new(&r50_56).is_none());
        assert!(FilterPlan::new(&r50_56).is_some());
        // Over the limits, small enough to check: F(2x2, 3x3) on 20x28 (140
        // tiles, 64 channels; F(4x4, 3x3) needs widths a multiple of 8),
        // F(4x4, 3x3) on 48x48 (144 tiles, 32 channels), and more channel
        // pairs than the lane accumulators take (72 x 64 on 14x14: 49 tiles
        // in rows of 64, as ResNet-50's 14x14 layers; only the weight
        // gradient is over a limit).
        for (n, ci, h, wd, co, f4) in [
            (2, 64, 20, 28, 8, false),
            (2, 32, 48, 48, 8, true),
            (3, 72, 14, 14, 64, false),
        ] {
            let g = geom(n, ci, h, wd, co);
            let wt = w(ci, co);
            let tp = (h / 2 * wd / 2).div_ceil(LANES) * LANES;
            let forward_over = if f4 {
                36 * ci * (h / 4 * wd / 4).div_ceil(LANES) * LANES
                    > winograd_f4::MAX_TRANSFORMED_INPUT
            } else {
                ci * tp > MAX_TRANSFORMED_INPUT
            };
            let wide = !f4 && ci * co > MAX_FILTER_PAIRS;
            assert!(
                forward_over || wide,
                "{:?} is within the limits",
                (ci, h, wd)
            );
            let plan_applies = if f4 {
                winograd_f4::Plan::new(&g, &wt).is_some()
            } else {
                Plan::new(&g, &wt).is_some()
            };
            assert!(plan_applies, "{:?}", (ci, h, wd));
            let x = data(n * ci * h * wd, 7);
            let got = conv_fwd(&g, &x, &wt);
            let want = with_portable_conv(|| conv_fwd(&g, &x, &wt));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = if f4 { 8e-6 } else { 2e-6 } * scale * (ci as f32).sqrt();
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tol + 1e-6,
                    "{a} vs {b} at {k}, {:?}",
                    (ci, h, wd)
                );
            }
            assert_ne!(got, want, "{:?}: the entry point took gemm", (ci, h, wd));
            // The weight gradient: F(2x2, 3x3)'s plan takes the F(2x2, 3x3)
            // maps too (F(4x4, 3x3)'s has no limit on the transformed
            // input), the wide layer through gemm.
            if !f4 {
                let plan = FilterPlan::new(&g).map(|p| p.wide);
                assert_eq!(plan, Some(wide), "{:?}", (ci, h, wd));
            }
            let dy = data(n * co * h * wd, 8);
            let got = crate::ops::conv::conv_bwd_filter(&g, &x, &dy);
            let want = with_portable_conv(|| crate::ops::conv::conv_bwd_filter(&g, &x, &dy));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = 4e-6 * scale * ((n * h * wd) as f32).sqrt();
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= tol, "{a} vs {b} at {k}, {:?}", (ci, h, wd));
            }
            assert_ne!(
                got,
                want,
                "{:?}: the weight gradient took gemm",
                (ci, h, wd)
            );
        }
    }
    /// The products a group of positions at a time over every block
    /// ([`grouped_products`]) against block by block: the same bits, for
    /// groups that divide the 16 positions and groups that leave a short
    /// last one, with garbage in the scratch.
    #[test]
    fn grouped_products_equal_block_by_block() {
        if !direct::available() {
            eprintln!("skipped: no AVX2");
            return;
        }
        let g = geom(1, 24, 12, 14, 24);
        let (x, w) = (data(24 * 12 * 14, 9), data(24 * 24 * 9, 10));
        let mut plan = Plan::new(&g, &w).expect("winograd applies");
        assert!(plan.group.is_none(), "within the cache limit");
        let run = |plan: &Plan| {
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let mut y = vec![f32::NAN; 24 * 12 * 14];
            plan.run(&x, crate::ops::cpu::as_uninit(&mut y), &mut scratch);
            y
        };
        let want = run(&plan);
        assert!(want.iter().all(|v| v.is_finite()));
        for group in [2, 4, 6, 16] {
            plan.group = Some(group);
            assert_eq!(run(&plan), want, "group {group}");
        }
        assert_eq!(position_group(256, 80, XI), 2);
        assert_eq!(position_group(8, 80, XI), XI);
    }

    /// The weight gradient's fold (8 input channels per vector, lanes
    /// transposed in registers, then the rest one by one) against one
    /// kernel at a time in scalar code, as it was computed before: the
    /// same bits, for 16 lanes per weight and for one (the wide layers'),
    /// on values whose sums depend on their order (large ones of both
    /// signs that cancel) and zeros of both signs.
    #[test]
    fn gradient_fold_equals_scalar_bit_for_bit() {
        if !direct::available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for per in [V, 1] {
            // C_in 9: every sum of negative zeros (a sum from +0.0 gives
            // +0.0).
            for cin in [1, 8, 9, 13, 64] {
                let summed: Vec<f32> = (0..XI * cin * per)
                    .map(|i| match (i * 7 + cin) % 41 {
                        _ if cin == 9 => -0.0,
                        0 => -0.0,
                        1 => 0.0,
                        2 => 1.0e20,
                        3 => -1.0e20,
                        k => {
                            ((i * 131 + cin) % 1009) as f32 / 97.0
                                * if k % 2 == 0 { 1.0 } else { -1.0 }
                        }
                    })
                    .collect();
                let mut got = vec![f32::NAN; cin * 9];
                // SAFETY: AVX2 and FMA were detected above.
                unsafe { fold_channel(&summed, per, &mut got) };
                for ci in 0..cin {
                    let du: [f32; XI] = std::array::from_fn(|xi| {
                        summed[(xi * cin + ci) * per..][..per].iter().sum()
                    });
                    let mut tmp = [[0f32; 4]; 3];
                    for j in 0..4 {
                        let (u0, u1, u2, u3) = (du[j], du[4 + j], du[8 + j], du[12 + j]);
                        tmp[0][j] = u0 + 0.5 * (u1 + u2);
                        tmp[1][j] = 0.5 * (u1 - u2);
                        tmp[2][j] = 0.5 * (u1 + u2) + u3;
                    }
                    for (k, t) in tmp.iter().enumerate() {
                        let want = [
                            t[0] + 0.5 * (t[1] + t[2]),
                            0.5 * (t[1] - t[2]),
                            0.5 * (t[1] + t[2]) + t[3],
                        ];
                        for (l, want) in want.iter().enumerate() {
                            assert_eq!(
                                got[ci * 9 + 3 * k + l].to_bits(),
                                want.to_bits(),
                                "{per} lanes, C_in {cin}: channel {ci}, tap {}",
                                3 * k + l
                            );
                        }
                    }
                }
            }
        }
    }
}
