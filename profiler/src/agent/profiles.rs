//! What the probes aggregated, per traced process, copied from the kernel maps at each
//! harvest: the metrics' totals and the pprof endpoints' windows (the difference of two
//! copies `seconds` apart) both come from here.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use gomemtrace_common::{AllocKey, AllocStats, NO_STACK};
use gomemtrace_report::model::{Mode, TargetInfo};

use crate::{
    agent::attachments::Process,
    alloc::collect::{self, CollectInput},
    bpf::{AllocProbes, Snapshot},
    engine::ExeMappings,
};

/// One process's cumulative tables since it was attached.
#[derive(Clone)]
pub struct Table {
    pub process: Arc<Process>,
    pub allocs: HashMap<AllocKey, AllocStats>,
    pub frees: HashMap<AllocKey, AllocStats>,
    /// Runtime-sampled mode: the process's `MemProfileRate` at its latest sample.
    pub rate: Option<u64>,
    /// Copied from the maps; false between attach and the next harvest.
    pub harvested: bool,
    /// Duty-cycled mode: the scaled estimate of everything allocated since attach (the
    /// maps hold only what the windows saw).
    pub duty_estimate: Option<Totals>,
}

/// (objects, bytes) estimates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub objects: f64,
    pub bytes: f64,
}

impl Table {
    /// A process just attached: nothing harvested yet.
    pub fn empty(process: Arc<Process>) -> Self {
        Table {
            process,
            allocs: HashMap::new(),
            frees: HashMap::new(),
            rate: None,
            harvested: false,
            duty_estimate: None,
        }
    }

    fn rate(&self) -> u64 {
        match self.process.mode() {
            Mode::Runtime => self.rate.unwrap_or(1),
            _ => 1,
        }
    }

    /// Allocated since attach: unbiased per key, as the one-process profiler does.
    pub fn allocated(&self) -> Totals {
        let rate = self.rate();
        let mut t = Totals::default();
        for stats in self.allocs.values() {
            let (objects, bytes) = collect::unbias(stats.objects, stats.bytes, rate);
            t.objects += objects as f64;
            t.bytes += bytes as f64;
        }
        t
    }

    /// Runtime-sampled mode: of what was allocated since attach, the bytes still live.
    pub fn sampled_inuse(&self) -> Option<f64> {
        if self.process.mode() != Mode::Runtime {
            return None;
        }
        let rate = self.rate();
        Some(
            self.allocs
                .iter()
                .map(|(key, stats)| {
                    let freed = self.frees.get(key).copied().unwrap_or_default();
                    collect::unbias(
                        stats.objects.saturating_sub(freed.objects),
                        stats.bytes.saturating_sub(freed.bytes),
                        rate,
                    )
                    .1 as f64
                })
                .sum(),
        )
    }
}

/// Every traced process's table and the stacks they refer to.
#[derive(Default)]
pub struct Tables {
    pub by_pid: HashMap<u32, Table>,
    /// Stack key → PCs, leaf first. Keys are hashes of the PCs, so one entry serves every
    /// process with that stack.
    pub stacks: HashMap<u64, Vec<u64>>,
}

impl Tables {
    /// Copies the maps of `processes` (the new tables replace the old ones).
    pub fn harvest(
        &mut self,
        probes: &AllocProbes,
        processes: &HashMap<u32, Arc<Process>>,
    ) -> anyhow::Result<()> {
        let mut by_pid: HashMap<u32, Table> = processes
            .iter()
            .map(|(&pid, process)| {
                let mut table = Table::empty(process.clone());
                table.harvested = true;
                (pid, table)
            })
            .collect();
        for (key, stats) in probes.allocs()? {
            if let Some(table) = by_pid.get_mut(&key.tgid) {
                table.allocs.insert(key, stats);
            }
        }
        for (key, stats) in probes.frees()? {
            if let Some(table) = by_pid.get_mut(&key.tgid) {
                table.frees.insert(key, stats);
            }
        }
        for (pid, rate) in probes.sample_rates()? {
            if let Some(table) = by_pid.get_mut(&pid) {
                table.rate = Some(rate);
            }
        }
        let used: HashSet<u64> = by_pid
            .values()
            .flat_map(|t| t.allocs.keys().chain(t.frees.keys()))
            .map(|k| k.stack)
            .filter(|&k| k != NO_STACK)
            .collect();
        // Stacks of exited processes go; new ones are read once.
        self.stacks.retain(|k, _| used.contains(k));
        for key in used {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.stacks.entry(key)
                && let Some(pcs) = probes.stack(key)
            {
                slot.insert(pcs);
            }
        }
        self.by_pid = by_pid;
        Ok(())
    }

    /// A process attached: the endpoints know it at once, not from the next harvest
    /// (its metric series already exist).
    pub fn attached(&mut self, pid: u32, process: Arc<Process>) {
        self.by_pid.insert(pid, Table::empty(process));
    }

