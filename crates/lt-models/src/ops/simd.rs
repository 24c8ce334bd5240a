//! Elementwise and reduction loops over one plane (or chunk) of f32, compiled
//! for AVX-512, AVX2 + FMA and the baseline, and picked at run time.
//!
//! The workspace builds for the portable baseline (SSE2), where these loops
//! run four lanes wide; the dispatch gives them the machine's full width
//! without `target-cpu=native`. Reductions keep explicit lane accumulators in
//! a fixed order, so every code path gives bit-identical results.

use std::mem::MaybeUninit;

/// Defines `pub(crate) fn $name(args) -> ret` that runs `$body` compiled
/// with the best instruction set the CPU reports.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::ops::isa::avx512() {
                    // SAFETY: the CPU supports every feature `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::ops::isa::avx2() {
                    // SAFETY: the CPU supports every feature `v3` is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use dispatch;

/// Lanes of the explicit accumulators: two AVX-512 registers' worth.
const L: usize = 32;

/// Folds lane accumulators to f64 in a fixed order.
#[inline(always)]
fn fold(acc: &[f32; L]) -> f64 {
    acc.iter().map(|&v| f64::from(v)).sum()
}

dispatch! {
    /// `(sum(v - k), sum((v - k)^2))`, f32 lanes flushed to f64 every 4096
    /// elements so long planes keep their accuracy.
    fn shifted_sums(v: &[f32], k: f32) -> (f64, f64) {
        let (mut s, mut s2) = (0f64, 0f64);
        for block in v.chunks(4096) {
            let mut a = [0f32; L];
            let mut b = [0f32; L];
            let chunks = block.chunks_exact(L);
            let rest = chunks.remainder();
            for ch in chunks {
                for l in 0..L {
                    let d = ch[l] - k;
                    a[l] += d;
                    b[l] += d * d;
                }
            }
            for (l, &x) in rest.iter().enumerate() {
                let d = x - k;
                a[l] += d;
                b[l] += d * d;
            }
            s += fold(&a);
            s2 += fold(&b);
        }
        (s, s2)
    }
}

dispatch! {
    /// `out = max?(x * a + b (+ r), 0)`, every element of `out` written
    /// (it may start uninitialised).
    fn affine_plane(
        x: &[f32],
        r: Option<&[f32]>,
        a: f32,
        b: f32,
        relu: bool,
        out: &mut [MaybeUninit<f32>],
    ) {
        let n = out.len();
        let x = &x[..n];
        match (r, relu) {
            (None, false) => {
                for i in 0..n {
                    out[i] = MaybeUninit::new(x[i] * a + b);
                }
            }
            (None, true) => {
                for i in 0..n {
                    out[i] = MaybeUninit::new((x[i] * a + b).max(0.0));
                }
            }
            (Some(r), false) => {
                let r = &r[..n];
                for i in 0..n {
                    out[i] = MaybeUninit::new(x[i] * a + b + r[i]);
                }
            }
            (Some(r), true) => {
                let r = &r[..n];
                for i in 0..n {
                    out[i] = MaybeUninit::new((x[i] * a + b + r[i]).max(0.0));
                }
            }
        }
    }
}

dispatch! {
    /// [`affine_plane`] in place: `x = max?(x * a + b (+ r), 0)`, the same
    /// roundings.
    fn affine_plane_in_place(x: &mut [f32], r: Option<&[f32]>, a: f32, b: f32, relu: bool) {
        let n = x.len();
        match (r, relu) {
            (None, false) => {
                for v in x.iter_mut() {
                    *v = *v * a + b;
                }
            }
            (None, true) => {
                for v in x.iter_mut() {
                    *v = (*v * a + b).max(0.0);
                }
            }
            (Some(r), false) => {
                for (v, r) in x.iter_mut().zip(&r[..n]) {
                    *v = *v * a + b + r;
                }
            }
            (Some(r), true) => {
                for (v, r) in x.iter_mut().zip(&r[..n]) {
                    *v = (*v * a + b + r).max(0.0);
                }
            }
        }
    }
}

