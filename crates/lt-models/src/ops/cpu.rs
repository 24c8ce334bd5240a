//! Helpers shared by the CPU kernels: storage access, work splitting and a
//! bounds-checked front end to the `gemm` crate.

use candle_core::{bail, CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The contiguous `f32` data behind `storage` as seen through `layout`.
///
/// The entry points in `ops` make every operand contiguous before applying a
/// custom op, so a strided layout here is a bug, reported rather than handled.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d.as_slice(),
        _ => bail!("{op}: expected f32 storage"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{op}: operand with shape {:?} is not contiguous",
            layout.shape()
        ),
    }
}

/// Asks the C allocator to keep freed memory for reuse instead of returning
/// it to the operating system (glibc only; a no-op returning `false`
/// elsewhere). See [`super::retain_freed_memory`].
pub(crate) fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // glibc's <malloc.h> values.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        const M_MMAP_MAX: c_int = -4;
        // The largest mmap threshold glibc accepts on 64-bit targets (32 MiB):
        // blocks below it come from the heap and are recycled.
        const MMAP_THRESHOLD_MAX: c_int = 32 << 20;
        // SAFETY: `mallopt` only updates allocator parameters under the
        // allocator's own lock; every parameter and value is valid.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
                // Blocks above the threshold too: at 224² an activation of
                // batch 16 is 51 MB, and with fresh mmaps every ResNet-50
                // step paid about 250,000 page faults. (Worker threads' arenas still map blocks
                // larger than their 64 MB heaps; the kernels allocate
                // their outputs on the calling thread.)
                && mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Applies [`retain_freed_memory`] once per process.
pub(crate) fn retain_freed_memory_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        retain_freed_memory();
    });
}

thread_local! {
    /// The buffer the last [`Scratch`] on this thread left behind.
    static SPARE_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A kernel's scratch floats, holding whatever an earlier kernel on the
/// same thread left there (zeros where the buffer had to grow): for
/// kernels whose scratch "may hold anything". The buffer goes back to the
/// thread when this is dropped, so that each rayon job of every
/// convolution does not allocate and zero its own (a Winograd forward
/// job's scratch is about 300 KB: zeroing them, and the weight gradients'
/// per worker, took `memset` from 1.0 to 2.8 % of a CIFAR ResNet-32
/// step's profile samples, though the step's speed alone stays within
/// noise). Each thread keeps the largest buffer it was asked for.
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// At least `len` floats.
    pub(crate) fn take(len: usize) -> Self {
        let mut buf = SPARE_SCRATCH.with(std::cell::Cell::take);
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // A job that stole another while it held its scratch took an empty
        // one: the larger buffer stays.
        let _ = SPARE_SCRATCH.try_with(|spare| {
            let other = spare.take();
            spare.set(if other.len() > buf.len() { other } else { buf });
        });
    }
}

/// `f` on a worker of the current rayon pool, inline on one already
/// (see [`super::on_worker`]).
pub(crate) fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // `join` from outside the pool queues both closures as one job for a
    // worker and blocks the caller until it is done.
    rayon::join(f, || ()).0
}

/// Number of worker threads of the current rayon pool.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Views an initialised `MaybeUninit` chunk as plain floats.
///
/// # Safety
/// Every element of `c` must have been initialised.
pub(crate) unsafe fn assume_init(c: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller
    // guarantees every element is initialised.
    unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Builds a vector of `len` floats in parallel: chunk `i` (`chunk` floats,
/// the last one shorter) is zero-filled by a rayon worker and handed at once,
/// still in that worker's cache, to `f(&mut state, i, chunk)`, with one
/// `state` from `init` per rayon job.
///
/// `vec![0.0; len]` on the calling thread would zero every output serially
/// before the parallel kernel overwrites it: with large activations that
/// was a tenth of a training step, all of it on one core.
pub(crate) fn par_zeroed_init<S, I, F>(len: usize, chunk: usize, init: I, f: F) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [f32]) + Sync + Send,
{
    // SAFETY: every chunk is initialised (zeroed) before `f` sees it.
    unsafe {
        par_written_init(len, chunk, init, |state, i, c| {
            c.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `c` was initialised just above.
            f(state, i, assume_init(c));
        })
    }
}

/// Like [`par_zeroed_init`], without the zero fill: for kernels that write
/// every output themselves, the fill was a full extra pass over the output
/// (a memset as large as every activation, 2-3 % of a training step).
///
/// # Safety
/// `f` must initialise every element of every chunk it is given (or
/// panic): the vector's elements are taken as initialised afterwards.
pub(crate) unsafe fn par_written_init<S, I, F>(len: usize, chunk: usize, init: I, f: F) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let grain = (16 * 1024 / chunk.max(1)).max(1);
    // SAFETY: forwarded, the caller's contract.
    unsafe { par_written_init_grain(len, chunk, grain, init, f) }
}

