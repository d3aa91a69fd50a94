//! Global variables of the runtime: `GoBinary::symbol` against `go tool nm`, and
//! `offsets::struct_offsets_from_dwarf` against the layouts read from real binaries of
//! each release (GO-RUNTIME.md §3.4, amd64), for every Go release.

mod support;

use gomemtrace_gobin::GoBinary;
use gomemtrace_gobin::offsets::struct_offsets_from_dwarf;
use support::{Variant, go_binary, go_versions, nm_symbols};

const GLOBALS: [&str; 4] = [
    "runtime.work",
    "runtime.memstats",
    "runtime.gcController",
    "runtime.runtimeInitTime",
];

#[test]
fn data_symbols_match_go_tool_nm() {
    for v in go_versions() {
        for variant in [Variant::Normal, Variant::Pie] {
            let path = go_binary(v, variant);
            let binary = GoBinary::open(&path).expect("parse");
            let nm = nm_symbols(v, &path);
            for name in GLOBALS {
                let want = nm.iter().find(|s| s.name == name).map(|s| s.address);
                assert!(want.is_some(), "go{v} {variant:?}: nm lacks {name}");
                assert_eq!(binary.symbol(name), want, "go{v} {variant:?}: {name}");
            }
        }
        let stripped = GoBinary::open(&go_binary(v, Variant::Stripped)).expect("parse");
        assert_eq!(stripped.symbol("runtime.work"), None, "go{v} stripped");
    }
}

#[test]
fn gc_struct_offsets_match_the_verified_layouts() {
    // (version, work.cycles, work.heap0, work.pauseNS, memstats.numgc,
    //  gcController.lastHeapGoal, gcController.heapMarked)
    const ROWS: [(&str, u64, u64, u64, u64, u64, u64); 8] = [
        ("1.19", 0x158, 0x198, 0x188, 0x1e18, 0x80, 0xb8),
        ("1.21", 0x190, 0x1d0, 0x1c0, 0x1e18, 0x60, 0x98),
        ("1.22", 0x190, 0x1c8, 0x1c0, 0x1e18, 0x60, 0x98),
        ("1.23", 0x1a8, 0x1e0, 0x1d8, 0x1e18, 0x60, 0x98),
        ("1.24", 0x1a8, 0x1e0, 0x1d8, 0x1e18, 0x60, 0x98),
        ("1.25", 0x200, 0x238, 0x230, 0x1e00, 0x60, 0x98),
        ("1.26", 0x288, 0x2c0, 0x2b8, 0x1e00, 0x60, 0x98),
        ("1.27", 0x288, 0x2c0, 0x2b8, 0x1e00, 0x60, 0x98),
    ];
    let structs = [
        "runtime.workType",
        "runtime.mstats",
        "runtime.gcControllerState",
    ];
    for (v, cycles, heap0, pause_ns, numgc, last_goal, marked) in ROWS {
        if !go_versions().contains(&v) {
            continue;
        }
        let bytes = std::fs::read(go_binary(v, Variant::Normal)).expect("read");
        let layout = struct_offsets_from_dwarf(&bytes, &structs)
            .expect("DWARF readable")
            .expect("has DWARF");
        let at = |s: &str, m: &str| layout.get(s).and_then(|f| f.get(m)).copied();
        assert_eq!(at("runtime.workType", "cycles"), Some(cycles), "go{v}");
        assert_eq!(at("runtime.workType", "heap0"), Some(heap0), "go{v}");
        assert_eq!(at("runtime.workType", "pauseNS"), Some(pause_ns), "go{v}");
        assert_eq!(at("runtime.mstats", "numgc"), Some(numgc), "go{v}");
        assert_eq!(
            at("runtime.gcControllerState", "lastHeapGoal"),
            Some(last_goal),
            "go{v}"
        );
        assert_eq!(
            at("runtime.gcControllerState", "heapMarked"),
            Some(marked),
            "go{v}"
        );
        let stripped = std::fs::read(go_binary(v, Variant::Stripped)).expect("read");
        assert!(matches!(
            struct_offsets_from_dwarf(&stripped, &structs),
            Ok(None)
        ));
    }
}
