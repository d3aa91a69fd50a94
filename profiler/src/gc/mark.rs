//! `gomemtrace gctrace --assists`: mark assists (who pays the GC tax — per goroutine and
//! per stack where it was drafted) and background mark workers (dedicated, fractional and
//! idle mark time per cycle), from the probes in profiler-ebpf/src/mark.rs: entries plus
//! uprobes at every RET of `gcAssistAlloc`, `gcDrainN` and `gcDrain`, and just after the
//! clock reads of `gcAssistAlloc1` and `gcBgMarkWorker`.
//!
//! Per cycle, the totals sent at `gcMarkTermination` entry are differenced and added to the
//! cycle's json (`"mark"`) or printed as an indented line under its text line. At the end, a
//! report section (text), one json object (`{"assists": ...}`) and optionally a pprof
//! profile weighted by assist time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use gomemtrace_common::{
    GcEvent, MARK_ASSIST_CLOCK_END_PROGRAM, MARK_ASSIST_CLOCK_START_PROGRAM,
    MARK_ASSIST_ENTRY_PROGRAM, MARK_ASSIST_RET_PROGRAM, MARK_ASSIST_WORK_ENTRY_PROGRAM,
    MARK_ASSIST_WORK_RET_PROGRAM, MARK_CYCLE_END_PROGRAM, MARK_DRAIN_ENTRY_PROGRAM,
    MARK_DRAIN_N_RET_PROGRAM, MARK_DRAIN_RET_PROGRAM, MARK_WORKER_CLOCK_END_PROGRAM,
    MARK_WORKER_CLOCK_START_PROGRAM, MarkConfig, MarkCounter, MarkCycleEvent, MarkTotals, NO_STACK,
};
use gomemtrace_gobin::GoBinary;
use gomemtrace_report::{WeightedProfile, WeightedSample, model::Location, to_weighted_pprof};
use serde::Serialize;

use crate::{
    analysis::{AttachPoint, GoTarget},
    bpf::{GcProbes, MarkProbes},
    engine::ExeMappings,
    engine::target::Target,
    symbolizer::{ExeLayout, Symbolizer},
};

/// Where the mark probes go: (file offset, program).
pub struct Plan {
    pub config: MarkConfig,
    pub attach: Vec<AttachPoint>,
}

/// Where the runtime times an assist's work (gctrace's `b`).
const ASSIST_WORK_FUNCTION: &str = "runtime.gcAssistAlloc1";

/// Where the runtime times a background worker's run (gctrace's `c` and `d`):
/// `startTime := nanotime()` … `now := nanotime()` around the `gcDrain` call.
const WORKER_FUNCTION: &str = "runtime.gcBgMarkWorker";

/// A worker's mark work; its entry names the run's mode.
const DRAIN_FUNCTION: &str = "runtime.gcDrain";

/// The probed functions: (name, entry program, RET program).
const FUNCTIONS: [(&str, Option<&str>, Option<&str>); 5] = [
    (
        "runtime.gcAssistAlloc",
        Some(MARK_ASSIST_ENTRY_PROGRAM),
        Some(MARK_ASSIST_RET_PROGRAM),
    ),
    (
        ASSIST_WORK_FUNCTION,
        Some(MARK_ASSIST_WORK_ENTRY_PROGRAM),
        Some(MARK_ASSIST_WORK_RET_PROGRAM),
    ),
    ("runtime.gcDrainN", None, Some(MARK_DRAIN_N_RET_PROGRAM)),
    (
        DRAIN_FUNCTION,
        Some(MARK_DRAIN_ENTRY_PROGRAM),
        Some(MARK_DRAIN_RET_PROGRAM),
    ),
    (
        "runtime.gcMarkTermination",
        Some(MARK_CYCLE_END_PROGRAM),
        None,
    ),
];

/// The runtime's clock read, as `gcAssistAlloc1` and `gcBgMarkWorker` call it (`nanotime` inlines to a call of
/// the assembly `nanotime1`; a build with inlining off calls `nanotime`).
const CLOCK_FUNCTIONS: [&str; 2] = ["runtime.nanotime1", "runtime.nanotime"];

