//! Allocator tuning of the `taskstream` binary: give large freed blocks back to the
//! operating system at once.
//!
//! # Why
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
//! library set their own allocator policy (the README's memory section says how).

/// Blocks of this many bytes or more are mapped on their own and unmapped when freed.
pub(crate) const MMAP_THRESHOLD: usize = 1 << 20;

/// Applies [`MMAP_THRESHOLD`] (see the module docs). Call once, early, before threads
/// allocate.
pub(crate) fn return_large_blocks_promptly() {
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
