//! `gomemtrace goroutines`: goroutine creation (`runtime.newproc1` at its RET) and exit
//! (`runtime.gdestroy`, `runtime.goexit0` before Go 1.22) → live goroutines by creation
//! site with the creating stack, their ages, a count timeline, and leak suspects (sites
//! whose live count keeps growing). Goroutines that existed before attach (`-p`) were not
//! seen being created: they are counted only when they exit, as unknown-creation.

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
    time::{Duration, Instant},
};

use gomemtrace_common::{
    GOROUTINE_EXIT_PROGRAM, GoroutineLive, GoroutineLiveKey, NEWPROC1_RET_PROGRAM,
    RT_FLAG_CREATION_STACKS, RtCounter, SiteKey, SiteStats,
};
use gomemtrace_report::model::Location;
use serde::Serialize;

use super::{
    Analysed, Config, FrameJson, ReportFormat, TargetJson, analyse, duration, end_reason, frames,
};
use crate::{
    bpf::{Bpf, RtCounters, RtProbes},
    engine::{self, End, ExeMappings, Target, TargetConfig, monotonic_ns},
    symbolizer::Symbolizer,
};
use gomemtrace_report::{WeightedProfile, WeightedSample, to_weighted_pprof};

pub const SCHEMA: &str = "gomemtrace.goroutines/v1";

/// How often the per-site live counts are sampled for the timeline.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Timeline points kept; beyond this every other point is dropped.
const MAX_POINTS: usize = 4096;

#[derive(Debug, Clone, Copy, Serialize)]
struct Point {
    t_ns: u64,
    /// Goroutines created since attach and not exited.
    live: u64,
    created: u64,
    exited: u64,
    exited_unknown_creation: u64,
}

#[derive(Debug, Serialize)]
struct Ages {
    min_ns: u64,
    median_ns: u64,
    max_ns: u64,
}

#[derive(Debug, Serialize)]
struct Site {
    /// The `go` statement: the function and line of `gopc`.
    creation: FrameJson,
    start_function: String,
    /// Started by the runtime for itself (start function in package runtime, except
    /// `runtime.main`): not counted by `runtime.NumGoroutine`.
    system: bool,
    created: u64,
    exited: u64,
    live: u64,
    /// Mean lifetime of the exited ones.
    mean_lifetime_ns: Option<u64>,
    live_ages: Option<Ages>,
    leak_suspect: bool,
    /// Live count at each change: (ns since attach, live).
    live_changes: Vec<(u64, u64)>,
    /// The creating goroutine's stack, the `go` statement first (empty: not recorded —
    /// `--no-stacks`, or created by the runtime on its system stack).
    stack: Vec<FrameJson>,
}

#[derive(Debug, Serialize)]
struct Bucket {
    /// Upper bound (exclusive) in ns; null for the last bucket.
    below_ns: Option<u64>,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    target: TargetJson,
    duration_ns: u64,
    end: &'static str,
    creation_stacks: bool,
    created: u64,
    exited: u64,
    /// Created since attach and not exited at the end.
    live: u64,
    /// Of `live`: the program's own goroutines (what `runtime.NumGoroutine` counts, when
    /// traced from launch) and the runtime's.
    live_user: u64,
    live_system: u64,
    /// Exits of goroutines created before attach (their creation is unknown; they are in
    /// no site and not in `live`). Always 0 when launched.
    exited_unknown_creation: u64,
    /// Whether goroutines may have existed before tracing began (`-p`): those still alive
    /// are not counted anywhere.
    unknown_before_attach: bool,
    sites: Vec<Site>,
    /// Indexes into `sites`.
    leak_suspects: Vec<usize>,
    live_age_histogram: Vec<Bucket>,
    timeline: Vec<Point>,
    counters: BTreeMap<&'static str, u64>,
}

