//! Types shared by the NUMA hint-fault programs (`gomemtrace numa`) and their userspace.

/// Per-process settings, in [`NUMA_CONFIG_MAP`] keyed by tgid: `g` field offsets of the
/// target's Go release (DWARF, else the verified per-release table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaConfig {
    pub g_goid: u32,
    pub g_m: u32,
    pub m_curg: u32,
    pub g_gopc: u32,
    pub g_startpc: u32,
    /// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF), for the TLS
    /// fallback (`fsbase - 8` holds `g`); 0 = unknown, no fallback.
    pub task_fsbase: u32,
}

/// How [`NumaFaultEvent::goid`] was found.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoidSource {
    /// No goroutine: R14 and TLS both failed (goid 0).
    Unknown = 0,
    /// R14 held the running goroutine (`g.m.curg == R14`).
    R14 = 1,
    /// R14 held `m.g0`: the fault came from the system stack (goid 0).
    SystemStack = 2,
    /// R14 was not a `g`; the TLS copy (`fsbase - 8`) led to `m.curg`.
    Tls = 3,
    /// R14's `g` could not be read (its page was unmapped by NUMA balancing itself, and a
    /// BPF program cannot fault it in): the goroutine last seen with that `g` and thread.
    Cached = 4,
}

impl GoidSource {
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::R14,
            2 => Self::SystemStack,
            3 => Self::Tls,
            4 => Self::Cached,
            _ => Self::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::R14 => "r14",
            Self::SystemStack => "system_stack",
            Self::Tls => "tls",
            Self::Cached => "cached",
        }
    }
}

/// `task_numa_fault`'s `flags`: the page was on the faulting CPU's node.
pub const TNF_FAULT_LOCAL: u32 = 0x08;
/// `task_numa_fault`'s `flags`: the page was migrated to the faulting CPU's node.
pub const TNF_MIGRATED: u32 = 0x01;

/// The goroutine last read through a `g`, kept per (tgid, `g`) for faults where that `g`
/// cannot be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedGoroutine {
    pub goid: u64,
    pub gopc: u64,
    pub start_pc: u64,
    /// [`GoidSource`] of the read that filled it.
    pub source: u32,
    pub _pad: u32,
}

/// One NUMA-balancing hint fault of a traced process, sent through [`NUMA_EVENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaFaultEvent {
    pub tgid: u32,
    pub tid: u32,
    /// Node of the CPU that faulted (`bpf_get_numa_node_id`).
    pub cpu_node: u32,
    /// `task_numa_fault`'s `mem_node`: the page's node after any migration.
    pub mem_node: i32,
    /// Pages the fault covered (1, or 512 for a transparent huge page).
    pub pages: u32,
    /// `task_numa_fault`'s `flags` (`TNF_*`).
    pub flags: u32,
    pub cpu: u32,
    /// [`GoidSource`] as an integer.
    pub goid_source: u32,
    pub goid: u64,
    /// The goroutine's creation PC (`g.gopc`) and start function (`g.startpc`); 0 for none.
    pub gopc: u64,
    pub start_pc: u64,
    /// The faulting data address (tracepoint `exceptions:page_fault_user`); 0 if not seen
    /// (a fault taken in kernel mode).
    pub addr: u64,
    /// The faulting instruction.
    pub ip: u64,
    /// Key of the user stack in [`NUMA_STACKS_MAP`], or `NO_STACK`.
    pub stack: u64,
    pub t_ns: u64,
}

impl NumaFaultEvent {
    pub fn is_local(&self) -> bool {
        self.flags & TNF_FAULT_LOCAL != 0
    }

    pub fn migrated(&self) -> bool {
        self.flags & TNF_MIGRATED != 0
    }
}

