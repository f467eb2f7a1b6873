//! How a training process keeps its heap: every op on the CPU allocates its
//! output afresh, and most of a training step's outputs are tens to hundreds
//! of megabytes. glibc serves each of those with a new `mmap` and unmaps it on
//! free, so every step touched (and the kernel zeroed) gigabytes of new pages:
//! a third of a CPU training step went to page faults. Serving them from the
//! heap and keeping the freed space lets the next step reuse the same pages.
//! Only `versifier train` asks for this; the app keeps glibc's defaults (and
//! trims on Release).

/// Serves large allocations from the heap and never trims it, for the rest of
/// the process. A no-op where the C library is not glibc.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocation parameters; both calls
    // are valid at any time, before or after allocations were made.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
