//! Command-line interface: typed clap configuration.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod agent;
mod inspect;
mod views;

pub use agent::AgentArgs;
pub use inspect::InspectArgs;
pub use views::{GoroutinesArgs, NumaArgs, StackgrowthArgs};

use crate::{
    alloc::{self, plan::ModeRequest},
    engine::{TargetConfig, TargetSpec},
    gc,
};

/// Where a Go program's memory goes — traced from outside the process with eBPF uprobes:
/// allocations by stack, type and goroutine, with no change to the target.
#[derive(Debug, Parser)]
#[command(name = "gomemtrace", version, about, long_about = None)]
#[command(after_help = "Examples:\n  sudo gomemtrace -p 1234 -d 30s\n  \
    sudo gomemtrace --format pprof -o heap.pb.gz -- ./server --port 8080\n  \
    sudo gomemtrace gctrace -p 1234\n\n\
    Ctrl-C stops tracing and still writes the report.")]
// The allocation profile stays the top-level form (`gomemtrace [OPTIONS] (-p PID | -- CMD)`);
// other views are subcommands whose arguments never mix with it.
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub view: Option<View>,

    #[command(flatten)]
    pub run: TargetArgs,

    /// How allocations are collected: `auto` picks `runtime` where the binary links the
    /// runtime's heap sampler, else `duty`, and says which.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Duty-cycled mode: the most CPU time the probes may add, in percent of the target's
    /// own CPU time.
    #[arg(long, default_value_t = 1.0, value_name = "PERCENT", value_parser = parse_budget)]
    pub overhead_budget: f64,

    /// Runtime-sampled and duty-cycled modes: where the totals come from. `runtime`: the
    /// target's own allocation counters, read from outside, with the probes giving each
    /// stack's share; `probes`: the probes' own estimate (e.g. to compare with the
    /// program's own heap profile, which is unbiased the same way). The counters are
    /// reported either way.
    #[arg(long, value_enum, default_value_t = TotalsArg::Runtime)]
    pub totals: TotalsArg,

    /// Record every allocation: same as `--mode exact`.
    #[arg(long, conflicts_with = "mode")]
    pub exact: bool,

    /// Turn the target's heap sampler on by writing `runtime.MemProfileRate` (default
    /// 524288) so runtime-sampled mode works where the linker compiled the sampler out;
    /// prints what it wrote and restores the old value at the end. `-p` only. Without this
    /// flag nothing is ever written into the target.
    #[arg(
        long,
        value_name = "RATE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "524288",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub enable_runtime_sampling: Option<u64>,

    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Rows per table in the text report.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,

    /// Weight of folded stacks and flame graphs.
    #[arg(long, value_enum, default_value_t = Weight::Bytes)]
    pub weight: Weight,

    /// pprof, folded and svg: keep every frame of each stack, from the probed runtime
    /// function to the root. By default the runtime frames above the allocation are hidden
    /// as in Go's own heap profile, so the leaf is the allocating function.
    #[arg(long)]
    pub all_frames: bool,

    /// Benchmark floor: attach an empty program at the same offsets instead of the
    /// allocation probe (the report is then empty).
    #[arg(long, hide = true)]
    pub empty_probe: bool,
}