/// Where the probes bracket the interval a function times itself
/// (`startTime := nanotime()` … `now := nanotime()`, whose difference the runtime adds to
/// its assist time, gctrace's `b`, in `gcAssistAlloc1`, and to its worker time, `c` and
/// `d`, in `gcBgMarkWorker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClockReads {
    /// Just after each call returned from the assembly `nanotime1` (ABI0, its result the
    /// word at RSP): the probes take the runtime's own two readings, so the interval is
    /// the runtime's, whatever the scheduler does between a probe and a clock read.
    AfterCalls { start: u64, end: u64 },
    /// On the two `CALL`s (an ABIInternal clock function, as a build with inlining off
    /// calls): our clock, read just before the runtime reads its own.
    OnCalls { start: u64, end: u64 },
}

/// The two clock reads of `gcAssistAlloc1` or `gcBgMarkWorker`; None unless the function
/// calls the clock exactly twice.
///
/// Why there rather than at the entry and the RETs: the interval between the entry and
/// a RET also holds the early return when the GC has just finished, the CPU-limiter
/// bookkeeping after `now` (`limiterEvent.stop`, `gcCPULimiter.update`), and half of the
/// RET probe's own trap (a RET is single-stepped out of line, ~10 µs on the development VM).
/// On the assists fixture that made ours 13–18% above the runtime's own total on every
/// release, ~12 µs per call. Probes on the `CALL`s (emulated by the kernel, as cheap as an
/// entry probe) cut that to ±2% on an idle machine, but a thread descheduled between a probe
/// and the clock read after it (a loaded machine: the return from the trap is where a
/// pending preemption happens) put a time slice on one side only: CI once read ours 6.6%
/// below the runtime's over a run at a load average of 10. After the calls the probes read
/// the runtime's own readings; the instruction there is single-stepped (~2 of those per
/// assist, each assist being tens of µs of marking). The same holds for the workers timed
/// from `gcDrain`'s entry to its RETs on our clock: idle time read 4.9% below the
/// runtime's over a run under load.
fn clock_reads(go: &GoTarget, code: &[u8], entry: u64) -> Option<ClockReads> {
    // Go code calls the assembly `nanotime1` directly with its own ABI0 (the result on the
    // stack; pclntab names it without the `.abi0` the symbol table adds); `nanotime`, a Go
    // function, returns in RAX.
    let clock_call = |target: u64| {
        go.binary.function_at(target).and_then(|f| {
            let name = f.name.strip_suffix(".abi0").unwrap_or(&f.name);
            (f.entry == target && CLOCK_FUNCTIONS.contains(&name))
                .then_some(name == "runtime.nanotime1")
        })
    };
    let reads: Vec<(u64, bool)> = gomemtrace_gobin::disasm::direct_calls(code, entry)
        .into_iter()
        .filter_map(|(at, target)| clock_call(target).map(|abi0| (at, abi0)))
        .collect();
    match reads[..] {
        // A `CALL rel32` (E8 and four bytes, no prefix in Go's code) is five bytes long.
        [(start, true), (end, true)]
            if [start, end]
                .iter()
                .all(|&at| code.get((at - entry) as usize) == Some(&0xe8)) =>
        {
            Some(ClockReads::AfterCalls {
                start: start + 5,
                end: end + 5,
            })
        }
        [(start, _), (end, _)] => Some(ClockReads::OnCalls { start, end }),
        _ => None,
    }
}

