//! The agent's footprint: `gomemtrace agent` in its default mode covering a number of busy
//! Go processes (the benchmark workloads), its CPU (schedstat of its threads over a steady
//! window) and RSS, against the goals of ≤ 1% of a core and ≤ 64 MiB.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::bench::{Build, build_benchload, process_cpu_ns};

pub struct AgentBenchArgs {
    pub go: String,
    pub processes: usize,
    pub seconds: f64,
    pub port: u16,
}

/// Kills the children on every exit path.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn bench_agent(args: &AgentBenchArgs, gomemtrace: &Path) -> anyhow::Result<()> {
    ensure!(args.processes > 0, "--processes must be at least 1");
    let builds = [
        build_benchload(&args.go, Build::NoSampler)?,
        build_benchload(&args.go, Build::Sampler)?,
    ];
    let listen = format!("127.0.0.1:{}", args.port);
    let mut agent = Children(vec![
        Command::new(gomemtrace)
            .args(["agent", "--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start gomemtrace agent")?,
    ]);
    let agent_pid = agent.0[0].id();
    wait_ready(&listen, Duration::from_secs(60))?;
    // Workloads run longer than the measurement: warm-up, window, margin.
    let run_for = format!("{}", args.seconds + 10.0);
    let workloads = ["json", "pool", "alloc"];
    let mut targets = Children(Vec::new());
    for i in 0..args.processes {
        targets.0.push(
            Command::new(&builds[i % 2])
                .args([workloads[i % workloads.len()], run_for.as_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("start a workload")?,
        );
    }
    // Let the agent discover and attach to every workload before the window opens.
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
    let kib = |field: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let core = (cpu1 - cpu0) as f64 / 1e9 / t1.duration_since(t0).as_secs_f64();
    drop(targets);
    if let Some(status) = agent.0[0].try_wait()? {
        bail!("the agent exited during the benchmark: {status}");
    }
    println!(
        "| busy Go processes | agent CPU, % of a core | agent RSS | agent peak RSS |\n|---|---|---|---|"
    );
    println!(
        "| {} | {:.2}% | {:.1} MiB | {:.1} MiB |",
        args.processes,
        100.0 * core,
        kib("VmRSS:").unwrap_or(f64::NAN) / 1024.0,
        kib("VmHWM:").unwrap_or(f64::NAN) / 1024.0
    );
    println!(
        "\nGoals: ≤ 1% of a core: {}; ≤ 64 MiB RSS: {}",
        if core <= 0.01 { "met" } else { "NOT met" },
        if kib("VmHWM:").is_some_and(|k| k <= 64.0 * 1024.0) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("\nThe agent's own series while measuring:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("gomemtrace_agent") || l.starts_with("gomemtrace_attached"))
    {
        println!("    {line}");
    }
    println!(
        "\n{}-s window after 4 s of warm-up, workloads alternate json/pool/alloc and sampler compiled out/linked (auto picks duty/runtime), Go {}.",
        args.seconds, args.go
    );
    Ok(())
}

fn wait_ready(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(body) = http_get(listen, "/readyz") {
            let _ = body;
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
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
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
