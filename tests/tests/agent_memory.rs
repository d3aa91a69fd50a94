//! The agent stays small beside large binaries: two ~50 MB Go programs from Debian's
//! packages (prometheus and hugo, installed by scripts/setup.sh) traced at once must not
//! grow the agent's anonymous memory by their size. The oracle is the kernel's own
//! accounting of the agent (`RssAnon` in /proc/PID/status), not its gauges: an agent that
//! read each executable whole grew by ~130 MiB here.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gomemtrace_tests::{Proc, TempDir, agent::listen_address, gomemtrace_command, require_root};

/// What the two programs may add to the agent's anonymous memory: their analyses (function
/// tables, plans), not their bytes.
const GROWTH_LIMIT_KIB: u64 = 40 * 1024;

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

fn get(addr: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn metrics(addr: &str) -> Result<String> {
    get(addr, "/metrics")
}

fn attached(addr: &str) -> Result<f64> {
    let text = metrics(addr)?;
    text.lines()
        .find_map(|l| l.strip_prefix("gomemtrace_agent_attached_processes "))
        .and_then(|v| v.trim().parse().ok())
        .context("no gomemtrace_agent_attached_processes")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn large_executables_are_mapped_not_read_into_the_agent() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (prometheus, hugo) = (Path::new("/usr/bin/prometheus"), Path::new("/usr/bin/hugo"));
    for exe in [prometheus, hugo] {
        let size = std::fs::metadata(exe)
            .with_context(|| format!("{} (scripts/setup.sh installs it)", exe.display()))?
            .len();
        ensure!(size > 40 << 20, "{} is only {size} bytes", exe.display());
    }
    let tmp = TempDir::new("agent-memory")?;
    let mut cmd = gomemtrace_command()?;
    cmd.args(["agent", "--listen", "127.0.0.1:0"])
        .args(["--include-exe", "/usr/bin/prometheus"])
        .args(["--include-exe", "/usr/bin/hugo"]);
    let agent = Proc::spawn(cmd)?;
    let addr = listen_address(&agent)?;
    // Ready (probes loaded, first /proc scan done) and settled before the programs start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&addr, "/readyz")?.starts_with("HTTP/1.1 200")
        && !get(&addr, "/readyz")?.starts_with("HTTP/1.0 200")
    {
        ensure!(Instant::now() < deadline, "the agent did not get ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = status_kib(agent.pid(), "RssAnon:")?;

    std::fs::write(
        tmp.join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\nscrape_configs: []\n",
    )?;
    let mut prom = Command::new(prometheus);
    prom.arg(format!(
        "--config.file={}",
        tmp.join("prometheus.yml").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()?))
    .arg(format!(
        "--storage.tsdb.path={}",
        tmp.join("data").display()
    ));
    let prom = Proc::spawn(prom)?;
    let site = tmp.join("site");
    let status = Command::new(hugo)
        .args(["new", "site"])
        .arg(&site)
        .status()
        .context("hugo new site")?;
    ensure!(status.success(), "hugo new site: {status}");
    let mut server = Command::new(hugo);
    server
        .current_dir(&site)
        .args(["server", "--port", &free_port()?.to_string()]);
    let server = Proc::spawn(server)?;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if attached(&addr)? >= 2.0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not attach to both programs:\n{}",
                metrics(&addr)?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A harvest or two with both traced.
    std::thread::sleep(Duration::from_secs(3));
    let after = status_kib(agent.pid(), "RssAnon:")?;
    let growth = after.saturating_sub(before);
    println!(
        "agent RssAnon {before} KiB → {after} KiB with prometheus and hugo traced (+{growth} KiB)"
    );
    ensure!(
        growth <= GROWTH_LIMIT_KIB,
        "the agent's anonymous memory grew by {growth} KiB tracing two ~50 MB programs"
    );
    drop((prom, server));
    Ok(())
}
