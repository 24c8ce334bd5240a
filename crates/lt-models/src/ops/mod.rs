//! Tensor operations the backbones are built from.
//!
//! Every function here is the single entry point the models call. For `f32`
//! tensors on the CPU they run the project's own kernels: candle custom ops
//! whose backward passes are custom ops too, parallel over the batch (or
//! over channels) with rayon. Any other dtype or device falls back to
//! compositions of candle's ops in [`reference`](mod@reference), which also serve as the
//! test oracle; [`with_reference_ops`] forces that path. With the `cuda`
//! feature, convolutions and max-pooling on CUDA devices (f32, bf16, f16)
//! run the project's CUDA ops instead: cuDNN forward, backward-data and
//! backward-filter with groups, batch norm with batch statistics fused with
//! its epilogue (f32 or bf16 activations, f32 statistics), and a max-pool
//! kernel with a deterministic backward. Half-precision convolutions on the CPU are computed in f32.
//!
//! | entry point | forward | backward |
//! |---|---|---|
//! | [`conv2d`] | Winograd F(4x4, 3x3) (heights a multiple of 4, widths of 8; [`set_winograd_f4`]), else Winograd F(2x2, 3x3) on AVX-512 or AVX2 (3x3, stride 1, padding 1, even sizes, no groups, `C_out` a multiple of 8; [`set_winograd`]), both where the transformed input fits the L2 cache or the map has 64 tiles and more (the 224² networks' 56x56, 28x28 and 14x14 layers), else the direct kernel (stride 1, kernels above 1x1, channels per group a multiple of 8; on AVX2 only up to 160 inputs per output; strided, on the input split into its phases: kernels above 1x1, up to 288 inputs per output), else im2col + `gemm` | input: the forward kernels on the flipped weights (stride 1) or gemm + col2im; weights: the direct kernel or Winograd, F(4x4, 3x3) on maps of 16x16 and more with up to 32 x 32 channels, else F(2x2, 3x3) with up to 64 x 64 channels, or any number on a map of 64 tiles and more (their products by gemm on the transformed operands); Winograd first where both apply; else gemm |
//! | [`batch_norm_train`] | statistics pass, then one normalise (+ residual, + ReLU) pass | two passes (per-channel sums, input gradient) |
//! | [`conv2d_batch_norm_train`] | the two above in one op, the statistics' sums taken in the convolution's jobs while its output is in cache | the two above, the gradient between them kept inside the op; without a residual the ReLU's mask recomputed from the batch norm's input (no read of the output) |
//! | [`residual_run_train`] | consecutive basic residual blocks (two [`conv2d_batch_norm_train`] and the shortcut each: identity, zero padding or 1x1 projection + BN) in one op, optionally after a stem (one more conv + BN + ReLU); each block's inner activation read by its second convolution through the first batch norm's map and ReLU, never written (where that convolution takes F(4x4, 3x3)) | the blocks' backward passes, the gradients between the blocks kept inside the op; each batch norm's per-channel sums taken in the jobs of the convolution that makes its gradient (and the residual's gradient added there) |
//! | [`batch_norm_eval`] | one per-channel affine pass (+ ReLU) | one pass |
//! | [`max_pool2d`] | one pass, keeps the argmax | scatter to the argmax |
//! | [`conv2d_bias`] (inference) | the [`conv2d`] kernels, then bias (+ residual) + ReLU in place, per image | none |
//! | [`add_relu`] | one pass | one pass |
//! | [`zero_pad_shortcut`] | one pass | one pass |
//!
//! Every batch-norm entry point takes an [`Epilogue`]: [`Epilogue::None`],
//! [`Epilogue::Relu`] or [`Epilogue::AddRelu`] with the residual. Use the
//! fused epilogues wherever the graph allows: `Relu` / `AddRelu`
//! where a ReLU or a residual connection follows (each saves candle a
//! full-size elementwise op forward and three or four backward: comparison,
//! cast, product, accumulation), and [`conv2d_batch_norm_train`] for a convolution
//! followed by its batch norm. candle's backward accumulates every gradient
//! that crosses an op boundary into a fresh zeroed tensor (a memset and an
//! add over the whole activation, on the calling thread while the kernels'
//! workers wait); inside a fused op it never crosses one. Measured on the
//! CIFAR ResNet-32 training step (batch 128, 2 threads): fusing every
//! conv with its BN made the step about 5% faster; running the blocks as
//! one residual run ([`set_residual_runs`]), 2-15% more (AVX2 EPYC).
//!
//! The kernels pick AVX-512 or AVX2 + FMA at run time ([`active_isa`]);
//! [`set_max_isa`] caps the choice, to measure or reproduce what a
//! machine with less runs. Per output lane the AVX2 and AVX-512 kernels
//! compute the same chain of operations, so they give the same bits.
//!
//! # Performance notes for binaries
//!
//! * The kernels make glibc keep freed memory (see [`retain_freed_memory`]).
//! * candle runs its own elementwise ops (gradient accumulation, mainly) on
//!   a separate spin-waiting thread pool sized by `CANDLE_NUM_THREADS`; next
//!   to the kernels' rayon pool it oversubscribes the cores. Training
//!   binaries should set `CANDLE_NUM_THREADS=1` before candle starts any
//!   thread (the `resnet_step` bench does), and size rayon with
//!   `RAYON_NUM_THREADS` or a global pool.
//! * Make the main thread worker 0 of that pool (rayon's
//!   `ThreadPoolBuilder::use_current_thread`, as `lt-cli` does) and run
//!   the training or evaluation loop through [`on_worker`]: from a thread
//!   outside the pool each of the kernels' parallel loops puts the caller
//!   to sleep and wakes it again.
//! * Install [`HugePageAlloc`] as the global allocator (`lt-cli` does):
//!   the activations the kernels stream then sit in 2 MiB pages, 3-6 %
//!   more images per second on a ResNet-32 training step.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_models::ops::{self, Conv2dParams};
//!
//! let x = Tensor::ones((2, 8, 6, 6), candle_core::DType::F32, &Device::Cpu)?;
//! let w = Tensor::ones((8, 8, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let p = Conv2dParams { stride: 1, padding: 1, groups: 1 };
//! let y = ops::conv2d(&x, &w, p)?;
//! assert_eq!(y.dims(), &[2, 8, 6, 6]);
//! // The centre of the map sees all 8 * 3 * 3 ones.
//! let centre: f32 = y.get(0)?.get(0)?.get(3)?.get(3)?.to_scalar()?;
//! assert_eq!(centre, 72.0);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Result, Tensor};
use std::cell::Cell;

