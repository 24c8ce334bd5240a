//! Batch normalisation on the CPU, optionally fused with a residual add and a
//! ReLU, as custom ops with their own backward.
//!
//! candle composes batch norm from about fifteen elementwise ops and
//! single-threaded reductions in each direction, each a full pass over the
//! activations plus an allocation. Here the forward is two passes (statistics,
//! then normalise + epilogue) and the backward two more (per-channel sums, then
//! the input gradient), with channels or planes spread over rayon.

use super::cpu::{as_uninit, f32_slice, par_written2, par_written_init};
use super::simd;
use super::Epilogue;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// An [`Epilogue`] without its residual, as the ops store it (the residual
/// is one of their operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpilogueKind {
    /// [`Epilogue::None`].
    None,
    /// [`Epilogue::Relu`].
    Relu,
    /// [`Epilogue::AddRelu`].
    AddRelu,
}

impl EpilogueKind {
    pub(crate) fn relu(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Batch statistics kept from the forward pass for the backward pass.
#[derive(Debug)]
pub(crate) struct BnSaved {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
    pub gamma: Vec<f32>,
    /// The forward affine map `x * scale + shift` per channel, for masks
    /// recomputed from the input ([`ReluMask::FromInput`]).
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

/// A batch norm's affine map and a ReLU, `max(x * scale[c] + shift[c], 0)`
/// per channel `c`, for a convolution to apply to its input as it reads it:
/// the activation is then never written through memory (a residual block's
/// inner activation, see `residual_run`). Where a kernel cannot read
/// through it, [`BnRelu::apply`] writes the activation with the same
/// roundings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BnRelu<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

impl<'a> BnRelu<'a> {
    /// No channels: a placeholder where no map is read.
    pub(crate) const NONE: BnRelu<'static> = BnRelu {
        scale: &[],
        shift: &[],
    };

    /// The forward map of `bn`.
    pub(crate) fn of(bn: &'a BnSaved) -> Self {
        BnRelu {
            scale: &bn.scale,
            shift: &bn.shift,
        }
    }

    /// The activation `max(x * scale + shift, 0)` of `x` `(N, C, hw)`,
    /// written: the bits of [`bn_train_fwd_with`]'s output.
    pub(crate) fn apply(&self, x: &[f32], hw: usize) -> Vec<f32> {
        affine_epilogue(x, None, self.scale.len(), hw, self.scale, self.shift, true)
    }

    /// [`BnRelu::apply`] into `out` (as long as `x`), on the calling
    /// thread: a kernel's batch of images into its own scratch.
    pub(crate) fn apply_into(&self, x: &[f32], hw: usize, out: &mut [f32]) {
        let c = self.scale.len();
        if hw == 0 || c == 0 {
            return;
        }
        for (p, (x, out)) in x.chunks_exact(hw).zip(out.chunks_exact_mut(hw)).enumerate() {
            let (a, b) = (self.scale[p % c], self.shift[p % c]);
            simd::affine_plane(x, None, a, b, true, as_uninit(out));
        }
    }
}

/// Dimensions `(n, c, h * w)` of an `(N, C, H, W)` layout.
fn nchw(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => bail!("{op}: expected an (N, C, H, W) input, got shape {d:?}"),
    }
}

/// Minimum number of planes per rayon task, so a task touches at least ~16K
/// floats and scheduling stays negligible.
fn plane_grain(hw: usize) -> usize {
    (16 * 1024 / hw.max(1)).max(1)
}

/// Per-channel batch mean and biased variance, channels in parallel.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    PlaneSums::new(n, c).finish(x, hw)
}

/// Two f64 sums per `(image, channel)` plane, stored as each image's planes
/// are summed (by whichever job has them in cache) and added per channel
/// in image order: the same bits whatever order the images came in. The
/// store behind [`PlaneSums`] (forward) and [`GradPlaneSums`] (backward).
struct PlanePairs {
    c: usize,
    /// Per plane `i * c + ch`, the two sums as f64 bits.
    sums: Vec<[AtomicU64; 2]>,
    /// Per image, whether its planes' sums are in `sums`.
    done: Vec<AtomicBool>,
}

