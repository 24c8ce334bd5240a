//! Direct convolution for AVX-512 and AVX2 CPUs, without an im2col matrix.
//!
//! With the input zero-padded to `(C, Hp, Wp)` and the output computed on the
//! padded-width grid `p = oy * Wp + ox` (the last `K - 1` columns of each
//! row are discarded), every kernel tap `(c, ki, kj)` reads the input at the
//! constant offset `c * Hp * Wp + ki * Wp + kj` from `p`: a contiguous load.
//! A register tile of 8 output channels x 48 grid points accumulates
//! `sum_k w[co, k] * xpad[off(k) + p]` with broadcast FMAs, so the input is
//! never expanded nine-fold (im2col) nor repacked (gemm), which measured as
//! a fifth of a CIFAR ResNet training step. A grid that is not whole tiles
//! ends in a tile of one or two vectors instead of three, which brings the
//! 14x14 maps of 224² networks over the grid-use threshold (each output
//! lane is the same chain of fused multiply-adds whatever the tile width,
//! so this changes no result of a convolution that took the direct path
//! before).
//!
//! Used for the forward pass and, through the flipped kernel, for the input
//! gradient of stride-1 convolutions whose channels per group are a multiple
//! of 8 and that Winograd ([`super::winograd`], which runs its products on
//! this module's register tile) does not take; everything else takes the
//! im2col + gemm path. The forward pass of a strided convolution takes the
//! same tile on the input split into its stride² phases ([`PhaseGrid`],
//! where that pays: [`MAX_STRIDED_KDIM`]), with the bits of im2col +
//! gemm.
//!
//! The tiles are written for AVX-512 (8 channels x 3 vectors of 16 lanes)
//! and for AVX2 + FMA (the same tile swept in strips that fit 16 ymm
//! registers); each output lane is the same chain of multiply-adds on both,
//! so the two give identical results. On AVX2 two 16-lane tiles with the
//! same offsets may run together ([`tile_pair_into`]: the Winograd
//! products, two positions at a time), so that their rows 6 and 7 fill
//! one block of 8 accumulators instead of two latency-bound blocks of 4.
//! CPUs with neither take im2col + gemm.

use super::conv::ConvGeom;
use super::cpu::write_floats;
use super::lanes::{Lanes, PartLanes};
use std::mem::MaybeUninit;

/// Output channels per register tile.
pub(super) const MR: usize = 8;
/// Grid points per register tile (three 16-lane vectors).
pub(super) const NP: usize = 48;

/// Everything about one convolution that does not depend on the image.
#[derive(Debug)]
pub(crate) struct Plan {
    g: ConvGeom,
    /// Where the zero-padded (and, strided, phase-split) input lies in
    /// the scratch buffer.
    input: PhaseGrid,
    /// Input offset of every tap of one group, `(c, ki, kj)` order.
    offs: Vec<u32>,
    /// Weights per group and 8-channel block: `[k][r]`, `r` fastest.
    wpack: Vec<f32>,
    tiles: usize,
    /// 16-lane vectors the last tile computes (1 to 3): a grid that is not
    /// whole tiles ends in a narrower tile instead of a full one whose
    /// extra lanes would be discarded.
    last_vectors: usize,
    /// Per tile, runs `(lane, output index oy * OW + ox, len)` of grid
    /// points that are real outputs.
    runs: Vec<Vec<(usize, usize, usize)>>,
    /// A pointwise convolution (1x1, unpadded): the input is its own padded
    /// grid, so whole tiles read it in place and only the last, partial
    /// tile goes through the scratch buffer, at these offsets
    /// (`c * NP`). Empty otherwise.
    tail_offs: Vec<u32>,
    /// Floats of per-image scratch ([`Plan::scratch_len`]).
    scratch_len: usize,
}

/// Fraction of computed grid points that must be real outputs for the
/// direct path to beat im2col + gemm (narrow images waste too much on the
/// discarded columns and the last partial tile).
const MIN_EFFICIENCY: f64 = 0.85;

/// Largest `C_in/groups x K x K` the AVX2 tiles take. They sweep the 8
/// rows of a tile in two passes over its input strip (`kdim x 48` floats),
/// which pays while the strip stays in a core's 32 KiB L1 cache: at
/// larger `kdim` (ResNet-50's layers at 224²) a training step ran at 2.3
/// img/s on the direct kernels against 3.1 on im2col + gemm, at 128 or
/// less within noise of gemm (AMD EPYC 7002, AVX2, batch 16). The CIFAR
/// ResNets' weight gradients at 32x32 (`kdim` 144) keep the direct path.
/// Pointwise convolutions stay on gemm too: they need no im2col matrix,
/// which is what the direct path saves, and gemm's AVX2 register tile is
/// the larger.
const AVX2_MAX_KDIM: usize = 160;

/// Whether the tiles beat im2col + gemm on the stride-1 convolution `g`:
/// never on pointwise ones; on AVX2 up to [`AVX2_MAX_KDIM`] (the tiles
/// themselves compute any geometry the AVX-512 ones do). On AVX-512
/// pointwise layers stay on gemm too (Intel Xeon, 2 threads, 2 or 3
/// alternating pairs): forward + backward of ResNet-50's 56x56 256 -> 64
/// layer (`conv_ops --filter imagenet-1x1`) 32.2 / 32.8 -> 18.9 / 18.3
/// ms; training steps (`resnet_step`) ResNet-50 at batch 16 5.9 / 5.8 /
/// 5.8 -> 6.3 / 6.5 / 6.6 img/s, ResNeXt-50 4.6 / 4.5 -> 5.6 / 5.6,
/// inference at batch 64 23.0 / 23.9 -> 28.2 / 28.1 and 17.4 -> 23.0.
/// Their other layers keep the tile whatever `kdim`: with the 7x7 maps'
/// 3x3 layers on gemm too, ResNet-10's training step lost 4 % (36.5 /
/// 35.1 -> 34.8 / 33.9 img/s; 36.7 / 35.8 -> 36.4 / 36.2 with them on
/// the tile).
fn tile_pays(g: &ConvGeom) -> bool {
    !g.pointwise() && (avx512() || g.kdim() <= AVX2_MAX_KDIM)
}

/// Largest `C_in/groups x K x K` of a strided convolution the forward
/// tile takes ([`PhaseGrid`]), and the share of its grid that must be real
/// outputs. Forward pass, batch 128 (8 for the stem), `conv_ops` bench,
/// AVX2-only AMD EPYC: CIFAR's 3x3 stride-2 layers 3.65 -> 2.83 ms (`kdim`
/// 144, 94 % of the grid) and 3.35 -> 2.83 ms (288, 80 %), the 7x7
/// stride-2 stem of the 224² networks 19 -> 12 ms (147). Their 1x1
/// stride-2 projections were no faster (0.71 -> 0.79 ms and 0.61 -> 0.60):
/// a 1x1 kernel's im2col is a plain subsample, and they stay on gemm, as
/// do the 224² networks' 3x3 stride-2 layers (`kdim` 1,152 and up; batch
/// 16, forward: 1,152 25.1 -> 30.6 ms, 2,304 23.8 -> 33.2 ms on the tile,
/// `conv_ops --filter imagenet-3x3s2`). The same limits hold on AVX-512
/// (Intel Xeon, `conv_ops`, 2 alternating pairs, forward): CIFAR's layers
/// 2.83 / 2.73 -> 2.13 / 2.07 ms and 3.03 / 2.45 -> 1.88 / 1.92 ms, the
/// stem 11.4 / 11.8 -> 7.9 / 7.6 ms; ResNet-32 inference at batch 128
/// 2,235 / 2,276 / 2,158 -> 2,263 / 2,402 / 2,340 img/s, training within
/// noise.
const MAX_STRIDED_KDIM: usize = 288;
const MIN_STRIDED_EFFICIENCY: f64 = 0.75;

