//! The agent's Prometheus metrics: per process group (namespace, pod, container, exe,
//! comm) what the probes measured, and the agent's own health. Base units throughout.

use std::collections::HashMap;

use prometheus::{
    CounterVec, Encoder as _, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::agent::metadata::Labels;

/// The help of the count of processes not traced: every `reason` it may have.
pub const SKIPPED_HELP: &str = "Go processes not traced, by reason (max_processes, attach_failed, no_sampler, unsupported_go_version, unsupported_architecture, no_runtime_layout, malformed_binary, executable_unreadable, no_function_code, function_outside_segments, no_allocation_entry_point; gc_probes, stack_probe, numa: traced without those metrics)";

pub struct Metrics {
    registry: Registry,
    pub allocated_bytes: CounterVec,
    pub allocated_objects: CounterVec,
    pub freed_bytes: CounterVec,
    pub freed_objects: CounterVec,
    pub heap_objects: GaugeVec,
    pub heap_objects_bytes: GaugeVec,
    pub sampled_inuse_bytes: GaugeVec,
    pub gc_cycles: CounterVec,
    pub gc_pause: HistogramVec,
    pub gc_assist_seconds: CounterVec,
    pub heap_live: GaugeVec,
    pub heap_goal: GaugeVec,
    pub goroutines: GaugeVec,
    pub goroutines_created: CounterVec,
    pub stack_growths: CounterVec,
    pub stack_growth_bytes: CounterVec,
    pub stack_shrinks: CounterVec,
    pub numa_hint_faults: IntCounterVec,
    pub numa_available: IntGauge,
    pub bpf_object_loads: IntGauge,
    pub processes: GaugeVec,
    pub attached: IntGauge,
    pub skipped: IntCounterVec,
    pub probe_events: IntCounter,
    pub refused_windows: IntCounter,
    pub drops: IntCounterVec,
    pub process_events: IntCounterVec,
    pub pyroscope_pushes: IntCounterVec,
    pub http_rejected: IntCounterVec,
    pub cpu_seconds: prometheus::Counter,
    pub resident_bytes: Gauge,
    pub links: IntGauge,
    pub map_entries: IntGaugeVec,
    /// Processes per label set: a set's series go when its last process exits.
    label_users: HashMap<Labels, usize>,
    /// Processes per label set and allocation-counter source: a source's series go with
    /// the last process counted from it, though others of the label set remain.
    source_users: HashMap<(Labels, String), usize>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let per_process = &Labels::NAMES;
        let mut with_source: Vec<&str> = per_process.to_vec();
        with_source.push("source");
        let allocated_bytes = CounterVec::new(
            opts(
                "gomemtrace_allocated_bytes_total",
                "Bytes allocated on the Go heap since the agent attached: source=runtime, the runtime's own counters (MemStats.TotalAlloc), exact; source=probes where those cannot be read, the probes' count (an estimate in runtime-sampled and duty-cycled mode)",
            ),
            &with_source,
        )?;
        let allocated_objects = CounterVec::new(
            opts(
                "gomemtrace_allocated_objects_total",
                "Heap objects allocated since the agent attached (MemStats.Mallocs, tiny allocations included); source as for gomemtrace_allocated_bytes_total",
            ),
            &with_source,
        )?;
        let freed_bytes = CounterVec::new(
            opts(
                "gomemtrace_freed_bytes_total",
                "Heap bytes the GC freed since the agent attached (the runtime's own counters, as MemStats.TotalAlloc - HeapAlloc); where gomemtrace_allocated_bytes_total has source=runtime",
            ),
            per_process,
        )?;
        let freed_objects = CounterVec::new(
            opts(
                "gomemtrace_freed_objects_total",
                "Heap objects the GC freed since the agent attached (MemStats.Frees, tiny allocations included); where gomemtrace_allocated_objects_total has source=runtime",
            ),
            per_process,
        )?;
        let heap_objects = GaugeVec::new(
            opts(
                "gomemtrace_heap_objects",
                "Heap objects allocated and not yet freed (MemStats.HeapObjects), read from the runtime at each harvest; where the runtime's counters can be read",
            ),
            per_process,
        )?;
        let heap_objects_bytes = GaugeVec::new(
            opts(
                "gomemtrace_heap_objects_bytes",
                "Bytes of heap objects allocated and not yet freed (MemStats.HeapAlloc): live ones and dead ones the GC has not swept yet; where the runtime's counters can be read",
            ),
            per_process,
        )?;
        let sampled_inuse_bytes = GaugeVec::new(
            opts(
                "gomemtrace_sampled_inuse_bytes",
                "Runtime-sampled mode: estimated bytes still live of those allocated since the agent attached",
            ),
            per_process,
        )?;
        let gc_cycles = CounterVec::new(
            opts(
                "gomemtrace_gc_cycles_total",
                "GC cycles completed since the agent attached",
            ),
            per_process,
        )?;
        let gc_pause = HistogramVec::new(
            HistogramOpts::new(
                "gomemtrace_gc_pause_seconds",
                "Stop-the-world time of each GC cycle (sweep termination + mark termination)",
            )
            .buckets(prometheus::exponential_buckets(10e-6, 4.0, 9)?),
            per_process,
        )?;
        let gc_assist_seconds = CounterVec::new(
            opts(
                "gomemtrace_gc_mark_assist_seconds_total",
                "CPU time goroutines spent in GC mark assists (the runtime's gcController.assistTime per cycle)",
            ),
            per_process,
        )?;
        let heap_live = GaugeVec::new(
            opts(
                "gomemtrace_heap_live_bytes",
                "Heap marked live by the latest GC cycle (the runtime's work.heap2); binaries with symbols only",
            ),
            per_process,
        )?;
        let heap_goal = GaugeVec::new(
            opts(
                "gomemtrace_heap_goal_bytes",
                "Heap goal of the latest GC cycle (gcController.lastHeapGoal); binaries with symbols only",
            ),
            per_process,
        )?;
        let mut with_kind: Vec<&str> = per_process.to_vec();
        with_kind.push("kind");
        let goroutines = GaugeVec::new(
            opts(
                "gomemtrace_goroutines",
                "Goroutines alive, read from the runtime's allgs: kind=user is what runtime.NumGoroutine counts, kind=runtime the runtime's own; binaries with symbols only",
            ),
            &with_kind,
        )?;
        let goroutines_created = CounterVec::new(
            opts(
                "gomemtrace_goroutines_created_total",
                "Goroutine ids the runtime handed out since the agent attached (sched.goidgen): goroutines created, give or take the 16 ids per P held in reserve; binaries with symbols only",
            ),
            per_process,
        )?;
        let stack_growths = CounterVec::new(
            opts(
                "gomemtrace_stack_growths_total",
                "Goroutine stacks copied to a larger stack (runtime.copystack) since the agent attached",
            ),
            per_process,
        )?;
        let stack_growth_bytes = CounterVec::new(
            opts(
                "gomemtrace_stack_growth_copied_bytes_total",
                "Bytes of used stack those growths copied",
            ),
            per_process,
        )?;
        let stack_shrinks = CounterVec::new(
            opts(
                "gomemtrace_stack_shrinks_total",
                "Goroutine stacks the GC copied to a smaller stack since the agent attached",
            ),
            per_process,
        )?;
        let mut with_locality: Vec<&str> = per_process.to_vec();
        with_locality.push("locality");
        let numa_hint_faults = IntCounterVec::new(
            opts(
                "gomemtrace_numa_hint_faults_total",
                "NUMA-balancing hint faults (sampled memory accesses) by locality: remote = the page was on another node than the CPU; the remote ratio is remote / (remote + local); only where gomemtrace_agent_numa_available is 1",
            ),
            &with_locality,
        )?;
        let numa_available = IntGauge::new(
            "gomemtrace_agent_numa_available",
            "1 if remote NUMA accesses are measured on this node (two or more nodes, NUMA balancing on, the kernel allows the fentry on task_numa_fault); the agent logs why not",
        )?;
        let bpf_object_loads = IntGauge::new(
            "gomemtrace_agent_bpf_object_loads",
            "Times the agent loaded its eBPF object: 1, whatever it traces (every capability runs in that one object)",
        )?;
        let mut with_mode: Vec<&str> = per_process.to_vec();
        with_mode.push("mode");
        let processes = GaugeVec::new(
            opts(
                "gomemtrace_processes",
                "Go processes traced, by label set and collection mode (runtime, duty or exact)",
            ),
            &with_mode,
        )?;
        let attached = IntGauge::new(
            "gomemtrace_agent_attached_processes",
            "Processes the agent traces now",
        )?;
        let skipped = IntCounterVec::new(
            opts("gomemtrace_agent_skipped_processes_total", SKIPPED_HELP),
            &["reason"],
        )?;
        let probe_events = IntCounter::new(
            "gomemtrace_agent_probe_events_total",
            "Allocation probe hits of traced processes",
        )?;
        let refused_windows = IntCounter::new(
            "gomemtrace_agent_refused_duty_windows_total",
            "Duty windows that did not open because the kernel refused the allocation probes \
             (the process's duty estimate stands still meanwhile; the agent logs the first \
             refusal of each process)",
        )?;
        let drops = IntCounterVec::new(
            opts(
                "gomemtrace_agent_drops_total",
                "Events lost or degraded, by reason",
            ),
            &["reason"],
        )?;
        let process_events = IntCounterVec::new(
            opts(
                "gomemtrace_agent_process_events_total",
                "Process execs and exits seen by the scheduler tracepoints",
            ),
            &["kind"],
        )?;
        let pyroscope_pushes = IntCounterVec::new(
            opts(
                "gomemtrace_agent_pyroscope_pushes_total",
                "Profiles pushed to Pyroscope (--pyroscope-url), by result (ok, error)",
            ),
            &["result"],
        )?;
        let http_rejected = IntCounterVec::new(
            opts(
                "gomemtrace_agent_http_rejected_total",
                "HTTP requests refused before their handler ran, by reason (busy: --max-profile-requests profile requests already in flight; unauthorized: missing or wrong basic-auth credentials)",
            ),
            &["reason"],
        )?;
        let cpu_seconds = prometheus::Counter::new(
            "gomemtrace_agent_cpu_seconds_total",
            "CPU time (user + system) the agent used",
        )?;
        let resident_bytes = Gauge::new(
            "gomemtrace_agent_resident_memory_bytes",
            "The agent's resident set size",
        )?;
        let links = IntGauge::new(
            "gomemtrace_agent_uprobe_links",
            "Uprobe links the agent holds for traced processes",
        )?;
        let map_entries = IntGaugeVec::new(
            opts(
                "gomemtrace_agent_map_entries",
                "Entries in the BPF maps that hold per-process data",
            ),
            &["map"],
        )?;
        let build_info = GaugeVec::new(
            opts(
                "gomemtrace_agent_build_info",
                "The agent's version; always 1",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        for collector in [
            Box::new(allocated_bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(allocated_objects.clone()),
            Box::new(freed_bytes.clone()),
            Box::new(freed_objects.clone()),
            Box::new(heap_objects.clone()),
            Box::new(heap_objects_bytes.clone()),
            Box::new(sampled_inuse_bytes.clone()),
            Box::new(gc_cycles.clone()),
            Box::new(gc_pause.clone()),
            Box::new(gc_assist_seconds.clone()),
            Box::new(heap_live.clone()),
            Box::new(heap_goal.clone()),
            Box::new(goroutines.clone()),
            Box::new(goroutines_created.clone()),
            Box::new(stack_growths.clone()),
            Box::new(stack_growth_bytes.clone()),
            Box::new(stack_shrinks.clone()),
            Box::new(numa_hint_faults.clone()),
            Box::new(numa_available.clone()),
            Box::new(bpf_object_loads.clone()),
            Box::new(processes.clone()),
            Box::new(attached.clone()),
            Box::new(skipped.clone()),
            Box::new(probe_events.clone()),
            Box::new(refused_windows.clone()),
            Box::new(drops.clone()),
            Box::new(process_events.clone()),
            Box::new(pyroscope_pushes.clone()),
            Box::new(http_rejected.clone()),
            Box::new(cpu_seconds.clone()),
            Box::new(resident_bytes.clone()),
            Box::new(links.clone()),
            Box::new(map_entries.clone()),
            Box::new(build_info),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            allocated_bytes,
            allocated_objects,
            freed_bytes,
            freed_objects,
            heap_objects,
            heap_objects_bytes,
            sampled_inuse_bytes,
            gc_cycles,
            gc_pause,
            gc_assist_seconds,
            heap_live,
            heap_goal,
            goroutines,
            goroutines_created,
            stack_growths,
            stack_growth_bytes,
            stack_shrinks,
            numa_hint_faults,
            numa_available,
            bpf_object_loads,
            processes,
            attached,
            skipped,
            probe_events,
            refused_windows,
            drops,
            process_events,
            pyroscope_pushes,
            http_rejected,
            cpu_seconds,
            resident_bytes,
            links,
            map_entries,
            label_users: HashMap::new(),
            source_users: HashMap::new(),
        })
    }

    /// A process with `labels` was attached: its series exist from now, at 0.
    /// `source`: where its allocation counters come from ("runtime" or "probes").
    pub fn add_process(&mut self, labels: &Labels, mode: &str, source: &str) {
        *self.label_users.entry(labels.clone()).or_default() += 1;
        *self
            .source_users
            .entry((labels.clone(), source.to_string()))
            .or_default() += 1;
        let values = labels.values();
        self.allocated_bytes
            .with_label_values(&with(&values, source));
        self.allocated_objects
            .with_label_values(&with(&values, source));
        if source == "runtime" {
            self.freed_bytes.with_label_values(&values);
            self.freed_objects.with_label_values(&values);
        }
        self.gc_cycles.with_label_values(&values);
        self.processes.with_label_values(&with(&values, mode)).inc();
    }

    /// A process with `labels`, counted from `source`, is gone: the label set's series go
    /// with its last process, a source's allocation series with the last one of that source.
    pub fn remove_process(&mut self, labels: &Labels, mode: &str, source: &str) {
        let values = labels.values();
        let key = (labels.clone(), source.to_string());
        if let Some(users) = self.source_users.get_mut(&key) {
            *users -= 1;
            if *users == 0 {
                self.source_users.remove(&key);
                let _ = self
                    .allocated_bytes
                    .remove_label_values(&with(&values, source));
                let _ = self
                    .allocated_objects
                    .remove_label_values(&with(&values, source));
                if source == "runtime" {
                    let _ = self.freed_bytes.remove_label_values(&values);
                    let _ = self.freed_objects.remove_label_values(&values);
                    let _ = self.heap_objects.remove_label_values(&values);
                    let _ = self.heap_objects_bytes.remove_label_values(&values);
                }
            }
        }
        let mode_values = with(&values, mode);
        if let Ok(g) = self.processes.get_metric_with_label_values(&mode_values) {
            g.dec();
            if g.get() <= 0.0 {
                let _ = self.processes.remove_label_values(&mode_values);
            }
        }
        let Some(users) = self.label_users.get_mut(labels) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            self.label_users.remove(labels);
            for source in ["runtime", "probes"] {
                let _ = self
                    .allocated_bytes
                    .remove_label_values(&with(&values, source));
                let _ = self
                    .allocated_objects
                    .remove_label_values(&with(&values, source));
            }
            let _ = self.freed_bytes.remove_label_values(&values);
            let _ = self.freed_objects.remove_label_values(&values);
            let _ = self.heap_objects.remove_label_values(&values);
            let _ = self.heap_objects_bytes.remove_label_values(&values);
            let _ = self.sampled_inuse_bytes.remove_label_values(&values);
            let _ = self.gc_cycles.remove_label_values(&values);
            let _ = self.gc_pause.remove_label_values(&values);
            let _ = self.gc_assist_seconds.remove_label_values(&values);
            let _ = self.heap_live.remove_label_values(&values);
            let _ = self.heap_goal.remove_label_values(&values);
            for kind in ["user", "runtime"] {
                let _ = self.goroutines.remove_label_values(&with(&values, kind));
            }
            let _ = self.goroutines_created.remove_label_values(&values);
            let _ = self.stack_growths.remove_label_values(&values);
            let _ = self.stack_growth_bytes.remove_label_values(&values);
            let _ = self.stack_shrinks.remove_label_values(&values);
            for locality in ["local", "remote"] {
                let _ = self
                    .numa_hint_faults
                    .remove_label_values(&with(&values, locality));
            }
        }
    }

    /// Adds the increase of a monotonic total read from elsewhere (`now` − `*last`).
    pub fn advance(counter: &IntCounter, last: &mut u64, now: u64) {
        if now > *last {
            counter.inc_by(now - *last);
            *last = now;
        }
    }

    /// Prometheus text exposition format.
    /// The registry, shared (a clone is a handle on the same metrics): /metrics renders
    /// from it without taking the lock around [`Metrics`], which the tracer holds while it
    /// harvests.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }
}

/// The Prometheus text of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into memory fails only on an invalid metric, which register() refused.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A label set's values and one more label's value.
pub fn with<'a>(values: &[&'a str; 5], extra: &'a str) -> [&'a str; 6] {
    [values[0], values[1], values[2], values[3], values[4], extra]
}