/// `creation_stacks`: record each creating goroutine's stack, not only the `go` statement.
pub fn run(args: &Config, creation_stacks: bool) -> anyhow::Result<ExitCode> {
    let stacks = creation_stacks;
    let run = args.run.clone();
    let mut target = engine::open(&run.target)?;
    let flags = if stacks { RT_FLAG_CREATION_STACKS } else { 0 };
    let analysed = analyse(&target, flags)?;
    let (end, collected, mappings) = trace(&run, &mut target, &analysed)?;
    let mut sym = mappings.symbolizer(&analysed.go.binary, &target.exe_path)?;
    let about = TargetJson::new(&target, &analysed.go, analysed.offsets_source);
    let (report, samples) = build(&collected, &mut sym, about, end, stacks);
    let bytes = render(&report, &samples, &sym.mappings, args.format, args.top)?;
    engine::write_report(run.output.as_deref(), &bytes)?;
    if !run.quiet {
        eprintln!(
            "gomemtrace: {}: {} goroutines created, {} exited, {} live ({} user), {} leak suspects",
            end_reason(end),
            report.created,
            report.exited,
            report.live,
            report.live_user,
            report.leak_suspects.len()
        );
    }
    engine::finish(&mut target, end)
}

/// What the probes and the timeline gathered, read once the trace ended.
struct Collected {
    sites: Vec<(SiteKey, SiteStats)>,
    live: Vec<(GoroutineLiveKey, GoroutineLive)>,
    stack_pcs: HashMap<u64, Vec<u64>>,
    counters: RtCounters,
    /// Per site, (time, live count) at each change.
    changes: HashMap<SiteKey, Vec<(u64, u64)>>,
    timeline: Vec<Point>,
    /// CLOCK_MONOTONIC ns at release and at the end.
    started: u64,
    ended: u64,
}

/// Attaches the creation and exit probes to `target`, releases it, samples the sites and
/// the count timeline until the end, and reads what the probes gathered.
fn trace(
    run: &TargetConfig,
    target: &mut Target,
    analysed: &Analysed,
) -> anyhow::Result<(End, Collected, ExeMappings)> {
    let launched = target.child.is_some();
    let mut probes = RtProbes::new(
        &Bpf::load()?,
        &[NEWPROC1_RET_PROGRAM, GOROUTINE_EXIT_PROGRAM],
    )?;
    probes.configure(target.pid, &analysed.config)?;
    analysed.attach_rets(
        &mut probes,
        target,
        "runtime.newproc1",
        NEWPROC1_RET_PROGRAM,
    )?;
    // gdestroy (1.22+) also ends coroutine goroutines (iter.Pull), which skip goexit0.
    let exit_fn = if analysed.go.binary.function("runtime.gdestroy").is_some() {
        "runtime.gdestroy"
    } else {
        "runtime.goexit0"
    };
    analysed.attach_entry(&mut probes, target, exit_fn, GOROUTINE_EXIT_PROGRAM)?;
    let mut mappings = ExeMappings::read(target.pid, &target.exe_link)?;
    if !run.quiet {
        eprintln!(
            "gomemtrace: tracing goroutines of pid {} ({}, newproc1 RET + {exit_fn}){}",
            target.pid,
            analysed.go.binary.version_string(),
            if launched {
                ""
            } else {
                "; goroutines that already exist are unknown until they exit"
            }
        );
    }
    let started = monotonic_ns();
    let started_at = Instant::now();
    target.release()?;

    let mut timeline: Vec<Point> = Vec::new();
    let mut stride = 1u64;
    let mut ticks = 0u64;
    let mut changes: HashMap<SiteKey, Vec<(u64, u64)>> = HashMap::new();
    let mut sample = |probes: &RtProbes, timeline: &mut Vec<Point>| -> anyhow::Result<()> {
        let now = monotonic_ns().saturating_sub(started);
        for (key, stats) in probes.sites()? {
            let live = stats.created.saturating_sub(stats.exited);
            let list = changes.entry(key).or_default();
            if list.last().is_none_or(|&(_, l)| l != live) {
                list.push((now, live));
            }
        }
        ticks += 1;
        if ticks.is_multiple_of(stride) {
            let c = probes.counters()?;
            let created = c[RtCounter::Created as usize];
            let exited = c[RtCounter::Exited as usize];
            timeline.push(Point {
                t_ns: now,
                live: created.saturating_sub(exited),
                created,
                exited,
                exited_unknown_creation: c[RtCounter::ExitedUnknown as usize],
            });
            if timeline.len() >= MAX_POINTS {
                let mut i = 0;
                timeline.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                stride *= 2;
            }
        }
        Ok(())
    };
    let end = engine::run_until_end(run.duration, started_at, target, SAMPLE_EVERY, |t| {
        mappings.refresh(t.pid);
        sample(&probes, &mut timeline)?;
        Ok(None)
    })?;
    sample(&probes, &mut timeline)?;
    let ended = monotonic_ns();
    let sites = probes.sites()?;
    let live = probes.live()?;
    let stack_pcs = probes.stacks(sites.iter().map(|(k, _)| k.stack))?;
    let counters = probes.counters()?;
    let collected = Collected {
        sites,
        live,
        stack_pcs,
        counters,
        changes,
        timeline,
        started,
        ended,
    };
    Ok((end, collected, mappings))
}

