//! The arguments of the stackgrowth, goroutines and numa views.

use clap::{Args, ValueEnum};

use super::TargetArgs;
use crate::rt;

/// Options of the stackgrowth, goroutines and numa views.
#[derive(Debug, Args)]
pub struct RtArgs {
    #[command(flatten)]
    pub run: TargetArgs,

    /// Report format.
    #[arg(long, value_enum, default_value_t = RtFormat::Text)]
    pub format: RtFormat,

    /// Rows per table in the text report.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RtFormat {
    /// Human-readable report.
    Text,
    /// The full report as one json object (docs/STACKS-GOROUTINES.md).
    Json,
    /// gzipped pprof profile.proto (`go tool pprof` opens it).
    Pprof,
}

#[derive(Debug, Args)]
pub struct StackgrowthArgs {
    #[command(flatten)]
    pub common: RtArgs,
}

#[derive(Debug, Args)]
pub struct GoroutinesArgs {
    #[command(flatten)]
    pub common: RtArgs,

    /// Record only the `go` statement of each creation (`gopc`), not the creating
    /// goroutine's stack: cheaper per creation (docs/BENCHMARKS.md).
    #[arg(long)]
    pub no_stacks: bool,
}

#[derive(Debug, Args)]
pub struct NumaArgs {
    #[command(flatten)]
    pub common: RtArgs,
}

impl RtArgs {
    /// The typed settings of the stackgrowth, goroutines and numa views.
    pub fn config(&self) -> rt::Config {
        rt::Config {
            run: self.run.config(),
            format: match self.format {
                RtFormat::Text => rt::ReportFormat::Text,
                RtFormat::Json => rt::ReportFormat::Json,
                RtFormat::Pprof => rt::ReportFormat::Pprof,
            },
            top: self.top,
        }
    }
}
