//! `gomemtrace gctrace` against the runtime's own account of the same run, on every Go
//! release: the gc fixture runs with `GODEBUG=gctrace=1` under `gomemtrace gctrace`, so
//! the runtime prints its lines on stderr while gomemtrace prints its own (measured from
//! outside) to a file; at exit the fixture prints its MemStats and runtime/metrics.
//!
//! gomemtrace never sets GODEBUG: the test sets it in the environment that the launched
//! fixture inherits, only to have the oracle lines. Needs root.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gomemtrace_tests::{
    TempDir, Variant, fixture, for_every_version, gomemtrace_command, latest_go, require_root, run,
};

/// Pause agreement: within 10% or 50 µs, whichever is looser.
fn pause_agrees(ours_ns: f64, theirs_ns: f64) -> bool {
    (ours_ns - theirs_ns).abs() <= (0.10 * theirs_ns).max(50_000.0)
}

/// One `gc N @Ts P%: a+b+c ms clock, ... A->B->C MB, D MB goal, ...` line; `None` for `?`.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    number: Option<u64>,
    clock_ms: [Option<f64>; 3],
    heap_mb: [Option<u64>; 3],
    goal_mb: Option<u64>,
    procs: Option<u64>,
    forced: bool,
    text: String,
}

impl Line {
    fn parse(text: &str) -> Result<Line> {
        let bad = || format!("not a gctrace line: {text}");
        let num = |s: &str| -> Result<Option<u64>> {
            Ok(match s {
                "?" => None,
                s => Some(s.parse().with_context(bad)?),
            })
        };
        let ms = |s: &str| -> Result<Option<f64>> {
            Ok(match s {
                "?" => None,
                s => Some(s.parse().with_context(bad)?),
            })
        };
        let rest = text.strip_prefix("gc ").with_context(bad)?;
        let (number, rest) = rest.split_once(' ').with_context(bad)?;
        let (_, rest) = rest.split_once(": ").with_context(bad)?;
        let (clock, rest) = rest.split_once(" ms clock, ").with_context(bad)?;
        let clock: Vec<&str> = clock.split('+').collect();
        ensure!(clock.len() == 3, "{}", bad());
        let (_, rest) = rest.split_once(" ms cpu, ").with_context(bad)?;
        let (heap, rest) = rest.split_once(" MB, ").with_context(bad)?;
        let heap: Vec<&str> = heap.split("->").collect();
        ensure!(heap.len() == 3, "{}", bad());
        let (goal, rest) = rest.split_once(" MB goal, ").with_context(bad)?;
        let procs = rest
            .split(", ")
            .find_map(|f| {
                f.strip_suffix(" P")
                    .or_else(|| f.strip_suffix(" P (forced)"))
            })
            .with_context(bad)?;
        Ok(Line {
            number: num(number)?,
            clock_ms: [ms(clock[0])?, ms(clock[1])?, ms(clock[2])?],
            heap_mb: [num(heap[0])?, num(heap[1])?, num(heap[2])?],
            goal_mb: num(goal)?,
            procs: num(procs)?,
            forced: text.ends_with(" (forced)"),
            text: text.to_string(),
        })
    }

    /// Sum of the two stop-the-world clock parts, in ns.
    fn pause_ns(&self) -> Option<f64> {
        Some((self.clock_ms[0]? + self.clock_ms[2]?) * 1e6)
    }
}

fn gc_lines(text: &str) -> Result<Vec<Line>> {
    text.lines()
        .filter(|l| l.starts_with("gc "))
        .map(Line::parse)
        .collect()
}

/// What the fixture printed at exit.
#[derive(Debug, Default)]
struct FixtureReport {
    metrics_cycles: u64,
    metrics_pause_seconds: f64,
    numgc: u64,
    pause_total_ns: u64,
    /// Cycle → `MemStats.PauseNs`.
    pause_ns: BTreeMap<u64, u64>,
}

impl FixtureReport {
    fn parse(stdout: &str) -> Result<FixtureReport> {
        let mut r = FixtureReport::default();
        for line in stdout.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["metrics-cycles", n] => r.metrics_cycles = n.parse()?,
                ["metrics-pause-seconds", s] => r.metrics_pause_seconds = s.parse()?,
                ["numgc", n] => r.numgc = n.parse()?,
                ["pause-total-ns", n] => r.pause_total_ns = n.parse()?,
                ["pause-ns", c, n] => {
                    r.pause_ns.insert(c.parse()?, n.parse()?);
                }
                _ => {}
            }
        }
        ensure!(r.numgc > 0, "fixture printed no report:\n{stdout}");
        Ok(r)
    }
}

/// One traced run of the gc fixture.
struct Run {
    /// gomemtrace's lines (text) or objects (json).
    ours: String,
    /// The runtime's own gctrace lines.
    runtime: Vec<Line>,
    fixture: FixtureReport,
    stderr: String,
}

/// The fixture's GOMEMLIMIT: 1 GiB.
const GOMEMLIMIT: i64 = 1 << 30;

