//! Every format rendered from one hand-made profile whose numbers are known, checked for
//! meaning: the right site on top with the right percentages, exact folded sums, pprof that
//! decodes to the same values and labels (and that `go tool pprof` reads), and an SVG that
//! names the functions.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use gomemtrace_report::model::{
    AllocProfile, AllocSample, Drops, Frame, GoroutineSummary, InUse, Location, Mapping, Mode,
    TargetInfo,
};
use gomemtrace_report::{Frames, Weight, proto, to_folded, to_json, to_pprof, to_svg, to_text};
use prost::Message as _;

const EXE: &str = "/srv/app/bin/app";

fn frame(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        function: function.to_owned(),
        file: Some(file.to_owned()),
        line,
    }
}

fn loc(address: u64, frames: Vec<Frame>) -> Location {
    Location {
        address,
        mapping: Some(0),
        frames,
    }
}

/// The fixture:
///
/// | sample | stack (leaf first)                                   | goid | type      | bytes | objects |
/// |--------|------------------------------------------------------|------|-----------|-------|---------|
/// | 1      | mallocgc, newobject, [newNode inlined in buildTree], main | 1 | main.Node | 4800  | 100     |
/// | 2      | mallocgc, makeslice, [makeBuf inlined in worker], goexit | 7 | nil      | 16384 | 2       |
/// | 3      | same stack as 2                                     | 8    | nil       | 8192  | 1       |
/// | 4      | (none)                                               | 0    | nil       | 100   | 1       |
///
/// Totals 29476 bytes, 104 objects. Sites: main.makeBuf 24576 (83.38%), main.newNode 4800
/// (16.28%, cum 99.66%), [no stack] 100 (0.34%, cum 100.00%).
fn fixture() -> AllocProfile {
    let mallocgc = loc(
        0x40_1000,
        vec![frame("runtime.mallocgc", "/go/src/runtime/malloc.go", 1050)],
    );
    let newobject = loc(
        0x40_1100,
        vec![frame(
            "runtime.newobject",
            "/go/src/runtime/malloc.go",
            1710,
        )],
    );
    let makeslice = loc(
        0x40_1200,
        vec![frame("runtime.makeslice", "/go/src/runtime/slice.go", 116)],
    );
    let site_a = loc(
        0x45_0010,
        vec![
            frame("main.newNode", "/srv/app/tree.go", 10),
            frame("main.buildTree", "/srv/app/tree.go", 21),
        ],
    );
    let main_main = loc(0x45_0100, vec![frame("main.main", "/srv/app/main.go", 5)]);
    let site_b = loc(
        0x45_0200,
        vec![
            frame("main.makeBuf", "/srv/app/buf.go", 7),
            frame("main.worker", "/srv/app/worker.go", 15),
        ],
    );
    let goexit = loc(
        0x40_2000,
        vec![frame("runtime.goexit", "/go/src/runtime/asm_amd64.s", 1700)],
    );
    let stack_a = vec![mallocgc.clone(), newobject, site_a, main_main];
    let stack_b = vec![mallocgc, makeslice, site_b, goexit];
    AllocProfile {
        target: TargetInfo {
            pid: 4242,
            exe: EXE.to_owned(),
            go_version: "go1.25.5".to_owned(),
            stripped: false,
            pie: true,
            probes: vec!["runtime.mallocgc".to_owned()],
        },
        mode: Mode::Exact,
        sample_rate: None,
        start_unix_ns: 1_700_000_000_000_000_000,
        duration_ns: 2_500_000_000,
        events: 105,
        event_bytes: 29_576,
        samples: vec![
            AllocSample {
                stack: stack_a,
                goid: 1,
                type_name: Some("main.Node".to_owned()),
                bytes: 4800,
                objects: 100,
                inuse: None,
                estimate: None,
            },
            AllocSample {
                stack: stack_b.clone(),
                goid: 7,
                type_name: None,
                bytes: 16384,
                objects: 2,
                inuse: None,
                estimate: None,
            },
            AllocSample {
                stack: stack_b,
                goid: 8,
                type_name: None,
                bytes: 8192,
                objects: 1,
                inuse: None,
                estimate: None,
            },
            AllocSample {
                stack: vec![],
                goid: 0,
                type_name: None,
                bytes: 100,
                objects: 1,
                inuse: None,
                estimate: None,
            },
        ],
        goroutines: vec![
            GoroutineSummary {
                goid: 7,
                start_function: Some("main.worker".to_owned()),
                bytes: 16384,
                objects: 2,
            },
            GoroutineSummary {
                goid: 8,
                start_function: Some("main.worker".to_owned()),
                bytes: 8192,
                objects: 1,
            },
            GoroutineSummary {
                goid: 1,
                start_function: Some("main.main".to_owned()),
                bytes: 4800,
                objects: 100,
            },
            GoroutineSummary {
                goid: 0,
                start_function: None,
                bytes: 100,
                objects: 1,
            },
        ],
        mappings: vec![Mapping {
            start: 0x40_0000,
            limit: 0x80_0000,
            file_offset: 0,
            path: EXE.to_owned(),
            build_id: Some("0123456789abcdef".to_owned()),
        }],
        drops: Drops {
            alloc_map_full: 1,
            stack_unreadable: 1,
            stack_map_full: 0,
            goid_unreadable: 0,
            goroutine_map_full: 0,
            live_map_full: 0,
            sample_unreadable: 0,
            free_map_full: 0,
            special_unreadable: 0,
            rate_unrecorded: 0,
            stack_cycle: 0,
            stack_off_stack: 0,
        },
        duty: None,
        runtime_counters: None,
        runtime_counters_error: None,
    }
}

