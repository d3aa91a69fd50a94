//! Duty-cycled mode (`--mode duty`, the `auto` choice where the heap sampler is compiled
//! out): on the latest Go and an old one (1.19), the steady fixture allocates at a known
//! rate at two sites for a few seconds; gomemtrace's scaled per-site estimates must lie
//! within 3 of their reported standard errors of the fixture's own counts, the probes must
//! have been attached for only part of the run, and the overhead estimate must respect the
//! budget — checked also against the fixture's own CPU time (getrusage).

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

fn check(version: &str) -> Result<String> {
    let bin = fixture("steady", version, Variant::Normal)?;
    let tmp = TempDir::new("duty")?;
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--mode", "duty", "--overhead-budget"])
        .arg(BUDGET_PERCENT.to_string())
        .args(["--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin)
        // ~0.4 ms of work per iteration: ~3000 allocations/s, so that at the ~8 µs a probe
        // hit costs on the development VM a 1% budget leaves windows for about a third of
        // the run.
        .args(["-duration", "4s", "-spin", "200000", "-oracle"])
        .arg(&oracle);
    let out = run(cmd, Duration::from_secs(60))?;
    ensure!(out.code() == 0, "gomemtrace failed: {}", out.stderr);
    let r: JsonReport = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let o: Oracle = serde_json::from_str(&std::fs::read_to_string(&oracle)?)?;
    ensure!(r.mode == "duty", "mode {}", r.mode);
    ensure!(r.drops.values().all(|&n| n == 0), "drops {:?}", r.drops);
    let d = r.duty.as_ref().context("no duty record")?;
    ensure!(d.overhead_budget_percent == BUDGET_PERCENT, "{d:?}");
    // Several windows, attached for part of the run only.
    ensure!(d.windows >= 3, "only {} windows: {d:?}", d.windows);
    let fraction = d.window_ns as f64 / r.duration_ns as f64;
    ensure!(
        d.duty_fraction > 0.02
            && d.duty_fraction < 0.8
            && (fraction - d.duty_fraction).abs() < 0.05,
        "duty fraction {} (window time / duration {fraction:.3}): {d:?}",
        d.duty_fraction
    );
    // The overhead estimate stays within the budget (a window's worth of slack: the last
    // window may close late), and so does the same cost against the fixture's own CPU time.
    ensure!(
        d.estimated_overhead_percent <= 1.5 * BUDGET_PERCENT,
        "estimated overhead {}% > budget {BUDGET_PERCENT}%",
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
    Ok(lines.join("\n"))
}

#[test]
fn duty_estimates_cover_the_truth_within_budget_latest_and_old_go() {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in [gomemtrace_tests::latest_go(), "1.19".to_string()] {
        match check(&version) {
            Ok(summary) => println!("Go {version}: ok\n{summary}"),
            Err(e) => failures.push(format!("Go {version}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
