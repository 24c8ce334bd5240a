//! Batch normalisation with batch statistics on CUDA, fused with the
//! residual add and the ReLU that follow it in a ResNet: two kernels forward
//! (per-channel statistics; normalise + epilogue) and two backward
//! (per-channel sums; input gradient), where candle's composed batch norm
//! launches about fifteen full-size kernels each way. Activations are f32 or
//! bf16; statistics, γ, β and their gradients are f32, accumulated in f64.
//!
//! The ops mirror the CPU ops in `ops/batch_norm.rs` (same inputs, same
//! epilogues, same gradients): `BnTrain` runs the forward pass and keeps the
//! statistics on the device for `BnBwd`; values that candle's custom-op
//! interface cannot return as a second output (the statistics, dγ, dβ and the
//! residual's gradient) are handed out through [`Emit`], a no-input op that
//! returns a stored device buffer as a tensor.

use super::{compiled_ptx, device_of, view, Wrap};
use crate::ops::batch_norm::EpilogueKind;
use crate::ops::Epilogue;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::bf16;
use std::sync::{Arc, Mutex, OnceLock};

const MODULE: &str = "lt_batch_norm";
const THREADS: u32 = 256;

// bf16 is handled as its bits (no headers needed under NVRTC): widening is a
// shift, narrowing rounds to nearest even, NaN stays NaN.
const SOURCE: &str = r#"
__device__ __forceinline__ float ld(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, unsigned long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, unsigned long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (unsigned short)(u >> 16);
}

// Block-wide sum of two doubles; blockDim.x == 256.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
    __shared__ double sa[256], sb[256];
    int t = threadIdx.x;
    sa[t] = a; sb[t] = b;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) { sa[t] += sa[t + s]; sb[t] += sb[t + s]; }
        __syncthreads();
    }
    a = sa[0]; b = sb[0];
}

// One block per channel: stats[ch] = mean, stats[C + ch] = biased variance,
// stats[2C + ch] = 1 / sqrt(var + eps). Sums are shifted by the channel's
// first value, which keeps the one-pass variance accurate.
template <typename T>
__device__ void stats(const T* x, float* out, unsigned int n, unsigned int c,
                      unsigned int hw, double eps) {
    unsigned int ch = blockIdx.x;
    unsigned int m = n * hw;
    double k = ld(x, (unsigned long long)ch * hw);
    double s = 0.0, s2 = 0.0;
    for (unsigned int j = threadIdx.x; j < m; j += blockDim.x) {
        unsigned int i = j / hw, p = j - i * hw;
        double v = (double)ld(x, ((unsigned long long)i * c + ch) * hw + p) - k;
        s += v; s2 += v * v;
    }
    block_sum2(s, s2);
    if (threadIdx.x == 0) {
        double ms = s / m;
        double var = s2 / m - ms * ms;
        if (var < 0.0) var = 0.0;
        out[ch] = (float)(k + ms);
        out[c + ch] = (float)var;
        out[2 * c + ch] = (float)(1.0 / sqrt(var + eps));
    }
}

// y = epilogue(gamma * (x - mean) * invstd + beta (+ r)).
template <typename T>
__device__ void apply(const T* x, const T* r, const float* gamma, const float* beta,
                      const float* st_, T* y, unsigned long long total, unsigned int c,
                      unsigned int hw, int relu) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    unsigned int ch = (unsigned int)((i / hw) % c);
    float a = gamma[ch] * st_[2 * c + ch];
    float v = (ld(x, i) - st_[ch]) * a + beta[ch];
    if (r) v += ld(r, i);
    if (relu && !(v > 0.0f)) v = 0.0f;
    st(y, i, v);
}