// ---------------------------------------------------------------- text

/// The data lines of a text section (after its title and column header, up to the blank line).
fn section<'a>(text: &'a str, title_prefix: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(title_prefix));
    assert!(
        lines.next().is_some(),
        "no section {title_prefix:?} in\n{text}"
    );
    lines.skip(1).take_while(|l| !l.is_empty()).collect()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn text_ranks_user_sites_with_percentages() {
    let text = to_text(&fixture(), 10);
    let sites = section(&text, "Top allocation sites");
    assert_eq!(sites.len(), 3, "{text}");
    // The user's line, not runtime.mallocgc/makeslice; the inlined function, not its caller.
    assert_eq!(
        words(sites[0]),
        [
            "24576",
            "24.0",
            "KiB",
            "3",
            "83.38%",
            "83.38%",
            "main.makeBuf",
            "/srv/app/buf.go:7"
        ]
    );
    assert_eq!(
        words(sites[1]),
        [
            "4800",
            "4.7",
            "KiB",
            "100",
            "16.28%",
            "99.66%",
            "main.newNode",
            "/srv/app/tree.go:10"
        ]
    );
    // The unreadable stack keeps its bytes under its own name instead of vanishing.
    assert_eq!(
        words(&sites[2].replace("[no stack]", "[no-stack]")),
        [
            "100",
            "100",
            "B",
            "1",
            "0.34%",
            "100.00%",
            "[no-stack]",
            "-"
        ]
    );
    assert!(
        sites.iter().all(|l| !l.contains("runtime.")),
        "runtime frames are not sites:\n{text}"
    );
}

#[test]
fn text_header_and_totals() {
    let text = to_text(&fixture(), 10);
    assert!(
        text.contains("target:   /srv/app/bin/app (pid 4242)"),
        "{text}"
    );
    assert!(text.contains("go:       go1.25.5"), "{text}");
    assert!(text.contains("binary:   not stripped, PIE"), "{text}");
    assert!(text.contains("mode:     exact"), "{text}");
    assert!(text.contains("duration: 2.500 s"), "{text}");
    assert!(text.contains("probes:   runtime.mallocgc"), "{text}");
    assert!(
        text.contains("events:   105 (28.9 KiB, 29576 bytes)"),
        "{text}"
    );
    assert!(text.contains("bytes:    28.8 KiB (29476 bytes)"), "{text}");
    assert!(text.contains("objects:  104"), "{text}");
}

#[test]
fn text_types_and_goroutines() {
    let text = to_text(&fixture(), 10);
    let types = section(&text, "Top types");
    assert_eq!(types.len(), 2, "{text}");
    assert!(
        types[0].ends_with("83.72%  <nil: untyped (slices, strings, merged locals)>"),
        "{text}"
    );
    assert!(words(types[0]).starts_with(&["24676"]), "{text}");
    assert_eq!(
        words(types[1]),
        ["4800", "4.7", "KiB", "100", "16.28%", "main.Node"]
    );

    let gs = section(&text, "Top goroutines");
    let goids: Vec<&str> = gs.iter().map(|l| words(l)[0]).collect();
    assert_eq!(
        goids,
        ["7", "8", "1", "0"],
        "by bytes, largest first:\n{text}"
    );
    assert_eq!(
        words(gs[0]),
        ["7", "16384", "16.0", "KiB", "2", "55.58%", "main.worker"]
    );
    assert_eq!(
        words(gs[3]),
        ["0", "(none)", "100", "100", "B", "1", "0.34%", "?"]
    );
}

