//! Handing freed heap memory back to the kernel.
//!
//! A cold sync and a relist allocate and free hundreds of MiB in small
//! pieces (API objects, netlink messages, operation lists). glibc's `free`
//! returns memory only from the top of the heap, so the freed pages between
//! live allocations stay resident until `malloc_trim` releases them.
//!
//! Transparent huge pages work against that: where the kernel backs the
//! heap with them (`/sys/kernel/mm/transparent_hugepage/enabled` is
//! `always`, as in Debian's kernel), khugepaged merges a 2 MiB range into
//! one huge page even when few of its pages were in use, and all 2 MiB
//! count in RSS. At 10,000 services the benchmark's VM found one such page
//! in the proxy after its first idle full sync. The proxy touches too
//! little memory for huge pages to save it TLB misses, so it asks for none.

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

/// Asks the kernel to back none of this process's memory with transparent
/// huge pages (`PR_SET_THP_DISABLE`), whatever the system setting; it also
/// holds for threads started after. Returns the error of a kernel that
/// refuses (before 3.15).
pub fn use_small_pages() -> std::io::Result<()> {
    #[expect(
        unsafe_code,
        reason = "prctl(PR_SET_THP_DISABLE) takes integers only and changes only this process's paging"
    )]
    // SAFETY: PR_SET_THP_DISABLE reads no memory of the caller; the unused
    // arguments are zero, as the kernel requires.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_opts_out_of_transparent_huge_pages() {
        use_small_pages().expect("prctl(PR_SET_THP_DISABLE)");
        // The kernel reports the flag in /proc (since 5.0).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("THP_enabled:"))
            .expect("a THP_enabled line in /proc/self/status");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
