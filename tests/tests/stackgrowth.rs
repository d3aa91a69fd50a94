//! `gomemtrace stackgrowth` against a prediction, on every Go release: the recursion
//! fixture recurses `depth` levels of a function with a fixed frame in a fresh goroutine,
//! so its stack must double from 2 KiB to the first power of two that holds
//! depth × frame, every growth in `main.recurse`; one `runtime.GC()` while it is parked
//! then halves it once. Needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    TempDir, Variant, fixture, for_every_version, gomemtrace_command, latest_go, require_root, run,
};
use serde_json::Value;

/// Stack below the recursion that is not `recurse`'s (the goroutine's closure and
/// goexit frames) plus the runtime's guard area: an upper bound, for the prediction.
const SLACK: u64 = 8192;

struct Traced {
    report: Value,
    fixture: BTreeMap<String, u64>,
}

fn trace(version: &str, variant: Variant, format: &str) -> Result<(TempDir, Traced)> {
    let bin = fixture("recursion", version, variant)?;
    let tmp = TempDir::new(&format!("stackgrowth-{version}-{}", variant.name()))?;
    let out = tmp.join("out");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["stackgrowth", "--format", format, "-o"])
        .arg(&out)
        .arg("--")
        .arg(&bin);
    let finished = run(cmd, Duration::from_secs(120))?;
    ensure!(
        finished.code() == 0,
        "gomemtrace stackgrowth exited {} for go{version}:\n{}",
        finished.code(),
        finished.stderr
    );
    let mut values = BTreeMap::new();
    for line in finished.stdout.lines() {
        if let Some((k, v)) = line.split_once(' ')
            && let Ok(v) = v.parse()
        {
            values.insert(k.to_string(), v);
        }
    }
    let report = if format == "json" {
        serde_json::from_str(&std::fs::read_to_string(&out)?).context("stackgrowth json")?
    } else {
        Value::String(std::fs::read_to_string(&out).unwrap_or_default())
    };
    Ok((
        tmp,
        Traced {
            report,
            fixture: values,
        },
    ))
}

/// The smallest power of two ≥ `n`.
fn pow2_ceil(n: u64) -> u64 {
    n.next_power_of_two()
}

