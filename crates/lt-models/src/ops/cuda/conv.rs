//! 2-D convolution on CUDA through cuDNN: forward, backward-data and
//! backward-filter, with groups (ResNeXt), in f32, bf16 and f16.
//!
//! Why not candle's own CUDA convolution: its input gradient is a naive
//! one-thread-per-output kernel, its weight gradient falls back to a direct
//! convolution when `cudnn` is on, and its cuDNN forward picks an algorithm
//! and allocates a workspace on every call. Here each of the three passes is
//! one cuDNN call; the algorithm is chosen once per shape (cuDNN's
//! heuristics) and the workspace is a per-device buffer that only grows.
//!
//! Accumulation is always f32 (the convolution descriptor's compute type).
//! f32 convolutions may use TF32 tensor cores, as PyTorch's default
//! (`torch.backends.cudnn.allow_tf32 = True`) does; set `LT_CUDNN_TF32=0`
//! for strict f32 (used when comparing against the CPU path).

use super::{cudnn_handle, device_of, view, with_workspace, Wrap};
use crate::ops::conv::ConvGeom;
use crate::ops::Conv2dParams;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    safe::{ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn},
    sys, CudnnDataType,
};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::LocalKey;

/// Which of the three convolution passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// Algorithm cache key: the geometry, the dtype and the math mode.
type AlgoKey = (ConvGeom, DType, u32);
type AlgoCache<A> = RefCell<HashMap<AlgoKey, A>>;

thread_local! {
    // cuDNN's heuristic query costs tens of microseconds; a training step asks
    // the same few dozen shapes every time. Thread-local because the cuDNN
    // handle (and candle's own) is per thread.
    static FWD_ALGOS: AlgoCache<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
    static BWD_DATA_ALGOS: AlgoCache<sys::cudnnConvolutionBwdDataAlgo_t> =
        RefCell::new(HashMap::new());
    static BWD_FILTER_ALGOS: AlgoCache<sys::cudnnConvolutionBwdFilterAlgo_t> =
        RefCell::new(HashMap::new());
}

/// The algorithm for `key` from `cache`, or `pick`'s (then cached).
fn algorithm<A: Copy + 'static>(
    cache: &'static LocalKey<AlgoCache<A>>,
    key: AlgoKey,
    pick: impl FnOnce() -> Result<A>,
) -> Result<A> {
    if let Some(a) = cache.with(|m| m.borrow().get(&key).copied()) {
        return Ok(a);
    }
    let a = pick()?;
    cache.with(|m| m.borrow_mut().insert(key, a));
    Ok(a)
}

fn tf32_allowed() -> bool {
    static TF32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TF32.get_or_init(|| std::env::var("LT_CUDNN_TF32").map_or(true, |v| v != "0"))
}

/// The math mode for a dtype: tensor cores for half types; for f32, TF32
/// unless disabled.
fn math_type(dtype: DType) -> sys::cudnnMathType_t {
    match dtype {
        DType::F32 if !tf32_allowed() => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        DType::F32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    }
}

fn i32s(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| d as i32)
}

