//! Developer tasks that a build script cannot do: the demo run and the whole test suite.
//!
//! `cargo xtask demo` builds gomemtrace and a bundled Go workload, traces it, and prints
//! the report. `cargo xtask test` runs formatting and lint checks and every test (the
//! end-to-end ones need root and BPF, which CI has; the NUMA one boots `cargo xtask vm`).
//! `cargo xtask vm run` boots a two-node QEMU guest that runs `gomemtrace numa`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod vm;

#[derive(Parser)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build gomemtrace and the demo Go workload, trace it, print the report.
    Demo {
        /// Go release to build the demo with (a directory under the Go cache).
        #[arg(long, default_value = "1.25")]
        go: String,
    },
    /// Formatting, clippy (host and eBPF crates), and every test.
    Test,
    /// Cost of one allocation event in exact mode against an empty uprobe at the same
    /// offset, measured side by side (interleaved rounds, medians).
    Bench {
        #[arg(long, default_value = "1.25")]
        go: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 2_000_000)]
        allocations: u64,
    },
    /// A two-node NUMA guest (QEMU) that runs `gomemtrace numa` on a fixture.
    Vm(vm::VmArgs),
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().task {
        Task::Demo { go } => demo(&go),
        Task::Test => test(),
        Task::Bench {
            go,
            rounds,
            allocations,
        } => bench(&go, rounds, allocations),
        Task::Vm(args) => vm::main(args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn go_cache() -> PathBuf {
    std::env::var_os("GOMEMTRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/gomemtrace")
        })
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the Go program in `xtask/<name>/main.go` with Go `go_release`; returns its path.
fn build_go_program(name: &str, go_release: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let go = go_cache().join("go").join(go_release).join("bin/go");
    if !go.exists() {
        bail!(
            "Go {go_release} is not installed at {} (run scripts/setup.sh)",
            go.display()
        );
    }
    let work = target_dir()
        .join("xtask-go")
        .join(format!("{name}-{go_release}"));
    std::fs::create_dir_all(&work)?;
    std::fs::copy(
        root.join("xtask").join(name).join("main.go"),
        work.join("main.go"),
    )?;
    std::fs::write(work.join("go.mod"), format!("module {name}\n\ngo 1.19\n"))?;
    run(Command::new(&go)
        .args(["build", "-o", name, "."])
        .current_dir(&work)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", go_cache().join("gocache")))?;
    Ok(work.join(name))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn release_binary() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "gomemtrace"]))?;
    Ok(target_dir().join("release/gomemtrace"))
}

fn demo(go_release: &str) -> anyhow::Result<()> {
    let gomemtrace = release_binary()?;
    let demo = build_go_program("demo", go_release)?;
    run(Command::new(gomemtrace).arg("--exact").arg("--").arg(demo))
}

fn bench(go_release: &str, rounds: usize, allocations: u64) -> anyhow::Result<()> {
    let gomemtrace = release_binary()?;
    let workload = build_go_program("bench", go_release)?;
    let n = allocations.to_string();
    let variants: [(&str, Vec<&str>); 3] = [
        ("unprofiled", vec![]),
        ("empty uprobe", vec!["--empty-probe"]),
        ("gomemtrace --exact", vec!["--exact"]),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    // Interleave the variants so that machine noise hits all of them alike.
    for round in 0..rounds {
        for (i, (name, flags)) in variants.iter().enumerate() {
            let output = if flags.is_empty() {
                Command::new(&workload).arg(&n).output()?
            } else {
                Command::new(&gomemtrace)
                    .args(flags)
                    .args(["-q", "-o", "/dev/null", "--"])
                    .arg(&workload)
                    .arg(&n)
                    .output()?
            };
            let stdout = String::from_utf8_lossy(&output.stdout);
            let rate: f64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("allocs_per_sec "))
                .with_context(|| {
                    format!(
                        "{name}: no rate in output: {stdout} {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                })?
                .trim()
                .parse()?;
            eprintln!("round {round}: {name}: {rate:.0} allocations/s");
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let per_event_ns = |rate: f64| 1e9 / rate - 1e9 / medians[0];
    println!("| variant | allocations/s (median of {rounds}) | added ns per allocation |");
    println!("|---|---|---|");
    for (i, (name, _)) in variants.iter().enumerate() {
        let added = if i == 0 {
            "—".to_string()
        } else {
            format!("{:.0}", per_event_ns(medians[i]))
        };
        println!("| {name} | {:.0} | {added} |", medians[i]);
    }
    println!(
        "\nexact-mode event cost / empty-uprobe cost = {:.2}",
        per_event_ns(medians[2]) / per_event_ns(medians[1])
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn test() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args([
            "clippy",
            "-p",
            "gomemtrace-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy")))?;
    // The end-to-end tests run gomemtrace as a separate program: build it first.
    run(cargo().args(["build", "-p", "gomemtrace"]))?;
    run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
}
