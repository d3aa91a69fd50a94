//! What every view (allocation profile, gctrace, stackgrowth, goroutines, numa) runs on:
//! the typed target configuration, opening the target after the preflight checks, the
//! one poll loop that ends on the duration, Ctrl-C or the target's exit, the exit status,
//! the status line, the report's destination and the probes' clock.

pub mod cpu_clock;
pub mod interrupt;
mod mappings;
pub mod preflight;
pub mod procmaps;
mod run;
pub mod target;

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use gomemtrace_gobin::FileBytes;

use crate::analysis::GoTarget;

pub use cpu_clock::CpuClock;
pub use mappings::{ExeMappings, MappingNotFound};
pub use run::{End, finish, run_until_end};
pub use target::Target;

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Pid(u32),
    Launch(Vec<String>),
}

/// The options every view shares, typed (the command line's `-p`/`--`, `-d`, `-o`, `-q`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub target: TargetSpec,
    /// None: until Ctrl-C or the target exits.
    pub duration: Option<Duration>,
    /// None: stdout.
    pub output: Option<PathBuf>,
    /// No status lines on stderr.
    pub quiet: bool,
}

/// Checks that this process and kernel can trace, then opens the target: an existing
/// process, or a command launched stopped at its first instruction.
pub fn open(spec: &TargetSpec) -> anyhow::Result<Target> {
    preflight::check()?;
    Ok(match spec {
        TargetSpec::Pid(pid) => Target::existing(*pid)?,
        TargetSpec::Launch(command) => Target::launch(command)?,
    })
}

/// The target's executable, mapped and checked: supported, with the runtime offsets the
/// probes need (its bytes stay reachable through `go.binary.file_data()`).
pub fn read_go_target(target: &Target) -> anyhow::Result<GoTarget> {
    let file = std::fs::File::open(&target.exe_link)
        .with_context(|| format!("open {}", target.exe_path))?;
    let data = FileBytes::map(&file).with_context(|| format!("map {}", target.exe_path))?;
    Ok(GoTarget::from_file(data, &target.exe_path)?)
}

/// Where the report goes: the file asked for, else stdout.
pub fn open_output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("create {}", path.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    })
}

/// Writes a finished report to the file asked for, else stdout; a closed pipe (`| head`)
/// is the reader's choice, not a failure.
pub fn write_report(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("write report to stdout"),
            }
        }
    }
}

/// One status line on stderr.
pub fn status_line(line: &str) {
    eprintln!("gomemtrace: {line}");
}

/// `clock` now, in ns.
pub fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC now: the clock of the probes (`bpf_ktime_get_ns`) and of Go's
/// `nanotime`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}
