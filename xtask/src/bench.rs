//! The overhead benchmark: the workloads of `tests/fixtures/benchload` run unprofiled, under
//! every gomemtrace mode, under an empty uprobe (the floor of any uprobe tracer) and under
//! bpftrace doing the equivalent `mallocgc` uprobe, interleaved round by round so machine
//! noise hits every variant alike. Reports median throughput ratios against the unprofiled
//! run of the same round, and the tracer's own CPU and peak RSS.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{GoBuild, target_dir, workspace_root};

pub struct BenchArgs {
    pub go: String,
    pub rounds: usize,
    pub seconds: f64,
    pub workloads: Vec<String>,
    pub output: Option<PathBuf>,
    /// Variant keys to run (the unprofiled baselines always run).
    pub variants: Vec<String>,
}

/// Keys of every variant, for `--variants`.
pub const VARIANT_KEYS: [&str; 7] = [
    "auto", "aa", "runtime", "duty", "exact", "empty", "bpftrace",
];

/// Which build of the workload a variant runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Build {
    /// The heap sampler is compiled out (most third-party binaries).
    NoSampler,
    /// Links `runtime.MemProfile` (programs importing net/http/pprof).
    Sampler,
}

impl Build {
    fn label(self) -> &'static str {
        match self {
            Build::NoSampler => "sampler compiled out",
            Build::Sampler => "sampler linked",
        }
    }
}

enum Runner {
    Unprofiled,
    /// bpftrace counting `mallocgc` calls by user stack: the usual one-liner.
    Bpftrace,
    Gomemtrace(&'static [&'static str]),
}

struct Variant {
    /// Selects the variant in `--variants`.
    key: &'static str,
    name: &'static str,
    build: Build,
    runner: Runner,
}

const VARIANTS: &[Variant] = &[
    Variant {
        key: "unprofiled",
        name: "unprofiled",
        build: Build::NoSampler,
        runner: Runner::Unprofiled,
    },
    Variant {
        key: "auto",
        name: "gomemtrace (auto)",
        build: Build::NoSampler,
        runner: Runner::Gomemtrace(&[]),
    },
    Variant {
        key: "unprofiled",
        name: "unprofiled",
        build: Build::Sampler,
        runner: Runner::Unprofiled,
    },
    Variant {
        key: "aa",
        name: "unprofiled again (A/A: the noise)",
        build: Build::Sampler,
        runner: Runner::Unprofiled,
    },
    Variant {
        key: "auto",
        name: "gomemtrace (auto)",
        build: Build::Sampler,
        runner: Runner::Gomemtrace(&[]),
    },
    Variant {
        key: "runtime",
        name: "gomemtrace --mode runtime",
        build: Build::Sampler,
        runner: Runner::Gomemtrace(&["--mode", "runtime"]),
    },
    Variant {
        key: "duty",
        name: "gomemtrace --mode duty",
        build: Build::Sampler,
        runner: Runner::Gomemtrace(&["--mode", "duty"]),
    },
    Variant {
        key: "exact",
        name: "gomemtrace --mode exact",
        build: Build::Sampler,
        runner: Runner::Gomemtrace(&["--mode", "exact"]),
    },
    Variant {
        key: "empty",
        name: "empty uprobe (floor)",
        build: Build::Sampler,
        runner: Runner::Gomemtrace(&["--empty-probe"]),
    },
    Variant {
        key: "bpftrace",
        name: "bpftrace mallocgc ustack",
        build: Build::Sampler,
        runner: Runner::Bpftrace,
    },
];

/// What one run measured.
struct Measured {
    ops_per_sec: f64,
    /// The workload's own CPU time per operation: what the probes cost the target (the
    /// uprobe traps run on its threads), less sensitive than throughput to other load.
    cpu_ns_per_op: f64,
    /// The tracer's own CPU time over the whole run, start-up and report included (its
    /// rusage with the reaped workload's own CPU taken out).
    tracer_total_cpu_s: Option<f64>,
    /// The tracer's CPU, as a fraction of one core, while the workload runs.
    tracer_steady_core: Option<f64>,
    tracer_peak_rss_kib: Option<u64>,
    /// The mode gomemtrace announced.
    mode: Option<String>,
}

