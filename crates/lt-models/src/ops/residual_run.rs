//! A run of basic residual blocks, in training mode, as one op.
//!
//! Block by block, candle's backward accumulates every gradient an op
//! returns into a fresh zeroed tensor (`zeros_like`, then `add`), serially
//! on the calling thread while the kernels' workers wait: for a basic
//! block, the gradient of the inner activation, the residual's and the
//! block input's, two memsets and three adds over activations. On a
//! CIFAR ResNet-32 step that was about a tenth of the wall time with one
//! core idle. Inside this op the gradients pass from block to block
//! directly (the residual's added to the input's in parallel), and candle
//! accumulates one: the run's input.
//!
//! A run may start with a stem: one convolution, its batch norm and a ReLU
//! whose output is the first block's input (a CIFAR ResNet's first layer).
//! Inside the run, that activation's gradient is not accumulated by candle
//! either (a memset and an add over the largest activation of the network,
//! on the calling thread), and its batch norm's first backward sums are
//! taken in the jobs of the first block's input gradient.
//!
//! The inner activation `relu(bn1(conv1(x)))` is not written: the second
//! convolution reads `conv1(x)` through the first batch norm's affine map
//! and the ReLU as its kernel loads it ([`BnRelu`]; F(4x4, 3x3)'s input
//! transform), forward and for its weight gradient (where that gradient
//! takes F(2x2, 3x3), a batch of images at a time into the worker's
//! scratch). That saves a pass over the activation through memory and the
//! memory itself: on a CIFAR ResNet-32 training step, about 3 % of the
//! time and a fifth of the peak memory (Intel Xeon, AVX-512). Where the forward plan cannot read
//! through the map, the activation is written and kept as before. The
//! bits are the same either way.
//!
//! Each block is `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`
//! with 3x3 convolutions (the first carries the stride) and the identity,
//! the zero-padding shortcut ("option A") or a projection (1x1 convolution
//! with the block's stride, then batch norm: `resnet32`'s and torchvision's
//! stage transitions, which used to end a run, so that candle accumulated
//! the gradients around each of them). The arithmetic is that of the
//! per-block ops ([`super::conv_bn`], [`super::shortcut`]) call for call,
//! so the results are the same to the bit; only where the input's two
//! gradient terms are summed moves (`a + b`, commutative).

use super::batch_norm::{bn_train_bwd_with, BnRelu, BnSaved, GradPlaneSums, ReluMask};
use super::conv::{
    conv_bwd_data, conv_bwd_data_then, conv_bwd_filter, conv_bwd_filter_bn_relu, ConvGeom,
};
use super::conv_bn::{conv_bn_train_fwd, conv_bn_train_fwd_bn_relu, conv_bn_train_stats};
use super::cpu::f32_slice;
use super::shortcut::{zero_pad_bwd, zero_pad_fwd, ZeroPadGeom};
use super::{simd, Conv2dParams};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns residual runs on (the default) or off for the whole process. Off,
/// every block runs as its own ops; the results are the same either way
/// (the switch is for comparisons and benchmarks).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether residual runs are on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The shape of one block of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockShape {
    pub c_in: usize,
    pub c_out: usize,
    /// The first convolution's stride.
    pub stride: usize,
    pub shortcut: RunShortcut,
}

/// What a block of a run adds to its body's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunShortcut {
    /// The input itself.
    Identity,
    /// The zero-padding shortcut: the input subsampled by the block's
    /// stride, `front` and `back` zero channels around it.
    ZeroPad { front: usize, back: usize },
    /// A 1x1 convolution with the block's stride and no padding, then its
    /// batch norm (no ReLU): torchvision's `downsample`.
    Projection,
}

impl BlockShape {
    /// Floats of `cat(w1, gamma1, beta1, w2, gamma2, beta2)`, then the
    /// projection's `cat(w, gamma, beta)` where the shortcut is one.
    pub(crate) fn packed_len(&self) -> usize {
        let (ci, co) = (self.c_in, self.c_out);
        let projection = match self.shortcut {
            RunShortcut::Projection => co * ci + 2 * co,
            _ => 0,
        };
        co * ci * 9 + 2 * co + co * co * 9 + 2 * co + projection
    }

