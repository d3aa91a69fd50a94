//! `go tool pprof -top` on gomemtrace's profile shows the same lines as on the program's own
//! heap profile of the same run. The oracle is Go itself: the `heapprofile` fixture allocates
//! at known sites (its own functions, `bufio.NewWriterSize`, `bytes.growSlice`, through
//! makeslice, newobject, growslice, string conversion and map growth) and writes its own heap
//! profile (`runtime/pprof.WriteHeapProfile`) at the end of the run that gomemtrace traces in
//! runtime-sampled mode, on every Go release, normal and stripped.
//!
//! Per function, flat and cumulative `alloc_space` of the two `-top` outputs must agree, with
//! only these differences allowed:
//!
//! - **GC boundary.** The runtime publishes its profile at GC boundaries: it holds the
//!   allocations up to the last completed cycle. The fixture calls `runtime.GC()` in
//!   `main.writeHeapProfile` before writing, so every site's allocation is published, and
//!   what the profile writer itself allocates after that (the file, the encoder) is in
//!   gomemtrace's profile only. Both sides are read with `-ignore=main\.writeHeapProfile`;
//!   nothing else is cut.
//! - **Integer truncation** of the unbiased values: 1 KiB + 0.01%. Both sides unbias each
//!   sample as pprof's `scaleHeapSample` does, per (stack, object size): the runtime keeps one
//!   record per stack and size, and gomemtrace's kernel map keys runtime-sampled allocations
//!   by their size too (`AllocKey::sample_size`). Before it did, a stack that allocates
//!   several sizes (a `bytes.Buffer` growing) was scaled by its average size, up to 3% low
//!   (`bytes.growSlice`: −2.1% to −2.7%), since the scale s/(1−exp(−s/rate)) is convex in s.
//! - **The runtime's own allocations** (stacks that never leave the runtime, a few samples
//!   from background goroutines whose publication depends on when they ran) are left out:
//!   functions of package runtime are compared only through `runtime.main`'s cumulative
//!   value.
//!
//! Exact mode, on the same fixture and the same run's Go profile, must name the same top
//! functions; its exact values agree with Go's sampled estimates within 5σ of sampling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gomemtrace_tests::{
    TempDir, Variant, fixture, go_tool, go_versions, gomemtrace_command, is_runtime,
    pprof_top_rows, require_root, run,
};

/// The fixture's allocation sites as Go's heap profile names them (the leaf function).
const SITES: [&str; 7] = [
    "bufio.NewWriterSize",
    "bytes.growSlice",
    "main.allocSlices",
    "main.allocNodes",
    "main.appendInts",
    "main.growMap",
    "main.buildStrings",
];

/// What the profile writer allocates after the GC boundary (see the module doc).
const AFTER_GC: &str = "main.writeHeapProfile";

/// Flat and cumulative values per function of a `go tool pprof -top`.
#[derive(Debug, Default)]
struct Top {
    flat: BTreeMap<String, f64>,
    cum: BTreeMap<String, f64>,
    /// The `Type: ...` line: the sample type shown.
    kind: String,
}

/// `go tool pprof -top` of `profile`, in bytes, every node, without the writer's samples.
fn top(version: &str, profile: &str, extra: &[&str]) -> Result<Top> {
    let ignore = format!("-ignore={}", AFTER_GC.replace('.', "\\."));
    let mut args = vec![
        "tool",
        "pprof",
        "-top",
        "-symbolize=none",
        "-unit=B",
        "-nodecount=100000",
        "-nodefraction=0",
        "-edgefraction=0",
        &ignore,
    ];
    args.extend(extra);
    args.push(profile);
    let out = go_tool(version, &args)?;
    let mut t = Top::default();
    for line in out.lines() {
        if let Some(kind) = line.strip_prefix("Type: ") {
            t.kind = kind.trim().to_string();
        }
    }
    for row in pprof_top_rows(&out)? {
        t.flat.insert(row.function.clone(), row.flat);
        t.cum.insert(row.function, row.cum);
    }
    // Rows may be absent from a difference (nothing differs) and from the default view,
    // read for its sample type only: in-use bytes can all be the profile writer's, which
    // is ignored (seen once: every in-use sample of a run was under the writer).
    ensure!(
        !t.cum.is_empty() || extra.is_empty() || extra.iter().any(|a| a.starts_with("-diff_base")),
        "no rows in pprof -top output:\n{out}"
    );
    Ok(t)
}

/// Traces the fixture in `mode` writing pprof; returns (gomemtrace's profile, Go's profile).
fn trace(tmp: &TempDir, version: &str, variant: Variant, mode: &str) -> Result<(String, String)> {
    let bin = fixture("heapprofile", version, variant)?;
    let ours = tmp.join(&format!("ours-{mode}.pb.gz"));
    let go = tmp.join(&format!("go-{mode}.pb.gz"));
    let mut cmd = gomemtrace_command()?;
    // The probes' own totals: unbiased as the runtime's profile is (not scaled to the
    // runtime's allocation counters).
    cmd.args([
        "--mode", mode, "--totals", "probes", "--format", "pprof", "-o",
    ])
    .arg(&ours)
    .arg("--")
    .arg(&bin)
    .arg("-profile")
    .arg(&go);
    let out = run(cmd, Duration::from_secs(180))?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let path = |p: std::path::PathBuf| p.to_str().map(str::to_string).context("UTF-8 path");
    Ok((path(ours)?, path(go)?))
}

/// Functions compared: all outside package runtime, and `runtime.main` (cumulative only).
fn compared(name: &str) -> bool {
    !is_runtime(name)
}

