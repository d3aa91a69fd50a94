//! Allocation totals from the runtime's own counters (`crate::allocstats`), read at each
//! harvest for every traced process whose executable gives their layout, whatever its
//! mode: exact, and free for the traced process. `gomemtrace_allocated_*_total` of such a
//! process come from here (`source="runtime"`); where the counters cannot be read at
//! attach, from the probes as before (`source="probes"`). Frees and the live heap exist
//! only from here.

use std::collections::{HashMap, HashSet};

use crate::{
    agent::{attachments::Process, metadata::Labels, metrics::Metrics},
    alloc::runtime_counters::{self as allocstats, AllocCounters},
};

/// Where a process's allocation counters come from: the values of the `source` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Runtime,
    Probes,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Runtime => "runtime",
            Source::Probes => "probes",
        }
    }
}

/// Per process: the reading at attach and the part of it already added to the counters.
struct Tracked {
    baseline: AllocCounters,
    counted: AllocCounters,
}

#[derive(Default)]
pub struct AllocStatsTracker {
    tracked: HashMap<u32, Tracked>,
    /// Label sets whose heap gauges are set now.
    published: HashSet<Labels>,
}

impl AllocStatsTracker {
    /// A process attached: its counters now are the baseline (counters start at 0 when
    /// the agent attaches). Probes where they cannot be read.
    pub fn attach(&mut self, process: &Process) -> Source {
        let (Some(layout), Some(bias)) = (&process.runtime.alloc_stats, process.bias) else {
            return Source::Probes;
        };
        match allocstats::read(process.pid, layout, bias) {
            Ok(baseline) => {
                self.tracked.insert(
                    process.pid,
                    Tracked {
                        baseline,
                        counted: AllocCounters::default(),
                    },
                );
                Source::Runtime
            }
            Err(e) => {
                eprintln!(
                    "gomemtrace: agent: pid {}: the runtime's allocation counters: {e}; counting with the probes",
                    process.pid
                );
                Source::Probes
            }
        }
    }

    pub fn source(&self, pid: u32) -> Source {
        if self.tracked.contains_key(&pid) {
            Source::Runtime
        } else {
            Source::Probes
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.tracked.remove(&pid);
    }

    /// Reads every tracked process and moves its series; a failed reading is counted in
    /// `drops_total{reason="alloc_counters_<why>"}` and the series wait for the next.
    pub fn harvest<'a>(
        &mut self,
        processes: impl Iterator<Item = &'a std::sync::Arc<Process>>,
        metrics: &Metrics,
    ) {
        let mut heap: HashMap<Labels, (u64, u64)> = HashMap::new();
        // Label sets with a failed reading keep their gauges until the next one.
        let mut unread: HashSet<Labels> = HashSet::new();
        for process in processes {
            let Some(tracked) = self.tracked.get_mut(&process.pid) else {
                continue;
            };
            let (Some(layout), Some(bias)) = (&process.runtime.alloc_stats, process.bias) else {
                continue;
            };
            let now = match allocstats::read(process.pid, layout, bias) {
                Ok(now) => now,
                Err(e) => {
                    let reason = format!("alloc_counters_{}", e.reason());
                    metrics.drops.with_label_values(&[&reason]).inc();
                    unread.insert(process.labels.clone());
                    continue;
                }
            };
            let values = process.labels.values();
            let runtime = crate::agent::metrics::with(&values, Source::Runtime.name());
            let b = &tracked.baseline;
            let c = &mut tracked.counted;
            // Counters only go up: a reading that raced a flush can be a little low.
            for (counter, since, counted) in [
                (
                    metrics.allocated_bytes.with_label_values(&runtime),
                    now.alloc_bytes.saturating_sub(b.alloc_bytes),
                    &mut c.alloc_bytes,
                ),
                (
                    metrics.allocated_objects.with_label_values(&runtime),
                    now.alloc_objects.saturating_sub(b.alloc_objects),
                    &mut c.alloc_objects,
                ),
                (
                    metrics.freed_bytes.with_label_values(&values),
                    now.free_bytes.saturating_sub(b.free_bytes),
                    &mut c.free_bytes,
                ),
                (
                    metrics.freed_objects.with_label_values(&values),
                    now.free_objects.saturating_sub(b.free_objects),
                    &mut c.free_objects,
                ),
            ] {
                if since > *counted {
                    counter.inc_by((since - *counted) as f64);
                    *counted = since;
                }
            }
            let sum = heap.entry(process.labels.clone()).or_default();
            sum.0 += now.heap_objects();
            sum.1 += now.heap_bytes();
        }
        let now_published: HashSet<Labels> = heap.keys().chain(&unread).cloned().collect();
        for gone in self.published.difference(&now_published) {
            let _ = metrics.heap_objects.remove_label_values(&gone.values());
            let _ = metrics
                .heap_objects_bytes
                .remove_label_values(&gone.values());
        }
        for (labels, (objects, bytes)) in &heap {
            let v = labels.values();
            metrics
                .heap_objects
                .with_label_values(&v)
                .set(*objects as f64);
            metrics
                .heap_objects_bytes
                .with_label_values(&v)
                .set(*bytes as f64);
        }
        self.published = now_published;
    }
}