/// The report's model of what the target's goroutines did, and one pprof sample per
/// creation site, in the sites' order.
fn build(
    c: &Collected,
    sym: &mut Symbolizer<'_>,
    target: TargetJson,
    end: End,
    creation_stacks: bool,
) -> (Report, Vec<WeightedSample>) {
    let pid = target.pid;
    // Attached to a running process: goroutines may have existed before.
    let unknown_before_attach = target.mode == "pid";
    let mut ages_by_site: HashMap<SiteKey, Vec<u64>> = HashMap::new();
    let mut all_ages = Vec::new();
    for (key, live) in &c.live {
        if key.tgid != pid {
            continue;
        }
        let age = c.ended.saturating_sub(live.created_ns);
        ages_by_site.entry(live.site).or_default().push(age);
        all_ages.push(age);
    }
    let mut changes = c.changes.clone();
    let mut sites = Vec::new();
    let mut samples = Vec::new();
    let (mut live_user, mut live_system) = (0, 0);
    for (key, stats) in &c.sites {
        if key.tgid != pid {
            continue;
        }
        let live = stats.created.saturating_sub(stats.exited);
        let creation_loc = sym.location(key.gopc, true);
        let creation = creation_loc
            .frames
            .first()
            .map(|f| FrameJson {
                function: f.function.clone(),
                file: f.file.clone(),
                line: f.line,
            })
            .unwrap_or(FrameJson {
                function: format!("{:#x}", key.gopc),
                file: None,
                line: 0,
            });
        let start_function = sym
            .function_name(key.start_pc)
            .unwrap_or_else(|| format!("{:#x}", key.start_pc));
        let system = start_function.starts_with("runtime.") && start_function != "runtime.main";
        if system {
            live_system += live;
        } else {
            live_user += live;
        }
        let mut pcs = c.stack_pcs.get(&key.stack).cloned().unwrap_or_default();
        // From Go 1.21 systemstack keeps a frame of its own, so the walk starts in
        // runtime.newproc: the creating stack begins at the `go` statement (gopc).
        if let Some(at) = pcs.iter().position(|&pc| pc == key.gopc) {
            pcs.drain(..at);
        }
        let mut ages = ages_by_site.remove(key).unwrap_or_default();
        ages.sort_unstable();
        let live_changes = changes.remove(key).unwrap_or_default();
        let mut stack_locs: Vec<Location> = pcs.iter().map(|&pc| sym.location(pc, true)).collect();
        if stack_locs.is_empty() {
            stack_locs.push(creation_loc.clone());
        }
        samples.push(WeightedSample {
            stack: stack_locs,
            values: vec![live as i64, stats.created as i64, stats.exited as i64],
            labels: vec![
                ("start_function".into(), start_function.clone()),
                ("system".into(), system.to_string()),
            ],
        });
        sites.push(Site {
            creation,
            start_function,
            system,
            created: stats.created,
            exited: stats.exited,
            live,
            mean_lifetime_ns: (stats.exited > 0).then(|| stats.lifetime_ns / stats.exited),
            live_ages: (!ages.is_empty()).then(|| Ages {
                min_ns: ages[0],
                median_ns: ages[ages.len() / 2],
                max_ns: ages[ages.len() - 1],
            }),
            leak_suspect: leak_suspect(&live_changes, live),
            live_changes,
            stack: frames(sym, &pcs, true),
        });
    }
    // Most live first, then most created.
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&sites[a], &sites[b]);
        (b.live, b.created).cmp(&(a.live, a.created))
    });
    let mut sorted_sites = Vec::with_capacity(sites.len());
    let mut sorted_samples = Vec::with_capacity(samples.len());
    let mut sites_opt: Vec<Option<Site>> = sites.into_iter().map(Some).collect();
    let mut samples_opt: Vec<Option<WeightedSample>> = samples.into_iter().map(Some).collect();
    for i in order {
        sorted_sites.extend(sites_opt[i].take());
        sorted_samples.extend(samples_opt[i].take());
    }
    let sites = sorted_sites;
    let leak_suspects = sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.leak_suspect)
        .map(|(i, _)| i)
        .collect();
    let counters = &c.counters;
    let created = counters[RtCounter::Created as usize];
    let exited = counters[RtCounter::Exited as usize];
    let report = Report {
        schema: SCHEMA,
        target,
        duration_ns: c.ended.saturating_sub(c.started),
        end: end_reason(end),
        creation_stacks,
        created,
        exited,
        live: created.saturating_sub(exited),
        live_user,
        live_system,
        exited_unknown_creation: counters[RtCounter::ExitedUnknown as usize],
        unknown_before_attach,
        sites,
        leak_suspects,
        live_age_histogram: histogram(&all_ages),
        timeline: c.timeline.clone(),
        counters: RtCounter::ALL
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    RtCounter::StackCopies
                        | RtCounter::StackEventsSent
                        | RtCounter::DropStackRingFull
                        | RtCounter::StackRetWithoutEntry
                        | RtCounter::PendingNotRemembered
                        | RtCounter::NoStackTotals
                )
            })
            .map(|&c| (c.name(), counters[c as usize]))
            .collect(),
    };
    (report, sorted_samples)
}

