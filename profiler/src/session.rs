//! One tracing session: validate the target, attach the allocation probes, collect until
//! the duration ends, Ctrl-C, or the target exits, then write the report.

use std::{
    io::{IsTerminal as _, Write as _},
    os::unix::process::ExitStatusExt as _,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use gomemtrace_common::{Counter, ProcessConfig};
use gomemtrace_gobin::GoBinary;
use gomemtrace_report::model::{AllocProfile, TargetInfo};

use crate::{
    alloc_points,
    analysis::GoTarget,
    cli::{Cli, TargetSpec},
    collect::{self, CollectInput},
    output, preflight,
    probes::{AllocProbes, Counters},
    procmaps,
    symbolizer::{ExeLayout, Symbolizer},
    target::Target,
};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    preflight::check()?;
    let mut target = match cli.target() {
        TargetSpec::Pid(pid) => Target::existing(pid)?,
        TargetSpec::Launch(command) => Target::launch(&command)?,
    };
    let analysed = analyse(&target)?;
    let mut probes = AllocProbes::load(cli.empty_probe)?;
    probes.configure(target.pid, analysed.config)?;
    probes.attach(&target.exe_link, &analysed.attach_offsets, target.pid)?;
    let exe_inode =
        std::fs::metadata(&target.exe_link).map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
    let mut mappings = procmaps::executable_mappings(target.pid).unwrap_or_default();
    status_line(&format!(
        "attached {} probes to pid {} ({}, {}{}), {}",
        probes.attached(),
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
        match cli.duration {
            Some(d) => format!("tracing for {}", humantime::format_duration(d)),
            None => "Ctrl-C to stop".into(),
        }
    ));
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let started = Instant::now();
    target.release()?;

    let end = wait_for_end(cli, &mut target, &probes, &mut mappings)?;
    let duration_ns = started.elapsed().as_nanos() as u64;
    let snapshot = probes.snapshot()?;
    drop(probes); // detach before writing: the target runs at full speed again
    if target.is_alive()
        && let Ok(fresh) = procmaps::executable_mappings(target.pid)
    {
        mappings = fresh;
    }
    let layout = ExeLayout::find(&analysed.binary, exe_inode, &mappings)
        .context("the executable's text mapping was not found in /proc/PID/maps")?;
    let mut symbolizer = Symbolizer::new(&analysed.binary, layout, &target.exe_path, &mappings);
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
                probes: analysed.probe_names.clone(),
            },
            start_unix_ns,
            duration_ns,
        },
        &mut symbolizer,
    );
    if !cli.quiet {
        final_status(&profile, end);
    }
    output::write(cli, &profile)?;
    finish(&mut target, end)
}

/// What the binary tells us before anything is attached.
struct Analysed {
    binary: GoBinary,
    config: ProcessConfig,
    attach_offsets: Vec<u64>,
    probe_names: Vec<String>,
}

fn analyse(target: &Target) -> anyhow::Result<Analysed> {
    let data =
        std::fs::read(&target.exe_link).with_context(|| format!("read {}", target.exe_path))?;
    let go = GoTarget::from_file_bytes(&data, &target.exe_path)?;
    let points = alloc_points::allocation_entry_points(&go.binary)
        .ok_or_else(|| go.refuse("no allocation entry point (runtime.mallocgc) found".into()))?;
    let attach_offsets = points
        .iter()
        .map(|f| go.probe_file_offset(f))
        .collect::<Result<Vec<_>, _>>()?;
    let config = ProcessConfig {
        g_goid: go.offsets.g_goid,
        g_m: go.offsets.g_m,
        m_curg: go.offsets.m_curg,
        g_startpc: go.offsets.g_startpc,
        ..ProcessConfig::default()
    };
    Ok(Analysed {
        probe_names: points.iter().map(|f| f.name.clone()).collect(),
        binary: go.binary,
        config,
        attach_offsets,
    })
}

/// Why collection stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Duration,
    Interrupted,
    TargetExited,
}

fn wait_for_end(
    cli: &Cli,
    target: &mut Target,
    probes: &AllocProbes,
    mappings: &mut Vec<procmaps::MappedFile>,
) -> anyhow::Result<End> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
        let interactive = std::io::stderr().is_terminal() && !cli.quiet;
        let status_every = if interactive {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let mut last_status = Instant::now();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(End::Interrupted),
                _ = poll.tick() => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Ok(End::Duration);
                    }
                    if !target.is_alive() {
                        return Ok(End::TargetExited);
                    }
                    if last_status.elapsed() >= status_every {
                        last_status = Instant::now();
                        // Libraries may be loaded late (cgo, plugins): keep the map fresh.
                        if let Ok(fresh) = procmaps::executable_mappings(target.pid) {
                            *mappings = fresh;
                        }
                        if !cli.quiet {
                            live_status(&probes.counters()?, interactive);
                        }
                    }
                }
            }
        }
    })
}

/// Waits for a launched target (passing Ctrl-C on) and returns its exit status as ours.
pub(crate) fn finish(target: &mut Target, end: End) -> anyhow::Result<ExitCode> {
    let Some(child) = target.child.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    if end == End::Interrupted {
        // The user asked to stop: pass the interrupt on, as a terminal would.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                // Ctrl-C while waiting for the target: stop waiting, leave it running.
                _ = &mut ctrl_c => return Ok::<_, anyhow::Error>(None),
                _ = poll.tick() => {
                    if let Some(status) = child.try_wait()? {
                        return Ok(Some(status));
                    }
                }
            }
        }
    })?;
    let Some(status) = status else {
        status_line(&format!(
            "interrupted while waiting for pid {}: left it running",
            child.id()
        ));
        return Ok(ExitCode::from(130));
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128 + signal as u8),
        _ => ExitCode::FAILURE,
    })
}

fn status_line(line: &str) {
    eprintln!("gomemtrace: {line}");
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
