//! `gomemtrace inspect`: what it reports of the allocs fixture built by every Go release
//! (normal and stripped PIE) matches the toolchain, the build, and what a real trace
//! probes; bad files get their documented exit code and one stderr line, fast. No root
//! needed except for the trace comparison.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gomemtrace_tests::{
    Finished, Proc, Report, TempDir, Variant, assert_one_error_line, fixture, go_tool, go_versions,
    gomemtrace_command, latest_go, require_root, run, write_executable,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// How long a refusal may take.
const QUICK: Duration = Duration::from_secs(5);

const VARIANTS: [Variant; 2] = [Variant::Normal, Variant::StrippedPie];

fn inspect(args: &[&str], file: Option<&Path>) -> Result<Finished> {
    let mut cmd = gomemtrace_command()?;
    cmd.arg("inspect").args(args);
    if let Some(file) = file {
        cmd.arg(file);
    }
    run(cmd, T)
}

fn inspect_json(file: &Path) -> Result<Value> {
    let out = inspect(&["--format", "json"], Some(file))?;
    ensure!(
        out.code() == 0,
        "inspect exited {}:\n{}",
        out.code(),
        out.stderr
    );
    serde_json::from_str(&out.stdout).with_context(|| format!("parse:\n{}", out.stdout))
}

