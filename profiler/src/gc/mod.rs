//! `gomemtrace gctrace`: GC cycles and stop-the-world pauses of a Go process, printed as
//! the runtime's own `GODEBUG=gctrace=1` lines although the process never set GODEBUG.
//!
//! Timings come from entry uprobes (profiler-ebpf/src/gc.rs): the phases' wall clock and
//! every pause, on stripped binaries too. Heap sizes, the goal, CPU times and the cycle
//! number are the runtime's own globals, read by the probe as the world restarts at the
//! end of the cycle — when the binary has `.symtab` and DWARF to find them ([`layout`]).
//! What cannot be measured prints as `?` (docs/GCTRACE.md).

pub mod layout;
mod line;
mod mark;

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use gomemtrace_common::{
    GC_FINISH_TRANSITION_PROGRAM, GC_FLAG_START_HAS_WORLDSTOP, GC_FLAG_STW_REASON,
    GC_MARK_DONE_PROGRAM, GC_MARK_TERMINATION_PROGRAM, GC_START_PROGRAM,
    GC_START_THE_WORLD_PROGRAM, GC_START_TRANSITION_PROGRAM, GC_STOP_THE_WORLD_PROGRAM, GcConfig,
    GcCounter, GcEvent,
};
use gomemtrace_gobin::{GoBinary, offsets};

use crate::{
    analysis::{AttachPoint, GoTarget},
    bpf::{Bpf, GcProbes},
    engine::{self, ExeMappings, MappingNotFound, Target, TargetConfig, clock_ns, monotonic_ns},
};
use layout::{Globals, Slot, Values};
use line::Cycle;

/// The probed runtime functions, their programs, and whether the function must exist.
const PROBES: [(&str, &str, bool); 7] = [
    ("runtime.gcStart", GC_START_PROGRAM, true),
    ("runtime.gcMarkDone", GC_MARK_DONE_PROGRAM, true),
    (
        "runtime.gcMarkTermination",
        GC_MARK_TERMINATION_PROGRAM,
        true,
    ),
    (
        "runtime.stopTheWorldWithSema",
        GC_STOP_THE_WORLD_PROGRAM,
        true,
    ),
    (
        "runtime.startTheWorldWithSema",
        GC_START_THE_WORLD_PROGRAM,
        true,
    ),
    // Exact pause ends (Go 1.19+); without it a pause ends at startTheWorldWithSema's
    // entry, before the runtime restarts its Ps.
    (
        "runtime.(*gcCPULimiterState).finishGCTransition",
        GC_FINISH_TRANSITION_PROGRAM,
        false,
    ),
    // The runtime's own phase start times (work.tSweepTerm, work.tMarkTerm), Go 1.19+.
    (
        "runtime.(*gcCPULimiterState).startGCTransition",
        GC_START_TRANSITION_PROGRAM,
        false,
    ),
];

/// How each cycle's line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// `gc N @Ts P%: ... P`, as the runtime prints with GODEBUG=gctrace=1.
    Text,
    /// One json object per cycle (docs/GCTRACE.md).
    Json,
}

/// `gomemtrace gctrace`'s settings, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub run: TargetConfig,
    pub format: LineFormat,
    /// Also trace mark assists and mark workers.
    pub assists: bool,
    /// Where to write the assists' pprof profile.
    pub assists_pprof: Option<std::path::PathBuf>,
}