/// Whether the forward tile on the phase-split grid beats im2col + gemm
/// on the strided convolution `g` (see [`MAX_STRIDED_KDIM`]).
fn strided_pays(g: &ConvGeom) -> bool {
    g.kh > 1 && g.kdim() <= MAX_STRIDED_KDIM
}

/// Lanes of one vector register.
pub(super) const LANES: usize = 16;

impl Plan {
    /// A plan for `g` with weights `w`, or `None` when the direct path does
    /// not apply or does not pay (CPU, stride, channel counts, shape).
    pub fn new(g: &ConvGeom, w: &[f32]) -> Option<Self> {
        if g.stride > 1 {
            return strided_pays(g)
                .then(|| Self::with_min_efficiency(g, w, MIN_STRIDED_EFFICIENCY))
                .flatten();
        }
        if !tile_pays(g) {
            return None;
        }
        Self::with_min_efficiency(g, w, MIN_EFFICIENCY)
    }

    fn with_min_efficiency(g: &ConvGeom, w: &[f32], min_efficiency: f64) -> Option<Self> {
        if !available() || g.stride > MAX_STRIDE || g.kh != g.kw || !g.cog().is_multiple_of(MR) {
            return None;
        }
        let input = PhaseGrid::new(g);
        let wq = input.wq;
        let grid = g.oh * wq;
        let tiles = grid.div_ceil(NP);
        // The last tile computes only the vectors that hold grid points.
        let last_vectors = (grid - (tiles - 1) * NP).div_ceil(LANES);
        let computed = (tiles - 1) * NP + last_vectors * LANES;
        let efficiency = (g.oh * g.ow) as f64 / computed as f64;
        let kdim = g.cig() * g.kh * g.kw;
        if efficiency < min_efficiency || input.len(g.cig()) + tiles * NP >= u32::MAX as usize {
            return None;
        }
        let mut offs = Vec::with_capacity(kdim);
        for c in 0..g.cig() {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    offs.push(input.offset(c, ki, kj) as u32);
                }
            }
        }
        let mut wpack = vec![0f32; g.c_out * kdim];
        for co in 0..g.c_out {
            let (blk, r) = (co / MR, co % MR);
            for k in 0..kdim {
                wpack[blk * MR * kdim + k * MR + r] = w[co * kdim + k];
            }
        }
        let runs = (0..tiles)
            .map(|t| {
                let mut runs = Vec::new();
                let (start, end) = (t * NP, ((t + 1) * NP).min(grid));
                let mut p = start;
                while p < end {
                    let (oy, ox) = (p / wq, p % wq);
                    if ox >= g.ow {
                        p += wq - ox;
                        continue;
                    }
                    let len = (g.ow - ox).min(end - p);
                    runs.push((p - start, oy * g.ow + ox, len));
                    p += len;
                }
                runs
            })
            .collect();
        let tail_offs = if g.pointwise() {
            (0..g.cig()).map(|c| (c * NP) as u32).collect()
        } else {
            Vec::new()
        };
        // Tile `t` reads `NP` floats from `t * NP + offs[k]` for every tap.
        let max_off = offs.iter().copied().max().unwrap_or(0) as usize;
        let scratch_len = (max_off + tiles * NP)
            .max(input.len(g.cig()))
            .max(tail_offs.len() * NP);
        Some(Self {
            g: *g,
            input,
            offs,
            wpack,
            tiles,
            last_vectors,
            runs,
            tail_offs,
            scratch_len,
        })
    }

    /// Floats of per-image scratch: one group's padded input plus slack for
    /// the last tile's reads past the end (pointwise: the last tile's
    /// strip of every channel).
    pub fn scratch_len(&self) -> usize {
        self.scratch_len
    }

    /// Convolves one image: `x` `(C_in, H, W)` into `y` `(C_out, OH, OW)`,
    /// every element of which is written.
    ///
    /// `xpad` must be zeroed when first passed and then only passed to
    /// this plan: the padded copy writes the same interior positions every
    /// time, so the padding stays zero without a fill (a memset as large
    /// as the input, per image and group).
    pub fn run(&self, x: &[f32], y: &mut [MaybeUninit<f32>], xpad: &mut [f32]) {
        let g = &self.g;
        let (cig, cog, hw, ohw) = (g.cig(), g.cog(), g.h * g.w, g.oh * g.ow);
        let kdim = self.offs.len();
        assert!(
            xpad.len() >= self.scratch_len(),
            "direct conv: scratch too small"
        );
        assert!(
            x.len() == g.c_in * hw && y.len() == g.c_out * ohw,
            "direct conv: bad image"
        );
        let pointwise = !self.tail_offs.is_empty();
        for grp in 0..g.groups {
            let xg = &x[grp * cig * hw..(grp + 1) * cig * hw];
            // Tiles `..in_place` read `xg` itself, the rest `xpad`.
            let in_place = if pointwise {
                // Only the last tile would read past a channel's plane:
                // its strip of every channel, zero-filled to NP.
                let full = hw / NP;
                if full < self.tiles {
                    let len = hw - full * NP;
                    for (c, strip) in xpad[..cig * NP].chunks_exact_mut(NP).enumerate() {
                        strip[..len].copy_from_slice(&xg[c * hw + full * NP..(c + 1) * hw]);
                        strip[len..].fill(0.0);
                    }
                }
                full
            } else {
                // Zero-padded copy of this group's input (the padding is
                // zero already, see above).
                self.input.fill(g, xg, cig, xpad);
                0
            };
            for blk in 0..cog / MR {
                let co0 = grp * cog + blk * MR;
                let w = &self.wpack[(co0 / MR) * MR * kdim..][..MR * kdim];
                let yb = &mut y[co0 * ohw..(co0 + MR) * ohw];
                for t in 0..self.tiles {
                    let mut acc = [[0f32; NP]; MR];
                    let nv = if t + 1 == self.tiles {
                        self.last_vectors
                    } else {
                        NP / LANES
                    };
                    // SAFETY: AVX2 and FMA were detected when the plan was made,
                    // and `w` holds `MR * kdim` floats. Reads, padded: tile
                    // `t` reads `NP` floats from `t * NP + offs[k]`, below
                    // `max(offs) + tiles * NP <= scratch_len`, which was
                    // asserted above. Pointwise in place:
                    // `(cig-1)*hw + (t+1)*NP <= cig*hw` for `t < hw / NP`;
                    // the tail strips: `(cig-1)*NP + NP <= scratch_len`.
                    // A narrower last tile reads a prefix of the same.
                    unsafe {
                        if t < in_place {
                            tile_of(nv, &xg[t * NP..], &self.offs, w, &mut acc);
                        } else if pointwise {
                            tile_of(nv, xpad, &self.tail_offs, w, &mut acc);
                        } else {
                            tile_of(nv, &xpad[t * NP..], &self.offs, w, &mut acc);
                        }
                    }
                    for &(lane, out, len) in &self.runs[t] {
                        for (r, row) in acc.iter().enumerate() {
                            write_floats(
                                &mut yb[r * ohw + out..r * ohw + out + len],
                                &row[lane..lane + len],
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Largest stride the forward plan takes: a strided input is split into
/// `stride²` phases, each a plane of the scratch buffer.
const MAX_STRIDE: usize = 2;

/// The zero-padded input of one group as the forward tile reads it.
///
/// Stride 1: each channel is its padded `(H + 2P) x (W + 2P)` plane. Stride
/// `s > 1`: each padded plane is split into its `s²` phases, phase `(a, b)`
/// holding the padded positions `(s * y + a, s * x + b)` as a `Hq x Wq`
/// plane (`Hq = ceil((H + 2P) / s)`, likewise `Wq`). Output `(oy, ox)`'s tap
/// `(ki, kj)` reads padded position `(s * oy + ki, s * ox + kj)`, which is
/// `(oy + ki / s, ox + kj / s)` of phase `(ki % s, kj % s)`: on the grid
/// `p = oy * Wq + ox` every tap is again a constant offset from `p`, and
/// the stride-1 register tile computes the strided convolution without an
/// im2col matrix, each output the same chain of fused multiply-adds over
/// `(c, ki, kj)` as the gemm of that matrix.
#[derive(Debug, Clone, Copy)]
struct PhaseGrid {
    s: usize,
    hq: usize,
    wq: usize,
    /// Whether any tap reads phase row (column) `a`: a 1x1 strided
    /// convolution reads phase `(0, 0)` only, and only that is filled.
    rows_read: [bool; MAX_STRIDE],
    cols_read: [bool; MAX_STRIDE],
}

impl PhaseGrid {
    fn new(g: &ConvGeom) -> Self {
        let s = g.stride;
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let mut rows_read = [false; MAX_STRIDE];
        let mut cols_read = [false; MAX_STRIDE];
        for k in 0..g.kh {
            rows_read[k % s] = true;
        }
        for k in 0..g.kw {
            cols_read[k % s] = true;
        }
        PhaseGrid {
            s,
            hq: hp.div_ceil(s),
            wq: wp.div_ceil(s),
            rows_read,
            cols_read,
        }
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Floats of `channels` channels' phases.
    fn len(&self, channels: usize) -> usize {
        channels * self.s * self.s * self.plane()
    }

    /// Where tap `(ki, kj)` of channel `c` reads for grid point 0.
    fn offset(&self, c: usize, ki: usize, kj: usize) -> usize {
        let s = self.s;
        let phase = (ki % s) * s + kj % s;
        (c * s * s + phase) * self.plane() + (ki / s) * self.wq + kj / s
    }

    /// Writes the `channels` channels of `x` (each `H x W`) to their
    /// positions in `xpad`; the padding (and the phases no tap reads) is
    /// never written, so it stays as the caller left it (zero).
    fn fill(&self, g: &ConvGeom, x: &[f32], channels: usize, xpad: &mut [f32]) {
        let (s, hw, plane) = (self.s, g.h * g.w, self.plane());
        for c in 0..channels {
            let src = &x[c * hw..][..hw];
            for (iy, row) in src.chunks_exact(g.w).enumerate() {
                let py = iy + g.pad;
                let a = py % s;
                if !self.rows_read[a] {
                    continue;
                }
                let line = (c * s * s + a * s) * plane + (py / s) * self.wq;
                if s == 1 {
                    xpad[line + g.pad..][..g.w].copy_from_slice(row);
                    continue;
                }
                // Stride 2: column `ix` goes to phase `(ix + pad) % 2`.
                let (first, second) = (g.pad % 2, (g.pad + 1) % 2);
                let col0 = g.pad / 2; // phase column of input column 0
                let col1 = g.pad.div_ceil(2); // ... and of input column 1
                let (lo, hi) = xpad[line..line + plane + self.wq].split_at_mut(plane);
                let (p_first, p_second) = if first == 0 { (lo, hi) } else { (hi, lo) };
                let (take_first, take_second) = (self.cols_read[first], self.cols_read[second]);
                for (i, pair) in row.chunks(2).enumerate() {
                    if take_first {
                        p_first[col0 + i] = pair[0];
                    }
                    if take_second && pair.len() == 2 {
                        p_second[col1 + i] = pair[1];
                    }
                }
            }
        }
    }
}

/// Weight gradient of a stride-1 convolution by the same padded-grid trick:
/// `dw[co, k] = sum_p dy'[co, p] * xpad[off(k) + p]`, where `dy'` is the
/// output gradient laid on the padded-width grid with zeros in the
/// discarded columns. A register tile of 8 output channels x 3 taps keeps
/// 24 vector accumulators over 16 grid points at a time.
#[derive(Debug)]
pub(crate) struct FilterPlan {
    g: ConvGeom,
    hp: usize,
    wp: usize,
    offs: Vec<u32>,
    /// Grid length rounded up to whole vectors.
    p_len: usize,
}

/// Grid points per vector in the weight-gradient kernel.
pub(super) const V: usize = 16;

impl FilterPlan {
    /// A plan for `g`, or `None` when the direct path does not apply.
    pub fn new(g: &ConvGeom) -> Option<Self> {
        if !tile_pays(g) {
            return None;
        }
        Self::with_limits(g, MIN_FILTER_EFFICIENCY, MIN_FILTER_GRID)
    }

    fn with_limits(g: &ConvGeom, min_efficiency: f64, min_grid: usize) -> Option<Self> {
        if !available() || g.stride != 1 || g.kh != g.kw || !g.cog().is_multiple_of(MR) {
            return None;
        }
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let p_len = (g.oh * wp).div_ceil(V) * V;
        let efficiency = (g.oh * g.ow) as f64 / p_len as f64;
        if efficiency < min_efficiency
            || p_len < min_grid
            || g.cig() * hp * wp + p_len + NP >= u32::MAX as usize
        {
            return None;
        }
        let mut offs = Vec::with_capacity(g.kdim());
        for c in 0..g.cig() {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    offs.push((c * hp * wp + ki * wp + kj) as u32);
                }
            }
        }
        Some(Self {
            g: *g,
            hp,
            wp,
            offs,
            p_len,
        })
    }

    /// Floats of per-image scratch: padded input (with slack), then the
    /// gridded output gradient of one group.
    pub fn scratch_len(&self) -> usize {
        self.xpad_len() + self.g.cog() * self.p_len
    }

    fn xpad_len(&self) -> usize {
        self.g.cig() * self.hp * self.wp + NP + self.wp * self.g.kh + self.g.kw
    }

    /// Floats of the lane accumulator [`FilterPlan::accumulate`] adds into.
    pub fn lanes_len(&self) -> usize {
        self.g.c_out * self.g.kdim() * V
    }

    /// Adds one image's weight gradient to `lanes`, which holds 16 partial
    /// sums per weight (see [`FilterPlan::finish`]): summing the lanes once
    /// at the end, not after every image, keeps the tile loop short.
    ///
    /// `scratch` must be zeroed when first passed and then only passed to
    /// this plan (as in [`Plan::run`]: the padding of the input and the
    /// discarded columns of the gradient grid stay zero without a fill).
    pub fn accumulate(&self, x: &[f32], dy: &[f32], lanes: &mut Lanes, scratch: &mut [f32]) {
        // SAFETY: every group's blocks cover its `cog / MR` row blocks
        // (`cog` is a multiple of MR, `FilterPlan::new`) and every `kdim`
        // column, so a first call writes every lane.
        unsafe { lanes.update(|out, init| self.accumulate_into(x, dy, out, init, scratch)) }
    }

    fn accumulate_into(
        &self,
        x: &[f32],
        dy: &[f32],
        lanes: &mut [MaybeUninit<f32>],
        init: bool,
        scratch: &mut [f32],
    ) {
        let g = &self.g;
        let (cig, cog, hw, ohw) = (g.cig(), g.cog(), g.h * g.w, g.oh * g.ow);
        let plane = self.hp * self.wp;
        assert!(
            scratch.len() >= self.scratch_len(),
            "direct conv: scratch too small"
        );
        assert!(
            x.len() == g.c_in * hw && dy.len() == g.c_out * ohw,
            "direct conv: bad image"
        );
        assert!(
            lanes.len() == self.lanes_len(),
            "direct conv: bad accumulator"
        );
        let (xpad, dyg) = scratch.split_at_mut(self.xpad_len());
        // A pointwise convolution whose plane is whole vectors is its own
        // grid, input and gradient alike: read both in place.
        if g.pointwise() && self.p_len == ohw {
            for grp in 0..g.groups {
                let xg = &x[grp * cig * hw..(grp + 1) * cig * hw];
                let dg = &dy[grp * cog * ohw..(grp + 1) * cog * ohw];
                // SAFETY: as below, with `plane == p_len == hw`: the largest
                // input read is `(cig-1)*hw + p_len - 1 < xg.len()`, and
                // `dg` holds `cog` rows of `p_len`.
                unsafe { self.blocks(grp, xg, dg, lanes, init) };
            }
            return;
        }
        for grp in 0..g.groups {
            for c in 0..cig {
                let src = &x[(grp * cig + c) * hw..][..hw];
                for iy in 0..g.h {
                    let dst = c * plane + (iy + g.pad) * self.wp + g.pad;
                    xpad[dst..dst + g.w].copy_from_slice(&src[iy * g.w..(iy + 1) * g.w]);
                }
            }
            for co in 0..cog {
                let src = &dy[(grp * cog + co) * ohw..][..ohw];
                for oy in 0..g.oh {
                    let dst = co * self.p_len + oy * self.wp;
                    dyg[dst..dst + g.ow].copy_from_slice(&src[oy * g.ow..(oy + 1) * g.ow]);
                }
            }
            // SAFETY: the largest input read is `max(offs) + p_len - 1 <
            // cig*plane + K + V` (as in the forward tile, with
            // `oh + K - 1 == hp`), inside `xpad_len`, which `xpad` was cut
            // to; `dyg` holds `cog` rows of `p_len`.
            unsafe { self.blocks(grp, xpad, dyg, lanes, init) };
        }
    }

    /// Adds group `grp`'s products to `lanes` (writes them with `init`):
    /// `x` is the group's input on the grid, `d` its `cog` gradient rows of
    /// `p_len` floats.
    ///
    /// # Safety
    /// `x` must hold `max(offs) + p_len` floats and `d` `cog * p_len`; the
    /// group's lanes must be initialised unless `init` is set.
    unsafe fn blocks(
        &self,
        grp: usize,
        x: &[f32],
        d: &[f32],
        lanes: &mut [MaybeUninit<f32>],
        init: bool,
    ) {
        let kdim = self.g.kdim();
        for blk in 0..self.g.cog() / MR {
            let d = &d[blk * MR * self.p_len..(blk + 1) * MR * self.p_len];
            let co0 = grp * self.g.cog() + blk * MR;
            let out = &mut lanes[co0 * kdim * V..(co0 + MR) * kdim * V];
            let mut k = 0;
            while k < kdim {
                let nk = (kdim - k).min(3);
                // SAFETY: AVX2 and FMA were detected when the plan was made. `d`
                // holds MR rows of `p_len` floats, `x` covers every read by
                // the caller's contract; `out` holds MR rows of `kdim * V`
                // lanes and `k + nk <= kdim`.
                unsafe {
                    match nk {
                        3 => wtile::<3>(x, &self.offs[k..k + 3], d, self.p_len, out, kdim, k, init),
                        2 => wtile::<2>(x, &self.offs[k..k + 2], d, self.p_len, out, kdim, k, init),
                        _ => wtile::<1>(x, &self.offs[k..k + 1], d, self.p_len, out, kdim, k, init),
                    }
                }
                k += nk;
            }
        }
    }

    /// Sums the lanes: `dw[i] = sum(lanes[16 i..16 i + 16])`, output
    /// channels in parallel.
    pub fn finish(&self, lanes: &PartLanes) -> Vec<f32> {
        let kdim = self.g.kdim();
        let chunk = kdim.max(1);
        let init = || vec![0f32; kdim * V];
        super::cpu::par_zeroed_init_per_chunk(self.g.c_out * kdim, chunk, init, |summed, co, dw| {
            lanes.sum_into(co * kdim * V..(co + 1) * kdim * V, summed);
            for (d, l) in dw.iter_mut().zip(summed.chunks_exact(V)) {
                *d = l.iter().sum();
            }
        })
    }
}

/// Minimum share of real outputs on the gradient's grid (see
/// [`MIN_EFFICIENCY`]).
const MIN_FILTER_EFFICIENCY: f64 = 0.85;
/// Minimum grid length: each tile call sweeps the whole grid for 24
/// weights, and on short grids (16x16 images and smaller) the fixed cost
/// per call loses to im2col + gemm (measured on CIFAR ResNet stages 2, 3).
const MIN_FILTER_GRID: usize = 512;

/// `out[(r * kdim + k0 + j) * 16 + l] += sum over p = l (mod 16) of
/// d[r * p_len + p] * x[offs[j] + p]`, for `p < p_len`: every lane is one
/// chain of fused multiply-adds over `p` in order, on AVX-512 and AVX2
/// alike, so both give the same bits. With `init`, `out` is written as if
/// it held zeros (`0 + sum`) and may start uninitialised
/// ([`super::lanes::Lanes`]).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]); `d` must hold `MR *
/// p_len` floats, `p_len` must be a multiple of 16, `x` must hold `max(offs)
/// + p_len` floats and `out` `MR * kdim * 16` floats with `k0 + NK <= kdim`,
/// the elements this call adds to initialised unless `init` is set.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn wtile<const NK: usize>(
    x: &[f32],
    offs: &[u32],
    d: &[f32],
    p_len: usize,
    out: &mut [MaybeUninit<f32>],
    kdim: usize,
    k0: usize,
    init: bool,
) {
    // SAFETY: forwarded under the caller's contract; the AVX-512 variant
    // only where the CPU has it.
    unsafe {
        if avx512() {
            wtile_avx512::<NK>(x, offs, d, p_len, out, kdim, k0, init)
        } else {
            wtile_avx2::<NK>(x, offs, d, p_len, out, kdim, k0, init)
        }
    }
}

/// [`wtile`] on AVX-512: 8 rows x `NK` taps of 16-lane accumulators.
///
/// # Safety
/// As for [`wtile`], and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wtile_avx512<const NK: usize>(
    x: &[f32],
    offs: &[u32],
    d: &[f32],
    p_len: usize,
    out: &mut [MaybeUninit<f32>],
    kdim: usize,
    k0: usize,
    init: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(offs.len() == NK && d.len() >= MR * p_len && p_len.is_multiple_of(V));
    debug_assert!(offs.iter().all(|&o| o as usize + p_len <= x.len()));
    debug_assert!(k0 + NK <= kdim && out.len() >= MR * kdim * V);
    let (xp, dp) = (x.as_ptr(), d.as_ptr());
    let mut a = [[_mm512_setzero_ps(); NK]; MR];
    let mut p = 0;
    while p < p_len {
        let mut xv = [_mm512_setzero_ps(); NK];
        for (j, v) in xv.iter_mut().enumerate() {
            // SAFETY: `offs[j] + p + 16 <= x.len()` by the contract.
            *v = unsafe { _mm512_loadu_ps(xp.add(offs[j] as usize + p)) };
        }
        for (r, acc) in a.iter_mut().enumerate() {
            // SAFETY: `r * p_len + p + 16 <= MR * p_len <= d.len()`.
            let dv = unsafe { _mm512_loadu_ps(dp.add(r * p_len + p)) };
            for j in 0..NK {
                acc[j] = _mm512_fmadd_ps(dv, xv[j], acc[j]);
            }
        }
        p += V;
    }
    let op = out.as_mut_ptr().cast::<f32>();
    for (r, acc) in a.iter().enumerate() {
        for (j, v) in acc.iter().enumerate() {
            // SAFETY: `(r * kdim + k0 + j + 1) * 16 <= MR * kdim * 16`; read
            // only when initialised (the contract).
            unsafe {
                let q = op.add((r * kdim + k0 + j) * V);
                let held = if init {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(q)
                };
                _mm512_storeu_ps(q, _mm512_add_ps(held, *v));
            }
        }
    }
}

/// [`wtile`] on AVX2: sixteen 8-lane accumulators do not fit the 16 ymm
/// registers beside their operands, so the 8 rows x 16 lanes are swept in
/// passes of 8 lanes, each lane the same chain of multiply-adds as on
/// AVX-512: with one tap, all 8 rows per pass (8 accumulators); with two
/// or three, 4 rows (`4 * NK`). One tap on 4 rows (the last tap of a
/// 16-channel layer) was 4 chains for the 5-cycle multiply-add latency of
/// the core's 2 units, twice the passes for a tenth of the work.
///
/// # Safety
/// As for [`wtile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wtile_avx2<const NK: usize>(
    x: &[f32],
    offs: &[u32],
    d: &[f32],
    p_len: usize,
    out: &mut [MaybeUninit<f32>],
    kdim: usize,
    k0: usize,
    init: bool,
) {
    debug_assert!(offs.len() == NK && d.len() >= MR * p_len && p_len.is_multiple_of(V));
    debug_assert!(offs.iter().all(|&o| o as usize + p_len <= x.len()));
    debug_assert!(k0 + NK <= kdim && out.len() >= MR * kdim * V);
    // SAFETY: forwarded; each pass stays inside rows 0..MR.
    unsafe {
        if NK == 1 {
            wtile_avx2_rows::<NK, MR>(x, offs, d, p_len, out, kdim, k0, init, 0);
        } else {
            for r0 in (0..MR).step_by(4) {
                wtile_avx2_rows::<NK, 4>(x, offs, d, p_len, out, kdim, k0, init, r0);
            }
        }
    }
}

/// Rows `r0 .. r0 + R` of [`wtile_avx2`], 8 lanes at a time.
///
/// # Safety
/// As for [`wtile`], with `r0 + R <= MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wtile_avx2_rows<const NK: usize, const R: usize>(
    x: &[f32],
    offs: &[u32],
    d: &[f32],
    p_len: usize,
    out: &mut [MaybeUninit<f32>],
    kdim: usize,
    k0: usize,
    init: bool,
    r0: usize,
) {
    use std::arch::x86_64::*;
    const H: usize = 8;
    debug_assert!(r0 + R <= MR);
    let (xp, dp, op) = (x.as_ptr(), d.as_ptr(), out.as_mut_ptr().cast::<f32>());
    for h in (0..V).step_by(H) {
        let mut a = [[_mm256_setzero_ps(); NK]; R];
        let mut p = h;
        while p < p_len {
            let mut xv = [_mm256_setzero_ps(); NK];
            for (j, v) in xv.iter_mut().enumerate() {
                // SAFETY: `offs[j] + p + 8 <= offs[j] + p_len <= x.len()`.
                *v = unsafe { _mm256_loadu_ps(xp.add(offs[j] as usize + p)) };
            }
            for (r, acc) in a.iter_mut().enumerate() {
                // SAFETY: `(r0 + r) * p_len + p + 8 <= MR * p_len <= d.len()`.
                let dv = unsafe { _mm256_loadu_ps(dp.add((r0 + r) * p_len + p)) };
                for j in 0..NK {
                    acc[j] = _mm256_fmadd_ps(dv, xv[j], acc[j]);
                }
            }
            p += V;
        }
        for (r, acc) in a.iter().enumerate() {
            for (j, v) in acc.iter().enumerate() {
                // SAFETY: `((r0 + r) * kdim + k0 + j) * 16 + h + 8 <= MR *
                // kdim * 16`; read only when initialised (the contract).
                unsafe {
                    let q = op.add(((r0 + r) * kdim + k0 + j) * V + h);
                    let held = if init {
                        _mm256_setzero_ps()
                    } else {
                        _mm256_loadu_ps(q)
                    };
                    _mm256_storeu_ps(q, _mm256_add_ps(held, *v));
                }
            }
        }
    }
}

/// Never called: plans are only made on x86-64 with AVX2.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn wtile<const NK: usize>(
    _: &[f32],
    _: &[u32],
    _: &[f32],
    _: usize,
    _: &mut [MaybeUninit<f32>],
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("direct convolution needs AVX2")
}

/// Whether the AVX-512 kernels may run (detected, and not capped by
/// [`set_max_isa`](super::set_max_isa)).
pub(super) fn avx512() -> bool {
    super::isa::avx512()
}

/// Whether the direct kernels may run at all: they need AVX2 and FMA, and
/// take AVX-512 where [`avx512`] says so.
pub(super) fn available() -> bool {
    super::isa::avx2()
}

/// [`tile`] over the first `nv` vectors (1 to 3) of the grid strip; the
/// lanes past them are left as they were.
///
/// # Safety
/// As for [`tile`].
pub(super) unsafe fn tile_of(
    nv: usize,
    x: &[f32],
    offs: &[u32],
    w: &[f32],
    acc: &mut [[f32; NP]; MR],
) {
    // SAFETY: forwarded under the caller's contract; `NV * 16 <= NP`, and
    // `acc` is MR rows of NP floats.
    unsafe { tile_into(nv, x, offs, w, acc.as_mut_ptr().cast(), NP) }
}

/// Two 16-lane [`tile`]s with the same offsets at once: `out[i] + r *
/// stride + j = sum_k w[i][k * MR + r] * x[i][offs[k] + j]` for `i` in 0,
/// 1 and `j < 16`, each lane the chain of [`tile`] (so the same bits).
///
/// On AVX2 a single 16-lane tile leaves rows 6 and 7 to a `2 x 2` block:
/// four accumulators cannot hide the multiply-add latency (5 cycles, 2
/// units), and in a CIFAR training step that block took more time than the
/// `6 x 2` block of rows 0 to 5 beside it. Here rows 6 and 7 of both tiles
/// run as one block of 8 accumulators (their 4 input vectors loaded, then
/// 4 broadcast weights in turn: 13 registers).
///
/// # Safety
/// As for [`tile`] with `NV = 1`, for both `(x[i], w[i], out[i])`.
pub(super) unsafe fn tile_pair_into(
    x: [&[f32]; 2],
    offs: &[u32],
    w: [&[f32]; 2],
    out: [*mut f32; 2],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded under the caller's contract; the AVX-512 variant
    // only where the CPU has it.
    unsafe {
        if avx512() {
            for i in 0..2 {
                tile_avx512::<1>(x[i], offs, w[i], out[i], stride);
            }
        } else {
            tile_avx2_pair(x, offs, w, out, stride);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, offs, w, out, stride);
        unreachable!("direct convolution needs AVX2")
    }
}

/// [`tile_pair_into`] on AVX2: rows 0 to 5 of each tile as in
/// [`tile_avx2`], then rows 6 and 7 of both together.
///
/// # Safety
/// As for [`tile_pair_into`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_pair(
    x: [&[f32]; 2],
    offs: &[u32],
    w: [&[f32]; 2],
    out: [*mut f32; 2],
    stride: usize,
) {
    use std::arch::x86_64::*;
    for i in 0..2 {
        debug_assert!(w[i].len() >= offs.len() * MR);
        debug_assert!(offs.iter().all(|&o| o as usize + LANES <= x[i].len()));
        // SAFETY: rows 0..6 and lanes 0..16, inside the caller's contract.
        unsafe { tile_avx2_block::<6, 2>(x[i], offs, w[i], out[i], stride, 0, 0) };
    }
    let (xa, xb) = (x[0].as_ptr(), x[1].as_ptr());
    let (wa, wb) = (w[0].as_ptr(), w[1].as_ptr());
    // Rows 6 and 7 of tile 0, then of tile 1, two vectors each.
    let mut a = [[_mm256_setzero_ps(); 2]; 4];
    for (k, &o) in offs.iter().enumerate() {
        let o = o as usize;
        // SAFETY: `o + 16 <= x[i].len()` and `k * MR + 8 <= w[i].len()`
        // by the contract.
        unsafe {
            let xv = [
                [_mm256_loadu_ps(xa.add(o)), _mm256_loadu_ps(xa.add(o + 8))],
                [_mm256_loadu_ps(xb.add(o)), _mm256_loadu_ps(xb.add(o + 8))],
            ];
            let wk = [wa.add(k * MR + 6), wb.add(k * MR + 6)];
            for (q, aq) in a.iter_mut().enumerate() {
                let (i, r) = (q / 2, q % 2);
                let b = _mm256_set1_ps(*wk[i].add(r));
                aq[0] = _mm256_fmadd_ps(b, xv[i][0], aq[0]);
                aq[1] = _mm256_fmadd_ps(b, xv[i][1], aq[1]);
            }
        }
    }
    for (q, aq) in a.iter().enumerate() {
        let (i, r) = (q / 2, 6 + q % 2);
        for (v, av) in aq.iter().enumerate() {
            // SAFETY: writable by the contract.
            unsafe { _mm256_storeu_ps(out[i].add(r * stride + v * 8), *av) };
        }
    }
}

