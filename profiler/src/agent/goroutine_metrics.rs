//! Goroutine metrics of every traced process: its goroutines read at each harvest
//! ([`super::goroutines`]), summed per label set; goroutines created counted from the ids
//! the runtime handed out since attach.

use std::collections::HashMap;

use super::goroutines::{StartClassifier, count, ids_handed_out};

/// Goroutine metrics of every traced process, read every [`GoroutineTracker::EVERY`].
#[derive(Default)]
pub struct GoroutineTracker {
    classifiers: HashMap<crate::agent::discovery::ExeId, StartClassifier>,
    /// Per process: the ids handed out at the previous reading.
    ids: HashMap<u32, u64>,
    /// Label sets whose gauges are set now.
    published: std::collections::HashSet<crate::agent::metadata::Labels>,
    last: Option<std::time::Instant>,
}

impl GoroutineTracker {
    /// Between readings: a reading costs a few system calls per thousand goroutines.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= Self::EVERY)
    }

    /// Reads every process's goroutines and sets the metrics; returns the processes
    /// whose memory could not be read.
    pub fn harvest<'a>(
        &mut self,
        processes: impl Iterator<Item = &'a std::sync::Arc<crate::agent::attachments::Process>>,
        metrics: &crate::agent::metrics::Metrics,
    ) -> u64 {
        self.last = Some(std::time::Instant::now());
        let mut sums: HashMap<crate::agent::metadata::Labels, (u64, u64)> = HashMap::new();
        let mut unreadable = 0;
        for process in processes {
            let (Some(layout), Some(bias)) = (process.runtime.goroutines, process.bias) else {
                continue;
            };
            let classifier = self.classifiers.entry(process.exe.id).or_default();
            let Ok(count) = count(process.pid, &layout, bias, process.binary(), classifier) else {
                unreadable += 1;
                continue;
            };
            let sum = sums.entry(process.labels.clone()).or_default();
            sum.0 += count.user;
            sum.1 += count.runtime;
            if let Some(ids) = count.ids_handed_out {
                // The first reading is the baseline: counted since attach.
                let last = self.ids.entry(process.pid).or_insert(ids);
                if ids > *last {
                    metrics
                        .goroutines_created
                        .with_label_values(&process.labels.values())
                        .inc_by((ids - *last) as f64);
                    *last = ids;
                }
            }
        }
        for labels in self.published.difference(&sums.keys().cloned().collect()) {
            let v = labels.values();
            for kind in ["user", "runtime"] {
                let _ = metrics
                    .goroutines
                    .remove_label_values(&crate::agent::metrics::with(&v, kind));
            }
        }
        for (labels, (user, runtime)) in &sums {
            let v = labels.values();
            for (kind, n) in [("user", user), ("runtime", runtime)] {
                metrics
                    .goroutines
                    .with_label_values(&crate::agent::metrics::with(&v, kind))
                    .set(*n as f64);
            }
        }
        self.published = sums.into_keys().collect();
        unreadable
    }

    /// A process attached: its ids handed out so far are the baseline of its count.
    pub fn attached(&mut self, process: &crate::agent::attachments::Process) {
        let (Some(layout), Some(bias)) = (process.runtime.goroutines, process.bias) else {
            return;
        };
        if let Some(ids) = ids_handed_out(process.pid, &layout, bias) {
            self.ids.insert(process.pid, ids);
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.ids.remove(&pid);
    }
}