#[test]
fn text_top_limits_and_summarizes_the_rest() {
    let text = to_text(&fixture(), 1);
    let sites = section(&text, "Top allocation sites");
    assert_eq!(sites.len(), 2, "{text}");
    assert!(sites[0].contains("main.makeBuf"));
    assert_eq!(sites[1], "  ... and 2 more sites (4900 bytes, 16.62%)");
    assert!(
        text.contains(
            "Top allocation sites (first frame outside package runtime), by bytes: 1 of 3"
        )
    );
}

#[test]
fn text_drops_are_never_hidden() {
    let mut p = fixture();
    let text = to_text(&p, 10);
    let drops = section(&text, "Drops");
    assert!(
        words(drops[0]).starts_with(&["alloc_map_full", "1"]),
        "{text}"
    );
    assert!(
        words(drops[1]).starts_with(&["stack_unreadable", "1"]),
        "{text}"
    );
    assert!(
        words(drops[2]).starts_with(&["stack_map_full", "0"]),
        "{text}"
    );
    assert!(
        words(drops[3]).starts_with(&["goid_unreadable", "0"]),
        "{text}"
    );
    assert!(
        words(drops[4]).starts_with(&["goroutine_map_full", "0"]),
        "{text}"
    );
    assert!(
        words(drops[5]).starts_with(&["live_map_full", "0"]),
        "{text}"
    );
    assert!(
        words(drops[6]).starts_with(&["sample_unreadable", "0"]),
        "{text}"
    );
    assert!(
        words(drops[7]).starts_with(&["free_map_full", "0"]),
        "{text}"
    );
    assert!(
        words(drops[8]).starts_with(&["special_unreadable", "0"]),
        "{text}"
    );
    assert!(
        words(drops[9]).starts_with(&["rate_unrecorded", "0"]),
        "{text}"
    );
    assert!(
        words(drops[10]).starts_with(&["stack_cycle", "0"]),
        "{text}"
    );
    assert!(
        words(drops[11]).starts_with(&["stack_off_stack", "0"]),
        "{text}"
    );
    assert_eq!(drops[12], "  total: 2");
    assert!(!text.contains("none:"));

    p.drops = Drops::default();
    let text = to_text(&p, 10);
    let drops = section(&text, "Drops");
    assert_eq!(
        drops.len(),
        13,
        "all twelve counters and the none line:\n{text}"
    );
    assert!(
        words(drops[0]).starts_with(&["alloc_map_full", "0"]),
        "{text}"
    );
    assert_eq!(drops[12], "  none: every event was aggregated in full");
}

#[test]
fn text_columns_are_aligned() {
    let text = to_text(&fixture(), 10);
    let sites = section(&text, "Top allocation sites");
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("BYTES") && l.contains("FUNCTION"))
        .unwrap();
    // Left-aligned columns start where their header starts; right-aligned ones end where
    // their header ends.
    let (function, location) = (
        header.find("FUNCTION").unwrap(),
        header.find("LOCATION").unwrap(),
    );
    let cum_end = header.find("CUM%").unwrap() + "CUM%".len();
    for l in &sites {
        let b = l.as_bytes();
        assert!(
            b[function - 1] == b' ' && b[function] != b' ',
            "FUNCTION at {function}: {l:?}"
        );
        assert!(
            b[location - 1] == b' ' && b[location] != b' ',
            "LOCATION at {location}: {l:?}"
        );
        assert!(
            b[cum_end - 1] == b'%' && b[cum_end] == b' ',
            "CUM% ends at {cum_end}: {l:?}"
        );
    }
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing spaces"
    );
}

/// The whole report against a golden file; `GOMEMTRACE_BLESS=1` rewrites it.
#[test]
fn text_golden() {
    let text = to_text(&fixture(), 10);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/text.txt");
    if std::env::var_os("GOMEMTRACE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with GOMEMTRACE_BLESS=1 to create it)",
            golden.display()
        )
    });
    assert_eq!(
        text, want,
        "text report changed; GOMEMTRACE_BLESS=1 rewrites the golden file"
    );
}