mod batch_norm;
mod conv;
mod conv_bn;
mod conv_infer;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
// AVX-512 intrinsics and target features are stable since Rust 1.89; the
// module is only compiled into paths chosen at run time on AVX-512 CPUs.
#[clippy::msrv = "1.89"]
mod direct;
mod eltwise;
mod huge_pages;
pub(crate) mod isa;
mod lanes;
mod pool;
pub mod reference;
mod residual_run;
mod shortcut;
pub(crate) mod simd;
#[clippy::msrv = "1.89"]
mod winograd;
mod winograd_f4;

pub use huge_pages::{enabled as huge_pages_enabled, set_enabled as set_huge_pages, HugePageAlloc};
pub use isa::{active_isa, detected_isa, set_max_isa, Isa, UnknownIsa};
pub use residual_run::{enabled as residual_runs_enabled, set_enabled as set_residual_runs};
pub use winograd::{enabled as winograd_enabled, set_enabled as set_winograd};
pub use winograd_f4::{enabled as winograd_f4_enabled, set_enabled as set_winograd_f4};

use batch_norm::EpilogueKind;

/// Whether every operand can go through the project's CPU kernels (f32 on
/// the CPU); anything else takes the `reference` path.
fn on_kernels(ts: &[&Tensor]) -> bool {
    let yes = !FORCE_REFERENCE.with(Cell::get)
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if yes {
        cpu::retain_freed_memory_once();
    }
    yes
}

/// Whether `x` goes through the project's CUDA ops (feature `cuda`: f32,
/// bf16 or f16 on a CUDA device, reference ops not forced).
#[cfg(feature = "cuda")]
fn on_cuda(x: &Tensor) -> bool {
    !FORCE_REFERENCE.with(Cell::get) && cuda::is_cuda_float(x)
}

