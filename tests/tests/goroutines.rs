//! `gomemtrace goroutines` against the spawner fixture, on every Go release: siteA starts
//! 10 goroutines that exit, siteB 25 that block forever (5 batches, 150 ms apart), siteC 5
//! that exit. Exact creation, exit and live counts per creation site; siteB, and only
//! siteB among the program's sites, is a leak suspect; the creation stacks name the site
//! and its caller; and the live count agrees with the fixture's own runtime/metrics
//! `/sched/goroutines:goroutines` (which counts the program's goroutines before Go 1.26
//! and every goroutine, the runtime's too, from 1.26). Needs root.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    Proc, TempDir, Variant, fixture, for_every_version, gomemtrace_command, latest_go,
    require_root, run,
};
use serde_json::Value;

/// (creation function, created, exited, live).
const SITES: [(&str, u64, u64, u64); 3] = [
    ("main.siteA", 10, 10, 0),
    ("main.siteB", 25, 0, 25),
    ("main.siteC", 5, 5, 0),
];

fn fixture_values(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn site<'a>(report: &'a Value, function: &str) -> Result<&'a Value> {
    report["sites"]
        .as_array()
        .context("sites")?
        .iter()
        .find(|s| s["creation"]["function"] == function)
        .with_context(|| format!("no site created in {function}"))
}

fn check_sites(version: &str, report: &Value, stacks: bool) -> Result<()> {
    for (function, created, exited, live) in SITES {
        let s = site(report, function)?;
        let got = (
            s["created"].as_u64(),
            s["exited"].as_u64(),
            s["live"].as_u64(),
        );
        ensure!(
            got == (Some(created), Some(exited), Some(live)),
            "go{version} {function}: created/exited/live {got:?}, expected \
             ({created}, {exited}, {live}): {s}"
        );
        ensure!(
            s["leak_suspect"].as_bool() == Some(function == "main.siteB"),
            "go{version} {function}: leak_suspect {} ({})",
            s["leak_suspect"],
            s["live_changes"]
        );
        let frames: Vec<&str> = s["stack"]
            .as_array()
            .context("stack")?
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        if stacks {
            ensure!(
                frames.first() == Some(&function) && frames.get(1) == Some(&"main.main"),
                "go{version} {function}: creation stack {frames:?}"
            );
        } else {
            ensure!(frames.is_empty(), "--no-stacks recorded {frames:?}");
        }
        if live > 0 {
            ensure!(
                s["live_ages"]["max_ns"].as_u64().unwrap_or(0) > 0,
                "no ages: {s}"
            );
        }
    }
    Ok(())
}

fn check_launch(version: &str, variant: Variant, stacks: bool) -> Result<String> {
    let bin = fixture("spawner", version, variant)?;
    let tmp = TempDir::new(&format!("goroutines-{version}-{}", variant.name()))?;
    let out = tmp.join("out.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["goroutines", "--format", "json", "-o"]).arg(&out);
    if !stacks {
        cmd.arg("--no-stacks");
    }
    cmd.arg("--").arg(&bin);
    let finished = run(cmd, Duration::from_secs(120))?;
    ensure!(
        finished.code() == 0,
        "gomemtrace goroutines exited {} for go{version}:\n{}",
        finished.code(),
        finished.stderr
    );
    let fx = fixture_values(&finished.stdout);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    check_sites(version, &report, stacks)?;
    let live_user = report["live_user"].as_u64().context("live_user")?;
    let live = report["live"].as_u64().context("live")?;
    let metrics = fx
        .get("metrics-goroutines")
        .copied()
        .context("fixture output")?;
    let numgoroutine = fx.get("numgoroutine").copied().context("fixture output")?;
    // Launched: every goroutine was seen being created, so the counts are exact.
    ensure!(
        numgoroutine == live_user && numgoroutine == 26,
        "go{version}: NumGoroutine {numgoroutine}, our user live count {live_user}"
    );
    let ours = if minor(version) >= 26 {
        live
    } else {
        live_user
    };
    ensure!(
        metrics == ours,
        "go{version}: /sched/goroutines:goroutines {metrics}, ours {ours} (live {live}, user \
         {live_user})"
    );
    ensure!(
        report["exited_unknown_creation"] == 0,
        "launched: no goroutine predates the trace: {}",
        report["counters"]
    );
    let suspects = report["leak_suspects"].as_array().context("suspects")?;
    ensure!(
        suspects.len() == 1,
        "go{version}: leak suspects {suspects:?}"
    );
    Ok(format!(
        "go{version} {}{}: sites exact, live {live} ({live_user} user) = NumGoroutine \
         {numgoroutine}, metrics {metrics}",
        variant.name(),
        if stacks { "" } else { " --no-stacks" }
    ))
}

#[test]
fn spawner_counts_are_exact() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check_launch(v, Variant::Normal, true));
}

#[test]
fn stripped_spawner_counts_are_exact() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check_launch(v, Variant::Stripped, true));
}

#[test]
fn pie_and_no_stacks() {
    if !require_root() {
        return;
    }
    let v = latest_go();
    println!("{}", check_launch(&v, Variant::Pie, true).unwrap());
    println!("{}", check_launch(&v, Variant::Normal, false).unwrap());
}

/// Attached with -p to a running process: the goroutines that already existed (main and
/// the runtime's) are unknown-creation and not counted; the sites created after attach
/// are exact, and the runtime's count = ours + those that existed before.
#[test]
fn attach_to_running_process() {
    if !require_root() {
        return;
    }
    let v = latest_go();
    let bin = fixture("spawner", &v, Variant::Normal).unwrap();
    let mut target = Command::new(&bin);
    target
        .arg("-wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = target.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "ready");
    let tmp = TempDir::new("goroutines-pid").unwrap();
    let out = tmp.join("out.json");
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["goroutines", "--format", "json", "-o"])
        .arg(&out)
        .args(["-p", &child.id().to_string()]);
    let tracer = Proc::spawn(cmd).unwrap();
    tracer
        .wait_stderr("tracing goroutines", Duration::from_secs(60))
        .unwrap();
    writeln!(stdin).unwrap();
    let mut fx = BTreeMap::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if line == "done" {
            break;
        }
        if let Some((k, val)) = line.split_once(' ') {
            fx.insert(k.to_string(), val.parse::<u64>().unwrap());
        }
    }
    writeln!(stdin).unwrap();
    let mut tracer = tracer;
    let finished = tracer.wait(Duration::from_secs(60)).unwrap();
    let _ = child.wait();
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    check_sites(&v, &report, true).unwrap();
    assert_eq!(report["unknown_before_attach"], true);
    // Created after attach and alive: siteB's 25 only.
    assert_eq!(report["live"], 25, "{}", report["counters"]);
    let before_attach = fx["metrics-goroutines"] - 25;
    assert!(
        before_attach >= 1,
        "main existed before attach: metrics {fx:?}"
    );
    println!(
        "go{v} -p: sites exact; {} goroutines existed before attach (unknown creation)",
        before_attach
    );
}