#[test]
fn text_of_empty_profile() {
    let mut p = fixture();
    p.samples.clear();
    p.goroutines.clear();
    let text = to_text(&p, 10);
    assert!(text.contains("bytes:    0 B (0 bytes)"), "{text}");
    assert!(section(&text, "Top allocation sites").is_empty(), "{text}");
}

// ---------------------------------------------------------------- folded

#[test]
fn folded_lines_and_sums() {
    let p = fixture();
    let bytes = to_folded(&p, Weight::Bytes, Frames::All);
    assert_eq!(
        bytes,
        "[no stack] 100\n\
         main.main;main.buildTree;main.newNode;runtime.newobject;runtime.mallocgc 4800\n\
         runtime.goexit;main.worker;main.makeBuf;runtime.makeslice;runtime.mallocgc 24576\n"
    );
    let objects = to_folded(&p, Weight::Objects, Frames::All);
    assert_eq!(
        objects,
        "[no stack] 1\n\
         main.main;main.buildTree;main.newNode;runtime.newobject;runtime.mallocgc 100\n\
         runtime.goexit;main.worker;main.makeBuf;runtime.makeslice;runtime.mallocgc 3\n"
    );
    // Go's heap-profile convention: the runtime frames above the user's are hidden, and the
    // root's runtime.goexit is dropped, as runtime/pprof drops it.
    let go_heap = to_folded(&p, Weight::Bytes, Frames::GoHeap);
    assert_eq!(
        go_heap,
        "[no stack] 100\n\
         main.main;main.buildTree;main.newNode 4800\n\
         main.worker;main.makeBuf 24576\n"
    );
    assert_eq!(go_heap, to_folded(&p, Weight::Bytes, Frames::default()));
    let sum = |s: &str| -> u64 {
        s.lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum(&bytes), p.totals().0);
    assert_eq!(sum(&go_heap), p.totals().0);
    assert_eq!(sum(&objects), p.totals().1);
}

#[test]
fn folded_sanitizes_names() {
    let mut p = fixture();
    p.samples.truncate(1);
    p.samples[0].stack[2].frames[0].function =
        "main.F[go.shape.struct { a int; b int }]\nx".to_owned();
    p.samples[0].stack[3].frames.clear(); // unsymbolized: its address stands in
    let folded = to_folded(&p, Weight::Bytes, Frames::All);
    assert_eq!(
        folded,
        "0x450100;main.buildTree;main.F[go.shape.struct { a int, b int }] x;runtime.newobject;runtime.mallocgc 4800\n"
    );
}

// ---------------------------------------------------------------- pprof

fn decode(gz: &[u8]) -> proto::Profile {
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    proto::Profile::decode(raw.as_slice()).unwrap()
}

