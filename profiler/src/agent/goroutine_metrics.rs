//! Goroutine metrics of every traced process: its goroutines read at each harvest
//! ([`super::goroutines`]), summed per label set; goroutines created counted from the ids
//! the runtime handed out since attach.

use std::collections::HashMap;

use super::goroutines::{CountError, StartClassifier, count, ids_handed_out};

/// What one [`GoroutineTracker::harvest`] could not read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unread {
    /// Processes whose memory could not be read: not counted this time.
    pub processes: u64,
    /// Processes whose `runtime.allgs` header is impossible (length beyond its capacity
    /// or the goroutine ids handed out): not counted this time, nothing read through it.
    pub bad_allgs: u64,
    /// `g`s in `allgs` with no valid status word: counted neither user nor runtime.
    pub records: u64,
}

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

    /// Reads every process's goroutines and sets the metrics; returns what could not be
    /// read.
    pub fn harvest<'a>(
        &mut self,
        processes: impl Iterator<Item = &'a std::sync::Arc<crate::agent::attachments::Process>>,
        metrics: &crate::agent::metrics::Metrics,
    ) -> Unread {
        self.last = Some(std::time::Instant::now());
        let mut sums: HashMap<crate::agent::metadata::Labels, (u64, u64)> = HashMap::new();
        let mut unread = Unread::default();
        for process in processes {
            let (Some(layout), Some(bias)) = (process.runtime.goroutines, process.bias) else {
                continue;
            };
            let classifier = self.classifiers.entry(process.exe.id).or_default();
            let count = match count(process.pid, &layout, bias, process.binary(), classifier) {
                Ok(count) => count,
                Err(CountError::Read(_)) => {
                    unread.processes += 1;
                    continue;
                }
                Err(CountError::BadLength { .. }) => {
                    unread.bad_allgs += 1;
                    continue;
                }
            };
            unread.records += count.invalid;
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
        unread
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
