//! Every input a fuzz target (`fuzz/`, `cargo xtask fuzz`) crashed on, replayed through
//! the same entry point: each must now give a value or an error. The inputs live in
//! `tests/fuzz-regressions/<target>/`, named as libFuzzer wrote them.

use std::path::Path;

use gomemtrace_gobin::fuzzing;

#[test]
fn every_crash_found_by_fuzzing_is_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let target = dir.file_name().unwrap().to_str().unwrap().to_string();
        let run: fn(&[u8]) = match target.as_str() {
            "elf" => fuzzing::elf,
            "buildinfo" => fuzzing::buildinfo,
            "pclntab" => fuzzing::pclntab,
            "moduledata" => fuzzing::moduledata,
            "dwarf_offsets" => fuzzing::dwarf_offsets,
            "types" => fuzzing::types,
            "disasm" => fuzzing::disasm,
            "allocstats_anchors" => fuzzing::allocstats_anchors,
            "version" => fuzzing::version,
            "binary" => fuzzing::binary,
            "goroutines" => fuzzing::goroutines,
            "alloc_counters" => fuzzing::alloc_counters,
            other => panic!("no fuzz target {other}"),
        };
        for input in std::fs::read_dir(&dir).unwrap() {
            let input = input.unwrap().path();
            eprintln!("{target}: {}", input.display());
            run(&std::fs::read(&input).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}
