//! Exact mode on more distinct keys and stacks than the kernel's maps hold at once (the
//! shape of a real program: hugo filled the old 16,384-stack map within a second, etcd the
//! 65,536-key map): the manystacks fixture allocates under 20,736 distinct call paths in
//! each of 4 goroutines, 82,944 keys (goroutine × stack) against 65,536 per allocation
//! buffer, and more stacks than gomemtrace leaves in the kernel before clearing the ones it
//! has interned. gomemtrace drains the maps while it traces, so nothing may be dropped and
//! every call path must carry exactly its allocations (the fixture's arithmetic: one per
//! goroutine and object). On the latest Go and 1.19. Needs root.
//!
//! Folded output, weighted by objects: one line per distinct stack of function names, and
//! the fixture's paths differ in their recursion depths, so each path is its own line
//! (the json report of 82,944 deep stacks would be hundreds of MB).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gomemtrace_tests::{
    TempDir, Variant, fixture, gomemtrace_command, latest_go, require_root, run,
};

/// The fixture's constants: R⁴ paths, 4 rounds (goroutines), 2 objects of 32 B per path.
const PATHS: u64 = 12 * 12 * 12 * 12;
const ROUNDS: u64 = 4;
const PER_PATH: u64 = 2;
const SIZE: u64 = 32;

fn stdout_value(stdout: &str, name: &str) -> Result<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("no {name:?} line in the fixture's output:\n{stdout}"))
}

fn check(version: &str) -> Result<String> {
    let bin = fixture("manystacks", version, Variant::Normal)?;
    let tmp = TempDir::new("drain")?;
    let folded_path = tmp.join("r.folded");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--format", "folded", "--weight", "objects", "-o"])
        .arg(&folded_path)
        .arg("--")
        .arg(&bin);
    let out = run(cmd, Duration::from_secs(300))?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let objects = stdout_value(&out.stdout, "objects ")?;
    let bytes = stdout_value(&out.stdout, "bytes ")?;
    ensure!(
        objects == PATHS * ROUNDS * PER_PATH && bytes == objects * SIZE,
        "the fixture's arithmetic: {objects} objects, {bytes} bytes"
    );
    // "...: N allocations (M aggregated, B bytes), D dropped"
    ensure!(
        out.stderr.contains(", 0 dropped"),
        "drops reported:\n{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&folded_path)?;
    let mut paths: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, weight) = line
            .rsplit_once(' ')
            .with_context(|| format!("folded line without weight: {line:?}"))?;
        if stack.ends_with(";main.leaf") {
            *paths.entry(stack).or_default() += weight.parse::<u64>()?;
        }
    }
    let total: u64 = paths.values().sum();
    ensure!(
        total == objects,
        "main.leaf: {total} objects counted; the fixture allocated {objects}"
    );
    ensure!(
        paths.len() as u64 == PATHS,
        "{} distinct stacks at main.leaf, {PATHS} call paths",
        paths.len()
    );
    let wrong: Vec<_> = paths
        .iter()
        .filter(|&(_, &n)| n != ROUNDS * PER_PATH)
        .take(3)
        .collect();
    ensure!(
        wrong.is_empty(),
        "paths not counted {} times each: {wrong:?}",
        ROUNDS * PER_PATH
    );
    Ok(format!(
        "Go {version}: {objects} objects under {} stacks × {ROUNDS} goroutines, no drops",
        paths.len()
    ))
}

#[test]
fn exact_mode_drains_more_keys_and_stacks_than_the_maps_hold_latest_and_old_go() {
    if !require_root() {
        return;
    }
    let mut failures = Vec::new();
    for version in [latest_go(), "1.19".to_string()] {
        match check(&version) {
            Ok(line) => println!("{line}"),
            Err(e) => failures.push(format!("Go {version}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
