//! Faults at any moment: gomemtrace killed with SIGKILL at random points of its run —
//! while it analyses the binary, loads and attaches its probes, in the middle of a
//! duty-cycled window, while exact probes are attached — never harms the target. The
//! oracles are the target's own: it keeps running, finishes its work and exits 0 with
//! self-consistent counts; and its code in memory is the file's again, byte for byte, at
//! every place a probe went (a uprobe left behind shows as an `int3`), read through
//! /proc/PID/mem against the executable.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    Proc, Variant, fixture, gomemtrace_command, latest_go,
    probe_points::{all_probe_points, code_bytes},
    process_alive, require_root, send_signal,
};

/// A small deterministic generator for the kill delays (xorshift).
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn sigkill_at_any_moment_leaves_the_target_running_and_unmodified() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    // The steady fixture never references the heap sampler: `auto` is duty-cycled, whose
    // windows attach and detach all the time.
    let exe = fixture("steady", &latest_go(), Variant::Normal)?;
    let points = all_probe_points(&exe)?;

    let mut target_cmd = Command::new(&exe);
    target_cmd.args(["-duration", "25s", "-spin", "20000"]);
    let mut target = Proc::spawn(target_cmd)?;
    let pid = target.pid();
    let (_, on_disk) = code_bytes(pid, &exe, &points)?;

    // The oracle sees probes: with exact probes attached the code at the points is not the
    // file's (the uprobes' breakpoints).
    let mut cmd = gomemtrace_command()?;
    cmd.args(["-p", &pid.to_string(), "-d", "30s", "--mode", "exact"]);
    let mut tracer = Proc::spawn(cmd)?;
    tracer.wait_stderr("attached", Duration::from_secs(20))?;
    let (live, _) = code_bytes(pid, &exe, &points)?;
    ensure!(
        live != on_disk && live.contains(&0xcc),
        "no breakpoint seen at the probe points while attached: {live:02x?}"
    );
    send_signal(tracer.pid(), libc::SIGKILL)?;
    tracer.wait(Duration::from_secs(10))?;

    let mut delays = Delays(0x9e37_79b9_7f4a_7c15);
    let runs: [&[&str]; 4] = [
        &["--mode", "duty", "--overhead-budget", "5"],
        &["--mode", "exact"],
        &["--mode", "duty"],
        &[],
    ];
    let mut kills = 0;
    let started = Instant::now();
    for round in 0..12 {
        let mut cmd = gomemtrace_command()?;
        cmd.args(["-q", "-p", &pid.to_string(), "-d", "30s"])
            .args(runs[round % runs.len()]);
        let mut tracer = Proc::spawn(cmd)?;
        // From 0 (analysis) to 1.5 s (windows opening and closing, exact probes hit).
        std::thread::sleep(Duration::from_millis(delays.next_ms(1500)));
        send_signal(tracer.pid(), libc::SIGKILL)?;
        let killed = tracer.wait(Duration::from_secs(10))?;
        kills += usize::from(killed.code() == 128 + libc::SIGKILL);
        ensure!(
            process_alive(pid),
            "the target died after gomemtrace was killed in round {round} ({:?}): {}",
            runs[round % runs.len()],
            target.stderr_text()
        );
        // The kernel removes a dead tracer's uprobes as it closes its descriptors. Once
        // (CI, 2026-12-07, a duty-mode round) 11 of 18 breakpoints were still there after
        // 5 s, cause not found; the wait is 10 s (the target runs 25 s in all), and how
        // long it took is printed.
        let killed_at = Instant::now();
        let deadline = killed_at + Duration::from_secs(10);
        loop {
            let (live, _) = code_bytes(pid, &exe, &points)?;
            if live == on_disk {
                if killed_at.elapsed() > Duration::from_millis(500) {
                    println!(
                        "round {round}: the code was restored {:?} after the kill",
                        killed_at.elapsed()
                    );
                }
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "round {round}: the target's code differs from its file at the probe points \
                 (a probe left behind): {live:02x?} vs {on_disk:02x?}; gomemtrace processes \
                 alive: {:?}",
                gomemtrace_processes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    ensure!(
        kills >= 10,
        "only {kills} of 12 runs were still running when killed"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(24),
        "the rounds outlasted the target's run"
    );
    let done = target.wait(Duration::from_secs(60))?;
    ensure!(
        done.code() == 0,
        "the target exited {} after the faults: {}",
        done.code(),
        done.stderr
    );
    // Its own accounting still adds up.
    gomemtrace_tests::steady::check_own_counts(&done)
}

/// Pids of the gomemtrace processes alive now (a tracer still holding probes?).
fn gomemtrace_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "gomemtrace")
        })
        .collect()
}

