//! Transparent huge pages for the large blocks: [`HugePageAlloc`], a
//! global allocator for binaries that run the kernels.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The size of a transparent huge page on x86-64 (and on aarch64 with
/// 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// How far beyond each request glibc grows the heap once the allocator is
/// in use (`M_TOP_PAD`; glibc's default is 128 KiB). Growth is advised
/// right after the call that caused it, but glibc has by then written the
/// headers at both ends of the block it carved, so the huge pages around
/// them stay in 4 KiB pieces: growing in large steps makes those few.
/// Untouched, the padding costs address space only (the heap is never
/// trimmed: see [`super::retain_freed_memory`]).
const TOP_PAD: usize = 256 << 20;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// The program break up to which the heap has been advised; 0 until the
/// first large block.
static ADVISED_BRK: AtomicUsize = AtomicUsize::new(0);
/// The program break at the first large block: the heap below it was
/// never advised.
static HEAP_FLOOR: AtomicUsize = AtomicUsize::new(0);

/// Whether [`HugePageAlloc`] advises the memory it hands out (the default).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns [`HugePageAlloc`]'s advice on or off for what it allocates from
/// now on, for A/B measurements (memory already advised keeps it). The
/// heap's padding is set at the first large block allocated while on, so
/// a binary that turns the advice off before its first large block runs
/// on the system allocator's defaults throughout.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The system allocator, with the memory behind large blocks advised as
/// transparent huge pages.
///
/// The kernels stream whole activations (8 MB per layer for the CIFAR
/// ResNet-32 at batch 128, 50 MB and more at 224²) through several rows of
/// tiles at once; with 4 KiB pages a step spends part of its time on TLB
/// misses. Where the kernel's transparent huge pages are set to `madvise`
/// (a common default), memory advised with `madvise(MADV_HUGEPAGE)` gets
/// 2 MiB pages at its first touch. glibc advises its heap itself under
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, a tunable a program cannot set
/// for itself once started; this allocator forwards every call to
/// [`System`] and, from the first block of
/// [`MIN_BLOCK`](HugePageAlloc::MIN_BLOCK) bytes on,
///
/// * grows glibc's heap in steps of at least 256 MiB (`M_TOP_PAD`) and
///   advises every step right after the call that made it, before the
///   caller sees the memory (the heap holds the kernels' blocks: they
///   switch glibc's `mmap` off, see [`super::retain_freed_memory`]);
/// * advises the whole huge pages inside every large block outside that
///   heap (a worker thread's arena, say).
///
/// The advice changes no value anywhere, only the size of the pages
/// behind them; memory touched before it keeps 4 KiB pages.
/// [`set_huge_pages`](super::set_huge_pages) turns it off for an A/B. Off
/// Linux with glibc the heap is left alone, and where the kernel has no
/// transparent huge pages the advice fails and is ignored: the allocator
/// is then the system one.
///
/// ```
/// use lt_models::ops::HugePageAlloc;
///
/// #[global_allocator]
/// static ALLOC: HugePageAlloc = HugePageAlloc;
///
/// fn main() {
///     // A 16 MiB activation: the 2 MiB pages behind it are advised.
///     let activation = vec![1.0f32; 4 << 20];
///     assert_eq!(activation.iter().sum::<f32>(), (4 << 20) as f32);
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePageAlloc;

impl HugePageAlloc {
    /// The smallest block that starts the advice, and the smallest block
    /// outside the heap advised: one that holds a whole 2 MiB page
    /// wherever it starts.
    pub const MIN_BLOCK: usize = 4 << 20;

    /// Before a block of `size` bytes is allocated: at the first large one
    /// (while enabled), the heap's padding and where its advice starts.
    fn before(size: usize) {
        if size >= Self::MIN_BLOCK && ADVISED_BRK.load(Ordering::Relaxed) == 0 && enabled() {
            start_heap_advice();
        }
    }

    /// After a block of `size` bytes was allocated at `p`: the heap's
    /// growth, and the block itself where it is large and outside the
    /// advised heap. Small blocks check the growth too: one of them can
    /// grow the heap, and the padding it leaves untouched is then advised
    /// before a later call carves from it (the check is an `sbrk(0)`, a
    /// read of glibc's record of the break, and two atomic loads).
    fn after(p: *mut u8, size: usize) {
        if p.is_null() || !enabled() {
            return;
        }
        let brk = advise_heap_growth();
        let (p, floor) = (p as usize, HEAP_FLOOR.load(Ordering::Relaxed));
        if size < Self::MIN_BLOCK || (floor != 0 && p >= floor && p + size <= brk) {
            return;
        }
        let start = p.next_multiple_of(HUGE_PAGE);
        let end = (p + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            advise_huge(start, end - start);
        }
    }
}

/// The current program break.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn program_break() -> usize {
    // SAFETY: `sbrk(0)` returns glibc's record of the break and changes
    // nothing. Another thread growing the heap at the same moment may make
    // it stale: that growth is then advised by the next call.
    unsafe { libc::sbrk(0) as usize }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_heap_advice() {
    let brk = program_break();
    if ADVISED_BRK
        .compare_exchange(0, brk, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        HEAP_FLOOR.store(brk, Ordering::Relaxed);
        // SAFETY: `mallopt` only updates an allocator parameter, under the
        // allocator's own lock; the value is valid.
        unsafe { libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int) };
    }
}

/// Advises what the heap grew by since the last call (once the advice has
/// started); returns the break up to which the heap is advised (0 before).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn advise_heap_growth() -> usize {
    let prev = ADVISED_BRK.load(Ordering::Relaxed);
    if prev == 0 {
        return 0;
    }
    let brk = program_break();
    if brk <= prev
        || ADVISED_BRK
            .compare_exchange(prev, brk, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return prev;
    }
    let start = prev.next_multiple_of(HUGE_PAGE);
    let end = brk / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        advise_huge(start, end - start);
    }
    brk
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_heap_advice() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn advise_heap_growth() -> usize {
    0
}

#[cfg(target_os = "linux")]
fn advise_huge(start: usize, len: usize) {
    // SAFETY: `[start, start + len)` lies inside the heap or a block the
    // system allocator just handed out; the advice changes the size of the
    // pages behind it, never its contents or its mapping. A failure (no
    // transparent huge pages) is ignored: the advice is optional.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_start: usize, _len: usize) {}

// SAFETY: every call is forwarded unchanged to `System`; neither the heap's
// padding nor the advice changes the returned memory or its ownership.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::before(layout.size());
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        Self::after(p, layout.size());
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::before(layout.size());
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        Self::after(p, layout.size());
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::before(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        Self::after(p, new_size);
        p
    }
}
