//! Allocations per node: the runtime's own heap sampler, probed as in runtime-sampled mode
//! (`runtime.setprofilebucket` records each sampled object's address, `runtime.freeSpecial`
//! forgets it when it dies: [`crate::bpf::AllocProbes`]), and the node of the page of
//! each live sampled object's address as the kernel reports it ([`super::pages`]).
//! Classified about once a second while the target runs, and at the end if it still does;
//! the last classification is reported, per node and per allocation stack, with pprof's
//! unbiasing for the estimates.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use gomemtrace_common::{AllocKey, Counter, LiveObject};
use gomemtrace_report::is_runtime;
use serde::Serialize;

use super::pages::PageNodes;
use crate::{
    alloc::collect::{insert_direct_caller, unbias},
    alloc::plan::sampler_probes,
    analysis::{GoTarget, Refused, SamplerError},
    bpf::{AllocProbes, Bpf, Counters},
    rt::{FrameJson, duration, frames},
    symbolizer::Symbolizer,
};

/// Why allocations per node are not measured.
#[derive(Debug, thiserror::Error)]
pub enum AllocationsError {
    #[error("{0}")]
    Sampler(#[from] SamplerError),
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error(transparent)]
    NoMapping(#[from] crate::engine::MappingNotFound),
    #[error("{0:#}")]
    Probes(anyhow::Error),
    #[error("uprobe on {function}: {error:#}")]
    Uprobe {
        function: String,
        error: anyhow::Error,
    },
}

/// Why one classification of the live sampled objects failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("{0:#}")]
    LiveObjects(anyhow::Error),
    #[error("move_pages(2) refused: {0}")]
    MovePages(std::io::Error),
}

/// Shortest time between two classifications.
pub const EVERY: Duration = Duration::from_secs(1);
/// A classification may take at most this share of the time between two.
const MAX_SHARE: u32 = 10;

/// The probes attached to one target and its last classification.
pub struct Tracker {
    probes: AllocProbes,
    pid: u32,
    page_size: u64,
    pages: PageNodes,
    last: Option<Classified>,
    /// Why the latest classification failed (the previous one is kept).
    error: Option<ClassifyError>,
    classifications: u64,
    failures: u64,
    next: Instant,
}

/// The live sampled objects at one moment, each with the node of its page.
#[derive(Debug)]
struct Classified {
    at_ns: u64,
    /// How long it took (the map walk, move_pages, pagemap).
    took_ns: u64,
    objects: Vec<Object>,
    /// Entries gone between the map walk and their read: freed meanwhile.
    vanished: u64,
    /// The map walk stopped at its limit: objects may be missing.
    cut_short: bool,
}

/// One live sampled object: where it was allocated, its size, and the node of the page
/// of its address (or the negative errno `move_pages` gave).
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub key: AllocKey,
    pub size: u64,
    pub status: i32,
    /// The node came from pagemap (move_pages called the page not present).
    pub via_pagemap: bool,
}