/// Whether batch norm on `x` goes through the fused CUDA kernels.
#[cfg(feature = "cuda")]
fn on_cuda_bn(x: &Tensor) -> bool {
    !FORCE_REFERENCE.with(Cell::get) && cuda::bn_supported(x)
}

/// A convolution off the CPU f32 kernels: cuDNN on CUDA; on the CPU, half
/// precision is computed in f32 (candle has no CPU half convolution) and
/// rounded back; anything else through candle's ops.
fn conv2d_other(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_cuda(x) {
        return cuda::conv2d(x, w, p);
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::BF16 | DType::F16) {
        let dtype = x.dtype();
        let (x32, w32) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
        return conv2d(&x32, &w32, p)?.to_dtype(dtype);
    }
    reference::conv2d(x, w, p)
}

thread_local! {
    static FORCE_REFERENCE: Cell<bool> = const { Cell::new(false) };
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every entry point of this module recording no autograd
/// graph in the calling thread: their operands are detached, so each output
/// owns only its own storage and every activation is freed as soon as the
/// caller drops it (inference; a graph would keep every activation of the
/// forward pass alive until the output is dropped). The values are those
/// of the same calls outside `f`.
pub fn without_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|c| c.replace(true)));
    f()
}

/// `t` detached inside [`without_grad`], `t` itself otherwise.
fn operand(t: &Tensor) -> Tensor {
    if NO_GRAD.with(Cell::get) {
        t.detach()
    } else {
        t.clone()
    }
}

/// Runs `f` with every entry point of this module on the `reference` path
/// in the calling thread (other threads are unaffected): the oracle for
/// whole-model comparisons and a way to rule the kernels out when debugging.
///
/// Only the forward pass needs to run inside `f`: a tensor's backward
/// follows the path its forward took.
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCE_REFERENCE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCE_REFERENCE.with(|c| c.replace(true)));
    f()
}

/// Makes the C allocator keep freed memory for reuse (glibc: no `mmap`ed
/// blocks, no trimming); returns whether it applied (`false` off glibc).
///
/// A training step frees and re-allocates the same activation-sized blocks
/// every step. By default glibc serves blocks from 128 KiB up with fresh
/// `mmap`s and unmaps them on free, so every step pays a page fault per
/// 4 KiB touched, which measured here cost more than the convolutions
/// themselves. Raising the mmap threshold to its 32 MiB maximum is not
/// enough at 224²: ResNet-50's activations at batch 16 are 51 MB, and each
/// training step still took about 250,000 page faults (1 GB faulted in,
/// `perf stat`), so mmap is switched off (with it off, the faults after
/// the first step fell to a few thousand per step). The kernels call this once, the
/// first time they run; the price is that the process keeps its peak heap
/// size.
pub fn retain_freed_memory() -> bool {
    cpu::retain_freed_memory()
}

/// Runs `f` on a worker thread of the current rayon pool (the global one
/// outside any pool) and returns its result; inline where the caller is
/// already one of that pool's workers. Panics in `f` reach the caller.
///
/// Every kernel here splits its work with rayon. Called from a thread
/// outside the pool (a binary's main thread), each of a training step's
/// hundreds of parallel loops hands its work to the pool, puts the caller
/// to sleep and wakes it at the end: with as many workers as cores, three
/// threads share two cores, and a CIFAR ResNet-32 step (batch 128, 2
/// threads, Intel Xeon) made about 1,800 context switches. Run from a
/// worker, the step's serial parts and its loops stay on the pool's
/// threads: about 270 context switches and 5-10 % more images per second
/// (the README's performance section). The results are the same bits:
/// only the thread that starts each loop changes. Wrap a whole training or evaluation loop, not each step:
/// [`without_grad`] and [`with_reference_ops`] hold for the thread that
/// calls them, so call them inside `f`.
///
/// A binary does better to make its main thread worker 0 of the global
/// pool (rayon's `ThreadPoolBuilder::use_current_thread`, as `lt-cli`
/// and the `resnet_step` bench do), so that `f` runs inline: glibc gives
/// every other thread an arena of its own, which grows in heaps of at
/// most 64 MB and maps and unmaps every larger block anew, and the
/// activations of a step run on a spawned worker are such blocks at 224²
/// (ResNeXt-50 at batch 32, 3 steps: 3.9 img/s, a 6.3 GB peak and 5.0
/// million page faults, against 6.1 img/s, 4.5 GB and 1.2 million with
/// the main thread as worker 0).
///
/// ```
/// let on_pool = lt_models::ops::on_worker(|| rayon::current_thread_index().is_some());
/// assert!(on_pool);
/// ```
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    cpu::on_worker(f)
}

