//! Duty-cycled exact mode (`--mode duty`, the `auto` choice where the runtime's heap
//! sampler is compiled out): the exact allocation probes are attached for short windows and
//! really detached in between (a probe that returns early still costs the trap), with the
//! gap between windows set so that the estimated trap cost stays within
//! `--overhead-budget` percent of the target's own CPU time. Counts are scaled by
//! total time / window time; each key gets a standard error (formula in docs/SAMPLING.md
//! and at [`estimate`]).
//!
//! Per-event cost ([`Costs`]): before the target is released, gomemtrace measures the
//! bare uprobe trap on this machine by probing a function of its own with the empty
//! program and calling it 2000 times with and without; an event then costs that trap plus
//! [`PROGRAM_COST_NS`] (the exact program's own work, from docs/BENCHMARKS.md), a hit
//! between windows the trap alone. Where that cannot be done, the benchmark's constants
//! ([`EVENT_COST_NS`], [`IGNORED_HIT_COST_NS`]). The cost is not read off the target's CPU
//! time: a CPU-bound target's CPU rate does not rise under the probes (it gets less done
//! instead), so its CPU inside windows against outside says nothing there. The target's
//! own CPU time ([`CpuClock`]) is measured: it is the base the budget is a percentage of.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use gomemtrace_common::{AllocKey, Counter, ProcessConfig};
use gomemtrace_report::model::{DutyCycle, Estimate};

use crate::{
    analysis::AttachPoint,
    bpf::AllocProbes,
    engine::{self, CpuClock, End, Target},
};

/// Target CPU time per allocation event with the exact probe attached, where the trap
/// could not be measured (docs/BENCHMARKS.md: 3065 ns on the development VM).
pub const EVENT_COST_NS: f64 = 3000.0;
/// Cost of a probe hit outside a window (the program returns at once), where the trap
/// could not be measured (the empty-uprobe floor of docs/BENCHMARKS.md, ~1.1 µs).
pub const IGNORED_HIT_COST_NS: f64 = 1100.0;
/// What the exact program adds to the bare trap (docs/BENCHMARKS.md: 3065 − 1054 ns).
pub const PROGRAM_COST_NS: f64 = 2000.0;

/// Per-hit costs the controller charges, nanoseconds of the target's CPU.
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    pub event_ns: f64,
    pub ignored_ns: f64,
    /// The trap was measured on this machine at start-up (else the constants).
    pub measured: bool,
}

impl Costs {
    /// From the empty-probe trap cost measured now (see `AllocProbes::measure_trap_ns`),
    /// else the benchmark's constants.
    pub fn new(trap_ns: Option<f64>) -> Self {
        match trap_ns {
            Some(t) if t > 0.0 => Self {
                event_ns: t + PROGRAM_COST_NS,
                ignored_ns: t,
                measured: true,
            },
            _ => Self {
                event_ns: EVENT_COST_NS,
                ignored_ns: IGNORED_HIT_COST_NS,
                measured: false,
            },
        }
    }
}

impl Default for Costs {
    fn default() -> Self {
        Self::new(None)
    }
}
/// How long the probes stay attached per window.
pub const WINDOW: Duration = Duration::from_millis(150);
/// The first window, opened before any event rate is known: short, so that on an
/// allocation-heavy target it does not spend many seconds of budget at once (150 ms of
/// exact probing costs a CPU-bound target ~150 ms of work, 15 s of a 1% budget).
pub const FIRST_WINDOW: Duration = Duration::from_millis(20);
/// How often the loop checks the deadline, the target and Ctrl-C.
const POLL: Duration = Duration::from_millis(10);

/// Per-window deltas of the allocation map and what the windows cost.
#[derive(Debug, Default)]
pub struct DutyRecord {
    budget_percent: f64,
    costs: Costs,
    /// Length of each window.
    windows: Vec<Duration>,
    /// Per key, (objects, bytes) seen in each window (shorter where the key appeared late).
    per_key: HashMap<AllocKey, Vec<(u64, u64)>>,
    events: u64,
    /// Probe hits while attaching or detaching, outside windows (ignored by the program).
    ignored: u64,
    /// Target CPU time (ns) and wall time inside windows and outside them.
    cpu_in_ns: u64,
    cpu_out_ns: u64,
    wall_out: Duration,
    cpu_total_ns: u64,
    /// Whole trace, release to end.
    total: Duration,
}

