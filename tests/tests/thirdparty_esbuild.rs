//! A third-party program built by a current Go release and shipped by a registry: esbuild
//! (npm's `@esbuild/linux-x64`, Go 1.26, stripped, no `.go.buildinfo`; `scripts/setup.sh`
//! installs it) bundling a generated project of `MODULES` JavaScript modules.
//!
//! - Exact mode, launched: no event lost or kept without its stack, no top allocation site
//!   in the runtime, most bytes under esbuild's own frames, and the count up to the
//!   runtime's last reading equal to what esbuild's runtime itself counted then (its
//!   allocation counters, read from the process) within 0.5%.
//! - The default mode (`auto`: the binary links the heap sampler, so runtime-sampled):
//!   esbuild's sites on top, its runtime counters located through the code (stripped, no
//!   buildinfo), and the totals scaled to them only where a reading covers every event.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    Report, TempDir, cache_dir, exact_report::check_exact_report, gomemtrace_command, require_root,
    run,
};

const VERSION: &str = "0.28.2";
const MODULES: usize = 3000;
const OWN_PACKAGES: &str = "github.com/evanw/esbuild/";

fn esbuild() -> Option<PathBuf> {
    let path = cache_dir().join("esbuild").join(VERSION).join("esbuild");
    path.exists().then_some(path)
}

/// `MODULES` modules, each importing two earlier ones, with classes, template strings,
/// object literals and arrow functions for the parser, linker and printer to work on.
fn write_project(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("src"))?;
    // Two distinct earlier modules (none for the first, one for the second).
    let deps = |i: usize| {
        let mut d: Vec<usize> = [i / 2, i / 3].into_iter().filter(|&d| d < i).collect();
        d.dedup();
        d
    };
    for i in 0..MODULES {
        let mut js = String::new();
        for dep in deps(i) {
            writeln!(js, "import {{ f{dep}, K{dep} }} from './m{dep}.js';")?;
        }
        writeln!(
            js,
            "export class K{i} {{\n  constructor(x) {{ this.x = x; this.tag = `k{i}-${{x}}`; }}\n  \
             get double() {{ return this.x * 2 + {i}; }}\n}}\n\
             export const table{i} = {{ id: {i}, name: 'module {i}', items: [{i}, {}, {}], \
             nested: {{ a: 'x{i}', b: [1, 2, 3].map((v) => v * {i}) }} }};\n\
             export function f{i}(n) {{\n  let s = 0;\n  for (let j = 0; j < n; j++) {{ \
             s += j % {m} ? j : -j; }}\n  return `f{i}:${{s}}:${{table{i}.name}}`;\n}}",
            i + 1,
            i + 2,
            m = i % 7 + 2
        )?;
        for dep in deps(i) {
            writeln!(
                js,
                "export const use{i}_{dep} = () => f{dep}(3) + new K{dep}(1).double;"
            )?;
        }
        std::fs::write(dir.join(format!("src/m{i}.js")), js)?;
    }
    let mut entry = String::new();
    for i in (0..MODULES).step_by(50) {
        writeln!(
            entry,
            "import {{ f{i} }} from './m{i}.js';\nconsole.log(f{i}(10));"
        )?;
    }
    for i in MODULES - 50..MODULES {
        writeln!(
            entry,
            "import * as all{i} from './m{i}.js';\nconsole.log(all{i});"
        )?;
    }
    let path = dir.join("src/entry.js");
    std::fs::write(&path, entry)?;
    Ok(path)
}

/// Runs esbuild under gomemtrace with `flags`; the report's json.
fn trace(esbuild: &Path, tmp: &TempDir, flags: &[&str]) -> Result<String> {
    let entry = write_project(&tmp.join("project"))?;
    let out = tmp.join("out.js");
    let report = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(flags)
        .args(["--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(esbuild)
        .arg(&entry)
        .args(["--bundle", "--minify", "--log-level=warning"])
        .arg(format!("--outfile={}", out.display()));
    let done = run(cmd, Duration::from_secs(400))?;
    ensure!(
        done.code() == 0,
        "gomemtrace exited {}:\n{}",
        done.code(),
        done.stderr
    );
    let bundle = std::fs::read_to_string(&out).context("esbuild wrote no bundle")?;
    ensure!(
        bundle.contains(&format!("module {}", MODULES - 1)),
        "the bundle lacks the last module"
    );
    Ok(std::fs::read_to_string(&report)?)
}

#[test]
fn esbuild_exact_keeps_every_event_with_its_stack() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(esbuild) = esbuild() else {
        println!("SKIP: esbuild {VERSION} is not installed (scripts/setup.sh installs it)");
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-esbuild-exact")?;
    let json = trace(&esbuild, &tmp, &["--exact", "--totals", "probes"])?;
    let figures = check_exact_report(&json, OWN_PACKAGES)?;
    let report = &figures.report;
    ensure!(
        report.target.go_version.starts_with("go1.26") && report.target.stripped,
        "not the stripped Go 1.26 build expected: {} stripped={}",
        report.target.go_version,
        report.target.stripped
    );
    let top = report.top_sites(10);
    println!(
        "esbuild, {MODULES} modules: {} events, top sites {top:?}",
        report.events
    );
    ensure!(
        top.iter().all(|(site, _)| site != "?"),
        "a top site is the runtime's own: {top:?}"
    );
    figures.own_share_at_least(0.9, OWN_PACKAGES)?;
    ensure!(
        figures.own_share >= 0.9,
        "only {:.1}% of the bytes under a frame of esbuild's packages",
        100.0 * figures.own_share
    );
    // The events up to the runtime's last reading before exit against its count then
    // (measured: within 0.07%).
    figures.events_until_reading_match_the_runtime(0.005)
}

#[test]
fn esbuild_default_mode_is_runtime_sampled_with_its_own_sites_on_top() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(esbuild) = esbuild() else {
        println!("SKIP: esbuild {VERSION} is not installed (scripts/setup.sh installs it)");
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-esbuild-default")?;
    let json = trace(&esbuild, &tmp, &[])?;
    let report = Report::parse(&json)?;
    ensure!(report.mode == "runtime", "mode {}", report.mode);
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    let top = report.top_sites(10);
    println!("esbuild default mode: top sites {top:?}");
    ensure!(
        top.iter()
            .take(5)
            .all(|(site, _)| site.starts_with(OWN_PACKAGES)),
        "a top-5 site is not esbuild's: {top:?}"
    );
    // The runtime's own count is located in this stripped, buildinfo-less binary through
    // the code that uses it. esbuild exits ~0.1 s after it starts, between two readings:
    // the last one misses what came after it, which the report says (events after it)
    // instead of scaling the samples to it; where a reading came after the last event the
    // samples add up to it.
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let counters = &v["runtime_counters"];
    ensure!(
        counters["layout"] == "code",
        "the runtime's counters not located through the code: {counters} {}",
        v["runtime_counters_error"]
    );
    let bytes: u64 = report.samples.iter().map(|s| s.bytes).sum();
    if counters["scaled_from"].is_null() {
        ensure!(
            counters["read_at_end"] == false && counters["events_after_reading"].as_u64() > Some(0),
            "not scaled, yet read at the end or nothing came after the reading: {counters}"
        );
    } else {
        ensure!(
            Some(bytes) == counters["allocated_bytes"].as_u64(),
            "samples add up to {bytes} B, the runtime counted {}",
            counters["allocated_bytes"]
        );
    }
    println!("default mode: {bytes} B, the runtime's count ({counters})");
    Ok(())
}
