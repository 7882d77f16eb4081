//! Allocator policy of the binaries: mimalloc for the many small blocks of the hot path,
//! glibc's malloc (tuned to unmap at once) for large blocks.
//!
//! # Why two allocators
//!
//! A task's trip through the process allocates a few dozen small blocks (fields, ids,
//! RESP values, settlements), and with glibc's malloc those allocations and frees were
//! 37% of the client's instructions per task (`load-tests/README.md`). mimalloc serves
//! them in about a third of the instructions. But mimalloc keeps freed memory of a thread
//! for reuse, and frees of blocks that another thread allocated wait until the owner
//! allocates again: with mimalloc alone, a worker that dead-lettered twenty raw 10 MiB
//! entries stayed at 4.4× its idle RSS (62.6 MiB against 14.2), where it must come back
//! (issue 10, item 12; `tests/memory.rs`). So [`Allocator`] routes by size: blocks of
//! [`MMAP_THRESHOLD`] (1 MiB) or more go to glibc's malloc, which maps each one on its
//! own and unmaps it when it is freed (below); everything smaller goes to mimalloc.
//! Rust hands `dealloc` and `realloc` the size the block was allocated with, so each
//! block is always freed by the allocator that made it, and a block that grows across
//! the threshold is moved (allocate, copy, free), as any `realloc` may do.
//!
//! mimalloc is built without transparent huge pages (`no_thp`): with them an idle worker
//! was 23 MiB resident instead of 14 MiB, one 2 MiB page per touched region.
//!
//! # Why the threshold is set
//!
//! glibc's malloc serves blocks above its *mmap threshold* (128 KiB at start) with their
//! own `mmap`, returned to the system on `free`. But the threshold is dynamic: each time
//! such a block is freed, the threshold rises to its size (up to 32 MiB), so the next
//! blocks of that size come from the heap arenas, and freed heap memory is only returned
//! when it happens to lie at the top of a heap. A worker that once handled a few large
//! entries (a raw producer's 10 MiB payloads, dead-lettered as malformed) kept ~600 MB
//! resident for good that way (issue 10, item 12).
//!
//! Setting the threshold explicitly switches the dynamic adjustment off: every block of
//! [`MMAP_THRESHOLD`] or more is mapped on its own and unmapped when freed, so memory
//! comes back as soon as the large entries are settled. Blocks that size are rare (task
//! payloads are at most 1 MiB by default), so the extra `mmap`/`munmap` calls cost
//! nothing measurable.
//!
//! A threshold set by the operator (`MALLOC_MMAP_THRESHOLD_`, or `mmap_threshold` in
//! `GLIBC_TUNABLES`) is left alone. Other C libraries (musl) and allocators behave
//! differently; the call is compiled only for glibc targets. Programs that embed the
//! library set their own allocator policy (the README's memory section says how); they
//! may use [`Allocator`] as theirs.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this many bytes or more are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Applies [`MMAP_THRESHOLD`] (see the module docs). Call once, early, before threads
/// allocate.
pub fn return_large_blocks_promptly() {
    if operator_chose() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; it takes the arena lock
        // itself and has no preconditions. M_MMAP_THRESHOLD accepts 0..=HEAP_MAX/2
        // (32 MiB on 64-bit), which 1 MiB is within.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if ok != 1 {
            // Nothing depends on it; the worker only keeps more memory after large tasks.
            eprintln!(
                "warning: mallopt(M_MMAP_THRESHOLD) failed; freed large blocks may stay resident"
            );
        }
    }
}

/// True when the environment already sets glibc's mmap threshold.
fn operator_chose() -> bool {
    std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"))
}

/// The binaries' global allocator: mimalloc below [`MMAP_THRESHOLD`], the system's
/// malloc from it on (see the module docs).
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: taskstream::cli::Allocator = taskstream::cli::Allocator;
/// ```
pub struct Allocator;

/// True when a block of `size` bytes belongs to the system allocator.
#[inline]
fn large(size: usize) -> bool {
    size >= MMAP_THRESHOLD
}

// SAFETY: every block is allocated and freed by the same allocator: `alloc`,
// `alloc_zeroed` and `dealloc` choose by the layout's size, and Rust passes `dealloc` and
// `realloc` the layout (size and alignment) the block was allocated or last reallocated
// with. Both allocators honour the layout's alignment. A `realloc` that crosses the
// threshold allocates in the other allocator, copies the smaller of the two sizes and
// frees the old block, which is what the `GlobalAlloc` contract allows `realloc` to do.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees (non-zero size).
        unsafe {
            match large(layout.size()) {
                true => System.alloc(layout),
                false => MiMalloc.alloc(layout),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            match large(layout.size()) {
                true => System.alloc_zeroed(layout),
                false => MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout` by this allocator, so by the one
        // `large(layout.size())` names.
        unsafe {
            match large(layout.size()) {
                true => System.dealloc(ptr, layout),
                false => MiMalloc.dealloc(ptr, layout),
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `ptr` is ours with `layout`, and `new_size` is
        // non-zero and does not overflow when rounded to the alignment; the new layout is
        // therefore valid, and the copy stays within both blocks.
        unsafe {
            match (large(layout.size()), large(new_size)) {
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                (true, true) => System.realloc(ptr, layout, new_size),
                _ => {
                    let new = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks that grow and shrink across the threshold keep their bytes and are freed by
    /// the allocator that made them (a mismatch would crash or corrupt the heap here).
    #[test]
    fn blocks_cross_the_threshold_both_ways() {
        let a = Allocator;
        for align in [1usize, 8, 64, 4096] {
            let small = Layout::from_size_align(1000, align).unwrap();
            unsafe {
                let p = a.alloc(small);
                assert!(!p.is_null());
                for i in 0..1000 {
                    *p.add(i) = (i % 251) as u8;
                }
                let big = a.realloc(p, small, 3 * MMAP_THRESHOLD);
                assert!(!big.is_null());
                assert_eq!(big as usize % align, 0);
                for i in 0..1000 {
                    assert_eq!(*big.add(i), (i % 251) as u8);
                }
                *big.add(3 * MMAP_THRESHOLD - 1) = 7;
                let bigger = a.realloc(
                    big,
                    Layout::from_size_align(3 * MMAP_THRESHOLD, align).unwrap(),
                    5 * MMAP_THRESHOLD,
                );
                assert_eq!(*bigger.add(3 * MMAP_THRESHOLD - 1), 7);
                let back = a.realloc(
                    bigger,
                    Layout::from_size_align(5 * MMAP_THRESHOLD, align).unwrap(),
                    500,
                );
                assert!(!back.is_null());
                assert_eq!(back as usize % align, 0);
                for i in 0..500 {
                    assert_eq!(*back.add(i), (i % 251) as u8);
                }
                a.dealloc(back, Layout::from_size_align(500, align).unwrap());
                let z = a.alloc_zeroed(Layout::from_size_align(2 * MMAP_THRESHOLD, align).unwrap());
                assert!((0..2 * MMAP_THRESHOLD)
                    .step_by(4093)
                    .all(|i| *z.add(i) == 0));
                a.dealloc(
                    z,
                    Layout::from_size_align(2 * MMAP_THRESHOLD, align).unwrap(),
                );
            }
        }
    }
}
