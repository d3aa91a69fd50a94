//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` (cargo-fuzz, no sanitizer,
//! overflow checks on) and runs each for a bounded time on its seed corpus; fails on a
//! crash, naming the input libFuzzer saved. `cargo xtask fuzz-seeds` writes the seeds:
//! parts of real builds of `fuzz/seedprog` by every installed Go release (normal,
//! stripped, stripped PIE) and synthetic images of the runtime's structures.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use gomemtrace_gobin::{fuzzing, offsets};

use crate::{GoBuild, go_cache, run, target_dir, workspace_root};

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 12] = [
    "elf",
    "buildinfo",
    "pclntab",
    "moduledata",
    "dwarf_offsets",
    "types",
    "disasm",
    "allocstats_anchors",
    "version",
    "binary",
    "goroutines",
    "alloc_counters",
];

/// The Go releases gomemtrace supports (scripts/setup.sh installs them; 1.20 is not).
const GO_RELEASES: [&str; 8] = [
    "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27",
];

/// The seed program's builds: name and `go build` flags.
const VARIANTS: [(&str, &[&str]); 3] = [
    ("normal", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie", "-ldflags=-s -w"]),
];

/// The runtime structs whose DWARF the readers use (offsets.rs, allocstats.rs): the
/// `dwarf_offsets` seeds describe these, with each release's real member offsets.
const DWARF_STRUCTS: [&str; 11] = [
    "runtime.g",
    "runtime.m",
    "runtime.stack",
    "runtime.schedt",
    "runtime.gobuf",
    "runtime.mstats",
    "runtime.consistentHeapStats",
    "runtime.heapStatsDelta",
    "runtime.p",
    "runtime.mcache",
    "runtime.mspan",
];

/// The cargo-fuzz release scripts/setup.sh installs, and where.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn seeds_dir() -> PathBuf {
    target_dir().join("fuzz-seeds")
}

/// The corpus libFuzzer grows, kept between runs (seeds stay apart, regenerated).
fn corpus_dir(target: &str) -> PathBuf {
    go_cache().join("fuzz-corpus").join(target)
}

fn cargo_fuzz() -> PathBuf {
    let installed = go_cache()
        .join(format!("tools/cargo-fuzz-{CARGO_FUZZ_VERSION}"))
        .join("bin/cargo-fuzz");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("cargo-fuzz")
    }
}

/// Writes every target's seeds under the target directory; returns how many.
pub fn seeds() -> anyhow::Result<usize> {
    let dir = seeds_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut written = 0;
    let mut write = |target: &str, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        std::fs::write(target_dir.join(name), bytes)?;
        written += 1;
        Ok(())
    };
    for (i, (target, seed)) in fuzzing::synthetic_seeds().into_iter().enumerate() {
        write(target, &format!("synthetic-{i}"), &seed)?;
    }
    for release in GO_RELEASES {
        if !go_cache().join("go").join(release).join("bin/go").exists() {
            eprintln!("xtask: fuzz-seeds: no Go {release} (scripts/setup.sh installs it): skipped");
            continue;
        }
        for (variant, flags) in VARIANTS {
            let binary = build_seed_program(release, variant, flags)?;
            let data = std::fs::read(&binary)?;
            for (i, (target, seed)) in fuzzing::seeds_from_binary(&data).into_iter().enumerate() {
                write(target, &format!("go{release}-{variant}-{i}"), &seed)?;
            }
            if variant == "normal" {
                for (i, seed) in dwarf_seeds(&data)?.into_iter().enumerate() {
                    write("dwarf_offsets", &format!("go{release}-{i}"), &seed)?;
                }
            }
        }
    }
    for extra in [
        "devel go1.28-abcdef0123 Mon Jan 1 00:00:00 2029 +0000",
        "go1.26rc1",
    ] {
        write(
            "version",
            extra.split(' ').next().unwrap_or(extra),
            extra.as_bytes(),
        )?;
    }
    for target in TARGETS {
        if !dir.join(target).exists() {
            bail!("no seeds for fuzz target {target}: is a Go toolchain installed?");
        }
    }
    eprintln!("xtask: {written} seeds in {}", dir.display());
    Ok(written)
}

fn build_seed_program(release: &str, variant: &str, flags: &[&str]) -> anyhow::Result<PathBuf> {
    GoBuild {
        source: workspace_root().join("fuzz/seedprog"),
        work: target_dir()
            .join("xtask-go")
            .join(format!("fuzz-seed-{release}-{variant}")),
        output: "seedprog",
        go_release: release,
        flags,
        // The tests' per-release build cache (tests/src/lib.rs): warm on a CI machine.
        env: &[(
            "GOCACHE",
            go_cache().join("gocache").join(release).into_os_string(),
        )],
    }
    .run()
}

/// Small ELF files with the DWARF of the runtime structs `data` (a Go executable) has,
/// one uncompressed and one zlib-compressed (`SHF_COMPRESSED`, as Go writes it).
fn dwarf_seeds(data: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let Some(structs) = offsets::struct_offsets_from_dwarf(data, &DWARF_STRUCTS)? else {
        return Ok(Vec::new());
    };
    let sections = dwarf_sections(&structs)?;
    Ok(vec![
        elf_with_sections(&sections, false)?,
        elf_with_sections(&sections, true)?,
    ])
}