#[test]
fn pprof_decodes_to_the_same_profile() {
    let p = fixture();
    let pb = decode(&to_pprof(&p, Frames::All));
    let st = &pb.string_table;
    let s = |i: i64| st[usize::try_from(i).unwrap()].as_str();

    // String table sanity: "" first, no duplicates, every index in range (s() panics).
    assert_eq!(st[0], "");
    let mut seen = std::collections::HashSet::new();
    assert!(
        st.iter().all(|x| seen.insert(x)),
        "duplicate strings: {st:?}"
    );

    let types: Vec<(&str, &str)> = pb
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    // Go's heap profile's sample types; in-use ones are zero where frees are not traced.
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );
    assert_eq!(s(pb.default_sample_type), "alloc_space");
    assert!(
        pb.comment
            .iter()
            .any(|&c| s(c).starts_with("inuse_objects, inuse_space: not measured"))
    );
    let period = pb.period_type.as_ref().unwrap();
    assert_eq!(
        (s(period.r#type), s(period.unit), pb.period),
        ("space", "bytes", 1)
    );
    assert_eq!(pb.time_nanos, 1_700_000_000_000_000_000);
    assert_eq!(pb.duration_nanos, 2_500_000_000);
    assert!(pb.comment.iter().any(|&c| s(c).contains("exact")));
    assert!(pb.comment.iter().any(|&c| s(c)
        == "drops: alloc_map_full=1 stack_unreadable=1 stack_map_full=0 goid_unreadable=0 goroutine_map_full=0 live_map_full=0 sample_unreadable=0 free_map_full=0 special_unreadable=0 rate_unrecorded=0 stack_cycle=0 stack_off_stack=0"));

    // Mapping.
    assert_eq!(pb.mapping.len(), 1);
    let m = &pb.mapping[0];
    assert_eq!(
        (m.id, m.memory_start, m.memory_limit),
        (1, 0x40_0000, 0x80_0000)
    );
    assert_eq!((s(m.filename), s(m.build_id)), (EXE, "0123456789abcdef"));
    assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);

    // Functions deduplicated by (name, file); locations by (address, mapping).
    let functions: HashMap<u64, (&str, &str)> = pb
        .function
        .iter()
        .map(|f| (f.id, (s(f.name), s(f.filename))))
        .collect();
    assert_eq!(functions.len(), 10, "{functions:?}");
    assert_eq!(
        pb.location.len(),
        8,
        "7 PCs (mallocgc shared by two stacks) and [no stack]"
    );
    let locations: HashMap<u64, &proto::Location> = pb.location.iter().map(|l| (l.id, l)).collect();
    let names = |id: u64| -> Vec<(&str, i64)> {
        locations[&id]
            .line
            .iter()
            .map(|l| (functions[&l.function_id].0, l.line))
            .collect()
    };

    // Samples: values, labels, stacks leaf first with inline lines innermost first.
    let wanted = [
        (100, 4800, "1", "main.Node"),
        (2, 16384, "7", "<nil>"),
        (1, 8192, "8", "<nil>"),
        (1, 100, "0", "<nil>"),
    ];
    assert_eq!(pb.sample.len(), wanted.len());
    for (sample, (objects, bytes, goid, ty)) in pb.sample.iter().zip(wanted) {
        assert_eq!(sample.value, [objects, bytes, 0, 0]);
        let labels: Vec<(&str, &str)> = sample.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert_eq!(labels, [("goroutine", goid), ("type", ty)]);
    }
    let stack0: Vec<Vec<(&str, i64)>> = pb.sample[0]
        .location_id
        .iter()
        .map(|&id| names(id))
        .collect();
    assert_eq!(
        stack0,
        [
            vec![("runtime.mallocgc", 1050)],
            vec![("runtime.newobject", 1710)],
            vec![("main.newNode", 10), ("main.buildTree", 21)],
            vec![("main.main", 5)],
        ]
    );
    assert_eq!(locations[&pb.sample[0].location_id[2]].address, 0x45_0010);
    assert_eq!(locations[&pb.sample[0].location_id[2]].mapping_id, 1);
    assert_eq!(
        pb.sample[1].location_id, pb.sample[2].location_id,
        "same stack, same locations"
    );
    assert_eq!(
        pb.sample[0].location_id[0], pb.sample[1].location_id[0],
        "shared leaf location"
    );
    // The unreadable stack keeps its bytes under a `[no stack]` frame (pprof drops samples
    // without locations).
    let no_stack = &pb.sample[3].location_id;
    assert_eq!(no_stack.len(), 1);
    assert_eq!(names(no_stack[0]), [("[no stack]", 0)]);
    assert_eq!(
        (
            locations[&no_stack[0]].address,
            locations[&no_stack[0]].mapping_id
        ),
        (0, 0)
    );
    let total: i64 = pb.sample.iter().map(|x| x.value[1]).sum();
    assert_eq!(total, 29476);
}

/// By default the stacks start where Go's own heap profile starts them (the first PC outside
/// the runtime), and a runtime-sampled profile shows `inuse_space` first, as Go's does.
#[test]
fn pprof_default_is_gos_heap_profile_convention() {
    let mut p = fixture();
    let pb = decode(&to_pprof(&p, Frames::GoHeap));
    let s = |i: i64| pb.string_table[usize::try_from(i).unwrap()].as_str();
    let leaf = |sample: &proto::Sample| -> &str {
        let loc = pb
            .location
            .iter()
            .find(|l| l.id == sample.location_id[0])
            .unwrap();
        let f = pb
            .function
            .iter()
            .find(|f| f.id == loc.line[0].function_id)
            .unwrap();
        s(f.name)
    };
    let leaves: Vec<(&str, usize)> = pb
        .sample
        .iter()
        .map(|x| (leaf(x), x.location_id.len()))
        .collect();
    assert_eq!(
        leaves,
        [
            ("main.newNode", 2),
            ("main.makeBuf", 1),
            ("main.makeBuf", 1),
            ("[no stack]", 1)
        ]
    );
    assert!(
        pb.comment
            .iter()
            .any(|&c| s(c).starts_with("frames: as Go's heap profile"))
    );

    p.mode = Mode::Runtime;
    p.sample_rate = Some(524_288);
    for x in &mut p.samples {
        x.inuse = Some(InUse {
            bytes: x.bytes / 2,
            objects: x.objects / 2,
        });
    }
    let pb = decode(&to_pprof(&p, Frames::GoHeap));
    let s = |i: i64| pb.string_table[usize::try_from(i).unwrap()].as_str();
    assert_eq!(s(pb.default_sample_type), "inuse_space");
    assert_eq!(pb.period, 524_288);
    assert_eq!(pb.sample[0].value, [100, 4800, 50, 2400]);
}

