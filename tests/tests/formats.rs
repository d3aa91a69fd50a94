//! The other report formats carry the same numbers as json: folded stacks (weighted by
//! bytes and by objects), text and svg name the allocs fixture's sites. Needs root.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    ALLOCS_SITES, Oracle, RUN_TIMEOUT, TOLERANCE, TempDir, Variant, fixture, gomemtrace_command,
    latest_go, require_root, run, within,
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

/// Folded stacks `root;...;leaf WEIGHT`: summed weight per site (the first frame from the
/// leaf that is not in the runtime).
fn folded_by_site(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, weight) = line
            .rsplit_once(' ')
            .with_context(|| format!("folded line without weight: {line:?}"))?;
        let weight: u64 = weight
            .parse()
            .with_context(|| format!("weight of {line:?}"))?;
        let site = stack
            .split(';')
            .rev()
            .map(|f| f.trim_end_matches(" (inline)"))
            .find(|f| !f.is_empty() && !gomemtrace_tests::is_runtime(f))
            .unwrap_or("?");
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
        let by_site = folded_by_site(&text).unwrap();
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
