//! Runtime-sampled mode (`--mode runtime`, the `auto` default where the sampler is linked):
//! gomemtrace probes the runtime's own heap sampler. Checked on every Go release against
//! two independent oracles: the fixture's arithmetic (within 3σ of the sampled estimate)
//! and the runtime's own heap profile of the same run (the very same samples, so within
//! rounding), for allocated and for in-use bytes.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    TempDir, Variant, fixture, go_versions, gomemtrace_command, require_root, run,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct SampledOracle {
    rate: u64,
    sites: BTreeMap<String, OracleSite>,
}

#[derive(Deserialize)]
struct OracleSite {
    alloc_bytes: u64,
    alloc_objects: u64,
    inuse_bytes: u64,
    inuse_objects: u64,
    expected_bytes: u64,
    expected_inuse_bytes: u64,
}

#[derive(Deserialize)]
struct JsonReport {
    mode: String,
    sample_rate: Option<u64>,
    samples: Vec<JsonSample>,
    drops: BTreeMap<String, u64>,
    runtime_counters: Option<JsonCounters>,
    runtime_counters_error: Option<String>,
}

#[derive(Deserialize)]
struct JsonCounters {
    allocated_bytes: u64,
    allocated_objects: u64,
    scaled_from: Option<JsonScaledFrom>,
}

#[derive(Deserialize, Clone, Copy)]
struct JsonScaledFrom {
    bytes_factor: f64,
}

#[derive(Deserialize)]
struct JsonSample {
    stack: Vec<JsonLocation>,
    bytes: u64,
    objects: u64,
    inuse: Option<JsonInUse>,
}

#[derive(Deserialize)]
struct JsonLocation {
    frames: Vec<JsonFrame>,
}

#[derive(Deserialize)]
struct JsonFrame {
    function: String,
}

#[derive(Deserialize, Clone, Copy)]
struct JsonInUse {
    bytes: u64,
}

impl JsonSample {
    /// The allocation was made on the system stack (e.g. a `runtime.m` for a new thread,
    /// under whatever goroutine started it): the frame-pointer walk follows it into the
    /// goroutine's frames, the runtime's own unwinder stops at the switch, so the runtime's
    /// profile never puts it under a user site. The sampler's own frames (`mProf_Malloc`
    /// calls `setprofilebucket` through `systemstack`) are not counted.
    fn via_system_stack(&self) -> bool {
        self.stack
            .iter()
            .flat_map(|l| l.frames.iter())
            .map(|f| f.function.as_str())
            .skip_while(|f| *f != "runtime.mProf_Malloc")
            .take_while(|f| f.starts_with("runtime.") || f.starts_with("internal/runtime/"))
            .any(|f| f == "runtime.systemstack")
    }

    fn site(&self) -> &str {
        self.stack
            .iter()
            .flat_map(|l| l.frames.iter())
            .map(|f| f.function.as_str())
            .find(|f| !f.starts_with("runtime.") && !f.starts_with("internal/runtime/"))
            .unwrap_or("?")
    }
}

/// pprof's unbiasing of a site whose objects all have `size` bytes.
fn unbias_bytes(raw_bytes: u64, raw_objects: u64, rate: u64) -> f64 {
    if raw_objects == 0 || rate <= 1 {
        return raw_bytes as f64;
    }
    let avg = raw_bytes as f64 / raw_objects as f64;
    raw_bytes as f64 / (1.0 - (-avg / rate as f64).exp())
}

/// Bound of the estimates against the arithmetic, in standard deviations (see check).
const K_SIGMA: f64 = 5.0;

const SITES: [&str; 3] = ["main.allocSmall", "main.allocBuffers", "main.allocRetained"];