#[test]
fn pprof_puts_the_executable_mapping_first() {
    let mut p = fixture();
    p.mappings.insert(
        0,
        Mapping {
            start: 0x7f00_0000_0000,
            limit: 0x7f00_0010_0000,
            file_offset: 0x1000,
            path: "/lib/libc.so.6".to_owned(),
            build_id: None,
        },
    );
    for s in &mut p.samples {
        for l in &mut s.stack {
            l.mapping = Some(1);
        }
    }
    let pb = decode(&to_pprof(&p, Frames::All));
    let s = |i: i64| pb.string_table[usize::try_from(i).unwrap()].as_str();
    assert_eq!(s(pb.mapping[0].filename), EXE);
    assert_eq!(pb.mapping[0].id, 1);
    assert_eq!(s(pb.mapping[1].filename), "/lib/libc.so.6");
    assert!(
        !pb.mapping[1].has_functions,
        "no location of libc was symbolized"
    );
    assert!(
        pb.location
            .iter()
            .all(|l| l.mapping_id == 1 || l.address == 0),
        "[no stack] has none"
    );
}

// ---------------------------------------------------------------- go tool pprof (oracle)

/// A Go toolchain from gomemtrace's cache (`$GOMEMTRACE_CACHE`, else
/// `~/.cache/gomemtrace`): go 1.25 when present, else the newest.
fn go_toolchain() -> Option<PathBuf> {
    let cache = match std::env::var_os("GOMEMTRACE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/gomemtrace"),
    };
    let preferred = cache.join("go/1.25/bin/go");
    if preferred.is_file() {
        return Some(preferred);
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(cache.join("go"))
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let go = e.path().join("bin/go");
            go.is_file().then_some((version, go))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, go)| go)
}

