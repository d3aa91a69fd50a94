//! The allocation profile (`gomemtrace -p PID` / `gomemtrace -- CMD`): allocations by
//! stack, type and goroutine, from the allocation probes in one of three modes (exact,
//! runtime-sampled, duty-cycled), totals from the runtime's own counters.
//!
//! - [`plan`]: the mode and the attach points, worked out from the binary (the agent uses
//!   it too); [`points`]: the allocation entry points of each Go release.
//! - this file: the view: attach, run on the engine's loop, collect, write.
//! - [`collect`]: the probes' maps into the report model; [`duty`]: the duty cycle and its
//!   estimator; [`counters`]: the runtime's counters during a trace, read with
//!   [`runtime_counters`]; [`enable`]: the opt-in write of `runtime.MemProfileRate`;
//!   [`output`]: the report in the format asked for.

pub mod collect;
pub mod counters;
pub mod duty;
pub mod enable;
pub mod output;
pub mod plan;
pub mod points;
pub mod runtime_counters;

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gomemtrace_common::{Counter, STOP_AT_MAIN_PROGRAM};
use gomemtrace_gobin::allocstats::AllocStatsLayout;
use gomemtrace_report::model::{AllocProfile, Mode, TargetInfo};

use crate::{
    bpf::{AllocProbes, Bpf, Counters},
    engine::{self, End, ExeMappings, Target, TargetConfig, status_line},
};
use collect::CollectInput;
use counters::CountersError;
use plan::{Analysed, ModeRequest, plan};

/// Where the totals come from (`--totals`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Totals {
    /// The target's own allocation counters, with the probes giving each stack's share.
    Runtime,
    /// The probes' own estimate.
    Probes,
}

/// The allocation profile's settings, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub run: TargetConfig,
    pub mode: ModeRequest,
    /// Duty-cycled mode: the most CPU the probes may add, percent of the target's.
    pub overhead_budget: f64,
    pub totals: Totals,
    /// `--enable-runtime-sampling`: the `MemProfileRate` to write.
    pub enable_runtime_sampling: Option<u64>,
    pub output: output::Options,
    /// Benchmark floor: the empty program at the allocation probes' offsets.
    pub empty_probe: bool,
}

