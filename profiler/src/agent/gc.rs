//! GC cycles of every traced process: the `gctrace` probes (one loaded object, keyed by
//! pid), each finished cycle turned into metrics — cycles, stop-the-world pauses, mark
//! assist time, and the heap live and goal where the binary's symbols locate the
//! runtime's globals.

use std::{collections::HashMap, sync::Arc};

use gomemtrace_common::{GcCounter, GcEvent};

use crate::{
    agent::{attachments::Process, metadata::Labels, metrics::Metrics},
    bpf::{Bpf, GcProbes},
    gc::{
        Plan,
        layout::{Slot, Values},
    },
};

struct Traced {
    labels: Labels,
    plan: Arc<Plan>,
    /// The latest cycle's heap marked live and goal, in bytes.
    heap_live: Option<f64>,
    heap_goal: Option<f64>,
}

pub struct GcTracker {
    pub probes: GcProbes,
    traced: HashMap<u32, Traced>,
}

impl GcTracker {
    pub fn new(bpf: &Bpf) -> anyhow::Result<Self> {
        Ok(Self {
            probes: GcProbes::new(bpf)?,
            traced: HashMap::new(),
        })
    }

    /// Attaches the GC probes to `process`; false where they cannot be.
    pub fn attach(&mut self, process: &Process) -> bool {
        let Some(plan) = process.runtime.gc.clone() else {
            return false;
        };
        let pid = process.pid;
        let attached = plan
            .config(process.binary(), process.bias)
            .map_err(anyhow::Error::from)
            .and_then(|config| self.probes.configure(pid, &config))
            .and_then(|()| {
                for point in &plan.attach {
                    self.probes
                        .attach(point.program, &process.exe.link, point.file_offset, pid)?;
                }
                Ok(())
            });
        if attached.is_err() {
            let _ = self.probes.forget_pid(pid);
            return false;
        }
        self.traced.insert(
            pid,
            Traced {
                labels: process.labels.clone(),
                plan,
                heap_live: None,
                heap_goal: None,
            },
        );
        true
    }

    pub fn detach(&mut self, pid: u32, metrics: &Metrics) {
        if let Some(gone) = self.traced.remove(&pid) {
            let _ = self.probes.forget_pid(pid);
            self.publish_heap(&gone.labels, metrics);
        }
    }

    /// Turns the cycles that finished since the last call into metrics.
    pub fn drain(&mut self, metrics: &Metrics) {
        let events: Vec<GcEvent> = self.probes.drain();
        let mut touched = Vec::new();
        for event in events {
            let Some(traced) = self.traced.get_mut(&event.tgid) else {
                continue;
            };
            let values = traced.labels.values();
            let v = Values::decode(&traced.plan.globals, &event.slots);
            metrics.gc_cycles.with_label_values(&values).inc();
            metrics
                .gc_pause
                .with_label_values(&values)
                .observe(event.pause_ns as f64 / 1e9);
            if let Some(assist_ns) = v.get(Slot::AssistTime) {
                metrics
                    .gc_assist_seconds
                    .with_label_values(&values)
                    .inc_by(assist_ns as f64 / 1e9);
            }
            traced.heap_live = v.get(Slot::Heap2).map(|b| b as f64).or(traced.heap_live);
            traced.heap_goal = v
                .get(Slot::LastHeapGoal)
                .map(|b| b as f64)
                .or(traced.heap_goal);
            touched.push(traced.labels.clone());
        }
        touched.sort();
        touched.dedup();
        for labels in touched {
            self.publish_heap(&labels, metrics);
        }
    }

    /// Heap gauges of a label set: the sum over its processes that reported one.
    fn publish_heap(&self, labels: &Labels, metrics: &Metrics) {
        let mine = || self.traced.values().filter(|t| &t.labels == labels);
        for (gauge, value) in [
            (
                &metrics.heap_live,
                mine().filter_map(|t| t.heap_live).reduce(|a, b| a + b),
            ),
            (
                &metrics.heap_goal,
                mine().filter_map(|t| t.heap_goal).reduce(|a, b| a + b),
            ),
        ] {
            match value {
                Some(v) => gauge.with_label_values(&labels.values()).set(v),
                None => {
                    let _ = gauge.remove_label_values(&labels.values());
                }
            }
        }
    }

    /// (ring buffer full, state map full) cycles lost so far.
    pub fn lost(&self) -> (u64, u64) {
        self.probes
            .counters()
            .map(|c| {
                (
                    c[GcCounter::DropRingFull as usize],
                    c[GcCounter::DropStateMapFull as usize],
                )
            })
            .unwrap_or_default()
    }
}