pub fn run(args: &Config) -> anyhow::Result<ExitCode> {
    let run = args.run.clone();
    let mut target = engine::open(&run.target)?;
    let launched = target.child.is_some();
    let analysed = analyse(&target, args.assists)?;
    let mut out = engine::open_output(run.output.as_deref())?;

    let mut probes = GcProbes::new(&Bpf::load()?)?;
    probes.configure(target.pid, &analysed.config)?;
    for point in &analysed.attach {
        probes.attach(
            point.program,
            &target.exe_link,
            point.file_offset,
            target.pid,
        )?;
    }
    let mark = match &analysed.mark {
        Some(plan) => Some(mark::Tracer::start(&mut probes, plan, &target)?),
        None => None,
    };
    if !run.quiet {
        eprintln!(
            "gomemtrace: tracing GC of pid {} ({}, {} probes){}",
            target.pid,
            analysed.binary.version_string(),
            probes.attached(),
            match &analysed.globals.missing {
                Some(why) if !analysed.globals.any() => format!("; heap fields are ? ({why})"),
                Some(why) => format!("; some fields are ? ({why})"),
                None => String::new(),
            }
        );
    }
    let mut printer = Printer {
        globals: analysed.globals,
        format: args.format,
        // Launched under ptrace before its first instruction: no cycle can be missed, so
        // counting gives the runtime's numbers even without memstats.
        count_from_start: launched,
        seen: 0,
        process_start_ns: None,
        mark,
    };
    // `@T`'s origin without runtime.runtimeInitTime: a launched target starts running
    // when released (it was held at its first instruction while probes were attached);
    // a running one at its exec.
    printer.process_start_ns = if launched {
        Some(monotonic_ns())
    } else {
        process_start_monotonic_ns(target.pid)
    };
    let started = Instant::now();
    target.release()?;

    let end = engine::run_until_end(
        run.duration,
        started,
        &mut target,
        Duration::from_millis(100),
        |_| {
            for event in probes.drain() {
                printer.print(&event, &mut out)?;
            }
            Ok(None)
        },
    )?;
    for event in probes.drain() {
        printer.print(&event, &mut out)?;
    }
    if let Some(mark) = &printer.mark {
        mark.report(
            &analysed.binary,
            &target.exe_path,
            args.format,
            args.assists_pprof.as_deref(),
            &mut out,
        )?;
    }
    out.flush()?;
    if !run.quiet {
        let c = probes.counters()?;
        let dropped = c[GcCounter::DropRingFull as usize] + c[GcCounter::DropStateMapFull as usize];
        eprintln!(
            "gomemtrace: {} GC cycles, {} other stop-the-world pauses{}",
            printer.seen,
            c[GcCounter::OtherStws as usize],
            if dropped > 0 {
                format!(", {dropped} cycles lost")
            } else {
                String::new()
            }
        );
        // What the probes could not measure in full, beside the lost cycles.
        let degraded: Vec<String> = GcCounter::ALL
            .iter()
            .filter(|k| {
                !matches!(
                    k,
                    GcCounter::Hits
                        | GcCounter::NoConfig
                        | GcCounter::Cycles
                        | GcCounter::OtherStws
                        | GcCounter::DropRingFull
                        | GcCounter::DropStateMapFull
                ) && c[**k as usize] > 0
            })
            .map(|&k| format!("{} {}", k.name(), c[k as usize]))
            .collect();
        if !degraded.is_empty() {
            eprintln!("gomemtrace: GC probe counters: {}", degraded.join(", "));
        }
    }
    drop(probes);
    engine::finish(&mut target, end)
}

struct Analysed {
    binary: GoBinary,
    config: GcConfig,
    /// (file offset, program) per probe.
    attach: Vec<AttachPoint>,
    globals: Globals,
    /// Mark assist and mark worker probes (--assists).
    mark: Option<mark::Plan>,
}

fn analyse(target: &Target, assists: bool) -> anyhow::Result<Analysed> {
    let go = engine::read_go_target(target)?;
    let plan = Plan::of_target(&go, go.binary.file_data())?;
    let mark = if assists {
        Some(mark::plan(&go)?)
    } else {
        None
    };
    let bias = ExeMappings::read(target.pid, &target.exe_link)?
        .bias(&go.binary)
        .ok();
    let config = plan.config(&go.binary, bias)?;
    Ok(Analysed {
        binary: go.binary,
        config,
        attach: plan.attach,
        globals: plan.globals,
        mark,
    })
}

/// What an executable needs for the GC probes, whichever process runs it: shared by the
/// one-process `gctrace` and the agent.
pub struct Plan {
    /// (file offset, program) per probe.
    pub attach: Vec<AttachPoint>,
    pub globals: Globals,
    flags: u32,
    g_m: u32,
    m_curg: u32,
}

impl Plan {
    /// The plan for `go`, whose executable's bytes are `data`.
    pub fn of_target(go: &GoTarget, data: &[u8]) -> anyhow::Result<Plan> {
        let structs = offsets::struct_offsets_from_dwarf(data, &layout::STRUCTS)
            .ok()
            .flatten();
        let version = go.binary.version();
        let mut attach = Vec::with_capacity(PROBES.len());
        let minor = version.release().1;
        let worldstop_args = version.major > 1 || minor >= 22;
        for (name, program, required) in PROBES {
            if program == GC_STOP_THE_WORLD_PROGRAM && worldstop_args {
                // The start of the world carries the stop's reason and start time; a probe
                // on the stop would only add its own cost to the pause the runtime measures.
                continue;
            }
            let Some(f) = go.binary.function(name) else {
                if required {
                    return Err(go.refuse(format!("no {name} in the binary")).into());
                }
                continue;
            };
            attach.push(go.entry_point(program, f)?);
        }
        let globals = Globals::locate(&go.binary, structs.as_ref());
        let mut flags = 0;
        if version.major > 1 || minor >= 21 {
            flags |= GC_FLAG_STW_REASON;
        }
        if worldstop_args {
            flags |= GC_FLAG_START_HAS_WORLDSTOP;
        }
        let plan = Plan {
            attach,
            globals,
            flags,
            g_m: go.offsets.g_m,
            m_curg: go.offsets.m_curg,
        };
        Ok(plan)
    }

    /// The probes' settings for a process running `binary` loaded at `bias` (None: its
    /// text mapping was not found).
    pub fn config(
        &self,
        binary: &GoBinary,
        bias: Option<u64>,
    ) -> Result<GcConfig, MappingNotFound> {
        // PIE: globals are read at their runtime addresses.
        let bias = if binary.is_pie() && self.globals.any() {
            bias.ok_or(MappingNotFound)?
        } else {
            0
        };
        Ok(GcConfig {
            flags: self.flags,
            g_m: self.g_m,
            m_curg: self.m_curg,
            _pad: 0,
            slots: self.globals.runtime_addrs(bias),
        })
    }
}

