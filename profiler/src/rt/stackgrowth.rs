//! `gomemtrace stackgrowth`: every goroutine stack copy (`runtime.copystack`) — growth by
//! `newstack` when a function's prologue finds too little stack, shrinking by the GC —
//! with the goroutine, old → new size, the function that overflowed, the bytes copied and
//! the time the copy took; aggregated by function; a pprof profile weighted by bytes copied.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use gomemtrace_common::{COPYSTACK_ENTRY_PROGRAM, COPYSTACK_RET_PROGRAM, RtCounter};
use gomemtrace_report::model::Location;
use serde::Serialize;

use super::{
    Config, FrameJson, ReportFormat, TargetJson, analyse, duration, end_reason, frames, size,
};
use crate::{
    bpf::{Bpf, RtProbes},
    engine::{self, ExeMappings, monotonic_ns},
};
use gomemtrace_report::{WeightedProfile, WeightedSample, to_weighted_pprof};

pub const SCHEMA: &str = "gomemtrace.stackgrowth/v1";

/// Events kept in full (the aggregates count every event).
const MAX_EVENTS: usize = 100_000;

#[derive(Debug, Serialize)]
struct Event {
    /// Monotonic ns since tracing started.
    t_ns: u64,
    goid: u64,
    /// `grow` (newstack) or `shrink` (the GC's shrinkstack).
    kind: &'static str,
    old_size: u64,
    new_size: u64,
    /// Bytes of the old stack in use, copied to the new one.
    copied_bytes: u64,
    /// copystack entry to RET.
    duration_ns: u64,
    /// Growth: the function whose prologue overflowed (`gp.sched.pc`). Shrink: where the
    /// goroutine was stopped.
    function: String,
    start_function: Option<String>,
    stack: Vec<FrameJson>,
}

#[derive(Debug, Default, Serialize)]
struct ByFunction {
    function: String,
    kind: &'static str,
    count: u64,
    copied_bytes: u64,
    duration_ns: u64,
    /// Distinct `old->new` size steps and how often each happened, smallest first.
    sizes: Vec<SizeStep>,
}

#[derive(Debug, Default, Serialize)]
struct SizeStep {
    old_size: u64,
    new_size: u64,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    target: TargetJson,
    duration_ns: u64,
    end: &'static str,
    growths: u64,
    shrinks: u64,
    copied_bytes: u64,
    copy_ns: u64,
    by_function: Vec<ByFunction>,
    events: Vec<Event>,
    /// Events seen but not listed (over the cap); they are in the totals.
    events_not_listed: u64,
    counters: BTreeMap<&'static str, u64>,
}

