//! Synchronised batch norm for data-parallel training.
//!
//! With W ranks each holding a slice of the global batch, SyncBN normalises
//! with the mean and variance of the *global* batch: per-channel sums are
//! added across ranks by an all-reduce whose backward pass is again an
//! all-reduce (of the upstream gradient), so the gradients of every rank see
//! every sample's contribution, exactly as one process with the whole batch.
//!
//! This crate knows nothing about communication: the caller supplies a
//! [`StatReducer`] and [`install`]s it on the thread that runs the forward
//! pass. While the returned [`SyncBnGuard`] lives, every
//! [`BatchNorm2d`](crate::BatchNorm2d) in [`BnMode::Train`](crate::BnMode)
//! on that thread takes the synchronised path (composed from candle ops:
//! slower than the fused per-rank kernels, two small all-reduces per layer
//! forward and two backward). Evaluation mode is unaffected, and without a
//! guard the default per-rank path runs unchanged.
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{Device, Tensor};
//! use lt_models::sync_bn::{self, StatReducer};
//! use lt_models::{BatchNorm2d, BnMode};
//!
//! /// One rank: the sum over ranks is the value itself.
//! #[derive(Debug)]
//! struct Alone;
//! impl StatReducer for Alone {
//!     fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
//!         Ok(t.detach())
//!     }
//! }
//!
//! let x = Tensor::arange(0f32, 32.0, &Device::Cpu)?.reshape((2, 4, 2, 2))?;
//! let bn = BatchNorm2d::new("bn", 4, &Device::Cpu)?;
//! let plain = bn.forward_t(&x, BnMode::Eval)?; // eval: not synchronised
//! let per_rank = BatchNorm2d::new("bn", 4, &Device::Cpu)?.forward_t(&x, BnMode::Train)?;
//! let synced = {
//!     let _guard = sync_bn::install(Arc::new(Alone));
//!     bn.forward_t(&x, BnMode::Train)?
//! };
//! let diff = (per_rank - synced)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-5);
//! # let _ = plain;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Sums a tensor across the ranks of a data-parallel group.
pub trait StatReducer: Send + Sync + std::fmt::Debug {
    /// The element-wise sum of `t` over every rank (same shape, detached).
    /// Every rank must call it in the same order with the same shape.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

thread_local! {
    static ACTIVE: RefCell<Option<Arc<dyn StatReducer>>> = const { RefCell::new(None) };
}

/// Keeps SyncBN on for the current thread; dropping it restores what was
/// installed before.
#[derive(Debug)]
#[must_use = "SyncBN stays on only while the guard lives"]
pub struct SyncBnGuard {
    previous: Option<Arc<dyn StatReducer>>,
}

impl Drop for SyncBnGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        ACTIVE.with(|a| *a.borrow_mut() = previous);
    }
}

/// Turns SyncBN on for the current thread until the guard is dropped.
pub fn install(reducer: Arc<dyn StatReducer>) -> SyncBnGuard {
    let previous = ACTIVE.with(|a| a.borrow_mut().replace(reducer));
    SyncBnGuard { previous }
}

/// The reducer installed on this thread, if any.
pub(crate) fn active() -> Option<Arc<dyn StatReducer>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// `y = all_reduce_sum(x)` with the matching backward
/// `dx = all_reduce_sum(dy)`: the global sum is a function of every rank's
/// `x`, so each rank's gradient collects the upstream gradients of all ranks.
pub fn all_reduce_sum(x: &Tensor, reducer: &Arc<dyn StatReducer>) -> Result<Tensor> {
    let reduced = reducer.all_reduce_sum(&x.detach())?.contiguous()?;
    x.apply_op2(
        &reduced,
        AllReduceOp {
            reducer: reducer.clone(),
        },
    )
}

/// Forward: a copy of the second argument (the already reduced values).
/// Backward: the all-reduced gradient for the first argument.
struct AllReduceOp {
    reducer: Arc<dyn StatReducer>,
}

impl CustomOp2 for AllReduceOp {
    fn name(&self) -> &'static str {
        "sync-bn-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("sync-bn all-reduce: not contiguous".into()))?;
        let out = match s2 {
            CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
            _ => {
                return Err(candle_core::Error::Msg(
                    "sync-bn all-reduce: statistics must be f32 or f64".into(),
                ))
            }
        };
        Ok((out, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    fn bwd(
        &self,
        _arg1: &Tensor,
        _arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.reducer.all_reduce_sum(grad_res)?), None))
    }
}

/// Batch norm in training mode over the global batch: returns the normalised
/// `x` (`(N, C, H, W)`), the global mean and biased variance `(C)` and the
/// global element count per channel.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    reducer: &Arc<dyn StatReducer>,
) -> Result<(Tensor, Tensor, Tensor, usize)> {
    let (n, c, h, w) = x.dims4()?;
    // In f64: the backward of a composed BN subtracts means of the upstream
    // gradient from values of nearly the same size, and f32 sums over a
    // whole channel made gradients move by percents with the order of the
    // samples (measured on ResNet-8); the fused per-rank kernels accumulate
    // in f64 for the same reason.
    let x64 = x.to_dtype(DType::F64)?;
    // Sums and the element count in one all-reduce (the count lets ranks
    // hold slices of different sizes).
    let count_local = Tensor::new(&[(n * h * w) as f64], x.device())?;
    let sums = Tensor::cat(&[&x64.sum((0, 2, 3))?, &count_local], 0)?;
    let sums = all_reduce_sum(&sums, reducer)?;
    let total = sums.narrow(0, c, 1)?.squeeze(0)?.to_scalar::<f64>()?;
    if total < 2.0 {
        candle_core::bail!("SyncBN: {total} values per channel over all ranks, need at least 2");
    }
    let mean = (sums.narrow(0, 0, c)? / total)?;
    let centred = x64.broadcast_sub(&mean.reshape((1, c, 1, 1))?)?;
    // Two passes (mean first, then squared deviations) rather than E[x²] −
    // mean², which cancels badly for inputs far from zero.
    let var = (all_reduce_sum(&centred.sqr()?.sum((0, 2, 3))?, reducer)? / total)?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let scale = (inv_std * weight.to_dtype(DType::F64)?)?.reshape((1, c, 1, 1))?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.to_dtype(DType::F64)?.reshape((1, c, 1, 1))?)?
        .to_dtype(x.dtype())?;
    Ok((
        y,
        mean.to_dtype(DType::F32)?,
        var.to_dtype(DType::F32)?,
        total.round() as usize,
    ))
}