// One block per channel: sums[ch] = sum(dz) (dbeta), sums[C + ch] =
// sum(dz * (x - mean)) * invstd (dgamma), where dz = dy masked by y > 0
// under a ReLU.
template <typename T>
__device__ void bwd_sums(const T* x, const T* y, const T* dy, const float* st_, float* sums,
                         unsigned int n, unsigned int c, unsigned int hw, int relu) {
    unsigned int ch = blockIdx.x;
    unsigned int m = n * hw;
    float mean = st_[ch];
    double s = 0.0, sx = 0.0;
    for (unsigned int j = threadIdx.x; j < m; j += blockDim.x) {
        unsigned int i = j / hw, p = j - i * hw;
        unsigned long long e = ((unsigned long long)i * c + ch) * hw + p;
        float d = ld(dy, e);
        if (relu && !(ld(y, e) > 0.0f)) d = 0.0f;
        s += d; sx += (double)d * (double)(ld(x, e) - mean);
    }
    block_sum2(s, sx);
    if (threadIdx.x == 0) {
        sums[ch] = (float)s;
        sums[c + ch] = (float)(sx * st_[2 * c + ch]);
    }
}

// dx = k1 * dz + k2 * x + k3 per channel (see the CPU op for the algebra);
// dz (the residual's gradient) is written when asked for.
template <typename T>
__device__ void bwd_dx(const T* x, const T* y, const T* dy, const float* gamma,
                       const float* st_, const float* sums, T* dx, T* dz,
                       unsigned long long total, unsigned int n, unsigned int c,
                       unsigned int hw, int relu) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    unsigned int ch = (unsigned int)((i / hw) % c);
    double m = (double)n * hw;
    double is = st_[2 * c + ch];
    double k1 = gamma[ch] * is;
    double k2 = -k1 * is * sums[c + ch] / m;
    double k3 = -k1 * sums[ch] / m - k2 * st_[ch];
    float d = ld(dy, i);
    if (relu && !(ld(y, i) > 0.0f)) d = 0.0f;
    if (dz) st(dz, i, d);
    st(dx, i, (float)(k1 * d + k2 * ld(x, i) + k3));
}

#define INSTANTIATE(SUFFIX, T)                                                               \
extern "C" __global__ void lt_bn_stats_##SUFFIX(const T* x, float* out, unsigned int n,      \
        unsigned int c, unsigned int hw, double eps) { stats(x, out, n, c, hw, eps); }      \
extern "C" __global__ void lt_bn_apply_##SUFFIX(const T* x, const T* r, const float* g,     \
        const float* b, const float* s, T* y, unsigned long long total, unsigned int c,     \
        unsigned int hw, int relu) { apply(x, r, g, b, s, y, total, c, hw, relu); }         \
extern "C" __global__ void lt_bn_bwd_sums_##SUFFIX(const T* x, const T* y, const T* dy,     \
        const float* s, float* sums, unsigned int n, unsigned int c, unsigned int hw,       \
        int relu) { bwd_sums(x, y, dy, s, sums, n, c, hw, relu); }                          \
extern "C" __global__ void lt_bn_bwd_dx_##SUFFIX(const T* x, const T* y, const T* dy,       \
        const float* g, const float* s, const float* sums, T* dx, T* dz,                    \
        unsigned long long total, unsigned int n, unsigned int c, unsigned int hw,          \
        int relu) { bwd_dx(x, y, dy, g, s, sums, dx, dz, total, n, c, hw, relu); }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, unsigned short)
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled_ptx(&PTX, SOURCE, "batch-norm")
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => bail!("batch_norm (cuda): unsupported dtype {d:?} (f32 or bf16)"),
    }
}

fn dims(l: &Layout) -> Result<(u32, u32, u32, u64)> {
    let &[n, c, h, w] = l.dims() else {
        bail!(
            "batch_norm (cuda): expected (N, C, H, W), got {:?}",
            l.dims()
        );
    };
    let (m, total) = (n * h * w, n * c * h * w);
    if m >= u32::MAX as usize || c == 0 || m < 2 {
        bail!("batch_norm (cuda): unsupported shape {:?}", l.dims());
    }
    Ok((n as u32, c as u32, (h * w) as u32, total as u64))
}