/// `d` where the ReLU output `y` is positive, else 0 (PyTorch's relu').
#[inline(always)]
fn mask(relu: bool, y: f32, d: f32) -> f32 {
    if !relu || y > 0.0 {
        d
    } else {
        0.0
    }
}

/// Splits three equal-length slices into `L`-element arrays plus the tails;
/// array operands let the compiler drop bounds checks and keep the lane
/// accumulators in registers.
/// Three `L`-element chunks.
type Lanes3<'a> = (&'a [f32; L], &'a [f32; L], &'a [f32; L]);
/// The tails of three slices.
type Tails3<'a> = (&'a [f32], &'a [f32], &'a [f32]);

#[inline(always)]
fn lanes3<'a>(
    x: &'a [f32],
    y: &'a [f32],
    z: &'a [f32],
) -> (impl Iterator<Item = Lanes3<'a>>, Tails3<'a>) {
    let n = x.len();
    let (y, z) = (&y[..n], &z[..n]);
    let full = n / L * L;
    let it = x[..full]
        .chunks_exact(L)
        .zip(y[..full].chunks_exact(L))
        .zip(z[..full].chunks_exact(L))
        .map(|((a, b), c)| {
            let a: &[f32; L] = a.try_into().expect("chunk of L");
            let b: &[f32; L] = b.try_into().expect("chunk of L");
            let c: &[f32; L] = c.try_into().expect("chunk of L");
            (a, b, c)
        });
    (it, (&x[full..], &y[full..], &z[full..]))
}

dispatch! {
    /// `(sum(d), sum(d * (x - mean)))` with `d = dy` masked by `y > 0` when
    /// `relu` is set.
    fn masked_sums(x: &[f32], y: &[f32], dy: &[f32], mean: f32, relu: bool) -> (f64, f64) {
        let mut a = [0f32; L];
        let mut b = [0f32; L];
        let (body, (xt, yt, dt)) = lanes3(x, y, dy);
        if relu {
            for (xc, yc, dc) in body {
                for l in 0..L {
                    let d = mask(true, yc[l], dc[l]);
                    a[l] += d;
                    b[l] += d * (xc[l] - mean);
                }
            }
        } else {
            for (xc, _, dc) in body {
                for l in 0..L {
                    a[l] += dc[l];
                    b[l] += dc[l] * (xc[l] - mean);
                }
            }
        }
        for l in 0..xt.len() {
            let d = mask(relu, yt[l], dt[l]);
            a[l] += d;
            b[l] += d * (xt[l] - mean);
        }
        (fold(&a), fold(&b))
    }
}

dispatch! {
    /// `dx = d * k1 + x * k2 + k3` with `d` as in [`masked_sums`]; also
    /// `dz = d` when asked. Every element of `dx` (and `dz`) is written;
    /// they may start uninitialised.
    fn bn_dx_plane(
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        k: (f32, f32, f32),
        relu: bool,
        dx: &mut [MaybeUninit<f32>],
        dz: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let n = dx.len();
        let (x, y, dy) = (&x[..n], &y[..n], &dy[..n]);
        let (k1, k2, k3) = k;
        for i in 0..n {
            dx[i] = MaybeUninit::new(mask(relu, y[i], dy[i]) * k1 + x[i] * k2 + k3);
        }
        if let Some(dz) = dz {
            let dz = &mut dz[..n];
            for i in 0..n {
                dz[i] = MaybeUninit::new(mask(relu, y[i], dy[i]));
            }
        }
    }
}

/// Two `L`-element chunks.
type Lanes2<'a> = (&'a [f32; L], &'a [f32; L]);

/// Splits two equal-length slices into `L`-element arrays plus the tails.
#[inline(always)]
fn lanes2<'a>(
    x: &'a [f32],
    y: &'a [f32],
) -> (impl Iterator<Item = Lanes2<'a>>, (&'a [f32], &'a [f32])) {
    let n = x.len();
    let y = &y[..n];
    let full = n / L * L;
    let it = x[..full]
        .chunks_exact(L)
        .zip(y[..full].chunks_exact(L))
        .map(|(a, b)| {
            let a: &[f32; L] = a.try_into().expect("chunk of L");
            let b: &[f32; L] = b.try_into().expect("chunk of L");
            (a, b)
        });
    (it, (&x[full..], &y[full..]))
}