/// [`tile`] over the first `nv` vectors (1 to 3), row `r` of the result
/// stored at `out + r * stride`.
///
/// # Safety
/// As for [`tile`], and `out + r * stride + nv * 16` must be writable for
/// every `r < 8`.
pub(super) unsafe fn tile_into(
    nv: usize,
    x: &[f32],
    offs: &[u32],
    w: &[f32],
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: forwarded under the caller's contract.
    unsafe {
        match nv {
            3 => tile::<3>(x, offs, w, out, stride),
            2 => tile::<2>(x, offs, w, out, stride),
            _ => tile::<1>(x, offs, w, out, stride),
        }
    }
}

/// The register tile: `out[r * stride + j] = sum_k w[k * MR + r] * x[offs[k] + j]`
/// for `j < NV * 16`. Every lane is its own chain of fused multiply-adds
/// over `k` in order, so a lane's result depends neither on `NV` nor on the
/// instruction set (AVX-512 or AVX2) that computed it.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]), `w` must hold
/// `offs.len() * MR` floats and `x` must hold `max(offs) + NV * 16` floats;
/// `NV <= 3`; `out + r * stride + NV * 16` must be writable for every `r <
/// MR`.
#[cfg(target_arch = "x86_64")]
unsafe fn tile<const NV: usize>(x: &[f32], offs: &[u32], w: &[f32], out: *mut f32, stride: usize) {
    // SAFETY: forwarded under the caller's contract; the AVX-512 variant
    // only where the CPU has it.
    unsafe {
        if avx512() {
            tile_avx512::<NV>(x, offs, w, out, stride)
        } else {
            tile_avx2::<NV>(x, offs, w, out, stride)
        }
    }
}