fn grid(total: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(THREADS as u64) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_channel(c: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A device buffer waiting to be handed out as a tensor by [`Emit`].
type Slot = Arc<Mutex<Option<(CudaStorage, Shape)>>>;

fn put(slot: &Slot, s: CudaStorage, shape: Shape) -> Result<()> {
    *slot.lock().map_err(|_| poisoned())? = Some((s, shape));
    Ok(())
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("batch_norm (cuda): poisoned lock".into())
}

/// Returns the buffer in its slot as the op's output (once); the input only
/// names the device. No backward: the values it hands out are constants of
/// the graph (statistics) or gradients already.
#[derive(Debug)]
struct Emit(Slot);

impl CustomOp1 for Emit {
    fn name(&self) -> &'static str {
        "lt-cuda-emit"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cuda-emit runs on CUDA devices only")
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        match self.0.lock().map_err(|_| poisoned())?.take() {
            Some(v) => Ok(v),
            None => bail!("batch_norm (cuda): value already taken or never computed"),
        }
    }
}

fn emit(on: &Tensor, slot: &Slot) -> Result<Tensor> {
    on.apply_op1_no_bwd(&Emit(slot.clone()))
}

/// The residual (with its layout), γ and β of a forward call.
type BnParams<'a> = (
    Option<(&'a CudaStorage, Layout)>,
    CudaView<'a, f32>,
    CudaView<'a, f32>,
);

/// Forward: `(x, gamma, beta)`, or `(x, residual, [gamma; beta])` for
/// [`EpilogueKind::AddRelu`] (as the CPU op).
#[derive(Debug)]
struct BnTrain {
    eps: f64,
    epilogue: EpilogueKind,
    /// The statistics `[mean; var; invstd]` (3C, f32), kept for backward.
    stats: Arc<OnceLock<CudaSlice<f32>>>,
    /// `[mean; var]` for the caller's running-statistics update.
    out_stats: Slot,
}

impl BnTrain {
    fn params<'a>(
        &self,
        s2: &'a CudaStorage,
        l2: &Layout,
        s3: &'a CudaStorage,
        l3: &Layout,
        c: usize,
    ) -> Result<BnParams<'a>> {
        if self.epilogue == EpilogueKind::AddRelu {
            let wb = view::<f32>(s3, l3, "batch_norm (cuda) operand")?;
            if wb.len() != 2 * c {
                bail!(
                    "batch_norm (cuda): weight/bias of {} values for {c} channels",
                    wb.len()
                );
            }
            let (g, b) = (wb.slice(0..c), wb.slice(c..2 * c));
            Ok((Some((s2, l2.clone())), g, b))
        } else {
            let (g, b) = (
                view::<f32>(s2, l2, "batch_norm (cuda) operand")?,
                view::<f32>(s3, l3, "batch_norm (cuda) operand")?,
            );
            if g.len() != c || b.len() != c {
                bail!(
                    "batch_norm (cuda): weight {:?} and bias {:?} for {c} channels",
                    l2.dims(),
                    l3.dims()
                );
            }
            Ok((None, g, b))
        }
    }
}

