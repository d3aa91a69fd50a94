//! Types shared by the stack-growth (`gomemtrace stackgrowth`) and goroutine-lifecycle
//! (`gomemtrace goroutines`) probes and their userspace.

/// Deepest stack these probes record (a frame-pointer walk in the probe).
pub const RT_STACK_DEPTH: usize = 48;

/// Per-process settings, in [`RT_CONFIG_MAP`] keyed by tgid. Offsets of the target's Go
/// release: from its DWARF, else the verified per-release table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtConfig {
    pub g_goid: u32,
    pub g_m: u32,
    pub m_curg: u32,
    pub g_startpc: u32,
    pub g_gopc: u32,
    pub g_stack_lo: u32,
    pub g_stack_hi: u32,
    /// `g.sched.sp`, `g.sched.pc`, `g.sched.bp` (the goroutine's saved context).
    pub g_sched_sp: u32,
    pub g_sched_pc: u32,
    pub g_sched_bp: u32,
    /// `RT_FLAG_*`.
    pub flags: u32,
    pub _pad: u32,
}

/// [`RtConfig::flags`]: record the creating goroutine's stack at each goroutine creation
/// (else only `gopc`, the creating call).
pub const RT_FLAG_CREATION_STACKS: u32 = 1;

/// [`RtConfig::flags`]: copystack only adds to the process's [`StackTotals`] (the agent's
/// metrics): no stack walk, no event, no RET probe.
pub const RT_FLAG_TOTALS_ONLY: u32 = 2;

/// Stack copies of one process since attach, in [`STACK_TOTALS_MAP`] keyed by tgid (the
/// entry is created by userspace with the config; the probe only adds to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Copies to a larger stack (`newsize` > old size), and the bytes they copied.
    pub growths: u64,
    pub growth_bytes: u64,
    /// Copies to a smaller stack (the GC's shrinking), and the bytes they copied.
    pub shrinks: u64,
    pub shrink_bytes: u64,
}

/// A stack of [`RT_STACK_DEPTH`] PCs, leaf first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtStack {
    pub len: u32,
    pub _pad: u32,
    pub pcs: [u64; RT_STACK_DEPTH],
}

impl RtStack {
    pub const EMPTY: Self = Self {
        len: 0,
        _pad: 0,
        pcs: [0; RT_STACK_DEPTH],
    };

    pub fn pcs(&self) -> &[u64] {
        &self.pcs[..(self.len as usize).min(RT_STACK_DEPTH)]
    }
}

/// One `runtime.copystack(gp, newsize)`: sent through [`STACK_EVENTS_MAP`] at its RET.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackGrowthEvent {
    pub tgid: u32,
    pub _pad: u32,
    /// The goroutine whose stack moves, and its id.
    pub gp: u64,
    pub goid: u64,
    /// `gp.stack.hi - gp.stack.lo` at entry, and `newsize`.
    pub old_size: u64,
    pub new_size: u64,
    /// `gp.stack.hi - gp.sched.sp`: the bytes copystack copies; 0 if unreadable.
    pub used: u64,
    /// `gp.sched.pc`: for a growth, the PC in the function whose prologue overflowed.
    pub sched_pc: u64,
    /// `gp.startpc`.
    pub start_pc: u64,
    /// copystack entry and RET, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The goroutine's stack at the copy, leaf first (`sched_pc` first).
    pub stack: RtStack,
}

/// Key of a `copystack` in progress: the g0 it runs on (copystack runs on the system stack
/// and never switches goroutines, so entry and RET see the same g0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RtGKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// A goroutine creation site: the creating stack (hash key into [`RT_STACKS_MAP`], 0 = not
/// recorded), the `go` statement's return PC (`gopc`) and the start function (`startpc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stack: u64,
    pub gopc: u64,
    pub start_pc: u64,
}

/// Per creation site.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    pub created: u64,
    pub exited: u64,
    /// Sum of the lifetimes of the exited ones, ns.
    pub lifetime_ns: u64,
}

/// A live goroutine created after attach, keyed by [`GoroutineLiveKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineLive {
    pub site: SiteKey,
    pub created_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoroutineLiveKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// Indexes into [`RT_COUNTERS_MAP`] (per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtCounter {
    /// Probe hits for a process without [`RtConfig`].
    NoConfig = 0,
    /// copystack entries / events sent.
    StackCopies = 1,
    StackEventsSent = 2,
    /// The ring buffer was full: a copystack event is lost.
    DropStackRingFull = 3,
    /// A copystack RET without its entry (attached mid-copy, its entry evicted from the
    /// pending map, or not stored: [`RtCounter::PendingNotRemembered`]).
    StackRetWithoutEntry = 4,
    /// Goroutines created (newproc1 RET).
    Created = 5,
    /// Exits of goroutines created after attach.
    Exited = 6,
    /// Exits of goroutines not in the live map: created before attach (or dropped).
    ExitedUnknown = 7,
    /// The live map was full: that goroutine's exit will count as unknown.
    DropLiveMapFull = 8,
    /// The site map was full: the creation is not counted by site.
    DropSiteMapFull = 9,
    /// The creating goroutine's stack could not be read: the site has no stack.
    CreationStackMissing = 10,
    /// The new g or its goid could not be read.
    Unreadable = 11,
    /// A copystack entry could not be stored in the pending map: its RET counts under
    /// [`RtCounter::StackRetWithoutEntry`] too, and the copy is not reported.
    PendingNotRemembered = 12,
    /// Totals-only mode: the process has no [`StackTotals`] entry: a copy is not counted.
    NoStackTotals = 13,
    /// The creation stack map was full: the site has no stack.
    CreationStackMapFull = 14,
    /// The creating goroutine's frame-pointer chain had a bad link (back down the stack,
    /// outside it, unaligned or unreadable): the site's stack holds the frames before it.
    CreationStackTruncated = 15,
}