fn trace(version: &str, variant: Variant, format: &str) -> Result<Run> {
    let bin = fixture("gc", version, variant)?;
    let tmp = TempDir::new(&format!("gctrace-{version}-{}", variant.name()))?;
    let out_path = tmp.join("gctrace.out");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["gctrace", "--format", format, "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(&bin)
        // Inherited by the launched fixture: the runtime's own lines, the oracle.
        .env("GODEBUG", "gctrace=1")
        // Far above the fixture's heap (no effect on its cycles); read back from the
        // runtime's gcController in json.
        .env("GOGC", "100")
        .env("GOMEMLIMIT", GOMEMLIMIT.to_string());
    let finished = run(cmd, Duration::from_secs(120))?;
    ensure!(
        finished.code() == 0,
        "gomemtrace gctrace exited {} for go{version} {}:\n{}",
        finished.code(),
        variant.name(),
        finished.stderr
    );
    Ok(Run {
        ours: read(&out_path)?,
        runtime: gc_lines(&finished.stderr)?,
        fixture: FixtureReport::parse(&finished.stdout)?,
        stderr: finished.stderr,
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Compares gomemtrace's text lines with the runtime's; returns the problems found and
/// the worst pause difference in µs.
fn compare_text(run: &Run, heap_measured: bool) -> Result<(Vec<String>, f64)> {
    let ours = gc_lines(&run.ours)?;
    let mut problems = Vec::new();
    let theirs = &run.runtime;
    let numbers = |lines: &[Line]| lines.iter().map(|l| l.number).collect::<Vec<_>>();
    if numbers(&ours) != numbers(theirs) {
        problems.push(format!(
            "cycle numbers differ: ours {:?}, runtime {:?}",
            numbers(&ours),
            numbers(theirs)
        ));
    }
    if theirs.len() as u64 != run.fixture.numgc || run.fixture.metrics_cycles != run.fixture.numgc {
        problems.push(format!(
            "runtime lines {}, MemStats.NumGC {}, /gc/cycles/total {}",
            theirs.len(),
            run.fixture.numgc,
            run.fixture.metrics_cycles
        ));
    }
    let mut worst_us: f64 = 0.0;
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        let (Some(op), Some(tp)) = (o.pause_ns(), t.pause_ns()) else {
            problems.push(format!(
                "no pause:\n  ours    {}\n  runtime {}",
                o.text, t.text
            ));
            continue;
        };
        worst_us = worst_us.max((op - tp).abs() / 1e3);
        if !pause_agrees(op, tp) {
            problems.push(format!(
                "pause {:.0} µs vs runtime {:.0} µs:\n  ours    {}\n  runtime {}",
                op / 1e3,
                tp / 1e3,
                o.text,
                t.text
            ));
        }
        // Go 1.19 race: runtime.GC's gcStart for the next cycle can set work.userForced
        // before this cycle's line is printed (the world is already running), so the
        // runtime marks the cycle before a forced one "(forced)" too. gomemtrace reads the
        // flag with the world stopped, and takes gcStart's trigger.
        let leaked_force =
            t.forced && !o.forced && theirs.get(i + 1).is_some_and(|next| next.forced);
        if o.forced != t.forced && !leaked_force {
            problems.push(format!(
                "forced differs:\n  ours    {}\n  runtime {}",
                o.text, t.text
            ));
        }
        let within_1mb = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => a.abs_diff(b) <= 1,
            _ => false,
        };
        if heap_measured {
            let heap_ok = (0..3).all(|i| within_1mb(o.heap_mb[i], t.heap_mb[i]))
                && within_1mb(o.goal_mb, t.goal_mb)
                && o.procs == t.procs;
            if !heap_ok {
                problems.push(format!(
                    "heap/goal/P differ:\n  ours    {}\n  runtime {}",
                    o.text, t.text
                ));
            }
        } else if o.heap_mb.iter().any(Option::is_some) || o.goal_mb.is_some() {
            problems.push(format!("heap should be ? here: {}", o.text));
        }
    }
    Ok((problems, worst_us))
}

fn check_text(version: &str, variant: Variant, heap_measured: bool) -> Result<String> {
    let run = trace(version, variant, "text")?;
    let (problems, worst_us) = compare_text(&run, heap_measured)?;
    if !problems.is_empty() {
        bail!(
            "go{version} {}: {}\n--- gomemtrace:\n{}--- stderr:\n{}",
            variant.name(),
            problems.join("\n"),
            run.ours,
            run.stderr
        );
    }
    Ok(format!(
        "go{version} {}: {} cycles agree, worst pause difference {worst_us:.0} µs",
        variant.name(),
        run.runtime.len()
    ))
}

/// The same cycle numbers as the runtime, the same pauses (10% / 50 µs), the same heap
/// sizes and goal (1 MB): every release, unstripped.
#[test]
fn lines_match_the_runtimes_own() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check_text(v, Variant::Normal, true));
}