impl PlanePairs {
    fn new(n: usize, c: usize) -> Self {
        PlanePairs {
            c,
            sums: (0..n * c)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            done: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn images(&self) -> usize {
        self.done.len()
    }

    /// Stores image `i`'s sums, `sum(ch)` for each of its channels.
    fn store_image(&self, i: usize, sum: impl Fn(usize) -> (f64, f64)) {
        for ch in 0..self.c {
            let (a, b) = sum(ch);
            let slot = &self.sums[i * self.c + ch];
            slot[0].store(a.to_bits(), Ordering::Relaxed);
            slot[1].store(b.to_bits(), Ordering::Relaxed);
        }
        self.done[i].store(true, Ordering::Release);
    }

    /// Stores the images not stored yet, in parallel.
    fn store_missing(&self, sum_image: impl Fn(usize) + Sync + Send) {
        (0..self.images())
            .into_par_iter()
            .filter(|&i| !self.done[i].load(Ordering::Acquire))
            .for_each(sum_image);
    }

    /// Per channel, both sums over the images, added in image order.
    fn channel_totals(&self) -> Vec<(f64, f64)> {
        let (n, c) = (self.images(), self.c);
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut s, mut s2) = (0f64, 0f64);
                for i in 0..n {
                    let slot = &self.sums[i * c + ch];
                    s += f64::from_bits(slot[0].load(Ordering::Relaxed));
                    s2 += f64::from_bits(slot[1].load(Ordering::Relaxed));
                }
                (s, s2)
            })
            .collect()
    }
}

/// The per-plane sums behind [`channel_stats`], filled in whatever order
/// the planes become available: each plane's `(sum(v - k), sum((v - k)^2))`
/// with its channel's shift `k` (the channel's first value in image 0), the
/// planes of a channel then added in image order. Filled as each
/// convolution job finishes its images (while they are in that worker's
/// cache) or afterwards, the statistics are the same to the bit.
pub(crate) struct PlaneSums {
    c: usize,
    /// Per channel, the shift, once image 0 is known.
    shifts: OnceLock<Vec<f32>>,
    pairs: PlanePairs,
}

impl PlaneSums {
    pub(crate) fn new(n: usize, c: usize) -> Self {
        PlaneSums {
            c,
            shifts: OnceLock::new(),
            pairs: PlanePairs::new(n, c),
        }
    }

    /// Takes the shifts from image 0, `x0` its `c` planes of `hw` floats.
    fn set_shifts(&self, x0: &[f32], hw: usize) {
        let _ = self.shifts.set((0..self.c).map(|ch| x0[ch * hw]).collect());
    }

    /// Sums the planes of images `first..` held in `ys` (whole images of
    /// `c` planes of `hw` floats), if the shifts are known: image 0 brings
    /// them. Images whose sums cannot be taken yet are left to
    /// [`PlaneSums::finish`].
    pub(crate) fn add_images(&self, first: usize, ys: &[f32], hw: usize) {
        if hw == 0 {
            return;
        }
        if first == 0 {
            self.set_shifts(ys, hw);
        }
        let Some(k) = self.shifts.get() else {
            return;
        };
        for (j, image) in ys.chunks_exact(self.c * hw).enumerate() {
            self.image_sums(first + j, image, k, hw);
        }
    }

    fn image_sums(&self, i: usize, image: &[f32], k: &[f32], hw: usize) {
        self.pairs.store_image(i, |ch| {
            simd::shifted_sums(&image[ch * hw..(ch + 1) * hw], k[ch])
        });
    }

