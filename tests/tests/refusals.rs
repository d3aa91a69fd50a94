//! The kernel refusing gomemtrace — no memory for a map (ENOMEM), no permission to load a
//! program or to create a uprobe (EPERM) — as a container's seccomp profile, a security
//! module or a full memory cgroup would, injected with a seccomp filter on gomemtrace's own
//! system calls (tests/src/seccomp.rs). Each refusal gets one line that names what was
//! refused and why, and its own exit code; the target is never harmed: it keeps running, its
//! code at every probe point is the file's (no breakpoint left behind by a half-done
//! attach), and it finishes its work with its own counts right. The agent, refused its
//! duty windows, keeps serving its metrics, counts every refused window and logs the first.
//! Needs root.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    Proc, Variant,
    agent::Agent,
    assert_one_error_line, fixture, get_text, gomemtrace_command, latest_go, poll,
    probe_points::{all_probe_points, code_bytes},
    process_alive, require_root, run, samples,
    seccomp::{BPF_LINK_CREATE, BPF_MAP_CREATE, BPF_PROG_LOAD, Refusal, refuse},
};

/// Every way a uprobe can be created: through perf_event_open (one per offset) or a
/// uprobe_multi link.
fn no_uprobes() -> [Refusal; 2] {
    [
        Refusal::perf_event_open(libc::EPERM),
        Refusal::bpf(BPF_LINK_CREATE, libc::EPERM),
    ]
}

#[test]
fn refused_maps_programs_and_probes_get_one_line_and_leave_the_target_whole() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let exe = fixture("steady", &latest_go(), Variant::Normal)?;
    let points = all_probe_points(&exe)?;
    let mut target_cmd = Command::new(&exe);
    target_cmd.args(["-duration", "20s", "-spin", "20000"]);
    let mut target = Proc::spawn(target_cmd)?;
    let pid = target.pid();
    let (_, on_disk) = code_bytes(pid, &exe, &points)?;

    struct Case {
        what: &'static str,
        refusals: Vec<Refusal>,
        mode: &'static str,
        code: i32,
        says: [&'static str; 2],
    }
    let cases = [
        Case {
            what: "no memory for a map",
            refusals: vec![Refusal::bpf(BPF_MAP_CREATE, libc::ENOMEM)],
            mode: "exact",
            code: 9,
            says: ["create BPF map", "memory cgroup"],
        },
        Case {
            what: "programs forbidden",
            refusals: vec![Refusal::bpf(BPF_PROG_LOAD, libc::EPERM)],
            mode: "auto",
            code: 5,
            says: ["load a BPF program", "seccomp"],
        },
        Case {
            what: "uprobes forbidden, exact",
            refusals: no_uprobes().to_vec(),
            mode: "exact",
            code: 5,
            says: ["uprobe at", "seccomp"],
        },
        Case {
            what: "uprobes forbidden, duty windows",
            refusals: no_uprobes().to_vec(),
            mode: "duty",
            code: 5,
            says: ["uprobe at", "seccomp"],
        },
    ];
    for case in &cases {
        let mut cmd = gomemtrace_command()?;
        cmd.args(["-p", &pid.to_string(), "-d", "3s", "--mode", case.mode]);
        cmd.arg("-q");
        refuse(&mut cmd, &case.refusals);
        let out = run(cmd, Duration::from_secs(60))?;
        ensure!(
            out.code() == case.code,
            "{}: exit code {} (want {}): {}",
            case.what,
            out.code(),
            case.code,
            out.stderr
        );
        assert_one_error_line(case.what, &out);
        for word in case.says {
            ensure!(
                out.stderr.contains(word),
                "{}: the message does not say {word:?}: {}",
                case.what,
                out.stderr
            );
        }
        ensure!(
            process_alive(pid),
            "{}: the target died: {}",
            case.what,
            target.stderr_text()
        );
        let (live, _) = code_bytes(pid, &exe, &points)?;
        ensure!(
            live == on_disk,
            "{}: the target's code differs from its file at the probe points: {live:02x?} vs \
             {on_disk:02x?}",
            case.what
        );
        println!("{}: exit {}: {}", case.what, out.code(), out.stderr.trim());
    }

    // The agent, refused every uprobe: the process is still listed and its allocation
    // counter (the runtime's own, no probe needed) moves; each refused duty window counted.
    let mut cmd = Agent::command(&exe.to_string_lossy())?;
    refuse(&mut cmd, &no_uprobes());
    let agent = Agent::spawn(cmd)?;
    let addr = agent.addr.clone();
    let allocated = |text: &str| {
        samples(text, "gomemtrace_allocated_bytes_total", &[])
            .first()
            .copied()
    };
    let first = poll("a refused duty window", Duration::from_secs(30), || {
        let text = get_text(&addr, "/metrics")?;
        let refused = samples(&text, "gomemtrace_agent_refused_duty_windows_total", &[]);
        Ok(refused
            .first()
            .is_some_and(|&n| n >= 1.0)
            .then(|| allocated(&text))
            .flatten())
    })?;
    let later = poll(
        "the allocation counter to move",
        Duration::from_secs(20),
        || {
            let text = get_text(&addr, "/metrics")?;
            Ok(allocated(&text).filter(|&now| now > first))
        },
    )?;
    println!("agent: allocated {first} -> {later} bytes while every duty window was refused");
    agent
        .proc
        .wait_stderr("a duty window did not open", Duration::from_secs(5))
        .context("the agent did not log the refusal")?;
    drop(agent);

    let done = target.wait(Duration::from_secs(60))?;
    ensure!(
        done.code() == 0,
        "the target exited {}: {}",
        done.code(),
        done.stderr
    );
    // Its own accounting still adds up.
    gomemtrace_tests::steady::check_own_counts(&done)
}
