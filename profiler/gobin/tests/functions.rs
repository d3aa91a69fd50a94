//! Function addresses, text start, types range and code bytes, checked against `go tool nm`
//! and `go tool objdump` of the unstripped twin of each binary.

mod support;

use std::collections::HashMap;

use gomemtrace_gobin::GoBinary;
use support::{NmSymbol, Variant, go_binary, go_versions, nm_symbols, objdump_instructions};

/// Text symbols of the unstripped twin by name; `X.abi0` maps to `X` unless a Go function
/// `X` exists (then `X.abi0` is its ABI0 wrapper and is left out).
fn nm_functions(symbols: &[NmSymbol]) -> HashMap<String, u64> {
    let text: Vec<&NmSymbol> = symbols
        .iter()
        .filter(|s| matches!(s.kind, 'T' | 't'))
        .collect();
    let mut functions: HashMap<String, u64> = HashMap::new();
    for s in &text {
        if !s.name.ends_with(".abi0") {
            functions.insert(s.name.clone(), s.address);
        }
    }
    for s in &text {
        if let Some(base) = s.name.strip_suffix(".abi0") {
            functions.entry(base.to_string()).or_insert(s.address);
        }
    }
    functions
}

/// Go 1.18–1.19 linkers write generic names to pclntab with the type arguments elided:
/// `type..eq.[9]internal/cpu.option` becomes `type..eq.[...]internal/cpu.option`.
fn elide_type_arguments(name: &str) -> Option<String> {
    let open = name.find('[')?;
    let close = name.rfind(']')?;
    (close > open).then(|| format!("{}[...]{}", &name[..open], &name[close + 1..]))
}

/// Whether `name` at `entry` is in the oracle, exactly or (for elided names) by its elided form.
/// ELF symbol names spell Go's `·` as `.` (`type:.eq.runtime.untracedG.4`); pclntab keeps `·`.
fn oracle_has(oracle: &HashMap<String, u64>, name: &str, entry: u64) -> bool {
    if oracle.get(name) == Some(&entry) || oracle.get(&name.replace('·', ".")) == Some(&entry) {
        return true;
    }
    name.contains("[...]")
        && oracle
            .iter()
            .any(|(n, &a)| a == entry && elide_type_arguments(n).as_deref() == Some(name))
}

fn nm_address(symbols: &[NmSymbol], name: &str) -> Option<u64> {
    symbols.iter().find(|s| s.name == name).map(|s| s.address)
}

#[test]
fn every_function_entry_matches_go_tool_nm_of_the_unstripped_twin() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            let twin = go_binary(version, variant.unstripped());
            let oracle = nm_functions(&nm_symbols(version, &twin));
            let what = format!("go{version} {variant:?}");

            let functions = binary.functions();
            assert!(
                functions.len() > 1000,
                "{what}: only {} functions",
                functions.len()
            );
            assert!(
                functions.windows(2).all(|w| w[0].entry <= w[1].entry),
                "{what}: not sorted by entry"
            );

            let wrong: Vec<String> = functions
                .iter()
                .filter(|f| !oracle_has(&oracle, &f.name, f.entry))
                .map(|f| format!("{} {:#x} (nm: {:x?})", f.name, f.entry, oracle.get(&f.name)))
                .collect();
            assert!(
                wrong.is_empty(),
                "{what}: {} functions disagree with nm, e.g. {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(10)]
            );

            // The other direction: every nm text symbol that has code is found.
            let ours: HashMap<&str, u64> = functions
                .iter()
                .map(|f| (f.name.as_str(), f.entry))
                .collect();
            let ours_dotted: std::collections::HashSet<String> =
                functions.iter().map(|f| f.name.replace('·', ".")).collect();
            let missing: Vec<&String> = oracle
                .iter()
                .filter(|(name, _)| {
                    !ours.contains_key(name.as_str())
                        && !ours_dotted.contains(name.as_str())
                        && !elide_type_arguments(name)
                            .is_some_and(|elided| ours.contains_key(elided.as_str()))
                })
                .map(|(name, _)| name)
                .filter(|name| !is_marker_symbol(name))
                .collect();
            assert!(
                missing.is_empty(),
                "{what}: {} nm functions missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
    }
}

/// Symbols nm lists as text that are not functions in pclntab: section boundary markers.
fn is_marker_symbol(name: &str) -> bool {
    matches!(
        name,
        "runtime.text" | "runtime.etext" | "go:buildid" | "go.buildid"
    )
}

#[test]
fn function_by_name_picks_the_go_function_not_its_abi0_wrapper() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            let symbols = nm_symbols(version, &go_binary(version, variant.unstripped()));
            let mut checked = 0;
            for s in symbols.iter().filter(|s| matches!(s.kind, 'T' | 't')) {
                let Some(base) = s.name.strip_suffix(".abi0") else {
                    continue;
                };
                let Some(go_function) = nm_address(&symbols, base) else {
                    continue;
                };
                let found = binary
                    .function(base)
                    .unwrap_or_else(|| panic!("go{version} {variant:?}: no {base}"));
                assert_eq!(
                    found.entry, go_function,
                    "go{version} {variant:?}: {base} resolved to its wrapper"
                );
                checked += 1;
            }
            assert!(
                checked >= 5,
                "go{version} {variant:?}: only {checked} wrapper pairs"
            );
            assert!(binary.function("runtime.mallocgc").is_some());
            assert!(binary.function("main.sumScaled").is_some());
            assert!(binary.function("no.such.function").is_none());
        }
    }
}

