//! The inference-only forward of the shared pre-norm block on the CPU: the
//! blocks of a frozen encoder (and the frozen leading blocks of a `last:N`
//! fine-tuning) in f32, with no autograd graph and no intermediate tensors.
//!
//! Composed of candle ops, a block is about twenty passes over the tokens,
//! most of them single-threaded (layer norm, GELU, softmax, bias and residual
//! adds), with a contiguous copy per head split and merge and a fresh
//! allocation (page faults) per op; at batch 32 and 224² that was half the
//! forward time of a ViT-S/16, the matrix products the other half. Here
//! each block is five matrix products on the `gemm` crate, each followed by
//! one fused pass parallel over token rows (bias + activation, bias + layer
//! scale + residual add), layer norms parallel over rows, and attention run
//! per (image, head) in parallel, reading its queries, keys and values in
//! place from the projection output. The buffers are allocated once per
//! forward and reused by every block; the weights are read in place from
//! the variables' storage (nothing is copied).
//!
//! The arithmetic is that of the composed block: the same products (summed
//! in another order), an exact layer norm and softmax, and GELU, exp and
//! tanh from polynomial approximations (erf within 5e-7, exp within 4e-7
//! relative, tested against f64 references below); `tests/encoders.rs` checks the features
//! of every family against Hugging Face transformers' to 1e-4 and against
//! the composed block.

use super::config::Activation;
use super::transformer::{Block, Projections};
use crate::ops::cpu::{sgemm, threads, Mat, MatMut};
use crate::ops::simd::dispatch;
use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;

/// Token rows per rayon task in the row-wise passes.
const ROW_GRAIN: usize = 16;

/// Runs tokens `(B, N, d)` through `blocks`, or returns `None` when this
/// path does not apply: the tokens or a weight are not f32 on the CPU, or
/// would carry a gradient (the caller then composes candle ops).
pub(crate) fn run_blocks(blocks: &[Block], x: &Tensor) -> Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op();
    if blocks.is_empty() || !cpu_f32(x) {
        return Ok(None);
    }
    let mut tensors: Vec<&Tensor> = Vec::new();
    let parts: Vec<Parts<usize>> = blocks
        .iter()
        .map(|b| Parts::register(b, &mut tensors))
        .collect();
    if !tensors.iter().all(|t| cpu_f32(t) && t.is_contiguous()) {
        return Ok(None);
    }
    let (b, n, d) = x.dims3()?;
    for p in &parts {
        p.check(&tensors, d)?;
    }
    // Read locks on the weights' storage for the length of the forward.
    let held: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices: Vec<&[f32]> = held
        .iter()
        .map(|(s, l)| cpu_slice(s, l))
        .collect::<Result<_>>()?;
    let mut state = x.flatten_all()?.to_vec1::<f32>()?;
    let f = parts.iter().map(|p| p.fc1.out).max().unwrap_or(d);
    let mut ws = Workspace::new(b, n, d, f);
    for p in &parts {
        let p = p.map(&|i| slices[i]);
        block_forward(&p, &mut state, &mut ws);
    }
    drop(slices);
    drop(held);
    Tensor::from_vec(state, (b, n, d), x.device()).map(Some)
}

fn cpu_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&v[start..end]),
            None => candle_core::bail!(
                "encoder weight with shape {:?} is not contiguous",
                layout.shape()
            ),
        },
        _ => candle_core::bail!(
            "encoder weight with shape {:?} is not f32 on the CPU",
            layout.shape()
        ),
    }
}

/// A linear layer `y = x W^T + b`, `W` of shape `(out, inp)`.
#[derive(Debug, Clone, Copy)]
struct Lin<T> {
    w: T,
    b: Option<T>,
    out: usize,
    inp: usize,
}

#[derive(Debug, Clone, Copy)]
struct Norm<T> {
    w: T,
    b: T,
    eps: f32,
}

#[derive(Debug, Clone, Copy)]
enum Qkv<T> {
    Fused(Lin<T>),
    Split([Lin<T>; 3]),
}

/// A block's weights, as indices into the list of held tensors or as the
/// slices they resolve to.
#[derive(Debug, Clone)]
struct Parts<T> {
    norm1: Norm<T>,
    qkv: Qkv<T>,
    heads: usize,
    proj: Lin<T>,
    ls1: Option<T>,
    norm2: Norm<T>,
    fc1: Lin<T>,
    fc2: Lin<T>,
    activation: Activation,
    ls2: Option<T>,
}