/// This process's CPU seconds (user + system) and resident bytes, from /proc/self.
pub fn own_usage() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3; utime 14, stime 15, rss 24 (in pages).
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    Some(((ticks(14)? + ticks(15)?) / hz.max(1.0), ticks(24)? * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(exe: &str) -> Labels {
        Labels {
            exe: exe.into(),
            comm: "app".into(),
            ..Labels::default()
        }
    }

    #[test]
    fn series_go_with_the_last_process_of_their_label_set() {
        let mut m = Metrics::new().unwrap();
        let a = labels("/srv/a");
        m.add_process(&a, "runtime", "probes");
        m.add_process(&a, "runtime", "runtime");
        m.allocated_bytes
            .with_label_values(&with(&a.values(), "runtime"))
            .inc_by(10.0);
        m.remove_process(&a, "runtime", "probes");
        let text = render(&m.registry);
        assert!(text.contains("exe=\"/srv/a\""), "{text}");
        // The process counted by the probes took its source's series with it.
        assert!(!text.contains("source=\"probes\""), "{text}");
        assert!(text.contains("source=\"runtime\""), "{text}");
        m.remove_process(&a, "runtime", "runtime");
        assert!(
            !render(&m.registry).contains("exe=\"/srv/a\""),
            "{}",
            render(&m.registry)
        );
    }

    #[test]
    fn own_usage_is_plausible() {
        let (cpu, rss) = own_usage().unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 1_000_000.0, "rss {rss}");
    }
}
