//! The agent's loop, on its own thread: it owns the probes. Applies exec and exit events,
//! checks that traced processes still run, and every second copies the maps into the
//! shared tables and the metrics.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use gomemtrace_common::{Counter, ProcCounter};

use crate::{
    agent::{
        Shared,
        allocstats::{AllocStatsTracker, Source},
        attachments::{Attachments, Skip},
        discovery::{self, Exe, Filter},
        duty::DutyCycler,
        gc::GcTracker,
        goroutine_metrics::GoroutineTracker,
        kubernetes::SharedIndex,
        metadata,
        metrics::{self, Metrics},
        numa::NumaTracker,
        profiles::Totals,
        stacks::StackTracker,
    },
    bpf::{Lifecycle, ProcEvents},
};

const TICK: Duration = Duration::from_millis(100);
const HARVEST_EVERY: Duration = Duration::from_secs(1);
/// How long a container's process waits for its pod to appear in the watch (a pod's status
/// names a container shortly after the container started).
const POD_WAIT: Duration = Duration::from_secs(30);
/// Counting every map's entries walks maps that can be large (live sampled objects):
/// less often than the harvest.
const COUNT_ENTRIES_EVERY: u32 = 5;

pub struct Tracer {
    pub attachments: Attachments,
    duty: DutyCycler,
    pub gc: GcTracker,
    /// None with --no-stack-metrics.
    pub stacks: Option<StackTracker>,
    goroutines: GoroutineTracker,
    /// The runtime's own allocation counters, where they can be read.
    alloc_stats: AllocStatsTracker,
    /// None where remote NUMA accesses cannot be measured.
    numa: Option<NumaTracker>,
    pub events: ProcEvents,
    pub filter: Filter,
    pub shared: Arc<Shared>,
    /// The node's pods, where the agent watches Kubernetes.
    pods: Option<SharedIndex>,
    /// Per pid: the totals already added to the counters.
    counted: HashMap<u32, Totals>,
    /// Global probe counters already added, by metric.
    last_global: HashMap<&'static str, u64>,
    harvests: u32,
    /// Processes in containers the pod watch does not know yet, and since when.
    pending: HashMap<u32, Instant>,
    /// Process events lost so far, as of the latest rescan.
    events_lost_seen: u64,
    /// Processes not traced whose reason was counted and logged: once per process, not
    /// at every rescan.
    not_traced: HashSet<u32>,
    /// Processes whose duty window the kernel refused (logged once each).
    refused_windows: HashSet<u32>,
}

/// The probe sets beside the allocation probes: GC cycles always; stack copies unless
/// --no-stack-metrics; NUMA hint faults where the machine can measure them.
pub struct Trackers {
    pub gc: GcTracker,
    pub stacks: Option<StackTracker>,
    pub numa: Option<NumaTracker>,
}

/// The drop counters of the probes, by the `reason` label.
const DROPS: [(&str, Counter); 11] = [
    ("alloc_map_full", Counter::DropAllocMapFull),
    ("stack_map_full", Counter::StackMapFull),
    ("stack_unreadable", Counter::StackUnreadable),
    ("goroutine_map_full", Counter::DropGoroutineMapFull),
    ("live_map_full", Counter::DropLiveMapFull),
    ("sample_unreadable", Counter::DropSampleUnreadable),
    ("free_map_full", Counter::DropFreeMapFull),
    ("special_unreadable", Counter::DropSpecialUnreadable),
    ("rate_unrecorded", Counter::RateUnrecorded),
    ("stack_cycle", Counter::StackCycle),
    ("stack_off_stack", Counter::StackOffStack),
];

impl Tracer {
    pub fn new(
        attachments: Attachments,
        trackers: Trackers,
        events: ProcEvents,
        filter: Filter,
        shared: Arc<Shared>,
        pods: Option<SharedIndex>,
    ) -> Self {
        let Trackers { gc, stacks, numa } = trackers;
        Self {
            attachments,
            duty: DutyCycler::default(),
            gc,
            stacks,
            goroutines: GoroutineTracker::default(),
            alloc_stats: AllocStatsTracker::default(),
            numa,
            events,
            filter,
            shared,
            pods,
            counted: HashMap::new(),
            last_global: HashMap::new(),
            harvests: 0,
            pending: HashMap::new(),
            events_lost_seen: 0,
            not_traced: HashSet::new(),
            refused_windows: HashSet::new(),
        }
    }