impl Lin<usize> {
    fn register<'a>(l: &'a Linear, ts: &mut Vec<&'a Tensor>) -> Self {
        let (out, inp) = l.weight().dims2().unwrap_or((0, 0));
        let w = push(ts, l.weight());
        let b = l.bias().map(|b| push(ts, b));
        Lin { w, b, out, inp }
    }

    fn check(&self, ts: &[&Tensor], out: usize, inp: usize, what: &str) -> Result<()> {
        let len = |i: usize| ts[i].elem_count();
        if self.out != out || self.inp != inp || self.b.is_some_and(|b| len(b) != out) {
            candle_core::bail!(
                "{what}: expected a ({out}, {inp}) linear layer, got weight {:?}",
                ts[self.w].dims()
            );
        }
        Ok(())
    }
}

fn push<'a>(ts: &mut Vec<&'a Tensor>, t: &'a Tensor) -> usize {
    ts.push(t);
    ts.len() - 1
}

impl Parts<usize> {
    fn register<'a>(b: &'a Block, ts: &mut Vec<&'a Tensor>) -> Self {
        let mut norm = |n: &'a super::transformer::LayerNorm| Norm {
            w: push(ts, &n.weight),
            b: push(ts, &n.bias),
            eps: n.eps as f32,
        };
        let norm1 = norm(&b.norm1);
        let norm2 = norm(&b.norm2);
        let qkv = match &b.attn.proj {
            Projections::Fused(l) => Qkv::Fused(Lin::register(l, ts)),
            Projections::Split { q, k, v } => Qkv::Split([
                Lin::register(q, ts),
                Lin::register(k, ts),
                Lin::register(v, ts),
            ]),
        };
        Parts {
            norm1,
            qkv,
            heads: b.attn.num_heads,
            proj: Lin::register(&b.attn.out, ts),
            ls1: b.ls1.as_ref().map(|t| push(ts, t)),
            norm2,
            fc1: Lin::register(&b.mlp.fc1, ts),
            fc2: Lin::register(&b.mlp.fc2, ts),
            activation: b.mlp.activation,
            ls2: b.ls2.as_ref().map(|t| push(ts, t)),
        }
    }

    /// Checks every shape against the width `d`, so that the kernels'
    /// slicing cannot go out of bounds.
    fn check(&self, ts: &[&Tensor], d: usize) -> Result<()> {
        let vec = |i: usize, what: &str| -> Result<()> {
            if ts[i].elem_count() != d {
                candle_core::bail!("{what}: expected {d} values, got {:?}", ts[i].dims());
            }
            Ok(())
        };
        for (n, what) in [(&self.norm1, "norm1"), (&self.norm2, "norm2")] {
            vec(n.w, what)?;
            vec(n.b, what)?;
        }
        for (ls, what) in [(self.ls1, "ls1"), (self.ls2, "ls2")] {
            if let Some(i) = ls {
                vec(i, what)?;
            }
        }
        match &self.qkv {
            Qkv::Fused(l) => l.check(ts, 3 * d, d, "qkv")?,
            Qkv::Split(ls) => {
                for l in ls {
                    l.check(ts, d, d, "q/k/v")?;
                }
            }
        }
        if self.heads == 0 || !d.is_multiple_of(self.heads) {
            candle_core::bail!("{} heads do not divide the width {d}", self.heads);
        }
        self.proj.check(ts, d, d, "attention output")?;
        self.fc1.check(ts, self.fc1.out, d, "fc1")?;
        self.fc2.check(ts, d, self.fc1.out, "fc2")
    }

    fn map<'a>(&self, f: &impl Fn(usize) -> &'a [f32]) -> Parts<&'a [f32]> {
        let lin = |l: &Lin<usize>| Lin {
            w: f(l.w),
            b: l.b.map(f),
            out: l.out,
            inp: l.inp,
        };
        let norm = |n: &Norm<usize>| Norm {
            w: f(n.w),
            b: f(n.b),
            eps: n.eps,
        };
        Parts {
            norm1: norm(&self.norm1),
            qkv: match &self.qkv {
                Qkv::Fused(l) => Qkv::Fused(lin(l)),
                Qkv::Split([q, k, v]) => Qkv::Split([lin(q), lin(k), lin(v)]),
            },
            heads: self.heads,
            proj: lin(&self.proj),
            ls1: self.ls1.map(f),
            norm2: norm(&self.norm2),
            fc1: lin(&self.fc1),
            fc2: lin(&self.fc2),
            activation: self.activation,
            ls2: self.ls2.map(f),
        }
    }
}

