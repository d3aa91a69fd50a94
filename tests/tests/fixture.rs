//! The fixtures themselves, without gomemtrace (no root needed): the `allocs` fixture's
//! oracle (the Go runtime's MemProfileRate=1 profile) must match its arithmetic exactly,
//! for every Go release and link variant. If this fails, the end-to-end tests' expected
//! numbers are wrong, not gomemtrace.

use std::process::Command;
use std::time::Duration;

use gomemtrace_tests::{
    ALLOCS_SITES, Oracle, Proc, TempDir, Variant, fixture, go_versions, parse_goids,
};

#[test]
fn allocs_oracle_matches_arithmetic() {
    let tmp = TempDir::new("fixture").unwrap();
    let mut failures = Vec::new();
    for version in go_versions() {
        for variant in Variant::ALL {
            if let Err(e) = check(&tmp, &version, variant) {
                failures.push(format!("Go {version} {}: {e:#}", variant.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn check(tmp: &TempDir, version: &str, variant: Variant) -> anyhow::Result<()> {
    let bin = fixture("allocs", version, variant)?;
    let oracle_path = tmp.join(&format!("oracle-{version}-{}.json", variant.name()));
    let mut cmd = Command::new(&bin);
    cmd.arg("-oracle").arg(&oracle_path).args(["-exit", "7"]);
    let out = Proc::spawn(cmd)?.wait(Duration::from_secs(60))?;
    anyhow::ensure!(
        out.code() == 7,
        "fixture exited {} (want 7, from -exit 7):\n{}",
        out.code(),
        out.stderr
    );
    anyhow::ensure!(
        out.stdout.lines().any(|l| l == "done"),
        "no 'done' line:\n{}",
        out.stdout
    );
    let oracle = Oracle::read(&oracle_path)?;
    anyhow::ensure!(
        oracle.go_version.starts_with(&format!("go{version}.")),
        "built by {} (want Go {version})",
        oracle.go_version
    );
    let goids = parse_goids(&out.stdout);
    let mut seen = std::collections::BTreeSet::new();
    for (site, _) in ALLOCS_SITES {
        let expected = oracle
            .sites
            .get(site)
            .ok_or_else(|| anyhow::anyhow!("oracle lacks site {site}"))?;
        let got = oracle
            .profile
            .get(site)
            .ok_or_else(|| anyhow::anyhow!("runtime profile lacks {site}"))?;
        anyhow::ensure!(
            (got.alloc_bytes, got.alloc_objects)
                == (expected.expected_bytes, expected.expected_objects),
            "{site}: runtime profile {} B / {} objects, arithmetic {} B / {} objects",
            got.alloc_bytes,
            got.alloc_objects,
            expected.expected_bytes,
            expected.expected_objects
        );
        anyhow::ensure!(
            goids.get(site) == Some(&expected.goid),
            "{site}: stdout goid {:?}, oracle {}",
            goids.get(site),
            expected.goid
        );
        anyhow::ensure!(
            expected.goid > 1 && seen.insert(expected.goid),
            "{site}: goid {} is not a distinct worker",
            expected.goid
        );
    }
    Ok(())
}

/// `-wait` blocks before any work until SIGUSR1.
#[test]
fn allocs_wait_blocks_until_sigusr1() {
    let bin = fixture("allocs", &gomemtrace_tests::latest_go(), Variant::Normal).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-wait");
    let mut proc = Proc::spawn(cmd).unwrap();
    proc.wait_stdout("ready", Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !proc.stdout_text().contains("goid"),
        "worked before SIGUSR1:\n{}",
        proc.stdout_text()
    );
    proc.signal(libc::SIGUSR1).unwrap();
    let out = proc.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        parse_goids(&out.stdout).len(),
        ALLOCS_SITES.len(),
        "{}",
        out.stdout
    );
}
