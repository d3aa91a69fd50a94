//! Harness for the end-to-end tests: builds Go fixtures with each toolchain and runs gomemtrace on them.
//!
//! - [`fixture`] builds `tests/fixtures/<name>/main.go` with one Go release
//!   (`~/.cache/gomemtrace/go/<1.NN>`, installed by `scripts/setup.sh`) as one [`Variant`],
//!   cached under `$GOMEMTRACE_CACHE/fixtures` by (version, variant, source hash).
//! - [`gomemtrace`] finds (or builds) the CLI under test.
//! - [`Proc`] runs a program with its output collected line by line, so a test can wait for
//!   `ready` / `attached` lines and send signals.
//! - [`Report`] is the part of gomemtrace's `--format json` output the tests read, kept
//!   independent of `gomemtrace-report` on purpose: the tests check the documented format,
//!   not the code that writes it.
//! - [`Oracle`] is what the `allocs` fixture writes with `-oracle FILE`: the Go runtime's own
//!   allocation profile (MemProfileRate=1) per site, the fixture's arithmetic and its
//!   goroutine ids.
//!
//! Tests that need root call [`require_root`] first, which prints `SKIP: needs root` and
//! returns false otherwise.
//!
//! Environment: `GOMEMTRACE_GO_VERSIONS=1.25,1.27` runs the per-version loops on those
//! releases only; `GOMEMTRACE_BIN` tests that binary instead of building one;
//! `GOMEMTRACE_KEEP_TMP=1` keeps each run's report and oracle under the temp dir;
//! `GOMEMTRACE_CACHE` moves the toolchain and fixture cache (default `~/.cache/gomemtrace`).
//! Cold (no fixture or Go build cache) the whole suite takes about 4 minutes on 2 cores,
//! warm under a minute.

pub mod agent;
pub mod exact_report;
pub mod hugo;
pub mod loopback;
pub mod probe_points;
pub mod proc_status;
pub mod seccomp;
pub mod steady;
pub mod thirdparty;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// Every Go release gomemtrace supports; `GOMEMTRACE_GO_VERSIONS=1.25,1.27` narrows it.
pub fn go_versions() -> Vec<String> {
    const ALL: [&str; 8] = [
        "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27",
    ];
    match std::env::var("GOMEMTRACE_GO_VERSIONS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|v| v.trim().to_string()).collect()
        }
        _ => ALL.iter().map(|v| v.to_string()).collect(),
    }
}

/// The newest supported release: the one single-version tests use.
/// Runs `check` for every supported Go release (see [`go_versions`]), prints each summary,
/// and fails with every failure at once, so one run tells which releases are broken.
pub fn for_every_version(check: impl Fn(&str) -> anyhow::Result<String>) {
    let mut failures = Vec::new();
    for version in go_versions() {
        match check(&version) {
            Ok(summary) => println!("{summary}"),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

pub fn latest_go() -> String {
    go_versions()
        .last()
        .cloned()
        .unwrap_or_else(|| "1.27".into())
}

/// How a fixture is linked.
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
    /// Stripped, then the section headers removed too (as `sstrip` does): only the
    /// program headers locate anything. Not in [`Variant::ALL`].
    Headerless,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Normal,
        Variant::Stripped,
        Variant::Pie,
        Variant::StrippedPie,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Normal => "normal",
            Variant::Stripped => "stripped",
            Variant::Pie => "pie",
            Variant::StrippedPie => "stripped-pie",
            Variant::Headerless => "headerless",
        }
    }

    fn build_flags(self) -> &'static [&'static str] {
        match self {
            Variant::Normal => &[],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
            Variant::StrippedPie => &["-buildmode=pie", "-ldflags=-s -w"],
            Variant::Headerless => &["-ldflags=-s -w"],
        }
    }

    pub fn is_stripped(self) -> bool {
        matches!(
            self,
            Variant::Stripped | Variant::StrippedPie | Variant::Headerless
        )
    }

    pub fn is_pie(self) -> bool {
        matches!(self, Variant::Pie | Variant::StrippedPie)
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `$GOMEMTRACE_CACHE`, default `~/.cache/gomemtrace`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GOMEMTRACE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/gomemtrace")
}

/// The `go` command of release `version` (`"1.25"`).
pub fn go_path(version: &str) -> Result<PathBuf> {
    let go = cache_dir().join("go").join(version).join("bin/go");
    ensure!(
        go.is_file(),
        "Go {version} not found at {}: run `bash scripts/setup.sh`",
        go.display()
    );
    Ok(go)
}

/// A `go` command with a hermetic environment: local toolchain, no module proxy, caches
/// under the project cache directory.
pub fn go_command(version: &str) -> Result<Command> {
    let cache = cache_dir();
    let mut cmd = Command::new(go_path(version)?);
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
        .env_remove("GOARCH")
        .env_remove("GOEXPERIMENT");
    Ok(cmd)
}

