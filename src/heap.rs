//! Handing freed heap memory back to the kernel.
//!
//! A cold sync and a relist allocate and free hundreds of MiB in small
//! pieces (API objects, netlink messages, operation lists). glibc's `free`
//! returns memory only from the top of the heap, so the freed pages between
//! live allocations stay resident until `malloc_trim` releases them.

/// Makes every thread allocate from the one main arena (glibc's
/// `M_ARENA_MAX` 1; nothing with other C libraries). Call it before any
/// thread starts. glibc gives each new thread an arena of its own; the
/// source's decoding on the runtime's worker and the kernel layer's
/// blocking threads would each keep a heap of freed pages that the main
/// thread's compact state never reuses. The proxy's threads take turns
/// more than they contend, so one arena's lock costs little.
pub fn use_one_arena() {
    #[cfg(target_env = "gnu")]
    #[expect(
        unsafe_code,
        reason = "mallopt only sets a tunable of glibc's allocator"
    )]
    // SAFETY: mallopt takes two plain integers; M_ARENA_MAX only caps how
    // many arenas glibc creates from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

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