/// Views other than the allocation profile.
#[derive(Debug, Subcommand)]
pub enum View {
    /// One line per GC cycle in the runtime's own `GODEBUG=gctrace=1` format, for a
    /// process that never set GODEBUG. Fields that cannot be measured from outside print
    /// as `?` (docs/GCTRACE.md).
    #[command(after_help = "Examples:\n  sudo gomemtrace gctrace -p 1234\n  \
        sudo gomemtrace gctrace --format json -- ./server")]
    Gctrace(GctraceArgs),
    /// Every goroutine stack copy (growth by newstack, shrinking by the GC): goroutine,
    /// old → new size, the function that overflowed, bytes copied, time
    /// (docs/STACKS-GOROUTINES.md).
    #[command(
        after_help = "Examples:\n  sudo gomemtrace stackgrowth -p 1234 -d 10s\n  \
        sudo gomemtrace stackgrowth --format pprof -o growth.pb.gz -- ./server"
    )]
    Stackgrowth(StackgrowthArgs),
    /// Every Go process on the node: Prometheus metrics on /metrics and pprof profiles over
    /// HTTP (docs/AGENT.md).
    #[command(
        after_help = "Examples:\n  sudo gomemtrace agent --listen 127.0.0.1:9470\n  \
        curl -s localhost:9470/metrics | grep gomemtrace_alloc"
    )]
    Agent(AgentArgs),
    /// Goroutine creation and exit: live goroutines by creation site with creation
    /// stacks, ages, a count timeline and leak suspects (docs/STACKS-GOROUTINES.md).
    #[command(
        after_help = "Examples:\n  sudo gomemtrace goroutines -p 1234 -d 30s\n  \
        sudo gomemtrace goroutines --format json -- ./server"
    )]
    Goroutines(GoroutinesArgs),
    /// Remote NUMA accesses per goroutine and stack, from NUMA-balancing hint faults
    /// (fentry on task_numa_fault), with resident memory per node (docs/NUMA.md). Where
    /// the machine cannot measure them: `NUMA: not available (<why>)`, exit code 7.
    #[command(after_help = "Examples:\n  sudo gomemtrace numa -p 1234 -d 30s\n  \
        sudo gomemtrace numa --format pprof -o remote.pb.gz -- ./server")]
    Numa(NumaArgs),
    /// What gomemtrace sees in a Go executable and would do with it, without tracing:
    /// version, build, the mode `--mode auto` picks and why, every probe point, the
    /// runtime offsets and their source. Reads the file only: no root, no BPF.
    #[command(after_help = "Examples:\n  gomemtrace inspect ./server\n  \
        gomemtrace inspect --format json -p 1234")]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct GctraceArgs {
    #[command(flatten)]
    pub run: TargetArgs,

    /// Line format.
    #[arg(long, value_enum, default_value_t = GcFormat::Text)]
    pub format: GcFormat,

    /// Also trace mark assists (who pays the GC tax: goroutines and stacks) and background
    /// mark workers (dedicated, fractional, idle time per cycle) — docs/GCTRACE.md.
    #[arg(long)]
    pub assists: bool,

    /// Write a pprof profile of mark assists, weighted by assist time, to this file
    /// (implies --assists).
    #[arg(long, value_name = "FILE")]
    pub assists_pprof: Option<PathBuf>,
}

/// The options every view shares: which process, for how long, where the report goes.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Trace this running process.
    #[arg(
        short,
        long,
        value_name = "PID",
        conflicts_with = "command",
        required_unless_present = "command"
    )]
    pub pid: Option<u32>,

    /// Trace for this long (e.g. 10s, 2m); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Write the report to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// No status lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// Launch this command and trace it from its first instruction; gomemtrace exits with
    /// its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Cli {
    /// The running process a trace view was pointed at with `-p` (none for a launch, the
    /// agent or inspect).
    pub fn traced_pid(&self) -> Option<u32> {
        match &self.view {
            None => self.run.pid,
            Some(View::Gctrace(args)) => args.run.pid,
            Some(View::Stackgrowth(args)) => args.common.run.pid,
            Some(View::Goroutines(args)) => args.common.run.pid,
            Some(View::Numa(args)) => args.common.run.pid,
            Some(View::Agent(_)) | Some(View::Inspect(_)) => None,
        }
    }
}

