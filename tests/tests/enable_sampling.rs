//! `--enable-runtime-sampling`: the one opt-in write into the target. On every Go release,
//! on a binary whose heap sampler the linker compiled out (fixture `nopprof`): with the flag,
//! `-p` and launch mode trace in runtime-sampled mode, estimates agree with the fixture's arithmetic, and
//! `runtime.MemProfileRate` is back to its old value after gomemtrace exits; without it,
//! `auto` falls back to duty and the target's memory is never written.

use std::{os::unix::fs::FileExt as _, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    Proc, Report, TempDir, Variant, fixture, for_every_version, go_tool, gomemtrace_command,
    latest_go, require_root, run, send_signal,
};

const RATE: u64 = 512 * 1024;
/// (site, bytes the fixture allocates there).
const SITES: [(&str, u64); 2] = [
    ("main.allocSmall", 200_000 * 64),
    ("main.allocBuffers", 400 * 32 * 1024),
];
/// Sampling is a Poisson process over bytes: an unbiased estimate of B bytes has
/// σ ≈ sqrt(B · rate).
const K_SIGMA: f64 = 5.0;
/// The target's GOMAXPROCS. Right after the write, the next allocation on each P is sampled
/// whatever its size (docs/SAMPLING.md): up to one extra sample, ~`RATE` bytes of estimate,
/// per P for whichever site allocates there first; the bound adds that.
const PROCS: u64 = 2;

/// `runtime.MemProfileRate`'s address, from `go tool nm` (non-PIE: also its runtime address).
fn rate_address(version: &str, bin: &std::path::Path) -> Result<u64> {
    let nm = go_tool(version, &["tool", "nm", &bin.to_string_lossy()])?;
    let line = nm
        .lines()
        .find(|l| l.trim_end().ends_with(" runtime.MemProfileRate"))
        .context("no runtime.MemProfileRate in go tool nm")?;
    let hex = line.split_whitespace().next().context("empty nm line")?;
    Ok(u64::from_str_radix(hex, 16)?)
}

/// The load bias of a PIE: the start of the executable's first mapping (file offset 0)
/// minus the virtual address of its PT_LOAD at file offset 0 (Go links PIEs at 0x400000).
fn load_bias(pid: u32, bin: &std::path::Path) -> Result<u64> {
    let elf = std::fs::read(bin)?;
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let vaddr = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| {
            u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1 && u64_at(ph + 8) == 0
        })
        .map(|ph| u64_at(ph + 16))
        .context("no PT_LOAD at file offset 0")?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let exe = std::fs::canonicalize(bin)?;
    let line = maps
        .lines()
        .find(|l| l.ends_with(&*exe.to_string_lossy()))
        .context("executable not in /proc/PID/maps")?;
    let start = line.split('-').next().context("bad maps line")?;
    Ok(u64::from_str_radix(start, 16)? - vaddr)
}

fn read_rate(pid: u32, addr: u64) -> Result<u64> {
    let mut buf = [0u8; 8];
    std::fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(&mut buf, addr)?;
    Ok(u64::from_le_bytes(buf))
}

/// Traces the waiting fixture with `extra` flags; returns (report, gomemtrace's stderr,
/// MemProfileRate before, while tracing, after gomemtrace exited).
fn trace(version: &str, variant: Variant, extra: &[&str]) -> Result<(Report, String, [u64; 3])> {
    let bin = fixture("nopprof", version, variant)?;
    // A stripped build has no symbols: there the address is taken from gomemtrace's own
    // line, and the estimates (no samples unless the write took effect) check it.
    let mut addr = match variant.is_stripped() {
        true => None,
        false => Some(rate_address(version, &bin)?),
    };
    let mut cmd = Command::new(&bin);
    cmd.args(["-wait", "-hold"])
        .env("GOMAXPROCS", PROCS.to_string());
    let target = Proc::spawn(cmd)?;
    target.wait_stdout("ready", Duration::from_secs(30))?;
    if let Some(addr) = addr.as_mut()
        && variant.is_pie()
    {
        *addr += load_bias(target.pid(), &bin)?;
    }
    let mut before = addr.map(|a| read_rate(target.pid(), a)).transpose()?;
    let tmp = TempDir::new("enable")?;
    let report = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["-p", &target.pid().to_string(), "--format", "json", "-o"])
        .arg(&report)
        .args(extra);
    let mut tracer = Proc::spawn(cmd)?;
    tracer.wait_stderr("attached", Duration::from_secs(60))?;
    if addr.is_none() {
        // "gomemtrace: wrote runtime.MemProfileRate at 0xADDR in pid N: OLD -> NEW (...)"
        let line = tracer.wait_stderr("wrote runtime.MemProfileRate", Duration::ZERO)?;
        let word = |after: &str| {
            line.split(after)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|w| w.trim_end_matches(':').to_string())
                .with_context(|| format!("parse {line:?}"))
        };
        addr = Some(u64::from_str_radix(word(" at 0x")?.as_str(), 16)?);
        let old = line
            .split(" -> ")
            .next()
            .and_then(|l| l.split_whitespace().last());
        before = Some(old.with_context(|| format!("parse {line:?}"))?.parse()?);
    }
    let (addr, before) = (addr.unwrap(), before.unwrap());
    let during = read_rate(target.pid(), addr)?;
    target.signal(libc::SIGUSR1)?;
    target.wait_stdout("done", Duration::from_secs(60))?;
    tracer.signal(libc::SIGINT)?;
    let out = tracer.wait(Duration::from_secs(60))?;
    ensure!(out.code() == 0, "gomemtrace failed: {}", out.stderr);
    let after = read_rate(target.pid(), addr)?;
    if extra.is_empty() {
        ensure!(
            out.stderr.contains("mode auto: duty") && out.stderr.contains("compiled out"),
            "auto mode did not say it falls back: {}",
            out.stderr
        );
    } else {
        let wrote = format!("wrote runtime.MemProfileRate at {addr:#x}");
        ensure!(out.stderr.contains(&wrote), "no '{wrote}': {}", out.stderr);
    }
    Ok((Report::read(&report)?, out.stderr, [before, during, after]))
}

