//! gomemtrace's eBPF side: one uprobe program attached at every allocation entry point of
//! the target's Go runtime (after each function's stack check, where the arguments are
//! still in their ABIInternal registers: size in RAX, `*_type` in RBX, `g` in R14).
//!
//! Each hit is aggregated in kernel maps keyed by (process, user stack, direct caller,
//! goroutine, type). Nothing is sent per event; userspace reads the maps. Every event
//! that cannot be aggregated in full is counted in `COUNTERS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on shared map values: core::sync::atomic has no fetch_add for bpf.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod gc;
#[cfg(target_arch = "bpf")]
mod helpers;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod procevents;
#[cfg(target_arch = "bpf")]
mod sampled;
#[cfg(target_arch = "bpf")]
mod stacks;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The real program only exists for the BPF target; profiler/build.rs builds it.
}

#[cfg(target_arch = "bpf")]
mod rt;

#[cfg(target_arch = "bpf")]
mod mark;

#[cfg(target_arch = "bpf")]
mod numa;
