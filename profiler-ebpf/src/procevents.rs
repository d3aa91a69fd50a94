//! Process execs and exits for the agent's discovery: raw tracepoints on the scheduler
//! (no tracefs needed), one small record per event through a ring buffer.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use gomemtrace_common::{PROC_EVENTS_BYTES, PROC_EXEC, PROC_EXIT, ProcCounter, ProcEvent};

#[map(name = "PROC_EVENTS")]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(PROC_EVENTS_BYTES, 0);

#[map(name = "PROC_COUNTERS")]
static PROC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProcCounter::COUNT, 0);

#[inline(always)]
fn count(counter: ProcCounter) {
    if let Some(slot) = PROC_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot of this CPU; a BPF program does not migrate while running.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn send(kind: u32, tgid: u32) {
    if PROC_EVENTS.output(&ProcEvent { kind, tgid }, 0).is_err() {
        count(ProcCounter::DropRingFull);
    }
}

/// `sched_process_exec(p, old_pid, bprm)`: runs in the task that exec'd, whose thread
/// group is then a single thread (pid = tgid).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    count(ProcCounter::Execs);
    send(PROC_EXEC, tgid);
    0
}

/// `sched_process_exit(p, ...)`: runs in each exiting thread; only the thread-group
/// leader's exit ends the process as far as the agent cares.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid != pid {
        return 0;
    }
    count(ProcCounter::Exits);
    send(PROC_EXIT, tgid);
    0
}
