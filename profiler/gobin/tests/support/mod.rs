//! Shared test support: builds `tests/testdata/prog` with each installed Go toolchain
//! (see `scripts/setup.sh`) and runs `go tool ...` as an independent oracle.
//!
//! Binaries are cached under `$GOMEMTRACE_CACHE/gobin-testbins` (default
//! `~/.cache/gomemtrace`), keyed by Go version, variant and a hash of the source, so a
//! second test run does not rebuild them. Builds are serialized with a file lock, which
//! also covers several test binaries running at once.

#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Every Go release the crate claims to support.
pub fn go_versions() -> Vec<&'static str> {
    vec![
        "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27",
    ]
}

/// How the test program is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `go build`
    Normal,
    /// `go build -ldflags="-s -w"`: no `.symtab`, no DWARF.
    Stripped,
    /// `go build -buildmode=pie`
    Pie,
    /// `go build -buildmode=pie -ldflags="-s -w"`
    StrippedPie,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Normal,
        Variant::Stripped,
        Variant::Pie,
        Variant::StrippedPie,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Normal => "normal",
            Variant::Stripped => "stripped",
            Variant::Pie => "pie",
            Variant::StrippedPie => "stripped-pie",
        }
    }

    fn build_flags(self) -> &'static [&'static str] {
        match self {
            Variant::Normal => &[],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
            Variant::StrippedPie => &["-buildmode=pie", "-ldflags=-s -w"],
        }
    }

    /// The same link mode with symbols and DWARF kept: the oracle for a stripped build.
    pub fn unstripped(self) -> Variant {
        match self {
            Variant::Normal | Variant::Stripped => Variant::Normal,
            Variant::Pie | Variant::StrippedPie => Variant::Pie,
        }
    }

    pub fn is_stripped(self) -> bool {
        matches!(self, Variant::Stripped | Variant::StrippedPie)
    }

    pub fn is_pie(self) -> bool {
        matches!(self, Variant::Pie | Variant::StrippedPie)
    }
}

/// `$GOMEMTRACE_CACHE`, default `~/.cache/gomemtrace`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GOMEMTRACE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/gomemtrace")
}

/// `go` of the given release (`"1.25"`), panicking with a setup hint when it is missing.
pub fn go_command_path(version: &str) -> PathBuf {
    let go = cache_dir().join("go").join(version).join("bin/go");
    if !go.is_file() {
        panic!(
            "Go {version} toolchain not found at {}: run `bash scripts/setup.sh` first",
            go.display()
        );
    }
    go
}

/// Directory of the test program's source.
pub fn prog_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/prog")
}

/// Path of the test program's `main.go`.
pub fn prog_source() -> PathBuf {
    prog_source_dir().join("main.go")
}

/// A `go` command with a hermetic environment: local toolchain only, no module proxy,
/// caches under the project cache directory.
fn go_command(version: &str) -> Command {
    let cache = cache_dir();
    let mut cmd = Command::new(go_command_path(version));
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GO111MODULE", "on")
        .env("GOCACHE", cache.join("gocache").join(version))
        .env("GOPATH", cache.join("gopath"))
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0")
        .env_remove("GOROOT")
        .env_remove("GOOS")
        .env_remove("GOARCH");
    cmd
}

/// FNV-1a: a hash that is stable across Rust releases, for cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds (or reuses) the test program with Go `version` (`"1.25"`) linked as `variant`.
pub fn go_binary(version: &str, variant: Variant) -> PathBuf {
    // One build per (version, variant) per process; other processes wait on the file lock.
    static BUILT: OnceLock<Mutex<HashMap<(String, Variant), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&(version.to_string(), variant)) {
        return path.clone();
    }

    let source = fs::read(prog_source()).expect("read tests/testdata/prog/main.go");
    let key = format!("{version}-{}-{:016x}", variant.name(), fnv1a(&source));
    let out_dir = cache_dir().join("gobin-testbins").join(format!("v2-{key}"));
    let binary = out_dir.join("prog");
    if !binary.is_file() {
        build(version, variant, &source, &out_dir, &binary);
    }
    built.insert((version.to_string(), variant), binary.clone());
    binary
}

fn build(version: &str, variant: Variant, source: &[u8], out_dir: &Path, binary: &Path) {
    let go = go_command_path(version);
    let root = cache_dir().join("gobin-testbins");
    fs::create_dir_all(out_dir).expect("create test binary cache dir");
    // One lock for all builds: they share the source directory below.
    let lock = File::create(root.join(".lock")).expect("create build lock");
    lock.lock().expect("lock build dir");
    if binary.is_file() {
        return; // another process built it while we waited
    }
    // Every version and variant builds from the same directory, so that file names in
    // pclntab agree between a stripped binary and its unstripped twin.
    let work = root.join(format!("src-{:016x}", fnv1a(source)));
    fs::create_dir_all(&work).expect("create build dir");
    fs::write(work.join("go.mod"), "module prog\n\ngo 1.19\n").expect("write go.mod");
    fs::write(work.join("main.go"), source).expect("write main.go");
    let tmp = out_dir.join("prog.tmp");
    let output = go_command(version)
        .current_dir(&work)
        .arg("build")
        .args(variant.build_flags())
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", go.display()));
    assert!(
        output.status.success(),
        "go {version} build {:?} failed:\n{}",
        variant.build_flags(),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&tmp, binary).expect("move built binary into place");
}