/// Geometry of a 2-D convolution (dilation is always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride in both spatial dimensions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Number of groups (1 for a dense convolution, 32 in ResNeXt 32x4d).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// 2-D convolution of `x` `(N, C_in, H, W)` with `w` `(C_out, C_in / groups, K, K)`,
/// no bias.
///
/// Any stride, padding, group count and kernel size (square or not).
pub fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let (x, w) = (&operand(x), &operand(w));
    if !on_kernels(&[x, w]) {
        return conv2d_other(x, w, p);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, conv::Conv2dOp { params: p })
}

/// Max pooling with a square window, stride and padding (padding counts as
/// minus infinity), with a backward pass.
///
/// As in PyTorch, the padding is at most half the kernel, the output size is
/// rounded down, and the first maximum of a window takes the whole gradient.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let x = &operand(x);
    #[cfg(feature = "cuda")]
    if on_cuda(x) {
        return cuda::max_pool2d(x, kernel, stride, padding);
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::BF16 | DType::F16) {
        let pooled = max_pool2d(&x.to_dtype(DType::F32)?, kernel, stride, padding)?;
        return pooled.to_dtype(x.dtype());
    }
    if !on_kernels(&[x]) {
        return reference::max_pool2d(x, kernel, stride, padding);
    }
    x.contiguous()?
        .apply_op1(pool::MaxPool2dOp::new(kernel, stride, padding))
}

/// What follows the per-channel affine map of a batch norm, fused into the
/// same pass: the `epilogue` argument of [`batch_norm_train`],
/// [`batch_norm_eval`] and [`conv2d_batch_norm_train`] (and of their
/// [`reference`](mod@reference) counterparts).
///
/// With the kernels, the ReLU's gradient at exactly zero is zero (PyTorch's
/// convention); the `reference` path uses candle's `relu`.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `y = bn(x)`.
    None,
    /// `y = relu(bn(x))`: a batch norm followed by a ReLU.
    Relu,
    /// `y = relu(bn(x) + residual)`, the end of a ResNet block; the residual
    /// has the shape of `x` (of the convolution's output for
    /// [`conv2d_batch_norm_train`]) and receives a gradient.
    AddRelu(&'a Tensor),
}

impl<'a> Epilogue<'a> {
    /// The epilogue without its residual, as the ops store it.
    pub(crate) fn kind(self) -> EpilogueKind {
        match self {
            Self::None => EpilogueKind::None,
            Self::Relu => EpilogueKind::Relu,
            Self::AddRelu(_) => EpilogueKind::AddRelu,
        }
    }

    /// `self` with the residual of [`Epilogue::AddRelu`] replaced by
    /// `residual` (when given).
    fn with_residual<'b>(self, residual: Option<&'b Tensor>) -> Epilogue<'b>
    where
        'a: 'b,
    {
        match (self, residual) {
            (Self::AddRelu(_), Some(r)) => Epilogue::AddRelu(r),
            (Self::AddRelu(r), None) => Epilogue::AddRelu(r),
            (Self::None, _) => Epilogue::None,
            (Self::Relu, _) => Epilogue::Relu,
        }
    }

    /// The residual of [`Epilogue::AddRelu`].
    pub(crate) fn residual(self) -> Option<&'a Tensor> {
        match self {
            Self::AddRelu(r) => Some(r),
            Self::None | Self::Relu => None,
        }
    }
}

/// [`on_kernels`] over `ts` and the epilogue's residual, if any.
fn on_kernels_with(ts: &[&Tensor], epilogue: Epilogue<'_>) -> bool {
    match epilogue.residual() {
        Some(r) => on_kernels(&[ts, &[r]].concat()),
        None => on_kernels(ts),
    }
}