pub fn run(settings: &Config) -> anyhow::Result<ExitCode> {
    let run = settings.run.clone();
    let mut target = engine::open(&run.target)?;
    let analysed = analyse(&target, settings, run.quiet)?;
    let mut mappings = ExeMappings::read(target.pid, &target.exe_link)?;
    let mut config = analysed.config;
    if let Some(vaddr) = analysed.rate_vaddr {
        // PIE: the probe reads the rate at its relocated address.
        config.mem_profile_rate_addr = vaddr.wrapping_add(mappings.bias(&analysed.binary)?);
    }
    let mut probes = AllocProbes::new(&Bpf::load()?);
    probes.configure(target.pid, config)?;
    let mut costs = duty::Costs::default();
    if analysed.mode == Mode::Duty {
        costs = duty::Costs::new(probes.measure_trap_ns(2000));
        duty::attach(&mut probes, &analysed.probes, &target.exe_link, target.pid)?;
    } else {
        for point in &analysed.probes {
            probes.attach(
                point.program,
                &target.exe_link,
                &[point.file_offset],
                target.pid,
            )?;
        }
    }
    // The one write into the target, opt-in: after the probes are attached, so the first
    // samples are seen.
    // A rate left in a running binary whose sampler is compiled out: written from outside
    // (an `--enable-runtime-sampling` run killed before it restored 0).
    let leftover_rate = match (analysed.compiled_out_rate_vaddr, &target.child) {
        (Some(vaddr), None) => mappings
            .bias(&analysed.binary)
            .ok()
            .and_then(|bias| enable::read_word(target.pid, vaddr.wrapping_add(bias)).ok())
            .filter(|&rate| rate != 0),
        _ => None,
    };
    if let Some(rate) = leftover_rate
        && !run.quiet
    {
        status_line(&format!(
            "runtime.MemProfileRate is {rate} in pid {}, whose heap sampler is compiled out (the runtime keeps 0 there): it was written from outside, probably by a `gomemtrace --enable-runtime-sampling` that was killed before restoring it; the program samples its heap at that rate{}",
            target.pid,
            if settings.enable_runtime_sampling.is_some() {
                "; this run restores 0 when it ends"
            } else {
                "; `--enable-runtime-sampling` restores 0 when it ends"
            }
        ));
    }
    let mut rate_write = match settings.enable_runtime_sampling {
        Some(rate) => {
            if let Some(offset) = analysed.stop_at_main {
                probes.attach(
                    STOP_AT_MAIN_PROGRAM,
                    &target.exe_link,
                    &[offset],
                    target.pid,
                )?;
                target.run_until_self_stop(Duration::from_secs(30))?;
                probes.detach_program(STOP_AT_MAIN_PROGRAM)?;
            }
            Some(enable::RateWrite::set(
                target.pid,
                config.mem_profile_rate_addr,
                rate,
                // A leftover is not the program's value: the runtime's own is 0.
                leftover_rate.map(|_| 0),
            )?)
        }
        None => None,
    };
    if !run.quiet {
        status_line(&format!(
            "attached {} {} probes to pid {} ({}, {}{}), {}",
            probes.attached(),
            match analysed.mode {
                Mode::Exact => "exact",
                Mode::Runtime => "runtime-sampled",
                Mode::Duty => "duty-cycled exact",
            },
            target.pid,
            analysed.binary.version_string(),
            if analysed.binary.is_stripped() {
                "stripped"
            } else {
                "symbols"
            },
            if analysed.binary.is_pie() {
                ", PIE"
            } else {
                ""
            },
            match run.duration {
                Some(d) => format!("tracing for {}", humantime::format_duration(d)),
                None => "Ctrl-C to stop".into(),
            }
        ));
    }
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // The runtime's counters from here on (a launched target has not run yet).
    let mut watch = match mappings.bias(&analysed.binary) {
        Ok(bias) => counters::Watch::start(
            target.pid,
            analysed.alloc_stats.clone(),
            bias,
            target.child.is_some(),
        ),
        Err(e) => Err(CountersError::from(e)),
    };
    let started = Instant::now();
    target.release()?;

    let (end, duty) = if analysed.mode == Mode::Duty {
        let exe_link = target.exe_link.clone();
        let (end, record) = duty::run(
            run.duration,
            settings.overhead_budget,
            &mut target,
            &mut probes,
            &analysed.probes,
            &exe_link,
            config,
            costs,
            started,
            watch.as_mut().ok(),
        )?;
        (end, Some(record))
    } else {
        (
            wait_for_end(
                &run,
                started,
                &mut target,
                &mut probes,
                &mut mappings,
                watch.as_mut().ok(),
            )?,
            None,
        )
    };
    // The probes stop counting here (hits from now on are ignored), so that the event
    // count, the samples and the runtime's counters all end at this point: a running
    // target keeps allocating while the maps are read.
    probes.unconfigure(target.pid)?;
    let duration_ns = started.elapsed().as_nanos() as u64;
    let alive = target.is_alive();
    let events = probes.counters()?.get(Counter::Events);
    let counters = watch.and_then(|w| w.finish(alive, Instant::now(), events));
    if let Err(why) = &counters
        && !run.quiet
    {
        status_line(&format!(
            "the runtime's allocation counters: {why}; totals are the probes' own"
        ));
    }
    let snapshot = probes.snapshot();
    if let Some(write) = rate_write.as_mut() {
        write.restore(target.is_alive());
    }
    let snapshot = snapshot?;
    drop(probes); // detach before writing: the target runs at full speed again
    mappings.refresh(target.pid);
    let mut symbolizer = mappings.symbolizer(&analysed.binary, &target.exe_path)?;
    let profile = collect::build_profile(
        CollectInput {
            snapshot: &snapshot,
            pid: target.pid,
            binary: &analysed.binary,
            target: TargetInfo {
                pid: target.pid,
                exe: target.exe_path.clone(),
                go_version: analysed.binary.version_string().to_string(),
                stripped: analysed.binary.is_stripped(),
                pie: analysed.binary.is_pie(),
                probes: analysed.probes.iter().map(|p| p.function.clone()).collect(),
            },
            mode: analysed.mode,
            sample_rate: snapshot.sample_rates.get(&target.pid).copied(),
            start_unix_ns,
            duration_ns,
            duty: duty.as_ref(),
            counters: Some(counters),
            scale_to_counters: settings.totals == Totals::Runtime,
        },
        &mut symbolizer,
    );
    if !run.quiet {
        final_status(&profile, end);
    }
    output::write(&settings.output, &run, &profile)?;
    engine::finish(&mut target, end)
}

