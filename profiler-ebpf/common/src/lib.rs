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
}

impl Counter {
    pub const COUNT: u32 = 13;
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

/// Map capacities. Overflow is counted ([`Counter::DropAllocMapFull`]) and reported.
pub const MAX_PROCESSES: u32 = 1024;
pub const MAX_ALLOC_KEYS: u32 = 65_536;
pub const MAX_STACKS: u32 = 16_384;
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
    unsafe impl aya::Pod for UserStack {}
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
        assert_eq!(core::mem::size_of::<ProcessConfig>(), 40);
        assert_eq!(core::mem::size_of::<LiveObject>(), 48);
        assert_eq!(core::mem::size_of::<LiveKey>(), 16);
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

// ---------------------------------------------------------------------------------------
// GC cycles and stop-the-world pauses (`gomemtrace gctrace`).
// ---------------------------------------------------------------------------------------

/// How many runtime globals the GC probe reads at the end of each cycle.
pub const GC_SLOTS: usize = 25;

/// [`GcConfig::flags`]: `stopTheWorldWithSema` takes a `stwReason` in AL (Go 1.21+).
pub const GC_FLAG_STW_REASON: u32 = 1;
/// [`GcConfig::flags`]: `startTheWorldWithSema(now RAX, w worldStop)` with the world-stop
/// start time in RCX (Go 1.22+): the pause needs no pairing with the stop.
pub const GC_FLAG_START_HAS_WORLDSTOP: u32 = 2;

/// `stwReason` values of the two GC stops (identical from Go 1.21 to 1.27).
pub const STW_REASON_GC_MARK_TERM: u64 = 1;
pub const STW_REASON_GC_SWEEP_TERM: u64 = 2;

/// Per-process settings of the GC probes, in [`GC_CONFIG_MAP`] keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcConfig {
    /// `GC_FLAG_*`.
    pub flags: u32,
    /// Offset of `g.m`.
    pub g_m: u32,
    /// Offset of `m.curg`.
    pub m_curg: u32,
    pub _pad: u32,
    /// Runtime addresses (load bias applied) of the 8-byte words read into
    /// [`GcEvent::slots`] when a cycle ends; 0 = not read. Userspace decides what each is.
    pub slots: [u64; GC_SLOTS],
}

/// What the caller map remembers of a goroutine that entered `gcStart` or `gcMarkDone`,
/// so a later `stopTheWorldWithSema` on its M (`m.curg` = that goroutine) is known to be
/// a GC stop even where the runtime passes no reason (Go 1.19).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCaller {
    /// [`GC_CALLER_START`] or [`GC_CALLER_MARK_DONE`].
    pub kind: u32,
    /// `gcStart`'s `trigger.kind` (0 heap, 1 time, 2 cycle = `runtime.GC`).
    pub trigger: u32,
    /// [`GcState::cycles_done`] at entry: an entry from an earlier cycle is stale (the
    /// goroutine lost the race to start or finish that cycle and returned).
    pub seq: u32,
    pub _pad: u32,
}

pub const GC_CALLER_START: u32 = 1;
pub const GC_CALLER_MARK_DONE: u32 = 2;

/// Key of [`GcCaller`]: the goroutine (`g` pointer) of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GcCallerKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// [`GcEvent::trigger`] when the cycle's `gcStart` was not seen.
pub const GC_TRIGGER_UNKNOWN: u32 = u32::MAX;