/// FNV-1a: stable across Rust releases, for cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Directory of fixture `name`'s source.
pub fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// One fixture build, shared by every test thread that asks for it.
type BuildSlot = Arc<OnceLock<Result<PathBuf, String>>>;
/// Fixture builds by (name, Go version, variant).
type Builds = Mutex<HashMap<(String, String, Variant), BuildSlot>>;

/// Builds (once per process; other processes wait on a file lock) fixture `name` with Go
/// `version` as `variant`, and returns the binary's path.
pub fn fixture(name: &str, version: &str, variant: Variant) -> Result<PathBuf> {
    static BUILT: OnceLock<Builds> = OnceLock::new();
    let slot = {
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        built
            .entry((name.to_string(), version.to_string(), variant))
            .or_default()
            .clone()
    };
    slot.get_or_init(|| build_fixture(name, version, variant).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A fixture's Go assembly files (`*.s`, e.g. reading registers), by name: built with its
/// `main.go`.
fn assembly_files(name: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(fixture_source(name))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "s") {
            let file = path.file_name().context("file name")?;
            files.push((file.to_string_lossy().into_owned(), fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

fn build_fixture(name: &str, version: &str, variant: Variant) -> Result<PathBuf> {
    let main_go = fixture_source(name).join("main.go");
    let source = fs::read(&main_go).with_context(|| format!("read {}", main_go.display()))?;
    let assembly = assembly_files(name)?;
    let mut hashed = source.clone();
    for (file, text) in &assembly {
        hashed.extend_from_slice(file.as_bytes());
        hashed.extend_from_slice(text);
    }
    let key = format!(
        "{name}-{version}-{}-{:016x}",
        variant.name(),
        fnv1a(&hashed)
    );
    let out_dir = cache_dir().join("fixtures").join(&key);
    let binary = out_dir.join(name);
    if binary.is_file() {
        return Ok(binary);
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let lock = File::create(out_dir.join(".lock")).context("create build lock")?;
    lock.lock().context("lock fixture build dir")?;
    if binary.is_file() {
        return Ok(binary); // another process built it while we waited
    }
    let work = out_dir.join("src");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    fs::write(work.join("go.mod"), format!("module {name}\n\ngo 1.19\n"))?;
    fs::write(work.join("main.go"), &source)?;
    for (file, text) in &assembly {
        fs::write(work.join(file), text)?;
    }
    let tmp = out_dir.join(format!("{name}.tmp"));
    let output = go_command(version)?
        .current_dir(&work)
        .arg("build")
        .args(variant.build_flags())
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .output()
        .with_context(|| format!("run go {version} build"))?;
    ensure!(
        output.status.success(),
        "go {version} build {:?} of fixture {name} failed:\n{}",
        variant.build_flags(),
        String::from_utf8_lossy(&output.stderr)
    );
    if variant == Variant::Headerless {
        // e_shoff, e_shentsize, e_shnum, e_shstrndx of the ELF64 header set to 0; the
        // executable itself is written by a child process (see `copy_executable`).
        let mut elf = fs::read(&tmp)?;
        ensure!(
            elf.len() > 0x40 && elf.starts_with(b"\x7fELF"),
            "{tmp:?}: not ELF"
        );
        elf[0x28..0x30].fill(0);
        elf[0x3a..0x40].fill(0);
        let patched = out_dir.join(format!("{name}.patched"));
        fs::write(&patched, &elf)?;
        copy_executable(&patched, &binary)?;
        let _ = fs::remove_file(&patched);
        let _ = fs::remove_file(&tmp);
        return Ok(binary);
    }
    fs::rename(&tmp, &binary)?;
    Ok(binary)
}

/// Copies an executable to `to` (mode 755) in a child process (`install`), so that no
/// writable descriptor of it is ever open in this multi-threaded test process: a sibling
/// test thread that forks while `fs::copy` holds one keeps it until its exec, and executing
/// the copy then fails with ETXTBSY ("Text file busy"), as it did once in CI.
pub fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("install")
        .args(["-m", "755"])
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .status()
        .context("run install")?;
    ensure!(
        status.success(),
        "install {} {} failed ({status})",
        from.display(),
        to.display()
    );
    Ok(())
}

/// Writes `bytes` as an executable at `path`; see [`copy_executable`] for why the file that
/// will be executed is never written from this process.
pub fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    let staging = path.with_extension("staging");
    fs::write(&staging, bytes)?;
    let copied = copy_executable(&staging, path);
    let _ = fs::remove_file(&staging);
    copied
}

/// One row of `go tool pprof -top -unit=B`: flat and cumulative values and the function
/// (without pprof's ` (inline)` mark).
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub flat: f64,
    pub cum: f64,
    pub function: String,
}

/// The rows of a `go tool pprof -top -unit=B` output: "      flat  flat%   sum%        cum
/// cum%" then "148325019B 49.01% 49.01% 148325019B 49.01% bufio.NewWriterSize (inline)".
pub fn pprof_top_rows(out: &str) -> Result<Vec<TopRow>> {
    let mut rows = Vec::new();
    for line in out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            continue;
        }
        let value = |s: &str| -> Result<f64> {
            s.trim_end_matches('B')
                .parse::<f64>()
                .with_context(|| format!("value {s:?} in {line:?}"))
        };
        let function = fields[5..].join(" ");
        rows.push(TopRow {
            flat: value(fields[0])?,
            cum: value(fields[3])?,
            function: function.trim_end_matches(" (inline)").to_string(),
        });
    }
    Ok(rows)
}

/// Runs `go <args>` with Go `version`; returns stdout, failing with stderr on error.
pub fn go_tool(version: &str, args: &[&str]) -> Result<String> {
    let output = go_command(version)?
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run go {version} {args:?}"))?;
    ensure!(
        output.status.success(),
        "go {version} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// True when the test may go on; otherwise prints `SKIP: needs root`.
pub fn require_root() -> bool {
    if is_root() {
        true
    } else {
        println!("SKIP: needs root");
        false
    }
}

/// The gomemtrace binary under test: `$GOMEMTRACE_BIN`, else `<target>/debug/gomemtrace`
/// (`$CARGO_TARGET_DIR` respected), brought up to date once per test process with
/// `cargo build -p gomemtrace`.
pub fn gomemtrace() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build_gomemtrace().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_or_build_gomemtrace() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("GOMEMTRACE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir), // an absolute dir replaces root
        None => root.join("target"),
    };
    let bin = target.join("debug/gomemtrace");
    // Always: a no-op when it is fresh (`cargo xtask test` builds it first), and a stale
    // binary would test old code. Cargo does not hold the build lock while tests run.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-q", "-p", "gomemtrace"])
        .status()
        .context("run cargo build -p gomemtrace")?;
    ensure!(
        status.success(),
        "cargo build -p gomemtrace failed ({status})"
    );
    ensure!(
        bin.is_file(),
        "cargo build -p gomemtrace did not produce {}",
        bin.display()
    );
    Ok(bin)
}

/// A `gomemtrace` command.
pub fn gomemtrace_command() -> Result<Command> {
    Ok(Command::new(gomemtrace()?))
}

/// Collected output lines of one stream of a [`Proc`].
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>, // (lines, stream closed)
    changed: Condvar,
}

fn collect_lines(stream: impl Read + Send + 'static, into: Arc<Lines>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let done = !matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0);
            let mut guard = into.lines.lock().unwrap_or_else(|e| e.into_inner());
            if done {
                guard.1 = true;
            } else {
                let line = String::from_utf8_lossy(&buf);
                guard
                    .0
                    .push(line.trim_end_matches(['\n', '\r']).to_string());
            }
            drop(guard);
            into.changed.notify_all();
            if done {
                break;
            }
        }
    });
}