/// The functions of a plan's probes.
fn functions(plan: &Value) -> Vec<String> {
    plan["probes"]
        .as_array()
        .map(|probes| {
            probes
                .iter()
                .map(|p| p["function"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The toolchain's own version string (`go1.27.3`).
fn toolchain_version(version: &str) -> Result<String> {
    let out = go_tool(version, &["version"])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| format!("go version printed {out:?}"))
}

fn check(version: &str, variant: Variant) -> Result<()> {
    let bin = fixture("allocs", version, variant)?;
    let j = inspect_json(&bin)?;
    let expected = toolchain_version(version)?;
    ensure!(
        j["schema"] == "gomemtrace.inspect/v1",
        "schema {}",
        j["schema"]
    );
    ensure!(
        j["go_version"] == expected.as_str(),
        "go_version {} != toolchain {expected}",
        j["go_version"]
    );
    ensure!(j["version_source"] == "buildinfo" && j["buildinfo"] == true);
    ensure!(
        j["stripped"] == variant.is_stripped() && j["pie"] == variant.is_pie(),
        "stripped {} pie {}",
        j["stripped"],
        j["pie"]
    );
    ensure!(j["arch"] == "amd64" && j["refused"].is_null());
    ensure!(j["build_settings"].is_array() && j["main_module"] == "allocs");
    // CGO_ENABLED is a build setting of every release here.
    ensure!(j["cgo"].is_boolean(), "cgo {}", j["cgo"]);
    for (name, plan) in [
        ("auto", &j["allocation"]["auto"]),
        ("exact", &j["allocation"]["exact"]),
        ("gc", &j["gc"]),
    ] {
        ensure!(
            plan["refused"].is_null() && !functions(plan).is_empty(),
            "{name} plan: {plan}"
        );
        for p in plan["probes"].as_array().into_iter().flatten() {
            ensure!(
                p["vaddr"].as_u64().unwrap_or(0) > 0 && p["file_offset"].as_u64().is_some(),
                "{name} probe {p}"
            );
        }
    }
    ensure!(j["allocation"]["exact"]["mode"] == "exact");
    // The fixture imports runtime/pprof: auto picks the runtime's sampler.
    ensure!(
        j["allocation"]["auto"]["mode"] == "runtime",
        "auto: {}",
        j["allocation"]["auto"]
    );
    let source = if variant.is_stripped() {
        "table"
    } else {
        "dwarf"
    };
    let fields = j["offsets"]["fields"]
        .as_array()
        .context("offsets.fields")?;
    let names: Vec<&str> = fields.iter().filter_map(|f| f["field"].as_str()).collect();
    ensure!(
        names
            == [
                "g.goid",
                "g.m",
                "m.curg",
                "g.startpc",
                "g.gopc",
                "g.stack.lo",
                "g.stack.hi",
                "g.sched.sp",
                "g.sched.pc",
                "g.sched.bp"
            ],
        "offset fields {names:?}"
    );
    ensure!(
        fields.iter().all(|f| f["source"] == source) && j["offsets"]["missing"].is_null(),
        "offsets: {}",
        j["offsets"]
    );
    // The text form renders the same inspection.
    let text = inspect(&[], Some(&bin))?;
    ensure!(
        text.code() == 0 && text.stdout.contains(&expected),
        "{}",
        text.stderr
    );
    Ok(())
}

#[test]
fn every_go_version_normal_and_stripped_pie() {
    let mut failures = Vec::new();
    for version in go_versions() {
        for variant in VARIANTS {
            match check(&version, variant) {
                Ok(()) => println!("Go {version} {}: ok", variant.name()),
                Err(e) => failures.push(format!("Go {version} {}: {e:#}", variant.name())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The probes inspect lists are the ones a trace attaches: `--mode auto` (the default)
/// and `--exact`, on the latest Go.
#[test]
fn probes_are_those_a_trace_attaches() {
    if !require_root() {
        return;
    }
    let version = latest_go();
    for variant in VARIANTS {
        let bin = fixture("allocs", &version, variant).unwrap();
        let j = inspect_json(&bin).unwrap();
        let tmp = TempDir::new(&format!("inspect-trace-{}", variant.name())).unwrap();
        for (mode, args) in [("auto", &[][..]), ("exact", &["--exact"][..])] {
            let report_path = tmp.join(&format!("{mode}.json"));
            let mut cmd = gomemtrace_command().unwrap();
            cmd.args(args)
                .args(["-q", "--format", "json", "-o"])
                .arg(&report_path)
                .arg("--")
                .arg(&bin);
            let out = run(cmd, T).unwrap();
            assert_eq!(out.code(), 0, "trace {mode}: {}", out.stderr);
            let report = Report::read(&report_path).unwrap();
            assert_eq!(
                report.target.probes,
                functions(&j["allocation"][mode]),
                "Go {version} {} --mode {mode}",
                variant.name()
            );
            assert_eq!(report.mode, j["allocation"][mode]["mode"].as_str().unwrap());
            assert_eq!(report.target.go_version, j["go_version"].as_str().unwrap());
        }
    }
}

/// `-p PID` reads the process's executable: the same answer as the file, with the pid.
#[test]
fn pid_reads_the_running_executable() {
    let bin = fixture("allocs", &latest_go(), Variant::Normal).unwrap();
    let mut target = Command::new(&bin);
    target.arg("-wait");
    let target = Proc::spawn(target).unwrap();
    target.wait_stdout("ready", T).unwrap();
    let out = inspect(&["--format", "json", "-p", &target.pid().to_string()], None).unwrap();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let by_pid: Value = serde_json::from_str(&out.stdout).unwrap();
    let by_file = inspect_json(&bin).unwrap();
    assert_eq!(by_pid["pid"], target.pid());
    for field in [
        "go_version",
        "stripped",
        "pie",
        "allocation",
        "gc",
        "offsets",
    ] {
        assert_eq!(by_pid[field], by_file[field], "{field}");
    }
}

/// Runs inspect on `file` and checks its exit code, its one stderr line, and its speed.
fn refused(what: &str, file: &Path, code: i32, contains: &str) {
    let started = Instant::now();
    let out = inspect(&[], Some(file)).unwrap();
    let took = started.elapsed();
    assert_eq!(out.code(), code, "{what}: stderr:\n{}", out.stderr);
    assert_one_error_line(what, &out);
    assert!(
        out.stderr.contains(contains),
        "{what}: {contains:?} not in {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{what}: stdout:\n{}", out.stdout);
    assert!(took < QUICK, "{what} took {took:?}");
}

#[test]
fn bad_files_exit_4_with_one_line() {
    let tmp = TempDir::new("inspect-bad").unwrap();
    let good = std::fs::read(fixture("allocs", &latest_go(), Variant::Normal).unwrap()).unwrap();
    for (name, len) in [("truncated", good.len() / 2), ("headers-only", 200)] {
        let path = tmp.join(name);
        write_executable(&path, &good[..len]).unwrap();
        refused(name, &path, 4, "gomemtrace: ");
    }
    // Bytes from a fixed xorshift sequence.
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = tmp.join("random");
    write_executable(&path, &random).unwrap();
    refused("random bytes", &path, 4, "not a Go binary");
    let path = tmp.join("empty");
    write_executable(&path, &[]).unwrap();
    refused("empty file", &path, 4, "not a Go binary");
    refused("/bin/true", Path::new("/bin/true"), 4, "not a Go binary");
    refused("a directory", tmp.path(), 4, "not a regular file");
}

/// A path that does not exist is exit 1, as a command `gomemtrace -- CMD` cannot find.
#[test]
fn missing_file_exits_1_with_one_line() {
    refused(
        "missing file",
        Path::new("/nonexistent/gomemtrace-inspect-test"),
        1,
        "No such file",
    );
}
