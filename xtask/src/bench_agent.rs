//! The agent's footprint: `gomemtrace agent` (mode auto) covering `--processes` Go processes
//! — four large programs from Debian's packages (hugo, rclone, packer, prometheus) with real
//! loopback workloads, busy benchmark workloads for the rest — after `--churn` short-lived
//! Go processes of executables of their own have come and gone. Its CPU (schedstat of its
//! threads over a steady window) and memory (VmRSS, RssAnon, and VmHWM: the peak over the
//! whole run, churn included) against the goals of ≤ 1% of a core and ≤ 64 MiB.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::bench::{Build, build_benchload, process_cpu_ns};

pub struct AgentBenchArgs {
    pub go: String,
    pub processes: usize,
    pub seconds: f64,
    pub port: u16,
    /// Run the large third-party programs among the processes.
    pub large: bool,
    /// Short-lived Go processes run (and gone) before the window.
    pub churn: usize,
    /// How long each runs; `None`: until the agent shows it attached.
    pub churn_seconds: Option<f64>,
}

/// A large Go program of Debian's (scripts/setup.sh installs it).
struct LargeProgram {
    name: &'static str,
    path: &'static str,
    /// Go processes it runs: packer re-executes itself under panicwrap and waits for it.
    processes: usize,
}

const LARGE: [LargeProgram; 4] = [
    LargeProgram {
        name: "hugo",
        path: "/usr/bin/hugo",
        processes: 1,
    },
    LargeProgram {
        name: "rclone",
        path: "/usr/bin/rclone",
        processes: 1,
    },
    LargeProgram {
        name: "packer",
        path: "/usr/bin/packer",
        processes: 2,
    },
    LargeProgram {
        name: "prometheus",
        path: "/usr/bin/prometheus",
        processes: 1,
    },
];

/// What the goal calls a large executable.
const LARGE_BYTES: u64 = 50_000_000;
/// Distinct executables (copies, each its own inode) the short-lived processes run: more
/// than the analyses the agent keeps for executables nothing runs (8), so it must forget.
const CHURN_COPIES: usize = 12;
const CHURN_AT_ONCE: usize = 4;
/// The longest a short-lived process waits for the agent to attach (its benchload run).
const CHURN_MAX_SECONDS: &str = "10";
const WORKLOADS: [&str; 3] = ["json", "pool", "alloc"];

