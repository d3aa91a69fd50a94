//! Writes the profile in the chosen format to stdout or a file.

use gomemtrace_report::model::AllocProfile;

use crate::engine::{self, TargetConfig};

/// The report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable report: totals, top sites, types, goroutines, drops.
    Text,
    /// gzipped pprof profile.proto.
    Pprof,
    /// Folded stacks.
    Folded,
    /// Flame graph.
    Svg,
    /// The full profile as json (docs/JSON.md).
    Json,
}

/// How the profile is written.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub format: Format,
    /// Rows per table in the text report.
    pub top: usize,
    /// Weight of folded stacks and flame graphs.
    pub weight: gomemtrace_report::Weight,
    pub frames: gomemtrace_report::Frames,
}

pub fn write(cli: &Options, run: &TargetConfig, profile: &AllocProfile) -> anyhow::Result<()> {
    let (weight, frames) = (cli.weight, cli.frames);
    let bytes = match cli.format {
        Format::Text => gomemtrace_report::to_text(profile, cli.top).into_bytes(),
        Format::Pprof => gomemtrace_report::to_pprof(profile, frames),
        Format::Folded => gomemtrace_report::to_folded(profile, weight, frames).into_bytes(),
        Format::Svg => gomemtrace_report::to_svg(profile, weight, frames)?,
        Format::Json => gomemtrace_report::to_json(profile).into_bytes(),
    };
    engine::write_report(run.output.as_deref(), &bytes)?;
    if let Some(path) = &run.output
        && !run.quiet
    {
        eprintln!(
            "gomemtrace: wrote {} ({:?}, {} bytes)",
            path.display(),
            cli.format,
            bytes.len()
        );
    }
    Ok(())
}
