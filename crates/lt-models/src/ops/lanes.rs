//! The lane accumulators of the weight-gradient tile ([`super::direct`]'s
//! `wtile`): each worker sums its share of the images into 16 partial sums
//! per weight (per transformed weight on the Winograd paths), and the plan
//! folds the 16 lanes into one weight at the end (`finish`).
//!
//! The accumulator is the largest buffer of a weight gradient (4 MB per
//! worker for a 64x64-channel F(2x2, 3x3) layer, more than the core's L2),
//! and three whole passes over it were not products: the zero fill before
//! the first call, adding the second worker's copy into the first's, and
//! reading the sum again in `finish`. Here the first call of the tile
//! stores `0 + acc` where the later ones add `out + acc` (the same bits as
//! adding into zeros, signed zeros included), and the workers' copies are
//! added lane by lane as `finish` reads them, in the order a halving
//! reduction over the workers adds them (`rayon`'s `reduce_with` over the
//! parts, which the sum was before: bit for bit the same weights).

use std::mem::MaybeUninit;

/// One worker's accumulator, uninitialised until its first update.
#[derive(Debug)]
pub(super) struct Lanes {
    buf: Vec<f32>,
    len: usize,
}

impl Lanes {
    pub fn new(len: usize) -> Self {
        Self {
            buf: Vec::with_capacity(len),
            len,
        }
    }

    /// Floats held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Runs `f(out, init)` on the accumulator, `init` set on the first call:
    /// that call must write every element (`0 + sum`), later ones add.
    ///
    /// # Safety
    /// When `init` is set, `f` must initialise every element of `out` (or
    /// panic).
    pub unsafe fn update(&mut self, f: impl FnOnce(&mut [MaybeUninit<f32>], bool)) {
        let init = self.buf.is_empty() && self.len > 0;
        if init {
            f(&mut self.buf.spare_capacity_mut()[..self.len], true);
            // SAFETY: `f` initialised every element, by the caller's
            // contract (a panic unwinds before this line).
            unsafe { self.buf.set_len(self.len) };
        } else {
            f(super::cpu::as_uninit(&mut self.buf), false);
        }
    }

    /// The sums; zeros where nothing was added.
    pub fn into_vec(mut self) -> Vec<f32> {
        if self.buf.is_empty() {
            self.buf.resize(self.len, 0.0);
        }
        self.buf
    }
}

/// The workers' accumulators, in worker order; read through
/// [`PartLanes::sum_into`], which adds them.
#[derive(Debug)]
pub(super) struct PartLanes {
    parts: Vec<Vec<f32>>,
}

impl PartLanes {
    pub fn new(parts: Vec<Vec<f32>>) -> Self {
        assert!(
            !parts.is_empty() && parts.iter().all(|p| p.len() == parts[0].len()),
            "lane accumulators: one or more workers, all of one length"
        );
        Self { parts }
    }

    /// The lanes `at`, summed over the workers into `out` (as long as
    /// `at`): halves of the worker list summed first and then added, left
    /// plus right, down to single workers (two workers: `a + b`). Meant for
    /// a few kilobytes at a time, still in cache when `finish` folds them.
    pub fn sum_into(&self, at: std::ops::Range<usize>, out: &mut [f32]) {
        fn sum(parts: &[Vec<f32>], at: std::ops::Range<usize>, out: &mut [f32]) {
            match parts {
                [one] => out.copy_from_slice(&one[at]),
                [a, b] => super::simd::add_into(&a[at.clone()], &b[at], out),
                _ => {
                    let (left, right) = parts.split_at(parts.len() / 2);
                    let mut r = vec![0f32; out.len()];
                    sum(left, at.clone(), out);
                    sum(right, at, &mut r);
                    super::simd::add_assign(out, &r);
                }
            }
        }
        assert_eq!(at.len(), out.len(), "lane accumulators: lengths differ");
        sum(&self.parts, at, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct::V;
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn first_update_stores_and_later_ones_see_the_sum() {
        let mut lanes = Lanes::new(3);
        // SAFETY: the first call writes all three elements.
        unsafe {
            lanes.update(|out, init| {
                assert!(init);
                for (o, v) in out.iter_mut().zip([1.0, -0.0, 2.0]) {
                    o.write(0.0 + v);
                }
            });
            lanes.update(|out, init| {
                assert!(!init);
                // SAFETY: initialised by the first call.
                let out = super::super::cpu::assume_init(out);
                out[2] += 1.0;
            });
        }
        let v = lanes.into_vec();
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            [1f32, 0.0, 3.0].map(f32::to_bits)
        );
        assert_eq!(Lanes::new(2).into_vec(), [0.0, 0.0]);
    }

    #[test]
    fn workers_are_added_as_a_reduction_over_them_would() {
        // Values whose f32 sums depend on the order of addition.
        for workers in 1..=7 {
            let parts: Vec<Vec<f32>> = (0..workers)
                .map(|w| {
                    (0..2 * V)
                        .map(|i| ((w * 31 + i * 7) % 13) as f32 * 1e7 + (w + i) as f32 * 0.37)
                        .collect()
                })
                .collect();
            // One thread per worker, as where the weight gradients run
            // (`parts` is at most the pool's threads).
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .build()
                .unwrap();
            let want = pool.install(|| {
                parts
                    .clone()
                    .into_par_iter()
                    .reduce_with(|mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    })
                    .unwrap()
            });
            let lanes = PartLanes::new(parts);
            let mut got = vec![0f32; 2 * V];
            lanes.sum_into(0..2 * V, &mut got);
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{workers} workers"
            );
        }
    }
}