/// [`tile`] on AVX-512: `MR * NV` 16-lane accumulators.
///
/// # Safety
/// As for [`tile`], and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const NV: usize>(
    x: &[f32],
    offs: &[u32],
    w: &[f32],
    out: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(NV * LANES <= NP && w.len() >= offs.len() * MR);
    debug_assert!(offs.iter().all(|&o| o as usize + NV * LANES <= x.len()));
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut a = [[_mm512_setzero_ps(); NV]; MR];
    for (k, &o) in offs.iter().enumerate() {
        let mut xv = [_mm512_setzero_ps(); NV];
        for (v, xv) in xv.iter_mut().enumerate() {
            // SAFETY: in bounds by the function's contract.
            *xv = unsafe { _mm512_loadu_ps(xp.add(o as usize + v * LANES)) };
        }
        // SAFETY: `k * MR + MR <= offs.len() * MR <= w.len()`.
        let wk = unsafe { wp.add(k * MR) };
        for (r, ar) in a.iter_mut().enumerate() {
            // SAFETY: `k * MR + r < w.len()`, as above.
            let b = _mm512_set1_ps(unsafe { *wk.add(r) });
            for (av, xv) in ar.iter_mut().zip(&xv) {
                *av = _mm512_fmadd_ps(b, *xv, *av);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (v, av) in ar.iter().enumerate() {
            // SAFETY: writable by the function's contract.
            unsafe { _mm512_storeu_ps(out.add(r * stride + v * LANES), *av) };
        }
    }
}

/// [`tile`] on AVX2: rows 0 to 5 in strips of 16 lanes (`6 x 2`
/// accumulators beside 2 input vectors and a broadcast weight), then rows
/// 6 and 7 across all the lanes (`2 x 2 NV` accumulators beside 2
/// broadcast weights and an input vector): 12 accumulators, enough to hide
/// the multiply-add latency, in 15 of the 16 ymm registers.
///
/// The earlier sweep, 8 rows in two passes of 4 over strips of 24 lanes
/// (`4 x 3` accumulators, 3 inputs and a broadcast: all 16 registers),
/// left the compiler one register short: it kept an accumulator on the
/// stack, a store and a reload in that accumulator's chain at every `k`.
/// One core, a 48-lane tile per call, `kdim` 32 to 144: 43 GFLOP/s for
/// that sweep, 79-82 for passes of 4 rows over 16 lanes, 85-97 for this
/// one, 107 for a register-only multiply-add loop (AVX2-only AMD EPYC,
/// Zen 2). Every sweep gives each lane the same chain, so the same bits.
///
/// # Safety
/// As for [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const NV: usize>(
    x: &[f32],
    offs: &[u32],
    w: &[f32],
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: forwarded; each block stays inside rows 0..8 and lanes
    // 0..NV * 16.
    unsafe {
        for v in 0..NV {
            tile_avx2_block::<6, 2>(x, offs, w, out, stride, 0, v * LANES);
        }
        match NV {
            3 => tile_avx2_block::<2, 6>(x, offs, w, out, stride, 6, 0),
            2 => tile_avx2_block::<2, 4>(x, offs, w, out, stride, 6, 0),
            _ => tile_avx2_block::<2, 2>(x, offs, w, out, stride, 6, 0),
        }
    }
}