impl Tracker {
    /// Attaches the sampler's probes to `pid`; the error says why they cannot be used.
    /// `bias`: the executable's load bias, where it was found.
    pub fn attach(
        bpf: &Bpf,
        go: &GoTarget,
        exe_link: &std::path::Path,
        pid: u32,
        bias: Result<u64, crate::engine::MappingNotFound>,
    ) -> Result<Self, AllocationsError> {
        let sampler = go.sampler()?;
        let mut config = go.process_config();
        let probes = sampler_probes(go, &mut config, &sampler)?;
        let bias = bias?;
        config.mem_profile_rate_addr = sampler.rate_vaddr.wrapping_add(bias);
        let mut alloc = AllocProbes::new(bpf);
        alloc
            .configure(pid, config)
            .map_err(AllocationsError::Probes)?;
        for point in &probes {
            alloc
                .attach(point.program, exe_link, &[point.file_offset], pid)
                .map_err(|error| AllocationsError::Uprobe {
                    function: point.function.clone(),
                    error,
                })?;
        }
        // SAFETY: sysconf takes no pointers.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as u64,
            _ => 4096,
        };
        Ok(Self {
            probes: alloc,
            pid,
            page_size,
            pages: PageNodes::new(page_size),
            last: None,
            error: None,
            classifications: 0,
            failures: 0,
            next: Instant::now(),
        })
    }

    /// Classifies the live sampled objects if the last classification is old enough
    /// (about once a second; less often where one takes long: it walks a map of up to
    /// [`gomemtrace_common::MAX_LIVE_OBJECTS`] entries).
    pub fn tick(&mut self, at_ns: u64) {
        // A drain that fails leaves the keys in the kernel's maps (where an overflow is
        // counted): nothing is lost by it.
        let _ = self.probes.drain_if_due();
        if Instant::now() >= self.next {
            self.classify(at_ns);
        }
    }

    fn classify(&mut self, at_ns: u64) {
        let started = Instant::now();
        match self.read(at_ns) {
            // Read while the target's memory was torn down (or after it exited): no state
            // it ran in, and no failure of the method.
            _ if super::exiting(self.pid) => {}
            Ok(mut c) => {
                c.took_ns = started.elapsed().as_nanos() as u64;
                self.last = Some(c);
                self.error = None;
                self.classifications += 1;
            }
            Err(e) => {
                self.error = Some(e);
                self.failures += 1;
            }
        }
        self.next = Instant::now() + EVERY.max(started.elapsed() * MAX_SHARE);
    }

    fn read(&self, at_ns: u64) -> Result<Classified, ClassifyError> {
        let read = self
            .probes
            .live_objects(self.pid)
            .map_err(ClassifyError::LiveObjects)?;
        let live: Vec<(u64, LiveObject)> = read.objects.into_iter().collect();
        let pages: Vec<usize> = live
            .iter()
            .map(|(addr, _)| (addr & !(self.page_size - 1)) as usize)
            .collect();
        let status = self
            .pages
            .classify(self.pid, &pages)
            .map_err(ClassifyError::MovePages)?;
        Ok(Classified {
            at_ns,
            took_ns: 0,
            objects: live
                .iter()
                .zip(status)
                .map(|((_, o), page)| Object {
                    key: o.key,
                    size: o.size,
                    status: page.status,
                    via_pagemap: page.via_pagemap,
                })
                .collect(),
            vanished: read.vanished,
            cut_short: read.cut_short,
        })
    }

    /// Classifies once more if the target still runs, reads what the report needs and
    /// detaches the probes.
    pub fn finish(mut self, alive: bool, at_ns: u64) -> Finished {
        if alive {
            self.classify(at_ns);
        }
        let counters = self.probes.counters();
        let rate = self
            .probes
            .sample_rates()
            .ok()
            .and_then(|r| r.get(&self.pid).copied());
        let mut stacks = HashMap::new();
        for o in self.last.iter().flat_map(|c| &c.objects) {
            if let std::collections::hash_map::Entry::Vacant(slot) = stacks.entry(o.key.stack)
                && let Some(pcs) = self.probes.stack(o.key.stack)
            {
                slot.insert(pcs);
            }
        }
        Finished {
            pagemap_unavailable: self.pages.pagemap_unavailable().map(ToString::to_string),
            last: self.last,
            error: self.error,
            classifications: self.classifications,
            failures: self.failures,
            page_size: self.page_size,
            counters,
            rate,
            stacks,
        }
    }
}

/// What the probes left once detached.
pub struct Finished {
    /// Why pages move_pages calls not present could not be looked up in pagemap.
    pub pagemap_unavailable: Option<String>,
    last: Option<Classified>,
    error: Option<ClassifyError>,
    classifications: u64,
    failures: u64,
    page_size: u64,
    counters: anyhow::Result<Counters>,
    rate: Option<u64>,
    stacks: HashMap<u64, Vec<u64>>,
}

impl Finished {
    /// Why there is no classification to report, if there is none.
    pub fn missing(&self) -> Option<String> {
        match (&self.last, &self.error) {
            (Some(_), _) if let Err(e) = &self.counters => {
                Some(format!("the probes' counters are unreadable: {e:#}"))
            }
            (Some(_), _) => None,
            (None, Some(e)) => Some(format!("no classification: {e}")),
            (None, None) => Some("no classification: the target exited before the first".into()),
        }
    }

