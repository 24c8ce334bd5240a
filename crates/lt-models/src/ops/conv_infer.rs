//! Convolution with a per-channel bias and a fused epilogue, forward only:
//! the layer of an inference network whose eval-mode batch norm was folded
//! into the convolution (see [`crate::backbone::Inference`]).
//!
//! The bias, the residual and the ReLU are applied in place on the
//! convolution's output, one image at a time in parallel, so the layer writes
//! one activation instead of three (convolution, batch-norm affine map,
//! residual add + ReLU) and allocates one.

use super::conv::{conv_fwd_then, ConvGeom};
use super::cpu::f32_slice;
use super::simd;
use super::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// `(x, w, bias) -> act(conv(x, w) + bias[c] (+ residual))`. The residual
/// is held by the op (a `CustomOp3` has three operands) and read from its
/// storage. No backward pass: inference only.
#[derive(Debug)]
pub(crate) struct ConvBiasOp {
    pub params: Conv2dParams,
    pub relu: bool,
    /// Contiguous, on the CPU, f32.
    pub residual: Option<Tensor>,
}

impl CustomOp3 for ConvBiasOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-bias"
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
        const OP: &str = "conv2d_bias";
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.params)?;
        let co = g.c_out;
        let (x, w, bias) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        if bias.len() != co {
            bail!("{OP}: {} biases for {co} output channels", bias.len());
        }
        let guard = match &self.residual {
            Some(r) => {
                if r.dims() != g.out_shape().dims() {
                    bail!(
                        "{OP}: residual {:?} does not match output {:?}",
                        r.dims(),
                        g.out_shape()
                    );
                }
                Some(r.storage_and_layout())
            }
            None => None,
        };
        let residual = match &guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(s) => Some(f32_slice(s, layout, OP)?),
                _ => bail!("{OP}: the residual is not on the CPU"),
            },
            None => None,
        };
        // The epilogue runs on each job's images as soon as the kernel has
        // written them (still in cache), not as a second pass over `y`.
        let (ohw, relu) = (g.oh * g.ow, self.relu);
        let per_image = co * ohw;
        let y = conv_fwd_then(&g, x, w, |first, ys| {
            if ohw == 0 {
                return;
            }
            for (j, yi) in ys.chunks_exact_mut(per_image).enumerate() {
                let i = first + j;
                for (ch, plane) in yi.chunks_exact_mut(ohw).enumerate() {
                    let start = i * per_image + ch * ohw;
                    let r = residual.map(|r| &r[start..start + ohw]);
                    simd::bias_plane(plane, bias[ch], r, relu);
                }
            }
        });
        Ok((CpuStorage::F32(y), g.out_shape()))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::cpu::test_data as data;
    use crate::ops::{conv2d, conv2d_bias, Conv2dParams, Epilogue};
    use candle_core::{Device, Tensor};

    fn tensor(dims: &[usize], seed: usize) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(data(n, seed), dims, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The epilogue applied inside the convolution's jobs gives the bits of
    /// the convolution followed by `+ bias`, `+ residual` and the ReLU as
    /// separate ops, on every kernel path: Winograd F(4x4, 3x3) (one image
    /// per job at 32x32; groups of images at 8x8, the last group short),
    /// F(2x2, 3x3), stride 2 (im2col + gemm) and 1x1.
    #[test]
    fn the_in_job_epilogue_matches_separate_ops_bit_for_bit() {
        let cases: [(usize, usize, usize, usize, usize); 5] = [
            // (images, channels in, size, channels out, kernel / stride code)
            (3, 16, 32, 16, 3),
            (7, 64, 8, 64, 3),
            (2, 8, 6, 8, 3),
            (3, 16, 16, 32, 32),
            (3, 16, 8, 24, 1),
        ];
        for (seed, &(n, ci, s, co, k)) in cases.iter().enumerate() {
            let (kernel, stride) = if k == 32 { (3, 2) } else { (k, 1) };
            let p = Conv2dParams {
                stride,
                padding: kernel / 2,
                groups: 1,
            };
            let x = tensor(&[n, ci, s, s], 3 * seed + 1);
            let w = (tensor(&[co, ci, kernel, kernel], 3 * seed + 2) * 0.2).unwrap();
            let b = tensor(&[co], 3 * seed + 3);
            let y = conv2d(&x, &w, p).unwrap();
            let biased = y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let r = tensor(y.dims(), 3 * seed + 4);
            let want = [
                biased.clone(),
                biased.relu().unwrap(),
                (&biased + &r).unwrap().relu().unwrap(),
            ];
            let epilogues = [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu(&r)];
            for (e, want) in epilogues.into_iter().zip(&want) {
                let got = conv2d_bias(&x, &w, &b, p, e).unwrap();
                assert_eq!(bits(&got), bits(want), "case {seed}");
            }
        }
    }
}