/// The buffers of one forward pass, reused by every block.
struct Workspace {
    b: usize,
    n: usize,
    d: usize,
    /// Layer-norm output, then the merged attention heads `(B N, d)`.
    h: Vec<f32>,
    /// Query, key and value projections `(B N, 3d)`.
    qkv: Vec<f32>,
    /// Attention output per head `(B, heads, N, d / heads)`.
    heads: Vec<f32>,
    /// Output of the attention and MLP projections `(B N, d)`.
    tmp: Vec<f32>,
    /// MLP hidden layer `(B N, f)`.
    mid: Vec<f32>,
}

impl Workspace {
    fn new(b: usize, n: usize, d: usize, f: usize) -> Self {
        let r = b * n;
        Self {
            b,
            n,
            d,
            h: vec![0.0; r * d],
            qkv: vec![0.0; r * 3 * d],
            heads: vec![0.0; r * d],
            tmp: vec![0.0; r * d],
            mid: vec![0.0; r * f],
        }
    }
}

fn block_forward(p: &Parts<&[f32]>, x: &mut [f32], ws: &mut Workspace) {
    let (d, n) = (ws.d, ws.n);
    let rows = ws.b * n;
    // Attention.
    layer_norm_rows(x, &p.norm1, d, &mut ws.h);
    match &p.qkv {
        Qkv::Fused(l) => linear(&ws.h, rows, l, &mut ws.qkv, 3 * d, 0),
        Qkv::Split(ls) => {
            for (i, l) in ls.iter().enumerate() {
                linear(&ws.h, rows, l, &mut ws.qkv, 3 * d, i * d);
            }
        }
    }
    let bias: Vec<f32> = match &p.qkv {
        Qkv::Fused(l) => l.b.map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; 3 * d]),
        Qkv::Split(ls) => ls
            .iter()
            .flat_map(|l| l.b.map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; d]))
            .collect(),
    };
    rows_apply(&mut ws.qkv, 3 * d, |row| add_bias(row, &bias));
    attention(&ws.qkv, ws.b, n, d, p.heads, &mut ws.heads);
    merge_heads(&ws.heads, ws.b, n, d, p.heads, &mut ws.h);
    linear(&ws.h, rows, &p.proj, &mut ws.tmp, d, 0);
    residual(x, &ws.tmp, p.proj.b, p.ls1, d);
    // MLP.
    layer_norm_rows(x, &p.norm2, d, &mut ws.h);
    let f = p.fc1.out;
    let mid = &mut ws.mid[..rows * f];
    linear(&ws.h, rows, &p.fc1, mid, f, 0);
    let act = p.activation;
    let b1 = p.fc1.b;
    rows_apply(mid, f, |row| {
        if let Some(b) = b1 {
            add_bias(row, b);
        }
        activate(row, act);
    });
    linear(mid, rows, &p.fc2, &mut ws.tmp, d, 0);
    residual(x, &ws.tmp, p.fc2.b, p.ls2, d);
}

/// Applies `f` to every row (of `width` floats) of `buf`, in parallel.
fn rows_apply(buf: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    buf.par_chunks_mut(width)
        .with_min_len(ROW_GRAIN)
        .for_each(f);
}

/// `dst[:, col0 .. col0 + l.out] = x l.w^T` for `rows` rows of `x`
/// (`l.inp` wide), `dst` rows being `ld` wide. The rows are split into one
/// contiguous range per worker, each an independent single-threaded
/// product: the weight is repacked once per range, which is small next to
/// the product, and no worker waits on another inside the `gemm` crate.
fn linear(x: &[f32], rows: usize, l: &Lin<&[f32]>, dst: &mut [f32], ld: usize, col0: usize) {
    let parts = threads().min(rows).max(1);
    let per = rows.div_ceil(parts);
    let k = l.inp;
    dst[..rows * ld]
        .par_chunks_mut(per * ld)
        .enumerate()
        .for_each(|(i, chunk)| {
            let m = chunk.len() / ld;
            let r0 = i * per;
            sgemm(
                m,
                l.out,
                k,
                MatMut {
                    data: &mut chunk[col0..],
                    rs: ld,
                    cs: 1,
                },
                false,
                Mat {
                    data: &x[r0 * k..(r0 + m) * k],
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: l.w,
                    rs: 1,
                    cs: k,
                },
                gemm::Parallelism::None,
            );
        });
}

