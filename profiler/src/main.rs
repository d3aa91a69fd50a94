//! gomemtrace: where a Go program's memory goes, traced from outside the process.

mod alloc_points;
mod cli;
mod collect;
mod error;
mod output;
mod preflight;
mod probes;
mod procmaps;
mod session;
mod symbolizer;
mod target;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match session::run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gomemtrace: {err:#}");
            match err.downcast_ref::<error::UserError>() {
                Some(user) => user.exit_code(),
                None => ExitCode::FAILURE,
            }
        }
    }
}
