//! The NUMA report: hint faults aggregated per goroutine and per stack, residency per
//! node, the methods that ran; as text, json (docs/NUMA.md) or a pprof profile weighted
//! by remote samples.

use std::collections::{BTreeMap, HashMap};

use gomemtrace_common::{GoidSource, NumaFaultEvent};
use gomemtrace_report::model::Location;
use serde::Serialize;

use super::placement::NodeResidency;
use crate::{
    rt::{FrameJson, TargetJson, duration, frames, size},
    symbolizer::Symbolizer,
};
use gomemtrace_report::WeightedSample;

pub const SCHEMA: &str = "gomemtrace.numa/v1";

/// One way of seeing NUMA behaviour, whether it ran here, and what it is or why not.
#[derive(Debug, Serialize)]
pub struct Method {
    pub name: &'static str,
    pub active: bool,
    pub detail: String,
}

/// Remote and local samples (hint faults) and the pages they covered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub remote_samples: u64,
    pub local_samples: u64,
    pub remote_pages: u64,
    pub local_pages: u64,
    /// Pages the kernel migrated to the faulting CPU's node at these faults.
    pub migrated_pages: u64,
    /// remote / (remote + local) samples; 0 without samples.
    pub remote_ratio: f64,
}

impl Counts {
    fn add(&mut self, e: &NumaFaultEvent) {
        let pages = u64::from(e.pages);
        if e.is_local() {
            self.local_samples += 1;
            self.local_pages += pages;
        } else {
            self.remote_samples += 1;
            self.remote_pages += pages;
        }
        if e.migrated() {
            self.migrated_pages += pages;
        }
        let all = self.remote_samples + self.local_samples;
        self.remote_ratio = self.remote_samples as f64 / all as f64;
    }
}

#[derive(Debug, Serialize)]
pub struct GoroutineRow {
    /// 0: faults on the system stack or with no goroutine found.
    pub goid: u64,
    /// Samples by how the goroutine was found (`r14`, `cached`, `tls`, `system_stack`,
    /// `unknown`).
    pub goid_sources: BTreeMap<&'static str, u64>,
    /// The `go` statement that created it (`g.gopc`), `function (file:line)`.
    pub created_at: Option<String>,
    /// Its start function (`g.startpc`).
    pub start_function: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Samples by the node of the CPU it faulted on.
    pub cpu_nodes: BTreeMap<u32, u64>,
}

#[derive(Debug, Serialize)]
pub struct StackRow {
    #[serde(flatten)]
    pub counts: Counts,
    pub goroutines: Vec<u64>,
    /// Leaf (the faulting instruction) first.
    pub stack: Vec<FrameJson>,
}

/// One hint fault, as listed in the json report.
#[derive(Debug, Serialize)]
pub struct EventJson {
    /// ns since tracing started.
    pub t_ns: u64,
    pub goid: u64,
    /// How the goroutine was found (r14, cached, tls, system_stack, unknown).
    pub goid_source: &'static str,
    pub tid: u32,
    /// The data address (0: not seen) and the faulting instruction.
    pub addr: u64,
    pub ip: u64,
    pub local: bool,
    pub migrated: bool,
    pub pages: u32,
    pub cpu_node: u32,
    pub mem_node: i32,
}