/// Scaled dot-product attention of every (image, head), in parallel: the
/// queries, keys and values are read in place from `qkv` `(B N, 3d)`, the
/// output written to `out` `(B, heads, N, dh)`.
fn attention(qkv: &[f32], b: usize, n: usize, d: usize, heads: usize, out: &mut [f32]) {
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let ld = 3 * d;
    out[..b * heads * n * dh]
        .par_chunks_mut(n * dh)
        .enumerate()
        .for_each_init(
            || vec![0f32; n * n],
            |scores, (i, o)| {
                let (img, h) = (i / heads, i % heads);
                let base = img * n * ld + h * dh;
                let slab = &qkv[base..base + (n - 1) * ld + 2 * d + dh];
                // scores = Q K^T (N x N).
                sgemm(
                    n,
                    n,
                    dh,
                    MatMut {
                        data: scores,
                        rs: n,
                        cs: 1,
                    },
                    false,
                    Mat {
                        data: slab,
                        rs: ld,
                        cs: 1,
                    },
                    Mat {
                        data: &slab[d..],
                        rs: 1,
                        cs: ld,
                    },
                    gemm::Parallelism::None,
                );
                for row in scores.chunks_exact_mut(n) {
                    softmax_scaled(row, scale);
                }
                // out = softmax(scores) V (N x dh).
                sgemm(
                    n,
                    dh,
                    n,
                    MatMut {
                        data: o,
                        rs: dh,
                        cs: 1,
                    },
                    false,
                    Mat {
                        data: scores,
                        rs: n,
                        cs: 1,
                    },
                    Mat {
                        data: &slab[2 * d..],
                        rs: ld,
                        cs: 1,
                    },
                    gemm::Parallelism::None,
                );
            },
        );
}

/// `(B, heads, N, dh)` to `(B N, heads dh)`.
fn merge_heads(src: &[f32], b: usize, n: usize, d: usize, heads: usize, dst: &mut [f32]) {
    let dh = d / heads;
    dst[..b * n * d]
        .par_chunks_mut(d)
        .enumerate()
        .with_min_len(ROW_GRAIN)
        .for_each(|(r, row)| {
            let (img, t) = (r / n, r % n);
            for (h, part) in row.chunks_exact_mut(dh).enumerate() {
                let s = ((img * heads + h) * n + t) * dh;
                part.copy_from_slice(&src[s..s + dh]);
            }
        });
}

/// `x += ls * (y + bias)` row by row (`ls`, `bias` optional, `d` wide).
fn residual(x: &mut [f32], y: &[f32], bias: Option<&[f32]>, ls: Option<&[f32]>, d: usize) {
    x.par_chunks_mut(d)
        .zip(y.par_chunks(d))
        .with_min_len(ROW_GRAIN)
        .for_each(|(x, y)| residual_row(x, y, bias, ls));
}

/// Layer norm of every `d`-wide row of `x` into `out`.
fn layer_norm_rows(x: &[f32], norm: &Norm<&[f32]>, d: usize, out: &mut [f32]) {
    out[..x.len()]
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(ROW_GRAIN)
        .for_each(|(o, x)| layer_norm_row(x, norm.w, norm.b, norm.eps, o));
}

/// Lanes of the explicit accumulators (one AVX-512 register).
const L: usize = 16;

/// Sum of `v`, in `L` lanes folded in a fixed order.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; L];
    let chunks = v.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..L {
            acc[l] += f(c[l]);
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += f(x);
    }
    acc.iter().sum()
}

dispatch! {
    /// `out = (x - mean) / sqrt(var + eps) * w + b` over one row.
    fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        let d = x.len();
        let (w, b, out) = (&w[..d], &b[..d], &mut out[..d]);
        let mean = lane_sum(x, |v| v) / d as f32;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d as f32;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            out[i] = (x[i] - mean) * r * w[i] + b[i];
        }
    }
}

dispatch! {
    /// `row += bias`.
    fn add_bias(row: &mut [f32], bias: &[f32]) {
        let n = row.len();
        let bias = &bias[..n];
        for i in 0..n {
            row[i] += bias[i];
        }
    }
}

