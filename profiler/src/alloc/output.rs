//! Writes the profile in the chosen format to stdout or a file.

use gomemtrace_report::model::AllocProfile;

use crate::{
    cli::{Cli, Format},
    engine::{self, TargetConfig},
};

pub fn write(cli: &Cli, run: &TargetConfig, profile: &AllocProfile) -> anyhow::Result<()> {
    let weight = match cli.weight {
        crate::cli::Weight::Bytes => gomemtrace_report::Weight::Bytes,
        crate::cli::Weight::Objects => gomemtrace_report::Weight::Objects,
    };
    let frames = if cli.all_frames {
        gomemtrace_report::Frames::All
    } else {
        gomemtrace_report::Frames::GoHeap
    };
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