pub fn bench(args: &BenchArgs, gomemtrace: &Path) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    for key in &args.variants {
        ensure!(
            VARIANT_KEYS.contains(&key.as_str()),
            "unknown variant {key:?}: one of {VARIANT_KEYS:?}"
        );
    }
    let bpftrace = which("bpftrace").context("bpftrace is not installed (run scripts/setup.sh)")?;
    let builds: BTreeMap<Build, PathBuf> = [Build::NoSampler, Build::Sampler]
        .into_iter()
        .map(|b| Ok((b, build_benchload(&args.go, b)?)))
        .collect::<anyhow::Result<_>>()?;
    let seconds = format!("{}", args.seconds);
    // results[workload][variant] = one Measured per round.
    let mut results: Vec<Vec<Vec<Measured>>> = args
        .workloads
        .iter()
        .map(|_| VARIANTS.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        for (w, workload) in args.workloads.iter().enumerate() {
            for (v, variant) in VARIANTS.iter().enumerate() {
                if variant.key != "unprofiled" && !args.variants.iter().any(|k| k == variant.key) {
                    continue;
                }
                let binary = &builds[&variant.build];
                let workload_cmd = [binary.as_os_str(), workload.as_ref(), seconds.as_ref()];
                let mut cmd = match variant.runner {
                    Runner::Unprofiled => {
                        let mut c = Command::new(workload_cmd[0]);
                        c.args(&workload_cmd[1..]);
                        c
                    }
                    Runner::Bpftrace => {
                        let mut c = Command::new(&bpftrace);
                        c.arg("-o")
                            .arg("/dev/null")
                            .arg("-c")
                            .arg(format!("{} {workload} {seconds}", binary.display()));
                        c.arg("-e").arg(format!(
                            "uprobe:{}:runtime.mallocgc {{ @[ustack] = count(); }}",
                            binary.display()
                        ));
                        c
                    }
                    Runner::Gomemtrace(flags) => {
                        let mut c = Command::new(gomemtrace);
                        c.args(flags).args(["-o", "/dev/null", "--"]);
                        c.args(workload_cmd);
                        c
                    }
                };
                let traced = !matches!(variant.runner, Runner::Unprofiled);
                let m = measure(&mut cmd, traced, args.seconds)
                    .with_context(|| format!("{workload}: {}", variant.name))?;
                eprintln!(
                    "round {round}: {workload}: {} ({}): {:.0} ops/s{}",
                    variant.name,
                    variant.build.label(),
                    m.ops_per_sec,
                    m.mode
                        .as_deref()
                        .map(|m| format!(", mode {m}"))
                        .unwrap_or_default()
                );
                results[w][v].push(m);
            }
        }
    }
    let report = render(args, &results);
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn render(args: &BenchArgs, results: &[Vec<Vec<Measured>>]) -> String {
    let mut out = String::new();
    let mut auto_costs = Vec::new();
    let mut noise = Vec::new();
    let mut tracer_core = Vec::new();
    for (w, workload) in args.workloads.iter().enumerate() {
        let _ = writeln!(out, "\n### `{workload}`\n");
        let _ = writeln!(
            out,
            "| variant | build | mode | ops/s (median) | throughput vs unprofiled (median ratio) | target CPU per op vs unprofiled (median ratio) | tracer CPU while tracing, % of a core | tracer CPU, whole run incl. start-up and report | tracer peak RSS |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        let baseline = |build: Build| {
            VARIANTS
                .iter()
                .position(|v| v.build == build && matches!(v.runner, Runner::Unprofiled))
                .expect("every build has an unprofiled variant")
        };
        for (v, variant) in VARIANTS.iter().enumerate() {
            let runs = &results[w][v];
            if runs.is_empty() {
                continue;
            }
            let base = &results[w][baseline(variant.build)];
            let ratios: Vec<f64> = runs
                .iter()
                .zip(base)
                .map(|(r, b)| r.ops_per_sec / b.ops_per_sec)
                .collect();
            let ratio = median(ratios);
            let cpu_ratio = median(
                runs.iter()
                    .zip(base)
                    .map(|(r, b)| r.cpu_ns_per_op / b.cpu_ns_per_op)
                    .collect(),
            );
            let ops = median(runs.iter().map(|r| r.ops_per_sec).collect());
            let core: Vec<f64> = runs.iter().filter_map(|r| r.tracer_steady_core).collect();
            let total_cpu: Vec<f64> = runs.iter().filter_map(|r| r.tracer_total_cpu_s).collect();
            let rss = runs.iter().filter_map(|r| r.tracer_peak_rss_kib).max();
            let mode = runs
                .iter()
                .find_map(|r| r.mode.clone())
                .unwrap_or_else(|| "—".into());
            let is_baseline = v == baseline(variant.build);
            let _ = writeln!(
                out,
                "| {} | {} | {mode} | {ops:.0} | {} | {} | {} | {} | {} |",
                variant.name,
                variant.build.label(),
                if is_baseline {
                    "1".into()
                } else {
                    format!("{ratio:.3}")
                },
                if is_baseline {
                    "1".into()
                } else {
                    format!("{cpu_ratio:.3}")
                },
                if core.is_empty() {
                    "—".into()
                } else {
                    format!("{:.2}%", 100.0 * median(core.clone()))
                },
                if total_cpu.is_empty() {
                    "—".into()
                } else {
                    format!("{:.2} s", median(total_cpu))
                },
                rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "—".into()),
            );
            if matches!(variant.runner, Runner::Unprofiled) && !is_baseline {
                noise.push((workload.clone(), ratio, cpu_ratio));
            }
            if variant.name == "gomemtrace (auto)" {
                auto_costs.push((
                    workload.clone(),
                    variant.build,
                    1.0 - ratio,
                    cpu_ratio - 1.0,
                ));
                if !core.is_empty() {
                    tracer_core.push((workload.clone(), variant.build, median(core)));
                }
            }
        }
        let ran = |key: &str| {
            VARIANTS
                .iter()
                .position(|v| v.key == key)
                .is_some_and(|v| !results[w][v].is_empty())
        };
        if workload == "alloc" && ran("exact") && ran("empty") {
            // Each alloc-workload op is one allocation, so the added time per op is the
            // cost of one probe event.
            let added_ns = |name: &str| {
                let v = VARIANTS
                    .iter()
                    .position(|v| v.name == name)
                    .expect("variant exists");
                let base = baseline(Build::Sampler);
                median(
                    results[w][v]
                        .iter()
                        .zip(&results[w][base])
                        .map(|(r, b)| 1e9 / r.ops_per_sec - 1e9 / b.ops_per_sec)
                        .collect(),
                )
            };
            let exact = added_ns("gomemtrace --mode exact");
            let empty = added_ns("empty uprobe (floor)");
            let _ = writeln!(
                out,
                "\nPer allocation event: exact adds {exact:.0} ns, the empty uprobe {empty:.0} ns: exact / empty-probe floor = **{:.2}** (goal 1.5).",
                exact / empty
            );
        }
    }
    let _ = writeln!(out, "\n### Goals\n");
    for (workload, build, cost, cpu_cost) in auto_costs {
        let _ = writeln!(
            out,
            "- auto on `{workload}` ({}): throughput cost {:.2}%, target CPU per op {:+.2}% (goal ≤ 1%): {}",
            build.label(),
            100.0 * cost,
            100.0 * cpu_cost,
            if cost <= 0.01 { "met" } else { "NOT met" }
        );
    }
    for (workload, ratio, cpu_ratio) in noise {
        let _ = writeln!(
            out,
            "- noise on `{workload}` (A/A, unprofiled against unprofiled): throughput {:+.2}%, CPU per op {:+.2}%",
            100.0 * (ratio - 1.0),
            100.0 * (cpu_ratio - 1.0)
        );
    }
    for (workload, build, core) in tracer_core {
        let _ = writeln!(
            out,
            "- gomemtrace's own CPU under auto on `{workload}` ({}): {:.2}% of a core (goal ≤ 1%): {}",
            build.label(),
            100.0 * core,
            if core <= 0.01 { "met" } else { "NOT met" }
        );
    }
    let _ = writeln!(
        out,
        "\n{} rounds of {} s per run, Go {}. Tracer CPU while tracing: schedstat of its threads over the middle half of the workload's run (median); whole run: its rusage less the workload's own CPU.",
        args.rounds, args.seconds, args.go
    );
    out
}

