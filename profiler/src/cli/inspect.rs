//! `gomemtrace inspect`'s arguments.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::inspect;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The Go executable to inspect (read as a file: no root needed).
    #[arg(
        value_name = "BINARY",
        required_unless_present = "pid",
        conflicts_with = "pid"
    )]
    pub binary: Option<PathBuf>,

    /// Inspect the executable of this running process (`/proc/PID/exe`; another user's
    /// process needs ptrace access to it).
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Report format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Text)]
    pub format: InspectFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    /// Human-readable.
    Text,
    /// One json object (schema in docs/JSON.md, `gomemtrace.inspect/v1`).
    Json,
}

impl InspectArgs {
    /// `gomemtrace inspect`'s typed settings.
    pub fn config(&self) -> inspect::Config {
        inspect::Config {
            source: match (self.pid, &self.binary) {
                (Some(pid), _) => inspect::Source::Pid(pid),
                // clap requires one of the two.
                (None, binary) => inspect::Source::File(binary.clone().unwrap_or_default()),
            },
            format: match self.format {
                InspectFormat::Text => inspect::Format::Text,
                InspectFormat::Json => inspect::Format::Json,
            },
        }
    }
}
