//! Third-party servers under a loopback load traced by pid: an exact trace until they
//! answered a number of requests, and a default-mode trace, each with what its report must
//! show.

use std::{path::Path, time::Duration};

use anyhow::{Result, ensure};

use crate::{
    Proc, Report, TempDir,
    exact_report::check_exact_report,
    gomemtrace_command,
    loopback::{Load, trace_until},
};

/// What runs: a server (its name in messages and the prefix of its packages) and the load
/// on it.
pub struct Served<'a> {
    pub name: &'a str,
    pub own_packages: &'a str,
    pub server: Proc,
    pub load: Load,
}

impl Served<'_> {
    /// Stops the load (its failure is the result) and the server.
    fn stop(mut self) -> Result<u64> {
        let done = self.load.stop();
        let _ = self.server.signal(libc::SIGTERM);
        let _ = self.server.wait(Duration::from_secs(20));
        done
    }
}

/// `gomemtrace --exact -p` until the server answered `requests` (or `longest` passed),
/// then Ctrl-C: no event lost or kept without its stack, at least half the bytes under
/// the server's own frames, and the count within 2% of what its runtime counted over the
/// trace (read at attach and at the end).
pub fn exact_by_pid(served: Served, tmp: &TempDir, requests: u64, longest: Duration) -> Result<()> {
    std::thread::sleep(Duration::from_secs(1));
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--totals", "probes", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(served.server.pid().to_string());
    let traced = trace_until(cmd, &served.load, requests, longest);
    let (name, own_packages) = (served.name.to_string(), served.own_packages.to_string());
    let done = served.stop()?;
    let out = traced?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let json = std::fs::read_to_string(&report_path)?;
    let figures = check_exact_report(&json, &own_packages)?;
    let report = &figures.report;
    println!(
        "{name}: {done} requests in all, {} allocation events traced, {} samples, {} bytes of \
         json",
        report.events,
        report.samples.len(),
        json.len()
    );
    figures.own_share_at_least(0.5, &own_packages)?;
    println!(
        "runtime counters over the trace: {} objects (read at the end: {})",
        figures.counted_objects, figures.counted_at_end
    );
    ensure!(figures.counted_at_end, "{name} was running at the end");
    figures.events_match_the_runtime(0.02)
}

/// `gomemtrace -p -d 3s` in the default mode, then [`check_default_report`].
pub fn default_by_pid(served: Served, tmp: &TempDir) -> Result<()> {
    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["-d", "3s", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(served.server.pid().to_string());
    let out = crate::run(cmd, Duration::from_secs(120));
    let name = served.name.to_string();
    let done = served.stop()?;
    let out = out?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    println!("{name}: {done} requests");
    check_default_report(&report_path)
}

/// No drop, the top five sites (by bytes) outside the runtime, and — the server outlived
/// the trace, so its runtime's counters were read at the end — the samples scaled to the
/// runtime's own count of bytes.
pub fn check_default_report(path: &Path) -> Result<()> {
    let report = Report::read(path)?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    let top = report.top_sites(5);
    let counters = &v["runtime_counters"];
    println!(
        "default mode ({}): top sites {top:?}; runtime counters {counters}",
        report.mode
    );
    ensure!(!top.is_empty(), "no samples");
    ensure!(
        top.iter().all(|(site, _)| site != "?"),
        "a top site is the runtime's own: {top:?}"
    );
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
