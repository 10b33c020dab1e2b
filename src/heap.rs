//! Handing freed heap memory back to the kernel.
//!
//! A cold sync and a relist allocate and free hundreds of MiB in small
//! pieces (API objects, netlink messages, operation lists). glibc's `free`
//! returns memory only from the top of the heap, so the freed pages between
//! live allocations stay resident until `malloc_trim` releases them.

/// Releases the free pages of the heap (glibc's `malloc_trim(0)`); does
/// nothing with other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    #[expect(
        unsafe_code,
        reason = "malloc_trim has no preconditions: it only walks glibc's own free lists"
    )]
    // SAFETY: malloc_trim takes a plain integer and touches only memory that
    // glibc's allocator owns and has marked free.
    unsafe {
        libc::malloc_trim(0);
    }
}