/// Finds every probe location; all five functions exist in Go 1.19–1.27.
pub fn plan(go: &GoTarget) -> anyhow::Result<Plan> {
    let mut attach = Vec::new();
    let at = |program: &'static str, vaddr: u64, name: &str| {
        let file_offset = go
            .binary
            .vaddr_to_file_offset(vaddr)
            .ok_or_else(|| go.refuse(format!("{name} is outside any segment")))?;
        Ok::<_, crate::error::UserError>(AttachPoint {
            program,
            file_offset,
            vaddr,
            function: name.to_string(),
        })
    };
    let code_of = |name: &str| {
        let f = go
            .binary
            .function(name)
            .ok_or_else(|| go.refuse(format!("no {name} in the binary")))?;
        let code = go
            .binary
            .function_code(f)
            .ok_or_else(|| go.refuse(format!("no code for {name}")))?;
        Ok::<_, crate::error::UserError>((f, code))
    };
    // The workers' runs at the runtime's own two readings where both are found (every
    // release 1.19–1.27 calls the assembly clock twice there); else gcDrain entry to RETs.
    let (worker, worker_code) = code_of(WORKER_FUNCTION)?;
    let worker_clock = match clock_reads(go, worker_code, worker.entry) {
        Some(ClockReads::AfterCalls { start, end }) => {
            attach.push(at(MARK_WORKER_CLOCK_START_PROGRAM, start, WORKER_FUNCTION)?);
            attach.push(at(MARK_WORKER_CLOCK_END_PROGRAM, end, WORKER_FUNCTION)?);
            true
        }
        _ => false,
    };
    for (name, entry, ret) in FUNCTIONS {
        let (f, code) = code_of(name)?;
        if name == ASSIST_WORK_FUNCTION
            && let Some(clock) = clock_reads(go, code, f.entry)
        {
            let (start_program, end_program, start, end) = match clock {
                ClockReads::AfterCalls { start, end } => (
                    MARK_ASSIST_CLOCK_START_PROGRAM,
                    MARK_ASSIST_CLOCK_END_PROGRAM,
                    start,
                    end,
                ),
                ClockReads::OnCalls { start, end } => (
                    MARK_ASSIST_WORK_ENTRY_PROGRAM,
                    MARK_ASSIST_WORK_RET_PROGRAM,
                    start,
                    end,
                ),
            };
            attach.push(at(start_program, start, name)?);
            attach.push(at(end_program, end, name)?);
            continue;
        }
        if let Some(program) = entry {
            attach.push(go.entry_point(program, f)?);
        }
        if let Some(program) = ret
            && !(worker_clock && name == DRAIN_FUNCTION)
        {
            let rets = gomemtrace_gobin::disasm::ret_offsets(code, f.entry);
            anyhow::ensure!(!rets.is_empty(), "no RET instruction found in {name}");
            for vaddr in rets {
                attach.push(at(program, vaddr, name)?);
            }
        }
    }
    Ok(Plan {
        config: MarkConfig {
            g_goid: go.offsets.g_goid,
            g_startpc: go.offsets.g_startpc,
            g_m: go.offsets.g_m,
            m_curg: go.offsets.m_curg,
            worker_clock: worker_clock.into(),
            _pad: 0,
        },
        attach,
    })
}

/// One cycle's mark work as measured by the probes (ns unless named otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CycleMark {
    /// `gcAssistAlloc` calls that returned in this cycle, and their wall time (parking in
    /// `gcParkAssist` included).
    pub assists: u64,
    pub assist_wall_ns: u64,
    /// Time in `gcAssistAlloc1`: what the runtime counts as assist CPU (gctrace's `b`).
    pub assist_ns: u64,
    pub assist_work_calls: u64,
    /// Scan work (bytes scanned, the runtime's unit) done by assists.
    pub assist_scan_work: u64,
    /// `gcDrain` time of the background workers, per mode.
    pub dedicated_ns: u64,
    pub fractional_ns: u64,
    pub idle_ns: u64,
    /// dedicated + fractional: gctrace's `c`.
    pub background_ns: u64,
    /// Worker runs (`gcDrain` calls) per mode.
    pub dedicated_runs: u64,
    pub fractional_runs: u64,
    pub idle_runs: u64,
}

impl CycleMark {
    fn between(now: &MarkTotals, prev: &MarkTotals) -> Self {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let dedicated_ns = d(now.drain_ns[0], prev.drain_ns[0]);
        let fractional_ns = d(now.drain_ns[1], prev.drain_ns[1]);
        Self {
            assists: d(now.assists, prev.assists),
            assist_wall_ns: d(now.assist_wall_ns, prev.assist_wall_ns),
            assist_ns: d(now.assist_cpu_ns, prev.assist_cpu_ns),
            assist_work_calls: d(now.assist_work_calls, prev.assist_work_calls),
            assist_scan_work: d(now.assist_scan_work, prev.assist_scan_work),
            dedicated_ns,
            fractional_ns,
            idle_ns: d(now.drain_ns[2], prev.drain_ns[2]),
            background_ns: dedicated_ns + fractional_ns,
            dedicated_runs: d(now.drain_calls[0], prev.drain_calls[0]),
            fractional_runs: d(now.drain_calls[1], prev.drain_calls[1]),
            idle_runs: d(now.drain_calls[2], prev.drain_calls[2]),
        }
    }

