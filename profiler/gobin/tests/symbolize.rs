//! PC → frames, checked against `go tool addr2line` of each binary's unstripped twin and
//! against the test program's source for inlined calls.

mod support;

use gomemtrace_gobin::{Frame, GoBinary};
use support::{Variant, addr2line, go_binary, go_versions, source_line_of};

/// A spread of PCs: entry, middle and last byte of every 5th function.
fn sample_pcs(binary: &GoBinary) -> Vec<u64> {
    binary
        .functions()
        .iter()
        .step_by(5)
        .filter(|f| f.end > f.entry)
        .flat_map(|f| [f.entry, f.entry + (f.end - f.entry) / 2, f.end - 1])
        .collect()
}

#[test]
fn file_line_and_function_match_go_tool_addr2line() {
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            let what = format!("go{version} {variant:?}");
            let pcs = sample_pcs(&binary);
            let expected = addr2line(version, &go_binary(version, variant.unstripped()), &pcs);
            let mut compared = 0;
            for (pc, oracle) in pcs.iter().zip(&expected) {
                if oracle.function == "?" {
                    continue; // padding between functions: addr2line knows nothing either
                }
                let frames = binary.symbolize(*pc);
                assert!(
                    !frames.is_empty(),
                    "{what}: no frames at {pc:#x} ({oracle:?})"
                );
                if oracle.file.is_empty() || oracle.file == "?" {
                    // Alignment padding after the last instruction: no position known.
                    assert_eq!(
                        (frames[0].file.as_deref(), frames[0].line),
                        (None, 0),
                        "{what} at {pc:#x}"
                    );
                    continue;
                }
                // addr2line names the physical function and gives the innermost position.
                let physical = frames.last().unwrap();
                let innermost = &frames[0];
                assert_eq!(
                    physical.function, oracle.function,
                    "{what} at {pc:#x}: {frames:?}"
                );
                assert_eq!(
                    innermost.file.as_deref(),
                    Some(oracle.file.as_str()),
                    "{what} at {pc:#x}: {frames:?}"
                );
                assert_eq!(innermost.line, oracle.line, "{what} at {pc:#x}: {frames:?}");
                compared += 1;
            }
            assert!(compared > 500, "{what}: only {compared} PCs compared");
        }
    }
}

fn lines_of_scale() -> std::ops::RangeInclusive<u32> {
    let start = source_line_of("func scale(");
    start..=start + 5
}

#[test]
fn inlined_call_yields_inlined_function_then_caller() {
    let call_site = source_line_of("INLINED-CALL-SITE");
    for version in go_versions() {
        for variant in Variant::ALL {
            let binary = GoBinary::open(&go_binary(version, variant)).unwrap();
            let what = format!("go{version} {variant:?}");
            let caller = binary.function("main.sumScaled").unwrap();
            let pcs: Vec<u64> = (caller.entry..caller.end).collect();
            let oracle = addr2line(version, &go_binary(version, variant.unstripped()), &pcs);
            let mut inlined_pcs = 0;
            for (pc, position) in pcs.iter().zip(&oracle) {
                let frames = binary.symbolize(*pc);
                // addr2line reports a line of scale's body exactly where scale was inlined.
                if !lines_of_scale().contains(&position.line) {
                    assert_eq!(frames.len(), 1, "{what} at {pc:#x}: {frames:?}");
                    continue;
                }
                inlined_pcs += 1;
                let file = Some(position.file.clone());
                assert_eq!(
                    frames,
                    vec![
                        Frame {
                            function: "main.scale".into(),
                            file: file.clone(),
                            line: position.line
                        },
                        Frame {
                            function: "main.sumScaled".into(),
                            file,
                            line: call_site
                        },
                    ],
                    "{what} at {pc:#x}"
                );
            }
            assert!(
                inlined_pcs > 0,
                "{what}: scale was not inlined into sumScaled"
            );
        }
    }
}

#[test]
fn stripped_pie_answers_like_its_unstripped_twin() {
    for version in go_versions() {
        let stripped = GoBinary::open(&go_binary(version, Variant::StrippedPie)).unwrap();
        let twin = GoBinary::open(&go_binary(version, Variant::Pie)).unwrap();
        assert_eq!(stripped.text_start(), twin.text_start(), "go{version}");
        for f in stripped.functions() {
            // Compared by address: names may be spelled differently in .symtab (`·` vs `.`).
            let same = twin
                .function_at(f.entry)
                .unwrap_or_else(|| panic!("go{version}: twin lacks {}", f.name));
            assert_eq!(same.entry, f.entry, "go{version} {}", f.name);
        }
        for pc in sample_pcs(&stripped) {
            assert_eq!(
                stripped.symbolize(pc),
                twin.symbolize(pc),
                "go{version} at {pc:#x}"
            );
        }
    }
}
