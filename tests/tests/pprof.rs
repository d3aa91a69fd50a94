//! `--format pprof` end to end: the profile gomemtrace writes must open in the fixture's own
//! `go tool pprof` and attribute the allocs fixture's sites their known bytes and objects, as
//! the leaves of their stacks (the runtime frames above them hidden, as Go's heap profile does),
//! for a normal and a stripped binary. pprof's own symbolization is off
//! (`-symbolize=none`), so the function names are gomemtrace's. Needs root.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    ALLOCS_SITES, Oracle, RUN_TIMEOUT, TOLERANCE, TempDir, Variant, fixture, go_tool,
    gomemtrace_command, latest_go, pprof_top_rows, require_root, run, within,
};

/// `go tool pprof -top -cum` of `profile` for `sample_index`: cumulative value per function.
fn pprof_top(version: &str, profile: &str, sample_index: &str) -> Result<BTreeMap<String, u64>> {
    pprof_column(version, profile, sample_index, 3)
}

/// `go tool pprof -top` column `column` (0: flat, 3: cum) per function.
fn pprof_column(
    version: &str,
    profile: &str,
    sample_index: &str,
    column: usize,
) -> Result<BTreeMap<String, u64>> {
    let out = go_tool(
        version,
        &[
            "tool",
            "pprof",
            "-top",
            "-cum",
            "-symbolize=none",
            "-unit=B",
            "-nodecount=10000",
            "-nodefraction=0",
            "-edgefraction=0",
            &format!("-sample_index={sample_index}"),
            profile,
        ],
    )?;
    let mut cum = BTreeMap::new();
    for row in pprof_top_rows(&out)? {
        let value = match column {
            0 => row.flat,
            _ => row.cum,
        };
        cum.insert(row.function, value as u64);
    }
    ensure!(!cum.is_empty(), "no rows in pprof -top output:\n{out}");
    Ok(cum)
}

fn check(version: &str, variant: Variant) -> Result<()> {
    let bin = fixture("allocs", version, variant)?;
    let tmp = TempDir::new(&format!("pprof-{}", variant.name()))?;
    let profile = tmp.join("x.pb.gz");
    let oracle_path = tmp.join("oracle.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--format", "pprof", "-o"])
        .arg(&profile)
        .arg("--")
        .arg(&bin)
        .arg("-oracle")
        .arg(&oracle_path);
    let out = run(cmd, RUN_TIMEOUT)?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let gz = std::fs::read(&profile)?;
    ensure!(
        gz.starts_with(&[0x1f, 0x8b]),
        "{} is not gzip",
        profile.display()
    );
    let oracle = Oracle::read(&oracle_path)?;
    let profile = profile.to_str().context("UTF-8 temp path")?;
    let space = pprof_top(version, profile, "alloc_space")?;
    let objects = pprof_top(version, profile, "alloc_objects")?;
    let mut bad = Vec::new();
    for (site, _) in ALLOCS_SITES {
        let want = &oracle.sites[site];
        let (b, o) = (
            space.get(site).copied().unwrap_or(0),
            objects.get(site).copied().unwrap_or(0),
        );
        if !within(b, want.expected_bytes, TOLERANCE)
            || !within(o, want.expected_objects, TOLERANCE)
        {
            bad.push(format!(
                "{site}: pprof {b} B / {o} objects, want {} B / {}",
                want.expected_bytes, want.expected_objects
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "Go {version} {}:\n{}\nalloc_space per function: {space:#?}",
        variant.name(),
        bad.join("\n")
    );
    // As in Go's own heap profile, the runtime frames above the allocating function are
    // hidden: each site is the leaf of its stacks, its bytes all flat.
    let flat = pprof_column(version, profile, "alloc_space", 0)?;
    for (site, _) in ALLOCS_SITES {
        let (f, c) = (flat.get(site).copied(), space.get(site).copied());
        ensure!(
            f == c,
            "{site}: flat {f:?} B, cum {c:?} B: runtime frames above it? {flat:#?}"
        );
    }
    Ok(())
}

#[test]
fn pprof_top_lists_sites() {
    if require_root() {
        check(&latest_go(), Variant::Normal).unwrap();
    }
}

#[test]
fn pprof_top_lists_sites_stripped() {
    if require_root() {
        check(&latest_go(), Variant::Stripped).unwrap();
    }
}

/// The oldest supported release: its binary and its pprof.
#[test]
fn pprof_top_lists_sites_go_1_19() {
    if require_root() {
        check("1.19", Variant::Normal).unwrap();
    }
}