    fn text(&self) -> String {
        format!(
            "  mark: {} assists {} ms wall {} ms work, {} ms dedicated, {} ms fractional, {} ms idle",
            self.assists,
            fmt_ms(self.assist_wall_ns),
            fmt_ms(self.assist_ns),
            fmt_ms(self.dedicated_ns),
            fmt_ms(self.fractional_ns),
            fmt_ms(self.idle_ns),
        )
    }
}

/// The running mark probes and what they reported so far.
pub struct Tracer {
    probes: MarkProbes,
    pending: VecDeque<MarkCycleEvent>,
    prev: MarkTotals,
    mappings: ExeMappings,
    started: std::time::Instant,
}

impl Tracer {
    /// Loads and attaches the mark probes for `target` (still stopped when launched).
    pub fn start(gc: &mut GcProbes, plan: &Plan, target: &Target) -> anyhow::Result<Self> {
        let probes = MarkProbes::load(gc, target.pid, &plan.config)?;
        for point in &plan.attach {
            gc.attach(
                point.program,
                &target.exe_link,
                point.file_offset,
                target.pid,
            )?;
        }
        let mappings = ExeMappings::read(target.pid, &target.exe_link)
            .context("stat the target's executable")?;
        Ok(Self {
            probes,
            pending: VecDeque::new(),
            prev: MarkTotals::default(),
            mappings,
            started: std::time::Instant::now(),
        })
    }

    /// The mark work of the cycle `e` (which ended at `e.mark_term_end`), if its
    /// `gcMarkTermination` was seen.
    fn cycle(&mut self, e: &GcEvent) -> Option<CycleMark> {
        self.pending.extend(self.probes.drain());
        let mut last = None;
        while let Some(front) = self.pending.front() {
            if e.mark_term_end != 0 && front.ktime_ns > e.mark_term_end {
                break;
            }
            last = self.pending.pop_front();
        }
        let event = last?;
        let mark = CycleMark::between(&event.totals, &self.prev);
        self.prev = event.totals;
        Some(mark)
    }

    /// `line` (the cycle's text or json) with the cycle's mark work added.
    pub fn decorate(&mut self, e: &GcEvent, line: String, format: super::LineFormat) -> String {
        let mark = self.cycle(e);
        match format {
            super::LineFormat::Text => match mark {
                Some(m) => format!("{line}\n{}", m.text()),
                None => line,
            },
            super::LineFormat::Json => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(serde_json::Value::Object(mut object)) => {
                    object.insert(
                        "mark".into(),
                        serde_json::to_value(mark).unwrap_or(serde_json::Value::Null),
                    );
                    serde_json::Value::Object(object).to_string()
                }
                _ => line,
            },
        }
    }

    /// The "who pays the GC tax" section (text), or one `{"assists": ...}` json line;
    /// and the pprof profile when asked for.
    pub fn report(
        &self,
        binary: &GoBinary,
        exe_path: &str,
        format: super::LineFormat,
        pprof: Option<&Path>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let snapshot = self.probes.snapshot()?;
        // Not found (the target exited at once): file addresses, unbiased.
        let exe = self.mappings.layout(binary).unwrap_or(ExeLayout {
            bias: 0,
            start: 0,
            end: u64::MAX,
        });
        let mut symbolizer = Symbolizer::new(binary, exe, exe_path, &self.mappings.mappings);
        let report = Report::build(&snapshot, &mut symbolizer);
        match format {
            super::LineFormat::Text => write!(out, "{}", report.text())?,
            super::LineFormat::Json => {
                writeln!(out, "{}", serde_json::json!({ "assists": &report.json }))?
            }
        }
        out.flush()?;
        if let Some(path) = pprof {
            let bytes = report.pprof(
                &symbolizer.mappings,
                self.started.elapsed().as_nanos() as i64,
                exe_path,
            );
            std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize)]
struct GoroutineRow {
    goid: u64,
    start_function: Option<String>,
    assists: u64,
    wall_ns: u64,
    avg_wall_ns: u64,
    assist_ns: u64,
    scan_work: u64,
}