    /// The json section; `None` without a classification (or the drop counters).
    pub fn report(&self, sym: &mut Symbolizer<'_>, seen_since: &'static str) -> Option<Json> {
        let last = self.last.as_ref()?;
        let c = self.counters.as_ref().ok()?;
        let agg = aggregate(&last.objects, self.rate.unwrap_or(1));
        let mut stacks: Vec<StackJson> = agg
            .stacks
            .into_iter()
            .map(|s| {
                let mut pcs = self.stacks.get(&s.stack).cloned().unwrap_or_default();
                insert_direct_caller(&mut pcs, s.caller_pc);
                let stack = frames(sym, &pcs, false);
                StackJson {
                    site: stack
                        .iter()
                        .find(|f| !is_runtime(&f.function))
                        .map(|f| f.function.clone()),
                    goroutines: s.goroutines,
                    nodes: node_rows(s.nodes),
                    unclassified: s.unclassified,
                    stack,
                }
            })
            .collect();
        stacks.sort_by(|a, b| {
            let total = |s: &StackJson| {
                s.nodes.iter().map(|n| n.tally.estimated_bytes).sum::<u64>()
                    + s.unclassified.estimated_bytes
            };
            total(b).cmp(&total(a))
        });
        let counters = [
            ("samples", c.get(Counter::Events)),
            ("sampled_bytes", c.get(Counter::EventBytes)),
            ("frees", c.get(Counter::Frees)),
            (
                "frees_of_objects_before_trace",
                c.get(Counter::FreeBeforeTrace),
            ),
            ("live_map_full", c.get(Counter::DropLiveMapFull)),
            ("alloc_map_full", c.get(Counter::DropAllocMapFull)),
            ("sample_unreadable", c.get(Counter::DropSampleUnreadable)),
            ("free_map_full", c.get(Counter::DropFreeMapFull)),
            ("special_unreadable", c.get(Counter::DropSpecialUnreadable)),
            ("rate_unrecorded", c.get(Counter::RateUnrecorded)),
            ("stack_unreadable", c.get(Counter::StackUnreadable)),
            ("stack_map_full", c.get(Counter::StackMapFull)),
            ("stack_cycle", c.get(Counter::StackCycle)),
            ("stack_off_stack", c.get(Counter::StackOffStack)),
            ("goid_unreadable", c.get(Counter::GoidUnreadable)),
            ("goroutine_map_full", c.get(Counter::DropGoroutineMapFull)),
            ("freed_while_read", last.vanished),
            ("walk_cut_short", u64::from(last.cut_short)),
            ("classifications", self.classifications),
            ("classification_failures", self.failures),
        ]
        .into_iter()
        .collect();
        Some(Json {
            seen_since,
            sample_rate: self.rate,
            classified_at_ns: last.at_ns,
            classification_ns: last.took_ns,
            page_size: self.page_size,
            live_sampled_objects: last.objects.len() as u64,
            nodes: node_rows(agg.nodes),
            unclassified: Unclassified {
                tally: agg.unclassified,
                by_error: agg.errors,
            },
            classified_by: BTreeMap::from([
                ("move_pages", agg.via_move_pages),
                ("pagemap", agg.via_pagemap),
            ]),
            stacks,
            counters,
        })
    }
}

/// Sampled and estimated objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Live sampled objects (the runtime's samples themselves).
    pub sampled_objects: u64,
    pub sampled_bytes: u64,
    /// What they stand for, unbiased as pprof does per allocation stack.
    pub estimated_objects: u64,
    pub estimated_bytes: u64,
}

impl Tally {
    fn add_sample(&mut self, size: u64) {
        self.sampled_objects += 1;
        self.sampled_bytes += size;
    }

    fn estimate(&mut self, rate: u64) {
        (self.estimated_objects, self.estimated_bytes) =
            unbias(self.sampled_objects, self.sampled_bytes, rate);
    }

    fn add(&mut self, other: &Tally) {
        self.sampled_objects += other.sampled_objects;
        self.sampled_bytes += other.sampled_bytes;
        self.estimated_objects += other.estimated_objects;
        self.estimated_bytes += other.estimated_bytes;
    }
}

