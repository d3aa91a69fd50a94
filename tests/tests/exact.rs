//! Exact mode end to end: gomemtrace traces the allocs fixture and its answer per site,
//! per type and per goroutine must match the fixture's arithmetic and the Go runtime's own
//! MemProfileRate=1 profile of the same run (see `check_allocs`). Needs root.

use gomemtrace_tests::{
    Attach, Variant, check_allocs, go_versions, require_root, trace_allocs_with,
};

/// Runs `attach`/`variant` for every Go release; fails listing each release that failed.
fn every_version(variant: Variant, attach: Attach) {
    every_version_with(variant, attach, &[]);
}

fn every_version_with(variant: Variant, attach: Attach, fixture_args: &[&str]) {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in go_versions() {
        let problems = match trace_allocs_with(&version, variant, attach, fixture_args) {
            Ok(traced) => {
                let bad = check_allocs(&traced, &version, variant, fixture_args.contains(&"-gc"));
                if bad.is_empty() {
                    println!(
                        "Go {version} {} {attach:?} {fixture_args:?}: ok",
                        variant.name()
                    );
                    continue;
                }
                format!("{}\n{}", bad.join("\n"), traced.report.summary())
            }
            Err(e) => format!("{e:#}"),
        };
        failures.push(format!(
            "Go {version} {} {attach:?} {fixture_args:?}:\n{problems}",
            variant.name()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} Go releases failed:\n\n{}",
        failures.len(),
        go_versions().len(),
        failures.join("\n\n")
    );
}

#[test]
fn launch_every_go_version() {
    every_version(Variant::Normal, Attach::Launch);
}

/// No .symtab, no DWARF: functions and lines come from .gopclntab alone.
#[test]
fn launch_stripped_every_go_version() {
    every_version(Variant::Stripped, Attach::Launch);
}

/// Section headers removed (`sstrip`): the binary is found Go by its pclntab located
/// through the program headers, and types are named through moduledata found in the loaded
/// segments.
#[test]
fn launch_headerless_every_go_version() {
    every_version(Variant::Headerless, Attach::Launch);
}

#[test]
fn launch_pie_every_go_version() {
    every_version(Variant::Pie, Attach::Launch);
}

#[test]
fn launch_stripped_pie_every_go_version() {
    every_version(Variant::StrippedPie, Attach::Launch);
}

/// `-p PID` on a fixture that waits for SIGUSR1 until gomemtrace says `attached`.
#[test]
fn attach_pid_every_go_version() {
    every_version(Variant::Normal, Attach::Pid);
}

/// The collector runs all the time while the workers allocate (GOGC=1): allocations during
/// marking (assists), sweeping, and the runtime's own GC goroutines must not disturb the
/// per-site, per-type and per-goroutine answer.
#[test]
fn launch_with_gc_running_every_go_version() {
    every_version_with(Variant::Normal, Attach::Launch, &["-gc", "1"]);
}