/// A key's scaled counts and their standard errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaled {
    pub objects: u64,
    pub bytes: u64,
    pub estimate: Estimate,
}

impl DutyRecord {
    fn window_ns(&self) -> f64 {
        self.windows.iter().map(Duration::as_nanos).sum::<u128>() as f64
    }

    /// Fraction of the windows' target CPU the traps took (the most the probes can have
    /// slowed the traced code down during windows).
    fn trap_share(&self) -> f64 {
        let cost = self.events as f64 * self.costs.event_ns;
        let cpu = if self.cpu_in_ns > 0 {
            self.cpu_in_ns as f64
        } else {
            self.window_ns()
        };
        (cost / cpu.max(1.0)).min(1.0)
    }

    /// Estimated trap cost so far, nanoseconds of the target's CPU.
    fn cost_ns(&self) -> f64 {
        self.events as f64 * self.costs.event_ns + self.ignored as f64 * self.costs.ignored_ns
    }

    pub fn summary(&self) -> DutyCycle {
        let window_ns = self.window_ns();
        let total_ns = self.total.as_nanos() as f64;
        let cost = self.cost_ns();
        let own_cpu = (self.cpu_total_ns as f64 - cost).max(1.0);
        DutyCycle {
            overhead_budget_percent: self.budget_percent,
            event_cost_ns: self.costs.event_ns,
            event_cost_measured: self.costs.measured,
            windows: self.windows.len() as u64,
            window_ns: window_ns as u64,
            duty_fraction: if total_ns > 0.0 {
                (window_ns / total_ns).min(1.0)
            } else {
                1.0
            },
            events_observed: self.events,
            hits_between_windows: self.ignored,
            target_cpu_ns: self.cpu_total_ns,
            estimated_overhead_percent: 100.0 * cost / own_cpu,
        }
    }

    /// Scaled counts and standard errors per key.
    ///
    /// Windows i = 1..n of lengths wᵢ (W = Σwᵢ) inside a trace of length T saw xᵢ of a key
    /// (objects or bytes). The estimate is the ratio estimator X̂ = T·Σxᵢ/W. Its variance
    /// has three parts:
    ///
    /// * between windows (windows as a sample of the trace's time slices, with finite
    ///   population correction 1 − W/T):
    ///   V_w = T² · n/(n−1) · Σ(xᵢ − R̂·wᵢ)² / W² · (1 − W/T), R̂ = Σxᵢ/W (n ≥ 2);
    /// * a Poisson floor, so that a key seen in one window or a handful of times is not
    ///   given a tiny error: V_p = (T/W)² · Σxᵢ · s · (1 − W/T), s = 1 for objects and the
    ///   key's mean object size for bytes; the statistical part is max(V_w, V_p);
    /// * the probe effect: during windows the traps take a share β of the target's CPU
    ///   (events × cost / CPU inside windows), so code whose allocation rate is bound to
    ///   its CPU allocates up to β slower inside windows than outside; the estimate is then
    ///   up to (1 − W/T)·β too low. β rests on the assumed per-event cost, which varies
    ///   between machines, so the whole bound is added as one systematic standard error
    ///   X̂·(1 − W/T)·β: ±3σ still spans it where the cost is up to 3× the assumed one.
    pub fn estimates(&self) -> HashMap<AllocKey, Scaled> {
        let n = self.windows.len();
        let w: Vec<f64> = self.windows.iter().map(|d| d.as_secs_f64()).collect();
        let big_w: f64 = w.iter().sum();
        let t = self.total.as_secs_f64().max(big_w);
        let fpc = if t > 0.0 { 1.0 - big_w / t } else { 0.0 };
        let beta = self.trap_share();
        self.per_key
            .iter()
            .map(|(key, deltas)| {
                let xs = |f: fn(&(u64, u64)) -> u64| -> Vec<f64> {
                    (0..n)
                        .map(|i| deltas.get(i).map_or(0.0, |d| f(d) as f64))
                        .collect()
                };
                let objects = xs(|d| d.0);
                let bytes = xs(|d| d.1);
                let sum_o: f64 = objects.iter().sum();
                let sum_b: f64 = bytes.iter().sum();
                let mean_size = if sum_o > 0.0 { sum_b / sum_o } else { 0.0 };
                let (est_o, sd_o) = estimate(&objects, &w, t, fpc, beta, 1.0);
                let (est_b, sd_b) = estimate(&bytes, &w, t, fpc, beta, mean_size);
                (
                    *key,
                    Scaled {
                        objects: est_o.round() as u64,
                        bytes: est_b.round() as u64,
                        estimate: Estimate {
                            bytes_sigma: sd_b,
                            objects_sigma: sd_o,
                        },
                    },
                )
            })
            .collect()
    }
}