/// One allocation stack's live sampled objects by node.
#[derive(Debug, PartialEq, Eq)]
pub struct StackTally {
    pub stack: u64,
    pub caller_pc: u64,
    pub goroutines: Vec<u64>,
    pub nodes: BTreeMap<u32, Tally>,
    pub unclassified: Tally,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub nodes: BTreeMap<u32, Tally>,
    pub unclassified: Tally,
    /// Unclassified objects by the error `move_pages` gave for their page.
    pub errors: BTreeMap<String, u64>,
    /// Objects whose node move_pages gave, and those whose node came from pagemap.
    pub via_move_pages: u64,
    pub via_pagemap: u64,
    pub stacks: Vec<StackTally>,
}

/// Totals per node and per allocation stack (stack and direct caller; every goroutine
/// and type together). Each stack's tally per node is unbiased with that tally's own
/// average size, as pprof unbiases each record; node totals are their sums.
pub fn aggregate(objects: &[Object], rate: u64) -> Aggregate {
    let mut by_stack: BTreeMap<(u64, u64), StackTally> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut via_move_pages, mut via_pagemap) = (0, 0);
    for o in objects {
        let s = by_stack
            .entry((o.key.stack, o.key.caller_pc))
            .or_insert_with(|| StackTally {
                stack: o.key.stack,
                caller_pc: o.key.caller_pc,
                goroutines: Vec::new(),
                nodes: BTreeMap::new(),
                unclassified: Tally::default(),
            });
        if !s.goroutines.contains(&o.key.goid) {
            s.goroutines.push(o.key.goid);
        }
        match u32::try_from(o.status) {
            Ok(node) => {
                s.nodes.entry(node).or_default().add_sample(o.size);
                if o.via_pagemap {
                    via_pagemap += 1;
                } else {
                    via_move_pages += 1;
                }
            }
            Err(_) => {
                s.unclassified.add_sample(o.size);
                *errors.entry(error_name(o.status)).or_default() += 1;
            }
        }
    }
    let mut out = Aggregate {
        errors,
        via_move_pages,
        via_pagemap,
        ..Default::default()
    };
    for mut s in by_stack.into_values() {
        s.goroutines.sort_unstable();
        for (node, t) in &mut s.nodes {
            t.estimate(rate);
            out.nodes.entry(*node).or_default().add(t);
        }
        s.unclassified.estimate(rate);
        out.unclassified.add(&s.unclassified);
        out.stacks.push(s);
    }
    out
}

/// `move_pages`' negative status, by name: ENOENT is a page not present (never touched,
/// or reclaimed; pagemap did not find it either), EFAULT an address outside any mapping
/// or on the zero page.
fn error_name(status: i32) -> String {
    let errno = status.checked_neg().unwrap_or(i32::MAX);
    match errno {
        libc::ENOENT => "ENOENT".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EACCES => "EACCES".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EIO => "EIO".into(),
        _ if status == i32::MIN => "not reported".into(),
        n => format!("errno {n}"),
    }
}

fn node_rows(nodes: BTreeMap<u32, Tally>) -> Vec<NodeTally> {
    nodes
        .into_iter()
        .map(|(node, tally)| NodeTally { node, tally })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct NodeTally {
    pub node: u32,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Debug, Serialize)]