    /// Scans /proc, then follows events until `shared.stop`.
    pub fn run(mut self) {
        let own_pid = std::process::id();
        // Pod labels and filters need the pod list first (readiness waits for it).
        if let Some(pods) = &self.pods {
            let deadline = Instant::now() + POD_WAIT;
            while !pods.lock().unwrap_or_else(|e| e.into_inner()).synced
                && Instant::now() < deadline
                && !self.shared.stop.load(Ordering::Acquire)
            {
                self.shared.beat();
                std::thread::sleep(TICK);
            }
        }
        for pid in discovery::scan_proc() {
            if pid != own_pid {
                self.consider(pid);
            }
        }
        self.harvest();
        self.shared.ready.store(true, Ordering::Release);
        let mut last_harvest = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            self.shared.beat();
            for event in self.events.drain() {
                match event {
                    Lifecycle::Exec(pid) if pid != own_pid => {
                        // The image was replaced: what was attached is for the old one.
                        self.forget(pid);
                        self.consider(pid);
                    }
                    Lifecycle::Exit(pid) => self.forget(pid),
                    Lifecycle::Exec(_) => {}
                }
            }
            for (pid, refusal) in self.duty.tick(&mut self.attachments.probes) {
                self.metrics().refused_windows.inc();
                if self.refused_windows.insert(pid) {
                    eprintln!(
                        "gomemtrace: agent: pid {pid}: a duty window did not open: {refusal:#}"
                    );
                }
            }
            if let Err(e) = self.attachments.probes.drain_if_due() {
                eprintln!("gomemtrace: agent: draining the allocation maps: {e:#}");
            }
            {
                let metrics = self
                    .shared
                    .metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                self.gc.drain(&metrics);
                if let Some(numa) = &mut self.numa {
                    numa.drain(&metrics);
                }
            }
            if last_harvest.elapsed() >= HARVEST_EVERY {
                last_harvest = Instant::now();
                // Exit events can be lost (ring buffer full): the dead go here too.
                let dead: Vec<u32> = self
                    .attachments
                    .processes
                    .keys()
                    .copied()
                    .filter(|&pid| !discovery::is_alive(pid))
                    .collect();
                for pid in dead {
                    self.forget(pid);
                }
                // Those not traced whose exit event was lost.
                self.not_traced.retain(|&pid| discovery::is_alive(pid));
                // Exec events lost to a full ring buffer: a /proc scan finds those processes.
                let lost = self
                    .events
                    .counters()
                    .map_or(0, |c| c[ProcCounter::DropRingFull as usize]);
                if lost > self.events_lost_seen {
                    self.events_lost_seen = lost;
                    for pid in discovery::scan_proc() {
                        if pid != own_pid && !self.attachments.processes.contains_key(&pid) {
                            self.consider(pid);
                        }
                    }
                }
                let retry: Vec<u32> = self.pending.keys().copied().collect();
                for pid in retry {
                    self.consider(pid);
                }
                self.harvest();
            }
            std::thread::sleep(TICK);
        }
        // Dropping the probes detaches every uprobe.
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn consider(&mut self, pid: u32) {
        let Some(exe) = Exe::of(pid) else {
            self.pending.remove(&pid);
            return;
        };
        if !self.filter.allows_exe(&exe.path) || !self.attachments.is_go(&exe) {
            return;
        }
        let (labels, pod) = match &self.pods {
            Some(pods) => {
                let pods = pods.lock().unwrap_or_else(|e| e.into_inner());
                let found = metadata::labels(pid, &exe.path, Some(&pods));
                // A container whose pod the watch has not reported yet: try again later.
                if found.1.is_none() && metadata::container_of(pid).is_some() {
                    let since = *self.pending.entry(pid).or_insert_with(Instant::now);
                    if since.elapsed() < POD_WAIT {
                        return;
                    }
                }
                found
            }
            None => metadata::labels(pid, &exe.path, None),
        };
        self.pending.remove(&pid);
        if !self.filter.allows_pod(pod.as_ref()) {
            return;
        }
        let exe_path = exe.path.clone();
        match self.attachments.attach(pid, exe, labels) {
            Ok(process) => {
                if process.mode() == gomemtrace_report::model::Mode::Duty {
                    self.duty.add(&process, &mut self.attachments.probes);
                }
                self.shared
                    .tables
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .attached(pid, process.clone());
                let gc_attached = self.gc.attach(&process);
                let stack_attached = self.stacks.as_mut().is_none_or(|s| s.attach(&process));
                self.goroutines.attached(&process);
                let source = self.alloc_stats.attach(&process);
                let numa_attached = self.numa.as_mut().is_none_or(|n| n.attach(&process));
                let mut metrics = self.metrics();
                if !gc_attached {
                    metrics.skipped.with_label_values(&["gc_probes"]).inc();
                }
                if !stack_attached {
                    metrics.skipped.with_label_values(&["stack_probe"]).inc();
                }
                if !numa_attached {
                    metrics.skipped.with_label_values(&["numa"]).inc();
                }
                metrics.add_process(&process.labels, mode_name(&process), source.name());
                metrics
                    .attached
                    .set(self.attachments.processes.len() as i64);
            }
            Err(Skip::NotGo) => {}
            Err(skip) => {
                if self.not_traced.insert(pid) {
                    eprintln!("gomemtrace: agent: pid {pid} ({exe_path}): not traced: {skip}");
                    self.metrics()
                        .skipped
                        .with_label_values(&[skip.label()])
                        .inc();
                }
            }
        }
    }

