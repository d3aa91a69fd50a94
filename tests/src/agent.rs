//! `gomemtrace agent` under test: started on a free port, its metrics read.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::{Proc, get_text, gomemtrace_command, http_get, poll, samples};

/// How long a test waits for the agent to reach a state (ready, attached, let go): the
/// conditions are polled, so this only bounds a failure. On a loaded 2-core machine
/// (CI beside other work) the debug agent's round once took over 10 s.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `gomemtrace agent` running, listening on a free port of loopback.
pub struct Agent {
    pub proc: Proc,
    pub addr: String,
}

impl Agent {
    /// The agent tracing the executables that match `include_exe`, once ready.
    pub fn start(include_exe: &str) -> Result<Agent> {
        Self::start_with(include_exe, &[])
    }

    /// As [`Agent::start`], with more arguments.
    pub fn start_with(include_exe: &str, extra: &[&str]) -> Result<Agent> {
        let mut cmd = Self::command(include_exe)?;
        cmd.args(extra);
        Self::spawn(cmd)
    }

    /// The agent's command line, to add to before [`Agent::spawn`].
    pub fn command(include_exe: &str) -> Result<Command> {
        let mut cmd = gomemtrace_command()?;
        cmd.args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--include-exe",
            include_exe,
        ]);
        Ok(cmd)
    }

    /// Runs `cmd` (an agent's command line) and waits until it is ready.
    pub fn spawn(cmd: Command) -> Result<Agent> {
        let proc = Proc::spawn(cmd)?;
        let addr = listen_address(&proc)?;
        let agent = Agent { proc, addr };
        // A request that times out is asked again: on a loaded 2-core machine the debug
        // agent, loading its programs, once left /readyz unanswered for 5 s.
        poll("/readyz", DEADLINE, || {
            Ok(http_get(&agent.addr, "/readyz", Duration::from_secs(5))
                .is_ok_and(|(status, _)| status == 200)
                .then_some(()))
        })?;
        Ok(agent)
    }

    pub fn metrics(&self) -> Result<String> {
        get_text(&self.addr, "/metrics")
    }

    /// The agent's BPF link and perf-event fds (one per uprobe or tracepoint attachment),
    /// from the kernel's fd table: an oracle independent of the agent's own gauges.
    /// Descriptors of uprobe links and perf events the agent holds.
    pub fn link_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path()).is_ok_and(|t| {
                            let t = t.to_string_lossy();
                            t.contains("bpf_link") || t.contains("perf_event")
                        })
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// (uprobe links, entries of every per-process map) as the agent reports them.
    /// (uprobe links, BPF map entries) as the agent reports them.
    pub fn holdings(&self) -> Result<(f64, f64)> {
        let text = self.metrics()?;
        let links = samples(&text, "gomemtrace_agent_uprobe_links", &[]);
        let entries: f64 = samples(&text, "gomemtrace_agent_map_entries", &[])
            .iter()
            .sum();
        ensure!(links.len() == 1, "no uprobe link gauge in\n{text}");
        Ok((links[0], entries))
    }
}

/// The address an agent (`proc`) says it listens on, once it says so.
pub fn listen_address(proc: &Proc) -> Result<String> {
    let line = proc.wait_stderr("listening on", Duration::from_secs(20))?;
    Ok(line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .context("listen address")?
        .to_string())
}
