//! `gomemtrace numa`: which goroutines and stacks touch memory on another NUMA node.
//!
//! Methods, chosen at run time and named in the report (docs/NUMA.md):
//! - NUMA-balancing hint faults: an fentry program on `task_numa_fault` in the faulting
//!   task (local iff `TNF_FAULT_LOCAL`), the goroutine from the task's user R14 (TLS
//!   fallback), the data address from `exceptions:page_fault_user`, the user stack, and
//!   the node of the CPU that faulted;
//! - placement: resident memory per node from `/proc/PID/numa_maps`;
//! - allocations per node: the runtime's heap sampler (runtime-sampled mode's probes) and
//!   `move_pages(2)` on each live sampled object ([`allocations`]);
//! - PEBS / IBS: detected from the PMUs the kernel exposes; their records are decoded by
//!   [`pmu`], the live path is not implemented.
//!
//! Where the machine has one node, NUMA balancing is off, or the kernel refuses the fentry
//! program, it prints `NUMA: not available (<why>)` and exits with code 7 — before
//! launching or touching the target — rather than a report of zeros.

mod allocations;
pub(crate) mod availability;
pub(crate) mod btf;
mod pages;
mod placement;
// The record decoders wait for the live perf-event path; their tests use them today.
#[cfg_attr(not(test), allow(dead_code))]
mod pmu;
mod report;

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use gomemtrace_common::NumaCounter;

use crate::bpf::{self, Bpf, NumaProbes};
use crate::{
    engine::{self, ExeMappings, monotonic_ns, preflight},
    error::UserError,
    rt::{self, TargetJson, end_reason},
};
use availability::NumaHost;
use gomemtrace_report::{WeightedProfile, WeightedSample, to_weighted_pprof};
use report::{Method, Report};

/// Faults listed one by one in the json report (all are counted).
const MAX_EVENTS: usize = 200_000;

/// How often `/proc/PID/numa_maps` is read (it walks the page tables: not every tick).
const PLACEMENT_EVERY_TICKS: u32 = 10;