pub struct Unclassified {
    #[serde(flatten)]
    pub tally: Tally,
    /// Objects by the error `move_pages` gave for their page (`ENOENT`, `EFAULT`, ...).
    pub by_error: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct StackJson {
    /// The first frame outside the runtime: the allocating function.
    pub site: Option<String>,
    pub goroutines: Vec<u64>,
    pub nodes: Vec<NodeTally>,
    pub unclassified: Tally,
    /// Leaf (the sampler's probe in the runtime) first.
    pub stack: Vec<FrameJson>,
}

/// The `allocations` section of the json report.
#[derive(Debug, Serialize)]
pub struct Json {
    /// `start` (launched: every sampled object) or `attach` (`-p`: objects allocated
    /// before attach are not seen).
    pub seen_since: &'static str,
    /// The target's `MemProfileRate` at its latest sample; estimates assume it held
    /// throughout. `null`: no sample seen.
    pub sample_rate: Option<u64>,
    /// When the reported classification was made, ns since tracing started.
    pub classified_at_ns: u64,
    /// How long that classification took.
    pub classification_ns: u64,
    pub page_size: u64,
    pub live_sampled_objects: u64,
    pub nodes: Vec<NodeTally>,
    pub unclassified: Unclassified,
    /// Classified objects by where their node came from: `move_pages`, or `pagemap` for
    /// pages move_pages called not present.
    pub classified_by: BTreeMap<&'static str, u64>,
    /// Sorted by estimated live bytes.
    pub stacks: Vec<StackJson>,
    pub counters: BTreeMap<&'static str, u64>,
}

/// Human-readable approximate size.
fn approx(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while unit < UNITS.len() - 1 && value >= 1024.0 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The text section: per node, then per allocation stack (estimated live bytes).
pub fn text(s: &mut String, a: Option<&Json>, nodes: &[u32], top: usize) {
    use std::fmt::Write as _;
    let Some(a) = a else {
        let _ = writeln!(s, "\nAllocations per node: not measured (see Methods)");
        return;
    };
    let _ = writeln!(
        s,
        "\nLive sampled allocations per node (move_pages at +{}; MemProfileRate {}; objects allocated since {}):",
        duration(a.classified_at_ns),
        a.sample_rate
            .map_or_else(|| "unknown".into(), |r| r.to_string()),
        if a.seen_since == "start" {
            "the start"
        } else {
            "attach"
        }
    );
    let _ = writeln!(
        s,
        "  {:>12}  {:>8}  {:>12}  {:>10}  {:>12}",
        "node", "sampled", "sampled size", "estimated", "est. size"
    );
    let mut row = |name: String, t: &Tally| {
        let _ = writeln!(
            s,
            "  {:>12}  {:>8}  {:>12}  {:>10}  {:>12}",
            name,
            t.sampled_objects,
            approx(t.sampled_bytes),
            t.estimated_objects,
            approx(t.estimated_bytes)
        );
    };
    for n in &a.nodes {
        row(n.node.to_string(), &n.tally);
    }
    row("unclassified".into(), &a.unclassified.tally);
    let _ = writeln!(
        s,
        "  node from move_pages: {}, from pagemap: {}",
        a.classified_by.get("move_pages").copied().unwrap_or(0),
        a.classified_by.get("pagemap").copied().unwrap_or(0)
    );
    if !a.unclassified.by_error.is_empty() {
        let errors: Vec<String> = a
            .unclassified
            .by_error
            .iter()
            .map(|(e, n)| format!("{e}: {n}"))
            .collect();
        let _ = writeln!(s, "  unclassified pages: {}", errors.join(", "));
    }
    let _ = writeln!(s, "\nBy allocation stack (estimated live bytes per node):");
    let mut header = String::new();
    for n in nodes {
        let _ = write!(header, "{:>10}  ", format!("node {n}"));
    }
    let _ = writeln!(
        s,
        "  {header}{:>12}  goroutines  stack (from the allocating function, leaf first)",
        "unclassified"
    );
    for st in a.stacks.iter().take(top) {
        let mut cells = String::new();
        for n in nodes {
            let bytes = st
                .nodes
                .iter()
                .find(|t| t.node == *n)
                .map_or(0, |t| t.tally.estimated_bytes);
            let _ = write!(cells, "{:>10}  ", approx(bytes));
        }
        // From the allocating function: the sampler's own frames say nothing.
        let all = st.stack.iter().map(|f| f.function.as_str());
        let mut frames: Vec<&str> = all.clone().skip_while(|f| is_runtime(f)).take(4).collect();
        if frames.is_empty() {
            frames = all.take(4).collect();
        }
        let goids: Vec<String> = st.goroutines.iter().take(4).map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "  {cells}{:>12}  {:<10}  {}",
            approx(st.unclassified.estimated_bytes),
            goids.join(","),
            if frames.is_empty() {
                "[no stack]".to_string()
            } else {
                frames.join(" ← ")
            }
        );
    }
    if a.stacks.len() > top {
        let _ = writeln!(s, "  ... {} more", a.stacks.len() - top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(stack: u64, goid: u64, size: u64, status: i32) -> Object {
        Object {
            key: AllocKey {
                tgid: 1,
                stack,
                goid,
                caller_pc: 0x10,
                ..Default::default()
            },
            size,
            status,
            via_pagemap: status == 1,
        }
    }

    #[test]
    fn live_samples_are_totalled_per_node_and_stack_and_unbiased_per_stack() {
        const KIB64: u64 = 64 << 10;
        let mut objects = Vec::new();
        // Stack 1: 3 samples on node 0, 1 on node 1, 1 not present; goroutines 7 and 8.
        for (goid, status) in [(7, 0), (7, 0), (8, 0), (8, 1), (7, -libc::ENOENT)] {
            objects.push(object(1, goid, KIB64, status));
        }
        // Stack 2: 2 samples of 1 KiB on node 1, 1 on a page with no mapping.
        for status in [1, 1, -libc::EFAULT] {
            objects.push(object(2, 9, 1024, status));
        }
        let a = aggregate(&objects, KIB64);
        // A 64 KiB object at rate 64 KiB is sampled with p = 1 − e^−1: each stands for
        // 1/p = 1.582 objects; a 1 KiB one with p = 1 − e^−1/64: 64.5 objects.
        let p64 = 1.0 - (-1.0f64).exp();
        let p1 = 1.0 - (-1.0f64 / 64.0).exp();
        let est = |n: f64, p: f64| (n * (1.0 / p)) as u64;
        assert_eq!(
            a.nodes[&0],
            Tally {
                sampled_objects: 3,
                sampled_bytes: 3 * KIB64,
                estimated_objects: est(3.0, p64),
                estimated_bytes: est(3.0 * KIB64 as f64, p64),
            }
        );
        assert_eq!(a.nodes[&1].sampled_objects, 3);
        assert_eq!(a.nodes[&1].sampled_bytes, KIB64 + 2048);
        assert_eq!(
            a.nodes[&1].estimated_objects,
            est(1.0, p64) + est(2.0, p1),
            "each stack unbiased with its own average size"
        );
        assert_eq!(a.unclassified.sampled_objects, 2, "never dropped");
        assert_eq!((a.via_move_pages, a.via_pagemap), (3, 3));
        assert_eq!(a.unclassified.sampled_bytes, KIB64 + 1024);
        assert_eq!(
            a.errors,
            BTreeMap::from([("EFAULT".to_string(), 1), ("ENOENT".to_string(), 1)])
        );
        assert_eq!(a.stacks.len(), 2);
        let s1 = a.stacks.iter().find(|s| s.stack == 1).unwrap();
        assert_eq!(s1.goroutines, [7, 8]);
        assert_eq!(s1.nodes[&0].sampled_objects, 3);
        assert_eq!(s1.nodes[&1].sampled_objects, 1);
        assert_eq!(s1.unclassified.sampled_objects, 1);
        // Every sample lands in exactly one place.
        let total: u64 = a.nodes.values().map(|t| t.sampled_objects).sum::<u64>()
            + a.unclassified.sampled_objects;
        assert_eq!(total, objects.len() as u64);
        // Rate 1: every allocation sampled, nothing scaled.
        let exact = aggregate(&objects, 1);
        assert_eq!(exact.nodes[&0].estimated_bytes, 3 * KIB64);
    }

    #[test]
    fn no_classification_is_no_measurement() {
        // A move_pages(2) failure, as worded.
        let finished = |last: Option<Classified>, error: Option<&str>| Finished {
            pagemap_unavailable: None,
            last,
            error: error.map(|e| {
                ClassifyError::MovePages(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    e,
                ))
            }),
            classifications: 0,
            failures: 0,
            page_size: 4096,
            counters: Ok(Counters::default()),
            rate: None,
            stacks: HashMap::new(),
        };
        assert_eq!(
            finished(None, None).missing().as_deref(),
            Some("no classification: the target exited before the first")
        );
        assert_eq!(
            finished(None, Some("Operation not permitted"))
                .missing()
                .as_deref(),
            Some("no classification: move_pages(2) refused: Operation not permitted")
        );
        let classified = Classified {
            at_ns: 1,
            took_ns: 1,
            objects: Vec::new(),
            vanished: 0,
            cut_short: false,
        };
        assert_eq!(finished(Some(classified), None).missing(), None);
    }
}