fn check_enabled(version: &str, variant: Variant) -> Result<String> {
    let (report, stderr, [before, during, after]) =
        trace(version, variant, &["--enable-runtime-sampling"])
            .with_context(|| format!("Go {version} {}", variant.name()))?;
    ensure!(
        before == 0,
        "Go {version}: sampler not compiled out: rate {before}"
    );
    ensure!(during == RATE, "Go {version}: rate while tracing {during}");
    ensure!(
        after == before,
        "Go {version}: rate after {after}, was {before}\n{stderr}"
    );
    ensure!(
        report.mode == "runtime",
        "Go {version}: mode {}",
        report.mode
    );
    check_sites(version, &report)
}

/// Each site's estimate against the fixture's arithmetic.
fn check_sites(version: &str, report: &Report) -> Result<String> {
    let sites = report.by_site();
    let mut summary = format!("Go {version}:");
    for (site, expected) in SITES {
        let got = sites.get(site).map_or(0, |t| t.bytes);
        let sigma = (expected as f64 * RATE as f64).sqrt();
        let err = (got as f64 - expected as f64).abs();
        let bound = K_SIGMA * sigma + (PROCS * RATE) as f64;
        ensure!(
            err <= bound,
            "Go {version} {site}: estimated {got} B, arithmetic {expected} B: off by {err:.0} B > {K_SIGMA}σ + {PROCS} × rate = {bound:.0} B"
        );
        summary += &format!(" {site} {got}/{expected} B ({:.1}σ)", err / sigma);
    }
    Ok(summary)
}

#[test]
fn enable_runtime_sampling_samples_and_restores_every_go_version() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check_enabled(v, Variant::Normal));
}

/// PIE: the write goes to the file address plus the load bias. Stripped: the address is
/// found from the code of `profilealloc`.
#[test]
fn enable_runtime_sampling_pie_and_stripped() {
    if !require_root() {
        return;
    }
    for_every_version(|v| {
        Ok(format!(
            "{}\n{}",
            check_enabled(v, Variant::Pie)?,
            check_enabled(v, Variant::StrippedPie)?
        ))
    });
}

#[test]
fn without_the_flag_the_target_is_never_written() {
    if !require_root() {
        return;
    }
    for_every_version(|version| {
        let (report, _, rates) =
            trace(version, Variant::Normal, &[]).with_context(|| format!("Go {version}"))?;
        ensure!(
            rates.iter().all(|&r| r == rates[0]),
            "Go {version}: MemProfileRate changed without the flag: {rates:?}"
        );
        ensure!(report.mode == "duty", "Go {version}: mode {}", report.mode);
        Ok(format!("Go {version}: rate {} unchanged, duty", rates[0]))
    });
}

/// Launch mode: the rate is written when runtime.main starts. The old value gomemtrace
/// reports is 0 — the default rate schedinit found compiled out and reset — which shows the
/// write came after schedinit (written before it, the old value would be the static
/// default and schedinit would reset the write); the estimates show it took effect.
#[test]
fn enable_runtime_sampling_at_launch_every_go_version() {
    if !require_root() {
        return;
    }
    for_every_version(|version| {
        let bin = fixture("nopprof", version, Variant::Normal)?;
        let tmp = TempDir::new("enable-launch")?;
        let report = tmp.join("r.json");
        let mut cmd = gomemtrace_command()?;
        cmd.args(["--enable-runtime-sampling", "--format", "json", "-o"])
            .arg(&report)
            .arg("--")
            .arg(&bin)
            .env("GOMAXPROCS", PROCS.to_string());
        let out = gomemtrace_tests::run(cmd, Duration::from_secs(120))?;
        ensure!(
            out.code() == 0,
            "Go {version}: gomemtrace failed: {}",
            out.stderr
        );
        ensure!(
            out.stderr.contains(&format!(": 0 -> {RATE} (restored")),
            "Go {version}: the write did not find the rate schedinit reset: {}",
            out.stderr
        );
        ensure!(out.stdout.contains("done"), "Go {version}: {}", out.stdout);
        let report = Report::read(&report)?;
        ensure!(
            report.mode == "runtime",
            "Go {version}: mode {}",
            report.mode
        );
        check_sites(version, &report)
    });
}