/// One finished GC cycle, sent through [`GC_EVENTS_MAP`] when mark termination restarts
/// the world. Times are `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`, the clock of Go's
/// `nanotime`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcEvent {
    pub tgid: u32,
    /// `gcStart`'s trigger kind, or [`GC_TRIGGER_UNKNOWN`].
    pub trigger: u32,
    /// Stop-the-world pauses of this cycle: 1 sweep termination + mark terminations
    /// (more than 1 when `gcMarkDone` found more work and restarted the world).
    pub stws: u32,
    /// Non-zero when the sweep-termination stop was seen (the cycle began after attach).
    pub saw_sweep_term: u32,
    /// Sweep termination: the world started to stop / started again (≈ the runtime's
    /// `work.tSweepTerm` / `work.tMark`).
    pub sweep_term_start: u64,
    pub sweep_term_end: u64,
    /// The last mark-termination stop: started stopping / world restarted (≈
    /// `work.tMarkTerm` / `work.tEnd`).
    pub mark_term_start: u64,
    pub mark_term_end: u64,
    /// Sum of all of this cycle's stop-the-world pauses (≈ the runtime's `work.pauseNS`).
    pub pause_ns: u64,
    /// The runtime's own `work.tSweepTerm` / `work.tMarkTerm` (taken just before each
    /// stop), from `startGCTransition(enable, now)`; 0 when not seen.
    pub t_sweep_term: u64,
    pub t_mark_term: u64,
    /// The words at [`GcConfig::slots`], read as the world restarts.
    pub slots: [u64; GC_SLOTS],
}

impl GcEvent {
    pub const EMPTY: Self = Self {
        tgid: 0,
        trigger: GC_TRIGGER_UNKNOWN,
        stws: 0,
        saw_sweep_term: 0,
        sweep_term_start: 0,
        sweep_term_end: 0,
        mark_term_start: 0,
        mark_term_end: 0,
        pause_ns: 0,
        t_sweep_term: 0,
        t_mark_term: 0,
        slots: [0; GC_SLOTS],
    };
}

/// What a stop-the-world in progress is, in [`GcState::stw_kind`].
pub const STW_NONE: u32 = 0;
pub const STW_OTHER: u32 = 1;
pub const STW_SWEEP_TERM: u32 = 2;
pub const STW_MARK_TERM: u32 = 3;

/// Per-process state of the GC probes ([`GC_STATE_MAP`], keyed by tgid). Only the
/// stop/start-the-world and `gcMarkTermination` probes write it, and those run one at a
/// time per process (the runtime's `worldsema`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcState {
    /// `STW_*` of the stop in progress.
    pub stw_kind: u32,
    /// Non-zero between `gcMarkTermination` entry and the start that ends the cycle.
    pub in_mark_termination: u32,
    /// Non-zero from the end of sweep termination to the end of the cycle.
    pub in_cycle: u32,
    /// Cycles finished since the probes were attached.
    pub cycles_done: u32,
    /// Non-zero from the end of sweep termination until `finishGCTransition(now)` tells
    /// the runtime's own end time (`work.tMark`).
    pub awaiting_tmark: u32,
    pub _pad: u32,
    /// `finishGCTransition(now)` during mark termination: the runtime's `work.tEnd`.
    pub tend_hint: u64,
    /// `startGCTransition(true, now)` seen during a stop not yet classified (Go 1.22+
    /// classifies at the start of the world): the runtime's `work.tSweepTerm`.
    pub pending_t_sweep_term: u64,
    /// When the stop in progress began (stop entry), for pairing before Go 1.22.
    pub stop_ns: u64,
    /// The cycle being assembled.
    pub cycle: GcEvent,
}

/// Indexes into [`GC_COUNTERS_MAP`] (per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcCounter {
    /// Hits of any GC probe for a configured process.
    Hits = 0,
    /// Hits for a process without [`GcConfig`].
    NoConfig = 1,
    /// Cycles sent to userspace.
    Cycles = 2,
    /// The ring buffer was full: a cycle is lost.
    DropRingFull = 3,
    /// The state map was full (too many traced processes): nothing is measured.
    DropStateMapFull = 4,
    /// `m.curg` could not be read at a stop: the stop may be misclassified.
    CurgUnreadable = 5,
    /// A world start without a seen stop (attached mid-pause): ignored.
    StartWithoutStop = 6,
    /// Stops that were not the GC's (ReadMemStats, GOMAXPROCS, profiles, ...).
    OtherStws = 7,
}

impl GcCounter {
    pub const COUNT: u32 = 8;
    pub const ALL: [GcCounter; Self::COUNT as usize] = [
        GcCounter::Hits,
        GcCounter::NoConfig,
        GcCounter::Cycles,
        GcCounter::DropRingFull,
        GcCounter::DropStateMapFull,
        GcCounter::CurgUnreadable,
        GcCounter::StartWithoutStop,
        GcCounter::OtherStws,
    ];
}

