//! Writes the profile in the chosen format to stdout or a file.

use std::io::Write as _;

use anyhow::Context as _;
use gomemtrace_report::model::AllocProfile;

use crate::cli::{Cli, Format};

pub fn write(cli: &Cli, profile: &AllocProfile) -> anyhow::Result<()> {
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
    match &cli.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("write {}", path.display()))?;
            if cli.quiet {
                return Ok(());
            }
            eprintln!(
                "gomemtrace: wrote {} ({:?}, {} bytes)",
                path.display(),
                cli.format,
                bytes.len()
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("write report to stdout")?,
            }
        }
    }
    Ok(())
}
