//! Loader of the NUMA hint-fault programs (profiler-ebpf/src/numa.rs): the fentry on
//! `task_numa_fault` and the `exceptions:page_fault_user` tracepoint. Like
//! [`crate::probes`], the only place of this view that talks to the kernel's BPF
//! interfaces.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, TracePoint},
};
use gomemtrace_common::{
    NUMA_CONFIG_MAP, NUMA_COUNTERS_MAP, NUMA_EVENTS_MAP, NUMA_STACKS_MAP, NumaConfig, NumaCounter,
    NumaFaultEvent, PAGE_FAULT_USER_PROGRAM, TASK_NUMA_FAULT_PROGRAM, UserStack,
};

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
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl NumaProbes {
    /// Loads and attaches both programs. Their error says, in a few words, why the kernel
    /// refused (it becomes the reason in `NUMA: not available (...)`).
    pub fn load() -> Result<Self, String> {
        let bytecode = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gomemtrace-probes"));
        let mut ebpf = Ebpf::load(bytecode).map_err(|e| why("loading the eBPF object", &e))?;
        let btf = Btf::from_sys_fs().map_err(|e| why("reading the kernel's BTF", &e))?;
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
        fentry.attach().map_err(|e| refused(&e))?;
        let tracepoint: &mut TracePoint = ebpf
            .program_mut(PAGE_FAULT_USER_PROGRAM)
            .ok_or("tracepoint program missing from the eBPF object")?
            .try_into()
            .map_err(|e| why("tracepoint program", &e))?;
        let refused =
            |e: &(dyn std::error::Error + 'static)| why("tracepoint exceptions:page_fault_user", e);
        tracepoint.load().map_err(|e| refused(&e))?;
        tracepoint
            .attach("exceptions", "page_fault_user")
            .map_err(|e| refused(&e))?;
        let events = ebpf
            .take_map(NUMA_EVENTS_MAP)
            .ok_or("NUMA_EVENTS map missing from the eBPF object")
            .and_then(|m| RingBuf::try_from(m).map_err(|_| "NUMA_EVENTS is not a ring buffer"))?;
        Ok(Self { ebpf, events })
    }

    pub fn configure(&mut self, pid: u32, config: &NumaConfig) -> anyhow::Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, NumaConfig> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(NUMA_CONFIG_MAP)
                .context("NUMA_CONFIG map")?,
        )?;
        map.insert(&pid, config, 0).context("write probe config")?;
        Ok(())
    }

    /// Deletes `pid`'s settings: its faults are no longer recorded (the agent, when the
    /// process exited).
    pub fn forget_pid(&mut self, pid: u32) -> anyhow::Result<()> {
        crate::probes::remove_keys::<u32, NumaConfig>(&mut self.ebpf, NUMA_CONFIG_MAP, |p| {
            *p == pid
        })
    }

    /// Deletes every stored stack (the agent counts faults and never reads them).
    pub fn clear_stacks(&mut self) -> anyhow::Result<()> {
        crate::probes::remove_keys::<u64, UserStack>(&mut self.ebpf, NUMA_STACKS_MAP, |_| true)
    }

    /// Processes configured now.
    pub fn configured(&self) -> usize {
        crate::probes::count_keys::<u32, NumaConfig>(&self.ebpf, NUMA_CONFIG_MAP, |_| true)
            .unwrap_or(0)
    }

    /// Hint-fault events sent since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<NumaFaultEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<NumaFaultEvent>() {
                // SAFETY: the record was written by `NUMA_EVENTS.output` with a
                // `NumaFaultEvent` (repr(C), integers only, any bit pattern valid).
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<NumaFaultEvent>())
                });
            }
        }
        events
    }

    /// The stored user stacks with these keys (leaf first).
    pub fn stacks(
        &self,
        keys: impl Iterator<Item = u64>,
    ) -> anyhow::Result<HashMap<u64, Vec<u64>>> {
        let map: BpfHashMap<&MapData, u64, UserStack> =
            BpfHashMap::try_from(self.ebpf.map(NUMA_STACKS_MAP).context("NUMA_STACKS map")?)?;
        let mut out = HashMap::new();
        for key in keys.filter(|&k| k != gomemtrace_common::NO_STACK) {
            if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(key)
                && let Ok(stack) = map.get(&key, 0)
            {
                slot.insert(stack.pcs().to_vec());
            }
        }
        Ok(out)
    }

    pub fn counters(&self) -> anyhow::Result<NumaCounters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(NUMA_COUNTERS_MAP)
                .context("NUMA_COUNTERS map")?,
        )?;
        let mut counters = [0; NumaCounter::COUNT as usize];
        for c in NumaCounter::ALL {
            counters[c as usize] = map.get(&(c as u32), 0)?.iter().sum();
        }
        Ok(counters)
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
