//! Loader of the process exec/exit programs (profiler-ebpf/src/procevents.rs): the agent's
//! discovery after its first /proc scan. Like [`crate::probes`], it talks to the kernel's
//! BPF interfaces.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use gomemtrace_common::{
    PROC_COUNTERS_MAP, PROC_EVENTS_MAP, PROC_EXEC, PROC_EXEC_PROGRAM, PROC_EXIT, PROC_EXIT_PROGRAM,
    ProcCounter, ProcEvent,
};

/// What happened to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Exec(u32),
    Exit(u32),
}

pub struct ProcEvents {
    /// Owns the programs and their links: dropping it detaches them.
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl ProcEvents {
    /// Loads both programs and attaches them to the scheduler's raw tracepoints.
    pub fn attach() -> anyhow::Result<Self> {
        let mut ebpf = crate::probes::load_object()?;
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
        let events = RingBuf::try_from(
            ebpf.take_map(PROC_EVENTS_MAP)
                .context("PROC_EVENTS map missing from the eBPF object")?,
        )?;
        Ok(Self { ebpf, events })
    }

    /// The execs and exits since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<Lifecycle> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<ProcEvent>() {
                continue;
            }
            // SAFETY: written by `PROC_EVENTS.output` with a `ProcEvent` (repr(C), two
            // u32); read_unaligned copes with the record's alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcEvent>()) };
            match event.kind {
                PROC_EXEC => out.push(Lifecycle::Exec(event.tgid)),
                PROC_EXIT => out.push(Lifecycle::Exit(event.tgid)),
                _ => {}
            }
        }
        out
    }

    /// Counters summed over CPUs, indexed by [`ProcCounter`].
    pub fn counters(&self) -> anyhow::Result<[u64; ProcCounter::COUNT as usize]> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(PROC_COUNTERS_MAP)
                .context("PROC_COUNTERS map")?,
        )?;
        let mut counters = [0; ProcCounter::COUNT as usize];
        for counter in ProcCounter::ALL {
            counters[counter as usize] = map.get(&(counter as u32), 0)?.iter().sum();
        }
        Ok(counters)
    }
}