/// `epilogue(batch_norm(x))` for `x` `(N, C, H, W)` with batch statistics.
///
/// Returns `(y, mean, var)` where `mean` and `var` are the per-channel batch
/// mean and *biased* variance `(C,)`, detached, for the caller's
/// running-statistics update (which uses the unbiased variance, as PyTorch
/// does). The epilogue is fused: one op (two passes) each way instead of a
/// batch norm, an add and a ReLU.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (x, weight, bias) = (&operand(x), &operand(weight), &operand(bias));
    let residual = epilogue.residual().map(operand);
    let epilogue = epilogue.with_residual(residual.as_ref());
    #[cfg(feature = "cuda")]
    if on_cuda_bn(x) {
        return cuda::batch_norm_train(x, weight, bias, eps, epilogue);
    }
    if !on_kernels_with(&[x, weight, bias], epilogue) {
        return reference::batch_norm_train(x, weight, bias, eps, epilogue);
    }
    batch_norm::batch_norm_train(x, weight, bias, eps, epilogue)
}

/// `epilogue(batch_norm(x))` for `x` `(N, C, H, W)` with fixed (running)
/// statistics: a per-channel affine map.
///
/// [`Epilogue::Relu`] is fused into the affine pass; [`Epilogue::AddRelu`]
/// is the affine pass followed by [`add_relu`].
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    let (x, weight, bias) = (&operand(x), &operand(weight), &operand(bias));
    let (running_mean, running_var) = (&operand(running_mean), &operand(running_var));
    let relu = match epilogue {
        Epilogue::None => false,
        Epilogue::Relu => true,
        Epilogue::AddRelu(residual) => {
            let y = batch_norm_eval(
                x,
                weight,
                bias,
                running_mean,
                running_var,
                eps,
                Epilogue::None,
            )?;
            return add_relu(&y, residual);
        }
    };
    if !on_kernels(&[x, weight, bias, running_mean, running_var]) {
        return reference::batch_norm_eval(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            epilogue,
        );
    }
    // The per-channel scale and shift are tiny candle ops (so gradients
    // still reach `weight` and `bias`); the full-size pass is one custom op.
    let scale = (weight / (running_var + eps)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        batch_norm::ChannelAffineOp { relu },
    )
}

/// `batch_norm_train(conv2d(x, w, p), weight, bias, eps, epilogue)` as one
/// op: the gradient between the convolution and the batch norm stays inside
/// the op (see the module docs). Returns `(y, mean, var)` as
/// [`batch_norm_train`] does; with [`Epilogue::AddRelu`] it is the second
/// convolution of a ResNet block.
pub fn conv2d_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (x, w) = (&operand(x), &operand(w));
    let (weight, bias) = (&operand(weight), &operand(bias));
    let residual = epilogue.residual().map(operand);
    let epilogue = epilogue.with_residual(residual.as_ref());
    if !on_kernels_with(&[x, w, weight, bias], epilogue) {
        return batch_norm_train(&conv2d_other(x, w, p)?, weight, bias, eps, epilogue);
    }
    conv_bn::conv2d_batch_norm_train(x, w, p, weight, bias, eps, epilogue)
}

/// One basic residual block's tensors for [`residual_run_train`]: two 3x3
/// convolutions (padding 1; the first with `stride`), each followed by a
/// batch norm (`gamma`, `beta`), and the shortcut.
#[derive(Debug, Clone, Copy)]
pub struct BasicBlockTensors<'a> {
    pub w1: &'a Tensor,
    pub gamma1: &'a Tensor,
    pub beta1: &'a Tensor,
    pub w2: &'a Tensor,
    pub gamma2: &'a Tensor,
    pub beta2: &'a Tensor,
    /// The first convolution's stride.
    pub stride: usize,
    pub shortcut: ShortcutTensors<'a>,
}

