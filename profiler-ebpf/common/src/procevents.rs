//! Process lifecycle events (`gomemtrace agent`): execs and exits of every process on the
//! host, from the scheduler's raw tracepoints, through a ring buffer.

/// [`ProcEvent::kind`]: the process replaced its image (`sched_process_exec`).
pub const PROC_EXEC: u32 = 1;
/// [`ProcEvent::kind`]: the thread-group leader exited (`sched_process_exit`).
pub const PROC_EXIT: u32 = 2;

/// One exec or exit, with the host (initial namespace) pid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
}

/// Indexes into [`PROC_COUNTERS_MAP`] (per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcCounter {
    Execs = 0,
    Exits = 1,
    /// The ring buffer was full: the event is lost (the agent's periodic /proc rescan
    /// catches up with it).
    DropRingFull = 2,
}

impl ProcCounter {
    pub const COUNT: u32 = 3;
    pub const ALL: [ProcCounter; Self::COUNT as usize] = [
        ProcCounter::Execs,
        ProcCounter::Exits,
        ProcCounter::DropRingFull,
    ];
}

pub const PROC_EVENTS_MAP: &str = "PROC_EVENTS";
pub const PROC_COUNTERS_MAP: &str = "PROC_COUNTERS";
pub const PROC_EXEC_PROGRAM: &str = "proc_exec";
pub const PROC_EXIT_PROGRAM: &str = "proc_exit";
pub const PROC_EVENTS_BYTES: u32 = 256 * 1024;

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, two u32: every bit pattern is valid, no padding.
unsafe impl aya::Pod for ProcEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<ProcEvent>(), 8);
    }
}