pub fn run(args: &rt::Config) -> anyhow::Result<ExitCode> {
    let run = args.run.clone();
    // Before anything else: without privileges the NUMA checks below would mislead.
    preflight::check()?;
    let (host, bpf, mut probes) = available()?;
    let hardware = pmu::detect(Path::new("/"));

    let mut target = engine::open(&run.target)?;
    let go = engine::read_go_target(&target)?;
    let task_fsbase = btf::task_fsbase_offset(Path::new("/sys/kernel/btf/vmlinux"));
    let config = bpf::numa_config(&go.offsets, *task_fsbase.as_ref().unwrap_or(&0));
    probes.configure(target.pid, &config)?;
    let mut mappings = ExeMappings::read(target.pid, &target.exe_link)?;
    let heap = mappings
        .layout(&go.binary)
        .map_err(placement::HeapError::from)
        .and_then(|layout| {
            placement::HeapArenas::locate(&go.binary, go.binary.file_data(), layout.bias)
        });
    let mut placement = placement::Placement::new(target.pid, heap);
    // Where the binary links the runtime's heap sampler; otherwise the report says why not.
    let mut allocs = allocations::Tracker::attach(
        &bpf,
        &go,
        &target.exe_link,
        target.pid,
        mappings.bias(&go.binary),
    );
    let seen_since = if target.child.is_some() {
        "start"
    } else {
        "attach"
    };
    if !run.quiet {
        eprintln!(
            "gomemtrace: tracing NUMA hint faults of pid {} ({}, nodes {:?}); allocations per node: {}",
            target.pid,
            go.binary.version_string(),
            host.nodes,
            match &allocs {
                Ok(_) => "runtime heap sampler".to_string(),
                Err(why) => format!("inactive ({why})"),
            }
        );
    }
    let started = monotonic_ns();
    let started_at = Instant::now();
    target.release()?;
    let mut events = Vec::new();
    let mut ticks = 0u32;
    let end = engine::run_until_end(
        run.duration,
        started_at,
        &mut target,
        Duration::from_millis(100),
        |t| {
            events.extend(probes.drain());
            mappings.refresh(t.pid);
            if ticks.is_multiple_of(PLACEMENT_EVERY_TICKS) {
                placement.snapshot(monotonic_ns().saturating_sub(started));
            }
            if let Ok(a) = allocs.as_mut() {
                a.tick(monotonic_ns().saturating_sub(started));
            }
            ticks += 1;
            Ok(None)
        },
    )?;
    placement.snapshot(monotonic_ns().saturating_sub(started));
    let alive = target.is_alive();
    let allocs = allocs.map(|a| a.finish(alive, monotonic_ns().saturating_sub(started)));
    events.extend(probes.drain());
    let counters = probes.counters()?;
    let stacks = probes.stacks(events.iter().map(|e| e.stack))?;
    drop(probes);
    let ended = monotonic_ns();

    let mut sym = mappings.symbolizer(&go.binary, &target.exe_path)?;
    let (totals, goroutines, stack_rows, samples) = report::aggregate(&events, &stacks, &mut sym);
    let allocations = allocs
        .as_ref()
        .ok()
        .and_then(|a| a.report(&mut sym, seen_since));
    let methods = vec![
        Method {
            name: "numa-balancing hint faults",
            active: true,
            detail: format!(
                "fentry {} + tracepoint exceptions:page_fault_user; goroutine from R14, TLS fallback {}",
                bpf::HINT_FAULT_FUNCTION,
                match &task_fsbase {
                    Ok(off) => format!("at task_struct+{off:#x}"),
                    Err(why) => format!("off ({why})"),
                }
            ),
        },
        Method {
            name: "placement",
            active: placement.last.is_some(),
            detail: format!(
                "/proc/{}/numa_maps every {} ms; {}",
                target.pid,
                PLACEMENT_EVERY_TICKS * 100,
                placement.heap_detail()
            ),
        },
        allocations_method(&allocs, allocations.as_ref(), seen_since),
        match &hardware {
            Ok(p) => Method {
                name: "hardware sampling (PEBS/IBS)",
                active: false,
                detail: format!(
                    "{p:?} present; live sampling not implemented, records decoded offline only"
                ),
            },
            Err(why) => Method {
                name: "hardware sampling (PEBS/IBS)",
                active: false,
                detail: why.to_string(),
            },
        },
    ];
    let (placement, placement_at_ns) = match placement.last {
        Some((p, at)) => (p, Some(at)),
        None => (Vec::new(), None),
    };
    let report = Report {
        schema: report::SCHEMA,
        target: TargetJson::new(&target, &go, go.offsets_source),
        duration_ns: ended.saturating_sub(started),
        end: end_reason(end),
        nodes_online: host.nodes.clone(),
        methods,
        totals,
        goroutines,
        stacks: stack_rows,
        placement,
        placement_at_ns,
        allocations,
        counters: NumaCounter::ALL
            .iter()
            .map(|&c| (c.name(), counters[c as usize]))
            .collect::<BTreeMap<_, _>>(),
        events: events
            .iter()
            .take(MAX_EVENTS)
            .map(|e| report::EventJson::new(e, started))
            .collect(),
        events_not_listed: events.len().saturating_sub(MAX_EVENTS) as u64,
    };
    let bytes = render(&report, &samples, &sym.mappings, args.format, args.top)?;
    engine::write_report(run.output.as_deref(), &bytes)?;
    if !run.quiet {
        eprintln!(
            "gomemtrace: {}: {} remote, {} local hint-fault samples{}",
            end_reason(end),
            report.totals.remote_samples,
            report.totals.local_samples,
            match counters[NumaCounter::DropRingFull as usize] {
                0 => String::new(),
                lost => format!(", {lost} lost (ring buffer full)"),
            }
        );
    }
    engine::finish(&mut target, end)
}