    /// Mean and biased variance per channel of `x` `(n, c, hw)`, summing
    /// the planes not summed yet first.
    pub(crate) fn finish(&self, x: &[f32], hw: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, c) = (self.pairs.images(), self.c);
        let m = (n * hw) as f64;
        if m == 0.0 {
            return (vec![0.0; c], vec![0.0; c]);
        }
        self.set_shifts(x, hw);
        let k = self.shifts.get().expect("set above");
        self.pairs
            .store_missing(|i| self.image_sums(i, &x[i * c * hw..(i + 1) * c * hw], k, hw));
        self.pairs
            .channel_totals()
            .into_iter()
            .zip(k)
            .map(|((s, s2), &k)| {
                let mean_shifted = s / m;
                let var = (s2 / m - mean_shifted * mean_shifted).max(0.0);
                ((f64::from(k) + mean_shifted) as f32, var as f32)
            })
            .unzip()
    }
}

/// `y = epilogue(x * a[c] + b[c] (+ r))`, planes in parallel.
#[allow(clippy::too_many_arguments)]
fn affine_epilogue(
    x: &[f32],
    residual: Option<&[f32]>,
    c: usize,
    hw: usize,
    a: &[f32],
    b: &[f32],
    relu: bool,
) -> Vec<f32> {
    if hw == 0 {
        return vec![0f32; x.len()];
    }
    // SAFETY: `affine_plane` writes every element of its plane (no zero
    // fill first: it was a pass over every activation).
    unsafe {
        par_written_init(
            x.len(),
            hw,
            || (),
            |_, p, yp| {
                let ch = p % c;
                let r = p * hw..(p + 1) * hw;
                let rp = residual.map(|res| &res[r.clone()]);
                simd::affine_plane(&x[r], rp, a[ch], b[ch], relu, yp);
            },
        )
    }
}

/// Forward batch norm with batch statistics and an epilogue.
pub(crate) fn bn_train_fwd(
    x: &[f32],
    residual: Option<&[f32]>,
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
) -> (Vec<f32>, BnSaved) {
    let stats = channel_stats(x, n, c, hw);
    bn_train_fwd_with(x, residual, (c, hw), gamma, beta, eps, relu, stats)
}

/// [`bn_train_fwd`] with the batch statistics `(mean, biased variance)`
/// already taken (see [`PlaneSums`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_train_fwd_with(
    x: &[f32],
    residual: Option<&[f32]>,
    (c, hw): (usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
    stats: (Vec<f32>, Vec<f32>),
) -> (Vec<f32>, BnSaved) {
    let saved = BnSaved::new(gamma, beta, eps, stats);
    let y = affine_epilogue(x, residual, c, hw, &saved.scale, &saved.shift, relu);
    (y, saved)
}

/// `x = max?(x * scale + shift (+ residual), 0)` in place with `bn`'s
/// affine map, per plane of `hw` floats (channel `plane % c`): the batch
/// norm's output written over its input, for a forward pass that keeps
/// nothing for a backward one (a frozen backbone's training-mode batch
/// norm), so no second activation is allocated and written through memory.
/// The same roundings as [`bn_train_fwd_with`].
pub(crate) fn affine_in_place(
    x: &mut [f32],
    residual: Option<&[f32]>,
    (c, hw): (usize, usize),
    bn: &BnSaved,
    relu: bool,
) {
    let Some(per_job) = (16 * 1024usize).checked_div(hw) else {
        return;
    };
    x.par_chunks_mut(hw)
        .enumerate()
        .with_min_len(per_job.max(1))
        .for_each(|(p, plane)| {
            let ch = p % c;
            let rp = residual.map(|res| &res[p * hw..(p + 1) * hw]);
            simd::affine_plane_in_place(plane, rp, bn.scale[ch], bn.shift[ch], relu);
        });
}

impl BnSaved {
    /// The affine map `x * scale + shift` of batch statistics `(mean,
    /// biased variance)`, with what the backward pass needs.
    pub(crate) fn new(
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
        (mean, var): (Vec<f32>, Vec<f32>),
    ) -> Self {
        let invstd: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = (0..var.len()).map(|i| gamma[i] * invstd[i]).collect();
        let shift: Vec<f32> = (0..var.len())
            .map(|i| beta[i] - mean[i] * scale[i])
            .collect();
        BnSaved {
            mean,
            var,
            invstd,
            gamma: gamma.to_vec(),
            scale,
            shift,
        }
    }
}