fn run_fwd<T: CudaDType + DeviceRepr>(
    op: &BnTrain,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (n, c, hw, total) = dims(l1)?;
    let sfx = suffix(s1.dtype())?;
    let dev = device_of(s1);
    let x = view::<T>(s1, l1, "batch_norm (cuda) operand")?;
    let (residual, gamma, beta) = op.params(s2, l2, s3, l3, c as usize)?;
    let residual = match residual {
        Some((s, l)) => {
            if l.dims() != l1.dims() || s.dtype() != s1.dtype() {
                bail!(
                    "batch_norm (cuda): residual {:?} does not match input {:?}",
                    l.dims(),
                    l1.dims()
                );
            }
            Some(view::<T>(s, &l, "batch_norm (cuda) operand")?)
        }
        None => None,
    };
    // SAFETY: the kernels write every element of both buffers.
    let mut stats = unsafe { dev.alloc::<f32>(3 * c as usize)? };
    let mut y = unsafe { dev.alloc::<T>(total as usize)? };
    let f = dev.get_or_load_custom_func(&format!("lt_bn_stats_{sfx}"), MODULE, ptx()?)?;
    let mut b = f.builder();
    b.arg(&x)
        .arg(&mut stats)
        .arg(&n)
        .arg(&c)
        .arg(&hw)
        .arg(&op.eps);
    // SAFETY: argument types and order match the kernel.
    unsafe { b.launch(per_channel(c)) }.w()?;

    let f = dev.get_or_load_custom_func(&format!("lt_bn_apply_{sfx}"), MODULE, ptx()?)?;
    let relu = i32::from(op.epilogue.relu());
    let null: u64 = 0;
    let mut b = f.builder();
    b.arg(&x);
    match &residual {
        Some(r) => b.arg(r),
        None => b.arg(&null),
    };
    b.arg(&gamma)
        .arg(&beta)
        .arg(&stats)
        .arg(&mut y)
        .arg(&total)
        .arg(&c)
        .arg(&hw)
        .arg(&relu);
    // SAFETY: as above; a null residual pointer means none.
    unsafe { b.launch(grid(total)) }.w()?;

    let mean_var = stats.slice(0..2 * c as usize);
    let mut out = unsafe { dev.alloc::<f32>(2 * c as usize)? };
    dev.memcpy_dtod(&mean_var, &mut out)?;
    put(
        &op.out_stats,
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((2, c as usize)),
    )?;
    if op.stats.set(stats).is_err() {
        bail!("batch_norm (cuda): an op instance was applied twice");
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "lt-cuda-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cuda-batch-norm-train runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let y = match s1.dtype() {
            DType::F32 => run_fwd::<f32>(self, (s1, l1), (s2, l2), (s3, l3))?,
            DType::BF16 => run_fwd::<bf16>(self, (s1, l1), (s2, l2), (s3, l3))?,
            d => bail!("batch_norm (cuda): unsupported dtype {d:?}"),
        };
        Ok((y, l1.shape().clone()))
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
        let gamma = if add {
            arg3.narrow(0, 0, arg3.dim(0)? / 2)?
        } else {
            arg2.clone()
        };
        let op = BnBwd {
            stats: self.stats.clone(),
            relu: self.epilogue.relu(),
            want_dz: add && arg2.track_op(),
            gamma: gamma.contiguous()?,
            sums: Slot::default(),
            dz: Slot::default(),
        };
        let dy = dy.contiguous()?.to_dtype(x.dtype())?;
        let dx = x.apply_op3_no_bwd(y, &dy, &op)?;
        let sums = emit(x, &op.sums)?; // (2, C): [dbeta; dgamma]
        let (dbeta, dgamma) = (sums.get(0)?, sums.get(1)?);
        let dx = x.track_op().then_some(dx);
        if add {
            let dr = if op.want_dz {
                Some(emit(x, &op.dz)?)
            } else {
                None
            };
            let dwb = arg3
                .track_op()
                .then(|| Tensor::cat(&[&dgamma, &dbeta], 0))
                .transpose()?;
            Ok((dx, dr, dwb))
        } else {
            Ok((
                dx,
                arg2.track_op().then_some(dgamma),
                arg3.track_op().then_some(dbeta),
            ))
        }
    }
}

/// Backward: `(x, y, dy)` to `dx`; dγ, dβ (and dz) through slots.
#[derive(Debug)]
struct BnBwd {
    stats: Arc<OnceLock<CudaSlice<f32>>>,
    relu: bool,
    want_dz: bool,
    gamma: Tensor,
    sums: Slot,
    dz: Slot,
}

