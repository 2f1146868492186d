//! The process's C heap (glibc malloc), which ONNX Runtime allocates from.
//!
//! glibc gives a large block its own mapping, returned to the system on free, but raises that
//! threshold (up to 32 MiB) every time such a block is freed. Loading a model frees large
//! transient copies (the file, the parsed protobuf, the graph before optimisation), so the
//! threshold climbs during start-up and later large blocks come from the heap, where freed
//! space stays resident. Pinning the threshold at glibc's own starting value (128 KiB) keeps
//! them in their own mappings: the mnist-cnn cloud tier peaks at 49 MiB instead of 62-63 MiB,
//! 41 MiB resident once started (`bench/RESULTS.md`, the edge's footprint). Large blocks of
//! the hot path (a batch's input, a fetch's records) then cost a mapping each; ONNX Runtime's
//! activations live in its arena, which keeps its blocks.

/// Whether the node pins the threshold: not when `GLIBC_TUNABLES` sets any of malloc's own
/// tunables (the operator's word wins).
pub fn should_pin(glibc_tunables: Option<&str>) -> bool {
    !glibc_tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

/// The threshold glibc starts with, kept from now on.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Pins the threshold (call first thing in `main`, before any thread starts); false where the
/// C library is not glibc or the operator set malloc tunables.
pub fn pin_mmap_threshold() -> bool {
    if !should_pin(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
        return false;
    }
    pin()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn pin() -> bool {
    // SAFETY: mallopt only sets a malloc parameter; it is called before other threads exist,
    // and glibc serialises it against allocation anyway.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_malloc_tunables_win() {
        assert!(should_pin(None));
        assert!(should_pin(Some("glibc.pthread.rseq=0")));
        assert!(!should_pin(Some("glibc.malloc.mmap_threshold=65536")));
        assert!(!should_pin(Some("glibc.pthread.rseq=0:glibc.malloc.arena_max=2")));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(pin(), "mallopt(M_MMAP_THRESHOLD) refused {MMAP_THRESHOLD}");
    }
}
