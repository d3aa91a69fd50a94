//! Duty-cycled exact mode in the agent (auto's choice where the runtime's heap sampler is
//! compiled out): per process, the exact allocation probes are attached for a short window
//! and detached, and the next window opens when the estimated trap cost so far stays
//! within 1% of the process's own CPU time (the one-process profiler's default budget,
//! [`crate::duty::next_start`]). Each window's counts stand for the time since the
//! previous window closed: they are scaled by (that time / the window's length).

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    agent::{attachments::Process, profiles::Totals},
    duty::{self, Costs, cpu_ns},
    probes::AllocProbes,
};

/// The CPU budget of the probes, as a fraction of the process's own CPU time.
const BUDGET: f64 = 0.01;

struct State {
    exe_link: PathBuf,
    points: Vec<(&'static str, u64, String)>,
    start: Instant,
    cpu_start_ns: Option<u64>,
    /// The open window: when it opened and the pid's (objects, bytes) then.
    open: Option<(Instant, (u64, u64))>,
    last_close: Instant,
    next_open: Instant,
    /// Estimated trap cost so far, ns of the process's CPU.
    spent_ns: f64,
    estimate: Totals,
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
        self.states.insert(
            process.pid,
            State {
                exe_link: process.exe.link.clone(),
                points: process.analysis.probes.clone(),
                start: now,
                cpu_start_ns: cpu_ns(process.pid),
                open: None,
                last_close: now,
                next_open: now,
                spent_ns: 0.0,
                estimate: Totals::default(),
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

    /// Opens and closes the windows that are due.
    pub fn tick(&mut self, probes: &mut AllocProbes) {
        let costs = self.costs.unwrap_or_default();
        let now = Instant::now();
        for (&pid, state) in &mut self.states {
            match state.open {
                None if now >= state.next_open => {
                    let before = observed(probes, pid);
                    if duty::attach(probes, &state.points, &state.exe_link, pid).is_ok() {
                        state.open = Some((Instant::now(), before));
                    } else {
                        let _ = probes.detach_pid(pid);
                        state.next_open = now + duty::WINDOW;
                    }
                }
                Some((opened, before)) if now >= opened + duty::WINDOW => {
                    // The breakpoints go at the start of the detach; the rest of it is the
                    // kernel's RCU grace period, with the probes already gone.
                    let closed = Instant::now();
                    let _ = probes.detach_pid(pid);
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
                    state.last_close = closed;
                    state.open = None;
                    let elapsed = closed.duration_since(state.start).as_secs_f64().max(1e-3);
                    let own_cpu_rate = match (state.cpu_start_ns, cpu_ns(pid)) {
                        (Some(a), Some(b)) => {
                            ((b.saturating_sub(a)) as f64 - state.spent_ns).max(0.0) / 1e9 / elapsed
                        }
                        _ => 1.0,
                    };
                    let next = duty::next_start(
                        state.spent_ns,
                        objects as f64 / window,
                        costs.event_ns,
                        own_cpu_rate,
                        BUDGET,
                        duty::WINDOW.as_secs_f64(),
                    );
                    state.next_open =
                        (state.start + Duration::from_secs_f64(next.max(0.0))).max(closed);
                }
                _ => {}
            }
        }
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
