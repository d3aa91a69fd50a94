//! `types::type_name` on the type descriptors of real binaries of every Go release, with
//! the DWARF as the oracle: each DWARF type entry's `DW_AT_go_runtime_type` is its runtime
//! descriptor's offset from `md.types`, and its `DW_AT_name` is the expected name (read by
//! Go's own `debug/dwarf` in the dwdump helper).

mod dwdump;
mod support;

use std::path::Path;

use gomemtrace_gobin::types::type_name;
use object::{Object, ObjectSection};
use support::{Variant, go_binary, go_versions};

/// Reads link-time virtual addresses from the ELF file's sections (enough for type data:
/// descriptors and names live in `.rodata`/`.go.type`/`.data.rel.ro*`, whose file bytes
/// hold the `Str` offsets unrelocated even in a PIE).
struct FileMemory {
    sections: Vec<(u64, Vec<u8>)>,
}

impl FileMemory {
    fn new(binary: &Path) -> Self {
        let bytes = std::fs::read(binary).expect("read test binary");
        let file = object::File::parse(&*bytes).expect("parse ELF");
        let sections = file
            .sections()
            .filter(|s| s.address() != 0)
            .filter_map(|s| Some((s.address(), s.data().ok()?.to_vec())))
            .filter(|(_, data)| !data.is_empty())
            .collect();
        Self { sections }
    }

    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.sections.iter().find_map(|(start, data)| {
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            data.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
        })
    }

    fn section_start(binary: &Path, name: &str) -> Option<u64> {
        let bytes = std::fs::read(binary).expect("read test binary");
        let file = object::File::parse(&*bytes).expect("parse ELF");
        file.section_by_name(name).map(|s| s.address())
    }
}

fn minor(v: &str) -> u32 {
    v.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("1.NN")
}

/// The types the profiler most needs to name, per release and link mode.
#[test]
fn named_types_resolve_like_dwarf() {
    for v in go_versions() {
        for variant in [Variant::Normal, Variant::Pie] {
            let binary = go_binary(v, variant);
            let dump = dwdump::dwdump(&binary);
            let types_base = dump.syms["runtime.types"];
            // md.types is the start of .rodata up to 1.26 and of .go.type from 1.27
            // (non-PIE); GO-RUNTIME.md §2.4.
            if variant == Variant::Normal {
                let section = if minor(v) >= 27 {
                    ".go.type"
                } else {
                    ".rodata"
                };
                assert_eq!(
                    FileMemory::section_start(&binary, section),
                    Some(types_base),
                    "go{v}: runtime.types is the start of {section}"
                );
            }
            let memory = FileMemory::new(&binary);
            let read = |addr, len| memory.read(addr, len);
            for name in [
                "main.Small",
                "*main.Small",
                "main.NoPtr",
                "[]uint8",
                "runtime.g",
                "*runtime.g",
                "string",
            ] {
                let off = *dump.rtypes.get(name).unwrap_or_else(|| {
                    panic!("go{v} {variant:?}: DWARF has no runtime type for {name}")
                });
                let got = type_name(&read, types_base, types_base + off);
                assert_eq!(
                    got.as_deref(),
                    Some(name),
                    "go{v} {variant:?}: descriptor at md.types+{off:#x}"
                );
            }
            assert_eq!(type_name(&read, types_base, 0), None, "go{v}: nil typ");
        }
    }
}

/// The runtime's spelling of a DWARF type name:
/// - DWARF qualifies names by import path (`internal/abi.Type`), the runtime by package
///   name (`abi.Type`), except inside a generic instantiation's type arguments, which keep
///   the path in both (`atomic.Pointer[internal/godebug.value]`);
/// - DWARF marks compiler-generated types without an equality function with `noalg.`
///   (`noalg.[8]uint32`, `noalg.map.bucket[K]V`) and numbers function-local types
///   (`runtime.untracedG·4`); the runtime name has neither.
///
/// (The rules were found by comparing; the runtime's own spelling comes from the linker's
/// type-name strings, which is what the profiler reports.)
fn runtime_spelling(dwarf_name: &str) -> String {
    let name = dwarf_name.replace("noalg.", "");
    let mut out = String::with_capacity(name.len());
    let mut word = String::new();
    let mut chars = name.chars().peekable();
    let shorten = |word: &str| {
        word.rsplit_once('/')
            .map_or(word, |(_, last)| last)
            .to_string()
    };
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '-') {
            word.push(c);
            continue;
        }
        if c == '·' {
            // Local type number: skip the digits.
            while chars.next_if(char::is_ascii_digit).is_some() {}
            continue;
        }
        // (The compiler's map internals, `map.bucket[K]V`/`map.group[K]V`, are not generic.)
        let generic = c == '[' && word.contains('.') && !word.starts_with("map.");
        out.push_str(&shorten(&word));
        word.clear();
        out.push(c);
        if generic {
            // Type arguments are copied verbatim up to the matching ']'.
            let mut depth = 1;
            for c in chars.by_ref() {
                out.push(c);
                depth += match c {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                if depth == 0 {
                    break;
                }
            }
        }
    }
    out.push_str(&shorten(&word));
    out
}

/// Every type in the binary that has both a DWARF entry and a runtime descriptor.
#[test]
fn every_dwarf_type_resolves() {
    for v in go_versions() {
        let binary = go_binary(v, Variant::Normal);
        let dump = dwdump::dwdump_all(&binary);
        let types_base = dump.syms["runtime.types"];
        let memory = FileMemory::new(&binary);
        let read = |addr, len| memory.read(addr, len);
        let types_len = dump.syms["runtime.etypes"] - types_base;
        let (mut mismatches, mut compared, mut not_comparable) = (Vec::new(), 0, 0);
        for (dwarf_name, off) in &dump.rtypes {
            // Not comparable: DWARF qualifies unexported struct fields with their package
            // (`struct { runtime.len int }` vs `struct { len int }`), and a few base types
            // carry an attribute outside [types, etypes) (1.19 `uintptr`).
            if dwarf_name.contains("struct {") || *off >= types_len {
                not_comparable += 1;
                continue;
            }
            compared += 1;
            let expected = runtime_spelling(dwarf_name);
            let got = type_name(&read, types_base, types_base + off);
            if got.as_deref() != Some(expected.as_str()) {
                mismatches.push(format!("{dwarf_name:?} (md.types+{off:#x}): got {got:?}"));
            }
        }
        eprintln!(
            "go{v}: {compared} types compared, {not_comparable} not comparable, {} mismatches",
            mismatches.len()
        );
        assert!(compared > 300, "go{v}: only {compared} types compared");
        assert!(mismatches.is_empty(), "go{v}:\n{}", mismatches.join("\n"));
    }
}

#[test]
fn runtime_spelling_drops_import_paths() {
    assert_eq!(runtime_spelling("internal/abi.Type"), "abi.Type");
    assert_eq!(
        runtime_spelling("map[string]*internal/fmtsort.KeyValue"),
        "map[string]*fmtsort.KeyValue"
    );
    assert_eq!(runtime_spelling("[]*main.Small"), "[]*main.Small");
    assert_eq!(runtime_spelling("noalg.[8]*sync.entry"), "[8]*sync.entry");
    assert_eq!(
        runtime_spelling("*sync/atomic.Pointer[internal/godebug.value]"),
        "*atomic.Pointer[internal/godebug.value]"
    );
    assert_eq!(
        runtime_spelling("*runtime.untracedG·4"),
        "*runtime.untracedG"
    );
}