/// What a SIGKILL can leave behind: `--enable-runtime-sampling` killed before it restores
/// the rate leaves it written (nothing can run after SIGKILL). The next gomemtrace run on
/// that process says so — the runtime keeps 0 in a binary whose sampler is compiled out —
/// and a run with the flag restores 0, not the leftover it found.
#[test]
fn a_rate_left_by_a_killed_run_is_reported_and_restored_to_zero() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let version = latest_go();
    let bin = fixture("nopprof", &version, Variant::Normal)?;
    let addr = rate_address(&version, &bin)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["-wait", "-hold"]);
    let target = Proc::spawn(cmd)?;
    target.wait_stdout("ready", Duration::from_secs(30))?;
    let pid = target.pid().to_string();
    ensure!(
        read_rate(target.pid(), addr)? == 0,
        "the compiled-out rate is not 0 at start"
    );

    let mut cmd = gomemtrace_command()?;
    cmd.args(["-p", &pid, "-d", "60s", "--enable-runtime-sampling=4096"]);
    let mut killed = Proc::spawn(cmd)?;
    killed.wait_stderr("wrote runtime.MemProfileRate", Duration::from_secs(30))?;
    send_signal(killed.pid(), libc::SIGKILL)?;
    killed.wait(Duration::from_secs(10))?;
    ensure!(
        read_rate(target.pid(), addr)? == 4096,
        "the killed run's rate is not there"
    );

    let mut cmd = gomemtrace_command()?;
    cmd.args([
        "-p",
        &pid,
        "-d",
        "1s",
        "--format",
        "json",
        "-o",
        "/dev/null",
    ]);
    let out = run(cmd, Duration::from_secs(60))?;
    ensure!(out.code() == 0, "plain run: {}", out.stderr);
    ensure!(
        out.stderr.contains("runtime.MemProfileRate is 4096")
            && out.stderr.contains("written from outside"),
        "the leftover rate is not reported:\n{}",
        out.stderr
    );
    ensure!(
        read_rate(target.pid(), addr)? == 4096,
        "a plain run wrote the rate"
    );

    let mut cmd = gomemtrace_command()?;
    cmd.args([
        "-p",
        &pid,
        "-d",
        "1s",
        "--format",
        "json",
        "-o",
        "/dev/null",
    ])
    .arg("--enable-runtime-sampling=8192");
    let out = run(cmd, Duration::from_secs(60))?;
    ensure!(out.code() == 0, "run with the flag: {}", out.stderr);
    ensure!(
        out.stderr.contains("4096 -> 8192 (restored to 0"),
        "{}",
        out.stderr
    );
    let rate = read_rate(target.pid(), addr)?;
    ensure!(rate == 0, "rate {rate} after the run with the flag, not 0");
    Ok(())
}

/// Ctrl-C the moment the rate is written — before the probes are attached and the poll
/// loop listens (CI under load once caught that gap: gomemtrace died of the SIGINT with no
/// report, and the written rate stayed in the target). Five times, since the gap is timing:
/// each run must exit 0, write its report, and leave the rate at 0.
#[test]
fn ctrl_c_right_after_the_write_restores_the_rate_and_writes_the_report() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let version = latest_go();
    let bin = fixture("nopprof", &version, Variant::Normal)?;
    let addr = rate_address(&version, &bin)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["-wait", "-hold"]);
    let target = Proc::spawn(cmd)?;
    target.wait_stdout("ready", Duration::from_secs(30))?;
    let tmp = TempDir::new("enable-ctrl-c")?;
    for attempt in 0..5 {
        let report = tmp.join(&format!("r{attempt}.json"));
        let mut cmd = gomemtrace_command()?;
        cmd.args(["-p", &target.pid().to_string(), "--format", "json", "-o"])
            .arg(&report)
            .arg("--enable-runtime-sampling");
        let mut tracer = Proc::spawn(cmd)?;
        tracer.wait_stderr("wrote runtime.MemProfileRate", Duration::from_secs(60))?;
        tracer.signal(libc::SIGINT)?;
        let out = tracer.wait(Duration::from_secs(60))?;
        ensure!(
            out.code() == 0,
            "attempt {attempt}: exit {} after Ctrl-C:\n{}",
            out.code(),
            out.stderr
        );
        let rate = read_rate(target.pid(), addr)?;
        ensure!(
            rate == 0,
            "attempt {attempt}: rate {rate} left in the target"
        );
        let report = Report::read(&report)
            .with_context(|| format!("attempt {attempt}: no report:\n{}", out.stderr))?;
        ensure!(
            report.mode == "runtime",
            "attempt {attempt}: mode {}",
            report.mode
        );
    }
    Ok(())
}