/// The machine's nodes and the hint-fault probes, loaded and attached; or every reason
/// remote accesses cannot be measured here (`NUMA: not available (...)`, exit 7), before
/// the target is touched.
fn available() -> Result<(NumaHost, Bpf, NumaProbes), UserError> {
    let host = NumaHost::read(Path::new("/"));
    let mut reasons = host.reasons();
    let loaded = Bpf::load()
        .map_err(|e| format!("loading the eBPF object failed: {e:#}"))
        .and_then(|bpf| {
            NumaProbes::load(&bpf)
                .map(|probes| (bpf, probes))
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok((bpf, probes)) if reasons.is_empty() => Ok((host, bpf, probes)),
        Ok(_) => Err(UserError::NumaUnavailable {
            why: reasons.join("; "),
        }),
        Err(why) => {
            reasons.push(why);
            Err(UserError::NumaUnavailable {
                why: reasons.join("; "),
            })
        }
    }
}

/// The report in `format`: json, text (`top` rows per table) or pprof (`samples`).
fn render(
    report: &Report,
    samples: &[WeightedSample],
    mappings: &[gomemtrace_report::model::Mapping],
    format: rt::ReportFormat,
    top: usize,
) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        rt::ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(report)?;
            s.push('\n');
            s.into_bytes()
        }
        rt::ReportFormat::Text => report::text(report, top).into_bytes(),
        rt::ReportFormat::Pprof => to_weighted_pprof(&WeightedProfile {
            sample_types: &[
                ("remote_samples", "count"),
                ("local_samples", "count"),
                ("remote_pages", "count"),
            ],
            default_sample_type: 0,
            samples,
            mappings,
            comments: &[format!(
                "gomemtrace numa: {} remote, {} local hint-fault samples",
                report.totals.remote_samples, report.totals.local_samples
            )],
            duration_ns: report.duration_ns as i64,
        }),
    })
}

/// `PF_EXITING` in `/proc/PID/stat`'s flags (include/linux/sched.h).
const PF_EXITING: u64 = 0x4;

/// Whether `pid` is exiting or gone: its memory is being torn down, so what is read of it
/// now (numa_maps, page nodes) describes no state it ran in, and is not kept.
fn exiting(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten();
    let state = fields.next();
    let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok());
    matches!(state, None | Some("Z") | Some("X")) || flags.is_none_or(|f| f & PF_EXITING != 0)
}

/// The method line of allocations per node: what ran, or why it did not.
fn allocations_method(
    allocs: &Result<allocations::Finished, allocations::AllocationsError>,
    report: Option<&allocations::Json>,
    seen_since: &str,
) -> Method {
    const NAME: &str = "allocations per node";
    let why = match (allocs, report) {
        (Err(why), _) => why.to_string(),
        (Ok(a), None) => a
            .missing()
            .unwrap_or_else(|| "no classification".to_string()),
        (Ok(a), Some(r)) => {
            return Method {
                name: NAME,
                active: true,
                detail: format!(
                    "runtime heap sampler (uprobes on runtime.setprofilebucket, runtime.freeSpecial; MemProfileRate {}); the page of each live sampled object{} classified with move_pages(2), {}, every {} ms or more, the last at +{}",
                    r.sample_rate
                        .map_or_else(|| "not seen yet".into(), |r| r.to_string()),
                    if seen_since == "attach" {
                        " allocated since attach"
                    } else {
                        ""
                    },
                    match &a.pagemap_unavailable {
                        None => "pages it calls not present from /proc/PID/pagemap".to_string(),
                        Some(why) => format!("no pagemap fallback ({why})"),
                    },
                    allocations::EVERY.as_millis(),
                    rt::duration(r.classified_at_ns)
                ),
            };
        }
    };
    Method {
        name: NAME,
        active: false,
        detail: why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_not_exiting_a_zombie_or_missing_one_is() {
        assert!(!exiting(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Not reaped yet: a zombie once it has exited.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !exiting(child.id()) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = child.id();
        child.wait().unwrap();
        assert!(exiting(pid), "reaped: gone");
    }

    #[test]
    fn allocations_not_measured_say_why_and_are_not_active() {
        let error = allocations::AllocationsError::Sampler(
            crate::analysis::SamplerError::CompiledOut("runtime.memProfileInternal"),
        );
        let why = error.to_string();
        let m = allocations_method(&Err(error), None, "start");
        assert!(!m.active);
        assert_eq!(m.detail, why);
    }
}