/// The shortcut of a block in [`residual_run_train`].
#[derive(Debug, Clone, Copy)]
pub enum ShortcutTensors<'a> {
    /// The input itself.
    Identity,
    /// [`zero_pad_shortcut`] with the block's stride and these channel
    /// counts.
    ZeroPad { front: usize, back: usize },
    /// A 1x1 convolution `w` with the block's stride and no padding, then
    /// its batch norm (`gamma`, `beta`), no ReLU (torchvision's
    /// `downsample`), as [`conv2d_batch_norm_train`] computes them.
    Projection {
        w: &'a Tensor,
        gamma: &'a Tensor,
        beta: &'a Tensor,
    },
}

/// Batch statistics `(mean, biased variance)` of one block's batch norms,
/// for the running-statistics updates.
#[derive(Debug)]
pub struct BlockStats {
    pub bn1: (Tensor, Tensor),
    pub bn2: (Tensor, Tensor),
    /// The projection shortcut's, where the shortcut is one.
    pub shortcut: Option<(Tensor, Tensor)>,
}

/// A convolution, its batch norm (`gamma`, `beta`) and a ReLU ahead of a
/// residual run (a CIFAR ResNet's stem), for [`residual_run_train`].
#[derive(Debug, Clone, Copy)]
pub struct StemTensors<'a> {
    pub w: &'a Tensor,
    pub params: Conv2dParams,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// What [`residual_run_train`] returns: the run's output, then the batch
/// statistics `(mean, biased variance)` of the stem (where it took one) and
/// of each block, for the running-statistics updates.
#[derive(Debug)]
pub struct RunOutput {
    pub y: Tensor,
    pub stem_stats: Option<(Tensor, Tensor)>,
    pub block_stats: Vec<BlockStats>,
}

