//! Types shared by the mark-assist and mark-worker probes (`gomemtrace gctrace --assists`)
//! and their userspace.

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
    /// Nonzero where the background workers are timed at `gcBgMarkWorker`'s own clock
    /// readings ([`MARK_WORKER_CLOCK_START_PROGRAM`] and [`MARK_WORKER_CLOCK_END_PROGRAM`],
    /// `gcDrain`'s entry only naming the mode); zero: at `gcDrain`'s entry and RETs.
    pub worker_clock: u32,
    pub _pad: u32,
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
    /// [`MARK_STACKS_MAP`] key of the user stack at entry, or [`NO_STACK`](crate::NO_STACK).
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
    /// [`MARK_STACKS_MAP`] key, or [`NO_STACK`](crate::NO_STACK).
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
    /// The totals map was full (too many traced processes): that process's totals are
    /// not kept.
    DropTotalsMapFull = 10,
    /// A `gcAssistAlloc` entry could not be stored in the in-flight map: its RET counts
    /// under [`MarkCounter::RetWithoutEntry`] too, and the assist is lost.
    InflightNotRemembered = 11,
    /// A span entry could not be stored in the span map: its RET counts under
    /// [`MarkCounter::RetWithoutEntry`] too, and the span is lost.
    SpanNotRemembered = 12,
    /// `g0.m.curg` could not be read at `gcAssistAlloc1`: its time and scan work count in
    /// the totals but not in its assist's row.
    CurgUnreadable = 13,
}

impl MarkCounter {
    pub const COUNT: u32 = 14;
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
        MarkCounter::DropTotalsMapFull,
        MarkCounter::InflightNotRemembered,
        MarkCounter::SpanNotRemembered,
        MarkCounter::CurgUnreadable,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            MarkCounter::Hits => "hits",
            MarkCounter::NoConfig => "no_config",
            MarkCounter::StaleAssist => "stale_assist",
            MarkCounter::RetWithoutEntry => "ret_without_entry",
            MarkCounter::DropAssistMapFull => "assist_map_full",
            MarkCounter::StackUnreadable => "stack_unreadable",
            MarkCounter::StackMapFull => "stack_map_full",
            MarkCounter::DropRingFull => "ring_full",
            MarkCounter::AssistOnSystemStack => "assist_on_system_stack",
            MarkCounter::StaleSpan => "stale_span",
            MarkCounter::DropTotalsMapFull => "totals_map_full",
            MarkCounter::InflightNotRemembered => "inflight_not_remembered",
            MarkCounter::SpanNotRemembered => "span_not_remembered",
            MarkCounter::CurgUnreadable => "curg_unreadable",
        }
    }
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
pub const MARK_ASSIST_CLOCK_START_PROGRAM: &str = "mark_assist_clock_start";
pub const MARK_ASSIST_CLOCK_END_PROGRAM: &str = "mark_assist_clock_end";
pub const MARK_DRAIN_N_RET_PROGRAM: &str = "mark_drain_n_ret";
pub const MARK_DRAIN_ENTRY_PROGRAM: &str = "mark_drain_entry";
pub const MARK_DRAIN_RET_PROGRAM: &str = "mark_drain_ret";
pub const MARK_WORKER_CLOCK_START_PROGRAM: &str = "mark_worker_clock_start";
pub const MARK_WORKER_CLOCK_END_PROGRAM: &str = "mark_worker_clock_end";
pub const MARK_CYCLE_END_PROGRAM: &str = "mark_cycle_end";
pub const MARK_PROGRAMS: [&str; 12] = [
    MARK_ASSIST_ENTRY_PROGRAM,
    MARK_ASSIST_RET_PROGRAM,
    MARK_ASSIST_WORK_ENTRY_PROGRAM,
    MARK_ASSIST_WORK_RET_PROGRAM,
    MARK_ASSIST_CLOCK_START_PROGRAM,
    MARK_ASSIST_CLOCK_END_PROGRAM,
    MARK_DRAIN_N_RET_PROGRAM,
    MARK_DRAIN_ENTRY_PROGRAM,
    MARK_DRAIN_RET_PROGRAM,
    MARK_WORKER_CLOCK_START_PROGRAM,
    MARK_WORKER_CLOCK_END_PROGRAM,
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
    fn mark_counters_are_listed_in_order() {
        for (i, c) in MarkCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn mark_layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<MarkConfig>(), 24);
        assert_eq!(core::mem::size_of::<MarkGKey>(), 16);
        assert_eq!(core::mem::size_of::<AssistInflight>(), 56);
        assert_eq!(core::mem::size_of::<G0Span>(), 32);
        assert_eq!(core::mem::size_of::<AssistKey>(), 32);
        assert_eq!(core::mem::size_of::<AssistStats>(), 40);
        assert_eq!(core::mem::size_of::<MarkTotals>(), 8 * 13);
        assert_eq!(core::mem::size_of::<MarkCycleEvent>(), 16 + 8 * 13);
    }
}
