//! The allocation counters' layout (`allocstats`): `AllocStatsOffsets::from_dwarf`
//! against Go's own `debug/dwarf` (dwdump), the per-version table against `from_dwarf`,
//! and the size table against each release's own copy, for every Go release.

mod dwdump;
mod support;

use gomemtrace_gobin::allocstats::{
    AllocStatsLayout, AllocStatsOffsets, LayoutSource, NUM_SIZE_CLASSES, SIZE_CLASS_TO_SIZE,
    class_to_size, globals_from_code,
};
use gomemtrace_gobin::{GoBinary, GoVersion};
use support::{Variant, go_binary, go_versions};

fn version(v: &str) -> GoVersion {
    GoVersion::parse(&format!("go{v}")).expect("version string")
}

fn dwarf_offsets(v: &str, variant: Variant) -> AllocStatsOffsets {
    let bytes = std::fs::read(go_binary(v, variant)).expect("read test binary");
    AllocStatsOffsets::from_dwarf(&bytes)
        .unwrap_or_else(|e| panic!("go{v} {variant:?}: {e}"))
        .unwrap_or_else(|| panic!("go{v} {variant:?}: no DWARF"))
}

#[test]
fn from_dwarf_matches_go_debug_dwarf() {
    for v in go_versions() {
        let ours = dwarf_offsets(v, Variant::Normal);
        let go = dwdump::dwdump(&go_binary(v, Variant::Normal));
        let field = |name: &str| -> u32 {
            let off = *go
                .fields
                .get(name)
                .unwrap_or_else(|| panic!("go{v}: dwdump lacks {name}"));
            u32::try_from(off).expect("offset fits u32")
        };
        let delta = |m: &str| field(&format!("runtime.heapStatsDelta.{m}"));
        let delta_size = go.sizes["runtime.heapStatsDelta"] as u32;
        let expected = AllocStatsOffsets {
            mstats_heap_stats: field("runtime.mstats.heapStats")
                + field("runtime.consistentHeapStats.stats"),
            heap_stats_gen: field("runtime.consistentHeapStats.gen")
                - field("runtime.consistentHeapStats.stats"),
            delta_size,
            tiny_alloc_count: delta("tinyAllocCount"),
            large_alloc: delta("largeAlloc"),
            large_alloc_count: delta("largeAllocCount"),
            small_alloc_count: delta("smallAllocCount"),
            large_free: delta("largeFree"),
            large_free_count: delta("largeFreeCount"),
            small_free_count: delta("smallFreeCount"),
            p_mcache: field("runtime.p.mcache"),
            mcache_tiny_allocs: field("runtime.mcache.tinyAllocs"),
            mcache_alloc: field("runtime.mcache.alloc"),
            mspan_alloc_count: field("runtime.mspan.allocCount"),
            mspan_alloc_count_before_cache: field("runtime.mspan.allocCountBeforeCache"),
        };
        assert_eq!(ours, expected, "go{v}: from_dwarf vs Go debug/dwarf");
        // stats [3]heapStatsDelta, then gen.
        assert_eq!(ours.heap_stats_gen, 3 * delta_size, "go{v}");
        // The per-class arrays hold NUM_SIZE_CLASSES counters.
        assert_eq!(
            ours.large_free - ours.small_alloc_count,
            8 * NUM_SIZE_CLASSES as u32,
            "go{v}"
        );
    }
}

#[test]
fn version_table_matches_dwarf_of_every_release() {
    for v in go_versions() {
        let dwarf = dwarf_offsets(v, Variant::Normal);
        assert_eq!(
            AllocStatsOffsets::for_version(version(v)),
            Some(dwarf),
            "go{v}: for_version vs from_dwarf"
        );
        let mut other_patch = version(v);
        other_patch.patch += 5;
        assert_eq!(
            AllocStatsOffsets::for_version(other_patch),
            Some(dwarf),
            "go{v}"
        );
        assert_eq!(dwarf_offsets(v, Variant::Pie), dwarf, "go{v} PIE");
    }
}

#[test]
fn size_table_is_each_releases_own() {
    for v in go_versions() {
        let binary = GoBinary::open(&go_binary(v, Variant::Normal)).expect("parse");
        let names = [
            "runtime.class_to_size",
            "internal/runtime/gc.SizeClassToSize",
        ];
        assert!(
            names.iter().any(|n| binary.symbol(n).is_some()),
            "go{v}: no size table symbol"
        );
        assert_eq!(class_to_size(&binary), SIZE_CLASS_TO_SIZE, "go{v}");
    }
}

#[test]
fn located_from_symbols_where_the_binary_has_them() {
    for v in go_versions() {
        let path = go_binary(v, Variant::Normal);
        let bytes = std::fs::read(&path).expect("read");
        let binary = GoBinary::open(&path).expect("parse");
        let layout =
            AllocStatsLayout::locate(&binary, &bytes).unwrap_or_else(|e| panic!("go{v}: {e}"));
        let go = dwdump::dwdump(&path);
        assert_eq!(layout.memstats, go.syms["runtime.memstats"], "go{v}");
        assert_eq!(layout.allp, go.syms["runtime.allp"], "go{v}");
        assert_eq!(layout.source, LayoutSource::Symbols, "go{v}");
    }
}

#[test]
fn the_code_gives_the_globals_symbols() {
    for v in go_versions() {
        // Where the symbols are there, the anchors' operands must be them.
        for variant in [Variant::Normal, Variant::Pie] {
            let path = go_binary(v, variant);
            let binary = GoBinary::open(&path).expect("parse");
            let offsets = AllocStatsOffsets::for_version(version(v)).expect("verified release");
            let go = dwdump::dwdump(&path);
            assert_eq!(
                globals_from_code(&binary, &offsets).unwrap_or_else(|e| panic!("go{v}: {e}")),
                (go.syms["runtime.memstats"], go.syms["runtime.allp"]),
                "go{v} {variant:?}"
            );
        }
        // A stripped build has no symbols (and its data is laid out a little differently):
        // it is located from the code, with the table's offsets. tests/tests/agent.rs
        // reads a stripped process's counters against its own MemStats.
        for variant in [Variant::Stripped, Variant::StrippedPie] {
            let path = go_binary(v, variant);
            let bytes = std::fs::read(&path).expect("read");
            let binary = GoBinary::open(&path).expect("parse");
            assert!(
                binary.symbol("runtime.memstats").is_none(),
                "go{v} {variant:?}"
            );
            let layout = AllocStatsLayout::locate(&binary, &bytes)
                .unwrap_or_else(|e| panic!("go{v} {variant:?}: {e}"));
            assert_eq!(layout.source, LayoutSource::Code, "go{v} {variant:?}");
            assert_eq!(layout.class_to_size, SIZE_CLASS_TO_SIZE, "go{v}");
        }
    }
}
