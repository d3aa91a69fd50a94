//! The NUMA hint-fault programs (profiler-ebpf/src/numa.rs): the fentry on
//! `task_numa_fault` and the `exceptions:page_fault_user` tracepoint.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Btf,
    programs::{FEntry, TracePoint, fentry::FEntryLinkId, trace_point::TracePointLinkId},
};
use gomemtrace_common::{
    NUMA_CONFIG_MAP, NUMA_COUNTERS_MAP, NUMA_EVENTS_MAP, NUMA_STACKS_MAP, NumaConfig, NumaCounter,
    NumaFaultEvent, PAGE_FAULT_USER_PROGRAM, TASK_NUMA_FAULT_PROGRAM, UserStack,
};

use super::{Bpf, drain};

pub type NumaCounters = [u64; NumaCounter::COUNT as usize];

/// The kernel function whose calls are the hint faults.
pub const HINT_FAULT_FUNCTION: &str = "task_numa_fault";

/// The probe's settings for a process whose runtime has offsets `o`; `task_fsbase` is
/// `task_struct.thread.fsbase` (0: no TLS fallback).
pub fn config(o: &gomemtrace_gobin::offsets::RuntimeOffsets, task_fsbase: u32) -> NumaConfig {
    NumaConfig {
        g_goid: o.g_goid,
        g_m: o.g_m,
        m_curg: o.m_curg,
        g_gopc: o.g_gopc,
        g_startpc: o.g_startpc,
        task_fsbase,
    }
}

pub struct NumaProbes {
    bpf: Bpf,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    /// Both programs run for every process of the machine: detached when the handle goes.
    fentry: Option<FEntryLinkId>,
    tracepoint: Option<TracePointLinkId>,
}

impl NumaProbes {
    /// Loads and attaches both programs of `bpf`. Their error says, in a few words, why
    /// the kernel refused (it becomes the reason in `NUMA: not available (...)`).
    pub fn load(bpf: &Bpf) -> Result<Self, Refused> {
        let btf = Btf::from_sys_fs().map_err(|e| why("reading the kernel's BTF", &e))?;
        let events = bpf
            .take_ring(NUMA_EVENTS_MAP)
            .map_err(|e| format!("{e:#}"))?;
        // Built before attaching, so that a refusal half way detaches what was attached.
        let mut probes = Self {
            bpf: bpf.clone(),
            events,
            fentry: None,
            tracepoint: None,
        };
        probes.fentry = Some(bpf.with(|ebpf| {
            let fentry: &mut FEntry = ebpf
                .program_mut(TASK_NUMA_FAULT_PROGRAM)
                .ok_or("fentry program missing from the eBPF object")?
                .try_into()
                .map_err(|e| why("fentry program", &e))?;
            let refused = |e: &(dyn std::error::Error + 'static)| {
                why(&format!("fentry on {HINT_FAULT_FUNCTION}"), e)
            };
            fentry
                .load(HINT_FAULT_FUNCTION, &btf)
                .map_err(|e| refused(&e))?;
            fentry.attach().map_err(|e| refused(&e))
        })?);
        probes.tracepoint = Some(bpf.with(|ebpf| {
            let tracepoint: &mut TracePoint = ebpf
                .program_mut(PAGE_FAULT_USER_PROGRAM)
                .ok_or("tracepoint program missing from the eBPF object")?
                .try_into()
                .map_err(|e| why("tracepoint program", &e))?;
            let refused = |e: &(dyn std::error::Error + 'static)| {
                why("tracepoint exceptions:page_fault_user", e)
            };
            tracepoint.load().map_err(|e| refused(&e))?;
            tracepoint
                .attach("exceptions", "page_fault_user")
                .map_err(|e| refused(&e))
        })?);
        Ok(probes)
    }

    pub fn configure(&mut self, pid: u32, config: &NumaConfig) -> anyhow::Result<()> {
        self.bpf
            .insert(NUMA_CONFIG_MAP, &pid, config)
            .context("write probe config")
    }

    /// Deletes `pid`'s settings: its faults are no longer recorded (the agent, when the
    /// process exited).
    pub fn forget_pid(&mut self, pid: u32) -> anyhow::Result<()> {
        self.bpf
            .remove_keys::<u32, NumaConfig>(NUMA_CONFIG_MAP, |p| *p == pid)
    }

    /// Deletes every stored stack (the agent counts faults and never reads them).
    pub fn clear_stacks(&mut self) -> anyhow::Result<()> {
        self.bpf
            .remove_keys::<u64, UserStack>(NUMA_STACKS_MAP, |_| true)
    }

    /// Processes configured now.
    pub fn configured(&self) -> usize {
        self.bpf.count_keys::<u32, NumaConfig>(NUMA_CONFIG_MAP)
    }

    /// Hint-fault events sent since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<NumaFaultEvent> {
        drain(&mut self.events)
    }

    /// The stored user stacks with these keys (leaf first).
    pub fn stacks(
        &self,
        keys: impl Iterator<Item = u64>,
    ) -> anyhow::Result<HashMap<u64, Vec<u64>>> {
        self.bpf.stacks::<UserStack>(NUMA_STACKS_MAP, keys)
    }

    pub fn counters(&self) -> anyhow::Result<NumaCounters> {
        self.bpf.counters(NUMA_COUNTERS_MAP)
    }
}

impl Drop for NumaProbes {
    fn drop(&mut self) {
        let (fentry, tracepoint) = (self.fentry.take(), self.tracepoint.take());
        self.bpf.with(|ebpf| {
            if let Some(link) = fentry
                && let Some(Ok(program)) = ebpf
                    .program_mut(TASK_NUMA_FAULT_PROGRAM)
                    .map(<&mut FEntry>::try_from)
            {
                let _ = program.detach(link);
            }
            if let Some(link) = tracepoint
                && let Some(Ok(program)) = ebpf
                    .program_mut(PAGE_FAULT_USER_PROGRAM)
                    .map(<&mut TracePoint>::try_from)
            {
                let _ = program.detach(link);
            }
        });
    }
}

/// Why the kernel refused the NUMA programs, in a few words (it becomes the reason in
/// `NUMA: not available (...)`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        Refused(reason)
    }
}

impl From<&str> for Refused {
    fn from(reason: &str) -> Self {
        Refused(reason.to_string())
    }
}

/// `what` refused: the errno's name where the error chain carries one, else its text.
fn why(what: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(errno) = io.raw_os_error()
        {
            let hint = match errno {
                libc::EPERM => ": kernel lockdown or a BPF LSM policy",
                libc::ENOENT | libc::ESRCH => ": not in this kernel's BTF",
                libc::EOPNOTSUPP | 524 => ": no ftrace direct calls",
                _ => "",
            };
            let text = io.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            return format!("{what} refused: {text} (errno {errno}{hint})");
        }
        source = e.source();
    }
    format!("{what} failed: {err}")
}
