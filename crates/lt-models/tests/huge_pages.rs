//! `HugePageAlloc` as a binary uses it: the global allocator of a program
//! whose main thread allocates the large blocks (no test harness, so that
//! this `main` is the process's main thread and its blocks come from
//! glibc's heap, as `lt-cli`'s do).
//!
//! Checks, through the `hg` flag (`VM_HUGEPAGE`) of `/proc/self/smaps`,
//! that the advice is not given while turned off, that the first large
//! block starts it (the block and the heap grown for it, up to the break),
//! and that a worker thread's large block, outside the heap, is advised
//! in place. Skips, saying why, off Linux with glibc, where the kernel has
//! no transparent huge pages, or where `madvise(MADV_HUGEPAGE)` on a block
//! advised by hand fails or does not show in `/proc/self/smaps`.

use lt_models::ops::HugePageAlloc;

#[global_allocator]
static ALLOC: HugePageAlloc = HugePageAlloc;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use lt_models::ops;

    const HUGE_PAGE: usize = 2 << 20;

    /// A mapping of `/proc/self/smaps`: its range and `VmFlags`.
    struct Mapping {
        start: usize,
        end: usize,
        name: String,
        flags: Vec<String>,
    }

    fn mappings() -> Vec<Mapping> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut out: Vec<Mapping> = Vec::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    let name = fields.nth(4).unwrap_or("").to_string();
                    out.push(Mapping {
                        start,
                        end,
                        name,
                        flags: Vec::new(),
                    });
                    continue;
                }
            }
            if let (Some(flags), Some(m)) = (line.strip_prefix("VmFlags:"), out.last_mut()) {
                m.flags = flags.split_whitespace().map(str::to_string).collect();
            }
        }
        out
    }

    fn advised(addr: usize) -> bool {
        let maps = mappings();
        let m = maps
            .iter()
            .find(|m| (m.start..m.end).contains(&addr))
            .unwrap_or_else(|| panic!("no mapping holds {addr:#x}"));
        m.flags.iter().any(|f| f == "hg")
    }

    /// The first address of a whole huge page inside `block`.
    fn inner_page(block: &[f32]) -> usize {
        (block.as_ptr() as usize).next_multiple_of(HUGE_PAGE)
    }

    /// Whether `madvise(MADV_HUGEPAGE)` works here and shows in
    /// `/proc/self/smaps` (a container's kernel or seccomp policy may refuse
    /// it, or hide the flags): checked on a block of the system allocator's,
    /// advised by hand.
    fn kernel_reports_advice() -> Result<(), String> {
        use std::alloc::{GlobalAlloc, Layout, System};

        let layout = Layout::from_size_align(8 << 20, HUGE_PAGE).unwrap();
        // SAFETY: a non-zero size; freed below with the same layout, touched
        // only by the advice.
        let p = unsafe { System.alloc(layout) };
        assert!(!p.is_null(), "8 MiB from the system allocator");
        // SAFETY: the range is the block just allocated.
        let rc = unsafe { libc::madvise(p.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        let err = std::io::Error::last_os_error();
        let shown = rc == 0 && advised(p as usize);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(p, layout) };
        if rc != 0 {
            return Err(format!("madvise(MADV_HUGEPAGE) failed here: {err}"));
        }
        if !shown {
            return Err("/proc/self/smaps does not show MADV_HUGEPAGE (no `hg` in VmFlags)".into());
        }
        Ok(())
    }

    pub fn main() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            println!("huge_pages: skipped: this kernel has no transparent huge pages");
            return;
        }
        if let Err(why) = kernel_reports_advice() {
            println!("huge_pages: skipped: {why}");
            return;
        }
        // Large blocks from the heap, as under the kernels.
        ops::retain_freed_memory();

        // Turned off: a large block keeps its pages.
        ops::set_huge_pages(false);
        let off = vec![1.0f32; 4 << 20];
        assert!(
            !advised(inner_page(&off)),
            "a 16 MiB block advised with the advice off"
        );
        ops::set_huge_pages(true);
        assert!(ops::huge_pages_enabled());

        // The first large block while on starts the advice: the block, and the
        // heap grown for it, in a large step, up to the break.
        let large = vec![1.0f32; 4 << 20];
        assert!(advised(inner_page(&large)), "a 16 MiB block not advised");
        let maps = mappings();
        let heap = maps
            .iter()
            .filter(|m| m.name == "[heap]")
            .map(|m| m.end)
            .max()
            .expect("a [heap] mapping");
        let block_end = large.as_ptr() as usize + large.len() * 4;
        assert!(
            heap >= block_end + (128 << 20),
            "the heap grew by {} MiB past the block, not by its padding",
            (heap - block_end) >> 20
        );
        assert!(
            advised(heap / HUGE_PAGE * HUGE_PAGE - 1),
            "the heap's growth not advised"
        );

        // A large block of a worker thread's arena, outside the heap.
        let elsewhere = std::thread::spawn(|| {
            let block = vec![1.0f32; 4 << 20];
            let outside = !mappings().iter().any(|m| {
                m.name == "[heap]" && (m.start..m.end).contains(&(block.as_ptr() as usize))
            });
            (outside, advised(inner_page(&block)))
        })
        .join()
        .expect("worker thread");
        assert!(elsewhere.1, "a worker thread's 16 MiB block not advised");
        assert_eq!(off.iter().chain(&large).sum::<f32>(), (8 << 20) as f32);
        println!(
            "huge_pages: ok (the worker's block {} the heap)",
            if elsewhere.0 { "outside" } else { "inside" }
        );
    }
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    linux::main();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    println!("huge_pages: skipped: the heap advice is for Linux with glibc");
}