/// Gradients of batch norm with batch statistics.
#[derive(Debug)]
pub(crate) struct BnGrads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
    /// Gradient at the ReLU input (`dy` masked by `y > 0`), which is also the
    /// residual's gradient; only computed when asked for.
    pub dz: Option<Vec<f32>>,
}

/// Where the backward pass takes the ReLU's mask from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReluMask<'a> {
    /// No ReLU: the gradient passes whole.
    Off,
    /// The forward output `y`: the gradient passes where `y > 0`.
    Output(&'a [f32]),
    /// Recomputed from the input and the saved affine map (`x * scale +
    /// shift > 0`): exact for a ReLU without a residual, where `y = max(x *
    /// scale + shift, 0)` with the same roundings, and saves reading `y` in
    /// both passes.
    FromInput,
}

/// The backward's per-plane sums `(sum(d), sum(d * (x - mean)))` (`d` the
/// masked gradient), filled in whatever order the gradient's planes become
/// available: by the jobs of the convolution that produces the gradient,
/// while its images are in that worker's cache, or afterwards. The planes
/// of a channel are added in image order, so the sums are the same to the
/// bit however they were filled.
pub(crate) struct GradPlaneSums {
    c: usize,
    pairs: PlanePairs,
}

impl GradPlaneSums {
    pub(crate) fn new(n: usize, c: usize) -> Self {
        GradPlaneSums {
            c,
            pairs: PlanePairs::new(n, c),
        }
    }

