//! Duty-cycled mode (`--mode duty`, the `auto` choice where the heap sampler is compiled
//! out): on the latest Go and an old one (1.19), the steady fixture allocates at a known
//! rate at two sites for a few seconds; gomemtrace's scaled per-site estimates must lie
//! within 3 of their reported standard errors of the fixture's own counts, the probes must
//! have been attached for only part of the run, and the overhead estimate must respect the
//! budget — checked also against the fixture's own CPU time (getrusage). The 3-sigma bound
//! is judged on runs of at least 8 windows (their spread is the error's estimate); a
//! loaded machine, whose budget opens fewer, gets a run three times as long (CI, a fuzzing
//! campaign beside it: Go 1.27's allocSmall read 15% of the truth with a standard error
//! larger than the estimate).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{TempDir, Variant, fixture, gomemtrace_command, require_root, run};
use serde::Deserialize;

const BUDGET_PERCENT: f64 = 1.0;
const K_SIGMA: f64 = 3.0;
const SITES: [(&str, u64); 2] = [("main.allocSmall", 64), ("main.allocBuffers", 512)];

#[derive(Deserialize)]
struct Oracle {
    cpu_ns: u64,
    sites: BTreeMap<String, OracleSite>,
}

#[derive(Deserialize)]
struct OracleSite {
    objects: u64,
    bytes: u64,
}

#[derive(Deserialize)]
struct JsonReport {
    mode: String,
    duration_ns: u64,
    samples: Vec<JsonSample>,
    drops: BTreeMap<String, u64>,
    duty: Option<JsonDuty>,
    runtime_counters: Option<JsonCounters>,
    runtime_counters_error: Option<String>,
}

#[derive(Deserialize, Debug)]
struct JsonCounters {
    allocated_bytes: u64,
    allocated_objects: u64,
    layout: String,
    read_at_end: bool,
    scaled_from: Option<JsonScaledFrom>,
}

#[derive(Deserialize, Debug)]
struct JsonScaledFrom {
    bytes: u64,
    objects: u64,
}

impl JsonReport {
    /// The runtime's counters, checked to be the totals of the (scaled) samples.
    fn counted(&self) -> Result<&JsonCounters> {
        let c = self.runtime_counters.as_ref().with_context(|| {
            format!(
                "no runtime counters: {}",
                self.runtime_counters_error.as_deref().unwrap_or("?")
            )
        })?;
        ensure!(c.scaled_from.is_some(), "not scaled to the counters: {c:?}");
        let total = self
            .samples
            .iter()
            .fold((0, 0), |t, s| (t.0 + s.bytes, t.1 + s.objects));
        ensure!(
            total == (c.allocated_bytes, c.allocated_objects),
            "samples total {total:?} (bytes, objects), counters {c:?}"
        );
        Ok(c)
    }
}

#[derive(Deserialize, Debug)]
struct JsonDuty {
    overhead_budget_percent: f64,
    event_cost_ns: f64,
    event_cost_measured: bool,
    windows: u64,
    window_ns: u64,
    duty_fraction: f64,
    events_observed: u64,
    hits_between_windows: u64,
    target_cpu_ns: u64,
    estimated_overhead_percent: f64,
}

#[derive(Deserialize)]
struct JsonSample {
    stack: Vec<JsonLocation>,
    bytes: u64,
    objects: u64,
    estimate: Option<JsonEstimate>,
}

#[derive(Deserialize, Clone, Copy)]
struct JsonEstimate {
    bytes_sigma: f64,
    objects_sigma: f64,
}

#[derive(Deserialize)]
struct JsonLocation {
    frames: Vec<JsonFrame>,
}

#[derive(Deserialize)]
struct JsonFrame {
    function: String,
}

impl JsonSample {
    fn site(&self) -> &str {
        self.stack
            .iter()
            .flat_map(|l| l.frames.iter())
            .map(|f| f.function.as_str())
            .find(|f| !f.starts_with("runtime.") && !f.starts_with("internal/runtime/"))
            .unwrap_or("?")
    }
}

/// Per site: (bytes, bytes variance, objects, objects variance).
type SiteTotals = (f64, f64, f64, f64);

/// Keys of one site add their estimates and their variances.
fn by_site(r: &JsonReport) -> Result<BTreeMap<&str, SiteTotals>> {
    let mut out: BTreeMap<&str, SiteTotals> = BTreeMap::new();
    for s in &r.samples {
        let e = s
            .estimate
            .context("a duty-cycled sample without its standard error")?;
        let t = out.entry(s.site()).or_default();
        t.0 += s.bytes as f64;
        t.1 += e.bytes_sigma.powi(2);
        t.2 += s.objects as f64;
        t.3 += e.objects_sigma.powi(2);
    }
    Ok(out)
}