pub const GC_CONFIG_MAP: &str = "GC_CONFIG";
pub const GC_STATE_MAP: &str = "GC_STATE";
pub const GC_CALLERS_MAP: &str = "GC_CALLERS";
pub const GC_EVENTS_MAP: &str = "GC_EVENTS";
pub const GC_COUNTERS_MAP: &str = "GC_COUNTERS";

/// GC probe programs, one per probed runtime function.
pub const GC_START_PROGRAM: &str = "gc_start";
pub const GC_MARK_DONE_PROGRAM: &str = "gc_mark_done";
pub const GC_MARK_TERMINATION_PROGRAM: &str = "gc_mark_termination";
pub const GC_STOP_THE_WORLD_PROGRAM: &str = "gc_stop_the_world";
pub const GC_START_THE_WORLD_PROGRAM: &str = "gc_start_the_world";
pub const GC_FINISH_TRANSITION_PROGRAM: &str = "gc_finish_transition";
pub const GC_START_TRANSITION_PROGRAM: &str = "gc_start_transition";

/// Goroutines remembered between `gcStart`/`gcMarkDone` entry and their stop (LRU).
pub const MAX_GC_CALLERS: u32 = 4096;
/// Ring buffer size: ~100 cycles of headroom; userspace drains it every 100 ms.
pub const GC_EVENTS_BYTES: u32 = 64 * 1024;

#[cfg(feature = "user")]
mod gc_user {
    use super::*;
    // SAFETY: `#[repr(C)]`, `Copy`, integers only, explicit padding fields: every bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for GcConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GcCaller {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GcCallerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GcEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GcState {}
}

#[cfg(test)]
mod gc_tests {
    use super::*;

    #[test]
    fn gc_layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<GcConfig>(), 16 + 8 * GC_SLOTS);
        assert_eq!(core::mem::size_of::<GcCaller>(), 16);
        assert_eq!(core::mem::size_of::<GcCallerKey>(), 16);
        assert_eq!(core::mem::size_of::<GcEvent>(), 16 + 7 * 8 + 8 * GC_SLOTS);
        assert_eq!(
            core::mem::size_of::<GcState>(),
            48 + core::mem::size_of::<GcEvent>()
        );
    }
}

// Stack growth and goroutine lifecycle (`gomemtrace stackgrowth`, `gomemtrace goroutines`).
mod rt;
pub use rt::*;
mod procevents;
pub use procevents::*;

// ---------------------------------------------------------------------------------------
// Mark assists and background mark workers (`gomemtrace gctrace --assists`).
// ---------------------------------------------------------------------------------------

/// Per-process settings of the mark probes, in [`MARK_CONFIG_MAP`] keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkConfig {
    /// Offset of `g.goid`.
    pub g_goid: u32,
    /// Offset of `g.startpc`.
    pub g_startpc: u32,
    /// Offset of `g.m`.
    pub g_m: u32,
    /// Offset of `m.curg`.
    pub m_curg: u32,
}

/// A goroutine (`g` pointer, or `g0` for work on an M's system stack) of a process: the
/// key of the in-flight maps. Never a thread id: an assist may park and resume on another
/// thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MarkGKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// A `gcAssistAlloc` call between its entry and one of its RETs ([`MARK_INFLIGHT_MAP`],
/// keyed by the assisting goroutine).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssistInflight {
    /// Entry time (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// [`MARK_STACKS_MAP`] key of the user stack at entry, or [`NO_STACK`].
    pub stack: u64,
    /// `[rsp]` at entry: the allocator that drafted the goroutine.
    pub caller_pc: u64,
    pub goid: u64,
    /// `g.startpc`.
    pub start_pc: u64,
    /// Time in `gcAssistAlloc1` (mark work on the system stack) so far.
    pub cpu_ns: u64,
    /// Scan work done so far (`gcDrainN`'s result).
    pub scan_work: u64,
}