impl TargetArgs {
    /// The typed configuration the engine runs on.
    pub fn config(&self) -> TargetConfig {
        TargetConfig {
            target: match self.pid {
                Some(pid) => TargetSpec::Pid(pid),
                None => TargetSpec::Launch(self.command.clone()),
            },
            duration: self.duration,
            output: self.output.clone(),
            quiet: self.quiet,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GcFormat {
    /// `gc N @Ts P%: ... P`, as the runtime prints with GODEBUG=gctrace=1.
    Text,
    /// One json object per cycle, times in ns, `null` where not measured (docs/GCTRACE.md).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable report: totals, top sites, types, goroutines, drops.
    Text,
    /// gzipped pprof profile.proto (`go tool pprof` opens it).
    Pprof,
    /// Folded stacks (flamegraph.pl / speedscope input).
    Folded,
    /// Flame graph.
    Svg,
    /// The full profile as json (schema in docs/JSON.md).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TotalsArg {
    Runtime,
    Probes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// `runtime` where the binary links the heap sampler, else `duty`.
    Auto,
    /// Probe the runtime's own heap sampler (about one event per MemProfileRate bytes,
    /// 512 KiB by default): cheap; also gives in-use heap; no types.
    Runtime,
    /// Exact probes attached in short windows, detached in between, under
    /// `--overhead-budget`: estimates with their standard errors, with types.
    Duty,
    /// Every allocation, with its type: exact, and costly on allocation-heavy code.
    Exact,
}

/// An `--overhead-budget` that is no percentage in (0, 100].
#[derive(Debug, thiserror::Error)]
#[error("{0}: a percentage in (0, 100]")]
pub struct BadBudget(String);

fn parse_budget(s: &str) -> Result<f64, BadBudget> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(BadBudget(s.to_string())),
    }
}

impl Cli {
    /// The mode asked for, `--exact` included.
    pub fn mode(&self) -> ModeArg {
        if self.exact {
            ModeArg::Exact
        } else {
            self.mode
        }
    }

    /// The allocation profile's typed settings.
    pub fn config(&self) -> alloc::Config {
        alloc::Config {
            run: self.run.config(),
            mode: self.mode().into(),
            overhead_budget: self.overhead_budget,
            totals: match self.totals {
                TotalsArg::Runtime => alloc::Totals::Runtime,
                TotalsArg::Probes => alloc::Totals::Probes,
            },
            enable_runtime_sampling: self.enable_runtime_sampling,
            output: alloc::output::Options {
                format: match self.format {
                    Format::Text => alloc::output::Format::Text,
                    Format::Pprof => alloc::output::Format::Pprof,
                    Format::Folded => alloc::output::Format::Folded,
                    Format::Svg => alloc::output::Format::Svg,
                    Format::Json => alloc::output::Format::Json,
                },
                top: self.top,
                weight: match self.weight {
                    Weight::Bytes => gomemtrace_report::Weight::Bytes,
                    Weight::Objects => gomemtrace_report::Weight::Objects,
                },
                frames: if self.all_frames {
                    gomemtrace_report::Frames::All
                } else {
                    gomemtrace_report::Frames::GoHeap
                },
            },
            empty_probe: self.empty_probe,
        }
    }
}

impl From<ModeArg> for ModeRequest {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => ModeRequest::Auto,
            ModeArg::Runtime => ModeRequest::Runtime,
            ModeArg::Duty => ModeRequest::Duty,
            ModeArg::Exact => ModeRequest::Exact,
        }
    }
}

