//! Developer tasks that a build script cannot do: the demo run and the whole test suite.
//!
//! `cargo xtask demo` builds gomemtrace and a bundled Go workload, traces it, and prints
//! the report. `cargo xtask test` runs formatting and lint checks and every test (the
//! end-to-end ones need root and BPF, which CI has).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().task {
        Task::Demo { go } => demo(&go),
        Task::Test => test(),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn go_cache() -> PathBuf {
    std::env::var_os("GOMEMTRACE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/gomemtrace")
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

fn demo(go_release: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    run(cargo().args(["build", "--release", "-p", "gomemtrace"]))?;
    let go = go_cache().join("go").join(go_release).join("bin/go");
    if !go.exists() {
        bail!("Go {go_release} is not installed at {} (run scripts/setup.sh)", go.display());
    }
    let work = root.join("target/demo");
    std::fs::create_dir_all(&work)?;
    std::fs::copy(root.join("xtask/demo/main.go"), work.join("main.go"))?;
    std::fs::write(work.join("go.mod"), "module demo\n\ngo 1.19\n")?;
    run(Command::new(&go)
        .args(["build", "-o", "demo", "."])
        .current_dir(&work)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", go_cache().join("gocache")))?;
    run(Command::new(root.join("target/release/gomemtrace")).arg("--exact").arg("--").arg(work.join("demo")))
}

fn test() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo()
        .args(["clippy", "-p", "gomemtrace-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--release", "--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", workspace_root().join("target/ebpf-clippy")))?;
    // The end-to-end tests run gomemtrace as a separate program: build it first.
    run(cargo().args(["build", "-p", "gomemtrace"]))?;
    run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
}