#[test]
fn function_at_finds_the_enclosing_function() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            for f in binary.functions().iter().filter(|f| f.end > f.entry) {
                for pc in [f.entry, f.entry + (f.end - f.entry) / 2, f.end - 1] {
                    assert_eq!(
                        binary.function_at(pc),
                        Some(f),
                        "go{version} {variant:?} pc {pc:#x}"
                    );
                }
            }
            assert_eq!(binary.function_at(0), None);
            assert!(binary.symbolize(0).is_empty());
        }
    }
}

#[test]
fn text_start_and_types_range_match_runtime_symbols() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            let symbols = nm_symbols(version, &go_binary(version, variant.unstripped()));
            let what = format!("go{version} {variant:?}");
            assert_eq!(
                Some(binary.text_start()),
                nm_address(&symbols, "runtime.text"),
                "{what}"
            );
            if !variant.is_stripped() {
                // Stripping moves read-only data, so only the twin itself can be compared.
                let expected = (
                    nm_address(&symbols, "runtime.types").unwrap(),
                    nm_address(&symbols, "runtime.etypes").unwrap(),
                );
                assert_eq!(binary.types_range(), Some(expected), "{what}");
            } else {
                let (start, end) = binary.types_range().expect("types range");
                assert!(
                    start < end && binary.read_vaddr(start, 48).is_some(),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn function_code_and_file_offsets_match_go_tool_objdump() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let path = go_binary(version, variant);
            let binary = GoBinary::open(&path).unwrap();
            let file = std::fs::read(&path).unwrap();
            // objdump needs symbols; a stripped build has the same code, but its
            // RIP-relative operands differ (data moved), so it is compared to its twin only
            // up to the first such operand: the stack-check prologue.
            let instructions = objdump_instructions(
                version,
                &go_binary(version, variant.unstripped()),
                r"^main\.",
            );
            assert!(!instructions.is_empty());
            for name in [
                "main.sumScaled",
                "main.newSmall",
                "main.recurse",
                "main.worker",
                "main.main",
            ] {
                let what = format!("go{version} {variant:?} {name}");
                let f = binary
                    .function(name)
                    .unwrap_or_else(|| panic!("{what}: missing"));
                let mut expected: Vec<u8> = instructions
                    .iter()
                    .filter(|(addr, _)| (f.entry..f.end).contains(addr))
                    .flat_map(|(_, bytes)| bytes.iter().copied())
                    .collect();
                assert!(
                    expected.len() >= 16,
                    "{what}: objdump gave {} bytes",
                    expected.len()
                );
                if variant.is_stripped() {
                    expected.truncate(4); // CMPQ SP, 0x10(R14)
                }
                let code = binary.function_code(f).unwrap();
                assert_eq!(code.len() as u64, f.end - f.entry, "{what}");
                // objdump stops at the last instruction; padding may follow it.
                assert_eq!(&code[..expected.len()], &expected[..], "{what}");
                let offset = binary.vaddr_to_file_offset(f.entry).unwrap() as usize;
                assert_eq!(
                    &file[offset..offset + expected.len()],
                    &expected[..],
                    "{what}: file offset"
                );
            }
        }
    }
}

/// Section name → (address, size), from `readelf -SW` (None when binutils is missing).
fn readelf_sections(path: &std::path::Path) -> Option<HashMap<String, (u64, u64)>> {
    let out = std::process::Command::new("readelf")
        .arg("-SW")
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split_once(']')?.1.split_whitespace();
                let name = fields.next()?.to_string();
                let _kind = fields.next()?;
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let _offset = fields.next()?;
                let size = u64::from_str_radix(fields.next()?, 16).ok()?;
                Some((name, (address, size)))
            })
            .collect(),
    )
}

#[test]
fn types_range_matches_the_type_section() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let path = go_binary(version, variant);
            let binary = GoBinary::open(&path).unwrap();
            let what = format!("go{version} {variant:?}");
            let (start, end) = binary.types_range().unwrap();
            // md.types is where the type section starts (GO-RUNTIME.md §2.4), and
            // md.etypes lies inside that section.
            let Some(sections) = readelf_sections(&path) else {
                continue;
            };
            // PIE keeps type descriptors (they hold pointers) in relocated read-only data.
            let plain = if variant.is_pie() {
                ".data.rel.ro"
            } else {
                ".rodata"
            };
            let candidates = [".go.type", ".data.rel.ro.go.type", plain];
            let section = candidates
                .iter()
                .find(|name| sections.contains_key(**name))
                .unwrap();
            let (address, size) = sections[*section];
            assert_eq!(start, address, "{what}: types start vs {section}");
            assert!(
                end > start && end <= address + size,
                "{what}: etypes {end:#x} outside {section}"
            );
        }
    }
}

#[test]
fn first_function_starts_at_text_start() {
    for version in go_versions() {
        let binary = GoBinary::open(&go_binary(version, Variant::StrippedPie)).unwrap();
        let first = &binary.functions()[0];
        assert_eq!(first.entry, binary.text_start(), "go{version}");
    }
}