/// Indexes into [`NUMA_COUNTERS_MAP`] (per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumaCounter {
    /// Hint faults of traced processes.
    Faults = 0,
    /// Events delivered / lost because the ring buffer was full.
    EventsSent = 1,
    DropRingFull = 2,
    /// The user stack could not be read, or the stack map was full.
    StackUnreadable = 3,
    StackMapFull = 4,
    /// No data address: no `page_fault_user` of this fault (a hint fault taken in kernel
    /// mode, inside a syscall).
    NoFaultAddress = 5,
    /// No goroutine found for the fault.
    GoidUnknown = 6,
    /// A traced process's `page_fault_user` whose address or ip could not be read: its
    /// hint fault will count under [`NumaCounter::NoFaultAddress`].
    FaultUnreadable = 7,
    /// A traced process's user fault could not be stored in the per-thread map: its hint
    /// fault will count under [`NumaCounter::NoFaultAddress`].
    FaultNotRemembered = 8,
    /// A goroutine read through its `g` could not be cached: a later fault whose `g` is
    /// unreadable may find no goroutine.
    GoroutineNotCached = 9,
}

impl NumaCounter {
    pub const COUNT: u32 = 10;
    pub const ALL: [NumaCounter; Self::COUNT as usize] = [
        NumaCounter::Faults,
        NumaCounter::EventsSent,
        NumaCounter::DropRingFull,
        NumaCounter::StackUnreadable,
        NumaCounter::StackMapFull,
        NumaCounter::NoFaultAddress,
        NumaCounter::GoidUnknown,
        NumaCounter::FaultUnreadable,
        NumaCounter::FaultNotRemembered,
        NumaCounter::GoroutineNotCached,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NumaCounter::Faults => "faults",
            NumaCounter::EventsSent => "events_sent",
            NumaCounter::DropRingFull => "ring_full",
            NumaCounter::StackUnreadable => "stack_unreadable",
            NumaCounter::StackMapFull => "stack_map_full",
            NumaCounter::NoFaultAddress => "no_fault_address",
            NumaCounter::GoidUnknown => "goid_unknown",
            NumaCounter::FaultUnreadable => "fault_unreadable",
            NumaCounter::FaultNotRemembered => "fault_not_remembered",
            NumaCounter::GoroutineNotCached => "goroutine_not_cached",
        }
    }
}

pub const NUMA_CONFIG_MAP: &str = "NUMA_CONFIG";
pub const NUMA_COUNTERS_MAP: &str = "NUMA_COUNTERS";
pub const NUMA_STACKS_MAP: &str = "NUMA_STACKS";
pub const NUMA_EVENTS_MAP: &str = "NUMA_EVENTS";

pub const TASK_NUMA_FAULT_PROGRAM: &str = "task_numa_fault";
pub const PAGE_FAULT_USER_PROGRAM: &str = "page_fault_user";

pub const MAX_NUMA_STACKS: u32 = 16_384;
/// Last fault address per thread.
pub const MAX_FAULTING_THREADS: u32 = 16_384;
/// Goroutines remembered by `g` address.
pub const MAX_CACHED_GOROUTINES: u32 = 65_536;
/// ~40k events of headroom; userspace drains it every 100 ms.
pub const NUMA_EVENTS_BYTES: u32 = 1 << 22;

#[cfg(feature = "user")]
mod numa_user {
    use super::*;
    // SAFETY: `#[repr(C)]`, `Copy`, integers only, no implicit padding: every bit pattern
    // is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for NumaConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NumaFaultEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CachedGoroutine {}
}

#[cfg(test)]
mod numa_tests {
    use super::*;

    #[test]
    fn numa_layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<NumaConfig>(), 24);
        assert_eq!(core::mem::size_of::<NumaFaultEvent>(), 8 * 4 + 7 * 8);
        assert_eq!(core::mem::size_of::<CachedGoroutine>(), 32);
    }

    #[test]
    fn numa_counters_are_listed_in_order() {
        for (i, c) in NumaCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn locality_follows_the_kernel_flags() {
        let mut e = NumaFaultEvent {
            flags: TNF_FAULT_LOCAL,
            ..Default::default()
        };
        assert!(e.is_local() && !e.migrated());
        e.flags = TNF_MIGRATED;
        assert!(!e.is_local() && e.migrated());
    }
}