/// [`par_zeroed_init`] for chunks that are each a lot of work, not in
/// proportion to their length: every chunk may be a job of its own. (The
/// output-length grain of [`par_zeroed_init`], 16 K floats per job, made
/// the fold of a 16- or 32-channel layer's weight gradient, which reads
/// `36 x 16` lanes per worker for each weight it writes, one job, run on
/// the calling thread while the workers waited.)
pub(crate) fn par_zeroed_init_per_chunk<S, I, F>(
    len: usize,
    chunk: usize,
    init: I,
    f: F,
) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [f32]) + Sync + Send,
{
    // SAFETY: every chunk is initialised (zeroed) before `f` sees it.
    unsafe {
        par_written_init_grain(len, chunk, 1, init, |state, i, c| {
            c.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `c` was initialised just above.
            f(state, i, assume_init(c));
        })
    }
}

/// [`par_written_init`] with `grain` chunks at least per rayon job.
///
/// # Safety
/// As [`par_written_init`].
unsafe fn par_written_init_grain<S, I, F>(
    len: usize,
    chunk: usize,
    grain: usize,
    init: I,
    f: F,
) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let mut v: Vec<f32> = Vec::with_capacity(len);
    if len > 0 {
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .with_min_len(grain)
            .for_each_init(init, |state, (i, c)| f(state, i, c));
    }
    // SAFETY: the chunks cover `0..len` exactly and `f` initialised each,
    // by the caller's contract (a panic unwinds before this line and drops
    // `v` empty).
    unsafe { v.set_len(len) };
    v
}

/// `dst` viewed as possibly uninitialised: writing initialised values
/// through the view keeps it initialised.
pub(crate) fn as_uninit(dst: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and every value
    // written through a `&mut [MaybeUninit<f32>]` made from initialised
    // floats is an initialised float again.
    unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `dst.copy_from_slice(src)` into possibly uninitialised memory.
pub(crate) fn write_floats(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_floats: lengths differ");
    // SAFETY: both slices hold `src.len()` elements of the same layout and
    // cannot overlap (one is borrowed mutably).
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<f32>(), src.len())
    };
}

/// [`par_zeroed_init`] without per-job state.
pub(crate) fn par_zeroed<F>(len: usize, chunk: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    par_zeroed_init(len, chunk, || (), |_, i, c| f(i, c))
}

/// Two vectors of `len` floats built chunk by chunk like
/// [`par_written_init`], without a zero fill.
///
/// # Safety
/// `f` must initialise every element of both chunks it is given (or
/// panic).
pub(crate) unsafe fn par_written2<F>(len: usize, chunk: usize, f: F) -> (Vec<f32>, Vec<f32>)
where
    F: Fn(usize, &mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let mut a: Vec<f32> = Vec::with_capacity(len);
    let mut b: Vec<f32> = Vec::with_capacity(len);
    if len > 0 {
        let grain = (16 * 1024 / chunk.max(1)).max(1);
        a.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk.max(1))
            .zip(b.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)))
            .enumerate()
            .with_min_len(grain)
            .for_each(|(i, (ca, cb))| f(i, ca, cb));
    }
    // SAFETY: as in `par_written_init`, for both vectors: `f` initialised
    // every chunk, by the caller's contract.
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

/// Splits `0..len` into `parts` contiguous ranges of nearly equal size.
pub(crate) fn split_range(len: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let base = len / parts;
    let extra = len % parts;
    let start = part * base + part.min(extra);
    let end = start + base + usize::from(part < extra);
    start..end
}