/// Stripped binaries: the cycle numbers (counted from launch) and pauses still match; the
/// heap fields are `?` (no symbols to find the runtime's globals).
#[test]
fn stripped_lines_have_pauses_and_no_heap() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check_text(v, Variant::Stripped, false));
}

/// PIE: the globals are read at their relocated addresses.
#[test]
fn pie_lines_match_the_runtimes_own() {
    if !require_root() {
        return;
    }
    println!("{}", check_text(&latest_go(), Variant::Pie, true).unwrap());
}

/// json: each cycle's measured pause against the runtime's `MemStats.PauseNs` of that
/// cycle (which counts every stop of the cycle), the total against `PauseTotalNs`, and the
/// cycle count against `NumGC` and `/gc/cycles/total:gc-cycles`; the pause histogram of
/// runtime/metrics (bucket midpoints, so ±15%) against the total.
#[test]
fn json_pauses_match_memstats_and_metrics() {
    if !require_root() {
        return;
    }
    for_every_version(|v| {
        let run = trace(v, Variant::Normal, "json")?;
        let cycles: Vec<serde_json::Value> = run
            .ours
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("gomemtrace's json lines")?;
        let f = &run.fixture;
        let mut problems = Vec::new();
        if cycles.len() as u64 != f.numgc || f.metrics_cycles != f.numgc {
            problems.push(format!(
                "{} cycles traced, NumGC {}, /gc/cycles/total {}",
                cycles.len(),
                f.numgc,
                f.metrics_cycles
            ));
        }
        let mut total = 0u64;
        let mut worst_us: f64 = 0.0;
        for c in &cycles {
            let number = c["number"].as_u64().context("json cycle number")?;
            let ours = c["pause_ns"].as_u64().context("json pause_ns")?;
            total += ours;
            let Some(&theirs) = f.pause_ns.get(&number) else {
                problems.push(format!("cycle {number}: not in MemStats.PauseNs"));
                continue;
            };
            worst_us = worst_us.max(ours.abs_diff(theirs) as f64 / 1e3);
            if !pause_agrees(ours as f64, theirs as f64) {
                problems.push(format!(
                    "cycle {number}: pause {ours} ns, MemStats.PauseNs {theirs} ns ({c})"
                ));
            }
            if c["gomemlimit"].as_i64() != Some(GOMEMLIMIT) || c["gogc"].as_i64() != Some(100) {
                problems.push(format!(
                    "cycle {number}: gomemlimit {} / gogc {}, the fixture ran with GOMEMLIMIT={GOMEMLIMIT} GOGC=100",
                    c["gomemlimit"], c["gogc"]
                ));
            }
            if c["runtime_pause_ns"].as_u64() != Some(theirs) {
                problems.push(format!(
                    "cycle {number}: work.pauseNS read {:?}, MemStats.PauseNs {theirs}",
                    c["runtime_pause_ns"]
                ));
            }
        }
        let n = cycles.len().max(1) as f64;
        let total_ok = (total as f64 - f.pause_total_ns as f64).abs()
            <= (0.10 * f.pause_total_ns as f64).max(50_000.0 * n);
        if !total_ok {
            problems.push(format!(
                "total pause {total} ns, MemStats.PauseTotalNs {}",
                f.pause_total_ns
            ));
        }
        let hist_ns = f.metrics_pause_seconds * 1e9;
        if (hist_ns - total as f64).abs() > 0.15 * total as f64 {
            problems.push(format!(
                "total pause {total} ns, runtime/metrics pause histogram ≈ {hist_ns:.0} ns"
            ));
        }
        ensure!(
            problems.is_empty(),
            "go{v}: {}\n--- gomemtrace:\n{}",
            problems.join("\n"),
            run.ours
        );
        Ok(format!(
            "go{v}: {} cycles, total pause {total} ns vs PauseTotalNs {} ns, worst cycle \
             difference {worst_us:.0} µs",
            cycles.len(),
            f.pause_total_ns
        ))
    });
}

#[test]
fn parses_runtime_and_unmeasured_lines() {
    let l = Line::parse(
        "gc 21 @0.350s 16%: 0.020+9.2+0.006 ms clock, 0.041+0/0.041/9.2+0.012 ms cpu, \
         40->40->22 MB, 64 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)",
    )
    .unwrap();
    assert_eq!(l.number, Some(21));
    assert_eq!(l.heap_mb, [Some(40), Some(40), Some(22)]);
    assert_eq!(l.goal_mb, Some(64));
    assert_eq!(l.procs, Some(2));
    assert!(l.forced);
    assert!((l.pause_ns().unwrap() - 26_000.0).abs() < 1.0);
    let q = Line::parse(
        "gc 3 @0.010s ?%: 0.025+1.5+0.040 ms clock, ?+?/?/?+? ms cpu, ?->?->? MB, ? MB goal, \
         ? MB stacks, ? MB globals, ? P",
    )
    .unwrap();
    assert_eq!(q.heap_mb, [None; 3]);
    assert_eq!(q.procs, None);
    assert!(!q.forced);
}
