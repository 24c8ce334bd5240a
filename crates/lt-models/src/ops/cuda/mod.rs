//! The project's ops on CUDA devices (feature `cuda`).
//!
//! * [`conv2d`]: cuDNN forward, backward-data and backward-filter, with
//!   groups, in f32 / bf16 / f16 (see `conv.rs` for why not candle's).
//! * [`max_pool2d`]: a forward kernel and a deterministic gather backward
//!   that sends each gradient to the first maximum of its window, as
//!   PyTorch does (candle's CUDA max-pool has no backward with padding).
//!
//! * [`batch_norm_train`]: batch statistics fused with the residual add and
//!   the ReLU, two kernels each way, f32 or bf16 activations with f32
//!   statistics (see `batch_norm.rs`).
//!
//! Kernels other than cuDNN's are compiled with NVRTC the first time they are
//! used. Batch norm with running statistics (eval) goes through the composed
//! `reference` ops, in f32 for half inputs.

mod batch_norm;
mod conv;
mod pool;

pub(crate) use batch_norm::batch_norm_train;

use super::Conv2dParams;
use candle_core::cuda_backend::cudarc::cudnn::safe::Cudnn;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Maps foreign errors (cuDNN, NVRTC, driver) into candle's.
trait Wrap<T> {
    fn w(self) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Wrap<T> for std::result::Result<T, E> {
    fn w(self) -> Result<T> {
        self.map_err(candle_core::Error::wrap)
    }
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device,
    // bound to the device's (candle's) stream.
    static CUDNN: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    // One workspace per thread and device, grown to the largest request and
    // reused: every cuDNN call runs on the device's single stream, so calls
    // never overlap.
    static WORKSPACE: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

fn device_of(s: &CudaStorage) -> CudaDevice {
    s.device.clone()
}

/// The elements of a contiguous operand of type `T`, from its layout's
/// offset; `what` names it in errors (wrong dtype or strided).
fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        bail!("{what} must be contiguous");
    }
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    Ok(slice.slice(l.start_offset()..l.start_offset() + l.shape().elem_count()))
}

/// PTX of `source`, compiled by NVRTC once per process (`cell` keeps it, or
/// the compile error, which every later call reports again).
fn compiled_ptx(
    cell: &'static OnceLock<std::result::Result<String, String>>,
    source: &str,
    what: &str,
) -> Result<&'static str> {
    cell.get_or_init(|| {
        nvrtc::compile_ptx(source)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the {what} kernels: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn cudnn_handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    CUDNN.with(|m| {
        if let Some(h) = m.borrow().get(&dev.id()) {
            return Ok(h.clone());
        }
        let h = Cudnn::new(dev.cuda_stream()).w()?;
        m.borrow_mut().insert(dev.id(), h.clone());
        Ok(h)
    })
}

/// Runs `f` with a workspace of at least `bytes` bytes (`None` for zero).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    WORKSPACE.with(|m| {
        let mut m = m.borrow_mut();
        let grow = m.get(&dev.id()).is_none_or(|w| w.len() < bytes);
        if grow {
            // Drop the old buffer first so peak memory is not old + new.
            m.remove(&dev.id());
            // SAFETY: a workspace needs no initial contents.
            let ws = unsafe { dev.alloc::<u8>(bytes)? };
            m.insert(dev.id(), ws);
        }
        let ws = m.get_mut(&dev.id()).expect("inserted above");
        f(Some(ws))
    })
}

/// Whether `t` is on a CUDA device in a dtype the CUDA ops take.
pub(crate) fn is_cuda_float(t: &Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// Whether the fused CUDA batch norm takes `x` (f32 or bf16 on CUDA).
pub(crate) fn bn_supported(x: &Tensor) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// `conv2d(x, w)` through cuDNN, with backward.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let w = if w.dtype() == x.dtype() {
        w.clone()
    } else {
        w.to_dtype(x.dtype())?
    };
    x.contiguous()?
        .apply_op2(&w.contiguous()?, conv::Conv2d { params: p })
}

/// Max pooling on CUDA with backward; half inputs are pooled in f32.
pub(crate) fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = pool::MaxPool2d::new(kernel, stride, padding)?;
    if x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(op)
    } else {
        x.to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1(op)?
            .to_dtype(x.dtype())
    }
}
