//! Process execs and exits for the agent's discovery: raw tracepoints on the scheduler
//! (no tracefs needed), one small record per event through a ring buffer.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use gomemtrace_common::{PROC_EVENTS_BYTES, PROC_EXEC, PROC_EXIT, ProcCounter, ProcEvent};

use crate::helpers::{count, counter_array, finish, tgid_pid};

#[map(name = "PROC_EVENTS")]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(PROC_EVENTS_BYTES, 0);

#[map(name = "PROC_COUNTERS")]
static PROC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProcCounter::COUNT, 0);

counter_array!(ProcCounter => PROC_COUNTERS);

#[inline(always)]
fn send(kind: u32, tgid: u32) -> Result<(), ProcCounter> {
    PROC_EVENTS
        .output(&ProcEvent { kind, tgid }, 0)
        .map_err(|_| ProcCounter::DropRingFull)
}

/// `sched_process_exec(p, old_pid, bprm)`: runs in the task that exec'd, whose thread
/// group is then a single thread (pid = tgid).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(_ctx: RawTracePointContext) -> i32 {
    finish(try_proc_exec()) as i32
}

#[inline(always)]
fn try_proc_exec() -> Result<(), ProcCounter> {
    count(ProcCounter::Execs);
    send(PROC_EXEC, tgid_pid().0)
}

/// `sched_process_exit(p, ...)`: runs in each exiting thread; only the thread-group
/// leader's exit ends the process as far as the agent cares.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    finish(try_proc_exit()) as i32
}

#[inline(always)]
fn try_proc_exit() -> Result<(), ProcCounter> {
    let (tgid, pid) = tgid_pid();
    if tgid != pid {
        return Ok(());
    }
    count(ProcCounter::Exits);
    send(PROC_EXIT, tgid)
}
