//! `gomemtrace agent` end to end: the agent on a loopback port, a real Prometheus server
//! scraping it every second, Go fixtures of two releases allocating a known amount.
//! Checked: each fixture's allocated bytes and objects reach Prometheus under its exe
//! label within the sampler's statistical bound of the fixture's arithmetic, and its GC
//! cycles exactly as the runtime counts them (MemStats.NumGC); the series go
//! stale when the fixture exits; `go tool pprof` reads every pprof endpoint; `promtool
//! check metrics` accepts /metrics; after processes came and went, the agent holds no
//! more uprobe links, perf-event fds or map entries than before they came.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    Proc, TempDir, Variant,
    agent::{Agent, DEADLINE},
    copy_executable, fixture, get_text, go_tool, go_versions, gomemtrace_command, http_get,
    latest_go, poll, require_root, samples, write_executable,
};

/// The fixture's allocation: COUNT buffers of SIZE bytes at one site.
const COUNT: u64 = 100_000;
const SIZE: u64 = 4096;
/// Goroutines each fixture starts and parks, each recursing DEPTH levels of a frame of
/// 1000–1200 bytes: 40–48 KiB (+ 8 KiB of slack) needs 64 KiB, five doublings from 2 KiB.
const GOROUTINES: u64 = 200;
const DEPTH: u64 = 40;
const GROWTHS_EACH: u64 = 5;
/// The duty-cycled test's pprof window: the allocation and the estimate's catch-up.
const DUTY_WINDOW_S: u64 = 35;
/// Go's default `MemProfileRate`.
const RATE: f64 = 512.0 * 1024.0;

struct Prometheus {
    _proc: Proc,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Result<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let proc = Proc::spawn(cmd).context("start prometheus (scripts/setup.sh installs it)")?;
        let prometheus = Prometheus { _proc: proc, addr };
        poll("Prometheus ready", Duration::from_secs(30), || {
            Ok(
                http_get(&prometheus.addr, "/-/ready", Duration::from_secs(5))
                    .is_ok_and(|(s, _)| s == 200)
                    .then_some(()),
            )
        })?;
        Ok(prometheus)
    }

    /// An instant query: one value per series.
    fn query(&self, promql: &str) -> Result<Vec<f64>> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = get_text(&self.addr, &format!("/api/v1/query?query={encoded}"))?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(json["status"] == "success", "query {promql}: {body}");
        json["data"]["result"]
            .as_array()
            .context("result array")?
            .iter()
            .map(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("value in {r}"))
            })
            .collect()
    }
}

/// The fixture of Go `version`, copied under `dir` so that only this test's agent
/// matches it (other tests run the same cached binary).
fn own_fixture(dir: &Path, version: &str) -> Result<PathBuf> {
    let built = fixture("agentload", version, Variant::Normal)?;
    let copy = dir.join(format!("agentload-go{version}"));
    copy_executable(&built, &copy)?;
    Ok(copy)
}

fn spawn_fixture(exe: &Path, count: u64) -> Result<Proc> {
    let mut cmd = Command::new(exe);
    cmd.args(["-count", &count.to_string(), "-size", &SIZE.to_string()])
        .args(["-goroutines", &GOROUTINES.to_string()])
        .args(["-depth", &DEPTH.to_string()])
        // Every goroutine starts with 2 KiB (not the runtime's running average), so the
        // stack growths are predictable.
        .env("GODEBUG", "adaptivestackstart=0");
    let proc = Proc::spawn(cmd)?;
    proc.wait_stdout("ready", DEADLINE)?;
    Ok(proc)
}

/// Waits until the agent exposes series for `exe` (it attached).
fn wait_attached(agent: &Agent, exe: &Path) -> Result<()> {
    let exe = exe.display().to_string();
    poll(&format!("the agent to attach to {exe}"), DEADLINE, || {
        let text = agent.metrics()?;
        Ok(
            (!samples(&text, "gomemtrace_allocated_bytes_total", &[("exe", &exe)]).is_empty())
                .then_some(()),
        )
    })
}

/// `go tool pprof -raw` of a profile: fails unless pprof parses it. pprof's own
/// symbolization is off: the agent's profiles are symbolized.
fn pprof_raw(dir: &Path, name: &str, bytes: &[u8]) -> Result<String> {
    let path = dir.join(format!("{name}.pb.gz"));
    std::fs::write(&path, bytes)?;
    let path = path.display().to_string();
    go_tool(
        &latest_go(),
        &["tool", "pprof", "-raw", "-symbolize=none", &path],
    )
}

/// The agent measures remote NUMA accesses only where the host has two nodes or more;
/// with one (these machines) it says why and exposes no series of zeros.
fn check_numa_availability(agent: &Agent) -> Result<()> {
    let online = std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
    let nodes = online
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap_or(0) - a.parse::<u32>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum::<u32>()
        .max(1);
    let text = agent.metrics()?;
    let available = samples(&text, "gomemtrace_agent_numa_available", &[]);
    if nodes < 2 {
        ensure!(available == [0.0], "one node, numa_available {available:?}");
        agent.proc.wait_stderr(
            "NUMA: not available (1 NUMA node online",
            Duration::from_secs(1),
        )?;
        ensure!(
            !text.contains("gomemtrace_numa_hint_faults_total{"),
            "hint-fault series on a one-node host"
        );
    }
    Ok(())
}