/// Polls until the end, feeding the runtime's counters the probes' event count and
/// printing the live status line.
fn wait_for_end(
    run: &TargetConfig,
    started: Instant,
    target: &mut Target,
    probes: &mut AllocProbes,
    mappings: &mut ExeMappings,
    mut watch: Option<&mut counters::Watch>,
) -> anyhow::Result<End> {
    let interactive = std::io::stderr().is_terminal() && !run.quiet;
    let status_every = if interactive {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut last_status = Instant::now();
    engine::run_until_end(
        run.duration,
        started,
        target,
        Duration::from_millis(100),
        |target| {
            if let Some(w) = watch.as_deref_mut() {
                w.tick(probes.counters()?.get(Counter::Events));
            }
            let next_drain = probes.drain_if_due()?;
            if last_status.elapsed() >= status_every {
                last_status = Instant::now();
                // Libraries may be loaded late (cgo, plugins): keep the map fresh.
                mappings.refresh(target.pid);
                if !run.quiet {
                    live_status(&probes.counters()?, interactive);
                }
            }
            Ok(Some(next_drain))
        },
    )
}

fn live_status(counters: &Counters, interactive: bool) {
    let line = format!(
        "{} allocations, {} bytes, {} dropped",
        counters.get(Counter::Events),
        counters.get(Counter::EventBytes),
        collect::drops(counters).total()
    );
    if interactive {
        eprint!("\r\x1b[2Kgomemtrace: {line}");
        let _ = std::io::stderr().flush();
    } else {
        status_line(&line);
    }
}

fn final_status(profile: &AllocProfile, end: End) {
    let why = match end {
        End::Duration => "duration elapsed",
        End::Interrupted => "interrupted",
        End::TargetExited => "target exited",
    };
    let (bytes, objects) = profile.totals();
    let interactive = std::io::stderr().is_terminal();
    eprintln!(
        "{}gomemtrace: {why}: {} allocations ({objects} aggregated, {bytes} bytes), {} dropped",
        if interactive { "\r\x1b[2K" } else { "" },
        profile.events,
        profile.drops.total()
    );
}

fn analyse(target: &Target, settings: &Config, quiet: bool) -> anyhow::Result<Analysed> {
    let go = engine::read_go_target(target)?;
    let config = go.process_config();
    let mut stop_at_main = None;
    let compiled_out_rate_vaddr = match go.sampler() {
        Err(crate::analysis::SamplerError::CompiledOut(_)) => {
            go.sampler_with(true).ok().map(|s| s.rate_vaddr)
        }
        _ => None,
    };
    let sampler = match settings.enable_runtime_sampling {
        None => go.sampler(),
        Some(_) => {
            let (major, minor) = go.binary.version().release();
            if !enable::verified(major, minor) {
                return Err(go
                    .refuse(format!(
                        "--enable-runtime-sampling: runtime.MemProfileRate's effect is verified only for Go 1.19–1.27, not {}",
                        go.binary.version()
                    ))
                    .into());
            }
            if target.child.is_some() {
                // At launch the rate is written when runtime.main starts: schedinit, before
                // it, resets the rate of binaries whose sampler is compiled out.
                let main = go.binary.function("runtime.main").ok_or_else(|| {
                    go.refuse("--enable-runtime-sampling at launch: runtime.main not found".into())
                })?;
                stop_at_main = Some(go.probe_file_offset(main)?);
            }
            if !matches!(settings.mode, ModeRequest::Auto | ModeRequest::Runtime)
                || settings.empty_probe
            {
                return Err(go
                    .refuse(
                        "--enable-runtime-sampling goes with --mode runtime or auto only".into(),
                    )
                    .into());
            }
            match go.sampler_with(true) {
                Ok(s) => Ok(s),
                Err(why) => {
                    return Err(go
                        .refuse(format!("--enable-runtime-sampling: {why}"))
                        .into());
                }
            }
        }
    };
    let alloc_stats = AllocStatsLayout::locate(&go.binary, go.binary.file_data())
        .map_err(|e| CountersError::Layout(std::sync::Arc::new(e)));
    let mut analysed = plan(go, config, sampler, settings.mode, settings.empty_probe)?;
    analysed.stop_at_main = stop_at_main;
    analysed.compiled_out_rate_vaddr = compiled_out_rate_vaddr;
    analysed.alloc_stats = alloc_stats;
    if let Some(why) = analysed.auto_duty_reason.as_ref().filter(|_| !quiet) {
        status_line(&format!(
            "mode auto: duty (exact probes in short windows under a {}% CPU overhead budget; counts are estimates), because {why}",
            settings.overhead_budget
        ));
    }
    Ok(analysed)
}