/// [`G0Span::kind`]: what a span of mark work on an M's system stack is.
pub const MARK_SPAN_ASSIST: u32 = 0;
pub const MARK_SPAN_DEDICATED: u32 = 1;
pub const MARK_SPAN_FRACTIONAL: u32 = 2;
pub const MARK_SPAN_IDLE: u32 = 3;
/// `gcDrain(gcw, 0)`: checkmark mode (GODEBUG=gccheckmark=1), not a worker.
pub const MARK_SPAN_OTHER: u32 = 4;

/// `gcDrainFlags` (identical Go 1.19–1.27, runtime/mgcmark.go).
pub const GC_DRAIN_UNTIL_PREEMPT: u64 = 1;
pub const GC_DRAIN_FLUSH_BG_CREDIT: u64 = 2;
pub const GC_DRAIN_IDLE: u64 = 4;
pub const GC_DRAIN_FRACTIONAL: u64 = 8;

/// A `gcAssistAlloc1` or `gcDrain` call in progress on an M's system stack
/// ([`MARK_SPANS_MAP`], keyed by `g0`: neither parks nor moves to another M).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct G0Span {
    pub start_ns: u64,
    /// `MARK_SPAN_*`.
    pub kind: u32,
    pub _pad: u32,
    /// The assisting goroutine (`gcAssistAlloc1`'s `gp`), 0 for workers.
    pub gp: u64,
    /// Scan work done in this span (`gcDrainN` results).
    pub scan_work: u64,
}

/// Key of [`AssistStats`]: who was drafted, and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AssistKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
    /// [`MARK_STACKS_MAP`] key, or [`NO_STACK`].
    pub stack: u64,
    /// `[rsp]` at `gcAssistAlloc` entry.
    pub caller_pc: u64,
}

/// Totals of the finished assists of one [`AssistKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssistStats {
    /// `gcAssistAlloc` calls.
    pub count: u64,
    /// Wall time from entry to RET, parking in `gcParkAssist` included.
    pub wall_ns: u64,
    /// Time in `gcAssistAlloc1` (what the runtime counts as assist time).
    pub cpu_ns: u64,
    pub scan_work: u64,
    /// `g.startpc` of the goroutine.
    pub start_pc: u64,
}

/// Cumulative per-process mark totals since attach ([`MARK_TOTALS_MAP`]); userspace takes
/// differences between consecutive [`MarkCycleEvent`]s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkTotals {
    /// Finished `gcAssistAlloc` calls and their wall time.
    pub assists: u64,
    pub assist_wall_ns: u64,
    /// Finished `gcAssistAlloc1` calls, their time and scan work.
    pub assist_work_calls: u64,
    pub assist_cpu_ns: u64,
    pub assist_scan_work: u64,
    /// `gcDrain` time per `MARK_SPAN_*` kind 1..=4 (index = kind − 1), and calls.
    pub drain_ns: [u64; 4],
    pub drain_calls: [u64; 4],
}

/// Sent through [`MARK_EVENTS_MAP`] at `gcMarkTermination` entry (world stopped, every
/// mark worker and assist of the cycle finished).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkCycleEvent {
    pub tgid: u32,
    pub _pad: u32,
    pub ktime_ns: u64,
    pub totals: MarkTotals,
}

/// Indexes into [`MARK_COUNTERS_MAP`] (per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkCounter {
    Hits = 0,
    NoConfig = 1,
    /// A `gcAssistAlloc` entry found an unfinished one of the same goroutine (its RET was
    /// missed: a panic): the old one is dropped.
    StaleAssist = 2,
    /// A RET without a recorded entry (attached mid-call): ignored.
    RetWithoutEntry = 3,
    /// The assist map was full: a finished assist is lost from the per-site table (it is
    /// still in the totals).
    DropAssistMapFull = 4,
    StackUnreadable = 5,
    StackMapFull = 6,
    /// The ring buffer was full: a cycle's mark times are lost.
    DropRingFull = 7,
    /// `gcAssistAlloc` entered on the system stack (R14 ≠ gp): not timed.
    AssistOnSystemStack = 8,
    /// A span entry on a g0 with an unfinished span (missed RET): the old one is dropped.
    StaleSpan = 9,
}