    fn forget(&mut self, pid: u32) {
        self.pending.remove(&pid);
        self.not_traced.remove(&pid);
        self.refused_windows.remove(&pid);
        let Some(process) = self.attachments.detach(pid) else {
            return;
        };
        self.counted.remove(&pid);
        self.duty.remove(pid);
        self.shared
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .detached(pid);
        let mut metrics = self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.gc.detach(pid, &metrics);
        if let Some(stacks) = &mut self.stacks {
            stacks.detach(pid, &metrics);
        }
        if let Some(numa) = &mut self.numa {
            numa.detach(pid, &metrics);
        }
        self.goroutines.forget(pid);
        let source = self.alloc_stats.source(pid);
        self.alloc_stats.forget(pid);
        metrics.remove_process(&process.labels, mode_name(&process), source.name());
        metrics
            .attached
            .set(self.attachments.processes.len() as i64);
    }

    fn harvest(&mut self) {
        let mut tables = self.shared.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = tables.harvest(&self.attachments.probes, &self.attachments.processes) {
            eprintln!("gomemtrace: agent: reading the probe maps: {e:#}");
            return;
        }
        let metrics = self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        metrics
            .bpf_object_loads
            .set(crate::bpf::Bpf::loads() as i64);
        for (pid, table) in tables.by_pid.iter_mut() {
            table.duty_estimate = self.duty.estimate(*pid);
            // The runtime's own counters, where readable, are moved below.
            if self.alloc_stats.source(*pid) == Source::Runtime {
                continue;
            }
            // Duty-cycled: the windows' scaled estimate; else the (unbiased) tables.
            let now = table.duty_estimate.unwrap_or_else(|| table.allocated());
            let counted = self.counted.entry(*pid).or_default();
            let values = metrics::with(&table.process.labels.values(), Source::Probes.name());
            // Per-key unbiasing can move a total down a little as a key's average size
            // changes: counters only go up.
            if now.bytes > counted.bytes {
                metrics
                    .allocated_bytes
                    .with_label_values(&values)
                    .inc_by(now.bytes - counted.bytes);
                counted.bytes = now.bytes;
            }
            if now.objects > counted.objects {
                metrics
                    .allocated_objects
                    .with_label_values(&values)
                    .inc_by(now.objects - counted.objects);
                counted.objects = now.objects;
            }
        }
        // In-use gauges: summed over the processes of each label set.
        let mut inuse: HashMap<_, f64> = HashMap::new();
        for table in tables.by_pid.values() {
            if let Some(bytes) = table.sampled_inuse() {
                *inuse.entry(table.process.labels.clone()).or_default() += bytes;
            }
        }
        for (labels, bytes) in inuse {
            metrics
                .sampled_inuse_bytes
                .with_label_values(&labels.values())
                .set(bytes);
        }
        drop(tables);
        self.alloc_stats
            .harvest(self.attachments.processes.values(), &metrics);
        if let Ok(c) = self.attachments.probes.counters() {
            let last = self.last_global.entry("events").or_default();
            Metrics::advance(&metrics.probe_events, last, c.get(Counter::Events));
            for (reason, counter) in DROPS {
                let last = self.last_global.entry(reason).or_default();
                Metrics::advance(
                    &metrics.drops.with_label_values(&[reason]),
                    last,
                    c.get(counter),
                );
            }
        }
        if let Ok(c) = self.events.counters() {
            for (kind, counter) in [("exec", ProcCounter::Execs), ("exit", ProcCounter::Exits)] {
                let last = self.last_global.entry(kind).or_default();
                Metrics::advance(
                    &metrics.process_events.with_label_values(&[kind]),
                    last,
                    c[counter as usize],
                );
            }
            let last = self
                .last_global
                .entry("process_events_ring_full")
                .or_default();
            Metrics::advance(
                &metrics
                    .drops
                    .with_label_values(&["process_events_ring_full"]),
                last,
                c[ProcCounter::DropRingFull as usize],
            );
        }
        if let Some(stacks) = &mut self.stacks {
            stacks.harvest(&metrics);
        }
        if self.goroutines.due() {
            let unread = self
                .goroutines
                .harvest(self.attachments.processes.values(), &metrics);
            for (reason, n) in [
                ("goroutines_unreadable", unread.processes),
                ("goroutines_allgs_invalid", unread.bad_allgs),
                ("goroutine_status_invalid", unread.records),
            ] {
                metrics.drops.with_label_values(&[reason]).inc_by(n);
            }
        }
        metrics.links.set(
            (self.attachments.probes.links()
                + self.gc.probes.links()
                + self.stacks.as_ref().map_or(0, |s| s.probes.links())) as i64,
        );
        let (ring_full, state_full) = self.gc.lost();
        for (reason, now) in [
            ("gc_ring_full", ring_full),
            ("gc_state_map_full", state_full),
        ] {
            let last = self.last_global.entry(reason).or_default();
            Metrics::advance(&metrics.drops.with_label_values(&[reason]), last, now);
        }
        if self.harvests.is_multiple_of(COUNT_ENTRIES_EVERY) {
            let entries = self.attachments.probes.map_entries();
            for (map, entries) in entries
                .into_iter()
                .chain(self.gc.probes.map_entries())
                .chain(
                    self.stacks
                        .as_ref()
                        .map(|s| s.probes.map_entries())
                        .unwrap_or_default(),
                )
                .chain(self.numa.as_ref().map(|n| n.map_entries()))
            {
                metrics
                    .map_entries
                    .with_label_values(&[map])
                    .set(entries as i64);
            }
        }
        self.harvests = self.harvests.wrapping_add(1);
        if let Some((cpu, rss)) = metrics::own_usage() {
            let counted = metrics.cpu_seconds.get();
            if cpu > counted {
                metrics.cpu_seconds.inc_by(cpu - counted);
            }
            metrics.resident_bytes.set(rss);
        }
    }
}

fn mode_name(process: &crate::agent::attachments::Process) -> &'static str {
    match process.mode() {
        gomemtrace_report::model::Mode::Runtime => "runtime",
        gomemtrace_report::model::Mode::Exact => "exact",
        gomemtrace_report::model::Mode::Duty => "duty",
    }
}