/// Rows `r0 .. r0 + R` of [`tile`] on AVX2 for the `Y * 8` lanes from
/// `j0`: `R x Y` accumulators. With `Y <= R` the `Y` input vectors are
/// loaded first and each row's weight broadcast in turn (`R Y + Y + 1`
/// registers); otherwise the `R` weights first and each input vector in
/// turn (`R Y + R + 1`).
///
/// # Safety
/// As for [`tile`], with rows `r0 .. r0 + R <= MR` and lanes up to `j0 + Y
/// * 8` in place of `NV * 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_block<const R: usize, const Y: usize>(
    x: &[f32],
    offs: &[u32],
    w: &[f32],
    out: *mut f32,
    stride: usize,
    r0: usize,
    j0: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(r0 + R <= MR && w.len() >= offs.len() * MR);
    debug_assert!(offs.iter().all(|&o| o as usize + j0 + Y * 8 <= x.len()));
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut a = [[_mm256_setzero_ps(); Y]; R];
    for (k, &o) in offs.iter().enumerate() {
        // SAFETY: `k * MR + MR <= offs.len() * MR <= w.len()`, and `o + j0
        // + Y * 8 <= x.len()` by the function's contract.
        let (wk, xk) = unsafe { (wp.add(k * MR + r0), xp.add(o as usize + j0)) };
        if Y <= R {
            let mut xv = [_mm256_setzero_ps(); Y];
            for (v, xv) in xv.iter_mut().enumerate() {
                // SAFETY: in bounds by the function's contract.
                *xv = unsafe { _mm256_loadu_ps(xk.add(v * 8)) };
            }
            for (r, ar) in a.iter_mut().enumerate() {
                // SAFETY: `k * MR + r0 + r < w.len()`, as above.
                let b = _mm256_set1_ps(unsafe { *wk.add(r) });
                for (av, xv) in ar.iter_mut().zip(&xv) {
                    *av = _mm256_fmadd_ps(b, *xv, *av);
                }
            }
        } else {
            let mut b = [_mm256_setzero_ps(); R];
            for (r, b) in b.iter_mut().enumerate() {
                // SAFETY: as above.
                *b = _mm256_set1_ps(unsafe { *wk.add(r) });
            }
            for v in 0..Y {
                // SAFETY: in bounds by the function's contract.
                let xv = unsafe { _mm256_loadu_ps(xk.add(v * 8)) };
                for (ar, b) in a.iter_mut().zip(&b) {
                    ar[v] = _mm256_fmadd_ps(*b, xv, ar[v]);
                }
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (v, av) in ar.iter().enumerate() {
            // SAFETY: writable by the function's contract.
            unsafe { _mm256_storeu_ps(out.add((r0 + r) * stride + j0 + v * 8), *av) };
        }
    }
}

/// Never called: plans are only made on x86-64 with AVX2.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const NV: usize>(_: &[f32], _: &[u32], _: &[f32], _: *mut f32, _: usize) {
    unreachable!("direct convolution needs AVX2")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv_bwd_filter, conv_fwd, with_portable_conv};
    use crate::ops::Conv2dParams;

    use crate::ops::cpu::test_data as data;

    /// The register tiles against a scalar chain of fused multiply-adds per
    /// lane (`f32::mul_add` rounds once, as the vector FMA does): bit for
    /// bit on AVX2 and, where the CPU has it, AVX-512, at every width.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiles_are_one_fma_chain_per_lane_on_every_instruction_set() {
        if !available() {
            eprintln!("skipped: the CPU has no AVX2");
            return;
        }
        let kdim = 37;
        let offs: Vec<u32> = (0..kdim as u32).map(|k| 5 * k + k % 3).collect();
        let x = data(offs[kdim - 1] as usize + NP + 64, 3);
        let w = data(kdim * MR, 4);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for nv in 1..=3 {
            let mut want = vec![0f32; MR * NP];
            for r in 0..MR {
                for j in 0..nv * LANES {
                    let mut acc = 0f32;
                    for (k, &o) in offs.iter().enumerate() {
                        acc = w[k * MR + r].mul_add(x[o as usize + j], acc);
                    }
                    want[r * NP + j] = acc;
                }
            }
            let mut got = vec![0f32; MR * NP];
            // SAFETY: AVX2 checked; `w` holds `kdim * MR` floats, `x`
            // covers `max(offs) + NP`, `got` MR rows of NP.
            unsafe {
                match nv {
                    3 => tile_avx2::<3>(&x, &offs, &w, got.as_mut_ptr(), NP),
                    2 => tile_avx2::<2>(&x, &offs, &w, got.as_mut_ptr(), NP),
                    _ => tile_avx2::<1>(&x, &offs, &w, got.as_mut_ptr(), NP),
                }
            }
            assert_eq!(bits(&got), bits(&want), "avx2 tile, {nv} vectors");
            let mut got = vec![0f32; MR * NP];
            // SAFETY: as above; the dispatching tile picks the CPU's best.
            unsafe { tile_into(nv, &x, &offs, &w, got.as_mut_ptr(), NP) };
            assert_eq!(bits(&got), bits(&want), "dispatched tile, {nv} vectors");
        }
        // Two 16-lane tiles at once, each with its own input and weights:
        // the bits of the single tile, every row.
        let (x2, w2) = (data(x.len(), 6), data(w.len(), 7));
        let mut want = [vec![0f32; MR * NP], vec![0f32; MR * NP]];
        for (want, (x, w)) in want.iter_mut().zip([(&x, &w), (&x2, &w2)]) {
            // SAFETY: as above.
            unsafe { tile_avx2::<1>(x, &offs, w, want.as_mut_ptr(), NP) };
        }
        let mut got = [vec![f32::NAN; MR * NP], vec![f32::NAN; MR * NP]];
        let out = [got[0].as_mut_ptr(), got[1].as_mut_ptr()];
        // SAFETY: as above, for both tiles.
        unsafe { tile_pair_into([&x, &x2], &offs, [&w, &w2], out, NP) };
        for i in 0..2 {
            for r in 0..MR {
                let row = r * NP..r * NP + LANES;
                assert_eq!(
                    bits(&got[i][row.clone()]),
                    bits(&want[i][row]),
                    "tile pair: tile {i}, row {r}"
                );
            }
        }
        // The weight-gradient tile: 16 lanes per weight, lane l summing
        // the grid points p = l (mod 16) in order.
        let p_len = 96;
        let d = data(MR * p_len, 5);
        for nk in 1..=3 {
            // Lanes the tile does not own keep `held` (NaN for a first,
            // storing call: any read of them would show).
            for (init, held) in [(false, 0.25f32), (true, f32::NAN)] {
                let mut want = vec![held; MR * kdim * V];
                for r in 0..MR {
                    for j in 0..nk {
                        for l in 0..V {
                            let mut acc = 0f32;
                            for p in (l..p_len).step_by(V) {
                                acc = d[r * p_len + p].mul_add(x[offs[j] as usize + p], acc);
                            }
                            // The tile adds its accumulator to what `out`
                            // held, or to zero when storing (`-0.0 + 0.0`
                            // is `+0.0` either way).
                            let before = if init { 0.0 } else { held };
                            want[(r * kdim + 2 + j) * V + l] = before + acc;
                        }
                    }
                }
                let mut runs = vec![("avx2", vec![held; MR * kdim * V])];
                if avx512() {
                    runs.push(("avx512", vec![held; MR * kdim * V]));
                }
                for (isa, out) in &mut runs {
                    let offs = &offs[..nk];
                    let o = crate::ops::cpu::as_uninit(out);
                    // SAFETY: the CPU has the instruction set picked; `d`
                    // holds MR rows of `p_len` (a multiple of 16), `x`
                    // covers `offs[j] + p_len`, `out` MR rows of `kdim *
                    // 16`, every one initialised.
                    unsafe {
                        match (*isa, nk) {
                            ("avx2", 3) => wtile_avx2::<3>(&x, offs, &d, p_len, o, kdim, 2, init),
                            ("avx2", 2) => wtile_avx2::<2>(&x, offs, &d, p_len, o, kdim, 2, init),
                            ("avx2", _) => wtile_avx2::<1>(&x, offs, &d, p_len, o, kdim, 2, init),
                            (_, 3) => wtile_avx512::<3>(&x, offs, &d, p_len, o, kdim, 2, init),
                            (_, 2) => wtile_avx512::<2>(&x, offs, &d, p_len, o, kdim, 2, init),
                            _ => wtile_avx512::<1>(&x, offs, &d, p_len, o, kdim, 2, init),
                        }
                    }
                    assert_eq!(
                        bits(out),
                        bits(&want),
                        "{isa} weight-gradient tile, {nk} taps, init {init}"
                    );
                }
            }
        }
        if avx512() {
            let mut got = vec![0f32; MR * NP];
            // SAFETY: AVX-512F detected; bounds as above.
            unsafe { tile_avx512::<3>(&x, &offs, &w, got.as_mut_ptr(), NP) };
            let mut avx2 = vec![0f32; MR * NP];
            // SAFETY: as above.
            unsafe { tile_avx2::<3>(&x, &offs, &w, avx2.as_mut_ptr(), NP) };
            assert_eq!(bits(&got), bits(&avx2), "avx512 and avx2 tiles");
        }
    }

    #[test]
    fn tiles_take_spatial_kernels_only() {
        let geom = |ci: usize, k: usize, pad: usize| {
            let p = Conv2dParams {
                stride: 1,
                padding: pad,
                groups: 1,
            };
            ConvGeom::new(&[2, ci, 32, 32], &[16, ci, k, k], p).unwrap()
        };
        // A CIFAR ResNet's first stage (kdim 144) on the direct tiles; a
        // pointwise convolution on gemm; ResNet-50's 3x3 layers (576 and
        // up) on the tiles on AVX-512 only.
        assert!(tile_pays(&geom(16, 3, 1)));
        assert!(!tile_pays(&geom(64, 1, 0)));
        assert_eq!(tile_pays(&geom(64, 3, 1)), avx512());
    }

    #[test]
    fn direct_matches_im2col_gemm() {
        if !available() {
            return;
        }
        // (n, c_in, h, w, c_out, k, pad, groups)
        let cases = [
            (2, 3, 7, 9, 8, 3, 1, 1),
            (1, 5, 6, 6, 16, 5, 2, 1),
            (2, 16, 5, 5, 16, 3, 0, 1),
            (2, 4, 4, 4, 16, 3, 1, 2),
            (1, 3, 5, 4, 8, 1, 0, 1),
            (1, 2, 5, 5, 8, 2, 1, 1),
            (1, 16, 32, 32, 16, 3, 1, 1),
            // Pointwise, read in place: whole tiles and a partial last
            // one; whole tiles only; two groups.
            (2, 16, 10, 10, 16, 1, 0, 1),
            (1, 8, 6, 8, 8, 1, 0, 1),
            (2, 16, 7, 9, 32, 1, 0, 2),
            // Grids ending in a narrower tile: one vector (14x14 pointwise,
            // 196 = 4 * 48 + 4), two (14x14 padded, 224 = 4 * 48 + 32) and
            // one after a full tile (7x7 padded, 63 = 48 + 15).
            (2, 16, 14, 14, 16, 1, 0, 1),
            (1, 8, 14, 14, 16, 3, 1, 1),
            (2, 16, 7, 7, 16, 3, 1, 2),
        ];
        for case in cases {
            let (y, want) = direct_and_gemm(case, 1);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b} for {case:?}");
            }
        }
    }

    /// `(n, c_in, h, w, c_out, k, pad, groups)` of a convolution case.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// The direct plan's output for `case` at `stride` (every grid point
    /// taken, the images through one scratch buffer) and the portable
    /// im2col + gemm path's.
    fn direct_and_gemm(case: Case, stride: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, ci, h, w, co, k, pad, groups) = case;
        let p = Conv2dParams {
            stride,
            padding: pad,
            groups,
        };
        let g = ConvGeom::new(&[n, ci, h, w], &[co, ci / groups, k, k], p).unwrap();
        let x = data(n * ci * h * w, 1);
        let wt = data(co * (ci / groups) * k * k, 2);
        let plan = Plan::with_min_efficiency(&g, &wt, 0.0).expect("direct path applies");
        let per = co * g.oh * g.ow;
        let mut y = vec![f32::NAN; n * per];
        let mut scratch = vec![0f32; plan.scratch_len()];
        for i in 0..n {
            plan.run(
                &x[i * ci * h * w..(i + 1) * ci * h * w],
                crate::ops::cpu::as_uninit(&mut y[i * per..(i + 1) * per]),
                &mut scratch,
            );
        }
        (y, with_portable_conv(|| conv_fwd(&g, &x, &wt)))
    }

    /// Strided convolutions on the phase-split grid: each output is the
    /// chain of fused multiply-adds over `(c, ki, kj)` that the im2col +
    /// gemm path computes, so the two agree bit for bit (CIFAR's 3x3 and
    /// 1x1 stride-2 layers, the 7x7 stem, odd sizes, odd padding, groups,
    /// several images through one scratch buffer). A single output point
    /// per image is left out: gemm takes another kernel for it (and the
    /// plan declines it, see [`MIN_EFFICIENCY`]).
    #[test]
    fn strided_direct_gives_the_bits_of_im2col_gemm() {
        if !available() {
            eprintln!("skipped: the CPU has no AVX2");
            return;
        }
        // (n, c_in, h, w, c_out, k, pad, groups)
        let cases = [
            (3, 16, 32, 32, 32, 3, 1, 1),
            (2, 32, 16, 16, 64, 3, 1, 1),
            (3, 16, 32, 32, 32, 1, 0, 1),
            (2, 32, 16, 16, 64, 1, 0, 1),
            (2, 3, 20, 22, 8, 7, 3, 1),
            (2, 5, 7, 9, 8, 3, 1, 1),
            (2, 4, 9, 8, 16, 3, 0, 1),
            (2, 3, 8, 7, 8, 5, 2, 1),
            (2, 4, 6, 6, 16, 3, 1, 2),
        ];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for case in cases {
            let (y, want) = direct_and_gemm(case, 2);
            assert_eq!(bits(&y), bits(&want), "{case:?}");
        }
    }

    #[test]
    fn direct_weight_gradient_matches_im2col_gemm() {
        if !available() {
            return;
        }
        let cases = [
            (2, 3, 7, 9, 8, 3, 1, 1),
            (1, 5, 6, 6, 16, 5, 2, 1),
            (2, 16, 5, 5, 16, 3, 0, 1),
            (2, 4, 4, 4, 16, 3, 1, 2),
            (1, 2, 5, 5, 8, 2, 1, 1),
            (3, 16, 32, 32, 16, 3, 1, 1),
            // Pointwise with whole vectors per plane (read in place), and
            // without (through the scratch grid).
            (2, 16, 8, 8, 16, 1, 0, 1),
            (2, 16, 4, 8, 16, 1, 0, 2),
            (2, 8, 5, 5, 8, 1, 0, 1),
        ];
        for (n, ci, h, w, co, k, pad, groups) in cases {
            let p = Conv2dParams {
                stride: 1,
                padding: pad,
                groups,
            };
            let g = ConvGeom::new(&[n, ci, h, w], &[co, ci / groups, k, k], p).unwrap();
            let x = data(n * ci * h * w, 3);
            let dy = data(n * co * g.oh * g.ow, 4);
            let plan = FilterPlan::with_limits(&g, 0.0, 0).expect("direct path applies");
            let mut lanes = Lanes::new(plan.lanes_len());
            let mut scratch = vec![0f32; plan.scratch_len()];
            let (per_x, per_y) = (ci * h * w, co * g.oh * g.ow);
            for i in 0..n {
                plan.accumulate(
                    &x[i * per_x..(i + 1) * per_x],
                    &dy[i * per_y..(i + 1) * per_y],
                    &mut lanes,
                    &mut scratch,
                );
            }
            let dw = plan.finish(&PartLanes::new(vec![lanes.into_vec()]));
            let want = with_portable_conv(|| conv_bwd_filter(&g, &x, &dy));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in dw.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{a} vs {b} for {:?}",
                    (n, ci, h, w, co, k, pad, groups)
                );
            }
        }
    }

    #[test]
    fn direct_path_is_declined_where_it_does_not_pay_or_apply() {
        let w = vec![0f32; 64 * 64 * 9];
        let p = |stride, padding| Conv2dParams {
            stride,
            padding,
            groups: 1,
        };
        // 8x8 images waste a third of the grid; a 3x3 stride-2 layer of
        // 64 channels (`kdim` 576), a 1x1 stride-2 projection and stride 3
        // stay on gemm; so do 12 output channels (not whole tiles).
        let g = ConvGeom::new(&[1, 64, 8, 8], &[64, 64, 3, 3], p(1, 1)).unwrap();
        assert!(Plan::new(&g, &w).is_none());
        let g = ConvGeom::new(&[1, 64, 32, 32], &[64, 64, 3, 3], p(2, 1)).unwrap();
        assert!(Plan::new(&g, &w).is_none());
        let g = ConvGeom::new(&[1, 16, 32, 32], &[32, 16, 1, 1], p(2, 0)).unwrap();
        assert!(Plan::new(&g, &w[..32 * 16]).is_none());
        let g = ConvGeom::new(&[1, 16, 33, 33], &[32, 16, 3, 3], p(3, 1)).unwrap();
        assert!(Plan::new(&g, &w[..32 * 16 * 9]).is_none());
        let g = ConvGeom::new(&[1, 64, 32, 32], &[12, 64, 3, 3], p(1, 1)).unwrap();
        assert!(Plan::new(&g, &w[..12 * 64 * 9]).is_none());
        // CIFAR's 3x3 stride-2 layers take the tile (on AVX2 and AVX-512
        // alike), the one of 16 channels on 32x32 and the one of 32 on
        // 16x16 (80 % of its grid).
        let expect = available();
        let g = ConvGeom::new(&[1, 16, 32, 32], &[32, 16, 3, 3], p(2, 1)).unwrap();
        assert_eq!(Plan::new(&g, &w[..32 * 16 * 9]).is_some(), expect);
        let g = ConvGeom::new(&[1, 32, 16, 16], &[64, 32, 3, 3], p(2, 1)).unwrap();
        assert_eq!(Plan::new(&g, &w[..64 * 32 * 9]).is_some(), expect);
    }
}