    /// Sums the planes of images `first..`, whose gradients `dys` holds
    /// (whole images of `c` planes of `hw` floats); `x` is the whole
    /// batch's batch-norm input, `mask` the whole batch's mask.
    pub(crate) fn add_images(
        &self,
        first: usize,
        dys: &[f32],
        (x, mask, saved): (&[f32], ReluMask<'_>, &BnSaved),
        hw: usize,
    ) {
        if hw == 0 {
            return;
        }
        for (j, image) in dys.chunks_exact(self.c * hw).enumerate() {
            self.image_sums(first + j, image, (x, mask, saved), hw);
        }
    }

    fn image_sums(
        &self,
        i: usize,
        dy: &[f32],
        (x, mask, saved): (&[f32], ReluMask<'_>, &BnSaved),
        hw: usize,
    ) {
        self.pairs.store_image(i, |ch| {
            let d = &dy[ch * hw..(ch + 1) * hw];
            let r = (i * self.c + ch) * hw..(i * self.c + ch + 1) * hw;
            let mean = saved.mean[ch];
            match mask {
                ReluMask::Off => simd::masked_sums(&x[r], d, d, mean, false),
                ReluMask::Output(y) => simd::masked_sums(&x[r.clone()], &y[r], d, mean, true),
                ReluMask::FromInput => {
                    simd::masked_sums_recomputed(&x[r], d, mean, saved.scale[ch], saved.shift[ch])
                }
            }
        });
    }

    /// Per channel, `(sum(d), sum(d * (x - mean)))` over the batch `dy`,
    /// summing the planes not summed yet first.
    fn finish(
        &self,
        dy: &[f32],
        inputs: (&[f32], ReluMask<'_>, &BnSaved),
        hw: usize,
    ) -> Vec<(f64, f64)> {
        let c = self.c;
        if hw > 0 {
            self.pairs.store_missing(|i| {
                self.image_sums(i, &dy[i * c * hw..(i + 1) * c * hw], inputs, hw)
            });
        }
        self.pairs.channel_totals()
    }
}

/// Backward of [`bn_train_fwd`]: `y` gives the ReLU mask when `relu` is set.
pub(crate) fn bn_train_bwd(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    (n, c, hw): (usize, usize, usize),
    saved: &BnSaved,
    relu: bool,
    want_dz: bool,
) -> BnGrads {
    let mask = if relu {
        ReluMask::Output(y)
    } else {
        ReluMask::Off
    };
    let sums = GradPlaneSums::new(n, c);
    bn_train_bwd_with(x, mask, dy, (n, c, hw), saved, want_dz, &sums)
}

/// [`bn_train_bwd`] with the mask from `mask` and the per-plane sums in
/// `sums` where already taken (see [`GradPlaneSums`]). `want_dz` needs a
/// mask other than [`ReluMask::FromInput`].
pub(crate) fn bn_train_bwd_with(
    x: &[f32],
    mask: ReluMask<'_>,
    dy: &[f32],
    (n, c, hw): (usize, usize, usize),
    saved: &BnSaved,
    want_dz: bool,
    sums: &GradPlaneSums,
) -> BnGrads {
    assert!(
        !(want_dz && matches!(mask, ReluMask::FromInput)),
        "batch_norm backward: the residual's gradient needs the forward output"
    );
    // Pass 1: per channel, sum(d) and sum(d * (x - mean)).
    let sums = sums.finish(dy, (x, mask, saved), hw);
    let m = (n * hw).max(1) as f64;
    let dbeta: Vec<f32> = sums.iter().map(|&(s, _)| s as f32).collect();
    let dgamma: Vec<f32> = sums
        .iter()
        .zip(&saved.invstd)
        .map(|(&(_, sx), &is)| (sx * f64::from(is)) as f32)
        .collect();
    // Pass 2: dx = d * k1 + x * k2 + k3 per channel, with
    // k1 = gamma * invstd, k2 = -k1 * invstd * dgamma / m,
    // k3 = -k1 * dbeta / m - k2 * mean.
    let coef: Vec<(f32, f32, f32)> = (0..c)
        .map(|ch| {
            let is = f64::from(saved.invstd[ch]);
            let k1 = f64::from(saved.gamma[ch]) * is;
            let k2 = -k1 * is * f64::from(dgamma[ch]) / m;
            let k3 = -k1 * f64::from(dbeta[ch]) / m - k2 * f64::from(saved.mean[ch]);
            (k1 as f32, k2 as f32, k3 as f32)
        })
        .collect();
    let plane = |p: usize, dxp: &mut [MaybeUninit<f32>], dzp: Option<&mut [MaybeUninit<f32>]>| {
        let r = p * hw..(p + 1) * hw;
        let (ch, k) = (p % c, coef[p % c]);
        match mask {
            ReluMask::Off => {
                simd::bn_dx_plane(&x[r.clone()], &dy[r.clone()], &dy[r], k, false, dxp, dzp)
            }
            ReluMask::Output(y) => {
                simd::bn_dx_plane(&x[r.clone()], &y[r.clone()], &dy[r], k, true, dxp, dzp)
            }
            ReluMask::FromInput => {
                let affine = (saved.scale[ch], saved.shift[ch]);
                simd::bn_dx_plane_recomputed(&x[r.clone()], &dy[r], k, affine, dxp)
            }
        }
    };
    let (dx, dz) = if hw == 0 {
        (vec![0f32; x.len()], want_dz.then(|| vec![0f32; x.len()]))
    } else if want_dz {
        // SAFETY: `bn_dx_plane` writes every element of both planes.
        let (dx, dz) = unsafe { par_written2(x.len(), hw, |p, dxp, dzp| plane(p, dxp, Some(dzp))) };
        (dx, Some(dz))
    } else {
        // SAFETY: as above, for `dx` alone.
        let dx = unsafe { par_written_init(x.len(), hw, || (), |_, p, dxp| plane(p, dxp, None)) };
        (dx, None)
    };
    BnGrads {
        dx,
        dgamma,
        dbeta,
        dz,
    }
}

/// Batch-norm forward, `(x, weight, bias) -> y` for the identity and ReLU
/// epilogues, `(x, residual, cat(weight, bias)) -> y` for `AddRelu`.
#[derive(Debug)]
pub(crate) struct BnTrainOp {
    pub eps: f64,
    pub epilogue: EpilogueKind,
    /// Filled by the forward pass; read by the caller (statistics) and by
    /// the backward pass.
    pub saved: Arc<OnceLock<BnSaved>>,
}

impl BnTrainOp {
    pub fn new(eps: f64, epilogue: EpilogueKind) -> Self {
        Self {
            eps,
            epilogue,
            saved: Arc::new(OnceLock::new()),
        }
    }
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        "lt-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm";
        let dims = nchw(l1, OP)?;
        let c = dims.1;
        let x = f32_slice(s1, l1, OP)?;
        let (residual, gamma, beta) = if self.epilogue == EpilogueKind::AddRelu {
            let r = f32_slice(s2, l2, OP)?;
            let wb = f32_slice(s3, l3, OP)?;
            if r.len() != x.len() || l2.dims() != l1.dims() {
                bail!(
                    "{OP}: residual {:?} does not match input {:?}",
                    l2.dims(),
                    l1.dims()
                );
            }
            if wb.len() != 2 * c {
                bail!(
                    "{OP}: weight/bias of {} values for {c} channels",
                    wb.len() / 2
                );
            }
            (Some(r), &wb[..c], &wb[c..])
        } else {
            let (w, b) = (f32_slice(s2, l2, OP)?, f32_slice(s3, l3, OP)?);
            if w.len() != c || b.len() != c {
                bail!(
                    "{OP}: weight {:?} and bias {:?} for {c} channels",
                    l2.dims(),
                    l3.dims()
                );
            }
            (None, w, b)
        };
        let (y, saved) = bn_train_fwd(
            x,
            residual,
            dims,
            gamma,
            beta,
            self.eps,
            self.epilogue.relu(),
        );
        if self.saved.set(saved).is_err() {
            bail!("{OP}: a batch-norm op instance was applied twice");
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        arg2: &Tensor,
        arg3: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let add = self.epilogue == EpilogueKind::AddRelu;
        let op = BnBwdOp {
            saved: self.saved.clone(),
            relu: self.epilogue.relu(),
            want_dz: add && arg2.track_op(),
            params: Mutex::new(None),
        };
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(y, &dy, &op)?;
        let Some((dgamma, dbeta, dz)) = op.params.lock().map_err(|_| poisoned())?.take() else {
            bail!("batch_norm backward: gradients missing");
        };
        let dev = x.device();
        let c = dgamma.len();
        let dx = x.track_op().then_some(dx);
        if add {
            let dr = match dz {
                Some(dz) => Some(Tensor::from_vec(dz, x.shape(), dev)?),
                None => None,
            };
            let dwb = arg3
                .track_op()
                .then(|| Tensor::from_vec([dgamma, dbeta].concat(), 2 * c, dev))
                .transpose()?;
            Ok((dx, dr, dwb))
        } else {
            let dg = arg2
                .track_op()
                .then(|| Tensor::from_vec(dgamma, c, dev))
                .transpose()?;
            let db = arg3
                .track_op()
                .then(|| Tensor::from_vec(dbeta, c, dev))
                .transpose()?;
            Ok((dx, dg, db))
        }
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("batch_norm: poisoned lock".into())
}

type ParamGrads = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// Batch-norm backward `(x, y, dy) -> dx`; the per-channel parameter
/// gradients (and the residual gradient) are left in `params`.
#[derive(Debug)]
struct BnBwdOp {
    saved: Arc<OnceLock<BnSaved>>,
    relu: bool,
    want_dz: bool,
    params: Mutex<Option<ParamGrads>>,
}

impl CustomOp3 for BnBwdOp {
    fn name(&self) -> &'static str {
        "lt-batch-norm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm backward";
        let dims = nchw(l1, OP)?;
        let (x, y, dy) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if y.len() != x.len() || dy.len() != x.len() {
            bail!(
                "{OP}: gradient {:?} does not match input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let Some(saved) = self.saved.get() else {
            bail!("{OP}: backward before forward");
        };
        let g = bn_train_bwd(x, y, dy, dims, saved, self.relu, self.want_dz);
        *self.params.lock().map_err(|_| poisoned())? = Some((g.dgamma, g.dbeta, g.dz));
        Ok((CpuStorage::F32(g.dx), l1.shape().clone()))
    }
}

/// Applies batch norm with batch statistics; returns `(y, mean, biased_var)`.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = BnTrainOp::new(eps, epilogue.kind());
    let saved = op.saved.clone();
    let x = x.contiguous()?;
    let y = match epilogue.residual() {
        Some(r) => {
            let wb = Tensor::cat(&[weight, bias], 0)?;
            x.apply_op3(&r.contiguous()?, &wb.contiguous()?, op)?
        }
        None => x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?,
    };
    let s = match saved.get() {
        Some(s) => s,
        None => bail!("batch_norm: statistics missing after the forward pass"),
    };
    let c = s.mean.len();
    let mean = Tensor::from_vec(s.mean.clone(), c, x.device())?;
    let var = Tensor::from_vec(s.var.clone(), c, x.device())?;
    Ok((y, mean, var))
}

/// Per-channel affine map `y = epilogue(x * scale[c] + shift[c])` (batch norm
/// with fixed statistics), `(x, scale, shift) -> y`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelAffineOp {
    pub relu: bool,
}

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "lt-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm_eval";
        let (_, c, hw) = nchw(l1, OP)?;
        let (x, a, b) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if a.len() != c || b.len() != c {
            bail!(
                "{OP}: statistics {:?} and {:?} for {c} channels",
                l2.dims(),
                l3.dims()
            );
        }
        let y = affine_epilogue(x, None, c, hw, a, b, self.relu);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AffineBwdOp {
            relu: self.relu,
            scale: scale.to_vec1()?,
            sums: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let Some((ds, db)) = op.sums.lock().map_err(|_| poisoned())?.take() else {
            bail!("batch_norm_eval backward: gradients missing");
        };
        let dev = x.device();
        let c = ds.len();
        let ds = scale
            .track_op()
            .then(|| Tensor::from_vec(ds, c, dev))
            .transpose()?;
        let db = shift
            .track_op()
            .then(|| Tensor::from_vec(db, c, dev))
            .transpose()?;
        Ok((x.track_op().then_some(dx), ds, db))
    }
}

/// Backward of [`ChannelAffineOp`]: `(x, y, dy) -> dx`, leaving
/// `(sum(d * x), sum(d))` per channel in `sums`.
#[derive(Debug)]
struct AffineBwdOp {
    relu: bool,
    scale: Vec<f32>,
    sums: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for AffineBwdOp {
    fn name(&self) -> &'static str {
        "lt-channel-affine-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm_eval backward";
        let (n, c, hw) = nchw(l1, OP)?;
        let (x, y, dy) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if y.len() != x.len() || dy.len() != x.len() || self.scale.len() != c {
            bail!(
                "{OP}: gradient {:?} does not match input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let mut dx = vec![0f32; x.len()];
        // Per plane: dx and the plane's (sum(d * x), sum(d)), then per channel.
        let plane_sums: Vec<(f64, f64)> = if hw == 0 {
            Vec::new()
        } else {
            dx.par_chunks_mut(hw)
                .enumerate()
                .with_min_len(plane_grain(hw))
                .map(|(p, dxp)| {
                    let r = p * hw..(p + 1) * hw;
                    let a = self.scale[p % c];
                    simd::affine_bwd_plane(&x[r.clone()], &y[r.clone()], &dy[r], a, self.relu, dxp)
                })
                .collect()
        };
        let mut sums = vec![(0f32, 0f32); c];
        for (ch, sum) in sums.iter_mut().enumerate() {
            let (mut sx, mut s) = (0f64, 0f64);
            for i in 0..n {
                sx += plane_sums[i * c + ch].0;
                s += plane_sums[i * c + ch].1;
            }
            *sum = (sx as f32, s as f32);
        }
        *self.sums.lock().map_err(|_| poisoned())? = Some(sums.into_iter().unzip());
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