/// The report in `format`: json, text (`top` rows per table) or pprof (`samples`).
fn render(
    report: &Report,
    samples: &[WeightedSample],
    mappings: &[gomemtrace_report::model::Mapping],
    format: ReportFormat,
    top: usize,
) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(report)?;
            s.push('\n');
            s.into_bytes()
        }
        ReportFormat::Text => text(report, top).into_bytes(),
        ReportFormat::Pprof => to_weighted_pprof(&WeightedProfile {
            sample_types: &[
                ("goroutines", "count"),
                ("created", "count"),
                ("exited", "count"),
            ],
            default_sample_type: 0,
            samples,
            mappings,
            comments: &[format!(
                "gomemtrace goroutines: live = created since attach and not exited{}",
                if report.unknown_before_attach {
                    "; goroutines that existed before attach are not counted"
                } else {
                    ""
                }
            )],
            duration_ns: report.duration_ns as i64,
        }),
    })
}

/// A site whose live count keeps growing: at least 3 rises, falls amounting to at most a
/// tenth of the rises, and at least 3 alive at the end. A heuristic (docs/STACKS-GOROUTINES.md):
/// worker pools and request goroutines go up and down; leaks only go up.
fn leak_suspect(changes: &[(u64, u64)], live_end: u64) -> bool {
    let mut rises = 0u64;
    let (mut up, mut down) = (0u64, 0u64);
    for w in changes.windows(2) {
        let (a, b) = (w[0].1, w[1].1);
        if b > a {
            rises += 1;
            up += b - a;
        } else {
            down += a - b;
        }
    }
    rises >= 3 && down * 10 <= up && live_end >= 3
}