/// The target killed (SIGKILL) at any moment of a `-p` trace's start: while gomemtrace
/// reads its executable and maps, loads and attaches its probes, or once tracing. Each run
/// ends either with exit 3 and a last line saying the process exited before the trace began,
/// or with exit 0 and a report of what was collected (`target exited`); never another
/// code, a raw system error, or a panic. Before, an exit in the middle of the start came
/// out as "No such file or directory (os error 2)" or "perf_event_open failed: No such
/// process", exit 1.
#[test]
fn the_target_killed_while_gomemtrace_attaches_gets_one_line() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let exe = fixture("steady", &latest_go(), Variant::Normal)?;
    let mut delays = Delays(0x2545_f491_4f6c_dd1d);
    let views: [&[&str]; 4] = [&["--mode", "exact"], &[], &["--mode", "duty"], &["gctrace"]];
    let (mut before, mut after) = (0, 0);
    for round in 0..12 {
        let mut target_cmd = Command::new(&exe);
        target_cmd.args(["-duration", "30s", "-spin", "20000"]);
        let mut target = Proc::spawn(target_cmd)?;
        let pid = target.pid();
        let view = views[round % views.len()];
        let mut cmd = gomemtrace_command()?;
        // A subcommand first, then its options.
        cmd.args(view.iter().filter(|a| **a == "gctrace"))
            .args(["-p", &pid.to_string(), "-d", "20s"])
            .args(view.iter().filter(|a| **a != "gctrace"))
            .args(["-o", "/dev/null"]);
        let mut tracer = Proc::spawn(cmd)?;
        if round < 9 {
            // From 0 (reading the executable) to 1.2 s (probes attached, tracing).
            std::thread::sleep(Duration::from_millis(delays.next_ms(1200)));
        } else {
            // Surely after: once tracing.
            let started = match view.contains(&"gctrace") {
                true => "tracing GC of pid",
                false => "attached",
            };
            tracer.wait_stderr(started, Duration::from_secs(60))?;
        }
        send_signal(pid, libc::SIGKILL)?;
        let _ = target.wait(Duration::from_secs(10));
        let out = tracer.wait(Duration::from_secs(60))?;
        let lines: Vec<&str> = out.stderr.lines().collect();
        match out.code() {
            3 => {
                before += 1;
                // The last line says it (a mode line may come before).
                ensure!(
                    lines.last().is_some_and(|l| l.contains(&format!(
                        "pid {pid} exited while gomemtrace was analysing it or attaching"
                    ))) && !out.stderr.contains("panic"),
                    "round {round} {view:?}: exit 3 without the line:\n{}",
                    out.stderr
                );
            }
            0 => {
                after += 1;
                ensure!(
                    !out.stderr.contains("panic"),
                    "round {round} {view:?}: {}",
                    out.stderr
                );
            }
            code => anyhow::bail!(
                "round {round} {view:?}: exit {code} after the target was killed:\n{}",
                out.stderr
            ),
        }
    }
    println!("{before} runs ended before the trace began, {after} after");
    ensure!(
        before > 0 && after > 0,
        "the kills did not fall on both sides of the attach: {before} before, {after} after"
    );
    Ok(())
}