/// A child process whose stdout and stderr are collected line by line. Killed on drop.
pub struct Proc {
    what: String,
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    status: Option<ExitStatus>,
}

/// How a [`Proc`] ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code, or `128 + signal` when a signal killed it.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr collected.
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {what}"))?;
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        collect_lines(child.stdout.take().expect("piped"), stdout.clone());
        collect_lines(child.stderr.take().expect("piped"), stderr.clone());
        Ok(Proc {
            what,
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line of stdout (or of stderr, `on_stderr`) satisfies `pred`; returns it.
    fn wait_line(
        &self,
        on_stderr: bool,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let lines = if on_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        let deadline = Instant::now() + timeout;
        let mut guard = lines.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = guard.0.iter().find(|l| pred(l)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                let why = if guard.1 {
                    "stream closed"
                } else {
                    "timed out"
                };
                drop(guard);
                bail!(
                    "{why} waiting for a line on {} of {}\nstdout:\n{}\nstderr:\n{}",
                    if on_stderr { "stderr" } else { "stdout" },
                    self.what,
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            guard = lines
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_line(false, |l| l.contains(needle), timeout)
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_line(true, |l| l.contains(needle), timeout)
    }

    pub fn stdout_text(&self) -> String {
        self.stdout
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .join("\n")
    }

    /// Whether the process has exited (it is reaped then; [`Proc::wait`] still reports it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .join("\n")
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Waits for the process to exit and both streams to close; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {timeout:?}; killed\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        // A grandchild may still hold the pipes; give the readers a moment, then go on.
        for lines in [&self.stdout, &self.stderr] {
            let guard = lines.lines.lock().unwrap_or_else(|e| e.into_inner());
            let _ = lines
                .changed
                .wait_timeout_while(guard, Duration::from_secs(5), |g| !g.1);
        }
        Ok(Finished {
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid fits i32")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Whether a process `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Runs `cmd` to completion with a timeout.
pub fn run(cmd: Command, timeout: Duration) -> Result<Finished> {
    Proc::spawn(cmd)?.wait(timeout)
}

/// Checks the error-reporting contract: exactly one non-empty stderr line, starting
/// `gomemtrace: `.
pub fn assert_one_error_line(what: &str, out: &Finished) {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("gomemtrace: "),
        "{what}: expected one stderr line starting 'gomemtrace: ', got:\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// HTTP, for the agent tests

/// The executable `name` in a directory of PATH, if any (the third-party programs the
/// setup installs).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A GET over a fresh loopback connection (the agent tests' client): (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    http_request(addr, "GET", path, b"", timeout)
}

/// A POST of `body` (JSON) over a fresh loopback connection: (status, body).
pub fn http_post(addr: &str, path: &str, body: &[u8], timeout: Duration) -> Result<(u16, Vec<u8>)> {
    http_request(addr, "POST", path, body, timeout)
}

fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    // HTTP/1.0: the server closes the connection after the body, no chunking.
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n")?;
    if !body.is_empty() {
        write!(
            stream,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )?;
    }
    write!(stream, "\r\n")?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read {method} {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line of {head}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

pub fn get_text(addr: &str, path: &str) -> Result<String> {
    let (status, body) = http_get(addr, path, Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    ensure!(status == 200, "GET {path}: {status} {text}");
    Ok(text)
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sample values of `name` in Prometheus text whose labels include every `labels` pair.
pub fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())
            .flatten()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// gomemtrace's json report (schema gomemtrace.alloc/v2)

/// A json report with each sample's stack written out (the locations its indexes name),
/// for tests that read a report's fields with their own structs.
pub fn read_report_inline(path: &Path) -> Result<serde_json::Value> {
    let json = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&json)?;
    let locations = v["locations"].take();
    let locations = locations.as_array().context("no location table")?;
    for sample in v["samples"].as_array_mut().context("no samples")? {
        let stack = sample["stack"]
            .as_array()
            .context("a sample without its stack")?
            .iter()
            .map(|i| {
                i.as_u64()
                    .and_then(|i| locations.get(i as usize))
                    .cloned()
                    .with_context(|| format!("location {i} of {}", locations.len()))
            })
            .collect::<Result<Vec<_>>>()?;
        sample["stack"] = serde_json::Value::Array(stack);
    }
    Ok(v)
}

/// Samples' stacks resolved from the report's location table.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawReport")]
pub struct Report {
    pub schema: String,
    pub target: Target,
    pub mode: String,
    pub events: u64,
    pub event_bytes: u64,
    pub samples: Vec<Sample>,
    pub goroutines: Vec<Goroutine>,
    pub drops: Drops,
}

/// The json as written: stacks are indexes into `locations`.
#[derive(Deserialize)]
struct RawReport {
    schema: String,
    target: Target,
    mode: String,
    events: u64,
    event_bytes: u64,
    #[serde(default)]
    locations: Vec<Location>,
    samples: Vec<RawSample>,
    goroutines: Vec<Goroutine>,
    drops: Drops,
}

#[derive(Deserialize)]
struct RawSample {
    stack: Vec<usize>,
    goid: u64,
    type_name: Option<String>,
    bytes: u64,
    objects: u64,
}

impl TryFrom<RawReport> for Report {
    type Error = String;

    fn try_from(raw: RawReport) -> Result<Self, String> {
        let samples = raw
            .samples
            .into_iter()
            .map(|s| {
                let stack = s
                    .stack
                    .iter()
                    .map(|&i| {
                        raw.locations.get(i).cloned().ok_or_else(|| {
                            format!("location {i} of {} in a stack", raw.locations.len())
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Sample {
                    stack,
                    goid: s.goid,
                    type_name: s.type_name,
                    bytes: s.bytes,
                    objects: s.objects,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Report {
            schema: raw.schema,
            target: raw.target,
            mode: raw.mode,
            events: raw.events,
            event_bytes: raw.event_bytes,
            samples,
            goroutines: raw.goroutines,
            drops: raw.drops,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub stripped: bool,
    pub pie: bool,
    pub probes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    /// Leaf first.
    pub stack: Vec<Location>,
    pub goid: u64,
    pub type_name: Option<String>,
    pub bytes: u64,
    pub objects: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Location {
    pub address: u64,
    /// Innermost (most inlined) first.
    pub frames: Vec<Frame>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: Option<String>,
    pub line: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Goroutine {
    pub goid: u64,
    pub start_function: Option<String>,
    pub bytes: u64,
    pub objects: u64,
}

/// Drop counters by reason (`alloc_map_full`, `stack_unreadable`, `goid_unreadable`,
/// `goroutine_map_full`, ...): a map, so that a counter added later is checked too.
pub type Drops = BTreeMap<String, u64>;

/// Bytes and objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub objects: u64,
}

impl Totals {
    fn add(&mut self, bytes: u64, objects: u64) {
        self.bytes += bytes;
        self.objects += objects;
    }
}

/// Whether `function` belongs to the Go runtime (package runtime or internal/runtime/...),
/// the same rule the fixture's oracle uses.
pub fn is_runtime(function: &str) -> bool {
    function.starts_with("runtime.") || function.starts_with("internal/runtime/")
}

/// The runtime functions through which a program's own allocation enters the allocator.
fn is_allocator_entry(function: &str) -> bool {
    function.starts_with("runtime.mallocgc")
        || matches!(
            function,
            "runtime.newobject"
                | "runtime.newarray"
                | "runtime.makeslice"
                | "runtime.growslice"
                | "runtime.rawbyteslice"
                | "runtime.stringtoslicebyte"
        )
}

impl Sample {
    /// Whether the runtime allocated this on its own behalf: between the allocator and the
    /// site the stack passes through other runtime functions (`gcStart`, `acquireSudog`...).
    pub fn via_runtime(&self) -> bool {
        self.stack
            .iter()
            .flat_map(|loc| loc.frames.iter())
            .map(|f| f.function.as_str())
            .take_while(|f| is_runtime(f))
            .any(|f| !is_allocator_entry(f))
    }

    /// Whether the allocation ran on the system stack (`runtime.systemstack` is on the
    /// stack: `newproc1`'s `runtime.g`, `newm`'s `runtime.m`). gomemtrace's frame-pointer
    /// walk continues into the goroutine that switched stacks; the runtime's own profile
    /// unwinder stops at the switch, so it never attributes these to a user site.
    pub fn via_system_stack(&self) -> bool {
        self.stack
            .iter()
            .flat_map(|loc| loc.frames.iter())
            .any(|f| f.function == "runtime.systemstack")
    }

    /// The allocation site: the first frame, leaf first and innermost-inlined first, that is
    /// not in the runtime; `"?"` when every frame is.
    pub fn site(&self) -> &str {
        self.stack
            .iter()
            .flat_map(|loc| loc.frames.iter())
            .map(|f| f.function.as_str())
            .find(|f| !f.is_empty() && !is_runtime(f))
            .unwrap_or("?")
    }
}

impl Report {
    pub fn parse(json: &str) -> Result<Report> {
        let report: Report = serde_json::from_str(json).context("parse gomemtrace json report")?;
        ensure!(
            report.schema == "gomemtrace.alloc/v2",
            "unexpected schema {:?}",
            report.schema
        );
        Ok(report)
    }

    pub fn read(path: &Path) -> Result<Report> {
        let json = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Report::parse(&json)
    }

    /// Totals per allocation site ([`Sample::site`]).
    pub fn by_site(&self) -> BTreeMap<String, Totals> {
        let mut out = BTreeMap::<String, Totals>::new();
        for s in &self.samples {
            out.entry(s.site().to_string())
                .or_default()
                .add(s.bytes, s.objects);
        }
        out
    }

    /// The `n` sites with the most bytes, most first.
    pub fn top_sites(&self, n: usize) -> Vec<(String, u64)> {
        let mut top: Vec<(String, u64)> = self
            .by_site()
            .into_iter()
            .map(|(site, t)| (site, t.bytes))
            .collect();
        top.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        top.truncate(n);
        top
    }

    /// Totals per type name (`None`: nil type).
    pub fn by_type(&self) -> BTreeMap<Option<String>, Totals> {
        let mut out = BTreeMap::<Option<String>, Totals>::new();
        for s in &self.samples {
            out.entry(s.type_name.clone())
                .or_default()
                .add(s.bytes, s.objects);
        }
        out
    }

    /// Totals per (site, type).
    pub fn by_site_and_type(&self) -> BTreeMap<(String, Option<String>), Totals> {
        let mut out = BTreeMap::<(String, Option<String>), Totals>::new();
        for s in &self.samples {
            out.entry((s.site().to_string(), s.type_name.clone()))
                .or_default()
                .add(s.bytes, s.objects);
        }
        out
    }

    /// Totals per goroutine id, summed from the samples.
    pub fn by_goid(&self) -> BTreeMap<u64, Totals> {
        let mut out = BTreeMap::<u64, Totals>::new();
        for s in &self.samples {
            out.entry(s.goid).or_default().add(s.bytes, s.objects);
        }
        out
    }

    /// A short table of the `main.` sites for failure messages.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "target {} {} stripped={} pie={} probes={:?}; events {} ({} B); drops {:?}\n",
            self.target.exe,
            self.target.go_version,
            self.target.stripped,
            self.target.pie,
            self.target.probes,
            self.events,
            self.event_bytes,
            self.drops
        );
        let mut others = Totals::default();
        for ((site, ty), t) in self.by_site_and_type() {
            if !site.starts_with("main.") {
                others.add(t.bytes, t.objects);
                continue;
            }
            text += &format!(
                "  {site:<40} {:<24} {:>10} B {:>7} objects\n",
                ty.as_deref().unwrap_or("<nil>"),
                t.bytes,
                t.objects
            );
        }
        text += &format!(
            "  (other sites: {} B, {} objects)\n",
            others.bytes, others.objects
        );
        text
    }
}

// ---------------------------------------------------------------------------------------
// The allocs fixture's oracle

#[derive(Clone, Debug, Deserialize)]
pub struct Oracle {
    pub pid: u32,
    pub go_version: String,
    /// The runtime's MemProfileRate=1 profile per site.
    pub profile: BTreeMap<String, OracleTotals>,
    /// The fixture's own sites: arithmetic and goroutine ids.
    pub sites: BTreeMap<String, OracleSite>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct OracleTotals {
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct OracleSite {
    pub goid: u64,
    pub expected_bytes: u64,
    pub expected_objects: u64,
}

impl Oracle {
    pub fn read(path: &Path) -> Result<Oracle> {
        let json =
            fs::read_to_string(path).with_context(|| format!("read oracle {}", path.display()))?;
        serde_json::from_str(&json).with_context(|| format!("parse oracle {}", path.display()))
    }
}

/// The allocs fixture's sites with their expected type (`None`: nil type) — see
/// tests/fixtures/allocs/main.go.
pub const ALLOCS_SITES: [(&str, Option<&str>); 7] = [
    ("main.allocSmall", Some("main.Small")),
    ("main.allocNodes", Some("main.Node")),
    ("main.allocNoPtr", Some("main.NoPtr")),
    ("main.allocDeep", Some("main.Deep")),
    // makeslice passes the element type.
    ("main.allocPages", Some("uint8")),
    ("main.allocLarge", Some("uint8")),
    // []byte(string) goes through rawbyteslice, which passes a nil type.
    ("main.allocBytes", None),
];

/// The `goid SITE N` lines the allocs fixture prints.
pub fn parse_goids(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "goid").then_some(())?;
            let site = f.next()?.to_string();
            Some((site, f.next()?.parse().ok()?))
        })
        .collect()
}

/// `|actual - expected| <= tolerance × expected`.
pub fn within(actual: u64, expected: u64, tolerance: f64) -> bool {
    (actual as f64 - expected as f64).abs() <= tolerance * expected as f64
}

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("gomemtrace-tests-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("GOMEMTRACE_KEEP_TMP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tracing the allocs fixture

/// How gomemtrace finds the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `gomemtrace -- FIXTURE ...`
    Launch,
    /// The fixture runs with `-wait`; `gomemtrace -p PID` attaches, then SIGUSR1 starts the work.
    Pid,
}

/// One traced run of the allocs fixture.
pub struct Traced {
    pub report: Report,
    pub oracle: Oracle,
    /// gomemtrace's own exit, stdout and stderr.
    pub gomemtrace: Finished,
}

/// How long one traced fixture run may take before it counts as hung.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Traces one run of the allocs fixture (Go `version`, `variant`) with
/// `gomemtrace --exact --format json`, the fixture writing its oracle.
pub fn trace_allocs(version: &str, variant: Variant, attach: Attach) -> Result<Traced> {
    trace_allocs_with(version, variant, attach, &[])
}

/// [`trace_allocs`] with more fixture flags (`["-gc", "1"]`).
pub fn trace_allocs_with(
    version: &str,
    variant: Variant,
    attach: Attach,
    fixture_args: &[&str],
) -> Result<Traced> {
    let bin = fixture("allocs", version, variant)?;
    let tmp = TempDir::new(&format!("trace-{version}-{}", variant.name()))?;
    let report_path = tmp.join("report.json");
    let oracle_path = tmp.join("oracle.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--format", "json", "-o"])
        .arg(&report_path);
    let finished = match attach {
        Attach::Launch => {
            cmd.arg("--")
                .arg(&bin)
                .arg("-oracle")
                .arg(&oracle_path)
                .args(fixture_args);
            let out = run(cmd, RUN_TIMEOUT)?;
            ensure!(
                out.code() == 0,
                "gomemtrace exited {}:\n{}",
                out.code(),
                out.stderr
            );
            out
        }
        Attach::Pid => {
            let mut target_cmd = Command::new(&bin);
            target_cmd
                .arg("-wait")
                .arg("-oracle")
                .arg(&oracle_path)
                .args(fixture_args);
            let mut target = Proc::spawn(target_cmd)?;
            target.wait_stdout("ready", Duration::from_secs(30))?;
            cmd.arg("-p").arg(target.pid().to_string());
            let mut tracer = Proc::spawn(cmd)?;
            tracer.wait_stderr("attached", Duration::from_secs(60))?;
            target.signal(libc::SIGUSR1)?;
            let t = target.wait(RUN_TIMEOUT)?;
            ensure!(t.code() == 0, "fixture exited {}:\n{}", t.code(), t.stderr);
            let out = tracer.wait(Duration::from_secs(60))?;
            ensure!(
                out.code() == 0,
                "gomemtrace exited {}:\n{}",
                out.code(),
                out.stderr
            );
            out
        }
    };
    let report = Report::read(&report_path)
        .with_context(|| format!("gomemtrace stderr:\n{}", finished.stderr))?;
    let oracle = Oracle::read(&oracle_path)?;
    Ok(Traced {
        report,
        oracle,
        gomemtrace: finished,
    })
}

/// 1-based line of the first line of fixture `name`'s main.go containing `marker`.
pub fn fixture_line(name: &str, marker: &str) -> Result<u32> {
    let path = fixture_source(name).join("main.go");
    let source = fs::read_to_string(&path)?;
    let index = source
        .lines()
        .position(|l| l.contains(marker))
        .with_context(|| format!("no line of {} contains {marker:?}", path.display()))?;
    Ok(u32::try_from(index + 1)?)
}

/// Per-site tolerance of the end-to-end comparisons.
pub const TOLERANCE: f64 = 0.02;

/// Checks a traced run of the allocs fixture against the fixture's arithmetic, the runtime's
/// own profile of the same run, its goroutine ids and its source lines. Returns every
/// mismatch (empty: all good).
///
/// With `gc_running` (the fixture ran with `-gc 1`), the runtime allocates on the workers'
/// goroutines too, under the sites' stacks (a `runtime.sudog` to park a GC assist, the
/// closure, channel and `runtime.g` of a new mark worker when an allocation starts a
/// cycle): the arithmetic is then compared with the site's direct allocations
/// ([`Sample::via_runtime`] false), which must all have the site's type.
pub fn check_allocs(t: &Traced, version: &str, variant: Variant, gc_running: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let r = &t.report;
    if r.mode != "exact" {
        bad.push(format!("mode {:?}, want \"exact\"", r.mode));
    }
    if !r.target.go_version.starts_with(&format!("go{version}.")) {
        bad.push(format!(
            "target.go_version {:?}, want go{version}.x",
            r.target.go_version
        ));
    }
    if r.target.pid != t.oracle.pid {
        bad.push(format!(
            "target.pid {}, the fixture's pid was {}",
            r.target.pid, t.oracle.pid
        ));
    }
    if r.target.stripped != variant.is_stripped() {
        bad.push(format!(
            "target.stripped {} for a {} build",
            r.target.stripped,
            variant.name()
        ));
    }
    if r.target.pie != variant.is_pie() {
        bad.push(format!(
            "target.pie {} for a {} build",
            r.target.pie,
            variant.name()
        ));
    }
    for reason in [
        "alloc_map_full",
        "stack_unreadable",
        "stack_map_full",
        "goid_unreadable",
        "goroutine_map_full",
    ] {
        if !r.drops.contains_key(reason) {
            bad.push(format!("drops lacks {reason}"));
        }
    }
    if r.drops.values().any(|&n| n != 0) {
        bad.push(format!("drops {:?}, want all zero", r.drops));
    }
    let (bytes, objects) = r
        .samples
        .iter()
        .fold((0, 0), |(b, o), s| (b + s.bytes, o + s.objects));
    if (bytes, objects) != (r.event_bytes, r.events) {
        bad.push(format!(
            "samples sum to {bytes} B / {objects} objects but events are {} B / {} (no drops)",
            r.event_bytes, r.events
        ));
    }

    let by_type = r.by_type();
    let by_goid = r.by_goid();
    for (site, ty) in ALLOCS_SITES {
        let Some(expected) = t.oracle.sites.get(site) else {
            bad.push(format!("oracle lacks {site}"));
            continue;
        };
        let goid = expected.goid;
        let arith = Totals {
            bytes: expected.expected_bytes,
            objects: expected.expected_objects,
        };
        let runtime = t
            .oracle
            .profile
            .get(site)
            .map(|p| Totals {
                bytes: p.alloc_bytes,
                objects: p.alloc_objects,
            })
            .unwrap_or_default();
        // What the runtime's own unwinder can attribute to the site.
        let mut runtime_view = Totals::default();
        // The site's direct allocations (without GC: all of them).
        let mut own = Totals::default();
        let mut own_of_goid = Totals::default();
        let mut foreign = BTreeMap::<Option<String>, Totals>::new();
        for s in r.samples.iter().filter(|s| s.site() == site) {
            if !s.via_system_stack() {
                runtime_view.add(s.bytes, s.objects);
            }
            if gc_running && s.via_runtime() {
                continue;
            }
            own.add(s.bytes, s.objects);
            if s.goid == goid {
                own_of_goid.add(s.bytes, s.objects);
            }
            if s.type_name.as_deref() != ty {
                foreign
                    .entry(s.type_name.clone())
                    .or_default()
                    .add(s.bytes, s.objects);
            }
        }
        // Against the arithmetic, and against the runtime's profile (which sees the same
        // runtime-internal allocations under the site as gomemtrace does, except those made
        // on the system stack, which its unwinder cannot follow back to the site).
        for (what, mine, want) in [
            ("arithmetic", own, arith),
            ("runtime MemProfile", runtime_view, runtime),
        ] {
            if !within(mine.bytes, want.bytes, TOLERANCE)
                || !within(mine.objects, want.objects, TOLERANCE)
            {
                bad.push(format!(
                    "{site}: gomemtrace {} B / {} objects, {what} {} B / {} objects",
                    mine.bytes, mine.objects, want.bytes, want.objects
                ));
            }
        }
        // Every (direct) allocation of the site has the site's type.
        if !foreign.is_empty() {
            bad.push(format!("{site}: want type {ty:?}, also has {foreign:?}"));
        }
        // The fixture's own types are allocated at their one site only.
        if let Some(ty) = ty.filter(|t| t.starts_with("main.")) {
            let total = by_type
                .get(&Some(ty.to_string()))
                .copied()
                .unwrap_or_default();
            if total != arith {
                bad.push(format!(
                    "type {ty}: {} B / {} objects in all, want {} B / {}",
                    total.bytes, total.objects, arith.bytes, arith.objects
                ));
            }
        }
        // The goroutine the fixture says ran the site did all of the site's allocations
        // and, without GC, nothing else.
        if !within(own_of_goid.bytes, arith.bytes, TOLERANCE)
            || !within(own_of_goid.objects, arith.objects, TOLERANCE)
        {
            bad.push(format!(
                "{site}: goroutine {goid} did {} B / {} objects of it, want {} B / {}",
                own_of_goid.bytes, own_of_goid.objects, arith.bytes, arith.objects
            ));
        }
        let from_samples = by_goid.get(&goid).copied().unwrap_or_default();
        if !gc_running && from_samples != own_of_goid {
            bad.push(format!(
                "{site}: goroutine {goid} allocated {} B / {} objects in all, the site {} B / {}",
                from_samples.bytes, from_samples.objects, own_of_goid.bytes, own_of_goid.objects
            ));
        }
        match r.goroutines.iter().find(|g| g.goid == goid) {
            None => bad.push(format!("{site}: goroutine {goid} missing from goroutines")),
            Some(g) => {
                // The summary is the sum of the goroutine's samples.
                if (g.bytes, g.objects) != (from_samples.bytes, from_samples.objects) {
                    bad.push(format!(
                        "{site}: goroutines[{goid}] {} B / {} objects, its samples {} B / {}",
                        g.bytes, g.objects, from_samples.bytes, from_samples.objects
                    ));
                }
                // `go worker(...)` starts a compiler wrapper (main.main.gowrap1 / main.main.func1).
                let start = g.start_function.as_deref().unwrap_or("<none>");
                if !(start == "main.worker" || start.starts_with("main.main.")) {
                    bad.push(format!(
                        "{site}: goroutine {goid} start_function {start:?}, want main.worker or its main.main wrapper"
                    ));
                }
            }
        }
    }
    // Source lines: the site's frame of every sample names main.go at the allocating line.
    for (site, marker) in ALLOCS_LINES {
        let Ok(line) = fixture_line("allocs", marker) else {
            bad.push(format!("fixture has no line {marker:?}"));
            continue;
        };
        let mut wrong = BTreeMap::<String, u64>::new();
        for s in r
            .samples
            .iter()
            .filter(|s| s.site() == site && !(gc_running && s.via_runtime()))
        {
            let frame = s
                .stack
                .iter()
                .flat_map(|l| l.frames.iter())
                .find(|f| f.function == site);
            let at = frame
                .map(|f| format!("{}:{}", f.file.as_deref().unwrap_or("?"), f.line))
                .unwrap_or_default();
            if !frame.is_some_and(|f| {
                f.line == line && f.file.as_deref().is_some_and(|p| p.ends_with("main.go"))
            }) {
                *wrong.entry(at).or_default() += s.objects;
            }
        }
        if !wrong.is_empty() {
            bad.push(format!(
                "{site}: want frames at main.go:{line}, got objects at {wrong:?}"
            ));
        }
    }
    bad
}

/// The allocating source line of each site of the allocs fixture.
pub const ALLOCS_LINES: [(&str, &str); 7] = [
    ("main.allocSmall", "s := new(Small)"),
    ("main.allocNodes", "n := new(Node)"),
    ("main.allocNoPtr", "p := new(NoPtr)"),
    ("main.allocDeep", "d := new(Deep)"),
    ("main.allocPages", "make([]byte, PageSize)"),
    ("main.allocLarge", "make([]byte, LargeSize)"),
    ("main.allocBytes", "[]byte(source)"),
];