    /// Block `b`'s two convolutions and its shortcut on input `dims`.
    fn geometry(&self, dims: &[usize], b: usize) -> Result<(ConvGeom, ConvGeom, ShortcutGeom)> {
        const OP: &str = "residual_run";
        let (co, ci) = (self.c_out, self.c_in);
        let g1 = ConvGeom::new(dims, &[co, ci, 3, 3], self.params(true))?;
        let out_dims = [g1.n, co, g1.oh, g1.ow];
        let g2 = ConvGeom::new(&out_dims, &[co, co, 3, 3], self.params(false))?;
        let mismatch = |got: &[usize]| {
            candle_core::Error::Msg(format!(
                "{OP}: block {b}: shortcut {got:?} does not match output {out_dims:?}"
            ))
        };
        let shortcut = match self.shortcut {
            RunShortcut::ZeroPad { front, back } => {
                let zp = ZeroPadGeom::new(dims, self.stride, front, back)?;
                if zp.out_shape().dims() != out_dims {
                    return Err(mismatch(zp.out_shape().dims()));
                }
                ShortcutGeom::ZeroPad(zp)
            }
            RunShortcut::Projection => {
                let p = Conv2dParams {
                    stride: self.stride,
                    padding: 0,
                    groups: 1,
                };
                let gp = ConvGeom::new(dims, &[co, ci, 1, 1], p)?;
                if gp.out_shape().dims() != out_dims {
                    return Err(mismatch(gp.out_shape().dims()));
                }
                ShortcutGeom::Projection(gp)
            }
            RunShortcut::Identity if self.stride == 1 && ci == co => ShortcutGeom::Identity,
            RunShortcut::Identity => {
                bail!("{OP}: block {b}: an identity shortcut cannot change the shape")
            }
        };
        Ok((g1, g2, shortcut))
    }

    fn params(&self, first: bool) -> Conv2dParams {
        Conv2dParams {
            stride: if first { self.stride } else { 1 },
            padding: 1,
            groups: 1,
        }
    }
}

/// The stem of a run: a convolution with weight `w_dims` and `params`,
/// its batch norm and a ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StemShape {
    pub w_dims: (usize, usize, usize, usize),
    pub params: Conv2dParams,
}

impl StemShape {
    /// Floats of the convolution's weight.
    fn w_len(&self) -> usize {
        let (co, ci, kh, kw) = self.w_dims;
        co * ci * kh * kw
    }

    /// Floats of `cat(w, gamma, beta)`.
    pub(crate) fn packed_len(&self) -> usize {
        self.w_len() + 2 * self.w_dims.0
    }
}

/// What the forward pass keeps of the stem for the backward pass.
#[derive(Debug)]
pub(crate) struct StemSaved {
    g: ConvGeom,
    /// The convolution's output, the batch norm's input.
    z: Vec<f32>,
    pub bn: BnSaved,
    /// `relu(bn(z))`, the first block's input.
    y: Vec<f32>,
}

/// What the forward pass keeps of a run.
#[derive(Debug)]
pub(crate) struct RunSaved {
    pub stem: Option<StemSaved>,
    pub blocks: Vec<BlockSaved>,
}

/// A block's shortcut on its input's dimensions.
#[derive(Debug)]
enum ShortcutGeom {
    Identity,
    ZeroPad(ZeroPadGeom),
    Projection(ConvGeom),
}

/// The packed parameters of one block, split.
struct BlockParams<'a> {
    w1: &'a [f32],
    gamma1: &'a [f32],
    beta1: &'a [f32],
    w2: &'a [f32],
    gamma2: &'a [f32],
    beta2: &'a [f32],
    /// The projection's `(w, gamma, beta)`, where the shortcut is one.
    projection: Option<(&'a [f32], &'a [f32], &'a [f32])>,
}

/// Splits `packed` into its blocks' parameters.
fn split_params<'a>(shapes: &[BlockShape], packed: &'a [f32]) -> Vec<BlockParams<'a>> {
    let mut rest = packed;
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    shapes
        .iter()
        .map(|s| {
            let (ci, co) = (s.c_in, s.c_out);
            BlockParams {
                w1: take(co * ci * 9),
                gamma1: take(co),
                beta1: take(co),
                w2: take(co * co * 9),
                gamma2: take(co),
                beta2: take(co),
                projection: (s.shortcut == RunShortcut::Projection)
                    .then(|| (take(co * ci), take(co), take(co))),
            }
        })
        .collect()
}