/// (X̂, σ) for per-window counts `x` over windows of lengths `w` (seconds) in a trace of
/// `t` seconds; see [`DutyRecord::estimates`].
pub fn estimate(x: &[f64], w: &[f64], t: f64, fpc: f64, beta: f64, unit: f64) -> (f64, f64) {
    let big_w: f64 = w.iter().sum();
    if big_w <= 0.0 {
        return (0.0, 0.0);
    }
    let sum: f64 = x.iter().sum();
    let rate = sum / big_w;
    let est = t * rate;
    let n = x.len() as f64;
    let between = if x.len() >= 2 {
        let ss: f64 = x
            .iter()
            .zip(w)
            .map(|(&xi, &wi)| (xi - rate * wi).powi(2))
            .sum();
        t * t * n / (n - 1.0) * ss / (big_w * big_w) * fpc * small_sample_factor(n - 1.0).powi(2)
    } else {
        0.0
    };
    let poisson = (t / big_w).powi(2) * sum * unit * fpc;
    let systematic = est * fpc * beta;
    (est, (between.max(poisson) + systematic * systematic).sqrt())
}

/// With few windows the spread between them is itself uncertain: the standardized error
/// follows Student's t with n − 1 degrees of freedom, not the normal law. The between-window
/// σ is widened by t₀.₉₉₈₆₅(ν)/3 (Cornish–Fisher expansion of the t quantile at z = 3), so
/// that ±3σ keeps its normal coverage (99.73 %): ×1.35 at 10 windows, ×1.03 at 100.
pub fn small_sample_factor(dof: f64) -> f64 {
    if dof < 1.0 {
        return 1.0;
    }
    let z: f64 = 3.0;
    let t = z
        + (z.powi(3) + z) / (4.0 * dof)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * dof * dof);
    t / z
}

/// The least CPU a window that saw events is taken to have used, so that events per
/// CPU-second stay finite when the CPU reading barely moved.
pub const MIN_WINDOW_CPU_NS: f64 = 1e6;

/// The shortest window opened: shorter ones see too few events to estimate a rate from.
pub const MIN_WINDOW: Duration = FIRST_WINDOW;

