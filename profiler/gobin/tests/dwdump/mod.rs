//! Independent oracle for the offsets and types tests: `tests/testdata/dwdump`, a small Go
//! program that reads a binary's DWARF and symbols with Go's own `debug/dwarf` and
//! `debug/elf` (no code shared with the Rust readers under test).

#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support;

/// What dwdump printed for one binary.
#[derive(Debug, Default)]
pub struct DwDump {
    /// `runtime.g.goid` -> byte offset (nested members joined by '.', e.g. `runtime.g.stack.lo`).
    pub fields: HashMap<String, u64>,
    /// DWARF type name -> `DW_AT_go_runtime_type` (type descriptor offset from `md.types`).
    pub rtypes: HashMap<String, u64>,
    /// `.symtab` symbol -> address (`runtime.types`, `runtime.etypes`).
    pub syms: HashMap<String, u64>,
    /// Struct name -> byte size (`runtime.heapStatsDelta`).
    pub sizes: HashMap<String, u64>,
}

/// FNV-1a, stable across Rust releases, for the cache key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds dwdump once (per source hash) with the newest toolchain, whose `debug/dwarf`
/// reads the DWARF of every older release (DWARF 5 from 1.25 included).
pub fn dwdump_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let version = *support::go_versions()
            .last()
            .expect("at least one Go version");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/dwdump");
        let source = fs::read(src.join("main.go")).expect("read dwdump/main.go");
        let out_dir = support::cache_dir()
            .join("gobin-testbins")
            .join(format!("dwdump-{version}-{:016x}", fnv1a(&source)));
        let binary = out_dir.join("dwdump");
        if !binary.is_file() {
            fs::create_dir_all(&out_dir).expect("create dwdump cache dir");
            let lock = File::create(out_dir.join(".lock")).expect("create lock");
            lock.lock().expect("lock dwdump dir");
            if !binary.is_file() {
                let tmp = out_dir.join("dwdump.tmp");
                support::go_tool(
                    version,
                    &[
                        "build",
                        "-C",
                        src.to_str().expect("UTF-8"),
                        "-o",
                        tmp.to_str().expect("UTF-8"),
                        ".",
                    ],
                );
                fs::rename(&tmp, &binary).expect("move dwdump into place");
            }
        }
        binary
    })
}

/// Runs dwdump on `binary`: the runtime.g/m fields, a few named types, two symbols.
pub fn dwdump(binary: &Path) -> DwDump {
    run(&[], binary)
}

/// Like [`dwdump`], but `rtypes` holds every DWARF type that has a runtime descriptor.
pub fn dwdump_all(binary: &Path) -> DwDump {
    run(&["-all"], binary)
}

fn run(flags: &[&str], binary: &Path) -> DwDump {
    let output = Command::new(dwdump_binary())
        .args(flags)
        .arg(binary)
        .output()
        .expect("run dwdump");
    assert!(
        output.status.success(),
        "dwdump {} failed:\n{}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut dump = DwDump::default();
    for line in String::from_utf8(output.stdout).expect("UTF-8").lines() {
        // "KIND 0xVALUE NAME" (the name last: it may contain spaces)
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(value), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let value = u64::from_str_radix(value.trim_start_matches("0x"), 16).expect("hex value");
        let map = match kind {
            "field" => &mut dump.fields,
            "rtype" => &mut dump.rtypes,
            "sym" => &mut dump.syms,
            "size" => &mut dump.sizes,
            _ => continue,
        };
        map.insert(name.to_string(), value);
    }
    dump
}
