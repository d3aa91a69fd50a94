//! `gomemtrace numa` measured for real, in a two-node guest (`cargo xtask vm run`: QEMU
//! TCG, Debian's cloud kernel, NUMA balancing with a shortened scan delay). The oracle is
//! the fixture's own report, from the kernel: each worker's goid, the node of the CPU it
//! is pinned to, its buffer's address range and the node its pages are on (move_pages).
//! Goroutines reading a buffer on the other node must get remote samples in it, the others
//! none — by goid and data address, with their creation site and the node they ran on.
//! (A goroutine's own stack and heap objects may sit on the other node whatever its
//! buffer: those samples are real, hence the check by address.)

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use gomemtrace_tests::{Finished, Proc, go_tool, latest_go, workspace_root};
use serde_json::Value;

/// The static build, the fixture and the boot (the boot itself is bounded at 150 s).
const T: Duration = Duration::from_secs(900);

#[derive(Debug)]
struct Worker {
    kind: String,
    goid: u64,
    function: String,
    cpu_node: u64,
    buffer_node: u64,
    pages: u64,
    on_node: u64,
    buffer: (u64, u64),
}

fn parse_workers(fixture_out: &str) -> Vec<Worker> {
    fixture_out
        .lines()
        .filter_map(|l| l.strip_prefix("worker "))
        .map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("no {name} in {l}"))
                    .to_string()
            };
            let num = |name: &str| field(name).parse::<u64>().unwrap();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            let buffer = field("buffer");
            let (lo, hi) = buffer.split_once('-').unwrap();
            Worker {
                kind: field("kind"),
                goid: num("goid"),
                function: field("function"),
                cpu_node: num("cpu_node"),
                buffer_node: num("buffer_node"),
                pages: num("pages"),
                on_node: num("on_node"),
                buffer: (hex(lo), hex(hi)),
            }
        })
        .collect()
}

fn boot(out: &Path) -> Finished {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["run", "-q", "-p", "xtask", "--", "vm", "run", "--out"])
        .arg(out);
    Proc::spawn(cmd).unwrap().wait(T).unwrap()
}

