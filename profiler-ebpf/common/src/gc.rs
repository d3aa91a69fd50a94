//! Types shared by the GC-cycle and stop-the-world probes (`gomemtrace gctrace`) and their
//! userspace.

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
    /// A `gcStart`/`gcMarkDone` entry could not be stored in the caller map: that
    /// goroutine's stop may be misclassified (before Go 1.21) and its trigger unknown.
    CallerNotRemembered = 8,
    /// A runtime global of [`GcConfig::slots`] could not be read at the end of a cycle:
    /// sent as 0.
    SlotUnreadable = 9,
}

impl GcCounter {
    pub const COUNT: u32 = 10;
    pub const ALL: [GcCounter; Self::COUNT as usize] = [
        GcCounter::Hits,
        GcCounter::NoConfig,
        GcCounter::Cycles,
        GcCounter::DropRingFull,
        GcCounter::DropStateMapFull,
        GcCounter::CurgUnreadable,
        GcCounter::StartWithoutStop,
        GcCounter::OtherStws,
        GcCounter::CallerNotRemembered,
        GcCounter::SlotUnreadable,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            GcCounter::Hits => "hits",
            GcCounter::NoConfig => "no_config",
            GcCounter::Cycles => "cycles",
            GcCounter::DropRingFull => "ring_full",
            GcCounter::DropStateMapFull => "state_map_full",
            GcCounter::CurgUnreadable => "curg_unreadable",
            GcCounter::StartWithoutStop => "start_without_stop",
            GcCounter::OtherStws => "other_stws",
            GcCounter::CallerNotRemembered => "caller_not_remembered",
            GcCounter::SlotUnreadable => "slot_unreadable",
        }
    }
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
    fn gc_counters_are_listed_in_order() {
        for (i, c) in GcCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

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