impl RtCounter {
    pub const COUNT: u32 = 16;
    pub const ALL: [RtCounter; Self::COUNT as usize] = [
        RtCounter::NoConfig,
        RtCounter::StackCopies,
        RtCounter::StackEventsSent,
        RtCounter::DropStackRingFull,
        RtCounter::StackRetWithoutEntry,
        RtCounter::Created,
        RtCounter::Exited,
        RtCounter::ExitedUnknown,
        RtCounter::DropLiveMapFull,
        RtCounter::DropSiteMapFull,
        RtCounter::CreationStackMissing,
        RtCounter::Unreadable,
        RtCounter::PendingNotRemembered,
        RtCounter::NoStackTotals,
        RtCounter::CreationStackMapFull,
        RtCounter::CreationStackTruncated,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RtCounter::NoConfig => "no_config",
            RtCounter::StackCopies => "stack_copies",
            RtCounter::StackEventsSent => "stack_events_sent",
            RtCounter::DropStackRingFull => "stack_ring_full",
            RtCounter::StackRetWithoutEntry => "stack_ret_without_entry",
            RtCounter::Created => "created",
            RtCounter::Exited => "exited",
            RtCounter::ExitedUnknown => "exited_unknown_creation",
            RtCounter::DropLiveMapFull => "live_map_full",
            RtCounter::DropSiteMapFull => "site_map_full",
            RtCounter::CreationStackMissing => "creation_stack_missing",
            RtCounter::Unreadable => "unreadable",
            RtCounter::PendingNotRemembered => "stack_pending_not_remembered",
            RtCounter::NoStackTotals => "no_stack_totals",
            RtCounter::CreationStackMapFull => "creation_stack_map_full",
            RtCounter::CreationStackTruncated => "creation_stack_truncated",
        }
    }
}

pub const RT_CONFIG_MAP: &str = "RT_CONFIG";
pub const RT_COUNTERS_MAP: &str = "RT_COUNTERS";
pub const RT_STACKS_MAP: &str = "RT_STACKS";
pub const STACK_EVENTS_MAP: &str = "STACK_EVENTS";
pub const GOROUTINE_SITES_MAP: &str = "GOROUTINE_SITES";
pub const GOROUTINE_LIVE_MAP: &str = "GOROUTINE_LIVE";
pub const STACK_TOTALS_MAP: &str = "STACK_TOTALS";

pub const COPYSTACK_ENTRY_PROGRAM: &str = "copystack_entry";
pub const COPYSTACK_RET_PROGRAM: &str = "copystack_ret";
pub const NEWPROC1_RET_PROGRAM: &str = "newproc1_ret";
pub const GOROUTINE_EXIT_PROGRAM: &str = "goroutine_exit";

pub const MAX_PENDING_COPIES: u32 = 4096;
pub const MAX_RT_STACKS: u32 = 16_384;
pub const MAX_SITES: u32 = 16_384;
pub const MAX_LIVE_GOROUTINES: u32 = 1 << 20;
/// ~1800 copystack events of headroom; userspace drains it every 100 ms.
pub const STACK_EVENTS_BYTES: u32 = 1 << 20;

#[cfg(feature = "user")]
mod rt_user {
    use super::*;
    // SAFETY: `#[repr(C)]`, `Copy`, integers only, explicit padding fields: every bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for RtConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RtStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackGrowthEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RtGKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GoroutineLive {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GoroutineLiveKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTotals {}
}

#[cfg(test)]
mod rt_tests {
    use super::*;

    #[test]
    fn rt_layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<RtConfig>(), 48);
        assert_eq!(core::mem::size_of::<RtStack>(), 8 + 8 * RT_STACK_DEPTH);
        assert_eq!(
            core::mem::size_of::<StackGrowthEvent>(),
            8 + 9 * 8 + core::mem::size_of::<RtStack>()
        );
        assert_eq!(core::mem::size_of::<SiteKey>(), 32);
        assert_eq!(core::mem::size_of::<SiteStats>(), 24);
        assert_eq!(core::mem::size_of::<GoroutineLive>(), 40);
        assert_eq!(core::mem::size_of::<GoroutineLiveKey>(), 16);
    }

    #[test]
    fn rt_counters_are_listed_in_order() {
        for (i, c) in RtCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