/// What the forward pass keeps of a block's shortcut.
#[derive(Debug)]
pub(crate) enum SavedShortcut {
    Identity,
    ZeroPad(ZeroPadGeom),
    Projection(Box<ProjectionSaved>),
}

/// What the forward pass keeps of a projection shortcut.
#[derive(Debug)]
pub(crate) struct ProjectionSaved {
    g: ConvGeom,
    /// The convolution's output, the batch norm's input.
    z: Vec<f32>,
    bn: BnSaved,
}

impl SavedShortcut {
    /// The projection's batch-norm statistics, where the shortcut is one.
    pub(crate) fn projection_bn(&self) -> Option<&BnSaved> {
        match self {
            SavedShortcut::Projection(p) => Some(&p.bn),
            _ => None,
        }
    }
}

/// What the forward pass keeps of one block for the backward pass.
#[derive(Debug)]
pub(crate) struct BlockSaved {
    g1: ConvGeom,
    g2: ConvGeom,
    pub shortcut: SavedShortcut,
    /// First convolution's output and its batch norm's statistics.
    z1: Vec<f32>,
    pub bn1: BnSaved,
    /// The inner activation, `relu(bn1(z1))`, where the second convolution
    /// could not read it through the batch norm's map ([`BnRelu`]) and it
    /// was written; `None` where it was never written (the weight gradient
    /// reads `z1` through the map again, or writes the activation then).
    y1: Option<Vec<f32>>,
    z2: Vec<f32>,
    pub bn2: BnSaved,
    /// The block's output, the next block's input; `None` for the last
    /// block, whose output is the op's (candle keeps it).
    out: Option<Vec<f32>>,
}

/// `(x, packed, x) -> y`: `packed` is the stem's `cat(w.flatten(), gamma,
/// beta)` (where there is one), then every block's `cat(w1.flatten(),
/// gamma1, beta1, w2.flatten(), gamma2, beta2)` in order; the third operand
/// is ignored.
#[derive(Debug)]
pub(crate) struct ResidualRunOp {
    pub stem: Option<StemShape>,
    pub shapes: Vec<BlockShape>,
    pub eps: f64,
    pub saved: Arc<OnceLock<RunSaved>>,
}

/// Floats of the packed parameters of `stem` and `shapes`.
fn packed_len(stem: Option<&StemShape>, shapes: &[BlockShape]) -> usize {
    stem.map_or(0, StemShape::packed_len) + shapes.iter().map(BlockShape::packed_len).sum::<usize>()
}