dispatch! {
    /// `x += ls * (y + bias)`.
    fn residual_row(x: &mut [f32], y: &[f32], bias: Option<&[f32]>, ls: Option<&[f32]>) {
        let n = x.len();
        let y = &y[..n];
        match (bias, ls) {
            (Some(b), Some(g)) => {
                let (b, g) = (&b[..n], &g[..n]);
                for i in 0..n {
                    x[i] += g[i] * (y[i] + b[i]);
                }
            }
            (Some(b), None) => {
                let b = &b[..n];
                for i in 0..n {
                    x[i] += y[i] + b[i];
                }
            }
            (None, Some(g)) => {
                let g = &g[..n];
                for i in 0..n {
                    x[i] += g[i] * y[i];
                }
            }
            (None, None) => {
                for i in 0..n {
                    x[i] += y[i];
                }
            }
        }
    }
}

dispatch! {
    /// `row = softmax(row * scale)`.
    fn softmax_scaled(row: &mut [f32], scale: f32) {
        let mut acc = [f32::NEG_INFINITY; L];
        let chunks = row.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..L {
                acc[l] = acc[l].max(c[l]);
            }
        }
        for (l, &x) in rest.iter().enumerate() {
            acc[l] = acc[l].max(x);
        }
        let max = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = exp((*v - max) * scale);
        }
        let inv = 1.0 / lane_sum(row, |v| v);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