fn check(version: &str, variant: Variant) -> Result<String> {
    let (_tmp, t) = trace(version, variant, "json")?;
    let get = |k: &str| {
        t.fixture
            .get(k)
            .copied()
            .with_context(|| format!("fixture printed no {k}"))
    };
    let (frame, depth, goid) = (get("frame")?, get("depth")?, get("goid")?);
    ensure!(
        get("numgc-before")? == 0,
        "a GC ran first: the start size is adaptive"
    );
    ensure!(
        (1000..1200).contains(&frame),
        "frame {frame}: recurse's 1000-byte array should dominate its frame"
    );
    // The prediction: the stack must hold depth × frame (+ a little); it starts at 2 KiB
    // and doubles, so it ends at the first power of two above.
    let need = depth * frame;
    let fin = pow2_ceil(need);
    ensure!(
        fin == pow2_ceil(need + SLACK),
        "test design: {need}..{} B straddles a power of two; change -depth",
        need + SLACK
    );
    let growths = fin.trailing_zeros() - 2048u64.trailing_zeros();
    let events = t.report["events"].as_array().context("events")?;
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["goid"].as_u64() == Some(goid))
        .collect();
    let grows: Vec<&Value> = ours
        .iter()
        .copied()
        .filter(|e| e["kind"] == "grow")
        .collect();
    let steps: Vec<(u64, u64)> = grows
        .iter()
        .map(|e| {
            (
                e["old_size"].as_u64().unwrap_or(0),
                e["new_size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = (0..growths).map(|i| (2048u64 << i, 4096u64 << i)).collect();
    ensure!(
        steps == expected,
        "go{version} {}: goroutine {goid} grew {steps:?}, predicted {expected:?} \
         (depth {depth} × frame {frame} = {need} B → {fin} B)",
        variant.name()
    );
    for e in &grows {
        ensure!(
            e["function"] == "main.recurse",
            "growth attributed to {} not main.recurse: {e}",
            e["function"]
        );
        let stack: Vec<&str> = e["stack"]
            .as_array()
            .context("stack")?
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        // The overflowing recurse, its caller (the return address at sched.sp), then the
        // frame-pointer chain from sched.bp up to the goroutine's start (or the walk's
        // depth limit).
        let known = ["main.recurse", "main.main.func1", "runtime.goexit"];
        ensure!(
            stack.len() >= 3
                && stack[..2].iter().all(|f| *f == "main.recurse")
                && stack.iter().all(|f| known.contains(f)),
            "growth stack should be recurse's recursion: {stack:?}"
        );
        ensure!(
            e["copied_bytes"].as_u64().unwrap_or(0) > 0
                && e["copied_bytes"].as_u64().unwrap_or(0) <= e["old_size"].as_u64().unwrap_or(0),
            "copied bytes out of range: {e}"
        );
        ensure!(
            e["duration_ns"].as_u64().unwrap_or(0) > 0,
            "no copy time: {e}"
        );
    }
    // One runtime.GC() with the goroutine parked on a channel: its stack halves once.
    let shrinks: Vec<(u64, u64)> = ours
        .iter()
        .filter(|e| e["kind"] == "shrink")
        .map(|e| {
            (
                e["old_size"].as_u64().unwrap_or(0),
                e["new_size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        shrinks == [(fin, fin / 2)],
        "go{version}: shrinks of goroutine {goid}: {shrinks:?}, expected [({fin}, {})]",
        fin / 2
    );
    let by_fn = t.report["by_function"].as_array().context("by_function")?;
    let recurse = by_fn
        .iter()
        .find(|f| f["function"] == "main.recurse" && f["kind"] == "grow")
        .context("no main.recurse in by_function")?;
    ensure!(
        recurse["count"].as_u64() == Some(u64::from(growths)),
        "by_function main.recurse count {}, expected {growths}",
        recurse["count"]
    );
    let counters = &t.report["counters"];
    ensure!(
        counters["stack_copies"] == counters["stack_events_sent"]
            && counters["stack_ring_full"] == 0,
        "copies lost: {counters}"
    );
    Ok(format!(
        "go{version} {}: {growths} growths 2 KiB → {} KiB as predicted (depth {depth} × frame \
         {frame}), 1 shrink",
        variant.name(),
        fin / 1024
    ))
}

#[test]
fn recursion_grows_as_predicted() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check(v, Variant::Normal));
}

/// Stripped binaries use the per-release `g.sched` table instead of DWARF: the same
/// result checks the table.
#[test]
fn stripped_recursion_grows_as_predicted() {
    if !require_root() {
        return;
    }
    for_every_version(|v| check(v, Variant::Stripped));
}

/// PIE: stacks symbolized at their relocated addresses.
#[test]
fn pie_recursion_grows_as_predicted() {
    if !require_root() {
        return;
    }
    println!("{}", check(&latest_go(), Variant::Pie).unwrap());
}

/// Text and pprof render the same run.
#[test]
fn text_and_pprof_formats() {
    if !require_root() {
        return;
    }
    let v = latest_go();
    let (_tmp, t) = trace(&v, Variant::Normal, "text").unwrap();
    let text = t.report.as_str().unwrap();
    assert!(text.contains("main.recurse"), "{text}");
    assert!(text.contains("2 KiB→4 KiB×1"), "{text}");
    let bin = fixture("recursion", &v, Variant::Normal).unwrap();
    let tmp = TempDir::new("stackgrowth-pprof").unwrap();
    let out = tmp.join("p.pb.gz");
    let mut cmd = gomemtrace_command().unwrap();
    cmd.args(["stackgrowth", "--format", "pprof", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&bin);
    let finished = run(cmd, Duration::from_secs(120)).unwrap();
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
    let data = std::fs::read(&out).unwrap();
    assert_eq!(&data[..2], &[0x1f, 0x8b], "gzip");
    // `go tool pprof -top` reads it and names the recursion.
    let top =
        gomemtrace_tests::go_tool(&v, &["tool", "pprof", "-top", out.to_str().unwrap()]).unwrap();
    assert!(top.contains("main.recurse"), "{top}");
}