/// Runs `go <args>` (e.g. `["tool", "nm", path]`) with Go `version`; returns stdout.
pub fn go_tool(version: &str, args: &[&str]) -> String {
    go_tool_with_stdin(version, args, "")
}

/// Runs `go <args>` feeding `stdin` (e.g. addresses to `go tool addr2line`); returns stdout.
pub fn go_tool_with_stdin(version: &str, args: &[&str], stdin: &str) -> String {
    let mut child = go_command(version)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run go {version} {args:?}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_string();
    // Write from another thread so a large output cannot deadlock against a full input pipe.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for go tool");
    writer.join().expect("stdin writer");
    assert!(
        output.status.success(),
        "go {version} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("go tool output is UTF-8")
}

/// A symbol from `go tool nm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NmSymbol {
    pub address: u64,
    /// `T`/`t` text, `D`/`d` data, `R`/`r` read-only, `B`/`b` bss, `U` undefined.
    pub kind: char,
    pub name: String,
}

/// All defined symbols of `binary` as listed by `go tool nm` (names as in `.symtab`, so
/// ABI0 functions keep their `.abi0` suffix).
pub fn nm_symbols(version: &str, binary: &Path) -> Vec<NmSymbol> {
    let out = go_tool(
        version,
        &["tool", "nm", binary.to_str().expect("UTF-8 path")],
    );
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?.chars().next()?;
            let name = fields.collect::<Vec<_>>().join(" ");
            Some(NmSymbol {
                address,
                kind,
                name,
            })
        })
        .collect()
}

/// `T`/`t` symbols of `binary` as listed by `go tool nm`.
pub fn nm_text_symbols(version: &str, binary: &Path) -> Vec<NmSymbol> {
    nm_symbols(version, binary)
        .into_iter()
        .filter(|s| matches!(s.kind, 'T' | 't'))
        .collect()
}

/// Instructions `go tool objdump -s REGEX` prints: (address, encoded bytes).
pub fn objdump_instructions(version: &str, binary: &Path, regex: &str) -> Vec<(u64, Vec<u8>)> {
    let out = go_tool(
        version,
        &[
            "tool",
            "objdump",
            "-s",
            regex,
            binary.to_str().expect("UTF-8 path"),
        ],
    );
    out.lines()
        .filter_map(|line| {
            // "  main.go:35\t0x482020\t493b6610\t\tCMPQ SP, 0x10(R14)"
            let mut fields = line.trim_start().split('\t').filter(|f| !f.is_empty());
            let _position = fields.next()?;
            let address = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
            let hex = fields.next()?.trim();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((address, bytes))
        })
        .collect()
}

/// One answer of `go tool addr2line`: the physical function and the innermost file:line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr2Line {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Runs `go tool addr2line` on `binary` (built by Go `version`) for all `pcs` in one batch.
/// Go 1.19's addr2line cannot read its own PIE binaries (it ignores the relocated
/// pcHeader.textStart and prints `?`), so 1.19 binaries are read with Go 1.21's.
pub fn addr2line(version: &str, binary: &Path, pcs: &[u64]) -> Vec<Addr2Line> {
    let version = if version == "1.19" { "1.21" } else { version };
    let input: String = pcs.iter().map(|pc| format!("0x{pc:x}\n")).collect();
    let out = go_tool_with_stdin(
        version,
        &["tool", "addr2line", binary.to_str().expect("UTF-8 path")],
        &input,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        pcs.len() * 2,
        "addr2line prints two lines per address:\n{out}"
    );
    lines
        .chunks(2)
        .map(|pair| {
            let (file, line) = pair[1].rsplit_once(':').expect("file:line");
            Addr2Line {
                function: pair[0].to_string(),
                file: file.to_string(),
                line: line.parse().unwrap_or(0),
            }
        })
        .collect()
}

/// The version `go version BINARY` reports (`go1.25.5`).
pub fn go_version_of(version: &str, binary: &Path) -> String {
    let out = go_tool(version, &["version", binary.to_str().expect("UTF-8 path")]);
    // "PATH: go1.25.5" (possibly followed by " X:experiment" on some releases)
    let (_, rest) = out
        .trim()
        .rsplit_once(": ")
        .expect("go version output has 'PATH: VERSION'");
    rest.to_string()
}

/// 1-based line number of the first source line of the test program containing `marker`.
pub fn source_line_of(marker: &str) -> u32 {
    let source = fs::read_to_string(prog_source()).expect("read main.go");
    let index = source
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line contains {marker:?}"));
    u32::try_from(index + 1).expect("line fits u32")
}