#[test]
fn remote_goroutines_get_remote_samples_and_local_ones_none() {
    // Kept after the test, for a look at what the guest printed.
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let out = target.join("vm/test-results");
    let run = boot(&out);
    assert_eq!(run.code(), 0, "xtask vm run failed:\n{}", run.stderr);
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| {
            let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
            panic!("{name}: {e}; console:\n{console}")
        })
    };
    let rc = read("rc.txt");
    let fixture = read("fixture.txt");
    let stderr = read("stderr.txt");
    assert_eq!(
        rc.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0"],
        "gomemtrace numa exit codes in the guest; stderr:\n{stderr}\nfixture:\n{fixture}"
    );
    let workers = parse_workers(&fixture);
    assert_eq!(workers.len(), 4, "{fixture}");
    // The oracle itself: every buffer is where the fixture put it, and each kind reads
    // across nodes or not.
    for w in &workers {
        assert_eq!(w.on_node, w.pages, "buffer not placed: {w:?}");
        assert_eq!(w.kind == "remote", w.cpu_node != w.buffer_node, "{w:?}");
    }
    let report: Value = serde_json::from_str(&read("numa.json")).unwrap();
    assert_eq!(report["schema"], "gomemtrace.numa/v1");
    assert_eq!(report["nodes_online"], serde_json::json!([0, 1]));
    assert_eq!(
        report["methods"][0]["active"], true,
        "{}",
        report["methods"]
    );
    assert_eq!(report["counters"]["ring_full"], 0);
    assert_eq!(report["events_not_listed"], 0);
    let rows = report["goroutines"].as_array().unwrap();
    let row = |goid: u64| rows.iter().find(|r| r["goid"] == goid);
    let events = report["events"].as_array().unwrap();
    let addr_in =
        |e: &Value, buffer: (u64, u64)| (buffer.0..buffer.1).contains(&e["addr"].as_u64().unwrap());
    let mut remote_sites = BTreeSet::new();
    let mut local_sites = BTreeSet::new();
    for w in &workers {
        // This worker's samples in its own buffer: (remote, local).
        let (remote, local) = events
            .iter()
            .filter(|e| e["goid"] == w.goid && addr_in(e, w.buffer))
            .fold((0, 0), |(r, l), e| {
                if e["local"] == true {
                    (r, l + 1)
                } else {
                    (r + 1, l)
                }
            });
        println!("{w:?}: {remote} remote, {local} local samples in its buffer");
        let r = row(w.goid).unwrap_or_else(|| panic!("no samples for {w:?}:\n{rows:#?}"));
        if w.kind == "remote" {
            assert!(
                remote > 0,
                "remote worker without remote samples in its buffer: {w:?} {r}"
            );
            assert!(r["remote_samples"].as_u64().unwrap() >= remote, "{r}");
            // Found through R14 (or remembered from an R14 read): never guessed.
            let sources = r["goid_sources"].as_object().unwrap();
            assert!(sources.keys().all(|s| s == "r14" || s == "cached"), "{r}");
            // It ran where it was pinned: its buffer's samples all on its CPU's node.
            let off_node = events.iter().filter(|e| {
                e["goid"] == w.goid && addr_in(e, w.buffer) && e["cpu_node"] != w.cpu_node
            });
            assert_eq!(off_node.count(), 0, "{w:?}");
            remote_sites.insert(r["created_at"].as_str().unwrap().to_string());
        } else {
            // None expected; one stray remote hint fault among ~25,000 local ones was seen
            // once in CI under load (cause not found). Allow 1 in 5,000 so that the test
            // still fails on any real misattribution (a remote reader's buffer gives 2,048).
            assert!(
                remote * 5_000 <= local,
                "local worker with remote samples in its buffer: {w:?}: {remote} remote, {local} local"
            );
            assert!(
                local > 0,
                "local worker without samples in its buffer: {w:?}"
            );
            local_sites.insert(r["created_at"].as_str().unwrap_or("").to_string());
        }
    }
    // Nobody else's samples land in a worker's buffer. A sample whose goroutine could not
    // be read (its g and m on pages NUMA balancing had just unmapped, and not remembered)
    // says so: goid 0, source "unknown", counted in goid_unknown; a few are allowed.
    for w in &workers {
        let mut others: std::collections::BTreeMap<(u64, String), u64> = Default::default();
        let mut own = 0u64;
        for e in events.iter().filter(|e| addr_in(e, w.buffer)) {
            if e["goid"] == w.goid {
                own += 1;
            } else {
                let source = e["goid_source"].as_str().unwrap().to_string();
                *others
                    .entry((e["goid"].as_u64().unwrap(), source))
                    .or_default() += 1;
            }
        }
        let unknown = others
            .get(&(0, "unknown".to_string()))
            .copied()
            .unwrap_or(0);
        println!("goid {}: others' samples in its buffer: {others:?}", w.goid);
        assert!(
            others.len() == usize::from(unknown > 0),
            "samples of other goroutines (goid, source) in {w:?}: {others:?}"
        );
        assert!(
            unknown * 100 <= own,
            "{unknown} unattributed samples in {w:?}, {own} attributed: {others:?}"
        );
        assert!(
            unknown <= report["counters"]["goid_unknown"].as_u64().unwrap(),
            "unattributed samples not counted"
        );
    }
    // Both remote workers come from one `go` statement in main.main; local workers from
    // another.
    assert_eq!(remote_sites.len(), 1, "{remote_sites:?}");
    let site = remote_sites.first().unwrap();
    assert!(site.starts_with("main.main"), "{site}");
    assert_eq!(local_sites.len(), 1, "{local_sites:?}");
    assert!(local_sites.is_disjoint(&remote_sites), "{local_sites:?}");
    // By stack: remote samples are in the remote readers' code.
    let remote_fn = &workers
        .iter()
        .find(|w| w.kind == "remote")
        .unwrap()
        .function;
    let stacks = report["stacks"].as_array().unwrap();
    assert!(
        stacks.iter().any(|s| {
            let frames = s["stack"].as_array().unwrap();
            frames.iter().any(|f| &f["function"] == remote_fn)
                && s["remote_samples"].as_u64().unwrap() > 0
        }),
        "no remote samples in {remote_fn}: {stacks:#?}"
    );
    // Placement: the buffers (outside the Go heap) are resident on both nodes, and the
    // Go heap was found (from the runtime's arena list).
    let placement = report["placement"].as_array().unwrap();
    for node in [0, 1] {
        let n = placement.iter().find(|p| p["node"] == node);
        let anon = n.map_or(0, |p| p["other_anon_bytes"].as_u64().unwrap());
        assert!(
            anon > 0,
            "no anonymous memory on node {node}: {placement:?}"
        );
    }
    let heap: u64 = placement
        .iter()
        .map(|p| p["go_heap_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        heap > 0,
        "no Go heap: {placement:?} {}",
        report["methods"][1]
    );
    // The text report of the second run names the method and the goroutines.
    let text = read("numa.txt");
    assert!(
        text.contains("active   numa-balancing hint faults"),
        "{text}"
    );
    let text_fixture = parse_workers(&read("fixture-text.txt"));
    let remote_goid = text_fixture
        .iter()
        .find(|w| w.kind == "remote")
        .unwrap()
        .goid;
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(&remote_goid.to_string())),
        "goroutine {remote_goid} missing:\n{text}"
    );
    // The pprof run: weighted by remote samples, read by Go's own pprof. Its total is the
    // count gomemtrace printed for that run, and the remote readers carry more of it than
    // the local ones.
    let stderr = read("stderr-pprof.txt");
    let remote_total: u64 = stderr
        .lines()
        .find_map(|l| {
            l.rsplit_once(": ")?
                .1
                .split_once(" remote, ")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample count on stderr:\n{stderr}"));
    let profile = out.join("numa.pb.gz");
    let top = go_tool(
        &latest_go(),
        &[
            "tool",
            "pprof",
            "-top",
            "-cum",
            "-symbolize=none",
            "-sample_index=remote_samples",
            "-nodecount=10000",
            "-nodefraction=0",
            "-edgefraction=0",
            profile.to_str().unwrap(),
        ],
    )
    .unwrap();
    let total = top
        .lines()
        .find_map(|l| {
            l.split_once("% of ")?
                .1
                .split_once(" total")?
                .0
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no total in:\n{top}"));
    assert_eq!(total, remote_total, "{top}");
    let cum = |function: &str| -> u64 {
        top.lines()
            .find(|l| l.split_whitespace().nth(5) == Some(function))
            .map_or(0, |l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
    };
    let (remote, local) = (cum("main.remoteReader"), cum("main.localReader"));
    assert!(remote > local && remote > 0, "{top}");
}