/// `dy` where the ReLU of `x * a + b` passed it: the forward output was
/// `y = max(x * a + b, 0)` ([`affine_plane`] without a residual, the same
/// two roundings), so this is [`mask`]`(true, y, dy)` without reading `y`.
#[inline(always)]
fn mask_recomputed(x: f32, a: f32, b: f32, d: f32) -> f32 {
    if x * a + b > 0.0 {
        d
    } else {
        0.0
    }
}

dispatch! {
    /// [`masked_sums`] with a ReLU whose mask is recomputed from the batch
    /// norm's input and affine coefficients (see [`mask_recomputed`]): the
    /// same lanes in the same order, so the same bits.
    fn masked_sums_recomputed(x: &[f32], dy: &[f32], mean: f32, a: f32, b: f32) -> (f64, f64) {
        let mut sa = [0f32; L];
        let mut sb = [0f32; L];
        let (body, (xt, dt)) = lanes2(x, dy);
        for (xc, dc) in body {
            for l in 0..L {
                let d = mask_recomputed(xc[l], a, b, dc[l]);
                sa[l] += d;
                sb[l] += d * (xc[l] - mean);
            }
        }
        for l in 0..xt.len() {
            let d = mask_recomputed(xt[l], a, b, dt[l]);
            sa[l] += d;
            sb[l] += d * (xt[l] - mean);
        }
        (fold(&sa), fold(&sb))
    }
}

dispatch! {
    /// [`bn_dx_plane`] with a ReLU whose mask is recomputed as in
    /// [`masked_sums_recomputed`] (no `dz`).
    fn bn_dx_plane_recomputed(
        x: &[f32],
        dy: &[f32],
        k: (f32, f32, f32),
        affine: (f32, f32),
        dx: &mut [MaybeUninit<f32>],
    ) {
        let n = dx.len();
        let (x, dy) = (&x[..n], &dy[..n]);
        let (k1, k2, k3) = k;
        let (a, b) = affine;
        for i in 0..n {
            dx[i] = MaybeUninit::new(mask_recomputed(x[i], a, b, dy[i]) * k1 + x[i] * k2 + k3);
        }
    }
}

dispatch! {
    /// `(sum(d * x), sum(d))` and `dx = d * a`, `d` as in [`masked_sums`].
    fn affine_bwd_plane(x: &[f32], y: &[f32], dy: &[f32], a: f32, relu: bool, dx: &mut [f32]) -> (f64, f64) {
        let n = dx.len();
        let mut sx = [0f32; L];
        let mut s = [0f32; L];
        let (body, (xt, yt, dt)) = lanes3(&x[..n], y, dy);
        let (dx_body, dx_tail) = dx.split_at_mut(n / L * L);
        for ((xc, yc, dc), o) in body.zip(dx_body.chunks_exact_mut(L)) {
            for l in 0..L {
                let d = mask(relu, yc[l], dc[l]);
                sx[l] += d * xc[l];
                s[l] += d;
                o[l] = d * a;
            }
        }
        for l in 0..xt.len() {
            let d = mask(relu, yt[l], dt[l]);
            sx[l] += d * xt[l];
            s[l] += d;
            dx_tail[l] = d * a;
        }
        (fold(&sx), fold(&s))
    }
}

dispatch! {
    /// `out = max(a + b, 0)`.
    fn add_relu(a: &[f32], b: &[f32], out: &mut [f32]) {
        let n = out.len();
        let (a, b) = (&a[..n], &b[..n]);
        for i in 0..n {
            out[i] = (a[i] + b[i]).max(0.0);
        }
    }
}

