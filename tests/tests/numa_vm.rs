//! `gomemtrace numa` measured for real, in a two-node guest (`cargo xtask vm run`: QEMU
//! TCG, Debian's cloud kernel, NUMA balancing with a shortened scan delay). The oracle is
//! the fixture's own report, from the kernel: each worker's goid, the node of the CPU it
//! is pinned to, its buffer's address range and the node its pages are on (move_pages).
//! Goroutines reading a buffer on the other node must get remote samples in it, the others
//! none — by goid and data address, with their creation site and the node they ran on.
//! (A goroutine's own stack and heap objects may sit on the other node whatever its
//! buffer: those samples are real, hence the check by address.)
//!
//! Allocations per node: two goroutines pinned to a CPU of node 0 and of node 1 allocate
//! and keep 64 KiB objects at their own sites; the fixture says where the kernel put each
//! object (move_pages right after writing it) and how many of them the runtime's own heap
//! profile sampled. gomemtrace's per-stack allocations must put each site's sampled
//! objects on its node, count exactly the runtime's samples, and match the fixture's
//! arithmetic. The same checks run on a launched target and on one attached with `-p`.

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

/// The value of `name=VALUE` among a fixture line's space-separated fields.
fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .to_string()
}

fn parse_workers(fixture_out: &str) -> Vec<Worker> {
    fixture_out
        .lines()
        .filter_map(|l| l.strip_prefix("worker "))
        .map(|l| {
            let field = |name: &str| field(l, name);
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

/// One allocation site of the fixture, as its `heap` line reports it.
#[derive(Debug)]
struct HeapSite {
    site: String,
    goid: u64,
    cpu_node: u64,
    objects: u64,
    size: u64,
    rate: u64,
    gomaxprocs: u64,
    /// Where each object's first page was right after it was written (move_pages).
    on_node: u64,
    other_node: u64,
    unclassified: u64,
    /// Objects the runtime's own heap profile sampled (in use at the end).
    runtime_sampled: u64,
}

fn parse_heap(fixture_out: &str) -> Vec<HeapSite> {
    fixture_out
        .lines()
        .filter_map(|l| l.strip_prefix("heap "))
        .map(|l| {
            let field = |name: &str| field(l, name);
            let num = |name: &str| field(name).parse::<u64>().unwrap();
            HeapSite {
                site: field("site"),
                goid: num("goid"),
                cpu_node: num("cpu_node"),
                objects: num("objects"),
                size: num("size"),
                rate: num("rate"),
                gomaxprocs: num("gomaxprocs"),
                on_node: num("on_node"),
                other_node: num("other_node"),
                unclassified: num("unclassified"),
                runtime_sampled: num("runtime_sampled"),
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
    for line in run.stderr.lines().filter(|l| l.contains("guest ran")) {
        println!("{line}");
    }
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| {
            let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
            panic!("{name}: {e}; console:\n{console}")
        })
    };
    let rc = read("rc.txt");
    let fixture = read("fixture.txt");
    let stderr = read("stderr.txt");
    // json, text, pprof runs; the -p run and the fixture it attached to.
    assert_eq!(
        rc.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0", "0", "0"],
        "gomemtrace numa exit codes in the guest; stderr:\n{stderr}\n{}\nfixture:\n{fixture}",
        read("stderr-pid.txt")
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
    assert_eq!(report["target"]["mode"], "launch");
    check_hint_faults(&report, &workers, "launch");
    check_allocations(&report, &parse_heap(&fixture), "start", "launch");
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
    // The text report of the second run names the methods, the goroutines and the
    // allocation sites.
    let text = read("numa.txt");
    assert!(
        text.contains("active   numa-balancing hint faults"),
        "{text}"
    );
    assert!(text.contains("active   allocations per node"), "{text}");
    for site in ["main.allocOnNode0", "main.allocOnNode1"] {
        assert!(
            text.lines().any(|l| l.contains(&format!("  {site} ← "))),
            "no allocation stack row for {site}:\n{text}"
        );
    }
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

    // Attach mode: the fixture placed its buffers and waited; gomemtrace attached with
    // -p, then the fixture allocated and its readers read. The same checks by goid and
    // address, and its allocations are all seen (made after attach).
    let fixture = read("fixture-pid.txt");
    let workers = parse_workers(&fixture);
    assert_eq!(workers.len(), 4, "{fixture}");
    for w in &workers {
        assert_eq!(w.on_node, w.pages, "buffer not placed: {w:?}");
    }
    let report: Value = serde_json::from_str(&read("numa-pid.json")).unwrap();
    assert_eq!(report["target"]["mode"], "pid");
    // Interrupted (Ctrl-C writes the report) 2 s after the fixture's last allocation and
    // before the fixture ends: the trace covers every allocation however slow the guest.
    assert_eq!(report["end"], "interrupted", "-p ends before the fixture");
    check_hint_faults(&report, &workers, "-p");
    check_allocations(&report, &parse_heap(&fixture), "attach", "-p");

    // The agent, on the guest where NUMA is available: its last scrape before the fixture
    // exited.
    let fixture = read("fixture-agent.txt");
    let workers = parse_workers(&fixture);
    assert_eq!(workers.len(), 4, "{fixture}");
    check_agent(
        &read("agent-metrics.txt"),
        &read("agent-stderr.txt"),
        &read("agent-rc.txt"),
        &workers,
    );
}

/// A sample's value in Prometheus text: `name{labels} value`, labels as given.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// `gomemtrace agent` measures remote accesses where NUMA is available: remote hint
/// faults come from the remote readers' buffers, whose every page sits on the other node
/// until its first fault migrates it (the one-process view shows one remote sample per
/// page). Other remote faults (stacks, heap, runtime) add some: one run gave 4 997 remote
/// for 4 096 pages, and 85 309 local. A locality turned around or lost is far outside.
fn check_agent(metrics: &str, stderr: &str, rc: &str, workers: &[Worker]) {
    assert_eq!(rc.trim(), "0", "agent exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("not available"), "{stderr}");
    assert_eq!(
        metric(metrics, "gomemtrace_agent_numa_available"),
        Some(1.0),
        "{metrics}\n{stderr}"
    );
    let faults = |locality: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("gomemtrace_numa_hint_faults_total{")
                    && l.contains("exe=\"/numa\"")
                    && l.contains(&format!("locality=\"{locality}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let (remote, local) = (faults("remote"), faults("local"));
    let remote_pages: u64 = workers
        .iter()
        .filter(|w| w.kind == "remote")
        .map(|w| w.pages)
        .sum();
    println!(
        "agent: {remote} remote, {local} local hint faults of /numa; remote readers' pages {remote_pages}"
    );
    assert!(
        remote >= remote_pages as f64 / 4.0 && remote <= remote_pages as f64 * 2.0,
        "agent: {remote} remote hint faults, remote readers' buffers hold {remote_pages} pages:\n{metrics}"
    );
    assert!(local > remote, "agent: {local} local, {remote} remote");
}

/// The sampler's first sample on each P comes at the default rate (512 KiB), drawn before
/// main set the low one: per P, up to this many default means of bytes may pass unsampled
/// (an exponential draw exceeds 8 means with probability e^-8 = 3e-4).
const FIRST_DRAW_MEANS: f64 = 8.0;
const DEFAULT_RATE: f64 = 512.0 * 1024.0;

/// The stack (json, leaf first) of a sample the runtime allocated on the system stack:
/// between the sampler (`runtime.mProf_Malloc`, which reaches `setprofilebucket` through
/// `systemstack` itself) and the first frame outside the runtime, a `runtime.systemstack`.
fn via_system_stack(row: &Value) -> bool {
    row["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or(""))
        .skip_while(|f| *f != "runtime.mProf_Malloc")
        .take_while(|f| f.starts_with("runtime.") || f.starts_with("internal/runtime/"))
        .any(|f| f == "runtime.systemstack")
}

/// The allocations section of one json report against the fixture's `heap` lines.
fn check_allocations(report: &Value, sites: &[HeapSite], seen_since: &str, label: &str) {
    let method = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "allocations per node")
        .unwrap_or_else(|| panic!("{label}: no allocations method: {}", report["methods"]));
    assert_eq!(method["active"], true, "{label}: {method}");
    let a = &report["allocations"];
    assert!(a.is_object(), "{label}: allocations {a}");
    assert_eq!(a["seen_since"], seen_since, "{label}");
    let counters = &a["counters"];
    println!(
        "{label}: allocations classified at +{} ms in {} ms: nodes {} unclassified {} by {} counters {counters}",
        a["classified_at_ns"].as_u64().unwrap() / 1_000_000,
        a["classification_ns"].as_u64().unwrap() / 1_000_000,
        a["nodes"],
        a["unclassified"],
        a["classified_by"],
    );
    // No map ran full. A probe's read of the target's memory can fail where NUMA balancing
    // has just made the page PROT_NONE (a BPF program cannot fault it in): a sample whose
    // bucket is unreadable is lost, one whose stack is unreadable kept without a stack;
    // both counted, and rare.
    for full in ["live_map_full", "alloc_map_full", "stack_map_full"] {
        assert_eq!(counters[full], 0, "{label}: {full}: {counters}");
    }
    let num = |v: &Value| v.as_u64().unwrap();
    let unreadable = num(&counters["sample_unreadable"]);
    assert!(
        (unreadable + num(&counters["stack_unreadable"])) * 100 <= num(&counters["samples"]),
        "{label}: more than 1% unreadable: {counters}"
    );
    // Every live sampled object is in exactly one place: a node, or unclassified (by
    // the error move_pages gave); the stacks add up to the totals.
    let nodes = a["nodes"].as_array().unwrap();
    let unclassified = &a["unclassified"];
    let by_error: u64 = unclassified["by_error"]
        .as_object()
        .unwrap()
        .values()
        .map(num)
        .sum();
    assert_eq!(num(&unclassified["sampled_objects"]), by_error, "{label}");
    let on_nodes: u64 = nodes.iter().map(|n| num(&n["sampled_objects"])).sum();
    let by_method: u64 = a["classified_by"]
        .as_object()
        .unwrap()
        .values()
        .map(num)
        .sum();
    assert_eq!(on_nodes, by_method, "{label}");
    assert_eq!(
        on_nodes + by_error,
        num(&a["live_sampled_objects"]),
        "{label}"
    );
    let stacks = a["stacks"].as_array().unwrap();
    for n in nodes {
        let in_stacks: u64 = stacks
            .iter()
            .flat_map(|s| s["nodes"].as_array().unwrap())
            .filter(|t| t["node"] == n["node"])
            .map(|t| num(&t["sampled_objects"]))
            .sum();
        assert_eq!(in_stacks, num(&n["sampled_objects"]), "{label}: {n}");
    }
    assert_eq!(sites.len(), 2, "{label}: heap lines {sites:?}");
    for h in sites {
        // The oracle itself: the kernel put (nearly) every object where its goroutine
        // ran. The objects gomemtrace sees are the runtime's sample of them, drawn
        // whatever their node, so its share on the node estimates f = on_node /
        // (on_node + other_node); 5σ below f is the share it may show by chance. The
        // bound asserted, 90%, holds when the oracle's f is at least that far above it.
        let placed = h.on_node + h.other_node;
        assert!(
            placed * 10 >= h.objects * 9 && h.unclassified * 10 <= h.objects,
            "{label}: objects not placed: {h:?}"
        );
        let f = h.on_node as f64 / placed as f64;
        // The site's own objects. An allocation the runtime made on the system stack while
        // the site's goroutine was below (a new M for its thread, say) has the site as its
        // first frame outside the runtime too — the frame-pointer walk crosses the stack
        // switch — but the runtime's own profile stops there: those are left out.
        let (rows, beneath): (Vec<&Value>, Vec<&Value>) = stacks
            .iter()
            .filter(|s| s["site"] == h.site)
            .partition(|s| !via_system_stack(s));
        if !beneath.is_empty() {
            println!(
                "{label}: {}: {} stack(s) from the system stack left out",
                h.site,
                beneath.len()
            );
        }
        assert!(
            !rows.is_empty(),
            "{label}: no stack for {}: {stacks:#?}",
            h.site
        );
        let (mut on, mut off, mut none, mut on_bytes, mut all_bytes, mut estimated) =
            (0, 0, 0, 0, 0, 0);
        for r in &rows {
            // Allocated by that goroutine; goid 0 only where its g could not be read
            // (a page NUMA balancing had just made PROT_NONE), and then counted.
            let goids: Vec<u64> = r["goroutines"]
                .as_array()
                .unwrap()
                .iter()
                .map(num)
                .collect();
            assert!(
                goids.contains(&h.goid)
                    && goids
                        .iter()
                        .all(|&g| g == h.goid || (g == 0 && num(&counters["goid_unreadable"]) > 0)),
                "{label}: {} allocated by goroutine {}: {goids:?}",
                h.site,
                h.goid
            );
            for t in r["nodes"].as_array().unwrap() {
                let (objects, bytes) = (num(&t["sampled_objects"]), num(&t["sampled_bytes"]));
                if num(&t["node"]) == h.cpu_node {
                    on += objects;
                    on_bytes += bytes;
                } else {
                    off += objects;
                }
                all_bytes += bytes;
                estimated += num(&t["estimated_objects"]);
            }
            none += num(&r["unclassified"]["sampled_objects"]);
            estimated += num(&r["unclassified"]["estimated_objects"]);
        }
        let sampled = on + off + none;
        let share = on_bytes as f64 / all_bytes.max(1) as f64;
        println!(
            "{label}: {}: gomemtrace sampled {sampled} live objects ({on} on node {}, {off} on the other, {none} unclassified; {:.1}% of the classified bytes on node {}), estimated {estimated}; fixture: {} objects, {} on node {} right after writing, runtime sampled {}",
            h.site,
            h.cpu_node,
            share * 100.0,
            h.cpu_node,
            h.objects,
            h.on_node,
            h.cpu_node,
            h.runtime_sampled
        );
        let classified = (on + off) as f64;
        let sigma_share = (f * (1.0 - f) / classified).sqrt();
        assert!(
            f - 5.0 * sigma_share >= 0.90,
            "{label}: the oracle does not support a 90% bound: f = {f}, n = {classified}: {h:?}"
        );
        assert!(
            share >= 0.90,
            "{label}: {}: {:.1}% of the sampled bytes on node {}: {rows:#?}",
            h.site,
            share * 100.0,
            h.cpu_node
        );
        assert!(
            none * 10 <= sampled,
            "{label}: {none} of {sampled} unclassified"
        );
        // The very samples the runtime's own heap profile holds for the site, but for
        // any whose user stack was cut short (a frame on a page NUMA balancing had just
        // made PROT_NONE): those are under a stack with no frame outside the runtime; and
        // but for the lost ones, counted as unreadable.
        let siteless: u64 = stacks
            .iter()
            .filter(|s| s["site"].is_null())
            .map(|s| {
                s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| num(&t["sampled_objects"]))
                    .sum::<u64>()
                    + num(&s["unclassified"]["sampled_objects"])
            })
            .sum();
        assert!(
            sampled <= h.runtime_sampled && sampled + siteless + unreadable >= h.runtime_sampled,
            "{label}: {}: gomemtrace's {sampled} live samples vs the runtime's own {} ({siteless} without a site, {unreadable} lost)",
            h.site,
            h.runtime_sampled
        );
        // The fixture's arithmetic: each object of size s is sampled with probability
        // p = 1 − e^(−s/rate), independently; N objects give Binomial(N, p), within 5σ
        // of N·p, less what the first draw at the default rate may skip on each P.
        assert_eq!(a["sample_rate"], h.rate, "{label}");
        let n = h.objects as f64;
        let p = 1.0 - (-(h.size as f64) / h.rate as f64).exp();
        let sigma = (n * p * (1.0 - p)).sqrt();
        let skipped =
            h.gomaxprocs as f64 * (FIRST_DRAW_MEANS * DEFAULT_RATE / h.size as f64).ceil();
        let (low, high) = (n * p - 5.0 * sigma - skipped * p, n * p + 5.0 * sigma);
        assert!(
            (low..=high).contains(&(sampled as f64)),
            "{label}: {}: {sampled} sampled, expected {:.0} in [{low:.0}, {high:.0}]",
            h.site,
            n * p
        );
        // Unbiased, they stand for about the N objects.
        let (est_low, est_high) = (low / p, high / p);
        assert!(
            (est_low..=est_high).contains(&(estimated as f64)),
            "{label}: {}: estimated {estimated} objects, expected {n} in [{est_low:.0}, {est_high:.0}]",
            h.site
        );
    }
}

/// The hint-fault checks of one json report against the fixture's worker lines.
fn check_hint_faults(report: &Value, workers: &[Worker], label: &str) {
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
    for w in workers {
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
        println!("{label}: {w:?}: {remote} remote, {local} local samples in its buffer");
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
    for w in workers {
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
        println!(
            "{label}: goid {}: others' samples in its buffer: {others:?}",
            w.goid
        );
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
}
