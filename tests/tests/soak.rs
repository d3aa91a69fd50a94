//! Churn soak: `gomemtrace agent` on a node that never stops changing. For
//! `GOMEMTRACE_SOAK_SECS` (600 by default) the agent traces 20 long-lived Go processes
//! (several Go releases) while short-lived ones come and go, four at a time: some exit at
//! once (in the middle of the agent's attach), some run for up to 0.4 s, and every tenth
//! execs into the churn binary of another Go release. Every 10 s the agent's resident
//! memory, descriptors, threads, uprobe links, per-process BPF map entries and metric
//! series are read. Oracles: after the churn, with only the 20 long-lived processes left,
//! every one of those is back at its value before the churn (the links at their level
//! without a duty window open) and no series of a short-lived executable is left (the
//! short-lived processes run executables of their own); the agent's resident memory
//! never goes above its budget; the agent saw every short-lived process (its exec count);
//! and every process, short or long, did its own work (`done N` with N > 0 where it ran).
//! Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    Proc, TempDir, Variant, agent::Agent, copy_executable, fixture, go_versions, latest_go, poll,
    proc_status::status_field, process_alive, require_root, samples,
};

const LONG_LIVED: usize = 20;
const SHORT_AT_ONCE: usize = 4;
/// One short-lived process at most every 0.25 s: 2,400 in 10 minutes.
const LAUNCH_EVERY: Duration = Duration::from_millis(250);
/// The agent's memory budget (docs/AGENT.md); the debug build the tests run holds it too
/// (~41 MiB through a 60-s churn).
const RSS_BUDGET: u64 = 64 << 20;
/// Maps whose entries are per traced process (settings and state), not per event.
const PER_PROCESS_MAPS: [&str; 5] = ["CONFIG", "GC_CONFIG", "GC_STATE", "RT_CONFIG", "RATES"];