pub fn run(args: &Config) -> anyhow::Result<ExitCode> {
    let run = args.run.clone();
    let mut target = engine::open(&run.target)?;
    let analysed = analyse(&target, 0)?;
    let mut probes = RtProbes::new(
        &Bpf::load()?,
        &[COPYSTACK_ENTRY_PROGRAM, COPYSTACK_RET_PROGRAM],
    )?;
    probes.configure(target.pid, &analysed.config)?;
    analysed.attach_entry(
        &mut probes,
        &target,
        "runtime.copystack",
        COPYSTACK_ENTRY_PROGRAM,
    )?;
    let rets = analysed.attach_rets(
        &mut probes,
        &target,
        "runtime.copystack",
        COPYSTACK_RET_PROGRAM,
    )?;
    let mut mappings = ExeMappings::read(target.pid, &target.exe_link)?;
    if !run.quiet {
        eprintln!(
            "gomemtrace: tracing stack copies of pid {} ({}, copystack entry + {rets} RET probes)",
            target.pid,
            analysed.go.binary.version_string(),
        );
    }
    let started = monotonic_ns();
    let started_at = Instant::now();
    target.release()?;
    let mut raw = Vec::new();
    let end = engine::run_until_end(
        run.duration,
        started_at,
        &mut target,
        Duration::from_millis(100),
        |t| {
            raw.extend(probes.drain_growth());
            mappings.refresh(t.pid);
            Ok(None)
        },
    )?;
    raw.extend(probes.drain_growth());
    let counters = probes.counters()?;
    drop(probes);
    let ended = monotonic_ns();

    let binary = &analysed.go.binary;
    let mut sym = mappings.symbolizer(binary, &target.exe_path)?;
    let mut by_function: BTreeMap<(String, &'static str), ByFunction> = BTreeMap::new();
    let mut events = Vec::new();
    let mut samples = Vec::new();
    let (mut growths, mut shrinks, mut copied, mut copy_ns) = (0, 0, 0, 0);
    for e in &raw {
        let kind = if e.new_size > e.old_size {
            growths += 1;
            "grow"
        } else {
            shrinks += 1;
            "shrink"
        };
        let took = e.end_ns.saturating_sub(e.start_ns);
        copied += e.used;
        copy_ns += took;
        let pcs = e.stack.pcs();
        let function = sym
            .location(e.sched_pc, false)
            .frames
            .last()
            .map_or_else(|| format!("{:#x}", e.sched_pc), |f| f.function.clone());
        let start_function = (e.start_pc != 0)
            .then(|| sym.function_name(e.start_pc))
            .flatten();
        let agg = by_function
            .entry((function.clone(), kind))
            .or_insert_with(|| ByFunction {
                function: function.clone(),
                kind,
                ..Default::default()
            });
        agg.count += 1;
        agg.copied_bytes += e.used;
        agg.duration_ns += took;
        match agg
            .sizes
            .iter_mut()
            .find(|s| (s.old_size, s.new_size) == (e.old_size, e.new_size))
        {
            Some(step) => step.count += 1,
            None => agg.sizes.push(SizeStep {
                old_size: e.old_size,
                new_size: e.new_size,
                count: 1,
            }),
        }
        let stack: Vec<Location> = pcs
            .iter()
            .enumerate()
            .map(|(i, &pc)| sym.location(pc, i > 0))
            .collect();
        // An empty stack is encoded as `[no stack]`.
        samples.push(WeightedSample {
            stack,
            values: vec![1, e.used as i64, took as i64],
            labels: vec![
                ("kind".into(), kind.to_string()),
                ("goroutine".into(), e.goid.to_string()),
                ("step".into(), format!("{}->{}", e.old_size, e.new_size)),
            ],
        });
        if events.len() < MAX_EVENTS {
            events.push(Event {
                t_ns: e.start_ns.saturating_sub(started),
                goid: e.goid,
                kind,
                old_size: e.old_size,
                new_size: e.new_size,
                copied_bytes: e.used,
                duration_ns: took,
                function,
                start_function,
                stack: frames(&mut sym, pcs, false),
            });
        }
    }
    let mut by_function: Vec<ByFunction> = by_function.into_values().collect();
    for f in &mut by_function {
        f.sizes.sort_by_key(|s| (s.old_size, s.new_size));
    }
    by_function.sort_by(|a, b| {
        b.copied_bytes
            .cmp(&a.copied_bytes)
            .then(b.count.cmp(&a.count))
    });
    let report = Report {
        schema: SCHEMA,
        target: TargetJson::new(&target, &analysed.go, analysed.offsets_source),
        duration_ns: ended.saturating_sub(started),
        end: end_reason(end),
        growths,
        shrinks,
        copied_bytes: copied,
        copy_ns,
        by_function,
        events_not_listed: (raw.len() - events.len()) as u64,
        events,
        counters: RtCounter::ALL
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    RtCounter::StackCopies
                        | RtCounter::StackEventsSent
                        | RtCounter::DropStackRingFull
                        | RtCounter::StackRetWithoutEntry
                        | RtCounter::NoConfig
                        | RtCounter::PendingNotRemembered
                        | RtCounter::NoStackTotals
                )
            })
            .map(|&c| (c.name(), counters[c as usize]))
            .collect(),
    };
    let bytes = match args.format {
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)?;
            s.push('\n');
            s.into_bytes()
        }
        ReportFormat::Text => text(&report, args.top).into_bytes(),
        ReportFormat::Pprof => to_weighted_pprof(&WeightedProfile {
            sample_types: &[
                ("copies", "count"),
                ("copied", "bytes"),
                ("copy_time", "nanoseconds"),
            ],
            default_sample_type: 1,
            samples: &samples,
            mappings: &sym.mappings,
            comments: &[format!(
                "gomemtrace stackgrowth: {growths} growths, {shrinks} shrinks"
            )],
            duration_ns: report.duration_ns as i64,
        }),
    };
    engine::write_report(run.output.as_deref(), &bytes)?;
    if !run.quiet {
        let lost = counters[RtCounter::DropStackRingFull as usize]
            + counters[RtCounter::StackRetWithoutEntry as usize];
        eprintln!(
            "gomemtrace: {}: {growths} stack growths, {shrinks} shrinks, {} copied{}",
            end_reason(end),
            size(copied),
            if lost > 0 {
                format!(", {lost} copies not reported")
            } else {
                String::new()
            }
        );
    }
    engine::finish(&mut target, end)
}

fn text(r: &Report, top: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Stack copies of pid {} ({}), {}: {} growths, {} shrinks, {} copied in {}",
        r.target.pid,
        r.target.go_version,
        duration(r.duration_ns),
        r.growths,
        r.shrinks,
        size(r.copied_bytes),
        duration(r.copy_ns)
    );
    let _ = writeln!(s, "\nBy function (growth: the function that overflowed):");
    let _ = writeln!(
        s,
        "  {:>6}  {:>6}  {:>10}  {:>10}  function  [sizes]",
        "kind", "count", "copied", "time"
    );
    for f in r.by_function.iter().take(top) {
        let sizes: Vec<String> = f
            .sizes
            .iter()
            .map(|s| format!("{}→{}×{}", size(s.old_size), size(s.new_size), s.count))
            .collect();
        let _ = writeln!(
            s,
            "  {:>6}  {:>6}  {:>10}  {:>10}  {}  [{}]",
            f.kind,
            f.count,
            size(f.copied_bytes),
            duration(f.duration_ns),
            f.function,
            sizes.join(", ")
        );
    }
    if r.by_function.len() > top {
        let _ = writeln!(s, "  ... {} more", r.by_function.len() - top);
    }
    let _ = writeln!(s, "\nCopies (first {top}):");
    for e in r.events.iter().take(top) {
        let _ = writeln!(
            s,
            "  +{:<10} goroutine {:<6} {:<6} {:>8} → {:<8} {:>10}  {}{}",
            duration(e.t_ns),
            e.goid,
            e.kind,
            size(e.old_size),
            size(e.new_size),
            duration(e.duration_ns),
            e.function,
            e.stack
                .get(1)
                .map(|f| format!(" ← {}", f.function))
                .unwrap_or_default()
        );
    }
    let lost: u64 = ["stack_ring_full", "stack_ret_without_entry"]
        .iter()
        .filter_map(|k| r.counters.get(k))
        .sum();
    if lost > 0 {
        let _ = writeln!(
            s,
            "\n{lost} copies not reported (see counters in --format json)"
        );
    }
    s
}