/// Children killed on every exit path, with their own children first (packer's worker
/// would outlive its wrapper).
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, cmd: &mut Command) -> anyhow::Result<&mut Child> {
        let child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
        self.0.push(child);
        Ok(self.0.last_mut().expect("just pushed"))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let pid = child.id();
                let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                for kid in kids
                    .split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
                    unsafe { libc::kill(kid, libc::SIGKILL) };
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("gomemtrace-bench-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The large programs' loopback endpoints and inputs, for the workload.
struct Servers {
    hugo: String,
    hugo_site: PathBuf,
    rclone: String,
    prometheus: String,
    packer_stdin: ChildStdin,
}

/// Requests of the workload during the window.
#[derive(Default)]
struct WorkloadCount {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

pub fn bench_agent(args: &AgentBenchArgs, gomemtrace: &Path) -> anyhow::Result<()> {
    let large_processes: usize = if args.large {
        LARGE.iter().map(|p| p.processes).sum()
    } else {
        0
    };
    ensure!(
        args.processes > large_processes,
        "--processes must be more than the {large_processes} processes of the large programs"
    );
    let mut large_sizes = Vec::new();
    if args.large {
        for program in &LARGE {
            let size = std::fs::metadata(program.path)
                .with_context(|| {
                    format!(
                        "{} is not installed (run scripts/setup.sh, or pass --no-large)",
                        program.path
                    )
                })?
                .len();
            large_sizes.push((program.name, size));
        }
    }
    let builds = [
        build_benchload(&args.go, Build::NoSampler)?,
        build_benchload(&args.go, Build::Sampler)?,
    ];
    let tmp = TempDir::new()?;
    // Every benchmark executable runs from the temporary directory, so that one glob
    // keeps the agent to them: other work on the machine (a CI job's Go processes, its
    // own prometheus or hugo) is not traced. The large programs are linked there (the
    // same file), else copied.
    if args.large {
        std::fs::create_dir_all(tmp.0.join("bin"))?;
        for program in &LARGE {
            let exe = large_exe(&tmp.0, program.name);
            if std::fs::hard_link(program.path, &exe).is_err() {
                std::fs::copy(program.path, &exe)
                    .with_context(|| format!("copy {}", program.path))?;
            }
        }
    }
    let long_lived = [tmp.0.join("benchload"), tmp.0.join("benchload-sampler")];
    for (build, copy) in builds.iter().zip(&long_lived) {
        std::fs::copy(build, copy).with_context(|| format!("copy {}", build.display()))?;
    }
    let churn_dir = tmp.0.join("churn");
    let churn_exes = churn_executables(&builds, &churn_dir, args.churn)?;
    let servers_setup = if args.large {
        Some(prepare_large(&tmp.0)?)
    } else {
        None
    };

    let listen = format!("127.0.0.1:{}", args.port);
    let mut agent_cmd = Command::new(gomemtrace);
    agent_cmd
        .args(["agent", "--listen", &listen, "--include-exe"])
        .arg(format!("{}/*", tmp.0.display()));
    let mut agent = Children::default();
    let agent_pid = agent
        .spawn(
            agent_cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?
        .id();
    wait_ready(&listen, Duration::from_secs(60))?;

    // The churn first, while the agent has nothing else to do: beside the 20 busy processes
    // on a 2-core machine it attached to a new executable's process after 5-12 s (median),
    // and to under a fifth of the short-lived ones at all.
    let hwm_before_churn = status_kib(agent_pid, "VmHWM:")?;
    let churn = run_churn(
        &listen,
        &churn_dir,
        &churn_exes,
        args.churn_seconds,
        agent_pid,
    )?;
    wait_attached(&listen, 0, Duration::from_secs(60))?;

    let mut large = Children::default();
    let servers = match servers_setup {
        Some(setup) => Some(start_large(setup, &tmp.0, &mut large)?),
        None => None,
    };
    let mut targets = Children::default();
    for i in 0..args.processes - large_processes {
        targets.spawn(
            Command::new(&long_lived[i % 2])
                .args([WORKLOADS[i % WORKLOADS.len()], "36000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )?;
    }
    let attached_before = wait_attached(&listen, args.processes, Duration::from_secs(120))?;
    let hwm_after_attach = status_kib(agent_pid, "VmHWM:")?;
    ensure_alive(&mut large, &tmp.0)?;

    // The workload of the large programs runs through warm-up and window.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = servers.map(|s| {
        let stop = stop.clone();
        std::thread::spawn(move || large_workload(s, &stop))
    });
    std::thread::sleep(Duration::from_secs(4));
    let (t0, cpu0) = (
        Instant::now(),
        process_cpu_ns(agent_pid).context("agent CPU")?,
    );
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let (t1, cpu1) = (
        Instant::now(),
        process_cpu_ns(agent_pid).context("agent CPU")?,
    );
    let metrics = http_get(&listen, "/metrics")?;
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{agent_pid}/smaps_rollup"))?;
    stop.store(true, Ordering::Release);
    let workload = workload
        .map(|t| t.join().expect("workload thread"))
        .map(|(count, servers)| {
            drop(servers);
            count
        });
    ensure_alive(&mut large, &tmp.0)?;
    let attached = gauge(&metrics, "gomemtrace_agent_attached_processes").unwrap_or(f64::NAN);
    drop(targets);
    drop(large);
    if let Some(status) = agent.0[0].try_wait()? {
        bail!("the agent exited during the benchmark: {status}");
    }

    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mib = |kib: f64| kib / 1024.0;
    let core = (cpu1 - cpu0) as f64 / 1e9 / t1.duration_since(t0).as_secs_f64();
    let sizes = if large_sizes.is_empty() {
        "none".to_string()
    } else {
        large_sizes
            .iter()
            .map(|(name, size)| format!("{name} {:.1} MB", *size as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| traced at measurement | large executables | short-lived: run / seen attached / series left | agent CPU, % of a core | agent RSS | RssAnon | peak RSS (VmHWM, whole run) |\n|---|---|---|---|---|---|---|"
    );
    println!(
        "| {attached} ({large_processes} of the large programs) | {sizes} | {} / {} / {} | {:.2}% | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        churn.run,
        churn.seen,
        churn.left,
        100.0 * core,
        mib(kib("VmRSS:")),
        mib(kib("RssAnon:")),
        mib(kib("VmHWM:")),
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let large_count = large_sizes.iter().filter(|(_, s)| *s > LARGE_BYTES).count();
    println!(
        "\nGoals: ≤ 1% of a core: {}; ≤ 64 MiB RSS, peak included: {}; 20 or more traced with three or more executables over 50 MB: {} ({attached} traced, {large_count} over 50 MB); 100 or more short-lived Go processes come and gone: {} ({} run, {} seen attached, {} series left)",
        met(core <= 0.01),
        met(kib("VmHWM:") <= 64.0 * 1024.0),
        met(attached >= 20.0 && attached as usize == args.processes && large_count >= 3),
        met(churn.run >= 100 && churn.seen >= 100 && churn.left == 0),
        churn.run,
        churn.seen,
        churn.left,
    );
    println!(
        "\nAgent VmHWM: {:.1} MiB before the churn; {:.1} MiB after it (highest VmRSS read during it {:.1} MiB); {:.1} MiB once the {attached_before} processes were attached",
        mib(hwm_before_churn as f64),
        mib(churn.hwm_kib as f64),
        mib(churn.max_rss_kib as f64),
        mib(hwm_after_attach as f64),
    );
    println!("At measurement (/proc/PID/status, smaps_rollup):");
    for line in status.lines().filter(|l| {
        [
            "VmRSS:",
            "RssAnon:",
            "RssFile:",
            "RssShmem:",
            "VmHWM:",
            "Threads:",
        ]
        .iter()
        .any(|f| l.starts_with(f))
    }) {
        println!("    {line}");
    }
    for line in rollup.lines().filter(|l| {
        [
            "Pss_Anon:",
            "Pss_File:",
            "Shared_Clean:",
            "Private_Clean:",
            "Private_Dirty:",
        ]
        .iter()
        .any(|f| l.starts_with(f))
    }) {
        println!("    {line}");
    }
    if let Some(w) = &workload {
        println!(
            "\nLarge programs' workload over warm-up and window: {} requests answered, {} failed{}",
            w.ok,
            w.failed,
            w.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    println!("\nThe agent's own series while measuring:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("gomemtrace_agent") || l.starts_with("gomemtrace_attached"))
    {
        println!("    {line}");
    }
    println!(
        "\n{}-s window after 4 s of warm-up; {} benchload processes alternate json/pool/alloc and sampler compiled out/linked (auto picks duty/runtime), Go {}.",
        args.seconds,
        args.processes - large_processes,
        args.go,
    );
    println!(
        "Before them: {} short-lived benchload processes, {CHURN_AT_ONCE} at a time, from {CHURN_COPIES} distinct copies (the agent keeps the analyses of 8 executables nothing runs), each {}; spawn to the agent's series, ms (median / max): {}; lifetime, ms: {}.",
        churn.run,
        match args.churn_seconds {
            Some(s) => format!("running {s} s"),
            None => format!(
                "killed once the agent's series showed it attached (else it ends after {CHURN_MAX_SECONDS} s)"
            ),
        },
        median_max(&churn.attach_ms),
        median_max(&churn.lifetime_ms),
    );
    Ok(())
}

/// `CHURN_COPIES` copies of the benchload builds under `dir`, and a hard link of them per
/// short-lived process (`cNN-III`): its own exe label, so the agent's series tell which
/// processes it attached, while the analyses are per copy.
fn churn_executables(builds: &[PathBuf; 2], dir: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let copies: Vec<PathBuf> = (0..CHURN_COPIES)
        .map(|c| {
            let copy = dir.join(format!("c{c:02}"));
            std::fs::copy(&builds[c % 2], &copy)
                .with_context(|| format!("copy to {}", copy.display()))?;
            Ok(copy)
        })
        .collect::<anyhow::Result<_>>()?;
    (0..n)
        .map(|i| {
            let c = i % CHURN_COPIES;
            let link = dir.join(format!("c{c:02}-{i:03}"));
            std::fs::hard_link(&copies[c], &link)
                .with_context(|| format!("link {}", link.display()))?;
            Ok(link)
        })
        .collect()
}

struct Churn {
    run: usize,
    /// Short-lived processes whose series the agent showed.
    seen: usize,
    /// Their series still there after the wait.
    left: usize,
    /// Spawn to first series, of those seen (ms, sorted).
    attach_ms: Vec<u64>,
    /// Spawn to exit (ms, sorted).
    lifetime_ms: Vec<u64>,
    max_rss_kib: u64,
    /// VmHWM once their series are gone.
    hwm_kib: u64,
}

/// A short-lived process.
struct ShortLived {
    child: Child,
    exe: String,
    started: Instant,
    killed: bool,
}

/// Runs the short-lived processes, `CHURN_AT_ONCE` at a time, reading the agent's series
/// meanwhile; then waits until their series are gone. Each runs `seconds`, or without,
/// until the agent's series show it attached (the agent takes about as long as a
/// sub-second process lives: it must see a process to analyse its executable), then it is
/// killed.
fn run_churn(
    listen: &str,
    dir: &Path,
    exes: &[PathBuf],
    seconds: Option<f64>,
    agent_pid: u32,
) -> anyhow::Result<Churn> {
    let prefix = format!("exe=\"{}/", dir.display());
    let mut max_rss_kib = 0;
    // The series of short-lived processes' executables.
    let mut look = || -> anyhow::Result<Vec<String>> {
        max_rss_kib = max_rss_kib.max(status_kib(agent_pid, "VmRSS:")?);
        let metrics = http_get(listen, "/metrics")?;
        Ok(metrics
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&prefix))
            .map(String::from)
            .collect())
    };
    let exe_of = |series: &str| -> String {
        let exe = &series[series.find(&prefix).map_or(0, |at| at + "exe=\"".len())..];
        exe[..exe.find('"').unwrap_or(exe.len())].to_string()
    };
    let duration = seconds.map_or(CHURN_MAX_SECONDS.to_string(), |s| s.to_string());
    let mut running: Vec<ShortLived> = Vec::new();
    let mut first_seen: HashMap<String, u64> = HashMap::new();
    let mut lifetime_ms = Vec::new();
    let mut next = 0;
    let result = (|| -> anyhow::Result<()> {
        while next < exes.len() || !running.is_empty() {
            let series: Vec<String> = look()?.iter().map(|s| exe_of(s)).collect();
            for p in &mut running {
                if !first_seen.contains_key(&p.exe) && series.contains(&p.exe) {
                    first_seen.insert(p.exe.clone(), p.started.elapsed().as_millis() as u64);
                    if seconds.is_none() {
                        let _ = p.child.kill();
                        p.killed = true;
                    }
                }
            }
            // Reaped here (try_wait); the rest are killed and reaped below.
            let mut failed = None;
            running.retain_mut(|p| match p.child.try_wait() {
                Ok(Some(status)) => {
                    if !p.killed && !status.success() {
                        failed = Some(status);
                    }
                    lifetime_ms.push(p.started.elapsed().as_millis() as u64);
                    false
                }
                _ => true,
            });
            if let Some(status) = failed {
                bail!("a short-lived benchload run failed: {status}");
            }
            while running.len() < CHURN_AT_ONCE && next < exes.len() {
                let exe = exes[next].display().to_string();
                let child = Command::new(&exes[next])
                    .args([WORKLOADS[next % WORKLOADS.len()], duration.as_str()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .with_context(|| format!("start {exe}"))?;
                running.push(ShortLived {
                    child,
                    exe,
                    started: Instant::now(),
                    killed: false,
                });
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    for p in &mut running {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    result?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let left = look()?;
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !left.is_empty() {
        eprintln!(
            "xtask: {} series of short-lived processes still there 60 s after the churn:",
            left.len()
        );
        for series in left.iter().take(20) {
            eprintln!("    {series}");
        }
    }
    let mut attach_ms: Vec<u64> = first_seen.into_values().collect();
    attach_ms.sort_unstable();
    lifetime_ms.sort_unstable();
    Ok(Churn {
        run: exes.len(),
        seen: attach_ms.len(),
        left: left.len(),
        attach_ms,
        lifetime_ms,
        max_rss_kib,
        hwm_kib: status_kib(agent_pid, "VmHWM:")?,
    })
}

/// "median / max" of sorted values, or "-".
fn median_max(sorted: &[u64]) -> String {
    match sorted.last() {
        Some(max) => format!("{} / {max}", sorted[sorted.len() / 2]),
        None => "-".into(),
    }
}

/// Inputs of the large programs, made before the agent starts.
struct LargeSetup {
    hugo_site: PathBuf,
    rclone_dir: PathBuf,
    prometheus_config: PathBuf,
    ports: [u16; 3],
}

fn prepare_large(tmp: &Path) -> anyhow::Result<LargeSetup> {
    let ports = [free_port()?, free_port()?, free_port()?];
    let site = tmp.join("site");
    let status = Command::new(large_exe(tmp, "hugo"))
        .args(["new", "site"])
        .arg(&site)
        .stdout(Stdio::null())
        .status()
        .context("hugo new site")?;
    ensure!(status.success(), "hugo new site: {status}");
    std::fs::create_dir_all(site.join("layouts/_default"))?;
    std::fs::create_dir_all(site.join("content/posts"))?;
    std::fs::write(
        site.join("layouts/index.html"),
        "<html><body>{{ range .Site.RegularPages }}<a href=\"{{ .RelPermalink }}\">{{ .Title }}</a>{{ end }}</body></html>\n",
    )?;
    std::fs::write(
        site.join("layouts/_default/single.html"),
        "<html><body><h1>{{ .Title }}</h1>{{ .Content }}</body></html>\n",
    )?;
    for i in 0..3 {
        write_post(&site, i, 0)?;
    }
    let rclone_dir = tmp.join("rclone");
    std::fs::create_dir_all(&rclone_dir)?;
    for i in 0..8 {
        std::fs::write(
            rclone_dir.join(format!("file-{i}.txt")),
            format!("file {i}\n").repeat(1000 * (i + 1)),
        )?;
    }
    let prometheus_config = tmp.join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            ports[2]
        ),
    )?;
    Ok(LargeSetup {
        hugo_site: site,
        rclone_dir,
        prometheus_config,
        ports,
    })
}

/// Where a large program runs from (see [`bench_agent`]).
fn large_exe(tmp: &Path, name: &str) -> PathBuf {
    tmp.join("bin").join(name)
}

fn write_post(site: &Path, i: usize, revision: u64) -> anyhow::Result<()> {
    std::fs::write(
        site.join(format!("content/posts/p{i}.md")),
        format!(
            "---\ntitle: \"Post {i}\"\n---\nRevision {revision}.\n\n{}\n",
            "Some text. ".repeat(200)
        ),
    )?;
    Ok(())
}

/// Starts the large programs on loopback, each logging to a file of its own in `tmp`, and
/// waits until they answer.
fn start_large(setup: LargeSetup, tmp: &Path, large: &mut Children) -> anyhow::Result<Servers> {
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(std::fs::File::create(tmp.join(format!("{name}.log")))?.into())
    };
    let [hugo_port, rclone_port, prometheus_port] = setup.ports;
    large.spawn(
        Command::new(large_exe(tmp, "hugo"))
            .args([
                "server",
                "--bind",
                "127.0.0.1",
                "--port",
                &hugo_port.to_string(),
            ])
            .current_dir(&setup.hugo_site)
            .stdin(Stdio::null())
            .stdout(log("hugo")?)
            .stderr(log("hugo.err")?),
    )?;
    large.spawn(
        Command::new(large_exe(tmp, "rclone"))
            .args(["serve", "http"])
            .arg(&setup.rclone_dir)
            .args(["--addr", &format!("127.0.0.1:{rclone_port}")])
            .env("RCLONE_CONFIG", tmp.join("rclone.conf"))
            .stdin(Stdio::null())
            .stdout(log("rclone")?)
            .stderr(log("rclone.err")?),
    )?;
    // Piped, `packer console` evaluates its input at EOF: it lives while we hold stdin.
    // No checkpoint (hashicorp's version check over the network).
    let packer = large.spawn(
        Command::new(large_exe(tmp, "packer"))
            .arg("console")
            .current_dir(tmp)
            .env("CHECKPOINT_DISABLE", "1")
            .env("PACKER_CACHE_DIR", tmp.join("packer_cache"))
            .stdin(Stdio::piped())
            .stdout(log("packer")?)
            .stderr(log("packer.err")?),
    )?;
    let packer_stdin = packer.stdin.take().context("packer's stdin")?;
    large.spawn(
        Command::new(large_exe(tmp, "prometheus"))
            .arg(format!(
                "--config.file={}",
                setup.prometheus_config.display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.join("prometheus-data").display()
            ))
            .stdin(Stdio::null())
            .stdout(log("prometheus")?)
            .stderr(log("prometheus.err")?),
    )?;
    let servers = Servers {
        hugo: format!("127.0.0.1:{hugo_port}"),
        hugo_site: setup.hugo_site,
        rclone: format!("127.0.0.1:{rclone_port}"),
        prometheus: format!("127.0.0.1:{prometheus_port}"),
        packer_stdin,
    };
    for (addr, path) in [
        (&servers.hugo, "/"),
        (&servers.rclone, "/"),
        (&servers.prometheus, "/-/ready"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = http_get(addr, path) {
            ensure_alive(large, tmp)?;
            ensure!(
                Instant::now() < deadline,
                "GET {addr}{path} did not answer within 60 s: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    ensure_alive(large, tmp)?;
    Ok(servers)
}

/// Fails, with the tail of its log, if a large program has exited.
fn ensure_alive(large: &mut Children, tmp: &Path) -> anyhow::Result<()> {
    for (child, program) in large.0.iter_mut().zip(&LARGE) {
        if let Some(status) = child.try_wait()? {
            let err = std::fs::read_to_string(tmp.join(format!("{}.err.log", program.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(10).collect();
            bail!(
                "{} exited during the benchmark ({status}):\n{}",
                program.path,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(())
}

/// Until `stop`: every 250 ms a page of hugo's and a file of rclone's, a query of
/// prometheus (which scrapes itself every second), every 2 s a post edited (hugo
/// rebuilds), every second a line to packer's console.
fn large_workload(mut servers: Servers, stop: &AtomicBool) -> (WorkloadCount, Servers) {
    let mut count = WorkloadCount::default();
    let mut tick: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        let requests = [
            (&servers.hugo, "/".to_string()),
            (&servers.hugo, format!("/posts/p{}/", tick % 3)),
            (&servers.rclone, "/".to_string()),
            (&servers.rclone, format!("/file-{}.txt", tick % 8)),
            (&servers.prometheus, "/api/v1/query?query=up".to_string()),
        ];
        for (addr, path) in requests {
            match http_get(addr, &path) {
                Ok(_) => count.ok += 1,
                Err(e) => {
                    count.failed += 1;
                    count
                        .first_error
                        .get_or_insert_with(|| format!("GET {addr}{path}: {e:#}"));
                }
            }
        }
        if tick % 8 == 7 {
            let _ = write_post(&servers.hugo_site, (tick / 8 % 3) as usize, tick);
        }
        if tick.is_multiple_of(4) {
            let _ = writeln!(servers.packer_stdin, "{{{{timestamp}}}}");
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    (count, servers)
}

/// Waits until the agent traces `want` processes; fails if it traces more.
fn wait_attached(listen: &str, want: usize, timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = http_get(listen, "/metrics")?;
        let attached =
            gauge(&metrics, "gomemtrace_agent_attached_processes").unwrap_or(0.0) as usize;
        if attached == want {
            return Ok(attached);
        }
        if Instant::now() > deadline {
            let skipped: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("gomemtrace_agent_skipped_processes_total"))
                .collect();
            bail!(
                "the agent traces {attached} processes, not {want}, after {timeout:?}; skipped: {skipped:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An unlabelled sample of `name`.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_ready(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if http_get(listen, "/readyz").is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the agent was not ready on {listen} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.0 GET on loopback; the body, or an error unless the status is 200.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    ensure!(
        head.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}
