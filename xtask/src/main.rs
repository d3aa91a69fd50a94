//! Developer tasks that a build script cannot do: the demo run and the whole test suite.
//!
//! `cargo xtask demo` builds gomemtrace and a bundled Go workload, traces it, and prints
//! the report. `cargo xtask test` runs formatting and lint checks and every test (the
//! end-to-end ones need root and BPF, which CI has; the NUMA one boots `cargo xtask vm`),
//! then every fuzz target for a few seconds. `cargo xtask fuzz` runs the fuzz targets
//! (`fuzz/`) for as long as asked.
//! `cargo xtask vm run` boots a two-node QEMU guest that runs `gomemtrace numa`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_agent;
mod deploy;
mod fuzz;
mod static_build;
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
    /// The agent's own CPU and memory while it covers many Go processes (by default four
    /// large programs of Debian's with loopback workloads among them), after many
    /// short-lived ones came and went.
    BenchAgent {
        #[arg(long, default_value = "1.25")]
        go: String,
        /// Go processes traced while measuring, the large programs' included (hugo,
        /// rclone, prometheus: one each; packer: two).
        #[arg(long, default_value_t = 20)]
        processes: usize,
        /// Length of the measurement window.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 19470)]
        port: u16,
        /// Busy benchmark workloads only: no hugo, rclone, packer or prometheus.
        #[arg(long)]
        no_large: bool,
        /// Short-lived Go processes (benchload, from distinct executables) that come and
        /// go before the others start.
        #[arg(long, default_value_t = 100)]
        churn: usize,
        /// How long each short-lived process runs (default: until the agent's series
        /// show it attached, then it is killed; at most 10 s).
        #[arg(long)]
        churn_seconds: Option<f64>,
    },
    /// Formatting, clippy (host and eBPF crates), and every test.
    Test,
    /// Overhead of every mode on the benchmark workloads, side by side with unprofiled
    /// runs, an empty uprobe and bpftrace (interleaved rounds, medians).
    Bench {
        /// Go release to build the workloads with.
        #[arg(long, default_value = "1.25")]
        go: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How long each workload run lasts.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Workloads of tests/fixtures/benchload to run.
        #[arg(long, value_delimiter = ',', default_value = "alloc,json,pool")]
        workloads: Vec<String>,
        /// Also write the markdown report here.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Variants to run beside the unprofiled baselines: auto, aa (a second unprofiled
        /// run: the noise), runtime, duty, exact, empty (the empty-uprobe floor), bpftrace.
        #[arg(long, value_delimiter = ',', default_values_t = bench::VARIANT_KEYS.map(String::from))]
        variants: Vec<String>,
    },
    /// Validate deploy/ without a cluster: lint and schema-check the manifests and the Helm
    /// chart, and build and inspect the agent's OCI image (buildah, no Docker daemon).
    DeployCheck,
    /// A two-node NUMA guest (QEMU) that runs `gomemtrace numa` on a fixture.
    Vm(vm::VmArgs),
    /// Build the libFuzzer targets of fuzz/ and run each for a bounded time on its seeds
    /// and kept corpus; fails on a crash.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Targets to run (default: all).
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        /// Regenerate the seeds first (else they are made once).
        #[arg(long)]
        new_seeds: bool,
    },
    /// Write the fuzz targets' seeds: parts of builds of fuzz/seedprog by every installed
    /// Go release (normal, stripped, stripped PIE) and synthetic runtime images.
    FuzzSeeds,
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().task {
        Task::Demo { go } => demo(&go),
        Task::Test => test(),
        Task::BenchAgent {
            go,
            processes,
            seconds,
            port,
            no_large,
            churn,
            churn_seconds,
        } => bench_agent::bench_agent(
            &bench_agent::AgentBenchArgs {
                go,
                processes,
                seconds,
                port,
                large: !no_large,
                churn,
                churn_seconds,
            },
            &release_binary()?,
        ),
        Task::Bench {
            go,
            rounds,
            seconds,
            workloads,
            output,
            variants,
        } => bench::bench(
            &bench::BenchArgs {
                go,
                rounds,
                seconds,
                workloads,
                output,
                variants,
            },
            &release_binary()?,
        ),
        Task::DeployCheck => deploy::deploy_check(),
        Task::Vm(args) => vm::main(args),
        Task::Fuzz {
            seconds,
            target,
            new_seeds,
        } => {
            if new_seeds {
                fuzz::seeds()?;
            }
            let targets = if target.is_empty() {
                fuzz::TARGETS.map(String::from).to_vec()
            } else {
                target
            };
            fuzz::fuzz(&targets, seconds)
        }
        Task::FuzzSeeds => fuzz::seeds().map(|_| ()),
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

/// One `go build`, standard library only, shared by the demo, the benchmark and the VM.
struct GoBuild<'a> {
    /// Directory whose `.go` files make the program (one module, package main).
    source: PathBuf,
    /// Build directory under the cargo target directory.
    work: PathBuf,
    /// Name of the binary written in `work`.
    output: &'a str,
    go_release: &'a str,
    /// Extra `go build` flags (e.g. `-tags`).
    flags: &'a [&'a str],
    /// Extra environment for the toolchain; overrides the defaults below.
    env: &'a [(&'a str, std::ffi::OsString)],
}

impl GoBuild<'_> {
    /// Copies the sources into `work`, builds, and returns the binary's path.
    fn run(&self) -> anyhow::Result<PathBuf> {
        let go = go_cache().join("go").join(self.go_release).join("bin/go");
        if !go.exists() {
            bail!(
                "Go {} is not installed at {} (run scripts/setup.sh)",
                self.go_release,
                go.display()
            );
        }
        std::fs::create_dir_all(&self.work)?;
        for entry in std::fs::read_dir(&self.source)
            .with_context(|| format!("read {}", self.source.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "go") {
                std::fs::copy(&path, self.work.join(path.file_name().expect("file name")))?;
            }
        }
        let module = self
            .source
            .file_name()
            .and_then(|n| n.to_str())
            .context("source directory name")?;
        std::fs::write(
            self.work.join("go.mod"),
            format!("module {module}\n\ngo 1.19\n"),
        )?;
        let mut cmd = Command::new(&go);
        cmd.arg("build")
            .args(self.flags)
            .args(["-o", self.output, "."])
            .current_dir(&self.work)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOCACHE", go_cache().join("gocache"));
        for (key, value) in self.env {
            cmd.env(key, value);
        }
        run(&mut cmd)?;
        Ok(self.work.join(self.output))
    }
}

/// Builds the Go program in `xtask/<name>/` with Go `go_release`; returns its path.
fn build_go_program(name: &str, go_release: &str) -> anyhow::Result<PathBuf> {
    GoBuild {
        source: workspace_root().join("xtask").join(name),
        work: target_dir()
            .join("xtask-go")
            .join(format!("{name}-{go_release}")),
        output: name,
        go_release,
        flags: &[],
        env: &[],
    }
    .run()
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
    deploy::deploy_check()?;
    // The end-to-end tests run gomemtrace as a separate program: build it first.
    run(cargo().args(["build", "-p", "gomemtrace"]))?;
    let tests = run(cargo().args(["test", "--workspace", "--no-fail-fast"]));
    // Every fuzz target, briefly: a parser change that panics on its seeds' neighbours
    // fails here. Seeds are remade each time, after the tests warmed the Go build cache.
    fuzz::seeds()?;
    fuzz::fuzz(&fuzz::TARGETS.map(String::from), FUZZ_SECONDS_IN_TEST)?;
    tests
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS_IN_TEST: u64 = 20;
