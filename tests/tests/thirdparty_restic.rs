//! restic (Debian's 0.14.0, Go 1.19.8, stripped, cgo; `scripts/setup.sh` installs it)
//! backing up a generated tree of `FILES` files into a new local repository, launched
//! under gomemtrace:
//!
//! - exact mode: no event lost or kept without its stack, most bytes under restic's own
//!   frames, and the events up to its runtime's last reading before it exits equal to the
//!   runtime's own count then (its allocation counters, read from the process) within 0.5%;
//! - the default mode: duty-cycled (the sampler is compiled out), no drop.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    Report, TempDir, exact_report::check_exact_report, find_on_path, gomemtrace_command,
    require_root, run,
};

const FILES: usize = 2000;
const OWN_PACKAGES: &str = "github.com/restic/restic/";

/// `FILES` files of 1–64 KiB of varied bytes in nested directories, and an empty
/// repository; the environment restic needs.
fn prepare(restic: &Path, tmp: &TempDir) -> Result<Vec<(&'static str, String)>> {
    let tree = tmp.join("tree");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..FILES {
        let dir = tree.join(format!("d{}/e{}", i % 20, i % 7));
        std::fs::create_dir_all(&dir)?;
        let len = 1024 * (1 + (i * 37) % 64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Text-like: compressible runs and variety, as real files.
                b"abcdefgh \n"[(x % 10) as usize]
            })
            .collect();
        std::fs::write(dir.join(format!("f{i}.txt")), bytes)?;
    }
    let env = vec![
        ("RESTIC_REPOSITORY", tmp.join("repo").display().to_string()),
        ("RESTIC_PASSWORD", "gomemtrace".to_string()),
        ("RESTIC_CACHE_DIR", tmp.join("cache").display().to_string()),
    ];
    let status = Command::new(restic)
        .args(["init", "--quiet"])
        .envs(env.iter().cloned())
        .status()?;
    ensure!(status.success(), "restic init: {status}");
    Ok(env)
}

/// `restic backup` of the tree under gomemtrace with `flags`; the report's path.
fn backup(restic: &Path, tmp: &TempDir, flags: &[&str]) -> Result<std::path::PathBuf> {
    let env = prepare(restic, tmp)?;
    let report = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(flags)
        .args(["--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(restic)
        .args(["backup", "--quiet"])
        .arg(tmp.join("tree"))
        .envs(env);
    let out = run(cmd, Duration::from_secs(400))?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    ensure!(
        std::fs::read_dir(tmp.join("repo/snapshots"))?.count() == 1,
        "restic wrote no snapshot"
    );
    Ok(report)
}

fn restic() -> Option<std::path::PathBuf> {
    let found = find_on_path("restic");
    if found.is_none() {
        println!("SKIP: restic is not installed (scripts/setup.sh installs Debian's restic)");
    }
    found
}

#[test]
fn restic_backup_exact_keeps_every_event_with_its_stack() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(restic) = restic() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-restic-exact")?;
    let report = backup(&restic, &tmp, &["--exact", "--totals", "probes"])?;
    let json = std::fs::read_to_string(&report)?;
    let figures = check_exact_report(&json, OWN_PACKAGES)?;
    let report = &figures.report;
    println!(
        "restic backup of {FILES} files: {} events, {} samples, {} bytes of json",
        report.events,
        report.samples.len(),
        json.len()
    );
    figures.own_share_at_least(0.5, OWN_PACKAGES)?;
    // The events up to the runtime's last reading before exit against its count then
    // (measured: within 0.07%).
    figures.events_until_reading_match_the_runtime(0.005)
}

/// The default mode on this binary, whose heap sampler is compiled out, is duty-cycled and
/// says so, and drops nothing. Its per-site estimates are not checked: on a short run the
/// first window falls on the start-up burst (package inits, regexp compilation) and scales
/// it by the whole run (docs/SAMPLING.md, Known gaps: measured here, a runtime-only stack
/// estimated at 45 MB on top).
#[test]
fn restic_backup_default_mode_is_duty_and_drops_nothing() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(restic) = restic() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-restic-default")?;
    let report = Report::read(&backup(&restic, &tmp, &[])?)?;
    ensure!(report.mode == "duty", "mode {}", report.mode);
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    ensure!(report.events > 0, "no event in any window");
    let top = report.top_sites(5);
    println!("restic default mode ({}): top sites {top:?}", report.mode);
    Ok(())
}