fn check_runtime_mode(version: &str, variant: Variant) -> Result<String> {
    let tmp = TempDir::new(&format!("heapprofile-{version}-{}", variant.name()))?;
    let (ours_path, go_path) = trace(&tmp, version, variant, "runtime")?;

    // The default view is Go's heap profile's, and -diff_base accepts one against the other
    // (same sample types and period type).
    let ours_default = top(version, &ours_path, &[])?;
    let go_default = top(version, &go_path, &[])?;
    ensure!(
        ours_default.kind == go_default.kind && ours_default.kind == "inuse_space",
        "default sample type: ours {:?}, Go's {:?}",
        ours_default.kind,
        go_default.kind
    );
    // A difference of 0 everywhere shows no rows: that is the expected outcome.
    let diff = format!("-diff_base={go_path}");
    let difference = top(version, &ours_path, &["-sample_index=alloc_space", &diff])
        .context("go tool pprof -diff_base=<Go's profile> <ours>")?;

    let alloc = ["-sample_index=alloc_space"];
    let ours = top(version, &ours_path, &alloc)?;
    let go = top(version, &go_path, &alloc)?;
    let mut bad = Vec::new();
    let mut rows = Vec::new();
    for (what, o, g) in [("flat", &ours.flat, &go.flat), ("cum", &ours.cum, &go.cum)] {
        let names: BTreeSet<&String> = o.keys().chain(g.keys()).collect();
        for name in names {
            let runtime_main = what == "cum" && name == "runtime.main";
            if !compared(name) && !runtime_main {
                continue;
            }
            let get = |m: &BTreeMap<String, f64>| m.get(name).copied().unwrap_or(0.0);
            let (o, g) = (get(o), get(g));
            let tol = 1024.0 + 1e-4 * g;
            rows.push(format!("{what:4} {name:40} ours {o:>12.0}  Go {g:>12.0}"));
            if (o - g).abs() > tol {
                bad.push(format!(
                    "{what} {name}: ours {o:.0} B, Go's {g:.0} B; allowed ±{tol:.0}"
                ));
            }
        }
    }
    // The difference profile agrees: nothing compared differs beyond the same bound.
    for (name, d) in &difference.flat {
        if compared(name) && d.abs() > 1024.0 + 1e-4 * go.flat.get(name).copied().unwrap_or(0.0) {
            bad.push(format!("-diff_base: {name} differs by {d:.0} B"));
        }
    }
    // Every site is a leaf in both (no runtime frame on top of it).
    for site in SITES {
        let (o, g) = (
            ours.flat.get(site).copied().unwrap_or(0.0),
            go.flat.get(site).copied().unwrap_or(0.0),
        );
        if o <= 0.0 || g <= 0.0 {
            bad.push(format!(
                "{site}: flat ours {o}, Go's {g}: not a leaf in both"
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "Go {version} {}:\n{}\n\n{}",
        variant.name(),
        bad.join("\n"),
        rows.join("\n")
    );
    Ok(format!(
        "Go {version} {}: {} functions agree\n{}",
        variant.name(),
        rows.len(),
        rows.join("\n")
    ))
}

#[test]
fn runtime_mode_top_matches_the_programs_own_heap_profile_every_go_version_and_stripped() {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in go_versions() {
        for variant in [Variant::Normal, Variant::Stripped] {
            match check_runtime_mode(&version, variant) {
                Ok(summary) => println!("{summary}"),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Exact mode: the same leaf convention, so the same top functions as Go's sampled profile
/// of the same run; each value within 5σ of Go's estimate (sampling is a Poisson process over
/// bytes, σ ≈ sqrt(bytes × rate) for objects much smaller than the rate, an overestimate for
/// larger ones).
fn check_exact_mode(version: &str) -> Result<String> {
    let tmp = TempDir::new(&format!("heapprofile-exact-{version}"))?;
    let (ours_path, go_path) = trace(&tmp, version, Variant::Normal, "exact")?;
    let alloc = ["-sample_index=alloc_space"];
    let ours = top(version, &ours_path, &alloc)?;
    let go = top(version, &go_path, &alloc)?;
    let leaders = |t: &Top| -> BTreeSet<String> {
        let mut v: Vec<(&String, &f64)> = t.flat.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v.into_iter()
            .take(SITES.len())
            .map(|(n, _)| n.clone())
            .collect()
    };
    let want: BTreeSet<String> = SITES.iter().map(|s| s.to_string()).collect();
    ensure!(
        leaders(&ours) == want && leaders(&go) == want,
        "Go {version} exact: top {} flat functions: ours {:?}, Go's {:?}, want {want:?}",
        SITES.len(),
        leaders(&ours),
        leaders(&go)
    );
    let rate: f64 = 512.0 * 1024.0;
    for site in SITES {
        let (o, g) = (ours.flat[site], go.flat[site]);
        let sigma = (o * rate).sqrt();
        if (o - g).abs() > 5.0 * sigma {
            bail!(
                "Go {version} exact: {site} {o:.0} B, Go's estimate {g:.0} B: beyond 5σ ({sigma:.0} B)"
            );
        }
    }
    Ok(format!("Go {version} exact: top functions {want:?}"))
}

#[test]
fn exact_mode_names_the_same_top_functions() {
    if !require_root() {
        return;
    }
    let versions = go_versions();
    let mut failures = Vec::new();
    // The oldest and the newest release: mallocgc, and the size-specialized mallocgc*.
    let ends: BTreeSet<&String> = [versions.first(), versions.last()]
        .into_iter()
        .flatten()
        .collect();
    for version in ends {
        match check_exact_mode(version) {
            Ok(summary) => println!("{summary}"),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