/// Windows a per-site error can be judged from: with fewer, the spread between windows
/// (the error's estimate) is itself too uncertain for a 3-sigma bound.
const MIN_WINDOWS: u64 = 8;
/// How long the fixture runs; a loaded machine (fewer windows within the budget) gets a
/// longer run.
const DURATIONS: [&str; 2] = ["4s", "12s"];

/// The estimator's check on one release, or None where the run had fewer than
/// [`MIN_WINDOWS`] windows.
fn check(version: &str, duration: &str) -> Result<Option<String>> {
    let bin = fixture("steady", version, Variant::Normal)?;
    let tmp = TempDir::new("duty")?;
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command()?;
    // The duty estimator's own totals: what is checked here is its per-site estimates and
    // their errors. Scaled to the runtime's counters, shares of keys the estimator weighs
    // differently (start-up allocations seen whole in the first window, trap-slowed steady
    // ones) would move the sites: docs/SAMPLING.md; the counters themselves are checked by
    // `duty_totals_are_the_runtimes_counters_...` below.
    cmd.args(["--mode", "duty", "--totals", "probes", "--overhead-budget"])
        .arg(BUDGET_PERCENT.to_string())
        .args(["--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin)
        // ~0.4 ms of work per iteration: ~3000 allocations/s, so that at the ~8 µs a probe
        // hit costs on the development VM a 1% budget leaves windows for about a third of
        // the run.
        .args(["-duration", duration, "-spin", "200000", "-oracle"])
        .arg(&oracle);
    let out = run(cmd, Duration::from_secs(60))?;
    ensure!(out.code() == 0, "gomemtrace failed: {}", out.stderr);
    let r: JsonReport = serde_json::from_value(gomemtrace_tests::read_report_inline(&report)?)?;
    let o: Oracle = serde_json::from_str(&std::fs::read_to_string(&oracle)?)?;
    ensure!(r.mode == "duty", "mode {}", r.mode);
    ensure!(r.drops.values().all(|&n| n == 0), "drops {:?}", r.drops);
    let d = r.duty.as_ref().context("no duty record")?;
    ensure!(d.overhead_budget_percent == BUDGET_PERCENT, "{d:?}");
    // Several windows, attached for part of the run only.
    ensure!(d.windows >= 3, "only {} windows: {d:?}", d.windows);
    if d.windows < MIN_WINDOWS {
        println!(
            "Go {version}, {duration}: only {} windows, too few to judge",
            d.windows
        );
        return Ok(None);
    }
    let fraction = d.window_ns as f64 / r.duration_ns as f64;
    ensure!(
        d.duty_fraction > 0.02
            && d.duty_fraction < 0.8
            && (fraction - d.duty_fraction).abs() < 0.05,
        "duty fraction {} (window time / duration {fraction:.3}): {d:?}",
        d.duty_fraction
    );
    // The budget's base, the target's CPU time as gomemtrace read it, is the fixture's own
    // (getrusage at its end; gomemtrace also sees its exit): threads that exited, or exit
    // at the end, keep their time.
    let cpu_error = (d.target_cpu_ns as f64 - o.cpu_ns as f64).abs() / o.cpu_ns as f64;
    ensure!(
        cpu_error < 0.05,
        "target CPU {} ns, the fixture's own {} ns: {d:?}",
        d.target_cpu_ns,
        o.cpu_ns
    );
    // The overhead estimate stays within the budget (a window's worth of slack: the last
    // window may close late), and so does the same cost against the fixture's own CPU time.
    ensure!(
        d.estimated_overhead_percent <= 1.5 * BUDGET_PERCENT,
        "estimated overhead {}% > budget {BUDGET_PERCENT}%: {d:?}",
        d.estimated_overhead_percent
    );
    let own = 100.0 * (d.events_observed as f64 * d.event_cost_ns) / o.cpu_ns as f64;
    ensure!(
        own <= 1.5 * BUDGET_PERCENT,
        "{} events × {} ns = {own:.2}% of the fixture's own CPU time",
        d.events_observed,
        d.event_cost_ns
    );
    let mine = by_site(&r)?;
    let mut lines = vec![format!(
        "{} windows, duty fraction {:.3}, {} events + {} between windows, {:.0} ns per event (trap measured: {}), overhead {:.2}% (vs fixture CPU {own:.2}%)",
        d.windows,
        d.duty_fraction,
        d.events_observed,
        d.hits_between_windows,
        d.event_cost_ns,
        d.event_cost_measured,
        d.estimated_overhead_percent
    )];
    for (site, size) in SITES {
        let want = o
            .sites
            .get(site)
            .with_context(|| format!("oracle lacks {site}"))?;
        ensure!(
            want.bytes == want.objects * size,
            "{site}: oracle arithmetic"
        );
        let &(bytes, bytes_var, objects, objects_var) = mine
            .get(site)
            .with_context(|| format!("no samples at {site}"))?;
        for (what, est, var, truth) in [
            ("bytes", bytes, bytes_var, want.bytes),
            ("objects", objects, objects_var, want.objects),
        ] {
            let sigma = var.sqrt();
            let z = (est - truth as f64) / sigma.max(1.0);
            ensure!(
                z.abs() <= K_SIGMA && sigma > 0.0,
                "{site}: estimated {est:.0} ± {sigma:.0} {what}, true {truth}: z = {z:.2}"
            );
            lines.push(format!(
                "  {site} {what}: {est:.0} ± {sigma:.0} ({:.1}%), true {truth}, z = {z:+.2}",
                100.0 * sigma / est.max(1.0)
            ));
        }
    }
    Ok(Some(lines.join("\n")))
}

#[test]
fn duty_estimates_cover_the_truth_within_budget_latest_and_old_go() {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in [gomemtrace_tests::latest_go(), "1.19".to_string()] {
        let mut judged = false;
        for duration in DURATIONS {
            match check(&version, duration) {
                Ok(Some(summary)) => println!("Go {version}, {duration}: ok\n{summary}"),
                Ok(None) => continue,
                Err(e) => failures.push(format!("Go {version}, {duration}: {e:#}")),
            }
            judged = true;
            break;
        }
        if !judged {
            failures.push(format!(
                "Go {version}: fewer than {MIN_WINDOWS} windows in every run"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The totals of a duty-cycled trace are the runtime's own counters: within 1% of what
/// the allocmix fixture's `runtime.ReadMemStats` says it allocated (launch mode: from its
/// start). The fixture pauses on stdin after allocating, so the last reading gomemtrace
/// takes before it exits sees everything; it reads its MemStats after the pause, before
/// printing them.
fn check_totals(version: &str, variant: Variant) -> Result<String> {
    use std::io::{BufRead as _, Write as _};
    use std::process::Stdio;
    let bin = fixture("allocmix", version, variant)?;
    let tmp = TempDir::new("duty-totals")?;
    let report = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--mode", "duty", "--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin)
        .args(["-stdin", "-mb", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |marker: &str| -> Result<String> {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .with_context(|| format!("no {marker:?} line from the fixture"))?;
            if line.starts_with(marker) {
                return Ok(line);
            }
        }
    };
    wait_for("paused")?;
    // A few of gomemtrace's polls while the fixture allocates nothing.
    std::thread::sleep(Duration::from_millis(300));
    child.stdin.take().context("stdin")?.write_all(b"\n")?;
    let done = wait_for("done")?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "gomemtrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Result<u64> {
        done.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("{name} in {done:?}"))?
            .parse()
            .map_err(Into::into)
    };
    let (total_alloc, mallocs) = (field("total_alloc")?, field("mallocs")?);
    let r: JsonReport = serde_json::from_value(gomemtrace_tests::read_report_inline(&report)?)?;
    ensure!(r.mode == "duty", "mode {}", r.mode);
    let c = r.counted()?;
    ensure!(
        c.layout
            == if variant.is_stripped() {
                "code"
            } else {
                "symbols"
            },
        "layout {}",
        c.layout
    );
    let probes = c.scaled_from.as_ref().context("not scaled")?;
    for (what, mine, truth) in [
        ("bytes", c.allocated_bytes, total_alloc),
        ("objects", c.allocated_objects, mallocs),
    ] {
        let off = (mine as f64 - truth as f64) / truth as f64;
        ensure!(
            off.abs() <= 0.01,
            "{what}: gomemtrace {mine}, the fixture's MemStats {truth}: {:+.3}%",
            100.0 * off
        );
    }
    Ok(format!(
        "bytes {} vs MemStats.TotalAlloc {total_alloc}, objects {} vs MemStats.Mallocs {mallocs} (probes' own estimate {} B, {} objects; read at end: {})",
        c.allocated_bytes, c.allocated_objects, probes.bytes, probes.objects, c.read_at_end
    ))
}

#[test]
fn duty_totals_are_the_runtimes_counters_latest_and_old_go_normal_and_stripped() {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in [gomemtrace_tests::latest_go(), "1.19".to_string()] {
        for variant in [Variant::Normal, Variant::Stripped] {
            match check_totals(&version, variant) {
                Ok(summary) => println!("Go {version} {}: {summary}", variant.name()),
                Err(e) => failures.push(format!("Go {version} {}: {e:#}", variant.name())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