dispatch! {
    /// The MLP activation, in place.
    fn activate(row: &mut [f32], activation: Activation) {
        match activation {
            Activation::Gelu => {
                for v in row.iter_mut() {
                    *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
            Activation::GeluTanh => {
                const K: f32 = 0.797_884_6; // sqrt(2 / pi)
                for v in row.iter_mut() {
                    let x = *v;
                    *v = 0.5 * x * (1.0 + tanh(K * (x + 0.044_715 * x * x * x)));
                }
            }
            Activation::QuickGelu => {
                for v in row.iter_mut() {
                    let x = *v;
                    *v = x / (1.0 + exp(-1.702 * x));
                }
            }
        }
    }
}

/// `e^x` (Cephes' `expf`: range reduction by `ln 2` in two parts and a
/// degree-6 polynomial, relative error about 2 ulps), branch-free so that
/// loops over it vectorise. Arguments are clamped to `[-87.3, 88.3]`, where
/// the result is a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the bits of n + 127 (integral, in 1..=254), which adding
    // 1.5 * 2^23 places in the low mantissa bits: a float-to-int cast
    // (saturating in Rust) would not vectorise.
    y * f32::from_bits((n + (127.0 + 12_582_912.0)).to_bits() << 23)
}

/// `tanh x = 1 - 2 / (e^{2x} + 1)` (absolute error about 1e-7).
#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// The error function: the rational approximation of Eigen's
/// `generic_fast_erf_float` on `[-4, 4]` (beyond which erf is ±1 in f32),
/// with an absolute error below 5e-7 (4.4e-7 at most, near ±3.9).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::super::transformer::{Attention, LayerNorm, Mlp};
    use super::*;
    use candle_core::Device;

    fn randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        // A deterministic pseudo-random sequence (no global RNG in tests).
        let v: Vec<f32> = (0..n)
            .map(|i| std * ((i as f32 + 1.0) * (seed as f32 * 0.618 + 1.3)).sin() * 1.7)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn lin(out: usize, inp: usize, bias: bool, seed: u64) -> Linear {
        let b = bias.then(|| randn(&[out], 0.1, seed + 100));
        Linear::new(randn(&[out, inp], 0.4, seed), b)
    }

    fn norm(d: usize, seed: u64) -> LayerNorm {
        LayerNorm {
            weight: (randn(&[d], 0.2, seed) + 1.0).unwrap(),
            bias: randn(&[d], 0.1, seed + 1),
            eps: 1e-6,
        }
    }

    /// A block with weights large enough that every part (attention
    /// pattern, activation, layer scale, biases) moves the output.
    fn block(d: usize, heads: usize, fused: bool, activation: Activation, seed: u64) -> Block {
        let proj = if fused {
            Projections::Fused(lin(3 * d, d, true, seed))
        } else {
            Projections::Split {
                q: lin(d, d, true, seed + 1),
                k: lin(d, d, false, seed + 2),
                v: lin(d, d, true, seed + 3),
            }
        };
        Block {
            norm1: norm(d, seed + 4),
            attn: Attention::new(proj, lin(d, d, true, seed + 5), heads),
            ls1: fused.then(|| randn(&[d], 0.5, seed + 6)),
            norm2: norm(d, seed + 7),
            mlp: Mlp::new(
                lin(2 * d, d, true, seed + 8),
                lin(d, 2 * d, true, seed + 9),
                activation,
            ),
            ls2: fused.then(|| randn(&[d], 0.5, seed + 10)),
        }
    }

    /// `max |t|` over every entry.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn run_blocks_matches_the_composed_blocks() {
        let x = randn(&[3, 7, 24], 1.0, 1);
        for (fused, act) in [
            (true, Activation::Gelu),
            (false, Activation::QuickGelu),
            (false, Activation::GeluTanh),
        ] {
            let blocks = [block(24, 4, fused, act, 11), block(24, 4, fused, act, 29)];
            let fast = run_blocks(&blocks, &x).unwrap().expect("f32 on the CPU");
            let mut want = x.clone();
            for b in &blocks {
                want = b.forward(&want).unwrap();
            }
            let diff = max_abs(&(&fast - &want).unwrap());
            let moved = (&want - &x).unwrap().abs().unwrap().mean_all().unwrap();
            assert!(
                moved.to_scalar::<f32>().unwrap() > 0.1,
                "{act:?}: blocks barely act"
            );
            // f32 rounding relative to the output's scale (about 2e-6 here;
            // an error in the kernels is of the order of the scale).
            let scale = max_abs(&want);
            assert!(
                diff < 1e-5 * scale.max(1.0),
                "fused {fused}, {act:?}: max |diff| {diff}, scale {scale}"
            );
        }
        // Not applicable: f64 tokens, or tokens that carry a gradient.
        let blocks = [block(24, 4, true, Activation::Gelu, 3)];
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(run_blocks(&blocks, &x64).unwrap().is_none());
        let var = candle_core::Var::from_tensor(&x).unwrap();
        assert!(run_blocks(&blocks, var.as_tensor()).unwrap().is_none());
    }

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f64 / n as f64)
    }

    #[test]
    fn exp_matches_f64_to_a_few_ulps() {
        for x in grid(-87.0, 88.0, 200_000) {
            let want = x.exp();
            let got = f64::from(exp(x as f32));
            // Relative error against the exact value at the f32 argument.
            let want_f = f64::from(x as f32).exp();
            let rel = ((got - want_f) / want_f).abs();
            assert!(rel < 4e-7, "exp({x}) = {got}, want {want} (rel {rel})");
        }
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_gelu_and_tanh_match_f64_references() {
        for x in grid(-6.0, 6.0, 100_000) {
            let xf = f64::from(x as f32);
            let want = candle_core::cpu::erf::erf_f64(xf);
            let got = f64::from(erf(x as f32));
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
            let got = f64::from(tanh(x as f32));
            assert!((got - xf.tanh()).abs() < 3e-7, "tanh({x}) = {got}");
        }
        let xs: Vec<f32> = grid(-8.0, 8.0, 1000).map(|x| x as f32).collect();
        for (act, f) in [
            (
                Activation::Gelu,
                (|x: f64| 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt())))
                    as fn(f64) -> f64,
            ),
            (Activation::GeluTanh, |x: f64| {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }),
            (Activation::QuickGelu, |x: f64| {
                x / (1.0 + (-1.702 * x).exp())
            }),
        ] {
            let mut y = xs.clone();
            activate(&mut y, act);
            for (&x, &y) in xs.iter().zip(&y) {
                let want = f(f64::from(x));
                assert!(
                    (f64::from(y) - want).abs() < 1e-6 * (1.0 + f64::from(x).abs()),
                    "{act:?}({x}) = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_match_direct_formulas() {
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let mut s = row.clone();
        softmax_scaled(&mut s, 0.5);
        let z: f64 = row.iter().map(|&v| (0.5 * f64::from(v)).exp()).sum();
        for (&v, &p) in row.iter().zip(&s) {
            let want = (0.5 * f64::from(v)).exp() / z;
            assert!((f64::from(p) - want).abs() < 1e-7, "{p} vs {want}");
        }
        let w: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut out = vec![0f32; 37];
        layer_norm_row(&row, &w, &b, 1e-5, &mut out);
        let mean: f64 = row.iter().map(|&v| f64::from(v)).sum::<f64>() / 37.0;
        let var: f64 = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 37.0;
        for i in 0..37 {
            let want = (f64::from(row[i]) - mean) / (var + 1e-5).sqrt() * f64::from(w[i])
                + f64::from(b[i]);
            assert!(
                (f64::from(out[i]) - want).abs() < 1e-5,
                "{} vs {want}",
                out[i]
            );
        }
    }
}