/// Runs `cmd` to completion, sampling the tracer's peak RSS while it runs, and reads the
/// workload's throughput and CPU from its output.
fn measure(cmd: &mut Command, traced: bool, seconds: f64) -> anyhow::Result<Measured> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = None;
            let mut cpu = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(hwm) = vm_hwm_kib(pid) {
                    peak = Some(hwm);
                }
                if let Some(ns) = process_cpu_ns(pid) {
                    cpu.push((Instant::now(), ns));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, cpu)
        })
    };
    let (output, usage) = wait_with_rusage(child)?;
    let ended = Instant::now();
    done.store(true, Ordering::Relaxed);
    let (peak_rss, cpu_series) = sampler.join().expect("tracer sampler thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("{cmd:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    }
    let field = |name: &str| -> anyhow::Result<f64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in output:\n{stdout}\n{stderr}"))?
            .trim()
            .parse()
            .with_context(|| format!("parse {name}"))
    };
    let ops_per_sec = field("ops_per_sec ")?;
    let ops = field("ops ")?;
    let workload_cpu = field("cpu_seconds ")?;
    let mode = stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("gomemtrace: attached ")?;
        let (_, rest) = rest.split_once(' ')?;
        Some(rest.split(" probes").next()?.to_string())
    });
    Ok(Measured {
        ops_per_sec,
        cpu_ns_per_op: workload_cpu * 1e9 / ops.max(1.0),
        tracer_total_cpu_s: traced.then(|| (usage - workload_cpu).max(0.0)),
        tracer_steady_core: if traced {
            steady_state_core(&cpu_series, ended, seconds)
        } else {
            None
        },
        tracer_peak_rss_kib: if traced { peak_rss } else { None },
        mode,
    })
}