dispatch! {
    /// `plane = max?(plane + b (+ r), 0)` in place: the epilogue of a
    /// convolution with its batch norm folded in (the sums in this order).
    fn bias_plane(plane: &mut [f32], b: f32, r: Option<&[f32]>, relu: bool) {
        let n = plane.len();
        match (r, relu) {
            (None, false) => {
                for v in plane.iter_mut() {
                    *v += b;
                }
            }
            (None, true) => {
                for v in plane.iter_mut() {
                    *v = (*v + b).max(0.0);
                }
            }
            (Some(r), false) => {
                let r = &r[..n];
                for i in 0..n {
                    plane[i] = plane[i] + b + r[i];
                }
            }
            (Some(r), true) => {
                let r = &r[..n];
                for i in 0..n {
                    plane[i] = (plane[i] + b + r[i]).max(0.0);
                }
            }
        }
    }
}

dispatch! {
    /// `out = dy * (y > 0)`.
    fn relu_mask(y: &[f32], dy: &[f32], out: &mut [f32]) {
        let n = out.len();
        let (y, dy) = (&y[..n], &dy[..n]);
        for i in 0..n {
            out[i] = mask(true, y[i], dy[i]);
        }
    }
}

dispatch! {
    /// `out += v`.
    fn add_assign(out: &mut [f32], v: &[f32]) {
        let n = out.len();
        let v = &v[..n];
        for i in 0..n {
            out[i] += v[i];
        }
    }
}

dispatch! {
    /// `out = a + b`.
    fn add_into(a: &[f32], b: &[f32], out: &mut [f32]) {
        let n = out.len();
        let (a, b) = (&a[..n], &b[..n]);
        for i in 0..n {
            out[i] = a[i] + b[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_sums_are_exact_on_integers() {
        let v: Vec<f32> = (0..10_001).map(|i| (i % 7) as f32).collect();
        let (s, s2) = shifted_sums(&v, 3.0);
        let want: f64 = v.iter().map(|&x| f64::from(x) - 3.0).sum();
        let want2: f64 = v.iter().map(|&x| (f64::from(x) - 3.0).powi(2)).sum();
        assert_eq!((s, s2), (want, want2));
    }

    #[test]
    fn masked_sums_skip_non_positive_outputs() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [1.0, 0.0, -1.0, 2.0, 0.5];
        let dy = [1.0, 10.0, 100.0, 2.0, 3.0];
        assert_eq!(masked_sums(&x, &y, &dy, 1.0, true), (6.0, 6.0 + 12.0));
        assert_eq!(masked_sums(&x, &y, &dy, 0.0, false).0, 116.0);
    }

    #[test]
    fn masks_recomputed_from_the_input_give_the_bits_of_the_output_masks() {
        // Inputs around the ReLU's edge: `x * a + b` exactly zero, just
        // either side of it, negative zero, NaN; plus a tail past the lanes.
        let (a, b) = (0.5f32, -1.25f32);
        // `edge * a + b` is exactly zero.
        let edge = 2.5f32;
        let mut x: Vec<f32> = (0..3 * L + 5)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.41)
            .collect();
        x[..6].copy_from_slice(&[
            edge,
            f32::from_bits(edge.to_bits() + 1),
            f32::from_bits(edge.to_bits() - 1),
            edge,
            f32::NAN,
            -0.0,
        ]);
        let dy: Vec<f32> = (0..x.len())
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.7)
            .collect();
        let mut y = vec![MaybeUninit::new(0f32); x.len()];
        affine_plane(&x, None, a, b, true, &mut y);
        // SAFETY: initialised above, and `affine_plane` writes every element.
        let y: Vec<f32> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
        let passed = x.iter().zip(&y).filter(|(_, &y)| y > 0.0).count();
        assert!(passed > 0 && passed < x.len(), "both sides of the edge");
        let (s, sx) = masked_sums(&x, &y, &dy, 0.3, true);
        let (r, rx) = masked_sums_recomputed(&x, &dy, 0.3, a, b);
        assert_eq!((s.to_bits(), sx.to_bits()), (r.to_bits(), rx.to_bits()));
        let k = (0.9, -0.02, 0.11);
        let mut want = vec![MaybeUninit::new(0f32); x.len()];
        let mut got = vec![MaybeUninit::new(0f32); x.len()];
        bn_dx_plane(&x, &y, &dy, k, true, &mut want, None);
        bn_dx_plane_recomputed(&x, &dy, k, (a, b), &mut got);
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            // SAFETY: initialised when made, and both functions write every
            // element.
            v.iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
    }
}
