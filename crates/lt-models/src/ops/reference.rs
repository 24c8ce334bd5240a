//! Reference implementations composed from candle's own ops.
//!
//! They are slow on the CPU but exact, run on every device candle supports,
//! and serve as the oracle for the project's kernels in tests.

use super::{Conv2dParams, Epilogue};
use candle_core::{DType, Result, Tensor, D};

/// Convolution through candle's `conv2d` (which loops over groups in backward).
pub fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    x.conv2d(w, p.padding, p.stride, 1, p.groups)
}

/// Max pooling as the maximum of `kernel * kernel` shifted, strided views of
/// the `-inf`-padded input. candle's own `max_pool2d` has no padding and no
/// backward unless kernel == stride.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let x = if padding > 0 {
        let pad_h =
            Tensor::full(f32::NEG_INFINITY, (n, c, padding, w), x.device())?.to_dtype(x.dtype())?;
        let x = Tensor::cat(&[&pad_h, x, &pad_h], 2)?;
        let pad_w = Tensor::full(
            f32::NEG_INFINITY,
            (n, c, h + 2 * padding, padding),
            x.device(),
        )?
        .to_dtype(x.dtype())?;
        Tensor::cat(&[&pad_w, &x, &pad_w], 3)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let oh = (hp - kernel) / stride + 1;
    let ow = (wp - kernel) / stride + 1;
    let mut out: Option<Tensor> = None;
    for ki in 0..kernel {
        let rows: Vec<u32> = (0..oh).map(|i| (i * stride + ki) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), x.device())?;
        let xr = x.index_select(&rows, 2)?;
        for kj in 0..kernel {
            let cols: Vec<u32> = (0..ow).map(|j| (j * stride + kj) as u32).collect();
            let cols = Tensor::new(cols.as_slice(), x.device())?;
            let v = xr.index_select(&cols, 3)?;
            out = Some(match out {
                None => v,
                Some(o) => o.maximum(&v)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max_pool2d: empty kernel".into()))
}

fn per_channel(t: &Tensor) -> Result<Tensor> {
    t.reshape((1, t.elem_count(), 1, 1))
}

/// `epilogue(y)`, composed: candle's `relu`, and [`add_relu`] for the
/// residual.
fn epilogue_of(y: Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
    match epilogue {
        Epilogue::None => Ok(y),
        Epilogue::Relu => y.relu(),
        Epilogue::AddRelu(residual) => add_relu(&y, residual),
    }
}

/// `epilogue(batch_norm(x))` with batch statistics, composed from
/// elementwise ops; returns `(y, mean, biased var)` as
/// [`super::batch_norm_train`] does.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_n, c, _h, _w) = x.dims4()?;
    // Half-precision inputs are normalised in f32; f64 stays f64 (the
    // finite-difference oracle in the tests relies on it).
    let xf = if x.dtype() == DType::F64 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let flat = xf.transpose(0, 1)?.reshape((c, ()))?;
    let mean = flat.mean(D::Minus1)?;
    let centred = xf.broadcast_sub(&per_channel(&mean)?)?;
    let var = centred
        .sqr()?
        .transpose(0, 1)?
        .reshape((c, ()))?
        .mean(D::Minus1)?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let y = centred
        .broadcast_mul(&per_channel(&(inv_std * weight)?)?)?
        .broadcast_add(&per_channel(bias)?)?
        .to_dtype(x.dtype())?;
    Ok((epilogue_of(y, epilogue)?, mean.detach(), var.detach()))
}

/// `epilogue(batch_norm(x))` with fixed statistics: an affine map per
/// channel, then the epilogue.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    let scale = (weight / (running_var + eps)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    // Half-precision inputs (f32 parameters) are normalised in f32.
    let xf = if x.dtype() == scale.dtype() {
        x.clone()
    } else {
        x.to_dtype(scale.dtype())?
    };
    let y = xf
        .broadcast_mul(&per_channel(&scale)?)?
        .broadcast_add(&per_channel(&shift)?)?
        .to_dtype(x.dtype())?;
    epilogue_of(y, epilogue)
}

/// `epilogue(batch_norm(conv2d(x, w, p)))` with batch statistics, composed;
/// returns `(y, mean, biased var)` as [`super::conv2d_batch_norm_train`]
/// does.
pub fn conv2d_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train(&conv2d(x, w, p)?, weight, bias, eps, epilogue)
}

/// `relu(a + b)`, composed (broadcasting like `broadcast_add`).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.broadcast_add(b)?.relu()
}

/// [`super::zero_pad_shortcut`] composed: two index selects (skipped at
/// stride 1) and a concatenation with zero channels.
pub fn zero_pad_shortcut(x: &Tensor, stride: usize, front: usize, back: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("zero_pad_shortcut: stride must be positive");
    }
    let (n, _c, h, w) = x.dims4()?;
    let x = if stride == 1 {
        x.clone()
    } else {
        let every = |len: usize| -> Result<Tensor> {
            let idx: Vec<u32> = (0..len).step_by(stride).map(|i| i as u32).collect();
            Tensor::new(idx.as_slice(), x.device())
        };
        x.index_select(&every(h)?, 2)?.index_select(&every(w)?, 3)?
    };
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let (dtype, device) = (x.dtype(), x.device().clone());
    let zeros = |c: usize| Tensor::zeros((n, c, oh, ow), dtype, &device);
    let mut parts = Vec::with_capacity(3);
    if front > 0 {
        parts.push(zeros(front)?);
    }
    parts.push(x);
    if back > 0 {
        parts.push(zeros(back)?);
    }
    Tensor::cat(&parts, 1)
}