impl EventJson {
    pub fn new(e: &NumaFaultEvent, started_ns: u64) -> Self {
        Self {
            t_ns: e.t_ns.saturating_sub(started_ns),
            goid: e.goid,
            goid_source: GoidSource::from_u32(e.goid_source).name(),
            tid: e.tid,
            addr: e.addr,
            ip: e.ip,
            local: e.is_local(),
            migrated: e.migrated(),
            pages: e.pages,
            cpu_node: e.cpu_node,
            mem_node: e.mem_node,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub target: TargetJson,
    pub duration_ns: u64,
    pub end: &'static str,
    pub nodes_online: Vec<u32>,
    pub methods: Vec<Method>,
    pub totals: Counts,
    pub goroutines: Vec<GoroutineRow>,
    pub stacks: Vec<StackRow>,
    /// Resident memory per node at the last snapshot of `/proc/PID/numa_maps`.
    pub placement: Vec<NodeResidency>,
    /// When that snapshot was taken, ns since tracing started.
    pub placement_at_ns: Option<u64>,
    /// Live sampled allocations per node and per allocation stack; `null` where not
    /// measured (the method line says why).
    pub allocations: Option<super::allocations::Json>,
    pub counters: BTreeMap<&'static str, u64>,
    /// Every fault, oldest first, up to a cap; the rest are in the totals only.
    pub events: Vec<EventJson>,
    pub events_not_listed: u64,
}

/// Aggregates the events (symbolizing stacks, creation sites) and the pprof samples.
pub fn aggregate(
    events: &[NumaFaultEvent],
    stacks: &HashMap<u64, Vec<u64>>,
    sym: &mut Symbolizer<'_>,
) -> (
    Counts,
    Vec<GoroutineRow>,
    Vec<StackRow>,
    Vec<WeightedSample>,
) {
    let mut totals = Counts::default();
    let mut by_goid: BTreeMap<u64, (GoroutineRow, u64, u64)> = BTreeMap::new();
    let mut by_stack: HashMap<u64, (Counts, Vec<u64>)> = HashMap::new();
    let mut by_goid_stack: BTreeMap<(u64, u64), Counts> = BTreeMap::new();
    for e in events {
        totals.add(e);
        let (row, _, _) = by_goid.entry(e.goid).or_insert_with(|| {
            (
                GoroutineRow {
                    goid: e.goid,
                    goid_sources: BTreeMap::new(),
                    created_at: None,
                    start_function: None,
                    counts: Counts::default(),
                    cpu_nodes: BTreeMap::new(),
                },
                e.gopc,
                e.start_pc,
            )
        });
        row.counts.add(e);
        *row.goid_sources
            .entry(GoidSource::from_u32(e.goid_source).name())
            .or_default() += 1;
        *row.cpu_nodes.entry(e.cpu_node).or_default() += 1;
        let (counts, goids) = by_stack.entry(e.stack).or_default();
        counts.add(e);
        if !goids.contains(&e.goid) {
            goids.push(e.goid);
        }
        by_goid_stack.entry((e.goid, e.stack)).or_default().add(e);
    }
    let mut goroutines: Vec<GoroutineRow> = by_goid
        .into_values()
        .map(|(mut row, gopc, start_pc)| {
            if gopc != 0 {
                row.created_at = sym
                    .location(gopc, true)
                    .frames
                    .last()
                    .map(|f| match &f.file {
                        Some(file) => format!("{} ({}:{})", f.function, short_file(file), f.line),
                        None => f.function.clone(),
                    });
            }
            if start_pc != 0 {
                row.start_function = sym.function_name(start_pc);
            }
            row
        })
        .collect();
    goroutines.sort_by(|a, b| {
        (b.counts.remote_samples, b.counts.local_samples, a.goid).cmp(&(
            a.counts.remote_samples,
            a.counts.local_samples,
            b.goid,
        ))
    });
    let no_stack = Vec::new();
    let mut stack_rows: Vec<StackRow> = by_stack
        .iter()
        .map(|(key, (counts, goids))| {
            let pcs = stacks.get(key).unwrap_or(&no_stack);
            let mut goids = goids.clone();
            goids.sort_unstable();
            StackRow {
                counts: counts.clone(),
                goroutines: goids,
                stack: frames(sym, pcs, false),
            }
        })
        .collect();
    stack_rows.sort_by(|a, b| {
        (b.counts.remote_samples, b.counts.local_samples)
            .cmp(&(a.counts.remote_samples, a.counts.local_samples))
    });
    let samples = by_goid_stack
        .into_iter()
        .map(|((goid, key), counts)| {
            let pcs = stacks.get(&key).unwrap_or(&no_stack);
            let stack: Vec<Location> = pcs
                .iter()
                .enumerate()
                .map(|(i, &pc)| sym.location(pc, i > 0))
                .collect();
            // An empty stack is encoded as `[no stack]`.
            WeightedSample {
                stack,
                values: vec![
                    counts.remote_samples as i64,
                    counts.local_samples as i64,
                    counts.remote_pages as i64,
                ],
                labels: vec![("goroutine".into(), goid.to_string())],
            }
        })
        .collect();
    (totals, goroutines, stack_rows, samples)
}

fn short_file(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

pub fn text(r: &Report, top: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NUMA accesses of pid {} ({}), {}, nodes online {:?}",
        r.target.pid,
        r.target.go_version,
        duration(r.duration_ns),
        r.nodes_online
    );
    let _ = writeln!(s, "\nMethods:");
    for m in &r.methods {
        let _ = writeln!(
            s,
            "  {:<8} {}: {}",
            if m.active { "active" } else { "inactive" },
            m.name,
            m.detail
        );
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "\nHint-fault samples: {} remote, {} local ({} remote); pages {} remote, {} local, {} migrated",
        t.remote_samples,
        t.local_samples,
        percent(t.remote_ratio),
        t.remote_pages,
        t.local_pages,
        t.migrated_pages
    );
    let _ = writeln!(s, "\nBy goroutine (goroutine 0: system stack or unknown):");
    let _ = writeln!(
        s,
        "  {:>6}  {:>7}  {:>7}  {:>7}  {:<14}  created at  [start]",
        "goid", "remote", "local", "remote%", "cpu node:n"
    );
    for g in r.goroutines.iter().take(top) {
        let nodes: Vec<String> = g
            .cpu_nodes
            .iter()
            .map(|(n, c)| format!("{n}:{c}"))
            .collect();
        let _ = writeln!(
            s,
            "  {:>6}  {:>7}  {:>7}  {:>7}  {:<14}  {}  [{}]",
            g.goid,
            g.counts.remote_samples,
            g.counts.local_samples,
            percent(g.counts.remote_ratio),
            nodes.join(","),
            g.created_at.as_deref().unwrap_or("-"),
            g.start_function.as_deref().unwrap_or("-"),
        );
    }
    if r.goroutines.len() > top {
        let _ = writeln!(s, "  ... {} more", r.goroutines.len() - top);
    }
    let _ = writeln!(s, "\nBy stack (leaf first):");
    let _ = writeln!(
        s,
        "  {:>7}  {:>7}  {:>7}  goroutines  stack",
        "remote", "local", "remote%"
    );
    for st in r.stacks.iter().take(top) {
        let frames: Vec<&str> = st
            .stack
            .iter()
            .take(4)
            .map(|f| f.function.as_str())
            .collect();
        let goids: Vec<String> = st.goroutines.iter().take(4).map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "  {:>7}  {:>7}  {:>7}  {:<10}  {}",
            st.counts.remote_samples,
            st.counts.local_samples,
            percent(st.counts.remote_ratio),
            goids.join(","),
            if frames.is_empty() {
                "[no stack]".to_string()
            } else {
                frames.join(" ← ")
            }
        );
    }
    if r.stacks.len() > top {
        let _ = writeln!(s, "  ... {} more", r.stacks.len() - top);
    }
    let _ = writeln!(
        s,
        "\nResident memory per node (/proc/PID/numa_maps{}):",
        r.placement_at_ns
            .map(|t| format!(" at +{}", duration(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "  {:>4}  {:>10}  {:>10}  {:>10}",
        "node", "go heap", "other anon", "file"
    );
    for n in &r.placement {
        let _ = writeln!(
            s,
            "  {:>4}  {:>10}  {:>10}  {:>10}",
            n.node,
            size(n.go_heap_bytes),
            size(n.other_anon_bytes),
            size(n.file_bytes)
        );
    }
    super::allocations::text(&mut s, r.allocations.as_ref(), &r.nodes_online, top);
    let lost = r.counters.get("ring_full").copied().unwrap_or(0);
    if lost > 0 {
        let _ = writeln!(s, "\n{lost} samples lost (ring buffer full)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use gomemtrace_common::{TNF_FAULT_LOCAL, TNF_MIGRATED};

    #[test]
    fn counts_follow_the_flags_and_pages() {
        let mut c = Counts::default();
        let remote = NumaFaultEvent {
            pages: 1,
            flags: TNF_MIGRATED,
            ..Default::default()
        };
        let local_thp = NumaFaultEvent {
            pages: 512,
            flags: TNF_FAULT_LOCAL,
            ..Default::default()
        };
        for e in [remote, remote, remote, local_thp] {
            c.add(&e);
        }
        assert_eq!((c.remote_samples, c.local_samples), (3, 1));
        assert_eq!(
            (c.remote_pages, c.local_pages, c.migrated_pages),
            (3, 512, 3)
        );
        assert!((c.remote_ratio - 0.75).abs() < 1e-9);
    }
}