/// `.debug_abbrev`, `.debug_info`, ...: one unit whose top level is one
/// `DW_TAG_structure_type` per struct, with a `DW_TAG_member` per member (name and
/// constant `DW_AT_data_member_location`), as Go's linker writes them.
fn dwarf_sections(structs: &offsets::StructOffsets) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use gimli::write::{AttributeValue, DwarfUnit, EndianVec, Sections};
    let encoding = gimli::Encoding {
        format: gimli::Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut dwarf = DwarfUnit::new(encoding);
    let root = dwarf.unit.root();
    let mut names: Vec<&String> = structs.keys().collect();
    names.sort();
    for name in names {
        let strukt = dwarf.unit.add(root, gimli::DW_TAG_structure_type);
        dwarf.unit.get_mut(strukt).set(
            gimli::DW_AT_name,
            AttributeValue::String(name.as_bytes().to_vec()),
        );
        let mut members: Vec<(&String, &u64)> = structs[name].iter().collect();
        members.sort_by_key(|&(member, offset)| (*offset, member.clone()));
        for (member, &offset) in members {
            let id = dwarf.unit.add(strukt, gimli::DW_TAG_member);
            let entry = dwarf.unit.get_mut(id);
            entry.set(
                gimli::DW_AT_name,
                AttributeValue::String(member.as_bytes().to_vec()),
            );
            entry.set(
                gimli::DW_AT_data_member_location,
                AttributeValue::Udata(offset),
            );
        }
    }
    let mut sections = Sections::new(EndianVec::new(gimli::LittleEndian));
    dwarf.write(&mut sections)?;
    let mut out = Vec::new();
    sections.for_each(|id, data| -> anyhow::Result<()> {
        if !data.slice().is_empty() {
            out.push((id.name().to_string(), data.slice().to_vec()));
        }
        Ok(())
    })?;
    Ok(out)
}

fn elf_with_sections(sections: &[(String, Vec<u8>)], compress: bool) -> anyhow::Result<Vec<u8>> {
    use object::write::{Object, SectionKind};
    use object::{Architecture, BinaryFormat, Endianness, SectionFlags, elf};
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    for (name, data) in sections {
        let id = obj.add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Debug);
        if compress {
            // Elf64_Chdr: ch_type, ch_reserved, ch_size, ch_addralign; then the zlib stream.
            let mut bytes = Vec::new();
            bytes.extend(elf::ELFCOMPRESS_ZLIB.0.to_le_bytes());
            bytes.extend(0u32.to_le_bytes());
            bytes.extend((data.len() as u64).to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
            let mut zlib =
                flate2::write::ZlibEncoder::new(&mut bytes, flate2::Compression::default());
            std::io::Write::write_all(&mut zlib, data)?;
            zlib.finish()?;
            obj.set_section_data(id, bytes, 1);
            obj.section_mut(id).flags = SectionFlags::Elf {
                sh_type: elf::SHT_PROGBITS,
                sh_flags: elf::SHF_COMPRESSED,
            };
        } else {
            obj.set_section_data(id, data.clone(), 1);
        }
    }
    Ok(obj.write()?)
}

/// Builds the targets and runs each of `targets` for `seconds`; fails if any crashed
/// (after running the others).
pub fn fuzz(targets: &[String], seconds: u64) -> anyhow::Result<()> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("no fuzz target {target} (targets: {})", TARGETS.join(", "));
        }
    }
    if !seeds_dir().exists() {
        seeds()?;
    }
    let fuzz_target_dir = target_dir().join("fuzz");
    run(Command::new(cargo_fuzz())
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(&fuzz_target_dir)
        .current_dir(workspace_root()))
    .context("cargo fuzz build (scripts/setup.sh installs cargo-fuzz)")?;
    let bin_dir = fuzz_target_dir.join("x86_64-unknown-linux-gnu/release");
    let mut summary = Vec::new();
    let mut crashed = Vec::new();
    for target in targets {
        match run_target(&bin_dir, target, seconds) {
            Ok(stats) => {
                eprintln!(
                    "xtask: fuzz: {target}: {} executions in {seconds} s, corpus {}, no crash",
                    stats.executions, stats.corpus
                );
                summary.push((target.clone(), stats));
            }
            Err(e) => {
                eprintln!("xtask: fuzz: {e:#}");
                crashed.push(target.clone());
            }
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    eprintln!("xtask: fuzz: {seconds} s per target, no crash:");
    eprintln!(
        "  {:<20} {:>12} {:>10} {:>8}",
        "target", "executions", "per s", "corpus"
    );
    for (target, stats) in summary {
        eprintln!(
            "  {target:<20} {:>12} {:>10} {:>8}",
            stats.executions,
            stats.executions / seconds.max(1),
            stats.corpus
        );
    }
    Ok(())
}

struct RunStats {
    executions: u64,
    corpus: u64,
}

/// One bounded libFuzzer run of `target` on its corpus and seeds.
fn run_target(bin_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<RunStats> {
    let corpus = corpus_dir(target);
    let artifacts = workspace_root().join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg(&corpus)
        .arg(seeds_dir().join(target))
        .arg(format!("-max_total_time={seconds}"))
        // One input slower than this is a hang: every parser is bounded by its input (the
        // slowest unit seen takes well under a second; a loaded CI machine once stalled a
        // fuzzer 31 s on an input that takes 0 ms, hence the margin).
        .arg("-timeout=60")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    eprintln!("xtask: {cmd:?}");
    let output = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let logs = target_dir().join("fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join(format!("{target}.log")), &output.stderr)?;
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
        bail!(
            "fuzz target {target} crashed ({}); the input is in {} \
             (replay: {} INPUT; fix it and add it to profiler/gobin/tests/fuzz-regressions/{target}/)",
            output.status,
            artifacts.display(),
            bin_dir.join(target).display()
        );
    }
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(RunStats {
        executions: stat("stat::number_of_executed_units:"),
        corpus: log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" corp: ")?.1.split('/').next()?.parse().ok())
            .unwrap_or(0),
    })
}