/// A read-only matrix view into a slice with explicit row and column strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// A writable matrix view, see [`Mat`].
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Largest offset touched by a `rows x cols` view with these strides.
fn last_offset(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs
}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)`, or `dst += ...` when
/// `accumulate` is true.
///
/// The `gemm` crate's micro-kernel reads the `m` side of `lhs` and the `k`
/// side of `rhs` contiguously once it has oriented the product along a
/// column-major `dst`; operands with other layouts are repacked on every
/// call, which for large operands costs as much as the product. Callers pick
/// the orientation accordingly (see the weight gradient).
///
/// Every view is checked to lie inside its slice, so the call is safe for any
/// arguments; an out-of-bounds view panics, which would be a kernel bug.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut<'_>,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst.data[r * dst.rs + c * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(
        last_offset(m, n, dst.rs, dst.cs) < dst.data.len(),
        "sgemm: dst view out of bounds"
    );
    assert!(
        last_offset(m, k, lhs.rs, lhs.cs) < lhs.data.len(),
        "sgemm: lhs view out of bounds"
    );
    assert!(
        last_offset(k, n, rhs.rs, rhs.cs) < rhs.data.len(),
        "sgemm: rhs view out of bounds"
    );
    // SAFETY: the three views were checked above to lie inside their slices;
    // `dst` is borrowed mutably, so it aliases neither `lhs` nor `rhs`. The
    // strides fit in `isize` because the offsets they produce are in-bounds
    // indices of live slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Deterministic test values in `[-1, 1]`, different per `seed`.
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch buffer is handed back to its thread and reused (its
    /// contents as the last user left them); one taken while another is
    /// held is a separate buffer; the larger of the two stays.
    #[test]
    fn scratch_is_reused_per_thread() {
        std::thread::spawn(|| {
            let mut a = Scratch::take(4);
            assert_eq!(&*a, &[0.0; 4]);
            a.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
            let ptr = a.as_ptr();
            drop(a);
            let b = Scratch::take(3);
            assert_eq!((b.as_ptr(), &*b), (ptr, &[1.0, 2.0, 3.0][..]));
            let c = Scratch::take(8);
            assert_ne!(c.as_ptr(), ptr);
            assert_eq!(&*c, &[0.0; 8]);
            drop(b);
            drop(c);
            let d = Scratch::take(2);
            assert_eq!(d.buf.len(), 8, "the larger buffer stays");
        })
        .join()
        .unwrap();
    }

    /// From a thread outside the pool, `f` runs on one of the pool's
    /// workers and its result comes back; from a worker, it runs inline on
    /// that worker; a panic in `f` reaches the caller.
    #[test]
    fn on_worker_runs_on_the_pool() {
        std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            let caller = std::thread::current().id();
            let (index, id) =
                on_worker(|| (rayon::current_thread_index(), std::thread::current().id()));
            assert!(index.is_some(), "not on a worker");
            assert_ne!(id, caller);
            let (outer, inner) = on_worker(|| {
                let outer = (rayon::current_thread_index(), std::thread::current().id());
                (
                    outer,
                    on_worker(|| (rayon::current_thread_index(), std::thread::current().id())),
                )
            });
            assert_eq!(outer, inner, "a worker runs `f` itself");
            let panicked = std::panic::catch_unwind(|| on_worker(|| panic!("inside")));
            assert!(panicked.is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn par_zeroed_visits_every_chunk_once_zeroed() {
        let v = par_zeroed(1000, 7, |i, c| {
            assert!(c.iter().all(|&x| x == 0.0));
            c.iter_mut().for_each(|x| *x = i as f32);
        });
        assert_eq!(v.len(), 1000);
        assert!(v.iter().enumerate().all(|(j, &x)| x == (j / 7) as f32));
        // SAFETY: both chunks are filled.
        let (a, b) = unsafe {
            par_written2(10, 4, |i, a, b| {
                a.fill(MaybeUninit::new(i as f32));
                b.fill(MaybeUninit::new(-(i as f32)));
            })
        };
        assert_eq!(a, [0., 0., 0., 0., 1., 1., 1., 1., 2., 2.]);
        assert_eq!(b, [0., 0., 0., 0., -1., -1., -1., -1., -2., -2.]);
        assert!(par_zeroed(0, 4, |_, _| unreachable!()).is_empty());
    }

    #[test]
    fn split_range_covers_everything_once() {
        for len in 0..20 {
            for parts in 1..6 {
                let mut next = 0;
                for p in 0..parts {
                    let r = split_range(len, parts, p);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= len / parts + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn sgemm_matches_naive_product_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        // lhs row-major, rhs given transposed (column-major view).
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![1.0f32; m * n];
        sgemm(
            m,
            n,
            k,
            MatMut {
                data: &mut c,
                rs: n,
                cs: 1,
            },
            true,
            Mat {
                data: &a,
                rs: k,
                cs: 1,
            },
            Mat {
                data: &bt,
                rs: 1,
                cs: k,
            },
            gemm::Parallelism::None,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
