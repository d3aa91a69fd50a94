//! How a trace ends: the target exits before `-d` runs out, gomemtrace gets SIGINT, a
//! `-p` trace runs out its duration while the target lives on. In every case the report is
//! written and complete. Needs root.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    ALLOCS_SITES, Oracle, Proc, RUN_TIMEOUT, Report, TOLERANCE, TempDir, Variant, fixture,
    gomemtrace_command, latest_go, process_alive, require_root, run, send_signal, within,
};

/// The report has every fixture site with its known bytes.
fn check_sites(report: &Report, oracle: &Oracle) -> Result<()> {
    let by_site = report.by_site();
    for (site, _) in ALLOCS_SITES {
        let want = oracle.sites[site].expected_bytes;
        let got = by_site.get(site).map_or(0, |t| t.bytes);
        ensure!(
            within(got, want, TOLERANCE),
            "{site}: {got} B, want {want} B\n{}",
            report.summary()
        );
    }
    Ok(())
}

/// `-d 60s`, but the target exits after a second: gomemtrace writes the report then, and
/// exits with the target's status (the fixture's `-exit 3`).
#[test]
fn target_exit_ends_trace_early_with_its_status() {
    if !require_root() {
        return;
    }
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let tmp = TempDir::new("exit-early").unwrap();
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--exact", "-d", "60s", "--format", "json", "-o"])
        .arg(&report);
    cmd.arg("--")
        .arg(&bin)
        .arg("-oracle")
        .arg(&oracle)
        .args(["-exit", "3"]);
    let start = Instant::now();
    let out = run(cmd, Duration::from_secs(55)).unwrap();
    let took = start.elapsed();
    assert_eq!(
        out.code(),
        3,
        "want the target's exit status 3; stderr:\n{}",
        out.stderr
    );
    assert!(
        took < Duration::from_secs(45),
        "took {took:?}: did gomemtrace wait for -d 60s?"
    );
    check_sites(
        &Report::read(&report).unwrap(),
        &Oracle::read(&oracle).unwrap(),
    )
    .unwrap();
}

/// SIGINT to gomemtrace in `-p` mode while the target still runs: the report is written,
/// gomemtrace exits 0 and the target is left running.
#[test]
fn sigint_pid_mode_writes_report_and_exits_zero() {
    if !require_root() {
        return;
    }
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let tmp = TempDir::new("sigint-pid").unwrap();
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut target_cmd = Command::new(&bin);
    target_cmd
        .arg("-wait")
        .arg("-oracle")
        .arg(&oracle)
        .args(["-hold", "30s"]);
    let target = Proc::spawn(target_cmd).unwrap();
    target
        .wait_stdout("ready", Duration::from_secs(30))
        .unwrap();
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--exact", "--format", "json", "-o"])
        .arg(&report)
        .arg("-p")
        .arg(target.pid().to_string());
    let mut tracer = Proc::spawn(cmd).unwrap();
    tracer
        .wait_stderr("attached", Duration::from_secs(60))
        .unwrap();
    target.signal(libc::SIGUSR1).unwrap();
    target.wait_stdout("done", RUN_TIMEOUT).unwrap();
    let sent = Instant::now();
    tracer.signal(libc::SIGINT).unwrap();
    let out = tracer.wait(Duration::from_secs(25)).unwrap();
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "gomemtrace took {:?} after SIGINT",
        sent.elapsed()
    );
    assert!(
        process_alive(target.pid()),
        "the target died when gomemtrace was interrupted"
    );
    check_sites(
        &Report::read(&report).unwrap(),
        &Oracle::read(&oracle).unwrap(),
    )
    .unwrap();
    drop(target); // killed
}

