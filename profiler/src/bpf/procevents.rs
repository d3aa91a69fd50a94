//! The process exec/exit programs (profiler-ebpf/src/procevents.rs): the agent's
//! discovery after its first /proc scan.

use anyhow::Context as _;
use aya::programs::RawTracePoint;
use gomemtrace_common::{
    PROC_COUNTERS_MAP, PROC_EVENTS_MAP, PROC_EXEC, PROC_EXEC_PROGRAM, PROC_EXIT, PROC_EXIT_PROGRAM,
    ProcCounter, ProcEvent,
};

use super::{Bpf, drain};

/// What happened to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Exec(u32),
    Exit(u32),
}

pub struct ProcEvents {
    bpf: Bpf,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

impl ProcEvents {
    /// Loads both programs of `bpf` and attaches them to the scheduler's raw tracepoints
    /// (they stay attached as long as the object is loaded).
    pub fn attach(bpf: &Bpf) -> anyhow::Result<Self> {
        bpf.with(|ebpf| {
            for (name, tracepoint) in [
                (PROC_EXEC_PROGRAM, "sched_process_exec"),
                (PROC_EXIT_PROGRAM, "sched_process_exit"),
            ] {
                let program: &mut RawTracePoint = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the eBPF object"))?
                    .try_into()?;
                program
                    .load()
                    .with_context(|| format!("verify the {name} program"))?;
                program
                    .attach(tracepoint)
                    .with_context(|| format!("attach raw tracepoint {tracepoint}"))?;
            }
            anyhow::Ok(())
        })?;
        Ok(Self {
            bpf: bpf.clone(),
            events: bpf.take_ring(PROC_EVENTS_MAP)?,
        })
    }

    /// The execs and exits since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<Lifecycle> {
        drain::<ProcEvent>(&mut self.events)
            .into_iter()
            .filter_map(|event| match event.kind {
                PROC_EXEC => Some(Lifecycle::Exec(event.tgid)),
                PROC_EXIT => Some(Lifecycle::Exit(event.tgid)),
                _ => None,
            })
            .collect()
    }

    /// Counters summed over CPUs, indexed by [`ProcCounter`].
    pub fn counters(&self) -> anyhow::Result<[u64; ProcCounter::COUNT as usize]> {
        self.bpf.counters(PROC_COUNTERS_MAP)
    }
}