/// Turns probe events into lines.
struct Printer {
    globals: Globals,
    format: LineFormat,
    count_from_start: bool,
    seen: u64,
    /// The process's start (exec) on the monotonic clock: `@T`'s origin when
    /// `runtime.runtimeInitTime` cannot be read.
    process_start_ns: Option<u64>,
    /// Mark assists and workers (--assists).
    mark: Option<mark::Tracer>,
}

impl Printer {
    fn print(&mut self, event: &GcEvent, out: &mut dyn Write) -> anyhow::Result<()> {
        self.seen += 1;
        let cycle = self.cycle(event);
        let mut text = match self.format {
            LineFormat::Text => cycle.text(),
            LineFormat::Json => cycle.json(),
        };
        if let Some(mark) = &mut self.mark {
            text = mark.decorate(event, text, self.format);
        }
        writeln!(out, "{text}")?;
        out.flush()?;
        Ok(())
    }

    fn cycle(&self, e: &GcEvent) -> Cycle {
        let v = Values::decode(&self.globals, &e.slots);
        let saw_start = e.saw_sweep_term != 0;
        let span = |from: u64, to: u64| (to >= from && from != 0).then(|| to - from);
        // The runtime's own phase starts when startGCTransition was seen; else when the
        // world began to stop.
        let nonzero = |t: u64, fallback: u64| if t != 0 { t } else { fallback };
        let sweep_start = nonzero(e.t_sweep_term, e.sweep_term_start);
        let mark_term_start = nonzero(e.t_mark_term, e.mark_term_start);
        let sweep_term = saw_start
            .then(|| span(sweep_start, e.sweep_term_end))
            .flatten();
        let mark = saw_start
            .then(|| span(e.sweep_term_end, mark_term_start))
            .flatten();
        let mark_term = span(mark_term_start, e.mark_term_end);
        let stw_procs = v
            .get_i32(Slot::StwProcs)
            .and_then(|p| u64::try_from(p).ok());
        let cpu_of = |clock: Option<u64>| Some(clock? * stw_procs?);
        let dedicated = v
            .get(Slot::DedicatedMarkTime)
            .zip(v.get(Slot::FractionalMarkTime))
            .map(|(d, f)| d.wrapping_add(f));
        let origin = v
            .get(Slot::RuntimeInitTime)
            .filter(|&t| t != 0)
            .or(self.process_start_ns);
        let number = v
            .get(Slot::NumGc)
            .or(self.count_from_start.then_some(self.seen));
        Cycle {
            number,
            start_ns: saw_start
                .then(|| sweep_start.checked_sub(origin?))
                .flatten(),
            cpu_percent: v.get_f64(Slot::GcCpuFraction).map(|f| (f * 100.0) as i64),
            clock_ns: [sweep_term, mark, mark_term],
            cpu_ns: [
                cpu_of(sweep_term),
                v.get(Slot::AssistTime),
                dedicated,
                v.get(Slot::IdleMarkTime),
                cpu_of(mark_term),
            ],
            heap_bytes: [v.get(Slot::Heap0), v.get(Slot::Heap1), v.get(Slot::Heap2)],
            goal_bytes: v.get(Slot::LastHeapGoal),
            stacks_bytes: v.get(Slot::StackScan),
            globals_bytes: v.get(Slot::GlobalsScan),
            procs: v
                .get_i32(Slot::MaxProcs)
                .and_then(|p| u64::try_from(p).ok()),
            // work.userForced when readable: the runtime's own flag.
            forced: v
                .get(Slot::UserForced)
                .map(|f| f != 0)
                .or(line::trigger_name(e.trigger).map(|t| t == "cycle")),
            trigger: line::trigger_name(e.trigger),
            pause_ns: e.pause_ns,
            stws: e.stws,
            runtime_pause_ns: v.get(Slot::PauseNs),
            gogc: v.get_i32(Slot::GcPercent),
            gomemlimit: v.get(Slot::MemoryLimit).map(|limit| limit as i64),
        }
    }
}

/// `/proc/PID/stat` starttime (clock ticks since boot, on CLOCK_BOOTTIME) converted to
/// CLOCK_MONOTONIC ns, the clock of the probes and of Go's `nanotime`.
fn process_start_monotonic_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, starttime field 22.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let start_boot_ns = ticks.checked_mul(1_000_000_000)? / hz.max(1);
    // BOOTTIME − MONOTONIC is the time spent suspended: 0 on most servers, and read
    // back to back the two clocks may even come out a few ns the wrong way round.
    let boot = clock_ns(libc::CLOCK_BOOTTIME)?;
    let mono = clock_ns(libc::CLOCK_MONOTONIC)?;
    start_boot_ns.checked_sub(boot.saturating_sub(mono))
}