#[derive(Debug, Default, Serialize)]
struct SiteRow {
    /// First frame outside the runtime: where the goroutine was when drafted.
    site: String,
    assists: u64,
    wall_ns: u64,
    assist_ns: u64,
    scan_work: u64,
    goroutines: usize,
}

#[derive(Debug, Default, Serialize)]
struct ReportJson {
    assists: u64,
    wall_ns: u64,
    assist_ns: u64,
    scan_work: u64,
    goroutines: Vec<GoroutineRow>,
    sites: Vec<SiteRow>,
    counters: BTreeMap<String, u64>,
}

struct Report {
    json: ReportJson,
    samples: Vec<WeightedSample>,
}

/// pprof sample types of the assist profile; the default is `assist_time`.
const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("assists", "count"),
    ("assist_time", "nanoseconds"),
    ("assist_work_time", "nanoseconds"),
    ("scan_work", "bytes"),
];

impl Report {
    fn build(snapshot: &crate::bpf::MarkSnapshot, symbolizer: &mut Symbolizer<'_>) -> Self {
        let mut goroutines: BTreeMap<u64, GoroutineRow> = BTreeMap::new();
        let mut sites: HashMap<String, (SiteRow, std::collections::BTreeSet<u64>)> = HashMap::new();
        let mut samples = Vec::new();
        let mut json = ReportJson::default();
        for (key, stats) in &snapshot.assists {
            json.assists += stats.count;
            json.wall_ns += stats.wall_ns;
            json.assist_ns += stats.cpu_ns;
            json.scan_work += stats.scan_work;
            let g = goroutines.entry(key.goid).or_insert_with(|| GoroutineRow {
                goid: key.goid,
                start_function: symbolizer.function_name(stats.start_pc),
                ..Default::default()
            });
            g.assists += stats.count;
            g.wall_ns += stats.wall_ns;
            g.assist_ns += stats.cpu_ns;
            g.scan_work += stats.scan_work;

            // Leaf first: the probed instruction, the drafting allocator ([rsp]), then the
            // frame-pointer walk (return addresses).
            let mut pcs = if key.stack == NO_STACK {
                Vec::new()
            } else {
                snapshot.stacks.get(&key.stack).cloned().unwrap_or_default()
            };
            if key.caller_pc != 0 && pcs.get(1) != Some(&key.caller_pc) {
                let at = pcs.len().min(1);
                pcs.insert(at, key.caller_pc);
            }
            let stack: Vec<Location> = pcs
                .iter()
                .enumerate()
                .map(|(i, &pc)| symbolizer.location(pc, i > 0))
                .collect();
            let site = stack
                .iter()
                .flat_map(|l| l.frames.iter())
                .find(|f| !is_runtime(&f.function))
                .map(|f| match &f.file {
                    Some(file) => format!("{} ({}:{})", f.function, short(file), f.line),
                    None => f.function.clone(),
                })
                .unwrap_or_else(|| "[runtime]".to_string());
            let (row, goids) = sites.entry(site.clone()).or_insert_with(|| {
                (
                    SiteRow {
                        site,
                        ..Default::default()
                    },
                    Default::default(),
                )
            });
            row.assists += stats.count;
            row.wall_ns += stats.wall_ns;
            row.assist_ns += stats.cpu_ns;
            row.scan_work += stats.scan_work;
            goids.insert(key.goid);
            let start = goroutines[&key.goid].start_function.clone();
            let mut labels = vec![("goroutine".to_string(), key.goid.to_string())];
            if let Some(start) = start {
                labels.push(("start".to_string(), start));
            }
            samples.push(WeightedSample {
                stack,
                values: vec![
                    saturate(stats.count),
                    saturate(stats.wall_ns),
                    saturate(stats.cpu_ns),
                    saturate(stats.scan_work),
                ],
                labels,
            });
        }
        for g in goroutines.values_mut() {
            g.avg_wall_ns = g.wall_ns / g.assists.max(1);
        }
        json.goroutines = goroutines.into_values().collect();
        json.goroutines
            .sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(a.goid.cmp(&b.goid)));
        json.sites = sites
            .into_values()
            .map(|(mut row, goids)| {
                row.goroutines = goids.len();
                row
            })
            .collect();
        json.sites
            .sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(a.site.cmp(&b.site)));
        for c in MarkCounter::ALL {
            json.counters
                .insert(c.name().to_string(), snapshot.counters[c as usize]);
        }
        Report { json, samples }
    }

    fn text(&self) -> String {
        let j = &self.json;
        let mut s = String::new();
        s.push_str(&format!(
            "\nwho pays the GC tax: {} mark assists, {} ms wall (parking included), {} ms \
             assist work, {} MB scanned\n",
            j.assists,
            fmt_ms(j.wall_ns),
            fmt_ms(j.assist_ns),
            j.scan_work >> 20
        ));
        s.push_str(&format!(
            "  {:>8} {:>8} {:>11} {:>10} {:>11}  start function\n",
            "goid", "assists", "wall ms", "avg µs", "work ms"
        ));
        for g in j.goroutines.iter().take(20) {
            s.push_str(&format!(
                "  {:>8} {:>8} {:>11} {:>10} {:>11}  {}\n",
                g.goid,
                g.assists,
                fmt_ms(g.wall_ns),
                g.avg_wall_ns / 1000,
                fmt_ms(g.assist_ns),
                g.start_function.as_deref().unwrap_or("?")
            ));
        }
        s.push_str(&format!(
            "  {:>8} {:>11} {:>11} {:>10}  site (where the goroutine was drafted)\n",
            "assists", "wall ms", "work ms", "goroutines"
        ));
        for site in j.sites.iter().take(20) {
            s.push_str(&format!(
                "  {:>8} {:>11} {:>11} {:>10}  {}\n",
                site.assists,
                fmt_ms(site.wall_ns),
                fmt_ms(site.assist_ns),
                site.goroutines,
                site.site
            ));
        }
        let lost: Vec<String> = j
            .counters
            .iter()
            .filter(|(k, v)| **v > 0 && !matches!(k.as_str(), "hits" | "no_config"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !lost.is_empty() {
            s.push_str(&format!("  counters: {}\n", lost.join(", ")));
        }
        s
    }

    fn pprof(
        &self,
        mappings: &[gomemtrace_report::model::Mapping],
        duration_ns: i64,
        exe: &str,
    ) -> Vec<u8> {
        let comments = [format!(
            "gomemtrace mark assists of {exe}: gcAssistAlloc entry to RET (wall, parking \
             included); assist_work_time = time in gcAssistAlloc1"
        )];
        to_weighted_pprof(&WeightedProfile {
            sample_types: &SAMPLE_TYPES,
            default_sample_type: 1,
            samples: &self.samples,
            mappings,
            comments: &comments,
            duration_ns,
        })
    }
}

/// Milliseconds with 3 decimals.
fn fmt_ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Runtime code (or an unsymbolized PC), not where the program was: skipped when naming
/// the drafting site.
fn is_runtime(function: &str) -> bool {
    gomemtrace_report::is_runtime(function)
        || function.starts_with("internal/")
        || function.starts_with("0x")
}

fn short(file: &str) -> &str {
    let mut parts = file.rsplitn(3, '/');
    let last = parts.next().unwrap_or(file);
    match parts.next() {
        Some(dir) => &file[file.len() - last.len() - dir.len() - 1..],
        None => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_difference_and_modes() {
        let prev = MarkTotals {
            assists: 2,
            drain_ns: [10, 20, 30, 40],
            ..Default::default()
        };
        let mut now = prev;
        now.assists = 5;
        now.assist_cpu_ns = 7;
        now.drain_ns = [110, 220, 330, 440];
        now.drain_calls = [1, 2, 3, 4];
        let m = CycleMark::between(&now, &prev);
        assert_eq!(m.assists, 3);
        assert_eq!(m.assist_ns, 7);
        assert_eq!(
            (m.dedicated_ns, m.fractional_ns, m.idle_ns),
            (100, 200, 300)
        );
        assert_eq!(m.background_ns, 300);
        assert_eq!(m.idle_runs, 3);
    }

    #[test]
    fn short_file_keeps_two_components() {
        assert_eq!(short("/a/b/c/main.go"), "c/main.go");
        assert_eq!(short("main.go"), "main.go");
        assert_eq!(short("x/main.go"), "x/main.go");
    }
}
