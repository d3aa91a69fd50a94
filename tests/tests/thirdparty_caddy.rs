//! A third-party web server traced by pid: Debian's caddy 2.6.2 (Go 1.19.8, stripped, cgo;
//! `scripts/setup.sh` installs it) serving a generated tree of files on loopback to four
//! client threads (a new connection per request), traced by `gomemtrace -p PID`:
//!
//! - exact mode until caddy has answered `TRACED_REQUESTS` (or for at most 10 s), then
//!   Ctrl-C: no event lost or kept without its stack, most bytes under caddy's own frames,
//!   and the count within 2% of what caddy's runtime itself counted over the trace (its
//!   allocation counters, read from the process at attach and at the end);
//! - the default mode for 3 s: what `auto` picks for this binary, no drop, the sites on
//!   top outside the runtime, and the samples scaled to the runtime's count.

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
const REQUESTS_PER_SECOND: u64 = 1000;
const FILES: usize = 200;
/// Requests answered while traced in exact mode: a goroutine per connection, so tens of
/// thousands of keys (goroutine × stack × type).
const TRACED_REQUESTS: u64 = 3000;
const LONGEST_TRACE: Duration = Duration::from_secs(10);
const OWN_PACKAGES: &str = "github.com/caddyserver/caddy/";

/// caddy serving `FILES` files of 1–8 KiB, and clients fetching them.
fn serve(caddy: &Path, tmp: &TempDir) -> Result<(Proc, Load)> {
    let root = tmp.join("site");
    std::fs::create_dir_all(&root)?;
    let size = |i: usize| (1 + i % 8) * 1024;
    for i in 0..FILES {
        let body: String = (0..size(i))
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        std::fs::write(root.join(format!("f{i}.txt")), body)?;
    }
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(caddy);
    cmd.args(["file-server", "--listen", &addr, "--root"])
        .arg(&root)
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
    let load = Load::start(CLIENTS, REQUESTS_PER_SECOND, move |c, i| {
        let file = (c + CLIENTS * i as usize) % FILES;
        let (status, body) = http_get(&addr, &format!("/f{file}.txt"), Duration::from_secs(10))?;
        ensure!(
            status == 200 && body.len() == size(file),
            "GET /f{file}.txt: {status}, {} bytes",
            body.len()
        );
        Ok(())
    });
    Ok((server, load))
}

fn caddy() -> Option<std::path::PathBuf> {
    let found = find_on_path("caddy");
    if found.is_none() {
        println!("SKIP: caddy is not installed (scripts/setup.sh installs Debian's caddy)");
    }
    found
}

#[test]
fn caddy_serving_files_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(caddy) = caddy() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-exact")?;
    let (mut server, load) = serve(&caddy, &tmp)?;
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
    let Some(caddy) = caddy() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-default")?;
    let (mut server, load) = serve(&caddy, &tmp)?;
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
    println!("caddy: {done} requests");
    check_default_report(&report_path)
}