/// Runs one pass for element type `T` (f32 accumulation).
fn run<T>(
    pass: Pass,
    g: &ConvGeom,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<CudaStorage>
where
    T: CudaDType + DeviceRepr + CudnnDataType + candle_core::WithDType,
{
    let dev = device_of(a.0);
    let cudnn: Arc<Cudnn> = cudnn_handle(&dev)?;
    let mut conv = cudnn
        .create_conv2d::<f32>(
            [g.pad as i32, g.pad as i32],
            [g.stride as i32, g.stride as i32],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .w()?;
    conv.set_group_count(g.groups as i32).w()?;
    conv.set_math_type(math_type(T::DTYPE)).w()?;
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let x_desc = cudnn
        .create_4d_tensor::<T>(nchw, i32s([g.n, g.c_in, g.h, g.w]))
        .w()?;
    let y_desc = cudnn
        .create_4d_tensor::<T>(nchw, i32s([g.n, g.c_out, g.oh, g.ow]))
        .w()?;
    let w_desc = cudnn
        .create_4d_filter::<T>(nchw, i32s([g.c_out, g.cig(), g.kh, g.kw]))
        .w()?;
    let key: AlgoKey = (*g, T::DTYPE, math_type(T::DTYPE) as u32);
    let one = (T::from_f64(1.0), T::from_f64(0.0));

    let out = match pass {
        Pass::Forward => {
            let (x, w) = (
                view::<T>(a.0, a.1, "cudnn conv2d input")?,
                view::<T>(b.0, b.1, "cudnn conv2d weight")?,
            );
            let op = ConvForward {
                conv: &conv,
                x: &x_desc,
                w: &w_desc,
                y: &y_desc,
            };
            let algo = algorithm(&FWD_ALGOS, key, || op.pick_algorithm().w())?;
            let bytes = op.get_workspace_size(algo).w()?;
            // SAFETY: cuDNN writes every output element (beta = 0).
            let mut y = unsafe { dev.alloc::<T>(g.n * g.c_out * g.oh * g.ow)? };
            with_workspace(&dev, bytes, |ws| {
                // SAFETY: the views and `y` match the descriptors' shapes and dtype.
                unsafe { op.launch(algo, ws, one, &x, &w, &mut y) }.w()
            })?;
            y
        }
        Pass::BackwardData => {
            // a = dy, b = w.
            let (dy, w) = (
                view::<T>(a.0, a.1, "cudnn conv2d gradient")?,
                view::<T>(b.0, b.1, "cudnn conv2d weight")?,
            );
            let op = ConvBackwardData {
                conv: &conv,
                dx: &x_desc,
                w: &w_desc,
                dy: &y_desc,
            };
            let algo = algorithm(&BWD_DATA_ALGOS, key, || op.pick_algorithm().w())?;
            let bytes = op.get_workspace_size(algo).w()?;
            // SAFETY: cuDNN writes every element of dx (beta = 0).
            let mut dx = unsafe { dev.alloc::<T>(g.n * g.c_in * g.h * g.w)? };
            with_workspace(&dev, bytes, |ws| {
                // SAFETY: shapes and dtype match the descriptors.
                unsafe { op.launch(algo, ws, one, &mut dx, &w, &dy) }.w()
            })?;
            dx
        }
        Pass::BackwardFilter => {
            // a = x, b = dy.
            let (x, dy) = (
                view::<T>(a.0, a.1, "cudnn conv2d input")?,
                view::<T>(b.0, b.1, "cudnn conv2d gradient")?,
            );
            let op = ConvBackwardFilter {
                conv: &conv,
                x: &x_desc,
                dw: &w_desc,
                dy: &y_desc,
            };
            let algo = algorithm(&BWD_FILTER_ALGOS, key, || op.pick_algorithm().w())?;
            let bytes = op.get_workspace_size(algo).w()?;
            // SAFETY: cuDNN writes every element of dw (beta = 0).
            let mut dw = unsafe { dev.alloc::<T>(g.c_out * g.cig() * g.kh * g.kw)? };
            with_workspace(&dev, bytes, |ws| {
                // SAFETY: shapes and dtype match the descriptors.
                unsafe { op.launch(algo, ws, one, &x, &mut dw, &dy) }.w()
            })?;
            dw
        }
    };
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

fn dispatch(
    pass: Pass,
    g: &ConvGeom,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (da, db) = (a.0.dtype(), b.0.dtype());
    if da != db {
        bail!("cudnn conv2d: operands have different dtypes {da:?} and {db:?}");
    }
    match da {
        DType::F32 => run::<f32>(pass, g, a, b),
        DType::BF16 => run::<bf16>(pass, g, a, b),
        DType::F16 => run::<f16>(pass, g, a, b),
        other => bail!("cudnn conv2d: unsupported dtype {other:?}"),
    }
}

/// `conv2d(x, w)` on CUDA; backward through [`ConvBwdData`] / [`ConvBwdFilter`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2d {
    pub params: Conv2dParams,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "lt-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cudnn-conv2d runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = ConvGeom::new(xl.dims(), wl.dims(), self.params)?;
        let y = dispatch(Pass::Forward, &g, (x, xl), (w, wl))?;
        Ok((y, Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.params)?;
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(&w.contiguous()?, &ConvBwdData { geom: g })?;
        let dw = x
            .contiguous()?
            .apply_op2_no_bwd(&dy, &ConvBwdFilter { geom: g })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx` from `(dy, w)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBwdData {
    pub geom: ConvGeom,
}

impl CustomOp2 for ConvBwdData {
    fn name(&self) -> &'static str {
        "lt-cudnn-conv2d-bwd-data"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cudnn-conv2d-bwd-data runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        dy: &CudaStorage,
        dyl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.geom;
        let dx = dispatch(Pass::BackwardData, g, (dy, dyl), (w, wl))?;
        Ok((dx, Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}

/// `dw` from `(x, dy)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBwdFilter {
    pub geom: ConvGeom,
}

impl CustomOp2 for ConvBwdFilter {
    fn name(&self) -> &'static str {
        "lt-cudnn-conv2d-bwd-filter"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cudnn-conv2d-bwd-filter runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.geom;
        let dw = dispatch(Pass::BackwardFilter, g, (x, xl), (dy, dyl))?;
        Ok((dw, Shape::from((g.c_out, g.cig(), g.kh, g.kw))))
    }
}
