//! gomemtrace: where a Go program's memory goes, traced from outside the process.

mod agent;
mod alloc_points;
mod allocstats;
mod analysis;
mod bpf;
mod cli;
mod collect;
mod duty;
mod enable;
mod engine;
mod error;
mod gc;
mod numa;
mod output;
mod remote_memory;
mod rt;
mod session;
mod symbolizer;
mod trace_counters;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match &cli.view {
        Some(cli::View::Gctrace(args)) => gc::run(args),
        Some(cli::View::Stackgrowth(args)) => rt::stackgrowth::run(args),
        Some(cli::View::Goroutines(args)) => rt::goroutines::run(args),
        Some(cli::View::Agent(args)) => agent::run(args),
        Some(cli::View::Numa(args)) => numa::run(args),
        None => session::run(&cli),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gomemtrace: {err:#}");
            error::exit_code(&err)
        }
    }
}
