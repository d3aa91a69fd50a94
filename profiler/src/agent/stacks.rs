//! Stack copies of every traced process: one uprobe at the entry of `runtime.copystack`
//! per process (profiler-ebpf/src/rt.rs in totals-only mode: no stack walk, no event),
//! adding to per-process totals that each harvest turns into counters.

use std::collections::HashMap;

use gomemtrace_common::{COPYSTACK_ENTRY_PROGRAM, StackTotals};

use crate::{
    agent::{attachments::Process, metadata::Labels, metrics::Metrics},
    bpf::{Bpf, RtProbes},
};

struct Traced {
    labels: Labels,
    /// Totals already added to the counters.
    counted: StackTotals,
}

pub struct StackTracker {
    pub probes: RtProbes,
    traced: HashMap<u32, Traced>,
}

impl StackTracker {
    pub fn new(bpf: &Bpf) -> anyhow::Result<Self> {
        Ok(Self {
            probes: RtProbes::new(bpf, &[COPYSTACK_ENTRY_PROGRAM])?,
            traced: HashMap::new(),
        })
    }

    /// Attaches the copystack probe to `process`; false where it cannot be.
    pub fn attach(&mut self, process: &Process) -> bool {
        let Some((config, offset)) = process.runtime.copystack else {
            return false;
        };
        let pid = process.pid;
        let attached = self.probes.configure(pid, &config).and_then(|()| {
            self.probes
                .attach(COPYSTACK_ENTRY_PROGRAM, &process.exe.link, offset, pid)
        });
        if attached.is_err() {
            let _ = self.probes.forget_pid(pid);
            return false;
        }
        self.traced.insert(
            pid,
            Traced {
                labels: process.labels.clone(),
                counted: StackTotals::default(),
            },
        );
        true
    }

    /// Counts what `pid` did since the last harvest, then removes its probe and entries.
    pub fn detach(&mut self, pid: u32, metrics: &Metrics) {
        self.harvest_one(pid, metrics);
        if self.traced.remove(&pid).is_some() {
            let _ = self.probes.forget_pid(pid);
        }
    }

    /// Adds every process's copies since the last call to the counters.
    pub fn harvest(&mut self, metrics: &Metrics) {
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            self.harvest_one(pid, metrics);
        }
    }

    fn harvest_one(&mut self, pid: u32, metrics: &Metrics) {
        let (Some(traced), Some(now)) = (self.traced.get_mut(&pid), self.probes.stack_totals(pid))
        else {
            return;
        };
        let values = traced.labels.values();
        let before = traced.counted;
        for (counter, now, before) in [
            (&metrics.stack_growths, now.growths, before.growths),
            (
                &metrics.stack_growth_bytes,
                now.growth_bytes,
                before.growth_bytes,
            ),
            (&metrics.stack_shrinks, now.shrinks, before.shrinks),
        ] {
            if now > before {
                counter
                    .with_label_values(&values)
                    .inc_by((now - before) as f64);
            }
        }
        traced.counted = now;
    }
}
