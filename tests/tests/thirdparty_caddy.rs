//! A third-party web server traced by pid: Debian's caddy 2.6.2 (Go 1.19.8, stripped, cgo;
//! `scripts/setup.sh` installs it) serving a generated tree of files on loopback to four
//! client threads (a new connection per request), traced by `gomemtrace -p PID`:
//!
//! - exact mode until caddy has answered `TRACED_REQUESTS` (or for at most 10 s), then
//!   Ctrl-C: no event lost or kept without its stack, most bytes under caddy's own frames,
//!   and the count within 2% of what caddy's runtime itself counted over the trace (its
//!   allocation counters, read from the process at attach and at the end);
//! - the default mode for 3 s: what `auto` picks for this binary, no drop, and the sites
//!   on top outside the runtime.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    Proc, Report, TempDir, exact_report::check_exact_report, find_on_path, gomemtrace_command,
    http_get, poll, require_root,
};

const CLIENTS: usize = 4;
const FILES: usize = 200;
/// Requests answered while traced in exact mode: a goroutine per connection, so tens of
/// thousands of keys (goroutine × stack × type).
const TRACED_REQUESTS: u64 = 3000;
const LONGEST_TRACE: Duration = Duration::from_secs(10);
const OWN_PACKAGES: &str = "github.com/caddyserver/caddy/";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// caddy serving `FILES` files of 1–8 KiB, and clients fetching them until dropped.
struct Served {
    server: Proc,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Served {
    fn start(caddy: &std::path::Path, tmp: &TempDir) -> Result<Served> {
        let root = tmp.join("site");
        std::fs::create_dir_all(&root)?;
        for i in 0..FILES {
            let body: String = (0..(1 + i % 8) * 1024)
                .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                .collect();
            std::fs::write(root.join(format!("f{i}.txt")), body)?;
        }
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(caddy);
        cmd.args(["file-server", "--listen", &addr, "--root"])
            .arg(&root)
            // No admin endpoint of its own on the default port (another test may hold it).
            .env("HOME", tmp.join("home"))
            .env("XDG_DATA_HOME", tmp.join("data"))
            .env("XDG_CONFIG_HOME", tmp.join("config"));
        let server = Proc::spawn(cmd)?;
        poll("caddy serving", Duration::from_secs(30), || {
            Ok(http_get(&addr, "/f0.txt", Duration::from_secs(2))
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(|_| ()))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|c| {
                let (stop, requests, addr) = (stop.clone(), requests.clone(), addr.clone());
                std::thread::spawn(move || -> Result<()> {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let file = i % FILES;
                        let (status, body) =
                            http_get(&addr, &format!("/f{file}.txt"), Duration::from_secs(10))?;
                        ensure!(status == 200, "GET /f{file}.txt: {status}");
                        ensure!(
                            body.len() == (1 + file % 8) * 1024,
                            "GET /f{file}.txt: {} bytes",
                            body.len()
                        );
                        requests.fetch_add(1, Ordering::Relaxed);
                        i += CLIENTS;
                    }
                    Ok(())
                })
            })
            .collect();
        Ok(Served {
            server,
            stop,
            requests,
            clients,
        })
    }

    /// Stops the clients (any failure of theirs is the result) and the server.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        let _ = self.server.signal(libc::SIGTERM);
        let _ = self.server.wait(Duration::from_secs(20));
        Ok(self.requests.load(Ordering::Relaxed))
    }
}

#[test]
fn caddy_serving_files_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(caddy) = find_on_path("caddy") else {
        println!("SKIP: caddy is not installed (scripts/setup.sh installs Debian's caddy)");
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-exact")?;
    let served = Served::start(&caddy, &tmp)?;
    std::thread::sleep(Duration::from_secs(1));
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--totals", "probes", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(served.server.pid().to_string());
    let requests = served.requests.clone();
    let traced = (|| -> Result<_> {
        let mut tracer = Proc::spawn(cmd)?;
        tracer.wait_stderr("attached", Duration::from_secs(30))?;
        let (at_attach, attached) = (requests.load(Ordering::Relaxed), Instant::now());
        while requests.load(Ordering::Relaxed) - at_attach < TRACED_REQUESTS
            && attached.elapsed() < LONGEST_TRACE
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{} requests traced in {:?}",
            requests.load(Ordering::Relaxed) - at_attach,
            attached.elapsed()
        );
        tracer.signal(libc::SIGINT)?;
        tracer.wait(Duration::from_secs(300))
    })();
    let done = served.stop()?;
    let out = traced?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let json = std::fs::read_to_string(&report_path)?;
    let figures = check_exact_report(&json, OWN_PACKAGES)?;
    let report = &figures.report;
    println!(
        "caddy: {done} requests in all, {} allocation events traced, {} samples, {} bytes of json",
        report.events,
        report.samples.len(),
        json.len()
    );
    println!(
        "{:.1}% of the bytes under a frame of caddy's packages",
        100.0 * figures.own_share
    );
    ensure!(
        figures.own_share >= 0.5,
        "only {:.1}% of the bytes under a frame of caddy's packages",
        100.0 * figures.own_share
    );
    println!(
        "runtime counters over the trace: {} objects (read at the end: {})",
        figures.counted_objects, figures.counted_at_end
    );
    ensure!(figures.counted_at_end, "caddy was running at the end");
    figures.events_match_the_runtime(0.02)
}

#[test]
fn caddy_serving_files_default_mode_by_pid() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(caddy) = find_on_path("caddy") else {
        println!("SKIP: caddy is not installed (scripts/setup.sh installs Debian's caddy)");
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-default")?;
    let served = Served::start(&caddy, &tmp)?;
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["-d", "3s", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(served.server.pid().to_string());
    let out = gomemtrace_tests::run(cmd, Duration::from_secs(120));
    let done = served.stop()?;
    let out = out?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let report = Report::read(&report_path)?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    let mut by_site = report
        .by_site()
        .into_iter()
        .map(|(site, t)| (site, t.bytes))
        .collect::<Vec<_>>();
    by_site.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    by_site.truncate(5);
    println!(
        "caddy default mode ({}), {done} requests: top sites {by_site:?}; runtime counters {}",
        report.mode, v["runtime_counters"]
    );
    ensure!(!by_site.is_empty(), "no samples");
    ensure!(
        by_site.iter().all(|(site, _)| site != "?"),
        "a top site is the runtime's own: {by_site:?}"
    );
    // Read at the end (caddy runs on): the samples were scaled to the runtime's count.
    let counters = &v["runtime_counters"];
    ensure!(
        counters["read_at_end"] == true && !counters["scaled_from"].is_null(),
        "the runtime's counters were not read at the end: {counters}"
    );
    let bytes: u64 = report.samples.iter().map(|s| s.bytes).sum();
    ensure!(
        Some(bytes) == counters["allocated_bytes"].as_u64(),
        "samples add up to {bytes} B, the runtime counted {}",
        counters["allocated_bytes"]
    );
    Ok(())
}
