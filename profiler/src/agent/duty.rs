//! Duty-cycled exact mode in the agent (auto's choice where the runtime's heap sampler is
//! compiled out): per process, the exact allocation probes are attached for a short window
//! and detached, and the next window opens as soon as the estimated trap cost so far plus
//! the next window's stays within 1% of the process's own CPU time (the one-process
//! profiler's default budget), decided at every tick on the process's CPU read then
//! ([`crate::alloc::duty::window_length`]; shorter windows where traps are costly). Each
//! window's counts stand for the time since the previous window closed: they are scaled by
//! (that time / the window's length).

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    agent::{attachments::Process, profiles::Totals},
    alloc::duty::{self, Costs},
    bpf::AllocProbes,
    engine::CpuClock,
};

/// The CPU budget of the probes, as a fraction of the process's own CPU time.
const BUDGET: f64 = 0.01;

/// How long after a window the kernel refused the next try waits (a refusal tends to last:
/// a seccomp profile, a full memory cgroup).
const REFUSED_WINDOW_RETRY: Duration = Duration::from_secs(5);

/// A window in progress: when it opened, its length, the pid's (objects, bytes) then, and
/// its CPU then.
type OpenWindow = (Instant, Duration, (u64, u64), Option<u64>);

struct State {
    exe_link: PathBuf,
    points: Vec<crate::analysis::AttachPoint>,
    /// The process's CPU time (None from it: the process is gone).
    clock: CpuClock,
    cpu_start_ns: Option<u64>,
    open: Option<OpenWindow>,
    last_close: Instant,
    /// The latest window's opening and the process's CPU then: the reference of the
    /// recent CPU rate (never shorter than a window, so a busy process does not look idle
    /// right after a close).
    last_open: (Instant, Option<u64>),
    /// Events per ns of the process's CPU in the latest window.
    events_per_cpu_ns: f64,
    /// Estimated trap cost so far, ns of the process's CPU.
    spent_ns: f64,
    estimate: Totals,
    /// After a window the kernel refused: no new try before this.
    retry_after: Option<Instant>,
}

#[derive(Default)]
pub struct DutyCycler {
    costs: Option<Costs>,
    states: HashMap<u32, State>,
}

impl DutyCycler {
    pub fn add(&mut self, process: &Process, probes: &mut AllocProbes) {
        if self.costs.is_none() {
            self.costs = Some(Costs::new(probes.measure_trap_ns(2000)));
        }
        let now = Instant::now();
        let mut clock = CpuClock::new(process.pid);
        let cpu_start_ns = clock.read();
        self.states.insert(
            process.pid,
            State {
                exe_link: process.exe.link.clone(),
                points: process.analysis.probes.clone(),
                clock,
                cpu_start_ns,
                open: None,
                last_close: now,
                last_open: (now, cpu_start_ns),
                events_per_cpu_ns: 0.0,
                spent_ns: 0.0,
                estimate: Totals::default(),
                retry_after: None,
            },
        );
    }

    pub fn remove(&mut self, pid: u32) {
        self.states.remove(&pid);
    }

    /// The scaled estimate of what `pid` allocated since it was attached.
    pub fn estimate(&self, pid: u32) -> Option<Totals> {
        self.states.get(&pid).map(|s| s.estimate)
    }

    /// Opens and closes the windows that are due; returns the windows that could not open
    /// (the kernel refused the probes), by pid.
    pub fn tick(&mut self, probes: &mut AllocProbes) -> Vec<(u32, anyhow::Error)> {
        let mut refused = Vec::new();
        let costs = self.costs.unwrap_or_default();
        let now = Instant::now();
        for (&pid, state) in &mut self.states {
            match state.open {
                None => {
                    if state.retry_after.is_some_and(|at| now < at) {
                        continue;
                    }
                    let Some(length) = state.window_length(now, costs.event_ns) else {
                        continue;
                    };
                    let before = observed(probes, pid);
                    let cpu = state.clock.read();
                    match duty::attach(probes, &state.points, &state.exe_link, pid) {
                        Ok(()) => state.open = Some((Instant::now(), length, before, cpu)),
                        Err(e) => {
                            let _ = probes.detach_pid(pid);
                            state.retry_after = Some(now + REFUSED_WINDOW_RETRY);
                            refused.push((pid, e));
                        }
                    }
                }
                Some((opened, length, before, cpu_opened)) if now >= opened + length => {
                    // The breakpoints go at the start of the detach; the rest of it is the
                    // kernel's RCU grace period, with the probes already gone.
                    let closed = Instant::now();
                    let _ = probes.detach_pid(pid);
                    let cpu_closed = state.clock.read();
                    let after = observed(probes, pid);
                    let (objects, bytes) = (
                        after.0 - before.0.min(after.0),
                        after.1 - before.1.min(after.1),
                    );
                    let window = closed.duration_since(opened).as_secs_f64().max(1e-6);
                    let covered = closed.duration_since(state.last_close).as_secs_f64();
                    let scale = covered / window;
                    state.estimate.objects += objects as f64 * scale;
                    state.estimate.bytes += bytes as f64 * scale;
                    state.spent_ns += objects as f64 * costs.event_ns;
                    // On the CPU the process was charged, traps included (as the recent
                    // rate it is multiplied with).
                    let window_cpu = match (cpu_opened, cpu_closed) {
                        (Some(a), Some(b)) => b.saturating_sub(a) as f64,
                        _ => window * 1e9,
                    };
                    state.events_per_cpu_ns =
                        objects as f64 / window_cpu.max(duty::MIN_WINDOW_CPU_NS);
                    state.last_close = closed;
                    state.last_open = (opened, cpu_opened);
                    state.open = None;
                }
                _ => {}
            }
        }
        refused
    }
}

impl State {
    /// How long the next window may be if it opens now (None: not yet), on the process's
    /// CPU read now.
    fn window_length(&mut self, now: Instant, event_ns: f64) -> Option<Duration> {
        let cpu_now = self.clock.read();
        let (own_cpu_ns, recent_cpu_rate) = match (self.cpu_start_ns, cpu_now) {
            (Some(start), Some(now_ns)) => {
                let (since, cpu_then) = self.last_open;
                let recent_cpu = cpu_then.map_or(0.0, |c| now_ns.saturating_sub(c) as f64);
                let recent_wall = now.duration_since(since).as_secs_f64().max(1e-3) * 1e9;
                (
                    (now_ns.saturating_sub(start) as f64 - self.spent_ns).max(0.0),
                    recent_cpu / recent_wall,
                )
            }
            // The process's CPU cannot be read (it is exiting): its next window is free.
            _ => return Some(duty::MIN_WINDOW),
        };
        duty::window_length(
            self.spent_ns,
            self.events_per_cpu_ns,
            recent_cpu_rate,
            event_ns,
            own_cpu_ns,
            BUDGET,
        )
    }
}

/// (objects, bytes) the probes counted for `pid` so far.
fn observed(probes: &AllocProbes, pid: u32) -> (u64, u64) {
    probes
        .allocs()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| k.tgid == pid)
        .fold((0, 0), |(o, b), (_, s)| (o + s.objects, b + s.bytes))
}