/// How long a window may be if it opens now, or None while the budget does not allow even
/// [`MIN_WINDOW`], decided on the target's CPU read fresh at each poll (the CLI) or tick
/// (the agent): the trap cost so far plus the window's expected cost stays within `budget`
/// (a fraction) of the target's own CPU time so far. Windows are [`WINDOW`] long where the
/// budget allows, shorter where traps are costly (a loaded machine: 27 µs a trap was seen in
/// CI), so that a busy target still gets windows every few seconds.
///
/// The window's events are expected in proportion to the CPU the target burns in it:
/// allocation needs CPU, so events per CPU-second (`events_per_cpu_ns`, from the latest
/// window, on the CPU the target was charged, traps included) is steadier than events per
/// wall-second, and a target that went idle (`recent_cpu_rate` near 0) gets its next window
/// at once. That window closes the gap before it, which is only counted when a window
/// follows it.
pub fn window_length(
    spent_ns: f64,
    events_per_cpu_ns: f64,
    recent_cpu_rate: f64,
    event_ns: f64,
    own_cpu_ns: f64,
    budget: f64,
) -> Option<Duration> {
    let headroom_ns = budget * own_cpu_ns - spent_ns;
    // Trap ns per ns of window.
    let cost_rate = events_per_cpu_ns * recent_cpu_rate * event_ns;
    let affordable = if cost_rate > 0.0 {
        headroom_ns / cost_rate
    } else if headroom_ns >= 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (affordable >= MIN_WINDOW.as_nanos() as f64)
        .then(|| Duration::from_nanos(affordable.min(WINDOW.as_nanos() as f64) as u64))
}

/// Attaches the allocation probes for a window: one multi-uprobe link for every entry
/// point where the kernel has them (one RCU grace period to detach, instead of one per
/// probe: ~0.1 s against ~1.5 s for Go 1.27's 18 entry points on the development VM),
/// else one link per point.
pub fn attach(
    probes: &mut AllocProbes,
    points: &[AttachPoint],
    exe: &Path,
    pid: u32,
) -> anyhow::Result<()> {
    let offsets: Vec<u64> = points.iter().map(|p| p.file_offset).collect();
    if points.len() > 1 && probes.attach_alloc_multi(exe, &offsets, pid).is_ok() {
        return Ok(());
    }
    for point in points {
        probes.attach(point.program, exe, &[point.file_offset], pid)?;
    }
    Ok(())
}

/// Runs the windows on the engine's loop until the duration ends, Ctrl-C, or the target
/// exits. The probes are attached on entry (the first window starts at once) and detached
/// on return.
#[allow(clippy::too_many_arguments)] // one call site, each argument distinct
pub fn run(
    deadline: Option<Duration>,
    budget_percent: f64,
    target: &mut Target,
    probes: &mut AllocProbes,
    attach_points: &[AttachPoint],
    exe: &Path,
    config: ProcessConfig,
    costs: Costs,
    started: Instant,
    mut watch: Option<&mut crate::alloc::counters::Watch>,
) -> anyhow::Result<(End, DutyRecord)> {
    let pid = target.pid;
    let mut clock = CpuClock::new(pid);
    let cpu_start = clock.read().unwrap_or(0);
    let mut cycle = Cycle {
        pid,
        clock,
        budget: budget_percent / 100.0,
        probes,
        attach_points,
        exe,
        config,
        record: DutyRecord {
            budget_percent,
            costs,
            ..DutyRecord::default()
        },
        previous: HashMap::new(),
        cpu_start,
        cpu_last: cpu_start,
        // The caller attached the probes before releasing the target: the first window
        // starts at once.
        window_start: started,
        length: FIRST_WINDOW,
        cpu_before: cpu_start,
        gap: None,
    };
    let end = engine::run_until_end(deadline, started, target, POLL, |target| {
        if let Some(w) = watch.as_deref_mut() {
            w.tick(cycle.probes.counters()?.get(Counter::Events));
        }
        let next_drain = cycle.probes.drain_if_due()?;
        Ok(match cycle.tick(target)? {
            Some(wanted) => Some(wanted.min(next_drain)),
            None => Some(next_drain),
        })
    })?;
    match cycle.gap {
        None => cycle.close_window()?,
        Some(_) => cycle.close_gap(),
    }
    let mut record = cycle.record;
    record.total = started.elapsed();
    record.cpu_total_ns = cycle.cpu_last.saturating_sub(cycle.cpu_start);
    Ok((end, record))
}