/// The goroutine and stack metrics of a fixture whose goroutines are parked: the live
/// count against the runtime's own `runtime.NumGoroutine`, creations and stack growths
/// against the fixture's arithmetic.
fn check_goroutines_and_stacks(
    prometheus: &Prometheus,
    exe: &str,
    numgoroutine: f64,
) -> Result<String> {
    let one =
        |query: String| -> Result<Option<f64>> { Ok(prometheus.query(&query)?.first().copied()) };
    let user = format!("gomemtrace_goroutines{{exe=\"{exe}\",kind=\"user\"}}");
    poll(
        &format!("{exe}: gomemtrace_goroutines{{kind=user}} = NumGoroutine {numgoroutine}"),
        Duration::from_secs(20),
        || Ok(one(user.clone())?.filter(|&n| n == numgoroutine)),
    )
    .with_context(|| format!("last seen: {:?}", one(user.clone())))?;
    let runtime = one(format!(
        "gomemtrace_goroutines{{exe=\"{exe}\",kind=\"runtime\"}}"
    ))?;
    ensure!(
        runtime.is_some_and(|n| n >= 1.0),
        "{exe}: the runtime's own goroutines: {runtime:?}"
    );
    // Ids are handed to each P 16 at a time: the count is within 16 per P either way,
    // plus the runtime's own goroutines (GC workers) started after attach.
    let procs = std::thread::available_parallelism()?.get() as f64;
    let n = GOROUTINES as f64;
    let created = one(format!(
        "gomemtrace_goroutines_created_total{{exe=\"{exe}\"}}"
    ))?
    .unwrap_or(0.0);
    ensure!(
        created >= n - 16.0 * procs && created <= n + 17.0 * procs + 10.0,
        "{exe}: {created} goroutines created, expected {n} ± 16 per P"
    );
    // Each goroutine grows five times; a few growths of the fixture's other goroutines.
    let growths_query = format!("gomemtrace_stack_growths_total{{exe=\"{exe}\"}}");
    let low = (GOROUTINES * GROWTHS_EACH) as f64;
    let growths = poll(
        &format!("{exe}: at least {low} stack growths"),
        Duration::from_secs(15),
        || Ok(one(growths_query.clone())?.filter(|&g| g >= low)),
    )
    .with_context(|| format!("last seen: {:?}", one(growths_query.clone())))?;
    ensure!(
        growths <= low + 50.0,
        "{exe}: {growths} stack growths, expected {low} and a few"
    );
    // Each growth copies the used part of the old stack: all of it but at most the
    // overflowing frame and the guard area (< 2200 bytes).
    let full: u64 = (0..GROWTHS_EACH).map(|i| 2048u64 << i).sum();
    let (low_bytes, high_bytes) = (
        (GOROUTINES * (full - GROWTHS_EACH * 2200)) as f64,
        (GOROUTINES * full) as f64 + 50.0 * 65536.0,
    );
    let bytes = one(format!(
        "gomemtrace_stack_growth_copied_bytes_total{{exe=\"{exe}\"}}"
    ))?
    .unwrap_or(0.0);
    ensure!(
        (low_bytes..=high_bytes).contains(&bytes),
        "{exe}: {bytes} bytes copied by stack growths, expected {low_bytes}..{high_bytes}"
    );
    Ok(format!(
        "{exe}: {numgoroutine} goroutines (NumGoroutine), {} runtime's, {created} created, {growths} stack growths copying {bytes} bytes",
        runtime.unwrap_or(0.0)
    ))
}

/// Two releases: the oldest and the newest supported.
fn two_versions() -> Vec<String> {
    let all = go_versions();
    let mut two = vec![all[0].clone(), all[all.len() - 1].clone()];
    two.dedup();
    two
}

