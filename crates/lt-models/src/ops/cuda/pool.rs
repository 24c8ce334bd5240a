//! Max pooling on CUDA: forward and a deterministic gather backward, as
//! NVRTC-compiled kernels (compiled once per process, loaded once per device).
//!
//! The backward pass does not store the forward's argmax: each input
//! element looks at the (at most `ceil(k / s)^2`) windows that contain it,
//! recomputes their first maximum, and sums the gradients of those it wins.
//! That is a few extra reads of a small tensor, needs no atomics, and so
//! gives the same bits on every run.

use super::{compiled_ptx, device_of, view, Wrap};
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor,
};
use std::sync::OnceLock;

const MODULE: &str = "lt_max_pool";

// Ties and NaNs as in PyTorch: a later element wins only if it is strictly
// greater, or NaN. Windows are clipped to the image; padding never wins.
const SOURCE: &str = r#"
__device__ __forceinline__ int first_max(const float* xp, int h, int w, int oy, int ox,
                                         int k, int s, int p) {
    int y0 = oy * s - p, x0 = ox * s - p;
    int ys = max(y0, 0), xs = max(x0, 0);
    int ye = min(y0 + k, h), xe = min(x0 + k, w);
    int best_i = ys * w + xs;
    float best = __int_as_float(0xff800000);
    for (int iy = ys; iy < ye; ++iy) {
        for (int ix = xs; ix < xe; ++ix) {
            float v = xp[iy * w + ix];
            if (v > best || v != v) { best = v; best_i = iy * w + ix; }
        }
    }
    return best_i;
}

extern "C" __global__ void lt_max_pool_fwd(const float* x, float* y, long long planes,
                                           int h, int w, int oh, int ow, int k, int s, int p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = planes * oh * ow;
    if (i >= total) return;
    int ox = (int)(i % ow);
    int oy = (int)((i / ow) % oh);
    long long plane = i / ((long long)oh * ow);
    const float* xp = x + plane * h * w;
    y[i] = xp[first_max(xp, h, w, oy, ox, k, s, p)];
}

extern "C" __global__ void lt_max_pool_bwd(const float* x, const float* dy, float* dx,
                                           long long planes, int h, int w, int oh, int ow,
                                           int k, int s, int p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = planes * h * w;
    if (i >= total) return;
    int ix = (int)(i % w);
    int iy = (int)((i / w) % h);
    long long plane = i / ((long long)h * w);
    const float* xp = x + plane * h * w;
    const float* dyp = dy + plane * oh * ow;
    // Output rows whose window [oy*s-p, oy*s-p+k) contains iy.
    int oy_lo = max(0, (iy + p - k + s) / s);
    int oy_hi = min(oh - 1, (iy + p) / s);
    int ox_lo = max(0, (ix + p - k + s) / s);
    int ox_hi = min(ow - 1, (ix + p) / s);
    float acc = 0.0f;
    int me = iy * w + ix;
    for (int oy = oy_lo; oy <= oy_hi; ++oy) {
        for (int ox = ox_lo; ox <= ox_hi; ++ox) {
            if (first_max(xp, h, w, oy, ox, k, s, p) == me) acc += dyp[oy * ow + ox];
        }
    }
    dx[i] = acc;
}
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled_ptx(&PTX, SOURCE, "max-pool")
}

/// Geometry, validated as on the CPU path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool2d {
    k: usize,
    s: usize,
    p: usize,
}

impl MaxPool2d {
    pub(crate) fn new(k: usize, s: usize, p: usize) -> Result<Self> {
        if k == 0 || s == 0 || 2 * p > k {
            bail!("max_pool2d: need kernel, stride > 0 and padding <= kernel / 2, got k={k} s={s} p={p}");
        }
        Ok(Self { k, s, p })
    }

    fn out_dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        let &[n, c, h, w] = dims else {
            bail!("max_pool2d: expected a 4-d input, got {dims:?}");
        };
        if h + 2 * self.p < self.k || w + 2 * self.p < self.k {
            bail!(
                "max_pool2d: kernel {} larger than the padded input {h}x{w}",
                self.k
            );
        }
        let oh = (h + 2 * self.p - self.k) / self.s + 1;
        let ow = (w + 2 * self.p - self.k) / self.s + 1;
        Ok((n, c, h, oh, ow))
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "lt-cuda-max-pool2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cuda-max-pool2d runs on CUDA devices only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, oh, ow) = self.out_dims(l.dims())?;
        let w = l.dims()[3];
        let dev = device_of(s);
        let x = view::<f32>(s, l, "max_pool2d (cuda) input")?;
        let total = n * c * oh * ow;
        // SAFETY: the kernel writes every output element.
        let mut y = unsafe { dev.alloc::<f32>(total)? };
        let func = dev.get_or_load_custom_func("lt_max_pool_fwd", MODULE, ptx()?)?;
        let (planes, hi, wi, ohi, owi) = ((n * c) as i64, h as i32, w as i32, oh as i32, ow as i32);
        let (k, st, p) = (self.k as i32, self.s as i32, self.p as i32);
        let mut b = func.builder();
        b.arg(&x)
            .arg(&mut y)
            .arg(&planes)
            .arg(&hi)
            .arg(&wi)
            .arg(&ohi)
            .arg(&owi);
        b.arg(&k).arg(&st).arg(&p);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { b.launch(LaunchConfig::for_num_elems(total as u32)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev),
            Shape::from((n, c, oh, ow)),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPool2dBwd(*self))?;
        Ok(Some(dx))
    }
}

/// `dx` from `(x, dy)`.
#[derive(Debug, Clone, Copy)]
struct MaxPool2dBwd(MaxPool2d);

impl CustomOp2 for MaxPool2dBwd {
    fn name(&self) -> &'static str {
        "lt-cuda-max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cuda-max-pool2d-bwd runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, oh, ow) = self.0.out_dims(xl.dims())?;
        if dyl.dims() != [n, c, oh, ow] {
            bail!(
                "max_pool2d backward: gradient {:?} does not match the output",
                dyl.dims()
            );
        }
        let w = xl.dims()[3];
        let dev = device_of(xs);
        let x = view::<f32>(xs, xl, "max_pool2d (cuda) input")?;
        let dy = view::<f32>(dys, dyl, "max_pool2d (cuda) gradient")?;
        let total = n * c * h * w;
        // SAFETY: the kernel writes every element of dx.
        let mut dx = unsafe { dev.alloc::<f32>(total)? };
        let func = dev.get_or_load_custom_func("lt_max_pool_bwd", MODULE, ptx()?)?;
        let (planes, hi, wi, ohi, owi) = ((n * c) as i64, h as i32, w as i32, oh as i32, ow as i32);
        let (k, st, p) = (self.0.k as i32, self.0.s as i32, self.0.p as i32);
        let mut b = func.builder();
        b.arg(&x)
            .arg(&dy)
            .arg(&mut dx)
            .arg(&planes)
            .arg(&hi)
            .arg(&wi)
            .arg(&ohi)
            .arg(&owi);
        b.arg(&k).arg(&st).arg(&p);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { b.launch(LaunchConfig::for_num_elems(total as u32)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()))
    }
}
