//! Prometheus (Debian's 2.42.0, Go 1.19.8, stripped, cgo; `scripts/setup.sh` installs it)
//! scraping itself every 200 ms while four client threads query its HTTP API and its own
//! /metrics on loopback, traced by `gomemtrace -p PID`:
//!
//! - exact mode until it has answered `TRACED_REQUESTS` (or for at most 10 s), then Ctrl-C:
//!   no event lost or kept without its stack, the bytes under Prometheus's own frames, and
//!   the count within 2% of what its runtime itself counted over the trace;
//! - the default mode for 3 s: no drop, no top site in the runtime, the samples scaled to
//!   the runtime's count.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    Proc, TempDir,
    exact_report::check_exact_report,
    find_on_path, gomemtrace_command, http_get,
    loopback::{Load, free_port, trace_until},
    poll, require_root,
    thirdparty::check_default_report,
};

const CLIENTS: usize = 4;
/// All clients together: a bounded load (traced in exact mode the server answers fewer).
const REQUESTS_PER_SECOND: u64 = 300;
const TRACED_REQUESTS: u64 = 2000;
const LONGEST_TRACE: Duration = Duration::from_secs(10);
const OWN_PACKAGES: &str = "github.com/prometheus/";
/// What the clients ask, in turn: the query API, the label API and the self-metrics.
const PATHS: [&str; 3] = [
    "/api/v1/query?query=up",
    "/api/v1/label/__name__/values",
    "/metrics",
];

fn serve(prometheus: &Path, tmp: &TempDir) -> Result<(Proc, Load)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    std::fs::write(
        tmp.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\nscrape_configs:\n  \
             - job_name: self\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )?;
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!(
        "--config.file={}",
        tmp.join("prometheus.yml").display()
    ))
    .arg(format!("--web.listen-address={addr}"))
    .arg(format!(
        "--storage.tsdb.path={}",
        tmp.join("data").display()
    ))
    .arg("--log.level=error");
    let server = Proc::spawn(cmd)?;
    poll("prometheus ready", Duration::from_secs(60), || {
        Ok(http_get(&addr, "/-/ready", Duration::from_secs(2))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|_| ()))
    })?;
    let load = Load::start(CLIENTS, REQUESTS_PER_SECOND, move |c, i| {
        let path = PATHS[(c + i as usize) % PATHS.len()];
        let (status, body) = http_get(&addr, path, Duration::from_secs(10))?;
        ensure!(
            status == 200 && !body.is_empty(),
            "GET {path}: {status}, {} bytes",
            body.len()
        );
        Ok(())
    });
    Ok((server, load))
}

fn prometheus() -> Option<std::path::PathBuf> {
    let found = find_on_path("prometheus");
    if found.is_none() {
        println!("SKIP: prometheus is not installed (scripts/setup.sh installs Debian's)");
    }
    found
}

#[test]
fn prometheus_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(prometheus) = prometheus() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-prometheus-exact")?;
    let (mut server, load) = serve(&prometheus, &tmp)?;
    std::thread::sleep(Duration::from_secs(1));
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--totals", "probes", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(server.pid().to_string());
    let traced = trace_until(cmd, &load, TRACED_REQUESTS, LONGEST_TRACE);
    let done = load.stop()?;
    let _ = server.signal(libc::SIGTERM);
    let _ = server.wait(Duration::from_secs(20));
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
        "prometheus: {done} requests in all, {} allocation events traced, {} samples, {} \
         bytes of json",
        report.events,
        report.samples.len(),
        json.len()
    );
    println!(
        "{:.1}% of the bytes under a frame of the prometheus packages",
        100.0 * figures.own_share
    );
    ensure!(
        figures.own_share >= 0.5,
        "only {:.1}% of the bytes under a frame of the prometheus packages",
        100.0 * figures.own_share
    );
    println!(
        "runtime counters over the trace: {} objects (read at the end: {})",
        figures.counted_objects, figures.counted_at_end
    );
    ensure!(figures.counted_at_end, "prometheus was running at the end");
    figures.events_match_the_runtime(0.02)
}

#[test]
fn prometheus_default_mode_by_pid() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(prometheus) = prometheus() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-prometheus-default")?;
    let (mut server, load) = serve(&prometheus, &tmp)?;
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["-d", "3s", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(server.pid().to_string());
    let out = gomemtrace_tests::run(cmd, Duration::from_secs(120));
    let done = load.stop()?;
    let _ = server.signal(libc::SIGTERM);
    let _ = server.wait(Duration::from_secs(20));
    let out = out?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    println!("prometheus: {done} requests");
    check_default_report(&report_path)
}