#[test]
fn allocations_reach_prometheus_series_go_stale_and_pprof_reads_the_endpoints() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let started = Instant::now();
    let step = |what: &str| println!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    let tmp = TempDir::new("agent")?;
    let exes: Vec<PathBuf> = two_versions()
        .iter()
        .map(|v| own_fixture(tmp.path(), v))
        .collect::<Result<_>>()?;
    let agent = Agent::start(&format!("{}/agentload-*", tmp.path().display()))?;
    step("agent ready");
    let prometheus = Prometheus::start(tmp.path(), &agent.addr)?;
    step("prometheus ready");
    let baseline_fds = agent.link_fds();
    ensure!(
        agent.holdings()? == (0.0, 0.0),
        "holdings before any fixture"
    );
    check_numa_availability(&agent)?;

    let mut fixtures = Vec::new();
    for exe in &exes {
        let proc = spawn_fixture(exe, COUNT)?;
        wait_attached(&agent, exe)?;
        fixtures.push(proc);
    }
    step("fixtures attached");
    // A window over the allocation of the first fixture.
    let window = {
        let addr = agent.addr.clone();
        let pid = fixtures[0].pid();
        std::thread::spawn(move || {
            http_get(
                &addr,
                &format!("/debug/pprof/allocs?pid={pid}&seconds=4"),
                Duration::from_secs(20),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for f in &fixtures {
        f.signal(libc::SIGUSR1)?;
    }
    // GC cycles between "ready" (before the agent attached) and "done", as the runtime
    // counts them.
    let mut cycles = Vec::new();
    let mut goroutines = Vec::new();
    for f in &fixtures {
        let numgc = |line: String| -> Result<f64> {
            line.rsplit("numgc=")
                .next()
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("numgc in {line}"))
        };
        let ready = numgc(f.wait_stdout("ready", Duration::from_secs(1))?)?;
        let done_line = f.wait_stdout("done", Duration::from_secs(20))?;
        let done = numgc(done_line.clone())?;
        cycles.push(done - ready);
        let g: f64 = done_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("goroutines="))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("goroutines in {done_line}"))?;
        goroutines.push(g);
    }

    // The estimate counts the sampler's samples n ~ Poisson(λ), λ = COUNT·p with
    // p = 1 − exp(−SIZE/RATE), and scales each by SIZE/p: relative σ = 1/√λ. 5σ either way;
    // above, room for a few samples of the runtime's own small allocations, each of which
    // stands for about RATE bytes.
    let p = 1.0 - (-(SIZE as f64) / RATE).exp();
    let lambda = COUNT as f64 * p;
    let sigma = 1.0 / lambda.sqrt();
    let expected_bytes = (COUNT * SIZE) as f64;
    let (low, high) = (
        expected_bytes * (1.0 - 5.0 * sigma),
        expected_bytes * (1.0 + 5.0 * sigma) + 8.0 * RATE,
    );
    let mut report = Vec::new();
    for (exe, cycles) in exes.iter().zip(&cycles) {
        let exe = exe.display().to_string();
        let gc = poll(
            &format!("Prometheus to see {exe}'s {cycles} GC cycles"),
            Duration::from_secs(15),
            || {
                let v =
                    prometheus.query(&format!("gomemtrace_gc_cycles_total{{exe=\"{exe}\"}}"))?;
                Ok(v.first().copied().filter(|c| c == cycles))
            },
        );
        gc.with_context(|| {
            format!(
                "expected {cycles}; last seen: {:?}",
                prometheus.query(&format!("gomemtrace_gc_cycles_total{{exe=\"{exe}\"}}"))
            )
        })?;
        let bytes = poll(
            &format!("Prometheus to see {exe}'s allocations"),
            Duration::from_secs(15),
            || {
                let v = prometheus.query(&format!(
                    "gomemtrace_allocated_bytes_total{{exe=\"{exe}\"}}"
                ))?;
                Ok(v.first().copied().filter(|&b| b >= low))
            },
        )
        .with_context(|| format!("bounds [{low:.0}, {high:.0}]"))?;
        ensure!(
            bytes <= high,
            "{exe}: {bytes} bytes allocated, above {high:.0} (expected {expected_bytes})"
        );
        let objects = prometheus.query(&format!(
            "gomemtrace_allocated_objects_total{{exe=\"{exe}\"}}"
        ))?;
        let objects = objects.first().copied().unwrap_or(0.0);
        ensure!(
            objects >= COUNT as f64 * (1.0 - 5.0 * sigma)
                && objects <= COUNT as f64 * (1.0 + 5.0 * sigma) + 8.0 * RATE / 16.0,
            "{exe}: {objects} objects, expected about {COUNT}"
        );
        report.push(format!(
            "{exe}: {bytes:.0} bytes (expected {expected_bytes}), {objects:.0} objects, {cycles} GC cycles"
        ));
    }
    for (exe, numgoroutine) in exes.iter().zip(&goroutines) {
        report.push(check_goroutines_and_stacks(
            &prometheus,
            &exe.display().to_string(),
            *numgoroutine,
        )?);
    }
    println!("{}", report.join("\n"));
    step("prometheus saw the allocations");

    // promtool accepts the exposition while series of live fixtures are in it.
    let text = agent.metrics()?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool (scripts/setup.sh installs it)")?;
    promtool
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    ensure!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // pprof: the window saw the fixture's allocation site.
    let (status, allocs) = window.join().expect("window thread")?;
    ensure!(
        status == 200,
        "allocs: {status} {}",
        String::from_utf8_lossy(&allocs)
    );
    let raw = pprof_raw(tmp.path(), "allocs", &allocs)?;
    ensure!(
        raw.contains("main.allocBuffers"),
        "allocs profile lacks main.allocBuffers:\n{raw}"
    );
    let pid = fixtures[1].pid();
    for (endpoint, seconds) in [("heap", 1), ("goroutines", 1), ("stackgrowth", 1)] {
        let (status, body) = http_get(
            &agent.addr,
            &format!("/debug/pprof/{endpoint}?pid={pid}&seconds={seconds}"),
            Duration::from_secs(30),
        )?;
        ensure!(
            status == 200,
            "{endpoint}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        pprof_raw(tmp.path(), endpoint, &body)?;
    }
    let (status, _) = http_get(
        &agent.addr,
        "/debug/pprof/allocs?pid=1&seconds=1",
        Duration::from_secs(5),
    )?;
    ensure!(status == 404, "a pid that is not traced: {status}");

    step("pprof endpoints read");
    // Exit: the series go stale in Prometheus, the agent holds what it held before.
    for f in &fixtures {
        f.signal(libc::SIGUSR1)?;
    }
    for f in &mut fixtures {
        f.wait(DEADLINE)?;
    }
    for exe in &exes {
        let exe = exe.display().to_string();
        poll(
            &format!("{exe}'s series to go stale"),
            Duration::from_secs(15),
            || {
                Ok(prometheus
                    .query(&format!(
                        "gomemtrace_allocated_bytes_total{{exe=\"{exe}\"}}"
                    ))?
                    .is_empty()
                    .then_some(()))
            },
        )?;
    }
    step("series stale");
    poll("the agent to let go", DEADLINE, || {
        Ok((agent.holdings()? == (0.0, 0.0) && agent.link_fds() == baseline_fds).then_some(()))
    })?;
    Ok(())
}

#[test]
fn nothing_is_left_behind_after_processes_come_and_go() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-leak")?;
    let exe = own_fixture(tmp.path(), &latest_go())?;
    let agent = Agent::start(&format!("{}/agentload-*", tmp.path().display()))?;
    let baseline_fds = agent.link_fds();
    let baseline = agent.holdings()?;
    const ROUNDS: usize = 6;
    let mut attached_counts = BTreeMap::new();
    for round in 0..ROUNDS {
        // Two at a time: attachments of different processes of one executable coexist.
        let mut procs = vec![spawn_fixture(&exe, 2000)?, spawn_fixture(&exe, 2000)?];
        poll("both attached", DEADLINE, || {
            let text = agent.metrics()?;
            let n = samples(&text, "gomemtrace_agent_attached_processes", &[]);
            Ok((n.first() == Some(&2.0)).then_some(()))
        })?;
        // The link gauge follows at the agent's next harvest (every second).
        let links = poll("the link gauge", Duration::from_secs(5), || {
            let (links, _) = agent.holdings()?;
            Ok((links > baseline.0).then_some(links))
        })?;
        attached_counts.insert(round, (links, agent.link_fds()));
        for p in &procs {
            p.signal(libc::SIGUSR1)?;
        }
        for p in &procs {
            p.wait_stdout("done", DEADLINE)?;
            p.signal(libc::SIGUSR1)?;
        }
        for p in &mut procs {
            p.wait(DEADLINE)?;
        }
    }
    // While attached, each round held links and fds beyond the baseline.
    for (round, (links, fds)) in &attached_counts {
        ensure!(
            *links > baseline.0 && *fds > baseline_fds,
            "round {round}: {links} links, {fds} perf fds while two processes were traced"
        );
    }
    poll(
        "links, fds and map entries back to the baseline",
        DEADLINE,
        || Ok((agent.holdings()? == baseline && agent.link_fds() == baseline_fds).then_some(())),
    )
    .with_context(|| {
        format!(
            "baseline {baseline:?} / {baseline_fds} fds; now {:?} / {} fds",
            agent.holdings().ok(),
            agent.link_fds()
        )
    })?;
    println!(
        "{ROUNDS} rounds of 2 processes: {attached_counts:?} while attached; baseline {baseline:?}, {baseline_fds} perf fds"
    );
    Ok(())
}

