//! Types shared by the allocation probes (exact mode, `--runtime-sampling` and the
//! agent) and their userspace.

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
    /// Offsets of `g.stack.lo` and `g.stack.hi`: the bounds the frame-pointer walk of an
    /// allocation's stack must stay within.
    pub g_stack_lo: u32,
    pub g_stack_hi: u32,
    /// Runtime-sampled mode: offset of `bucket.size` in `runtime.bucket`.
    pub bucket_size_offset: u32,
    /// Runtime-sampled mode: offset of `special.kind` (u8) in `runtime.special`.
    pub special_kind_offset: u32,
    /// Runtime-sampled mode: the `special.kind` of a heap-profile record
    /// (`_KindSpecialProfile`).
    pub special_kind_profile: u32,
    /// `PROCESS_FLAG_*`.
    pub flags: u32,
    /// Runtime-sampled mode: address of `runtime.MemProfileRate` in the process, read at
    /// each sample into [`RATES_MAP`] (the program may change the rate at any time).
    pub mem_profile_rate_addr: u64,
}

/// [`ProcessConfig::flags`]: aggregate every goroutine under goid 0 (the agent: keys
/// stay bounded by the program's allocation sites however many goroutines it runs).
pub const PROCESS_FLAG_NO_GOID: u32 = 1;

/// [`AllocKey::typ`] of an allocation seen through the runtime's sampler, which is not told
/// the type. Odd, so never the address of a type descriptor; distinct from 0, the runtime's
/// nil `typ`.
pub const TYPE_NOT_RECORDED: u64 = 1;

/// A sampled object still live: the key it was counted under and its size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObject {
    pub key: AllocKey,
    pub size: u64,
}

/// Key of a [`LiveObject`]: the object's address in its process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// Aggregation key of one allocation site: who allocated (goroutine), what (type), where
/// (user stack plus the direct caller).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    /// Runtime-sampled mode: the sampled object's size (saturated at `u32::MAX`), so that
    /// a stack's samples of different sizes stay apart and each is unbiased for its own
    /// size, as the runtime's own profile buckets are per stack and size. 0 in exact mode.
    pub sample_size: u32,
    /// Key of the user stack in the stacks map (a 64-bit hash of its PCs), or
    /// [`NO_STACK`](crate::NO_STACK) when none was read or stored.
    pub stack: u64,
    /// Goroutine id; 0 when no user goroutine could be found.
    pub goid: u64,
    /// Runtime address of the allocated `*_type`; 0 for the runtime's nil `typ`.
    pub typ: u64,
    /// Return address at `[rsp]` on entry: the allocator's direct caller, which the frame
    /// pointer walk misses because the callee has not pushed its frame yet.
    pub caller_pc: u64,
}

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
    /// Runtime-sampled mode: the live-object map was full, so this sampled object's free
    /// will not be seen and it stays counted as in use.
    DropLiveMapFull = 9,
    /// Runtime-sampled mode: frees of sampled objects allocated before the trace began
    /// (not a loss: they were never counted).
    FreeBeforeTrace = 10,
    /// Runtime-sampled mode: frees of sampled objects allocated during the trace.
    Frees = 11,
    /// Runtime-sampled mode: a sample whose size could not be read from its bucket: lost.
    DropSampleUnreadable = 12,
    /// Runtime-sampled mode: a sample at which `MemProfileRate` could not be read or
    /// stored in [`RATES_MAP`]: the rate there may be stale or missing.
    RateUnrecorded = 13,
    /// Runtime-sampled mode: the frees map was full: a sampled object's free is lost (it
    /// stays counted as in use).
    DropFreeMapFull = 14,
    /// Runtime-sampled mode: a freed special whose kind could not be read: if it was a
    /// heap-profile record, its object's free is lost (it stays counted as in use).
    DropSpecialUnreadable = 15,
    /// The stack's frame-pointer chain went back down its stack (a cycle, or a link to a
    /// lower frame): the stack is kept up to the last frame before the bad link.
    StackCycle = 16,
    /// The stack's frame-pointer chain left the goroutine's stack (a wild or unaligned
    /// pointer, or one that could not be read): kept up to the last frame before it.
    StackOffStack = 17,
}

impl Counter {
    pub const COUNT: u32 = 18;
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
        Counter::DropLiveMapFull,
        Counter::FreeBeforeTrace,
        Counter::Frees,
        Counter::DropSampleUnreadable,
        Counter::RateUnrecorded,
        Counter::DropFreeMapFull,
        Counter::DropSpecialUnreadable,
        Counter::StackCycle,
        Counter::StackOffStack,
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
/// The second allocation buffer: the programs add to [`ALLOCS_MAP`] or to this one, as
/// [`ALLOC_BUFFER_MAP`] says, while user space drains the other.
pub const ALLOCS_ALT_MAP: &str = "ALLOCS_ALT";
/// One `u32`: 0 while the programs add to [`ALLOCS_MAP`], 1 to [`ALLOCS_ALT_MAP`].
pub const ALLOC_BUFFER_MAP: &str = "ALLOC_BUFFER";
pub const STACKS_MAP: &str = "STACKS";
pub const GOROUTINES_MAP: &str = "GOROUTINES";
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the allocation-entry uprobe program.
pub const ALLOC_PROGRAM: &str = "alloc_entry";
/// Runtime-sampled mode: live sampled objects and the frees aggregated per key.
pub const LIVE_MAP: &str = "LIVE";
/// Runtime-sampled mode: per process, `MemProfileRate` as read at its latest sample.
pub const RATES_MAP: &str = "RATES";
pub const FREES_MAP: &str = "FREES";
/// Name of the program on `runtime.setprofilebucket` (runtime-sampled allocations).
pub const SET_PROFILE_BUCKET_PROGRAM: &str = "set_profile_bucket";
/// Name of the program on `runtime.freeSpecial` (frees of sampled objects).
pub const FREE_SPECIAL_PROGRAM: &str = "free_special";
/// Name of the empty uprobe program, the benchmark's floor.
pub const EMPTY_PROGRAM: &str = "empty_entry";
/// Name of the program on `runtime.main` that stops a launched target once, after
/// `schedinit` (`--enable-runtime-sampling` in launch mode).
pub const STOP_AT_MAIN_PROGRAM: &str = "stop_at_main";

/// Map capacities. Overflow is counted ([`Counter::DropAllocMapFull`]) and reported. User
/// space drains the allocation buffers, the stacks and the goroutines while tracing, so
/// these bound what arrives between two drains, not a whole trace (each of the two
/// allocation buffers has [`MAX_ALLOC_KEYS`]).
pub const MAX_ALLOC_KEYS: u32 = 65_536;
pub const MAX_STACKS: u32 = 65_536;
pub const MAX_GOROUTINES: u32 = 65_536;
pub const MAX_LIVE_OBJECTS: u32 = 262_144;

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
    unsafe impl aya::Pod for LiveObject {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LiveKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ProcessConfig>(), 48);
        assert_eq!(core::mem::size_of::<LiveObject>(), 48);
        assert_eq!(core::mem::size_of::<LiveKey>(), 16);
        assert_eq!(core::mem::size_of::<AllocKey>(), 40);
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
