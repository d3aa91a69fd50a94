//! `gomemtrace numa` on a machine that cannot measure remote accesses (this project's
//! developer and CI machines: one node, NUMA balancing off, fentry on task_numa_fault
//! refused under lockdown): one line `gomemtrace: NUMA: not available (<why>)`, exit code
//! 7, the command never launched and a `-p` target untouched — never a report of zeros.
//! The reasons are checked against the machine's own /sys and /proc. The measurement
//! itself is tested in a two-node guest: tests/tests/numa_vm.rs.

use std::{process::Command, time::Duration};

use gomemtrace_tests::{
    Proc, TempDir, assert_one_error_line, gomemtrace_command, process_alive, require_root, run,
};

const T: Duration = Duration::from_secs(60);

/// Why this machine cannot measure, read independently of gomemtrace.
fn expected_reasons() -> Vec<&'static str> {
    let online = std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
    let nodes: usize = online
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum();
    let balancing = std::fs::read_to_string("/proc/sys/kernel/numa_balancing")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let mut reasons = Vec::new();
    if nodes < 2 {
        reasons.push("1 NUMA node online");
    }
    if balancing.is_some_and(|b| b & 1 == 0) {
        reasons.push("NUMA balancing is off");
    }
    reasons
}

fn assert_not_available(out: &gomemtrace_tests::Finished) {
    let expected = expected_reasons();
    if expected.is_empty() && out.code() != 7 {
        println!(
            "SKIP: this machine can measure NUMA accesses (exit {})",
            out.code()
        );
        return;
    }
    assert_eq!(out.code(), 7, "stderr:\n{}", out.stderr);
    assert_one_error_line("numa", out);
    let line = out.stderr.trim();
    assert!(
        line.starts_with("gomemtrace: NUMA: not available (") && line.ends_with(')'),
        "{line}"
    );
    for reason in expected {
        assert!(line.contains(reason), "missing `{reason}` in: {line}");
    }
    assert!(
        out.stdout.is_empty(),
        "a report was written:\n{}",
        out.stdout
    );
}

#[test]
fn launch_mode_says_why_and_never_starts_the_command() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("numa-unavailable").unwrap();
    let marker = dir.path().join("started");
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["numa", "-d", "2s", "--", "/bin/sh", "-c"])
        .arg(format!("touch {}", marker.display()));
    let out = run(cmd, T).unwrap();
    assert_not_available(&out);
    if out.code() == 7 {
        assert!(
            !marker.exists(),
            "the command ran although nothing could be measured"
        );
    }
}

#[test]
fn pid_mode_says_why_and_leaves_the_process_alone() {
    if !require_root() {
        return;
    }
    let mut sleep = Command::new("/bin/sleep");
    sleep.arg("60");
    let sleep = Proc::spawn(sleep).unwrap();
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["numa", "--format", "json", "-d", "2s", "-p"])
        .arg(sleep.pid().to_string());
    let out = run(cmd, T).unwrap();
    assert_not_available(&out);
    assert!(process_alive(sleep.pid()));
}