#[test]
fn duty_cycled_estimates_where_the_sampler_is_compiled_out() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-duty")?;
    let built = fixture("agentduty", &latest_go(), Variant::Normal)?;
    let exe = tmp.join("agentduty");
    copy_executable(&built, &exe)?;
    let agent = Agent::start(&format!("{}/agentduty", tmp.path().display()))?;
    const DUTY_COUNT: u64 = 8000;
    const DUTY_SIZE: u64 = 512;
    let mut cmd = Command::new(&exe);
    cmd.args([
        "-count",
        &DUTY_COUNT.to_string(),
        "-size",
        &DUTY_SIZE.to_string(),
    ]);
    let mut proc = Proc::spawn(cmd)?;
    proc.wait_stdout("ready", DEADLINE)?;
    let exe_label = exe.display().to_string();
    poll("the agent to attach in duty mode", DEADLINE, || {
        let text = agent.metrics()?;
        Ok((samples(
            &text,
            "gomemtrace_processes",
            &[("exe", &exe_label), ("mode", "duty")],
        ) == [1.0])
        .then_some(()))
    })?;
    // A pprof window over the whole allocation and the estimate's catch-up.
    let window = {
        let addr = agent.addr.clone();
        let pid = proc.pid();
        std::thread::spawn(move || {
            http_get(
                &addr,
                &format!("/debug/pprof/allocs?pid={pid}&seconds={DUTY_WINDOW_S}"),
                Duration::from_secs(DUTY_WINDOW_S + 20),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    proc.signal(libc::SIGUSR1)?;
    proc.wait_stdout("done", Duration::from_secs(60))?;
    let allocated_in = started.elapsed();
    // The counters are the runtime's own (source="runtime"), read at each harvest: the
    // fixture's 8000 buffers, plus the few small objects its runtime and fmt allocate.
    let exact = [("exe", exe_label.as_str()), ("source", "runtime")];
    let expected = DUTY_COUNT as f64;
    let expected_bytes = expected * DUTY_SIZE as f64;
    let (objects, bytes) = poll(
        "the counters to reach the fixture's allocations",
        DEADLINE,
        || {
            let text = agent.metrics()?;
            let objects = samples(&text, "gomemtrace_allocated_objects_total", &exact);
            let bytes = samples(&text, "gomemtrace_allocated_bytes_total", &exact);
            Ok(match (objects.first(), bytes.first()) {
                (Some(&o), Some(&b)) if o >= expected && b >= expected_bytes => Some((o, b)),
                _ => None,
            })
        },
    )
    .with_context(|| {
        format!(
            "{:?}",
            agent.metrics().map(|t| samples(
                &t,
                "gomemtrace_allocated_objects_total",
                &[("exe", &exe_label)]
            ))
        )
    })?;
    ensure!(
        objects <= expected + 64.0 && bytes <= expected_bytes + 65536.0,
        "{objects} objects, {bytes} bytes; the fixture allocated {DUTY_COUNT} × {DUTY_SIZE} B"
    );
    println!(
        "duty: counters {objects:.0} objects, {bytes:.0} bytes for {DUTY_COUNT} × {DUTY_SIZE} B"
    );
    // The duty-cycled estimate remains in pprof: each window's counts scaled to the gap
    // before it. Half to one and a half times the fixture's arithmetic (the estimate
    // misses or doubles about one gap at each end), unless the allocation left the
    // estimate less than 15 s of the window to catch up (it lags by up to one gap).
    let caught_up = allocated_in + Duration::from_secs(15);
    let (status, body) = window.join().expect("window thread")?;
    ensure!(
        status == 200,
        "allocs: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let raw = pprof_raw(tmp.path(), "duty-allocs", &body)?;
    let space = alloc_space_total(&raw)?;
    if caught_up < Duration::from_secs(DUTY_WINDOW_S - 2) {
        ensure!(
            space >= 0.5 * expected * DUTY_SIZE as f64
                && space <= 1.5 * expected * DUTY_SIZE as f64,
            "duty pprof alloc_space {space:.0}, fixture allocated {:.0}:\n{raw}",
            expected * DUTY_SIZE as f64
        );
        println!("duty pprof: {space:.0} bytes");
    } else {
        println!("duty pprof not checked: the allocation took {allocated_in:?}");
    }
    proc.signal(libc::SIGUSR1)?;
    proc.wait(DEADLINE)?;
    poll("the agent to let go", DEADLINE, || {
        Ok((agent.holdings()? == (0.0, 0.0)).then_some(()))
    })?;
    Ok(())
}

#[test]
fn max_processes_caps_and_counts() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-cap")?;
    let exe = own_fixture(tmp.path(), &latest_go())?;
    let agent = Agent::start_with(
        &format!("{}/agentload-*", tmp.path().display()),
        &["--max-processes", "1"],
    )?;
    let first = spawn_fixture(&exe, 10)?;
    wait_attached(&agent, &exe)?;
    let second = spawn_fixture(&exe, 10)?;
    let skipped = poll("the cap to be counted", DEADLINE, || {
        let text = agent.metrics()?;
        let n = samples(
            &text,
            "gomemtrace_agent_skipped_processes_total",
            &[("reason", "max_processes")],
        );
        Ok((n == [1.0]).then_some(text))
    })?;
    let attached = samples(&skipped, "gomemtrace_agent_attached_processes", &[]);
    ensure!(
        attached == [1.0],
        "attached {attached:?} with --max-processes 1"
    );
    drop((first, second));
    Ok(())
}

/// A Go program the agent will not trace is counted under the real reason, not a catch-all:
/// the fixture with every `go1.N.` version string rewritten as `go1.16.` (same length; the
/// program runs as before) says it is a Go release before the register ABI, which
/// gomemtrace refuses (`analysis::OLDEST_GO`). The reason is logged once, with the pid.
#[test]
fn a_go_program_not_traced_is_counted_under_its_reason() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-reason")?;
    let version = latest_go();
    let mut bytes = std::fs::read(fixture("agentload", &version, Variant::Normal)?)?;
    let (from, to) = (format!("go{version}."), b"go1.16.");
    ensure!(from.len() == to.len(), "go{version}: not a two-digit minor");
    let mut rewritten = 0;
    for at in 0..bytes.len().saturating_sub(from.len()) {
        if &bytes[at..at + from.len()] == from.as_bytes() {
            bytes[at..at + from.len()].copy_from_slice(to);
            rewritten += 1;
        }
    }
    ensure!(rewritten > 0, "no {from} in the fixture");
    let exe = tmp.join("agentload-go1.16");
    write_executable(&exe, &bytes)?;
    let agent = Agent::start(&format!("{}/agentload-*", tmp.path().display()))?;
    let fixture = spawn_fixture(&exe, 10)?;
    let skipped = "gomemtrace_agent_skipped_processes_total";
    let text = poll("the refusal to be counted", DEADLINE, || {
        let text = agent.metrics()?;
        Ok(
            (samples(&text, skipped, &[("reason", "unsupported_go_version")]) == [1.0])
                .then_some(text),
        )
    })?;
    let counted: Vec<&str> = text.lines().filter(|l| l.starts_with(skipped)).collect();
    ensure!(
        counted.len() == 1,
        "other reasons counted beside unsupported_go_version: {counted:?}"
    );
    let attached = samples(&text, "gomemtrace_agent_attached_processes", &[]);
    ensure!(attached == [0.0], "attached {attached:?}");
    let logged = format!(
        "gomemtrace: agent: pid {} ({}): not traced: ",
        fixture.pid(),
        exe.display()
    );
    let line = agent.proc.wait_stderr(&logged, DEADLINE)?;
    ensure!(
        line.contains("not traced: unsupported Go version go1.16."),
        "{line}"
    );
    // A few harvests later, still once.
    std::thread::sleep(Duration::from_secs(3));
    let lines = agent.proc.stderr_text();
    let times = lines.lines().filter(|l| l.contains(&logged)).count();
    ensure!(times == 1, "logged {times} times:\n{lines}");
    drop(fixture);
    Ok(())
}

/// The `alloc_space` total of a profile, from `go tool pprof -raw`'s sample table.
fn alloc_space_total(raw: &str) -> Result<f64> {
    let mut lines = raw
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(1);
    let header = lines.next().context("no sample header")?;
    let column = header
        .split_whitespace()
        .position(|c| c.starts_with("alloc_space"))
        .with_context(|| format!("no alloc_space in {header}"))?;
    let mut total = 0.0;
    for line in lines {
        let Some((values, _locations)) = line.split_once(':') else {
            break;
        };
        let values: Vec<&str> = values.split_whitespace().collect();
        let Some(value) = values.get(column).and_then(|v| v.parse::<f64>().ok()) else {
            break;
        };
        total += value;
    }
    Ok(total)
}

/// `--pyroscope-url`: a stand-in for Pyroscope's ingest API, written with Go's own HTTP and
/// multipart parsers, receives each interval's profile; `go tool pprof` reads every one,
/// and their allocations add up to the fixture's arithmetic.
#[test]
fn each_interval_of_allocations_is_pushed_to_pyroscope() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-pyroscope")?;
    let version = latest_go();
    let exe = own_fixture(tmp.path(), &version)?;
    let mut stub_cmd = Command::new(fixture("pyroscopestub", &version, Variant::Normal)?);
    stub_cmd.arg("-dir").arg(tmp.path());
    let stub = Proc::spawn(stub_cmd)?;
    let addr = stub
        .wait_stdout("listening ", DEADLINE)?
        .trim_start_matches("listening ")
        .trim()
        .to_string();
    const INTERVAL_S: u64 = 2;
    let agent = Agent::start_with(
        &format!("{}/agentload-*", tmp.path().display()),
        &[
            "--pyroscope-url",
            &format!("http://{addr}"),
            "--pyroscope-interval",
            &format!("{INTERVAL_S}s"),
        ],
    )?;
    let proc = spawn_fixture(&exe, COUNT)?;
    wait_attached(&agent, &exe)?;
    proc.signal(libc::SIGUSR1)?;
    proc.wait_stdout("done", Duration::from_secs(20))?;
    // Two more intervals: the last allocations are pushed.
    std::thread::sleep(Duration::from_secs(2 * INTERVAL_S + 1));
    let exe_label = format!("exe={}", exe.display());
    let mut total = 0.0;
    let mut pushes = 0;
    let mut with_site = 0;
    for line in stub.stdout_text().lines() {
        ensure!(
            !line.starts_with("rejected"),
            "the stub rejected a push: {line}"
        );
        let Some(fields) = line.strip_prefix("ingest ") else {
            continue;
        };
        let field = |name: &str| {
            fields
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
        };
        if !field("name").contains(&exe_label) {
            continue;
        }
        ensure!(
            field("format") == "pprof" && field("config") == "OK",
            "push: {line}"
        );
        let (from, until): (u64, u64) = (field("from").parse()?, field("until").parse()?);
        ensure!(until - from == INTERVAL_S, "push window: {line}");
        let raw = pprof_raw(
            tmp.path(),
            &format!("push-{pushes}"),
            &std::fs::read(field("file"))?,
        )?;
        total += alloc_space_total(&raw)?;
        with_site += usize::from(raw.contains("main.allocBuffers"));
        pushes += 1;
    }
    ensure!(
        pushes >= 2 && with_site >= 1,
        "{pushes} pushes for {exe_label}, {with_site} with main.allocBuffers:\n{}",
        stub.stdout_text()
    );
    // The same bounds as the Prometheus counter's: the pushes partition the allocations.
    let p = 1.0 - (-(SIZE as f64) / RATE).exp();
    let sigma = 1.0 / (COUNT as f64 * p).sqrt();
    let expected = (COUNT * SIZE) as f64;
    let (low, high) = (
        expected * (1.0 - 5.0 * sigma),
        expected * (1.0 + 5.0 * sigma) + 8.0 * RATE,
    );
    ensure!(
        (low..=high).contains(&total),
        "pushed alloc_space {total:.0} over {pushes} pushes, expected {expected} ({low:.0}..{high:.0})"
    );
    let metrics = agent.metrics()?;
    let ok = samples(
        &metrics,
        "gomemtrace_agent_pyroscope_pushes_total",
        &[("result", "ok")],
    );
    ensure!(
        ok.first().is_some_and(|&n| n >= pushes as f64),
        "push counter {ok:?}, {pushes} pushes seen"
    );
    println!("{pushes} pushes, {total:.0} bytes (expected {expected})");
    proc.signal(libc::SIGUSR1)?;
    Ok(())
}

/// `key=N` of a fixture line.
fn line_field(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{key} in {line}"))
}

/// Go releases and builds of the runtime-counter test: four releases with symbols, the
/// newest stripped.
fn counter_builds() -> Vec<(String, Variant)> {
    let all = go_versions();
    let mut builds: Vec<(String, Variant)> = ["1.19", "1.22", "1.25", "1.27"]
        .iter()
        .filter(|v| all.iter().any(|a| a == *v))
        .map(|v| (v.to_string(), Variant::Normal))
        .collect();
    builds.push((latest_go(), Variant::Stripped));
    builds
}

#[test]
fn allocation_counters_are_the_runtimes_own_where_the_sampler_is_compiled_out() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-counters")?;
    let agent = Agent::start(&format!("{}/allocmix-*", tmp.path().display()))?;
    let mut fixtures = Vec::new();
    for (version, variant) in counter_builds() {
        let built = fixture("allocmix", &version, variant)?;
        let exe = tmp.join(&format!("allocmix-go{version}-{}", variant.name()));
        copy_executable(&built, &exe)?;
        let mut cmd = Command::new(&exe);
        cmd.args(["-wait", "-mb", "100", "-goroutines", "4"]);
        let proc = Proc::spawn(cmd)?;
        let ready = proc.wait_stdout("ready", DEADLINE)?;
        fixtures.push((version, variant, exe.display().to_string(), proc, ready));
    }
    for (_, _, exe, _, _) in &fixtures {
        poll(
            &format!("{exe}: counters from the runtime"),
            Duration::from_secs(15),
            || {
                let text = agent.metrics()?;
                Ok((!samples(
                    &text,
                    "gomemtrace_allocated_bytes_total",
                    &[("exe", exe), ("source", "runtime")],
                )
                .is_empty())
                .then_some(()))
            },
        )
        .with_context(|| format!("{:?}", agent.metrics()))?;
    }
    for (.., proc, _) in &fixtures {
        proc.signal(libc::SIGUSR1)?;
    }
    let mut report = Vec::new();
    for (version, variant, exe, proc, ready) in &fixtures {
        let done = proc.wait_stdout("done", Duration::from_secs(60))?;
        // The oracle: the fixture's own runtime.ReadMemStats, from before the agent
        // attached to after the allocation.
        let delta =
            |key: &str| -> Result<f64> { Ok(line_field(&done, key)? - line_field(ready, key)?) };
        let freed = |line: &str| -> Result<f64> {
            Ok(line_field(line, "total_alloc")? - line_field(line, "heap_alloc")?)
        };
        let expected = [
            ("gomemtrace_allocated_bytes_total", delta("total_alloc")?),
            ("gomemtrace_allocated_objects_total", delta("mallocs")?),
            (
                "gomemtrace_freed_bytes_total",
                freed(&done)? - freed(ready)?,
            ),
            ("gomemtrace_freed_objects_total", delta("frees")?),
            (
                "gomemtrace_heap_objects",
                line_field(&done, "heap_objects")?,
            ),
            (
                "gomemtrace_heap_objects_bytes",
                line_field(&done, "heap_alloc")?,
            ),
        ];
        ensure!(
            expected[0].1 > 300e6,
            "{exe}: the fixture allocated only {} bytes",
            expected[0].1
        );
        let within = |ours: f64, theirs: f64| (ours - theirs).abs() <= 0.01 * theirs.max(1.0);
        // The harvest reads the counters once a second.
        let seen = poll(
            &format!("{exe}: the agent's counters at the fixture's MemStats"),
            DEADLINE,
            || {
                let text = agent.metrics()?;
                let seen: Vec<Option<f64>> = expected
                    .iter()
                    .map(|(name, _)| samples(&text, name, &[("exe", exe)]).first().copied())
                    .collect();
                Ok(expected
                    .iter()
                    .zip(&seen)
                    .all(|((_, want), got)| got.is_some_and(|g| within(g, *want)))
                    .then_some(seen))
            },
        )
        .with_context(|| {
            format!(
                "{exe}: expected {expected:?}; agent: {:?}",
                agent.metrics().map(|t| expected
                    .iter()
                    .map(|(name, _)| samples(&t, name, &[("exe", exe)]))
                    .collect::<Vec<_>>())
            )
        })?;
        for ((name, want), got) in expected.iter().zip(&seen) {
            let got = got.unwrap_or(0.0);
            report.push(format!(
                "go{version} {}: {name} agent {got:.0}, MemStats {want:.0} ({:+.4}%)",
                variant.name(),
                100.0 * (got - want) / want.max(1.0)
            ));
        }
    }
    println!("{}", report.join("\n"));
    for (.., proc, _) in &mut fixtures {
        proc.signal(libc::SIGUSR1)?;
        proc.wait(DEADLINE)?;
    }
    Ok(())
}

