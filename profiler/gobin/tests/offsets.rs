//! `offsets::from_dwarf` against Go's own `debug/dwarf` (the dwdump helper), and the
//! per-version table `offsets::for_version` against `from_dwarf`, for every Go release.

mod dwdump;
mod support;

use gomemtrace_gobin::GoVersion;
use gomemtrace_gobin::offsets::{
    RuntimeOffsets, for_version, from_dwarf, gobuf_for_version, gobuf_from_dwarf,
    sched_for_version, sched_from_dwarf,
};
use support::{Variant, go_binary, go_versions};

fn version(v: &str) -> GoVersion {
    GoVersion::parse(&format!("go{v}")).expect("version string")
}

fn dwarf_offsets(v: &str, variant: Variant) -> RuntimeOffsets {
    let bytes = std::fs::read(go_binary(v, variant)).expect("read test binary");
    from_dwarf(&bytes)
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
        let expected = RuntimeOffsets {
            g_goid: field("runtime.g.goid"),
            g_m: field("runtime.g.m"),
            m_curg: field("runtime.m.curg"),
            g_startpc: field("runtime.g.startpc"),
            g_gopc: field("runtime.g.gopc"),
            g_stack_lo: field("runtime.g.stack.lo"),
            g_stack_hi: field("runtime.g.stack.hi"),
        };
        assert_eq!(ours, expected, "go{v}: from_dwarf vs Go debug/dwarf");
    }
}

#[test]
fn version_table_matches_dwarf_of_every_release() {
    for v in go_versions() {
        let dwarf = dwarf_offsets(v, Variant::Normal);
        assert_eq!(
            for_version(version(v)),
            Some(dwarf),
            "go{v}: for_version vs from_dwarf"
        );
        // Patch releases share the layout: the table must not depend on the patch number.
        let mut other_patch = version(v);
        other_patch.patch += 7;
        assert_eq!(
            for_version(other_patch),
            Some(dwarf),
            "go{v}: patch-independent"
        );
    }
}

#[test]
fn sched_table_matches_dwarf_of_every_release() {
    for v in go_versions() {
        let bytes = std::fs::read(go_binary(v, Variant::Normal)).expect("read test binary");
        let dwarf = sched_from_dwarf(&bytes).unwrap_or_else(|| panic!("go{v}: no DWARF"));
        let go = dwdump::dwdump(&go_binary(v, Variant::Normal));
        assert_eq!(
            u64::from(dwarf.g_atomicstatus),
            go.fields["runtime.g.atomicstatus"],
            "go{v}: sched_from_dwarf vs Go debug/dwarf"
        );
        assert_eq!(sched_for_version(version(v)), Some(dwarf), "go{v}");
    }
}

#[test]
fn pie_has_the_same_layout() {
    for v in go_versions() {
        assert_eq!(
            dwarf_offsets(v, Variant::Pie),
            dwarf_offsets(v, Variant::Normal),
            "go{v}"
        );
    }
}

#[test]
fn stripped_binary_has_no_dwarf() {
    for v in go_versions() {
        let bytes = std::fs::read(go_binary(v, Variant::Stripped)).expect("read test binary");
        assert_eq!(
            from_dwarf(&bytes).expect("parse stripped binary"),
            None,
            "go{v}"
        );
    }
}

#[test]
fn not_an_elf_is_an_error() {
    assert!(from_dwarf(b"definitely not an ELF file").is_err());
}

/// The stack-copy probe's `g.sched.{sp,pc,bp}`: the per-release table (stripped binaries)
/// against the DWARF of every release.
#[test]
fn gobuf_table_matches_dwarf_of_every_release() {
    for v in go_versions() {
        let bytes = std::fs::read(go_binary(v, Variant::Normal)).expect("read test binary");
        let dwarf = gobuf_from_dwarf(&bytes).unwrap_or_else(|| panic!("go{v}: no DWARF"));
        assert_eq!(gobuf_for_version(version(v)), Some(dwarf), "go{v}");
    }
}