/// SIGINT to gomemtrace in launch mode while the target still runs (`-hold 30s`): the
/// report is written. gomemtrace passes the interrupt on to the target, as a terminal's
/// Ctrl-C would, and exits with the target's status: 130 (killed by SIGINT), or 0 had the
/// target handled it.
#[test]
fn sigint_launch_mode_writes_report() {
    if !require_root() {
        return;
    }
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let tmp = TempDir::new("sigint-launch").unwrap();
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--exact", "--format", "json", "-o"]).arg(&report);
    cmd.arg("--")
        .arg(&bin)
        .arg("-oracle")
        .arg(&oracle)
        .args(["-hold", "30s"]);
    let mut tracer = Proc::spawn(cmd).unwrap();
    // The target's stdout is gomemtrace's: "done" comes after all work and the oracle.
    tracer.wait_stdout("done", RUN_TIMEOUT).unwrap();
    let oracle = Oracle::read(&oracle).unwrap();
    let sent = Instant::now();
    tracer.signal(libc::SIGINT).unwrap();
    let out = tracer.wait(Duration::from_secs(25)).unwrap();
    if process_alive(oracle.pid) {
        let _ = send_signal(oracle.pid, libc::SIGKILL);
    }
    assert!(
        matches!(out.code(), 0 | 130),
        "exit {}; stderr:\n{}",
        out.code(),
        out.stderr
    );
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "gomemtrace took {:?} after SIGINT",
        sent.elapsed()
    );
    check_sites(&Report::read(&report).unwrap(), &oracle).unwrap();
}

/// `-p PID -d 2s` on a target that keeps running: the report comes after about 2 s, has
/// the target's pid, and the target is left running, unharmed.
#[test]
fn pid_duration_elapses_target_keeps_running() {
    if !require_root() {
        return;
    }
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let tmp = TempDir::new("pid-duration").unwrap();
    let report = tmp.join("r.json");
    let mut target_cmd = Command::new(&bin);
    target_cmd.arg("-wait");
    let mut target = Proc::spawn(target_cmd).unwrap();
    target
        .wait_stdout("ready", Duration::from_secs(30))
        .unwrap();
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--exact", "-d", "2s", "--format", "json", "-o"])
        .arg(&report)
        .arg("-p")
        .arg(target.pid().to_string());
    let start = Instant::now();
    let out = run(cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "returned after {:?}, before -d 2s",
        start.elapsed()
    );
    let r = Report::read(&report).unwrap();
    assert_eq!(r.target.pid, target.pid());
    assert!(
        process_alive(target.pid()),
        "the target died when gomemtrace detached"
    );
    // Still works after detaching: finish it normally.
    target.signal(libc::SIGUSR1).unwrap();
    let t = target.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(t.code(), 0, "target after detach: {}", t.stderr);
    assert!(t.stdout.contains("done"));
}

/// A launched target that ignores SIGINT must not hold gomemtrace hostage: after SIGINT
/// the report is written; if gomemtrace then waits for the target, a second SIGINT (the
/// user pressing Ctrl-C again) makes it exit.
#[test]
fn sigint_twice_exits_even_if_target_ignores_it() {
    if !require_root() {
        return;
    }
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let tmp = TempDir::new("sigint-ignored").unwrap();
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--exact", "--format", "json", "-o"]).arg(&report);
    cmd.arg("--").arg(&bin).arg("-oracle").arg(&oracle);
    cmd.args(["-hold", "60s", "-ignore-sigint"]);
    let mut tracer = Proc::spawn(cmd).unwrap();
    tracer.wait_stdout("done", RUN_TIMEOUT).unwrap();
    let oracle = Oracle::read(&oracle).unwrap();
    tracer.signal(libc::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Report::read(&report).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still running (waiting for the target)? Ctrl-C again.
    std::thread::sleep(Duration::from_secs(1));
    if process_alive(tracer.pid()) {
        let _ = tracer.signal(libc::SIGINT);
    }
    let out = tracer.wait(Duration::from_secs(15));
    if process_alive(oracle.pid) {
        let _ = send_signal(oracle.pid, libc::SIGKILL);
    }
    // Any exit status: the target was still running when gomemtrace gave up on it.
    out.expect("gomemtrace did not exit after a second SIGINT");
    check_sites(&Report::read(&report).unwrap(), &oracle).unwrap();
}
