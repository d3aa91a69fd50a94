//! One tracing session: validate the target, attach the allocation probes, collect until
//! the duration ends, Ctrl-C, or the target exits, then write the report.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use gomemtrace_common::{
    ALLOC_PROGRAM, Counter, EMPTY_PROGRAM, FREE_SPECIAL_PROGRAM, ProcessConfig,
    SET_PROFILE_BUCKET_PROGRAM, STOP_AT_MAIN_PROGRAM,
};
use gomemtrace_gobin::{GoBinary, allocstats::AllocStatsLayout};
use gomemtrace_report::model::{AllocProfile, Mode, TargetInfo};

use crate::{
    alloc_points,
    analysis::{GoTarget, Refused, SamplerError, Unsupported},
    bpf::{AllocProbes, Bpf, Counters},
    cli::{Cli, ModeArg, TotalsArg},
    collect::{self, CollectInput},
    duty, enable,
    engine::{self, End, ExeMappings, Target, TargetConfig, status_line},
    output,
    trace_counters::{self, CountersError},
};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let run = cli.run.config();
    let mut target = engine::open(&run.target)?;
    let analysed = analyse(&target, cli, run.quiet)?;
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
        for (program, offset, _) in &analysed.probes {
            probes.attach(program, &target.exe_link, &[*offset], target.pid)?;
        }
    }
    // The one write into the target, opt-in: after the probes are attached, so the first
    // samples are seen.
    let mut rate_write = match cli.enable_runtime_sampling {
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
        Ok(bias) => trace_counters::Watch::start(
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
            cli.overhead_budget,
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
                &probes,
                &mut mappings,
                watch.as_mut().ok(),
            )?,
            None,
        )
    };
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
                probes: analysed.probes.iter().map(|p| p.2.clone()).collect(),
            },
            mode: analysed.mode,
            sample_rate: snapshot.sample_rates.get(&target.pid).copied(),
            start_unix_ns,
            duration_ns,
            duty: duty.as_ref(),
            counters: Some(counters),
            scale_to_counters: cli.totals == TotalsArg::Runtime,
        },
        &mut symbolizer,
    );
    if !run.quiet {
        final_status(&profile, end);
    }
    output::write(cli, &run, &profile)?;
    engine::finish(&mut target, end)
}

