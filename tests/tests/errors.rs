//! Bad input gets its documented exit code and one stderr line starting `gomemtrace: `:
//! 1 other error, 2 usage, 3 no such process, 4 not a Go binary, 5 not root, 7 the agent
//! cannot listen.
//! Usage errors (2) come from the argument parser, so only their code is checked.

use std::process::Command;
use std::time::Duration;

use gomemtrace_tests::{
    Proc, TempDir, Variant, assert_one_error_line, copy_executable, fixture, gomemtrace,
    gomemtrace_command, latest_go, process_alive, require_root, run, write_executable,
};

const T: Duration = Duration::from_secs(60);

fn gomemtrace_run(args: &[&str]) -> gomemtrace_tests::Finished {
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(args);
    run(cmd, T).unwrap()
}

#[test]
fn no_such_pid_exits_3() {
    if !require_root() {
        return;
    }
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (2..pid_max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let out = gomemtrace_run(&["-p", &pid.to_string(), "-d", "1s"]);
    assert_eq!(out.code(), 3, "stderr:\n{}", out.stderr);
    assert_one_error_line("no such pid", &out);
}

#[test]
fn non_go_pid_exits_4() {
    if !require_root() {
        return;
    }
    let mut sleep = Command::new("/bin/sleep");
    sleep.arg("60");
    let sleep = Proc::spawn(sleep).unwrap();
    let out = gomemtrace_run(&["-p", &sleep.pid().to_string(), "-d", "1s"]);
    assert_eq!(out.code(), 4, "stderr:\n{}", out.stderr);
    assert_one_error_line("-p of /bin/sleep", &out);
    assert!(
        process_alive(sleep.pid()),
        "gomemtrace harmed the process it refused"
    );
}

#[test]
fn non_go_launch_exits_4() {
    if !require_root() {
        return;
    }
    let out = gomemtrace_run(&["--", "/bin/sleep", "0.1"]);
    assert_eq!(out.code(), 4, "stderr:\n{}", out.stderr);
    assert_one_error_line("launch of /bin/sleep", &out);
}

/// A command that cannot be started is "other error" (1), not a shell's 127.
#[test]
fn missing_command_exits_1() {
    if !require_root() {
        return;
    }
    let out = gomemtrace_run(&["--", "/nonexistent/gomemtrace-test-command"]);
    assert_eq!(out.code(), 1, "stderr:\n{}", out.stderr);
    assert_one_error_line("missing command", &out);
}

/// As user nobody (no capabilities), on a Go binary nobody may run: exit 5.
#[test]
fn not_root_exits_5() {
    if !require_root() {
        return; // setpriv needs root to switch users
    }
    // Copies that user nobody can reach (the originals live under /root and target/).
    let tmp = TempDir::new("nobody").unwrap();
    let fixture_copy = tmp.join("allocs");
    let tracer_copy = tmp.join("gomemtrace");
    copy_executable(
        &fixture("allocs", &latest_go(), Variant::Normal).unwrap(),
        &fixture_copy,
    )
    .unwrap();
    copy_executable(&gomemtrace().unwrap(), &tracer_copy).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [tmp.path(), fixture_copy.as_path(), tracer_copy.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    cmd.arg(&tracer_copy)
        .args(["-d", "2s", "--"])
        .arg(&fixture_copy);
    let out = run(cmd, T).unwrap();
    assert_eq!(out.code(), 5, "stderr:\n{}", out.stderr);
    assert_one_error_line("not root", &out);
}

#[test]
fn garbage_duration_exits_2() {
    let out = gomemtrace_run(&["-d", "soon", "-p", "1"]);
    assert_eq!(out.code(), 2, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("soon"),
        "the error should name the bad value:\n{}",
        out.stderr
    );
}

#[test]
fn no_target_exits_2() {
    let out = gomemtrace_run(&[]);
    assert_eq!(out.code(), 2, "stderr:\n{}", out.stderr);
}

#[test]
fn pid_and_command_exit_2() {
    let out = gomemtrace_run(&["-p", "1", "--", "/bin/true"]);
    assert_eq!(out.code(), 2, "stderr:\n{}", out.stderr);
}

#[test]
fn agent_bad_glob_exits_2_and_taken_port_exits_8() {
    if !require_root() {
        return;
    }
    let out = gomemtrace_run(&["agent", "--listen", "127.0.0.1:0", "--include-exe", "a[b"]);
    assert_eq!(out.code(), 2, "stderr:\n{}", out.stderr);
    assert_one_error_line("agent with a bad glob", &out);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = gomemtrace_run(&["agent", "--listen", &addr]);
    assert_eq!(out.code(), 8, "stderr:\n{}", out.stderr);
    assert_one_error_line("agent on a taken port", &out);
}

/// A truncated Go binary is refused before it runs (exit 4, one line naming the file as
/// truncated), not launched and then reported through a debug-formatted wait status.
#[test]
fn truncated_binary_is_refused_before_launch_exit_4() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("truncated").unwrap();
    let data = std::fs::read(fixture("allocs", &latest_go(), Variant::Normal).unwrap()).unwrap();
    let cut = tmp.join("allocs-cut");
    write_executable(&cut, &data[..data.len() / 2]).unwrap();
    let out = gomemtrace_run(&["--", cut.to_str().unwrap()]);
    assert_eq!(out.code(), 4, "stderr:\n{}", out.stderr);
    assert_one_error_line("launch of a truncated binary", &out);
    assert!(
        out.stderr.contains("truncated") && !out.stderr.contains("Stopped("),
        "{}",
        out.stderr
    );
}

/// `-q`: the report and nothing else; not the "attached" and "wrote" status lines.
#[test]
fn quiet_prints_no_status() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("quiet").unwrap();
    let report = tmp.join("report.json");
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let out = gomemtrace_run(&[
        "-q",
        "--format",
        "json",
        "-o",
        report.to_str().unwrap(),
        "--",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    let ours: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("gomemtrace"))
        .collect();
    assert!(ours.is_empty(), "-q printed:\n{}", out.stderr);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(json["events"].as_u64().unwrap_or(0) > 0, "{json}");
}

/// Root without CAP_SYS_PTRACE (a container's default), on a process holding capabilities
/// it lacks (pid 1 in a container): exit 5 naming CAP_SYS_PTRACE, not "needs root".
#[test]
fn root_without_ptrace_capability_is_told_what_is_missing_exit_5() {
    if !require_root() {
        return;
    }
    let mut sleep = Command::new("/bin/sleep");
    sleep.arg("60");
    let sleep = Proc::spawn(sleep).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"])
        .arg(gomemtrace().unwrap())
        .args(["-d", "1s", "-p", &sleep.pid().to_string()]);
    let out = run(cmd, T).unwrap();
    assert_eq!(out.code(), 5, "stderr:\n{}", out.stderr);
    assert_one_error_line("-p without CAP_SYS_PTRACE", &out);
    assert!(
        out.stderr.contains("CAP_SYS_PTRACE") && !out.stderr.contains("needs root"),
        "{}",
        out.stderr
    );
}