impl CustomOp3 for ResidualRunOp {
    fn name(&self) -> &'static str {
        "lt-residual-run"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "residual_run";
        let x = f32_slice(s1, l1, OP)?;
        let packed = f32_slice(s2, l2, OP)?;
        let want = packed_len(self.stem.as_ref(), &self.shapes);
        if packed.len() != want {
            bail!("{OP}: {} packed parameters, expected {want}", packed.len());
        }
        let (stem_packed, packed) = packed.split_at(self.stem.map_or(0, |s| s.packed_len()));
        let params = split_params(&self.shapes, packed);
        let mut dims = l1.dims().to_vec();
        // The stem as `conv2d_batch_norm_train` with a ReLU computes it.
        let stem = match &self.stem {
            Some(s) => {
                let (co, ci, kh, kw) = s.w_dims;
                let g = ConvGeom::new(&dims, &[co, ci, kh, kw], s.params)?;
                let (w, gb) = stem_packed.split_at(s.w_len());
                let (z, y, bn) =
                    conv_bn_train_fwd(&g, x, w, None, (&gb[..co], &gb[co..]), self.eps, true);
                dims = g.out_shape().dims().to_vec();
                Some(StemSaved { g, z, bn, y })
            }
            None => None,
        };
        let run_input: &[f32] = stem.as_ref().map_or(x, |s| &s.y);
        let mut saved: Vec<BlockSaved> = Vec::with_capacity(self.shapes.len());
        let mut last = None;
        for (b, (shape, p)) in self.shapes.iter().zip(&params).enumerate() {
            let input: &[f32] = match b {
                0 => run_input,
                _ => saved[b - 1].out.as_deref().unwrap_or_default(),
            };
            let (g1, g2, shortcut_geom) = shape.geometry(&dims, b)?;
            let out_dims = [g1.n, shape.c_out, g1.oh, g1.ow];
            // The shortcut first, as the block's own forward pass takes it.
            let (shortcut, kept): (Cow<'_, [f32]>, SavedShortcut) = match shortcut_geom {
                ShortcutGeom::Identity => (Cow::Borrowed(input), SavedShortcut::Identity),
                ShortcutGeom::ZeroPad(zp) => (
                    Cow::Owned(zero_pad_fwd(&zp, input)),
                    SavedShortcut::ZeroPad(zp),
                ),
                ShortcutGeom::Projection(gp) => {
                    let Some((w, gamma, beta)) = p.projection else {
                        bail!("{OP}: block {b}: the projection's parameters are missing");
                    };
                    let (z, y, bn) =
                        conv_bn_train_fwd(&gp, input, w, None, (gamma, beta), self.eps, false);
                    let kept = ProjectionSaved { g: gp, z, bn };
                    (Cow::Owned(y), SavedShortcut::Projection(Box::new(kept)))
                }
            };
            // The inner activation `relu(bn1(z1))` is read by the second
            // convolution through the first batch norm's map, not written
            // (where its plan can: otherwise written and kept as `y1`).
            let (z1, bn1) = conv_bn_train_stats(&g1, input, p.w1, (p.gamma1, p.beta1), self.eps);
            let (z2, out, bn2, y1) = conv_bn_train_fwd_bn_relu(
                &g2,
                &z1,
                BnRelu::of(&bn1),
                p.w2,
                Some(&shortcut),
                (p.gamma2, p.beta2),
                self.eps,
                true,
            );
            drop(shortcut);
            saved.push(BlockSaved {
                g1,
                g2,
                shortcut: kept,
                z1,
                bn1,
                y1,
                z2,
                bn2,
                out: None,
            });
            if b + 1 == self.shapes.len() {
                last = Some(out);
            } else {
                saved[b].out = Some(out);
            }
            dims = out_dims.to_vec();
        }
        let Some(y) = last else {
            bail!("{OP}: a run needs at least one block");
        };
        let saved = RunSaved {
            stem,
            blocks: saved,
        };
        if self.saved.set(saved).is_err() {
            bail!("{OP}: an op instance was applied twice");
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _third: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = ResidualRunBwdOp {
            stem: self.stem,
            shapes: self.shapes.clone(),
            saved: self.saved.clone(),
            packed: packed.clone(),
            want_dx: x.track_op(),
            dpacked: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let dpacked = op
            .dpacked
            .lock()
            .map_err(|_| candle_core::Error::Msg("residual_run: poisoned lock".into()))?
            .take();
        let Some(dpacked) = dpacked else {
            bail!("residual_run backward: parameter gradients missing");
        };
        let dpacked = packed
            .track_op()
            .then(|| Tensor::from_vec(dpacked, packed.shape(), x.device()))
            .transpose()?;
        Ok((x.track_op().then_some(dx), dpacked, None))
    }
}

/// Backward `(x, y, dy) -> dx`, leaving the packed parameters' gradient in
/// `dpacked`.
#[derive(Debug)]
struct ResidualRunBwdOp {
    stem: Option<StemShape>,
    shapes: Vec<BlockShape>,
    saved: Arc<OnceLock<RunSaved>>,
    packed: Tensor,
    want_dx: bool,
    dpacked: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for ResidualRunBwdOp {
    fn name(&self) -> &'static str {
        "lt-residual-run-bwd"
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
        const OP: &str = "residual_run backward";
        let Some(RunSaved {
            stem,
            blocks: saved,
        }) = self.saved.get()
        else {
            bail!("{OP}: backward before forward");
        };
        let (x, y, dy) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        let (storage, layout) = self.packed.storage_and_layout();
        let Storage::Cpu(packed) = &*storage else {
            bail!("{OP}: the packed parameters are not on the CPU");
        };
        let packed = f32_slice(packed, layout, OP)?;
        if packed.len() != packed_len(self.stem.as_ref(), &self.shapes) {
            bail!("{OP}: {} packed parameters", packed.len());
        }
        let (stem_packed, packed) = packed.split_at(self.stem.map_or(0, |s| s.packed_len()));
        let params = split_params(&self.shapes, packed);
        let Some(last) = saved.last() else {
            bail!("{OP}: no blocks");
        };
        if y.len() != last.z2.len() || dy.len() != y.len() {
            bail!("{OP}: gradient {:?} does not match the output", l3.dims());
        }
        let first = stem.as_ref().map_or(&saved[0].g1, |s| &s.g);
        if x.len() != first.n * first.c_in * first.h * first.w {
            bail!(
                "{OP}: input {:?} does not match the forward pass",
                l1.dims()
            );
        }
        let run_input: &[f32] = stem.as_ref().map_or(x, |s| &s.y);
        // Each block's parameter gradients, in packing order, copied into
        // one vector once at the end.
        let mut grads: Vec<Vec<Vec<f32>>> = vec![Vec::new(); saved.len()];
        let mut d: Cow<'_, [f32]> = Cow::Borrowed(dy);
        // The first backward pass's sums of the second batch norm of block
        // `b` over `d`, where the jobs that made `d` took them.
        let mut d_sums: Option<GradPlaneSums> = None;
        for b in (0..saved.len()).rev() {
            let (s, p) = (&saved[b], &params[b]);
            let input: &[f32] = match b {
                0 => run_input,
                _ => saved[b - 1].out.as_deref().unwrap_or_default(),
            };
            let out: &[f32] = s.out.as_deref().unwrap_or(y);
            let (n, c, hw) = (s.g1.n, s.g1.c_out, s.g1.oh * s.g1.ow);
            // The second pair, as the per-block op's backward: BN (with the
            // ReLU's mask and the residual's gradient), then the weight and
            // input gradients of the convolution.
            let sums2 = d_sums.take().unwrap_or_else(|| GradPlaneSums::new(n, c));
            let mask2 = ReluMask::Output(out);
            let bn2 = bn_train_bwd_with(&s.z2, mask2, &d, (n, c, hw), &s.bn2, true, &sums2);
            drop(sums2);
            let dw2 = match &s.y1 {
                Some(y1) => conv_bwd_filter(&s.g2, y1, &bn2.dx),
                None => {
                    let map = BnRelu::of(&s.bn1);
                    conv_bwd_filter_bn_relu(&s.g2, &s.z1, map, &bn2.dx).unwrap_or_else(|| {
                        let y1 = map.apply(&s.z1, s.g2.h * s.g2.w);
                        conv_bwd_filter(&s.g2, &y1, &bn2.dx)
                    })
                }
            };
            // The first batch norm's sums are taken in the jobs of the
            // convolution that makes its gradient, its mask recomputed
            // from its input (a ReLU without a residual): `dy1` and `y1`
            // are not read again from memory for them.
            let sums1 = GradPlaneSums::new(n, c);
            let bn1_inputs = (s.z1.as_slice(), ReluMask::FromInput, &s.bn1);
            let dy1 = conv_bwd_data_then(&s.g2, &bn2.dx, p.w2, |first, dys| {
                sums1.add_images(first, dys, bn1_inputs, hw);
            });
            let bn1 = bn_train_bwd_with(
                &s.z1,
                ReluMask::FromInput,
                &dy1,
                (n, c, hw),
                &s.bn1,
                false,
                &sums1,
            );
            drop(dy1);
            let dw1 = conv_bwd_filter(&s.g1, input, &bn1.dx);
            let Some(dres) = bn2.dz else {
                bail!("{OP}: the residual's gradient is missing");
            };
            // Whether this block's input gradient is wanted at all.
            let want_input = b > 0 || stem.is_some() || self.want_dx;
            // The shortcut's gradients: a projection's batch norm (no ReLU)
            // and weight gradient as `conv2d_batch_norm_train`'s backward
            // takes them, and its input gradient where it is wanted.
            let (dres, projection_grads): (Option<Cow<'_, [f32]>>, [Vec<f32>; 3]) =
                match (&s.shortcut, p.projection) {
                    (SavedShortcut::Identity, _) => {
                        (Some(Cow::Borrowed(&dres)), Default::default())
                    }
                    (SavedShortcut::ZeroPad(zp), _) => (
                        want_input.then(|| Cow::Owned(zero_pad_bwd(zp, &dres))),
                        Default::default(),
                    ),
                    (SavedShortcut::Projection(ps), Some((w, _, _))) => {
                        let ProjectionSaved { g: gp, z, bn } = &**ps;
                        let dims = (gp.n, gp.c_out, gp.oh * gp.ow);
                        let sums = GradPlaneSums::new(dims.0, dims.1);
                        let bp = bn_train_bwd_with(z, ReluMask::Off, &dres, dims, bn, false, &sums);
                        let dw = conv_bwd_filter(gp, input, &bp.dx);
                        let dx = want_input.then(|| Cow::Owned(conv_bwd_data(gp, &bp.dx, w)));
                        (dx, [dw, bp.dgamma, bp.dbeta])
                    }
                    (SavedShortcut::Projection(..), None) => {
                        bail!("{OP}: block {b}: the projection's parameters are missing")
                    }
                };
            let [dwp, dgp, dbp] = projection_grads;
            grads[b] = vec![
                dw1, bn1.dgamma, bn1.dbeta, dw2, bn2.dgamma, bn2.dbeta, dwp, dgp, dbp,
            ];
            let Some(dres) = dres.filter(|_| want_input) else {
                d = Cow::Owned(Vec::new());
                break;
            };
            // In each job of the input gradient, while its images are in
            // cache: the residual's gradient added, then the previous
            // block's second batch norm's sums taken over the sum (that
            // block's output is this block's input).
            let per_image = s.g1.c_in * s.g1.h * s.g1.w;
            let prev = match b {
                0 => stem.as_ref().map(|st| {
                    // The stem's ReLU has no residual: its mask recomputed
                    // from its input, as `conv2d_batch_norm_train`'s
                    // backward takes it.
                    let sums = GradPlaneSums::new(n, s.g1.c_in);
                    (sums, (st.z.as_slice(), ReluMask::FromInput, &st.bn))
                }),
                _ => {
                    let ps = &saved[b - 1];
                    let sums = GradPlaneSums::new(n, s.g1.c_in);
                    Some((sums, (ps.z2.as_slice(), ReluMask::Output(input), &ps.bn2)))
                }
            };
            let dx = conv_bwd_data_then(&s.g1, &bn1.dx, p.w1, |first, dxs| {
                simd::add_assign(dxs, &dres[first * per_image..][..dxs.len()]);
                if let Some((sums, inputs)) = &prev {
                    sums.add_images(first, dxs, *inputs, s.g1.h * s.g1.w);
                }
            });
            d_sums = prev.map(|(sums, _)| sums);
            d = Cow::Owned(dx);
        }
        // The stem, as `conv2d_batch_norm_train`'s backward: its batch norm
        // (the sums taken in the first block's input-gradient jobs above),
        // the weight gradient, and the input gradient where it is wanted.
        let (stem_grads, d) = match (stem, &self.stem, d_sums) {
            (Some(st), Some(shape), Some(sums)) => {
                let g = &st.g;
                let dims = (g.n, g.c_out, g.oh * g.ow);
                let bn =
                    bn_train_bwd_with(&st.z, ReluMask::FromInput, &d, dims, &st.bn, false, &sums);
                drop(d);
                let dw = conv_bwd_filter(g, x, &bn.dx);
                let dx = self
                    .want_dx
                    .then(|| conv_bwd_data(g, &bn.dx, &stem_packed[..shape.w_len()]));
                (vec![dw, bn.dgamma, bn.dbeta], dx)
            }
            (None, None, _) => (Vec::new(), self.want_dx.then(|| d.into_owned())),
            _ => bail!("{OP}: the stem's saved state is missing"),
        };
        *self
            .dpacked
            .lock()
            .map_err(|_| candle_core::Error::Msg("residual_run: poisoned lock".into()))? = Some(
            stem_grads
                .into_iter()
                .chain(grads.into_iter().flatten())
                .collect::<Vec<_>>()
                .concat(),
        );
        let dx = d.unwrap_or_else(|| vec![0f32; x.len()]);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// See [`super::residual_run_train`].
pub(crate) fn residual_run_train(
    x: &Tensor,
    stem: Option<StemShape>,
    shapes: Vec<BlockShape>,
    packed: &Tensor,
    eps: f64,
) -> Result<(Tensor, Arc<OnceLock<RunSaved>>)> {
    let op = ResidualRunOp {
        stem,
        shapes,
        eps,
        saved: Arc::new(OnceLock::new()),
    };
    let saved = op.saved.clone();
    let x = x.contiguous()?;
    let y = x.apply_op3(packed, &x, op)?;
    Ok((y, saved))
}