/// What the binary tells us before anything is attached.
pub(crate) struct Analysed {
    pub binary: GoBinary,
    pub config: ProcessConfig,
    pub mode: Mode,
    /// (program, file offset, probed function) per probe.
    pub probes: Vec<(&'static str, u64, String)>,
    /// Runtime-sampled mode: file address of `runtime.MemProfileRate`.
    pub rate_vaddr: Option<u64>,
    /// Mode auto fell back to duty-cycled: why the runtime's sampler cannot be used.
    pub auto_duty_reason: Option<SamplerError>,
    /// `--enable-runtime-sampling` at launch: file offset of the probe on `runtime.main`.
    pub stop_at_main: Option<u64>,
    /// Where the runtime's allocation counters are, or why they cannot be found.
    pub alloc_stats: Result<AllocStatsLayout, CountersError>,
}

fn analyse(target: &Target, cli: &Cli, quiet: bool) -> anyhow::Result<Analysed> {
    let data =
        std::fs::read(&target.exe_link).with_context(|| format!("read {}", target.exe_path))?;
    let go = GoTarget::from_file_bytes(&data, &target.exe_path)?;
    let config = go.process_config();
    let mut stop_at_main = None;
    let sampler = match cli.enable_runtime_sampling {
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
            if !matches!(cli.mode(), ModeArg::Auto | ModeArg::Runtime) || cli.empty_probe {
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
    let alloc_stats = AllocStatsLayout::locate(&go.binary, &data)
        .map_err(|e| CountersError::Layout(std::sync::Arc::new(e)));
    let mut analysed = plan(go, config, sampler, cli.mode(), cli.empty_probe)?;
    analysed.stop_at_main = stop_at_main;
    analysed.alloc_stats = alloc_stats;
    if let Some(why) = analysed.auto_duty_reason.as_ref().filter(|_| !quiet) {
        status_line(&format!(
            "mode auto: duty (exact probes in short windows under a {}% CPU overhead budget; counts are estimates), because {why}",
            cli.overhead_budget
        ));
    }
    Ok(analysed)
}

/// The mode and the probes for `go`, given the sampler's availability and the mode asked
/// for: shared by the one-shot CLI and the agent.
pub(crate) fn plan(
    go: GoTarget,
    mut config: ProcessConfig,
    sampler: Result<crate::analysis::Sampler, SamplerError>,
    mode_arg: ModeArg,
    empty_probe: bool,
) -> Result<Analysed, Refused> {
    let mut auto_duty_reason = None;
    let mode = match (mode_arg, &sampler) {
        // The benchmark's floor replaces the exact probe.
        _ if empty_probe => Mode::Exact,
        (ModeArg::Exact, _) => Mode::Exact,
        (ModeArg::Duty, _) => Mode::Duty,
        (ModeArg::Runtime | ModeArg::Auto, Ok(_)) => Mode::Runtime,
        (ModeArg::Runtime, Err(why)) => {
            return Err(go.refused(Unsupported::NoSampler(why.clone())));
        }
        (ModeArg::Auto, Err(why)) => {
            auto_duty_reason = Some(why.clone());
            Mode::Duty
        }
    };
    let mut probes = Vec::new();
    let mut rate_vaddr = None;
    match (mode, sampler) {
        (Mode::Runtime, Ok(sampler)) => {
            rate_vaddr = Some(sampler.rate_vaddr);
            probes = sampler_probes(&go, &mut config, &sampler)?;
        }
        _ => {
            let program = if empty_probe {
                EMPTY_PROGRAM
            } else {
                ALLOC_PROGRAM
            };
            let points = alloc_points::allocation_entry_points(&go.binary)
                .ok_or_else(|| go.refused(Unsupported::NoAllocationEntryPoint))?;
            for f in &points {
                probes.push((program, go.probe_file_offset(f)?, f.name.clone()));
            }
        }
    }
    Ok(Analysed {
        binary: go.binary,
        config,
        mode,
        probes,
        rate_vaddr,
        auto_duty_reason,
        stop_at_main: None,
        alloc_stats: Err(CountersError::NotLookedFor),
    })
}

/// Runtime-sampled mode's probes on the heap sampler (program, file offset, function),
/// and the sampler's fields of `config`: shared by [`plan`] and `gomemtrace numa`.
pub(crate) fn sampler_probes(
    go: &GoTarget,
    config: &mut ProcessConfig,
    sampler: &crate::analysis::Sampler,
) -> Result<Vec<(&'static str, u64, String)>, Refused> {
    config.bucket_size_offset = sampler.bucket_size_offset;
    config.special_kind_offset = sampler.special_kind_offset;
    config.special_kind_profile = sampler.special_kind_profile;
    [
        (SET_PROFILE_BUCKET_PROGRAM, &sampler.set_profile_bucket),
        (FREE_SPECIAL_PROGRAM, &sampler.free_special),
    ]
    .into_iter()
    .map(|(program, f)| Ok((program, go.probe_file_offset(f)?, f.name.clone())))
    .collect()
}

/// Polls until the end, feeding the runtime's counters the probes' event count and
/// printing the live status line.
fn wait_for_end(
    run: &TargetConfig,
    started: Instant,
    target: &mut Target,
    probes: &AllocProbes,
    mappings: &mut ExeMappings,
    mut watch: Option<&mut trace_counters::Watch>,
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
            if last_status.elapsed() >= status_every {
                last_status = Instant::now();
                // Libraries may be loaded late (cgo, plugins): keep the map fresh.
                mappings.refresh(target.pid);
                if !run.quiet {
                    live_status(&probes.counters()?, interactive);
                }
            }
            Ok(None)
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