fn check(version: &str, variant: Variant) -> Result<()> {
    let bin = fixture("sampled", version, variant)?;
    let tmp = TempDir::new("sampled")?;
    let (report, oracle) = (tmp.join("r.json"), tmp.join("o.json"));
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--mode", "runtime", "--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin)
        .arg("-oracle")
        .arg(&oracle)
        // So that gomemtrace's last reading of the runtime's counters follows the last
        // allocation.
        .args(["-linger", "400ms"]);
    let out = run(cmd, Duration::from_secs(120))?;
    ensure!(out.code() == 0, "gomemtrace failed: {}", out.stderr);
    let r: JsonReport = serde_json::from_value(gomemtrace_tests::read_report_inline(&report)?)?;
    let o: SampledOracle = serde_json::from_str(&std::fs::read_to_string(&oracle)?)?;
    ensure!(r.mode == "runtime", "mode {}", r.mode);
    ensure!(
        r.sample_rate == Some(o.rate),
        "sample_rate {:?}, the target's MemProfileRate was {}",
        r.sample_rate,
        o.rate
    );
    ensure!(r.drops.values().all(|&n| n == 0), "drops {:?}", r.drops);
    // The totals are the runtime's own counters; the samples give the shares.
    let counted = r.runtime_counters.as_ref().with_context(|| {
        format!(
            "no runtime counters: {}",
            r.runtime_counters_error.as_deref().unwrap_or("?")
        )
    })?;
    let total: (u64, u64) = r
        .samples
        .iter()
        .fold((0, 0), |t, s| (t.0 + s.bytes, t.1 + s.objects));
    ensure!(
        total == (counted.allocated_bytes, counted.allocated_objects),
        "total {total:?} (bytes, objects), the runtime counted {} B in {} objects",
        counted.allocated_bytes,
        counted.allocated_objects
    );
    let factor = counted
        .scaled_from
        .context("runtime-sampled samples not scaled to the counters")?
        .bytes_factor;
    let mut mine: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for s in r.samples.iter().filter(|s| !s.via_system_stack()) {
        let e = mine.entry(s.site()).or_default();
        e.0 += s.bytes;
        e.1 += s.objects;
        e.2 += s.inuse.map_or(0, |u| u.bytes);
    }
    for site in SITES {
        let want = o
            .sites
            .get(site)
            .with_context(|| format!("oracle lacks {site}"))?;
        let &(bytes, _objects, inuse) = mine.get(site).unwrap_or(&(0, 0, 0));
        // 1. The runtime's own profile saw the same samples: the same unbiased value
        //    before the scaling to the counters, up to rounding and per-key vs per-bucket
        //    averaging (1%).
        let (raw, raw_inuse) = (bytes as f64 / factor, inuse as f64 / factor);
        let runtime = unbias_bytes(want.alloc_bytes, want.alloc_objects, o.rate);
        ensure!(
            (raw - runtime).abs() <= 0.01 * runtime.max(1.0),
            "{site}: {raw:.0} B allocated before scaling, the runtime's own profile says {runtime:.0} B"
        );
        let runtime_inuse = unbias_bytes(want.inuse_bytes, want.inuse_objects, o.rate);
        ensure!(
            (raw_inuse - runtime_inuse).abs() <= 0.01 * runtime_inuse + 1.0 + factor,
            "{site}: {raw_inuse:.0} B in use before scaling, the runtime's own heap profile says {runtime_inuse:.0} B"
        );
        // 2. Arithmetic, of the scaled values: sampling is a Poisson process over bytes with mean rate, so the
        //    unbiased estimate of B bytes of objects much smaller than the rate has
        //    σ ≈ sqrt(B · rate). This test makes ~100 such checks per run; at 5σ a correct
        //    estimator fails one of them with probability ~6e-5 (3σ would fail a run in four).
        let sigma = (want.expected_bytes as f64 * o.rate as f64).sqrt();
        let err = (bytes as f64 - want.expected_bytes as f64).abs();
        ensure!(
            err <= K_SIGMA * sigma,
            "{site}: estimated {bytes} B, arithmetic {} B: off by {err:.0} B > {K_SIGMA}σ = {:.0} B",
            want.expected_bytes,
            K_SIGMA * sigma
        );
        // A site with nothing live can still show a few sampled survivors; with fewer
        // than one expected sample the estimate moves in whole samples of ~rate bytes.
        let inuse_sigma = (want.expected_inuse_bytes.max(o.rate) as f64 * o.rate as f64).sqrt();
        let inuse_err = (inuse as f64 - want.expected_inuse_bytes as f64).abs();
        ensure!(
            inuse_err <= K_SIGMA * inuse_sigma,
            "{site}: estimated {inuse} B in use, arithmetic {} B: off by {inuse_err:.0} B > {K_SIGMA}σ",
            want.expected_inuse_bytes
        );
    }
    Ok(())
}

#[test]
fn runtime_mode_matches_arithmetic_and_the_runtimes_profile_every_go_version_and_stripped() {
    if !require_root() {
        return;
    }
    // Stripped: MemProfileRate is found from the code that reads it, not from .symtab.
    let failures: Vec<String> = go_versions()
        .iter()
        .flat_map(|v| [(v.clone(), Variant::Normal), (v.clone(), Variant::Stripped)])
        .filter_map(|(v, variant)| {
            let result = check(&v, variant);
            let name = variant.name();
            println!(
                "Go {v} {name}: {}",
                if result.is_ok() { "ok" } else { "FAILED" }
            );
            result.err().map(|e| format!("Go {v} {name}: {e:#}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `auto` picks duty-cycled exact windows, and says why, for a binary whose sampler is
/// compiled out.
#[test]
fn auto_mode_says_why_it_picks_duty() {
    if !require_root() {
        return;
    }
    let version = gomemtrace_tests::latest_go();
    let bin = fixture("gc", &version, Variant::Normal).unwrap();
    let tmp = TempDir::new("auto").unwrap();
    let report = tmp.join("r.json");
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin);
    let out = run(cmd, Duration::from_secs(120)).unwrap();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("mode auto: duty") && out.stderr.contains("compiled out"),
        "{}",
        out.stderr
    );
    let r: JsonReport =
        serde_json::from_value(gomemtrace_tests::read_report_inline(&report).unwrap()).unwrap();
    assert_eq!(r.mode, "duty");
}