fn run_bwd<T: CudaDType + DeviceRepr>(
    op: &BnBwd,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (n, c, hw, total) = dims(l1)?;
    if l2.dims() != l1.dims() || l3.dims() != l1.dims() {
        bail!(
            "batch_norm backward (cuda): gradient {:?} does not match input {:?}",
            l3.dims(),
            l1.dims()
        );
    }
    let sfx = suffix(s1.dtype())?;
    let dev = device_of(s1);
    let (x, y, dy) = (
        view::<T>(s1, l1, "batch_norm (cuda) operand")?,
        view::<T>(s2, l2, "batch_norm (cuda) operand")?,
        view::<T>(s3, l3, "batch_norm (cuda) operand")?,
    );
    let Some(stats) = op.stats.get() else {
        bail!("batch_norm backward (cuda): backward before forward");
    };
    let (g_storage, g_layout) = op.gamma.storage_and_layout();
    let candle_core::Storage::Cuda(g_storage) = &*g_storage else {
        bail!("batch_norm backward (cuda): weight is not on the GPU");
    };
    let gamma = view::<f32>(g_storage, g_layout, "batch_norm (cuda) operand")?;
    let relu = i32::from(op.relu);

    // SAFETY: the kernels write every element.
    let mut sums = unsafe { dev.alloc::<f32>(2 * c as usize)? };
    let f = dev.get_or_load_custom_func(&format!("lt_bn_bwd_sums_{sfx}"), MODULE, ptx()?)?;
    let mut b = f.builder();
    b.arg(&x)
        .arg(&y)
        .arg(&dy)
        .arg(stats)
        .arg(&mut sums)
        .arg(&n)
        .arg(&c)
        .arg(&hw)
        .arg(&relu);
    // SAFETY: argument types and order match the kernel.
    unsafe { b.launch(per_channel(c)) }.w()?;

    let mut dx = unsafe { dev.alloc::<T>(total as usize)? };
    let mut dz = if op.want_dz {
        Some(unsafe { dev.alloc::<T>(total as usize)? })
    } else {
        None
    };
    let f = dev.get_or_load_custom_func(&format!("lt_bn_bwd_dx_{sfx}"), MODULE, ptx()?)?;
    let null: u64 = 0;
    let mut b = f.builder();
    b.arg(&x)
        .arg(&y)
        .arg(&dy)
        .arg(&gamma)
        .arg(stats)
        .arg(&sums)
        .arg(&mut dx);
    match dz.as_mut() {
        Some(dz) => b.arg(dz),
        None => b.arg(&null),
    };
    b.arg(&total).arg(&n).arg(&c).arg(&hw).arg(&relu);
    // SAFETY: as above; a null dz pointer means none.
    unsafe { b.launch(grid(total)) }.w()?;
    drop(b);

    put(
        &op.sums,
        CudaStorage::wrap_cuda_slice(sums, dev.clone()),
        Shape::from((2, c as usize)),
    )?;
    if let Some(dz) = dz {
        put(
            &op.dz,
            CudaStorage::wrap_cuda_slice(dz, dev.clone()),
            l1.shape().clone(),
        )?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

impl CustomOp3 for BnBwd {
    fn name(&self) -> &'static str {
        "lt-cuda-batch-norm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("lt-cuda-batch-norm-train-bwd runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dx = match s1.dtype() {
            DType::F32 => run_bwd::<f32>(self, (s1, l1), (s2, l2), (s3, l3))?,
            DType::BF16 => run_bwd::<bf16>(self, (s1, l1), (s2, l2), (s3, l3))?,
            d => bail!("batch_norm backward (cuda): unsupported dtype {d:?}"),
        };
        Ok((dx, l1.shape().clone()))
    }
}

/// `epilogue(batch_norm(x) (+ residual))` with batch statistics on CUDA;
/// returns `(y, mean, biased var)` as the CPU entry points do.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = BnTrain {
        eps,
        epilogue: epilogue.kind(),
        stats: Arc::new(OnceLock::new()),
        out_stats: Slot::default(),
    };
    let out_stats = op.out_stats.clone();
    let x = x.contiguous()?;
    let (weight, bias) = (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
    let y = match epilogue.residual() {
        Some(r) => {
            let wb = Tensor::cat(&[&weight, &bias], 0)?;
            let r = r.to_dtype(x.dtype())?.contiguous()?;
            x.apply_op3(&r, &wb.contiguous()?, op)?
        }
        None => x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?,
    };
    let stats = emit(&x, &out_stats)?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}