fn soak_duration() -> Duration {
    Duration::from_secs(
        std::env::var("GOMEMTRACE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    )
}

/// What is read of the agent at each look.
#[derive(Debug, Clone)]
struct Holdings {
    fds: usize,
    threads: u64,
    /// Not compared for equality: duty windows of the long-lived processes come and go.
    links: f64,
    per_process_entries: f64,
    /// Series labelled with a short-lived process's executable (none without one alive).
    short_series: usize,
}

impl Holdings {
    /// Everything but the links the same.
    fn same_as(&self, other: &Holdings) -> bool {
        (
            self.fds,
            self.threads,
            self.per_process_entries,
            self.short_series,
        ) == (
            other.fds,
            other.threads,
            other.per_process_entries,
            other.short_series,
        )
    }
}

fn holdings(agent: &Agent) -> Result<Holdings> {
    let pid = agent.proc.pid();
    let text = agent.metrics()?;
    let links = samples(&text, "gomemtrace_agent_uprobe_links", &[]);
    let per_process_entries = PER_PROCESS_MAPS
        .iter()
        .flat_map(|map| samples(&text, "gomemtrace_agent_map_entries", &[("map", map)]))
        .sum();
    Ok(Holdings {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
        threads: status_field(pid, "Threads:")?,
        links: *links.first().context("no link gauge")?,
        per_process_entries,
        short_series: text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("/churn-short-"))
            .count(),
    })
}

/// Processes traced now (series are per executable, this gauge per process).
fn processes(agent: &Agent) -> Result<usize> {
    let text = agent.metrics()?;
    let attached = samples(&text, "gomemtrace_agent_attached_processes", &[]);
    Ok(*attached.first().context("no attached-processes gauge")? as usize)
}

/// The churn binary of each release, copied where the agent's filter matches it, under a
/// name of its role: the long-lived and the short-lived processes run executables of their
/// own, so that the short-lived ones' series can be seen to go (a label set's series live
/// as long as a process of it does, and appear lazily: a first stack growth).
fn binaries(dir: &Path, role: &str) -> Result<Vec<PathBuf>> {
    let mut versions = vec![latest_go()];
    let all = go_versions();
    for v in [all.first(), all.get(all.len() / 2)].into_iter().flatten() {
        if !versions.contains(v) {
            versions.push(v.clone());
        }
    }
    versions
        .iter()
        .map(|v| {
            let copy = dir.join(format!("churn-{role}-go{v}"));
            copy_executable(&fixture("churn", v, Variant::Normal)?, &copy)?;
            Ok(copy)
        })
        .collect()
}

/// A small deterministic generator (xorshift) for lifetimes and choices.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn the_agent_through_sustained_churn_keeps_nothing_and_stays_small() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("soak")?;
    let long_exes = binaries(tmp.path(), "long")?;
    let exes = binaries(tmp.path(), "short")?;
    let agent = Agent::start(&format!("{}/churn-*", tmp.path().display()))?;
    let rss = |agent: &Agent| status_field(agent.proc.pid(), "VmRSS:").map(|kib| kib << 10);

    let mut long_lived = Vec::new();
    for i in 0..LONG_LIVED {
        let mut cmd = Command::new(&long_exes[i % long_exes.len()]);
        cmd.arg("-live");
        long_lived.push(Proc::spawn(cmd)?);
    }
    poll(
        "the long-lived processes traced",
        Duration::from_secs(60),
        || Ok((processes(&agent)? == LONG_LIVED).then_some(())),
    )?;
    // The gauges follow at the agent's harvests (every second): the baseline is a reading
    // that the next one, 2 s later, repeats, with the long-lived processes' entries in.
    let mut previous = holdings(&agent)?;
    let baseline = poll(
        "the agent's holdings to settle",
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_secs(2));
            let now = holdings(&agent)?;
            let settled = now.same_as(&previous) && now.per_process_entries > 0.0;
            previous = now.clone();
            Ok(settled.then_some(now))
        },
    )?;
    let baseline_series = process_series(&agent)?;
    ensure!(
        baseline.short_series == 0,
        "short-lived series before any ran: {baseline:?}"
    );
    // The links without a duty window open: the fewest of a few readings (each window is
    // open tens of ms every few seconds).
    let mut baseline_links = baseline.links;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(700));
        baseline_links = baseline_links.min(holdings(&agent)?.links);
    }
    let execs_before = exec_events(&agent)?;
    println!(
        "baseline with {LONG_LIVED} long-lived: {baseline:?}, RSS {} KiB",
        rss(&agent)? >> 10
    );

    let started = Instant::now();
    let mut choices = Choices(0x2545_f491_4f6c_dd1d);
    let mut running: Vec<(Proc, bool)> = Vec::new();
    let (mut launched, mut execs, mut finished) = (0u64, 0u64, 0u64);
    let mut peak_rss = 0;
    let mut next_look = Instant::now();
    let mut next_launch = Instant::now();
    while started.elapsed() < soak_duration() {
        // Reap the finished ones: each did its own work.
        let mut i = 0;
        while i < running.len() {
            if running[i].0.exited() {
                let (mut proc, exec_into) = running.swap_remove(i);
                let done = proc.wait(Duration::from_secs(5))?;
                ensure!(
                    done.code() == 0
                        && done
                            .stdout
                            .lines()
                            .filter(|l| l.starts_with("done "))
                            .count()
                            == 1 + usize::from(exec_into),
                    "a short-lived process failed (exit {}): {} {}",
                    done.code(),
                    done.stdout,
                    done.stderr
                );
                finished += 1;
            } else {
                i += 1;
            }
        }
        while running.len() < SHORT_AT_ONCE && Instant::now() >= next_launch {
            next_launch += LAUNCH_EVERY;
            let exe = &exes[choices.below(exes.len() as u64) as usize];
            // A third exit at once, the rest live up to 0.4 s.
            let ms = if choices.below(3) == 0 {
                0
            } else {
                choices.below(400)
            };
            let mut cmd = Command::new(exe);
            cmd.args(["-ms", &ms.to_string()]);
            let exec_into = choices.below(10) == 0;
            if exec_into {
                let other = &exes[(choices.below(exes.len() as u64) as usize + 1) % exes.len()];
                cmd.arg("-exec").arg(other).args(["-ms", "50"]);
                execs += 1;
            }
            running.push((Proc::spawn(cmd)?, exec_into));
            launched += 1;
        }
        if Instant::now() >= next_look {
            next_look += Duration::from_secs(10);
            let now = rss(&agent)?;
            peak_rss = peak_rss.max(now);
            ensure!(
                now <= RSS_BUDGET,
                "the agent's RSS {} KiB is over its budget after {:?}",
                now >> 10,
                started.elapsed()
            );
            let h = holdings(&agent)?;
            println!(
                "{:>4}s: {launched} launched, RSS {} KiB, {h:?}",
                started.elapsed().as_secs(),
                now >> 10
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for (mut proc, _) in running.drain(..) {
        proc.wait(Duration::from_secs(10))?;
        finished += 1;
    }
    ensure!(
        launched >= 1000 || soak_duration() < Duration::from_secs(600),
        "only {launched} short-lived processes in {:?}",
        soak_duration()
    );
    poll(
        "only the long-lived processes traced",
        Duration::from_secs(30),
        || Ok((processes(&agent)? == LONG_LIVED).then_some(())),
    )?;
    // The agent saw each one (an exec each, and one more for each exec into another).
    let expected = (launched + execs) as f64;
    poll(
        "the agent to count every exec",
        Duration::from_secs(10),
        || Ok((exec_events(&agent)? - execs_before >= expected).then_some(())),
    )
    .with_context(|| {
        format!(
            "{launched} launched, {execs} exec'ed further; the agent saw {:?}",
            exec_events(&agent).map(|n| n - execs_before)
        )
    })?;
    let after = poll(
        "everything back at the baseline",
        Duration::from_secs(30),
        || {
            let h = holdings(&agent)?;
            Ok((h.same_as(&baseline) && h.links <= baseline_links).then_some(h))
        },
    )
    .with_context(|| {
        let now = process_series(&agent).unwrap_or_default();
        format!(
            "baseline {baseline:?} ({baseline_links} links), now {:?}; series gone: {:?}; series new: {:?}",
            holdings(&agent).ok(),
            baseline_series.difference(&now).collect::<Vec<_>>(),
            now.difference(&baseline_series).collect::<Vec<_>>()
        )
    })?;
    for (i, p) in long_lived.iter().enumerate() {
        ensure!(
            process_alive(p.pid()),
            "long-lived process {i} died: {}",
            p.stderr_text()
        );
    }
    println!(
        "{:?} of churn: {launched} short-lived processes ({execs} exec'ed into another), \
         {finished} reaped; agent peak RSS {} KiB (budget {} KiB); after: {after:?}",
        started.elapsed(),
        peak_rss >> 10,
        RSS_BUDGET >> 10
    );
    Ok(())
}

/// The series labelled with a traced executable (name and labels, without the value).
fn process_series(agent: &Agent) -> Result<std::collections::BTreeSet<String>> {
    Ok(agent
        .metrics()?
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("exe=\""))
        .filter_map(|l| Some(l.rsplit_once(' ')?.0.to_string()))
        .collect())
}

fn exec_events(agent: &Agent) -> Result<f64> {
    let text = agent.metrics()?;
    samples(
        &text,
        "gomemtrace_agent_process_events_total",
        &[("kind", "exec")],
    )
    .first()
    .copied()
    .context("no exec event counter")
}