fn histogram(ages: &[u64]) -> Vec<Bucket> {
    const BOUNDS: [u64; 6] = [
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
        60_000_000_000,
    ];
    let mut counts = [0u64; BOUNDS.len() + 1];
    for &a in ages {
        let i = BOUNDS.iter().position(|&b| a < b).unwrap_or(BOUNDS.len());
        counts[i] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &count)| Bucket {
            below_ns: BOUNDS.get(i).copied(),
            count,
        })
        .collect()
}

fn text(r: &Report, top: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Goroutines of pid {} ({}), {}: {} created, {} exited, {} live ({} user, {} runtime)",
        r.target.pid,
        r.target.go_version,
        duration(r.duration_ns),
        r.created,
        r.exited,
        r.live,
        r.live_user,
        r.live_system
    );
    if r.unknown_before_attach {
        let _ = writeln!(
            s,
            "Attached to a running process: goroutines created before attach are unknown \
             (not counted as live); {} of them exited during the trace.",
            r.exited_unknown_creation
        );
    }
    let _ = writeln!(s, "\nLeak suspects (live count kept growing):");
    if r.leak_suspects.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for &i in &r.leak_suspects {
        let site = &r.sites[i];
        let _ = writeln!(
            s,
            "  {} live, {} created at {} ({}:{}), start {}",
            site.live,
            site.created,
            site.creation.function,
            site.creation.file.as_deref().unwrap_or("?"),
            site.creation.line,
            site.start_function
        );
        for f in site.stack.iter().skip(1).take(6) {
            let _ = writeln!(
                s,
                "      ← {} ({}:{})",
                f.function,
                f.file.as_deref().unwrap_or("?"),
                f.line
            );
        }
    }
    let _ = writeln!(s, "\nBy creation site (most live first):");
    let _ = writeln!(
        s,
        "  {:>6}  {:>7}  {:>7}  {:>10}  {:>10}  creation → start function",
        "live", "created", "exited", "oldest", "mean life"
    );
    for site in r.sites.iter().take(top) {
        let _ = writeln!(
            s,
            "  {:>6}  {:>7}  {:>7}  {:>10}  {:>10}  {} ({}:{}) → {}{}",
            site.live,
            site.created,
            site.exited,
            site.live_ages
                .as_ref()
                .map_or("-".into(), |a| duration(a.max_ns)),
            site.mean_lifetime_ns.map_or("-".into(), duration),
            site.creation.function,
            site.creation
                .file
                .as_deref()
                .and_then(|f| f.rsplit('/').next())
                .unwrap_or("?"),
            site.creation.line,
            site.start_function,
            if site.system { " [runtime]" } else { "" }
        );
    }
    if r.sites.len() > top {
        let _ = writeln!(s, "  ... {} more sites", r.sites.len() - top);
    }
    let _ = writeln!(s, "\nAges of live goroutines:");
    let labels = ["<1ms", "<10ms", "<100ms", "<1s", "<10s", "<1m", "≥1m"];
    for (b, label) in r.live_age_histogram.iter().zip(labels) {
        let _ = writeln!(s, "  {label:>6}  {}", b.count);
    }
    if let (Some(first), Some(last)) = (r.timeline.first(), r.timeline.last()) {
        let max = r.timeline.iter().map(|p| p.live).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "\nLive over time: {} at +{}, max {max}, {} at +{} ({} samples in --format json)",
            first.live,
            duration(first.t_ns),
            last.live,
            duration(last.t_ns),
            r.timeline.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_suspects_only_grow() {
        let grow = [(0, 5), (1, 10), (2, 15), (3, 20), (4, 25)];
        assert!(leak_suspect(&grow, 25));
        let pool = [(0, 5), (1, 10), (2, 3), (3, 9), (4, 2)];
        assert!(!leak_suspect(&pool, 2));
        let constant = [(0, 1)];
        assert!(!leak_suspect(&constant, 1));
    }

    #[test]
    fn histogram_buckets_by_decade() {
        let h = histogram(&[500_000, 5_000_000, 2_000_000_000, 100_000_000_000]);
        let counts: Vec<u64> = h.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 1, 0, 0, 1, 0, 1]);
    }
}
