//! Remote NUMA accesses of every traced process, where the machine can measure them
//! (`gomemtrace numa`'s hint-fault method, docs/NUMA.md): one fentry on `task_numa_fault`
//! for all processes, each fault counted as remote or local for its process's labels.
//! Where it cannot (one node, NUMA balancing off, the kernel refuses the fentry), the
//! agent says why once and `gomemtrace_agent_numa_available` is 0: no series of zeros.

use std::{collections::HashMap, path::Path};

use gomemtrace_common::NumaCounter;

use crate::{
    agent::{attachments::Process, metadata::Labels, metrics::Metrics},
    bpf::{self, Bpf, NumaProbes},
    numa::{availability::NumaHost, btf},
};

/// Why remote NUMA accesses cannot be measured on this machine: every reason found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Unavailable(pub Vec<String>);

pub struct NumaTracker {
    probes: NumaProbes,
    /// `task_struct.thread.fsbase`, for the TLS fallback (0: none).
    task_fsbase: u32,
    labels: HashMap<u32, Labels>,
    /// Ring-buffer drops already counted.
    lost_seen: u64,
}

impl NumaTracker {
    /// The tracker, or why remote accesses cannot be measured here.
    pub fn new(bpf: &Bpf) -> Result<Self, Unavailable> {
        let mut reasons = NumaHost::read(Path::new("/")).reasons();
        let probes = match NumaProbes::load(bpf) {
            Ok(p) => Some(p),
            Err(why) => {
                reasons.push(why.to_string());
                None
            }
        };
        match probes {
            Some(probes) if reasons.is_empty() => Ok(Self {
                probes,
                task_fsbase: btf::task_fsbase_offset(Path::new("/sys/kernel/btf/vmlinux"))
                    .unwrap_or(0),
                labels: HashMap::new(),
                lost_seen: 0,
            }),
            _ => Err(Unavailable(reasons)),
        }
    }

    pub fn attach(&mut self, process: &Process) -> bool {
        let config = bpf::numa_config(&process.runtime.offsets, self.task_fsbase);
        if self.probes.configure(process.pid, &config).is_err() {
            return false;
        }
        self.labels.insert(process.pid, process.labels.clone());
        true
    }

    pub fn detach(&mut self, pid: u32, metrics: &Metrics) {
        self.drain(metrics);
        if self.labels.remove(&pid).is_some() {
            let _ = self.probes.forget_pid(pid);
        }
    }

    /// Counts the faults since the last call.
    pub fn drain(&mut self, metrics: &Metrics) {
        for event in self.probes.drain() {
            let Some(labels) = self.labels.get(&event.tgid) else {
                continue;
            };
            let v = labels.values();
            let locality = if event.is_local() { "local" } else { "remote" };
            metrics
                .numa_hint_faults
                .with_label_values(&crate::agent::metrics::with(&v, locality))
                .inc();
        }
        let _ = self.probes.clear_stacks();
        if let Ok(c) = self.probes.counters() {
            Metrics::advance(
                &metrics.drops.with_label_values(&["numa_ring_full"]),
                &mut self.lost_seen,
                c[NumaCounter::DropRingFull as usize],
            );
        }
    }

    /// Entries of its per-process map.
    pub fn map_entries(&self) -> (&'static str, usize) {
        (gomemtrace_common::NUMA_CONFIG_MAP, self.probes.configured())
    }
}
