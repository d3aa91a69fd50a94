//! `gomemtrace numa`: which goroutines and stacks touch memory on another NUMA node.
//!
//! Methods, chosen at run time and named in the report (docs/NUMA.md):
//! - NUMA-balancing hint faults: an fentry program on `task_numa_fault` in the faulting
//!   task (local iff `TNF_FAULT_LOCAL`), the goroutine from the task's user R14 (TLS
//!   fallback), the data address from `exceptions:page_fault_user`, the user stack, and
//!   the node of the CPU that faulted;
//! - placement: resident memory per node from `/proc/PID/numa_maps`;
//! - PEBS / IBS: detected from the PMUs the kernel exposes; their records are decoded by
//!   [`pmu`], the live path is not implemented.
//!
//! Where the machine has one node, NUMA balancing is off, or the kernel refuses the fentry
//! program, it prints `NUMA: not available (<why>)` and exits with code 7 — before
//! launching or touching the target — rather than a report of zeros.

mod availability;
mod btf;
mod placement;
// The record decoders wait for the live perf-event path; their tests use them today.
#[cfg_attr(not(test), allow(dead_code))]
mod pmu;
mod probes;
mod report;

use std::{collections::BTreeMap, path::Path, process::ExitCode, time::Duration};

use clap::Args;
use gomemtrace_common::{NumaConfig, NumaCounter};

use crate::{
    error::UserError,
    preflight,
    rt::{
        Mappings, RtArgs, RtFormat, TargetJson, analyse, end_reason, monotonic_ns, open_target,
        pprof, wait_for_end, write_output,
    },
    session::finish,
};
use availability::NumaHost;
use probes::NumaProbes;
use report::{Method, Report};

#[derive(Debug, Args)]
pub struct NumaArgs {
    #[command(flatten)]
    pub common: RtArgs,
}

/// Faults listed one by one in the json report (all are counted).
const MAX_EVENTS: usize = 200_000;

/// How often `/proc/PID/numa_maps` is read (it walks the page tables: not every tick).
const PLACEMENT_EVERY_TICKS: u32 = 10;

pub fn run(args: &NumaArgs) -> anyhow::Result<ExitCode> {
    let args = &args.common;
    preflight::check()?;
    let host = NumaHost::read(Path::new("/"));
    let mut reasons = host.reasons();
    let probes = match NumaProbes::load() {
        Ok(p) => Some(p),
        Err(why) => {
            reasons.push(why);
            None
        }
    };
    let (Some(mut probes), true) = (probes, reasons.is_empty()) else {
        return Err(UserError::NumaUnavailable {
            why: reasons.join("; "),
        }
        .into());
    };
    let hardware = pmu::detect(Path::new("/"));

    let mut target = open_target(args.target())?;
    let analysed = analyse(&target, 0)?;
    let o = analysed.go.offsets;
    let task_fsbase = btf::task_fsbase_offset(Path::new("/sys/kernel/btf/vmlinux"));
    let config = NumaConfig {
        g_goid: o.g_goid,
        g_m: o.g_m,
        m_curg: o.m_curg,
        g_gopc: o.g_gopc,
        g_startpc: o.g_startpc,
        task_fsbase: *task_fsbase.as_ref().unwrap_or(&0),
    };
    probes.configure(target.pid, &config)?;
    let mut mappings = Mappings::read(&target)?;
    let heap = mappings
        .layout(&analysed.go.binary)
        .ok_or_else(|| "the executable's mapping was not found".to_string())
        .and_then(|layout| {
            let elf = std::fs::read(&target.exe_link).map_err(|e| e.to_string())?;
            placement::HeapArenas::locate(&analysed.go.binary, &elf, layout.bias)
        });
    let mut placement = placement::Placement::new(target.pid, heap);
    if !args.quiet {
        eprintln!(
            "gomemtrace: tracing NUMA hint faults of pid {} ({}, nodes {:?})",
            target.pid,
            analysed.go.binary.version_string(),
            host.nodes
        );
    }
    let started = monotonic_ns();
    target.release()?;
    let mut events = Vec::new();
    let mut ticks = 0u32;
    let end = wait_for_end(
        args.duration,
        &mut target,
        Duration::from_millis(100),
        |t| {
            events.extend(probes.drain());
            mappings.refresh(t.pid);
            if ticks.is_multiple_of(PLACEMENT_EVERY_TICKS) {
                placement.snapshot(monotonic_ns().saturating_sub(started));
            }
            ticks += 1;
            Ok(())
        },
    )?;
    placement.snapshot(monotonic_ns().saturating_sub(started));
    events.extend(probes.drain());
    let counters = probes.counters()?;
    let stacks = probes.stacks(events.iter().map(|e| e.stack))?;
    drop(probes);
    let ended = monotonic_ns();

    let mut sym = mappings.symbolizer(&analysed.go.binary, &target.exe_path)?;
    let (totals, goroutines, stack_rows, samples) = report::aggregate(&events, &stacks, &mut sym);
    let methods = vec![
        Method {
            name: "numa-balancing hint faults",
            active: true,
            detail: format!(
                "fentry {} + tracepoint exceptions:page_fault_user; goroutine from R14, TLS fallback {}",
                probes::HINT_FAULT_FUNCTION,
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
                detail: why.clone(),
            },
        },
    ];
    let (placement, placement_at_ns) = match placement.last {
        Some((p, at)) => (p, Some(at)),
        None => (Vec::new(), None),
    };
    let report = Report {
        schema: report::SCHEMA,
        target: TargetJson::new(&target, &analysed),
        duration_ns: ended.saturating_sub(started),
        end: end_reason(end),
        nodes_online: host.nodes.clone(),
        methods,
        totals,
        goroutines,
        stacks: stack_rows,
        placement,
        placement_at_ns,
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
    let bytes = match args.format {
        RtFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)?;
            s.push('\n');
            s.into_bytes()
        }
        RtFormat::Text => report::text(&report, args.top).into_bytes(),
        RtFormat::Pprof => pprof::encode(&pprof::Profile {
            sample_types: vec![
                ("remote_samples", "count"),
                ("local_samples", "count"),
                ("remote_pages", "count"),
            ],
            default_type: "remote_samples",
            samples,
            mappings: sym.mappings.clone(),
            comments: vec![format!(
                "gomemtrace numa: {} remote, {} local hint-fault samples",
                report.totals.remote_samples, report.totals.local_samples
            )],
            duration_ns: report.duration_ns as i64,
        }),
    };
    write_output(args.output.as_ref(), &bytes)?;
    if !args.quiet {
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
    finish(&mut target, end)
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
}
