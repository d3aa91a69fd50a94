//! gomemtrace: where a Go program's memory goes, traced from outside the process.

mod agent;
mod alloc;
mod analysis;
mod bpf;
mod cli;
mod engine;
mod error;
mod gc;
mod inspect;
mod numa;
mod remote_memory;
mod rt;
mod symbolizer;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Every trace catches Ctrl-C before it attaches or writes anything (the agent and
    // inspect handle their own ends).
    if !matches!(
        cli.view,
        Some(cli::View::Agent(_)) | Some(cli::View::Inspect(_))
    ) {
        engine::interrupt::install();
    }
    // The command line becomes each view's typed settings here: no clap type below.
    let result = match &cli.view {
        Some(cli::View::Gctrace(args)) => gc::run(&args.config()),
        Some(cli::View::Stackgrowth(args)) => rt::stackgrowth::run(&args.common.config()),
        Some(cli::View::Goroutines(args)) => {
            rt::goroutines::run(&args.common.config(), !args.no_stacks)
        }
        Some(cli::View::Agent(args)) => agent::run(&args.config()),
        Some(cli::View::Numa(args)) => numa::run(&args.common.config()),
        Some(cli::View::Inspect(args)) => inspect::run(&args.config()),
        None => alloc::run(&cli.config()),
    };
    // A `-p` target that exits before the trace starts makes whatever step was running fail
    // (reading /proc/PID/maps, perf_event_open, ...): say what happened instead.
    let result = result.map_err(|err| match cli.traced_pid() {
        Some(pid) if !engine::target::process_alive(pid) && !is_no_such_process(&err) => {
            anyhow::Error::new(error::UserError::TargetVanished {
                pid,
                error: format!("{err:#}"),
            })
        }
        _ => err,
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gomemtrace: {err:#}");
            exit_code(&err)
        }
    }
}

/// Whether `err` already says the process is not there.
fn is_no_such_process(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<error::UserError>(),
        Some(error::UserError::NoSuchProcess { .. })
    )
}

/// The exit code of an error that ends the program: a [`error::UserError`]'s own (a refused
/// executable's is [`error::UserError::NotSupported`]'s), else 1.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if let Some(user) = err.downcast_ref::<error::UserError>() {
        user.exit_code()
    } else if let Some(refused) = err.downcast_ref::<analysis::Refused>() {
        error::UserError::from(refused.clone()).exit_code()
    } else {
        ExitCode::FAILURE
    }
}