fn pprof(go: &Path, args: &[&str], file: &Path) -> String {
    let home = std::env::temp_dir().join("gomemtrace-report-pprof-tmp");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        // pprof saves fetched profiles under $PPROF_TMPDIR; keep them out of the home. HOME
        // itself stays, so the go command's build cache (where it builds pprof) is reused.
        .env("PPROF_TMPDIR", &home)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

#[test]
fn go_tool_pprof_reads_the_profile() {
    let Some(go) = go_toolchain() else {
        println!("SKIP: no go toolchain");
        return;
    };
    let dir = std::env::temp_dir().join(format!("gomemtrace-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app-4242.pb.gz");
    std::fs::write(&file, to_pprof(&fixture(), Frames::All)).unwrap();

    // -top with cumulative values in raw bytes: each user site with its exact bytes.
    let top = pprof(
        &go,
        &[
            "-top",
            "-cum",
            "-sample_index=alloc_space",
            "-unit=B",
            "-nodecount=100",
        ],
        &file,
    );
    assert!(top.contains("of 29476B total"), "{top}");
    let cum_of = |name: &str| -> String {
        // Rows follow the `flat  flat%   sum%        cum   cum%` header.
        let line = top
            .lines()
            .skip_while(|l| !l.contains("flat%"))
            .skip(1)
            .find(|l| words(l).get(5) == Some(&name))
            .unwrap_or_else(|| panic!("{name} not in go tool pprof -top:\n{top}"));
        words(line)[3].to_owned()
    };
    assert_eq!(cum_of("runtime.mallocgc"), "29376B", "{top}");
    assert_eq!(cum_of("main.makeBuf"), "24576B", "{top}");
    assert_eq!(cum_of("main.worker"), "24576B", "{top}");
    assert_eq!(cum_of("main.newNode"), "4800B", "{top}");
    assert_eq!(cum_of("main.buildTree"), "4800B", "{top}");
    assert_eq!(cum_of("main.main"), "4800B", "{top}");
    assert!(
        top.contains("main.newNode (inline)"),
        "inline frames are recognised:\n{top}"
    );

    // alloc_objects is the other sample index.
    let objects = pprof(
        &go,
        &["-top", "-sample_index=alloc_objects", "-nodecount=100"],
        &file,
    );
    assert!(objects.contains("of 104 total"), "{objects}");

    // -raw: the samples exactly as pprof parsed them, values and labels.
    let raw = pprof(&go, &["-raw"], &file);
    assert!(
        raw.contains(
            "alloc_objects/count alloc_space/bytes[dflt] inuse_objects/count inuse_space/bytes"
        ),
        "{raw}"
    );
    assert!(
        raw.contains("PeriodType: space bytes") && raw.contains("Period: 1"),
        "{raw}"
    );
    let raw_samples: Vec<(Vec<&str>, &str)> = raw
        .lines()
        .skip_while(|l| !l.starts_with("alloc_objects/count"))
        .skip(1)
        .take_while(|l| !l.starts_with("Locations"))
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| (words(c[0]), c[1].trim()))
        .collect();
    assert_eq!(
        raw_samples
            .iter()
            .map(|(v, labels)| (v[0], v[1], v[3], *labels))
            .collect::<Vec<_>>(),
        [
            ("100", "4800", "0:", "goroutine:[1] type:[main.Node]"),
            ("2", "16384", "0:", "goroutine:[7] type:[<nil>]"),
            ("1", "8192", "0:", "goroutine:[8] type:[<nil>]"),
            ("1", "100", "0:", "goroutine:[0] type:[<nil>]"),
        ],
        "{raw}"
    );

    // -traces: each stack leaf first with its labels.
    let traces = pprof(&go, &["-traces", "-sample_index=alloc_space"], &file);
    let want = "runtime.mallocgc\n             runtime.newobject\n             main.newNode (inline)\n             main.buildTree\n             main.main";
    assert!(traces.contains(want), "{traces}");
    // (Value formatting differs between pprof versions, "16kB" or "16.0kB": not checked.)
    let block = traces
        .split("-----------+")
        .find(|b| b.contains("goroutine:  7"))
        .unwrap_or_else(|| panic!("no trace of goroutine 7:\n{traces}"));
    assert!(
        block.contains("type:  <nil>") && block.contains("main.makeBuf (inline)"),
        "{block}"
    );

    // -tags: the labels can be filtered on, as users do with Go's own pprof labels.
    let tags = pprof(&go, &["-tags", "-sample_index=alloc_space"], &file);
    assert!(tags.contains("(55.58%): 7"), "{tags}");
    assert!(tags.contains("(83.72%): <nil>"), "{tags}");
    assert!(tags.contains("(16.28%): main.Node"), "{tags}");

    // Without any mapping (addresses outside known files), pprof still reads it.
    let mut p = fixture();
    p.mappings.clear();
    p.samples
        .iter_mut()
        .flat_map(|s| s.stack.iter_mut())
        .for_each(|l| l.mapping = None);
    let bare = dir.join("bare.pb.gz");
    std::fs::write(&bare, to_pprof(&p, Frames::All)).unwrap();
    let top = pprof(&go, &["-top", "-cum", "-unit=B", "-nodecount=100"], &bare);
    assert!(
        top.contains("of 29476B total") && top.contains("main.makeBuf (inline)"),
        "{top}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- svg

#[test]
fn svg_names_functions_and_title() {
    let svg = String::from_utf8(to_svg(&fixture(), Weight::Bytes, Frames::All).unwrap()).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("gomemtrace: allocated bytes — /srv/app/bin/app (go1.25.5)"),
        "title"
    );
    for name in [
        "main.makeBuf",
        "main.newNode",
        "main.buildTree",
        "main.worker",
        "runtime.mallocgc",
        "[no stack]",
    ] {
        assert!(svg.contains(name), "{name} missing from the flame graph");
    }
    // Tooltips count bytes: makeBuf's tower is 24,576 bytes.
    assert!(
        svg.contains("main.makeBuf (24,576 bytes"),
        "tooltip with the bytes of makeBuf"
    );
    // Well-formed XML: every element closes with its own name; one <svg> root.
    let mut reader = quick_xml::Reader::from_str(&svg);
    let (mut depth, mut roots, mut frames) = (0usize, 0usize, 0usize);
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("not XML: {e}"))
        {
            quick_xml::events::Event::Start(e) => {
                roots += usize::from(depth == 0);
                depth += 1;
                frames += usize::from(e.name().as_ref() == b"g");
            }
            quick_xml::events::Event::End(_) => depth -= 1,
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!((depth, roots), (0, 1));
    assert!(
        frames >= 11,
        "a <g> per frame (11 frames in 3 stacks), got {frames}"
    );

    let objects =
        String::from_utf8(to_svg(&fixture(), Weight::Objects, Frames::All).unwrap()).unwrap();
    assert!(
        objects.contains("main.newNode (100 objects"),
        "object counts in tooltips"
    );
}

#[test]
fn svg_of_nothing_is_an_error() {
    let mut p = fixture();
    p.samples.clear();
    assert!(matches!(
        to_svg(&p, Weight::Bytes, Frames::GoHeap),
        Err(gomemtrace_report::Error::NoSamples)
    ));
}

// ---------------------------------------------------------------- json

#[test]
fn json_has_schema_and_round_trips() {
    let p = fixture();
    let json = to_json(&p);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema"], "gomemtrace.alloc/v2");
    assert!(
        json.starts_with("{\"schema\":\"gomemtrace.alloc/v2\","),
        "schema first"
    );
    assert_eq!(v["mode"], "exact");
    assert_eq!(v["samples"][1]["type_name"], serde_json::Value::Null);
    // Stacks index the location table.
    let function = |sample: usize, depth: usize| {
        let i = v["samples"][sample]["stack"][depth].as_u64().unwrap() as usize;
        v["locations"][i]["frames"][0]["function"].clone()
    };
    assert_eq!(function(0, 0), "runtime.mallocgc", "leaf first");
    assert_eq!(function(0, 2), "main.newNode", "innermost first");
    assert_eq!(v["samples"][0]["bytes"], 4800);
    // Each location once: as many as distinct (address, mapping) pairs.
    let distinct: std::collections::HashSet<(u64, Option<usize>)> = p
        .samples
        .iter()
        .flat_map(|s| &s.stack)
        .map(|l| (l.address, l.mapping))
        .collect();
    assert_eq!(v["locations"].as_array().unwrap().len(), distinct.len());
    assert!(distinct.len() < p.samples.iter().map(|s| s.stack.len()).sum::<usize>());
    assert_eq!(gomemtrace_report::from_json(&json).unwrap(), p);

    let wrong = json.replace("gomemtrace.alloc/v2", "gomemtrace.alloc/v1");
    assert!(matches!(
        gomemtrace_report::from_json(&wrong),
        Err(gomemtrace_report::Error::Schema { .. })
    ));
    let dangling = json.replace("\"stack\":[0,", "\"stack\":[999,");
    assert!(matches!(
        gomemtrace_report::from_json(&dangling),
        Err(gomemtrace_report::Error::LocationIndex { index: 999, .. })
    ));
}

// ---------------------------------------------------------------- site rule

#[test]
fn text_sites_skip_internal_runtime_and_name_runtime_callers() {
    let f = |name: &str| loc(0x40_0000, vec![frame(name, "/go/src/x.go", 1)]);
    let mut p = fixture();
    p.samples = vec![
        // Go 1.24+ map growth: the site is the user's map assignment.
        AllocSample {
            stack: vec![
                f("runtime.mallocgc"),
                f("runtime.newarray"),
                f("internal/runtime/maps.newarray"),
                f("internal/runtime/maps.(*table).grow"),
                f("runtime.mapassign_faststr"),
                f("main.fill"),
            ],
            goid: 1,
            type_name: Some("string".to_owned()),
            bytes: 3000,
            objects: 3,
            inuse: None,
            estimate: None,
        },
        // The runtime's own allocation: named after the runtime function that asked.
        AllocSample {
            stack: vec![
                f("runtime.mallocgc"),
                f("runtime.newobject"),
                f("runtime.malg"),
                f("runtime.newproc1"),
                f("runtime.systemstack"),
            ],
            goid: 1,
            type_name: Some("runtime.g".to_owned()),
            bytes: 1000,
            objects: 2,
            inuse: None,
            estimate: None,
        },
        // runtime/debug is a caller of the runtime, not the runtime.
        AllocSample {
            stack: vec![
                f("runtime.mallocgc"),
                f("runtime/debug.Stack"),
                f("main.dump"),
            ],
            goid: 1,
            type_name: None,
            bytes: 500,
            objects: 1,
            inuse: None,
            estimate: None,
        },
    ];
    let text = to_text(&p, 10);
    let sites: Vec<String> = section(&text, "Top allocation sites")
        .iter()
        .map(|l| words(l)[6].to_owned())
        .collect();
    assert_eq!(
        sites,
        ["main.fill", "runtime.malg", "runtime/debug.Stack"],
        "{text}"
    );
}