/// A run of basic residual blocks with batch statistics (training mode) as
/// one op: per block `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`,
/// the same arithmetic as the blocks' own ops ([`conv2d_batch_norm_train`]
/// twice and [`zero_pad_shortcut`]), bit for bit, with the gradients between
/// the blocks kept inside the op (see the `residual_run` module docs). With
/// `stem`, the run starts with `relu(bn(conv(x)))` (as
/// [`conv2d_batch_norm_train`] computes it), whose output is the first
/// block's input.
///
/// `None` when the run cannot take these operands (not the CPU f32 kernels,
/// a 3x3 shape it does not have, or runs switched off by
/// [`set_residual_runs`]): the caller runs the stem and the blocks one by
/// one.
pub fn residual_run_train(
    x: &Tensor,
    stem: Option<StemTensors<'_>>,
    blocks: &[BasicBlockTensors<'_>],
    eps: f64,
) -> Result<Option<RunOutput>> {
    if !residual_run::enabled() || blocks.is_empty() {
        return Ok(None);
    }
    let x = operand(x);
    let mut parts = Vec::with_capacity(3 + 6 * blocks.len());
    let stem_shape = match stem {
        Some(st) => {
            let w = operand(st.w);
            if !on_kernels(&[&x, &w, st.gamma, st.beta]) {
                return Ok(None);
            }
            let w_dims = w.dims4()?;
            parts.extend([w.flatten_all()?, operand(st.gamma), operand(st.beta)]);
            Some(residual_run::StemShape {
                w_dims,
                params: st.params,
            })
        }
        None => None,
    };
    let mut shapes = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (w1, w2) = (operand(b.w1), operand(b.w2));
        let ts = [&w1, b.gamma1, b.beta1, &w2, b.gamma2, b.beta2];
        if !on_kernels(&[&[&x][..], &ts].concat()) {
            return Ok(None);
        }
        let (co, ci, kh, kw) = w1.dims4()?;
        if (kh, kw) != (3, 3) || w2.dims4()? != (co, co, 3, 3) {
            return Ok(None);
        }
        let shortcut = match b.shortcut {
            ShortcutTensors::Identity => residual_run::RunShortcut::Identity,
            ShortcutTensors::ZeroPad { front, back } => {
                residual_run::RunShortcut::ZeroPad { front, back }
            }
            ShortcutTensors::Projection { w, gamma, beta } => {
                let w = operand(w);
                if !on_kernels(&[&w, gamma, beta]) || w.dims4()? != (co, ci, 1, 1) {
                    return Ok(None);
                }
                residual_run::RunShortcut::Projection
            }
        };
        shapes.push(residual_run::BlockShape {
            c_in: ci,
            c_out: co,
            stride: b.stride,
            shortcut,
        });
        parts.extend([
            w1.flatten_all()?,
            operand(b.gamma1),
            operand(b.beta1),
            w2.flatten_all()?,
            operand(b.gamma2),
            operand(b.beta2),
        ]);
        if let ShortcutTensors::Projection { w, gamma, beta } = b.shortcut {
            parts.extend([operand(w).flatten_all()?, operand(gamma), operand(beta)]);
        }
    }
    if !x.track_op() && !parts.iter().any(Tensor::track_op) {
        // Nothing to differentiate: block by block, each activation is
        // freed as soon as the next op has read it.
        return Ok(None);
    }
    let packed = Tensor::cat(&parts, 0)?;
    let (y, saved) = residual_run::residual_run_train(&x, stem_shape, shapes, &packed, eps)?;
    let Some(saved) = saved.get() else {
        candle_core::bail!("residual_run: statistics missing after the forward pass");
    };
    let dev = x.device();
    let stats = |s: &batch_norm::BnSaved| -> Result<(Tensor, Tensor)> {
        let c = s.mean.len();
        Ok((
            Tensor::from_vec(s.mean.clone(), c, dev)?,
            Tensor::from_vec(s.var.clone(), c, dev)?,
        ))
    };
    let block_stats = saved
        .blocks
        .iter()
        .map(|b| {
            Ok(BlockStats {
                bn1: stats(&b.bn1)?,
                bn2: stats(&b.bn2)?,
                shortcut: b.shortcut.projection_bn().map(stats).transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    let stem_stats = saved.stem.as_ref().map(|s| stats(&s.bn)).transpose()?;
    Ok(Some(RunOutput {
        y,
        stem_stats,
        block_stats,
    }))
}

/// `epilogue(conv2d(x, w, p) + bias[c])`, forward only: a convolution whose
/// eval-mode batch norm was folded into `w` and `bias` (inference). On the
/// CPU kernels the bias, the residual and the ReLU are applied in place on
/// the convolution's output (one activation written instead of two or
/// three); elsewhere through candle's ops. The operands are detached: no
/// gradient flows through this op.
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    p: Conv2dParams,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    let (x, w, bias) = (x.detach(), w.detach(), bias.detach());
    let residual = epilogue.residual().map(Tensor::detach);
    let mut operands = vec![&x, &w, &bias];
    operands.extend(residual.as_ref());
    if !on_kernels(&operands) {
        let c = bias.elem_count();
        let y = conv2d(&x, &w, p)?.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
        return match &residual {
            Some(r) => (y + r)?.relu(),
            None if matches!(epilogue, Epilogue::Relu) => y.relu(),
            None => Ok(y),
        };
    }
    let op = conv_infer::ConvBiasOp {
        params: p,
        relu: !matches!(epilogue, Epilogue::None),
        residual: residual.map(|r| r.contiguous()).transpose()?,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &bias.contiguous()?, &op)
}

/// `relu(a + b)` in one pass each way (a residual connection's output).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (&operand(a), &operand(b));
    if !on_kernels(&[a, b]) || a.dims() != b.dims() {
        return reference::add_relu(a, b);
    }
    a.contiguous()?
        .apply_op2(&b.contiguous()?, eltwise::AddReluOp)
}

/// The parameter-free shortcut of the CIFAR ResNets' "option A" (He et al.
/// 2016): `x` `(N, C, H, W)` subsampled to every `stride`-th row and column
/// (from the first: PyTorch's `x[:, :, ::stride, ::stride]`, so
/// `ceil(H / stride)` rows), then `front` zero channels before and `back`
/// after: `(N, front + C + back, ceil(H / stride), ceil(W / stride))`.
///
/// On the CPU kernels one pass each way; elsewhere index selects and a
/// concatenation ([`reference::zero_pad_shortcut`]).
pub fn zero_pad_shortcut(x: &Tensor, stride: usize, front: usize, back: usize) -> Result<Tensor> {
    let x = &operand(x);
    if !on_kernels(&[x]) {
        return reference::zero_pad_shortcut(x, stride, front, back);
    }
    x.contiguous()?.apply_op1(shortcut::ZeroPadShortcutOp {
        stride,
        front,
        back,
    })
}