/// The duty cycle of one trace: opens and closes windows on the engine's ticks.
struct Cycle<'a> {
    pid: u32,
    /// The target's CPU time, read at every tick.
    clock: CpuClock,
    budget: f64,
    probes: &'a mut AllocProbes,
    attach_points: &'a [AttachPoint],
    exe: &'a Path,
    config: ProcessConfig,
    record: DutyRecord,
    /// Per key, the (objects, bytes) of the allocation map at the latest window's close.
    previous: HashMap<AllocKey, (u64, u64)>,
    /// The target's CPU time at the start and at the latest reading.
    cpu_start: u64,
    cpu_last: u64,
    /// The latest window: when it opened, how long it lasts, the target's CPU time then.
    window_start: Instant,
    length: Duration,
    cpu_before: u64,
    /// Between windows: since when, and the latest window's events per ns of target CPU.
    gap: Option<(Instant, f64)>,
}

impl Cycle<'_> {
    /// One tick: closes the window that is due, or opens the next one once the budget
    /// allows; returns when it wants the next tick (the open window's end).
    fn tick(&mut self, target: &mut Target) -> anyhow::Result<Option<Instant>> {
        let Some((_, events_per_cpu_ns)) = self.gap else {
            let end = self.window_start + self.length;
            if Instant::now() < end {
                return Ok(Some(end));
            }
            self.close_window()?;
            return Ok(None);
        };
        // The next window opens as soon as the budget allows one, decided on the target's
        // CPU read now (`window_length`): its cost is expected from the latest window's
        // events per CPU-second and the target's CPU rate since that window opened.
        let cpu_now = self.clock.read().unwrap_or_else(|| self.clock.latest());
        let recent_cpu = cpu_now.saturating_sub(self.cpu_before) as f64;
        let recent_wall = self.window_start.elapsed().as_secs_f64().max(1e-3) * 1e9;
        let spent = self.record.cost_ns();
        let own_cpu = (cpu_now.saturating_sub(self.cpu_start) as f64 - spent).max(0.0);
        let Some(length) = window_length(
            spent,
            events_per_cpu_ns,
            recent_cpu / recent_wall,
            self.record.costs.event_ns,
            own_cpu,
            self.budget,
        ) else {
            return Ok(None);
        };
        self.close_gap();
        let attaching = Instant::now();
        // The target can exit while the probes are attached: that ends the trace (the
        // engine sees it after this tick).
        if let Err(e) = attach(self.probes, self.attach_points, self.exe, self.pid) {
            if target.is_alive() {
                return Err(e);
            }
            return Ok(None);
        }
        // Counting starts once every probe is in place.
        self.probes.configure(self.pid, self.config)?;
        if std::env::var_os("GOMEMTRACE_DUTY_DEBUG").is_some() {
            eprintln!("attach {:?}", attaching.elapsed());
        }
        self.window_start = Instant::now();
        self.length = length;
        self.cpu_before = self.cpu_last;
        Ok(Some(self.window_start + length))
    }

    /// Ends the open window: the program stops counting, the probes are detached, and the
    /// window's per-key deltas and CPU time are recorded.
    fn close_window(&mut self) -> anyhow::Result<()> {
        // The window ends when the program stops counting; detaching takes a while (RCU
        // grace periods), and hits meanwhile are ignored (counted as NoConfig).
        self.probes.unconfigure(self.pid)?;
        self.record.windows.push(self.window_start.elapsed());
        let detaching = Instant::now();
        self.probes.detach_all()?;
        if std::env::var_os("GOMEMTRACE_DUTY_DEBUG").is_some() {
            eprintln!(
                "window {:?}, detach {:?}",
                self.record.windows.last(),
                detaching.elapsed()
            );
        }
        let cpu_now = self.clock.read().unwrap_or_else(|| self.clock.latest());
        self.record.cpu_in_ns += cpu_now.saturating_sub(self.cpu_before);
        self.cpu_last = cpu_now;
        let index = self.record.windows.len() - 1;
        let mut window_events = 0;
        for (key, stats) in self.probes.allocs()? {
            let before = self.previous.insert(key, (stats.objects, stats.bytes));
            let (o0, b0) = before.unwrap_or_default();
            let deltas = self.record.per_key.entry(key).or_default();
            deltas.resize(index, (0, 0));
            deltas.push((stats.objects - o0, stats.bytes - b0));
            window_events += stats.objects - o0;
        }
        let counters = self.probes.counters()?;
        self.record.events = counters.get(Counter::Events);
        self.record.ignored = counters.get(Counter::NoConfig);
        let window_cpu = self.cpu_last.saturating_sub(self.cpu_before) as f64;
        let events_per_cpu_ns = window_events as f64 / window_cpu.max(MIN_WINDOW_CPU_NS);
        self.gap = Some((Instant::now(), events_per_cpu_ns));
        Ok(())
    }

    /// Ends the gap between windows: its CPU and wall time are recorded.
    fn close_gap(&mut self) {
        let Some((since, _)) = self.gap.take() else {
            return;
        };
        let cpu_now = self.clock.read().unwrap_or_else(|| self.clock.latest());
        self.record.cpu_out_ns += cpu_now.saturating_sub(self.cpu_last);
        self.record.wall_out += since.elapsed();
        self.cpu_last = cpu_now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_windows_scale_by_total_over_window_time() {
        // Four 0.1 s windows of 100 events each in a 2 s trace: 2000 events.
        let (est, sd) = estimate(&[100.0; 4], &[0.1; 4], 2.0, 0.8, 0.0, 1.0);
        assert!((est - 2000.0).abs() < 1e-6);
        // No spread between windows: the Poisson floor, (T/W)²·Σx·fpc = 25·400·0.8.
        assert!((sd - (25.0f64 * 400.0 * 0.8).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn spread_between_windows_widens_the_error() {
        let (est, sd) = estimate(&[0.0, 400.0, 0.0, 0.0], &[0.1; 4], 2.0, 0.8, 0.0, 1.0);
        assert!((est - 2000.0).abs() < 1e-6);
        // Σ(x − R·w)² = 3·100² + 300² = 120000; T²·n/(n−1)·ss/W²·fpc, widened for 3 dof.
        let want = (4.0 * 4.0 / 3.0 * 120000.0 / 0.16 * 0.8f64).sqrt() * small_sample_factor(3.0);
        assert!((sd - want).abs() < 1e-6, "{sd} vs {want}");
    }

    #[test]
    fn few_windows_widen_like_students_t() {
        // t quantiles at two-sided 99.73 %: 4.09 at 9 dof, 3.09 at 99 dof (tables).
        assert!((small_sample_factor(9.0) * 3.0 - 4.09).abs() < 0.08);
        assert!((small_sample_factor(99.0) * 3.0 - 3.09).abs() < 0.02);
        assert_eq!(small_sample_factor(0.0), 1.0);
    }

    #[test]
    fn a_busy_target_waits_for_its_budget_and_an_idle_one_does_not() {
        // 3,000 events per CPU-second at 10 µs on one busy core: 30 µs of traps per ms of
        // window. 4.5 ms spent: at 0.5 s of CPU (headroom 0.5 ms) no window fits; at 0.9 s
        // (4.5 ms) a full 150-ms one does; at 0.6 s (1.5 ms) a 50-ms one.
        let per_cpu_ns = 3000.0 / 1e9;
        let at = |own_cpu_ns| window_length(4.5e6, per_cpu_ns, 1.0, 10e3, own_cpu_ns, 0.01);
        assert_eq!(at(0.5e9), None);
        assert_eq!(at(0.9e9), Some(WINDOW));
        let w = at(0.6e9).unwrap();
        assert!((w.as_secs_f64() - 0.05).abs() < 1e-6, "{w:?}");
        // The same target gone idle: its next window costs nothing and opens at once.
        assert_eq!(
            window_length(4.5e6, per_cpu_ns, 0.0, 10e3, 0.5e9, 0.01),
            Some(WINDOW)
        );
        // Over budget already: not even an idle target's window opens.
        assert_eq!(window_length(6e6, per_cpu_ns, 0.0, 10e3, 0.5e9, 0.01), None);
    }
}