/// The ids of the BPF maps `pid` holds a descriptor of, from the kernel's fd table.
fn bpf_map_ids(pid: u32) -> Result<std::collections::BTreeSet<u64>> {
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Every capability of the agent (allocations, GC, stack growth, process events, NUMA)
/// runs in one eBPF object loaded once, however many processes it traces: the kernel's
/// own list of the maps the agent holds (its fd table, named by bpftool) has each map of
/// the object once. Each load of the object creates all its maps, so a second load would
/// show every name twice.
#[test]
fn the_ebpf_object_is_loaded_once_for_every_process_and_capability() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-once")?;
    let versions = two_versions();
    let exes = versions
        .iter()
        .map(|v| own_fixture(tmp.path(), v))
        .collect::<Result<Vec<_>>>()?;
    let agent = Agent::start(&format!("{}/agentload-*", tmp.path().display()))?;
    let mut targets = Vec::new();
    for exe in &exes {
        targets.push(spawn_fixture(exe, 200)?);
        wait_attached(&agent, exe)?;
    }
    let text = agent.metrics()?;
    let attached = samples(&text, "gomemtrace_agent_attached_processes", &[]);
    ensure!(
        attached == [exes.len() as f64],
        "attached {attached:?}, want {}",
        exes.len()
    );
    let loads = samples(&text, "gomemtrace_agent_bpf_object_loads", &[]);
    ensure!(loads == [1.0], "object loads {loads:?}");

    let held = bpf_map_ids(agent.proc.pid())?;
    let listing = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .stdin(Stdio::null())
        .output()
        .context("run bpftool (scripts/setup.sh installs it)")?;
    ensure!(
        listing.status.success(),
        "bpftool map show: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let maps: Vec<serde_json::Value> = serde_json::from_slice(&listing.stdout)?;
    let mut names: BTreeMap<String, usize> = Default::default();
    for map in &maps {
        if map["id"].as_u64().is_some_and(|id| held.contains(&id)) {
            let name = map["name"].as_str().unwrap_or("").to_string();
            *names.entry(name).or_default() += 1;
        }
    }
    let twice: Vec<_> = names.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        twice.is_empty(),
        "maps the agent holds more than once (the object was loaded again): {twice:?}"
    );
    // The NUMA ring is closed again on a machine that cannot measure remote accesses.
    for capability in ["ALLOCS", "GC_EVENTS", "STACK_EVENTS", "PROC_EVENTS"] {
        ensure!(
            names.contains_key(capability),
            "the agent holds no {capability} map: {names:?}"
        );
    }
    drop(targets);
    Ok(())
}