impl MarkCounter {
    pub const COUNT: u32 = 10;
    pub const ALL: [MarkCounter; Self::COUNT as usize] = [
        MarkCounter::Hits,
        MarkCounter::NoConfig,
        MarkCounter::StaleAssist,
        MarkCounter::RetWithoutEntry,
        MarkCounter::DropAssistMapFull,
        MarkCounter::StackUnreadable,
        MarkCounter::StackMapFull,
        MarkCounter::DropRingFull,
        MarkCounter::AssistOnSystemStack,
        MarkCounter::StaleSpan,
    ];
}

pub const MARK_CONFIG_MAP: &str = "MARK_CONFIG";
pub const MARK_INFLIGHT_MAP: &str = "MARK_INFLIGHT";
pub const MARK_SPANS_MAP: &str = "MARK_SPANS";
pub const MARK_ASSISTS_MAP: &str = "MARK_ASSISTS";
pub const MARK_STACKS_MAP: &str = "MARK_STACKS";
pub const MARK_TOTALS_MAP: &str = "MARK_TOTALS";
pub const MARK_EVENTS_MAP: &str = "MARK_EVENTS";
pub const MARK_COUNTERS_MAP: &str = "MARK_COUNTERS";

/// Mark probe programs.
pub const MARK_ASSIST_ENTRY_PROGRAM: &str = "mark_assist_entry";
pub const MARK_ASSIST_RET_PROGRAM: &str = "mark_assist_ret";
pub const MARK_ASSIST_WORK_ENTRY_PROGRAM: &str = "mark_assist_work_entry";
pub const MARK_ASSIST_WORK_RET_PROGRAM: &str = "mark_assist_work_ret";
pub const MARK_DRAIN_N_RET_PROGRAM: &str = "mark_drain_n_ret";
pub const MARK_DRAIN_ENTRY_PROGRAM: &str = "mark_drain_entry";
pub const MARK_DRAIN_RET_PROGRAM: &str = "mark_drain_ret";
pub const MARK_CYCLE_END_PROGRAM: &str = "mark_cycle_end";
pub const MARK_PROGRAMS: [&str; 8] = [
    MARK_ASSIST_ENTRY_PROGRAM,
    MARK_ASSIST_RET_PROGRAM,
    MARK_ASSIST_WORK_ENTRY_PROGRAM,
    MARK_ASSIST_WORK_RET_PROGRAM,
    MARK_DRAIN_N_RET_PROGRAM,
    MARK_DRAIN_ENTRY_PROGRAM,
    MARK_DRAIN_RET_PROGRAM,
    MARK_CYCLE_END_PROGRAM,
];

/// In-flight assists / system-stack spans remembered (LRU: a missed RET ages out).
pub const MAX_MARK_INFLIGHT: u32 = 16_384;
/// Distinct (goroutine, stack, caller) assist keys.
pub const MAX_ASSIST_KEYS: u32 = 16_384;
/// Distinct assist stacks.
pub const MAX_ASSIST_STACKS: u32 = 4096;
/// ~600 cycles of headroom; userspace drains every 100 ms.
pub const MARK_EVENTS_BYTES: u32 = 64 * 1024;

#[cfg(feature = "user")]
mod mark_user {
    use super::*;
    // SAFETY: `#[repr(C)]`, `Copy`, integers only, explicit padding fields: every bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for MarkConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MarkGKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AssistInflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for G0Span {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AssistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AssistStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MarkTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MarkCycleEvent {}
}

#[cfg(test)]
mod mark_tests {
    use super::*;

    #[test]
    fn mark_layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<MarkConfig>(), 16);
        assert_eq!(core::mem::size_of::<MarkGKey>(), 16);
        assert_eq!(core::mem::size_of::<AssistInflight>(), 56);
        assert_eq!(core::mem::size_of::<G0Span>(), 32);
        assert_eq!(core::mem::size_of::<AssistKey>(), 32);
        assert_eq!(core::mem::size_of::<AssistStats>(), 40);
        assert_eq!(core::mem::size_of::<MarkTotals>(), 8 * 13);
        assert_eq!(core::mem::size_of::<MarkCycleEvent>(), 16 + 8 * 13);
    }
}

mod numa;
pub use numa::*;