/// Waits for `child` and returns its output and the CPU seconds of it and every descendant
/// it reaped (for a tracer in launch mode: itself plus the workload).
fn wait_with_rusage(mut child: std::process::Child) -> anyhow::Result<(std::process::Output, f64)> {
    use std::io::Read as _;
    let mut stdout_pipe = child.stdout.take().context("stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("stderr pipe")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });
    let mut stdout = Vec::new();
    stdout_pipe.read_to_end(&mut stdout)?;
    let stderr = stderr_reader.join().expect("stderr reader");
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; zeroed is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; both pointers are valid for the call.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    ensure!(rc > 0, "wait4: {}", std::io::Error::last_os_error());
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        std::process::Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout,
            stderr,
        },
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
    ))
}

/// The tracer's CPU as a fraction of a core over the middle half of the workload's run,
/// which ends just before the tracer exits (it writes its report after the target exits),
/// so start-up analysis and the report are left out.
fn steady_state_core(series: &[(Instant, u64)], ended: Instant, seconds: f64) -> Option<f64> {
    let from = ended.checked_sub(Duration::from_secs_f64(seconds * 0.8))?;
    let to = ended.checked_sub(Duration::from_secs_f64(seconds * 0.3))?;
    let window: Vec<_> = series
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let (first, last) = (window.first()?, window.last()?);
    let elapsed = last.0.duration_since(first.0).as_secs_f64();
    (elapsed > 0.0).then(|| (last.1 - first.1) as f64 / 1e9 / elapsed)
}

/// On-CPU time of every thread of `pid`, in ns (schedstat: finer than the tick counts of
/// /proc/PID/stat).
pub(crate) fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Builds `tests/fixtures/benchload` with Go `go_release`, with or without the sampler.
pub(crate) fn build_benchload(go_release: &str, build: Build) -> anyhow::Result<PathBuf> {
    let (output, flags): (&str, &[&str]) = match build {
        Build::NoSampler => ("benchload", &[]),
        Build::Sampler => ("benchload-sampler", &["-tags", "sampler"]),
    };
    GoBuild {
        source: workspace_root().join("tests/fixtures/benchload"),
        work: target_dir()
            .join("xtask-go")
            .join(format!("benchload-{go_release}")),
        output,
        go_release,
        flags,
        env: &[],
    }
    .run()
}
