//! The other report formats carry the same numbers as json: folded stacks (weighted by
//! bytes and by objects), text and svg name the allocs fixture's sites. Needs root.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    ALLOCS_SITES, Oracle, RUN_TIMEOUT, TOLERANCE, TempDir, Variant, fixture, gomemtrace_command,
    is_runtime, latest_go, require_root, run, within,
};

/// Traces the allocs fixture writing `format` (plus `extra` flags); returns the report text
/// and the fixture's oracle.
fn trace(format: &str, extra: &[&str]) -> Result<(String, Oracle)> {
    let bin = fixture("allocs", &latest_go(), Variant::Normal)?;
    let tmp = TempDir::new(&format!("format-{format}"))?;
    let (out_path, oracle_path) = (tmp.join("out"), tmp.join("oracle.json"));
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--format", format])
        .args(extra)
        .arg("-o")
        .arg(&out_path);
    cmd.arg("--").arg(&bin).arg("-oracle").arg(&oracle_path);
    let out = run(cmd, RUN_TIMEOUT)?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let text = std::fs::read_to_string(&out_path)
        .with_context(|| format!("read {}", out_path.display()))?;
    Ok((text, Oracle::read(&oracle_path)?))
}

/// Folded stacks `root;...;leaf WEIGHT`: summed weight per leaf. By default the leaf is the
/// allocation site, as in Go's heap profile (the runtime frames above it are hidden).
fn folded_by_leaf(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, weight) = line
            .rsplit_once(' ')
            .with_context(|| format!("folded line without weight: {line:?}"))?;
        let weight: u64 = weight
            .parse()
            .with_context(|| format!("weight of {line:?}"))?;
        let site = stack.rsplit(';').next().unwrap_or("?");
        *out.entry(site.to_string()).or_default() += weight;
    }
    Ok(out)
}

#[test]
fn folded_bytes_and_objects_per_site() {
    if !require_root() {
        return;
    }
    for (weight, pick) in [("bytes", 0), ("objects", 1)] {
        let (text, oracle) = trace("folded", &["--weight", weight]).unwrap();
        let by_site = folded_by_leaf(&text).unwrap();
        for (site, _) in ALLOCS_SITES {
            let s = &oracle.sites[site];
            let want = [s.expected_bytes, s.expected_objects][pick];
            let got = by_site.get(site).copied().unwrap_or(0);
            assert!(
                within(got, want, TOLERANCE),
                "--weight {weight}: {site} {got}, want {want}\n{text}"
            );
        }
    }
}

/// `--all-frames` keeps the probed allocator on top of every stack; by default every stack
/// that leaves the runtime has its first non-runtime frame as leaf, and runtime.goexit is
/// dropped from the roots (as Go's profiles drop it).
#[test]
fn folded_and_svg_hide_runtime_frames_unless_all_frames() {
    if !require_root() {
        return;
    }
    let (all, _) = trace("folded", &["--all-frames"]).unwrap();
    let leaves = folded_by_leaf(&all).unwrap();
    let on_allocator: u64 = leaves
        .iter()
        .filter(|(f, _)| f.starts_with("runtime.mallocgc"))
        .map(|(_, w)| w)
        .sum();
    let total: u64 = leaves.values().sum();
    assert!(
        on_allocator == total,
        "--all-frames: {on_allocator} of {total} bytes under runtime.mallocgc*: {leaves:#?}"
    );
    assert!(all.contains("runtime.goexit"), "{all}");
    let (folded, _) = trace("folded", &[]).unwrap();
    assert!(!folded.contains("runtime.goexit"), "{folded}");
    for line in folded.lines() {
        let (stack, _) = line.rsplit_once(' ').unwrap();
        let frames: Vec<&str> = stack.split(';').collect();
        let leaf = frames[frames.len() - 1];
        assert!(
            !is_runtime(leaf) || frames.iter().all(|f| is_runtime(f)),
            "runtime frame {leaf} above a user frame: {line}"
        );
    }
    let (svg, _) = trace("svg", &[]).unwrap();
    assert!(!svg.contains("runtime.goexit"), "svg keeps runtime.goexit");
    let (svg_all, _) = trace("svg", &["--all-frames"]).unwrap();
    assert!(
        svg_all.contains("runtime.goexit"),
        "--all-frames svg lacks it"
    );
}

#[test]
fn text_and_svg_name_the_sites() {
    if !require_root() {
        return;
    }
    let (text, _) = trace("text", &["--top", "50"]).unwrap();
    let (svg, _) = trace("svg", &[]).unwrap();
    assert!(
        svg.contains("<svg"),
        "not an svg:\n{}",
        &svg[..svg.len().min(500)]
    );
    for (site, _) in ALLOCS_SITES {
        assert!(text.contains(site), "text report lacks {site}:\n{text}");
        assert!(svg.contains(site), "svg lacks {site}");
    }
    assert!(
        text.contains("main.Small"),
        "text report lacks type main.Small:\n{text}"
    );
}