    /// A process detached: its table goes with its metric series.
    pub fn detached(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

/// `later − earlier` per key (a window); keys absent from `earlier` count in full.
pub fn window(
    earlier: &HashMap<AllocKey, AllocStats>,
    later: &HashMap<AllocKey, AllocStats>,
) -> Vec<(AllocKey, AllocStats)> {
    later
        .iter()
        .filter_map(|(key, now)| {
            let before = earlier.get(key).copied().unwrap_or_default();
            let d = AllocStats {
                bytes: now.bytes.saturating_sub(before.bytes),
                objects: now.objects.saturating_sub(before.objects),
            };
            (d.objects > 0).then_some((*key, d))
        })
        .collect()
}

/// Scales what the duty cycle's windows saw to its estimate of everything allocated
/// meanwhile: each key keeps its share.
fn scale_to(allocs: &mut [(AllocKey, AllocStats)], estimate: Totals) {
    let (objects, bytes) = allocs
        .iter()
        .fold((0u64, 0u64), |(o, b), (_, s)| (o + s.objects, b + s.bytes));
    if objects == 0 || bytes == 0 {
        return;
    }
    let (fo, fb) = (
        estimate.objects.max(0.0) / objects as f64,
        estimate.bytes.max(0.0) / bytes as f64,
    );
    for (_, stats) in allocs.iter_mut() {
        stats.objects = (stats.objects as f64 * fo).round() as u64;
        stats.bytes = (stats.bytes as f64 * fb).round() as u64;
    }
}

/// A gzipped pprof profile of what `later` holds beyond `earlier` (`None`: since attach),
/// symbolized with the process's current mappings.
pub fn pprof(
    earlier: Option<&Table>,
    later: &Table,
    stacks: &HashMap<u64, Vec<u64>>,
    duration: Duration,
) -> anyhow::Result<Vec<u8>> {
    let empty = HashMap::new();
    let mut allocs = window(earlier.map_or(&empty, |t| &t.allocs), &later.allocs);
    if let Some(estimate) = later.duty_estimate {
        let before = earlier.and_then(|t| t.duty_estimate).unwrap_or_default();
        scale_to(
            &mut allocs,
            Totals {
                objects: estimate.objects - before.objects,
                bytes: estimate.bytes - before.bytes,
            },
        );
    }
    let frees = window(earlier.map_or(&empty, |t| &t.frees), &later.frees)
        .into_iter()
        .collect();
    let process = &later.process;
    let snapshot = Snapshot {
        stacks: allocs
            .iter()
            .filter_map(|(k, _)| Some((k.stack, stacks.get(&k.stack)?.clone())))
            .collect(),
        allocs,
        frees,
        sample_rates: later.rate.map(|r| (process.pid, r)).into_iter().collect(),
        ..Snapshot::default()
    };
    let mappings = ExeMappings::with_inode(process.pid, process.exe.id.ino);
    let mut symbolizer = mappings.symbolizer(process.binary(), &process.exe.path)?;
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let profile = collect::build_profile(
        CollectInput {
            snapshot: &snapshot,
            pid: process.pid,
            binary: process.binary(),
            target: TargetInfo {
                pid: process.pid,
                exe: process.exe.path.clone(),
                go_version: process.binary().version_string().to_string(),
                stripped: process.binary().is_stripped(),
                pie: process.binary().is_pie(),
                probes: process
                    .analysis
                    .probes
                    .iter()
                    .map(|p| p.function.clone())
                    .collect(),
            },
            mode: process.mode(),
            sample_rate: later.rate,
            start_unix_ns: now_ns.saturating_sub(duration.as_nanos() as u64),
            duration_ns: duration.as_nanos() as u64,
            duty: None,
            // The agent's totals are its counter metrics.
            counters: None,
            scale_to_counters: false,
        },
        &mut symbolizer,
    );
    // Served as /debug/pprof/heap and /allocs: the convention of Go's own endpoints.
    Ok(gomemtrace_report::to_pprof(
        &profile,
        gomemtrace_report::Frames::GoHeap,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stack: u64) -> AllocKey {
        AllocKey {
            tgid: 7,
            stack,
            ..AllocKey::default()
        }
    }

    #[test]
    fn duty_windows_scale_to_the_estimate_keeping_each_keys_share() {
        let mut allocs = vec![
            (
                key(1),
                AllocStats {
                    bytes: 300,
                    objects: 3,
                },
            ),
            (
                key(2),
                AllocStats {
                    bytes: 100,
                    objects: 1,
                },
            ),
        ];
        scale_to(
            &mut allocs,
            Totals {
                objects: 400.0,
                bytes: 40_000.0,
            },
        );
        assert_eq!(
            allocs[0].1,
            AllocStats {
                bytes: 30_000,
                objects: 300
            }
        );
        assert_eq!(
            allocs[1].1,
            AllocStats {
                bytes: 10_000,
                objects: 100
            }
        );
        // Nothing seen: nothing to scale.
        let mut none: Vec<(AllocKey, AllocStats)> = vec![];
        scale_to(
            &mut none,
            Totals {
                objects: 5.0,
                bytes: 5.0,
            },
        );
        assert!(none.is_empty());
    }

    #[test]
    fn window_is_the_growth_of_each_key() {
        let earlier = HashMap::from([(
            key(1),
            AllocStats {
                bytes: 100,
                objects: 2,
            },
        )]);
        let later = HashMap::from([
            (
                key(1),
                AllocStats {
                    bytes: 400,
                    objects: 5,
                },
            ),
            (
                key(2),
                AllocStats {
                    bytes: 8,
                    objects: 1,
                },
            ),
            (key(3), AllocStats::default()),
        ]);
        let mut w = window(&earlier, &later);
        w.sort_by_key(|(k, _)| k.stack);
        assert_eq!(
            w,
            vec![
                (
                    key(1),
                    AllocStats {
                        bytes: 300,
                        objects: 3
                    }
                ),
                (
                    key(2),
                    AllocStats {
                        bytes: 8,
                        objects: 1
                    }
                )
            ]
        );
    }
}