impl GctraceArgs {
    /// `gomemtrace gctrace`'s typed settings.
    pub fn config(&self) -> gc::Config {
        gc::Config {
            run: self.run.config(),
            format: match self.format {
                GcFormat::Text => gc::LineFormat::Text,
                GcFormat::Json => gc::LineFormat::Json,
            },
            assists: self.assists || self.assists_pprof.is_some(),
            assists_pprof: self.assists_pprof.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weight {
    Bytes,
    Objects,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_pid_and_launch_forms() {
        let cli = Cli::try_parse_from(["gomemtrace", "-p", "42", "-d", "1500ms"]).unwrap();
        assert_eq!(cli.run.config().target, TargetSpec::Pid(42));
        assert_eq!(cli.run.duration, Some(Duration::from_millis(1500)));
        let cli =
            Cli::try_parse_from(["gomemtrace", "--format", "json", "--", "./app", "-x"]).unwrap();
        assert_eq!(
            cli.run.config().target,
            TargetSpec::Launch(vec!["./app".into(), "-x".into()])
        );
        assert_eq!(cli.format, Format::Json);
    }

    #[test]
    fn gctrace_subcommand_parses_both_target_forms() {
        let cli = Cli::try_parse_from(["gomemtrace", "gctrace", "-p", "7"]).unwrap();
        let Some(View::Gctrace(args)) = &cli.view else {
            panic!("no gctrace view: {cli:?}");
        };
        assert_eq!(args.run.config().target, TargetSpec::Pid(7));
        let cli = Cli::try_parse_from([
            "gomemtrace",
            "gctrace",
            "--format",
            "json",
            "--",
            "./app",
            "gctrace",
        ])
        .unwrap();
        let Some(View::Gctrace(args)) = &cli.view else {
            panic!("no gctrace view: {cli:?}");
        };
        assert_eq!(
            args.run.config().target,
            TargetSpec::Launch(vec!["./app".into(), "gctrace".into()])
        );
        assert_eq!(args.format, GcFormat::Json);
        assert!(Cli::try_parse_from(["gomemtrace", "gctrace"]).is_err());
        assert!(Cli::try_parse_from(["gomemtrace", "gctrace", "-p", "1", "--", "x"]).is_err());
        // Allocation-profile options do not mix with the subcommand.
        assert!(Cli::try_parse_from(["gomemtrace", "--exact", "gctrace", "-p", "1"]).is_err());
    }

    #[test]
    fn top_level_form_is_unchanged_by_the_subcommand() {
        // A command named like the subcommand after `--` is still a command to launch.
        let cli = Cli::try_parse_from(["gomemtrace", "--", "gctrace"]).unwrap();
        assert!(cli.view.is_none());
        assert_eq!(
            cli.run.config().target,
            TargetSpec::Launch(vec!["gctrace".into()])
        );
        let cli = Cli::try_parse_from(["gomemtrace", "-p", "3", "--top", "5"]).unwrap();
        assert!(cli.view.is_none());
        assert_eq!(cli.run.config().target, TargetSpec::Pid(3));
    }

    #[test]
    fn inspect_takes_a_binary_or_a_pid() {
        let cli = Cli::try_parse_from(["gomemtrace", "inspect", "./app"]).unwrap();
        let Some(View::Inspect(args)) = &cli.view else {
            panic!("no inspect view: {cli:?}");
        };
        assert_eq!(args.binary.as_deref(), Some(std::path::Path::new("./app")));
        assert_eq!(args.format, inspect::InspectFormat::Text);
        let cli =
            Cli::try_parse_from(["gomemtrace", "inspect", "--format", "json", "-p", "9"]).unwrap();
        let Some(View::Inspect(args)) = &cli.view else {
            panic!("no inspect view: {cli:?}");
        };
        assert_eq!((args.pid, args.binary.as_ref()), (Some(9), None));
        assert_eq!(args.format, inspect::InspectFormat::Json);
        assert!(Cli::try_parse_from(["gomemtrace", "inspect"]).is_err());
        assert!(Cli::try_parse_from(["gomemtrace", "inspect", "./app", "-p", "1"]).is_err());
    }

    #[test]
    fn rejects_missing_or_double_targets() {
        assert!(Cli::try_parse_from(["gomemtrace"]).is_err());
        assert!(Cli::try_parse_from(["gomemtrace", "-p", "1", "--", "ls"]).is_err());
        assert!(Cli::try_parse_from(["gomemtrace", "-p", "1", "-d", "soon"]).is_err());
    }
}