/// Two tracers on one process, both right: the agent (its default mode) and a CLI run in
/// exact mode trace the same program at once. The CLI's report has the fixture's
/// arithmetic at its site to the object and the byte; the agent's allocation counter (the
/// runtime's own) moves by at least as much, and neither drops an event.
#[test]
fn the_agent_and_a_cli_run_trace_one_process_both_right() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const TWO_COUNT: u64 = 5_000;
    let tmp = TempDir::new("agent-two-tracers")?;
    let exe = own_fixture(tmp.path(), &latest_go())?;
    let agent = Agent::start(&format!("{}/agentload-*", tmp.path().display()))?;
    let mut target = spawn_fixture(&exe, TWO_COUNT)?;
    wait_attached(&agent, &exe)?;
    let exe_label = exe.display().to_string();
    let runtime_bytes = |text: &str| {
        samples(
            text,
            "gomemtrace_allocated_bytes_total",
            &[("exe", exe_label.as_str()), ("source", "runtime")],
        )
        .first()
        .copied()
    };
    let before = poll("the agent's runtime counter", DEADLINE, || {
        Ok(runtime_bytes(&agent.metrics()?))
    })?;

    let report = tmp.join("cli.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--format", "json", "-o"])
        .arg(&report)
        .args(["-p", &target.pid().to_string()]);
    let mut cli = Proc::spawn(cmd)?;
    cli.wait_stderr("attached", Duration::from_secs(30))?;
    target.signal(libc::SIGUSR1)?;
    target.wait_stdout("done", Duration::from_secs(60))?;
    // Ctrl-C ends the CLI run; it writes its report.
    cli.signal(libc::SIGINT)?;
    let finished = cli.wait(Duration::from_secs(30))?;
    ensure!(finished.code() == 0, "CLI run: {}", finished.stderr);

    let r = gomemtrace_tests::Report::read(&report)?;
    // `make([]byte, n)`: the runtime's allocations under it (span bookkeeping) have other
    // types or none.
    let site = r
        .by_site_and_type()
        .get(&("main.allocBuffers".to_string(), Some("uint8".to_string())))
        .copied()
        .with_context(|| format!("no uint8 at main.allocBuffers: {:?}", r.by_site_and_type()))?;
    ensure!(
        site.objects == TWO_COUNT && site.bytes == TWO_COUNT * SIZE,
        "CLI exact: main.allocBuffers {} objects, {} bytes; the fixture allocated {TWO_COUNT} × {SIZE} B",
        site.objects,
        site.bytes
    );
    ensure!(r.drops.values().all(|&n| n == 0), "CLI drops {:?}", r.drops);
    let after = poll(
        "the agent's counter to move by the fixture's allocation",
        DEADLINE,
        || {
            let now = runtime_bytes(&agent.metrics()?);
            Ok(now.filter(|&b| b >= before + (TWO_COUNT * SIZE) as f64))
        },
    )?;
    let text = agent.metrics()?;
    let drops: f64 = samples(&text, "gomemtrace_drops_total", &[]).iter().sum();
    ensure!(drops == 0.0, "agent drops {drops}:\n{text}");
    println!(
        "two tracers: CLI {} objects / {} bytes exact; agent +{:.0} bytes",
        site.objects,
        site.bytes,
        after - before
    );
    target.signal(libc::SIGUSR1)?;
    target.wait(DEADLINE)?;
    Ok(())
}
