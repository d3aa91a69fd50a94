//! Types shared by the eBPF probes and gomemtrace's userspace.
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]` with explicit padding
//! fields, so both sides agree byte for byte. Enums cross as integers.
#![no_std]

/// Per-process settings the probes need, written by userspace into [`CONFIG_MAP`] keyed by
/// the target's tgid before any probe is attached. Offsets are those of the target's Go
/// version (from its DWARF, or a per-version table for stripped binaries).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Offset of `g.goid` (int64).
    pub g_goid: u32,
    /// Offset of `g.m` (*m).
    pub g_m: u32,
    /// Offset of `m.curg` (*g).
    pub m_curg: u32,
    /// Offset of `g.startpc` (uintptr): the goroutine's start function.
    pub g_startpc: u32,
    /// Sampling: record one allocation in `sample_every`; 0 or 1 records every allocation
    /// (exact mode). Counts in [`AllocStats`] are raw; userspace scales them.
    pub sample_every: u32,
    pub _pad: u32,
}

/// Aggregation key of one allocation site: who allocated (goroutine), what (type), where
/// (user stack plus the direct caller).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Key of the user stack in the stacks map (a 64-bit hash of its PCs), or
    /// [`NO_STACK`] when none was read or stored.
    pub stack: u64,
    /// Goroutine id; 0 when no user goroutine could be found.
    pub goid: u64,
    /// Runtime address of the allocated `*_type`; 0 for the runtime's nil `typ`.
    pub typ: u64,
    /// Return address at `[rsp]` on entry: the allocator's direct caller, which the frame
    /// pointer walk misses because the callee has not pushed its frame yet.
    pub caller_pc: u64,
}

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

/// Totals for one [`AllocKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Requested bytes (the allocator's `size` argument).
    pub bytes: u64,
    /// Allocation calls.
    pub objects: u64,
}

/// What is known of a goroutine the first time it allocates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineInfo {
    /// `g.startpc`: entry of the goroutine's start function.
    pub start_pc: u64,
}

/// Key of [`GoroutineInfo`]: goroutine ids are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// Indexes into the per-CPU counter array [`COUNTERS_MAP`]. Every event that is not
/// aggregated lands in exactly one drop counter, so nothing is lost silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocation probe hits for a configured process.
    Events = 0,
    /// Hits whose process has no [`ProcessConfig`] (another process mapping the binary).
    NoConfig = 1,
    /// The allocation map was full: the event's bytes and objects are lost.
    DropAllocMapFull = 2,
    /// The user stack could not be read; the event is kept under a stackless key.
    StackUnreadable = 3,
    /// The goroutine pointer or id could not be read; kept under goid 0.
    GoidUnreadable = 4,
    /// The goroutine map was full: that goroutine's start function is unknown.
    DropGoroutineMapFull = 5,
    /// Allocations of size 0 (the runtime returns `zerobase` without allocating).
    ZeroSize = 6,
    /// Bytes seen (sum of sizes) for configured processes, counted before aggregation.
    EventBytes = 7,
    /// The stack map was full: the event is kept under a stackless key.
    StackMapFull = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Events,
        Counter::NoConfig,
        Counter::DropAllocMapFull,
        Counter::StackUnreadable,
        Counter::GoidUnreadable,
        Counter::DropGoroutineMapFull,
        Counter::ZeroSize,
        Counter::EventBytes,
        Counter::StackMapFull,
    ];
}

impl TryFrom<u32> for Counter {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        Counter::ALL.get(value as usize).copied().ok_or(value)
    }
}

/// Map names, shared so the loader cannot misspell them.
pub const CONFIG_MAP: &str = "CONFIG";
pub const ALLOCS_MAP: &str = "ALLOCS";
pub const STACKS_MAP: &str = "STACKS";
pub const GOROUTINES_MAP: &str = "GOROUTINES";
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the allocation-entry uprobe program.
pub const ALLOC_PROGRAM: &str = "alloc_entry";
/// Name of the empty uprobe program, the benchmark's floor.
pub const EMPTY_PROGRAM: &str = "empty_entry";

/// Map capacities. Overflow is counted ([`Counter::DropAllocMapFull`]) and reported.
pub const MAX_PROCESSES: u32 = 1024;
pub const MAX_ALLOC_KEYS: u32 = 65_536;
pub const MAX_STACKS: u32 = 16_384;
pub const MAX_GOROUTINES: u32 = 65_536;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers, with explicit
    // padding fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for ProcessConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GoroutineInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GoroutineKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UserStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ProcessConfig>(), 24);
        assert_eq!(core::mem::size_of::<AllocKey>(), 40);
        assert_eq!(core::mem::size_of::<UserStack>(), 8 + 8 * MAX_STACK_DEPTH);
        assert_eq!(core::mem::size_of::<AllocStats>(), 16);
        assert_eq!(core::mem::size_of::<GoroutineKey>(), 16);
    }

    #[test]
    fn counters_round_trip() {
        for c in Counter::ALL {
            assert_eq!(Counter::try_from(c as u32), Ok(c));
        }
        assert_eq!(Counter::try_from(Counter::COUNT), Err(Counter::COUNT));
    }
}
