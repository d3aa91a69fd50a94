//! Types shared by the eBPF probes and gomemtrace's userspace.
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]` with explicit padding
//! fields, so both sides agree byte for byte. Enums cross as integers.
#![no_std]

/// Processes traced at once: the capacity of every per-process map.
pub const MAX_PROCESSES: u32 = 1024;

/// [`AllocKey::stack`] of an event whose stack was not read or not stored.
pub const NO_STACK: u64 = 0;

/// Deepest user stack recorded (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// A user stack: PCs leaf first, from the kernel's frame-pointer walk. Stored once per
/// distinct stack, keyed by a 64-bit hash of its PCs. The kernel's own stack-id map is not
/// used because it keys by a hash masked to the bucket count and refuses colliding stacks:
/// with a few hundred distinct stacks collisions are near certain, and each would lose the
/// stack of every later event at that site.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    /// Number of valid entries in `pcs`.
    pub len: u32,
    pub _pad: u32,
    pub pcs: [u64; MAX_STACK_DEPTH],
}

impl UserStack {
    pub const EMPTY: Self = Self {
        len: 0,
        _pad: 0,
        pcs: [0; MAX_STACK_DEPTH],
    };

    /// The valid PCs.
    pub fn pcs(&self) -> &[u64] {
        &self.pcs[..(self.len as usize).min(MAX_STACK_DEPTH)]
    }
}

/// FNV-1a over 64-bit words: the key of a [`UserStack`]. Never returns [`NO_STACK`].
#[inline(always)]
pub fn stack_hash_step(hash: u64, pc: u64) -> u64 {
    (hash ^ pc).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Initial value for [`stack_hash_step`].
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

// One module per capability; their items are re-exported at the crate root.

// Allocations: exact mode, runtime-sampled mode and the agent.
mod alloc;
pub use alloc::*;
// GC cycles and stop-the-world pauses (`gomemtrace gctrace`).
mod gc;
pub use gc::*;
// Mark assists and background mark workers (`gomemtrace gctrace --assists`).
mod mark;
pub use mark::*;
// Stack growth and goroutine lifecycle (`gomemtrace stackgrowth`, `gomemtrace goroutines`).
mod rt;
pub use rt::*;
// NUMA hint faults (`gomemtrace numa`).
mod numa;
pub use numa::*;
// Process execs and exits (`gomemtrace agent`).
mod procevents;
pub use procevents::*;

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, integers only, explicit padding field: every bit pattern is
// valid and there are no uninitialised bytes.
unsafe impl aya::Pod for UserStack {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_stack_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<UserStack>(), 8 + 8 * MAX_STACK_DEPTH);
    }
}
