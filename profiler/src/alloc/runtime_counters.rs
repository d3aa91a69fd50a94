//! The runtime's own allocation counters of a running Go process, read from outside with
//! `process_vm_readv` (no probe, no stop): what `runtime.ReadMemStats` would report as
//! `TotalAlloc`, `Mallocs`, `Frees`, `HeapAlloc` and `HeapObjects` at that moment — the
//! flushed totals in `runtime.memstats.heapStats` plus what each P's mcache has not
//! flushed yet (`gomemtrace_gobin::allocstats` has the layout and where it comes from).
//!
//! The process runs while it is read, so a reading is not one instant: the flushed totals
//! are read before the mcaches, so that a span flushed between the two is missed (counted
//! at the next reading) rather than counted twice; a cached span that changed while its
//! counts were read is skipped for the same reason.

use std::io;

use gomemtrace_gobin::allocstats::{AllocStatsLayout, NUM_SIZE_CLASSES, NUM_SPAN_CLASSES};

use crate::remote_memory;

/// More Ps than this is not a Go process's `allp` (GOMAXPROCS is at most the CPUs, and
/// the runtime's limit is 2^20 only on paper).
const MAX_PS: u64 = 1 << 14;
/// Re-reads of `heapStats` while a runtime/metrics read is merging its deltas.
const TRIES: u32 = 4;

/// Why a process's counters could not be read. Every one is counted, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {what} at {addr:#x}: {source}")]
    Memory {
        what: &'static str,
        addr: u64,
        #[source]
        source: io::Error,
    },
    #[error("runtime.allp has {0} Ps, more than {MAX_PS}: not the layout we expect")]
    TooManyPs(u64),
    #[error("heapStats.gen is {0}, not 0, 1 or 2: not the layout we expect")]
    BadGen(u32),
    #[error("heapStats was being merged by a runtime/metrics read at each of {TRIES} tries")]
    Merging,
}

impl ReadError {
    /// A bounded label for the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Memory { .. } => "unreadable",
            ReadError::TooManyPs(_) | ReadError::BadGen(_) => "unexpected_layout",
            ReadError::Merging => "merging",
        }
    }
}

/// Cumulative since the process started, as `runtime.MemStats` counts them (tiny
/// allocations count as objects allocated and freed, as in `Mallocs` and `Frees`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounters {
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    pub free_bytes: u64,
    pub free_objects: u64,
}

impl AllocCounters {
    /// `MemStats.HeapAlloc`: bytes of allocated heap objects not yet freed.
    pub fn heap_bytes(&self) -> u64 {
        self.alloc_bytes.saturating_sub(self.free_bytes)
    }

    /// `MemStats.HeapObjects`.
    pub fn heap_objects(&self) -> u64 {
        self.alloc_objects.saturating_sub(self.free_objects)
    }
}

/// Reads `pid`'s counters; `bias` is its executable's load bias (PIE).
pub fn read(pid: u32, layout: &AllocStatsLayout, bias: u64) -> Result<AllocCounters, ReadError> {
    let mut counters = flushed(pid, layout, bias)?;
    let (objects, tiny) = unflushed(pid, layout, bias)?;
    for (class, n) in objects.iter().enumerate() {
        counters.alloc_objects += n;
        counters.alloc_bytes += n * u64::from(layout.class_to_size[class]);
    }
    counters.alloc_objects += tiny;
    counters.free_objects += tiny;
    Ok(counters)
}

fn memory(what: &'static str, addr: u64) -> impl FnOnce(io::Error) -> ReadError {
    move |source| ReadError::Memory { what, addr, source }
}

/// The totals in `memstats.heapStats`: the sum of its three deltas, as the runtime's
/// `unsafeRead` does.
fn flushed(pid: u32, layout: &AllocStatsLayout, bias: u64) -> Result<AllocCounters, ReadError> {
    let o = &layout.offsets;
    let addr = layout
        .memstats
        .wrapping_add(bias)
        .wrapping_add(u64::from(o.mstats_heap_stats));
    let len = o.heap_stats_gen as usize + 4;
    for _ in 0..TRIES {
        let bytes = remote_memory::read_bytes(pid, addr, len).map_err(memory("heapStats", addr))?;
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let gen_at = o.heap_stats_gen as usize;
        let generation = bytes
            .get(gen_at..gen_at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(u32::MAX, u32::from_le_bytes);
        if generation > 2 {
            return Err(ReadError::BadGen(generation));
        }
        let delta = |i: usize| -> Delta {
            let base = i * o.delta_size as usize;
            let at = |field: u32| base + field as usize;
            let classes = |field: u32| -> [u64; NUM_SIZE_CLASSES] {
                std::array::from_fn(|c| word(at(field) + 8 * c))
            };
            Delta {
                tiny: word(at(o.tiny_alloc_count)),
                large_alloc: word(at(o.large_alloc)),
                large_alloc_count: word(at(o.large_alloc_count)),
                small_alloc: classes(o.small_alloc_count),
                large_free: word(at(o.large_free)),
                large_free_count: word(at(o.large_free_count)),
                small_free: classes(o.small_free_count),
            }
        };
        let deltas = [delta(0), delta(1), delta(2)];
        // Writers add to stats[gen]; stats[gen-1] holds the last snapshot; stats[gen+1]
        // is clear except while a runtime/metrics read (consistentHeapStats.read) merges
        // it into the snapshot: summed then, it would count twice.
        if !deltas[(generation as usize + 1) % 3].is_zero() {
            continue;
        }
        let mut out = AllocCounters::default();
        for d in &deltas {
            out.alloc_bytes += d.large_alloc;
            out.alloc_objects += d.large_alloc_count + d.tiny;
            out.free_bytes += d.large_free;
            out.free_objects += d.large_free_count + d.tiny;
            for class in 0..NUM_SIZE_CLASSES {
                let size = u64::from(layout.class_to_size[class]);
                out.alloc_objects += d.small_alloc[class];
                out.alloc_bytes += d.small_alloc[class] * size;
                out.free_objects += d.small_free[class];
                out.free_bytes += d.small_free[class] * size;
            }
        }
        return Ok(out);
    }
    Err(ReadError::Merging)
}

/// One `heapStatsDelta`'s allocator counters.
struct Delta {
    tiny: u64,
    large_alloc: u64,
    large_alloc_count: u64,
    small_alloc: [u64; NUM_SIZE_CLASSES],
    large_free: u64,
    large_free_count: u64,
    small_free: [u64; NUM_SIZE_CLASSES],
}

impl Delta {
    fn is_zero(&self) -> bool {
        self.tiny == 0
            && self.large_alloc == 0
            && self.large_alloc_count == 0
            && self.large_free == 0
            && self.large_free_count == 0
            && self.small_alloc.iter().all(|&n| n == 0)
            && self.small_free.iter().all(|&n| n == 0)
    }
}

/// What the Ps' mcaches allocated and have not flushed: objects per size class (each
/// cached span's `allocCount − allocCountBeforeCache`) and tiny allocations.
fn unflushed(
    pid: u32,
    layout: &AllocStatsLayout,
    bias: u64,
) -> Result<([u64; NUM_SIZE_CLASSES], u64), ReadError> {
    let o = &layout.offsets;
    let allp = layout.allp.wrapping_add(bias);
    let (array, len) = remote_memory::slice_header(pid, allp).map_err(memory("allp", allp))?;
    if len > MAX_PS {
        return Err(ReadError::TooManyPs(len));
    }
    let ps = remote_memory::read_u64s(pid, array, len as usize).map_err(memory("allp[]", array))?;
    let mcache_addrs: Vec<u64> = ps
        .iter()
        .filter(|&&p| p != 0)
        .map(|p| p + u64::from(o.p_mcache))
        .collect();
    let mcaches: Vec<u64> = remote_memory::read_words(pid, &mcache_addrs, 8)
        .map_err(memory("p.mcache", array))?
        .into_iter()
        .flatten()
        .filter(|&c| c != 0)
        .collect();
    // Per mcache: alloc[0..NUM_SPAN_CLASSES], then tinyAllocs.
    let per_cache = NUM_SPAN_CLASSES + 1;
    let cache_words: Vec<u64> = mcaches
        .iter()
        .flat_map(|&c| {
            (0..NUM_SPAN_CLASSES as u64)
                .map(move |spc| c + u64::from(o.mcache_alloc) + 8 * spc)
                .chain(std::iter::once(c + u64::from(o.mcache_tiny_allocs)))
        })
        .collect();
    let read_caches =
        || remote_memory::read_words(pid, &cache_words, 8).map_err(memory("mcache", allp));
    let before = read_caches()?;
    // (span class, span) of every cached span.
    let spans: Vec<(usize, u64)> = before
        .iter()
        .enumerate()
        .filter(|(i, _)| i % per_cache != NUM_SPAN_CLASSES)
        .filter_map(|(i, span)| Some((i, (*span)?)))
        .filter(|&(_, span)| span != 0)
        .collect();
    let count_addrs: Vec<u64> = spans
        .iter()
        .flat_map(|&(_, s)| {
            [
                s + u64::from(o.mspan_alloc_count),
                s + u64::from(o.mspan_alloc_count_before_cache),
            ]
        })
        .collect();
    let counts = remote_memory::read_words(pid, &count_addrs, 2).map_err(memory("mspan", allp))?;
    let after = read_caches()?;
    let mut objects = [0u64; NUM_SIZE_CLASSES];
    for (k, &(i, span)) in spans.iter().enumerate() {
        if after[i] != Some(span) {
            continue;
        }
        let (Some(count), Some(before_cache)) = (counts[2 * k], counts[2 * k + 1]) else {
            continue;
        };
        // spanClass = sizeclass << 1 | noscan.
        let class = (i % per_cache) >> 1;
        objects[class] += count.saturating_sub(before_cache);
    }
    let tiny = before
        .iter()
        .skip(NUM_SPAN_CLASSES)
        .step_by(per_cache)
        .flatten()
        .sum();
    Ok((objects, tiny))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        path::PathBuf,
        process::{Command, Stdio},
    };

    use gomemtrace_gobin::GoBinary;

    use super::*;

    fn go(version: &str) -> Option<PathBuf> {
        let cache = std::env::var_os("GOMEMTRACE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/gomemtrace")
            });
        let go = cache.join(format!("go/{version}/bin/go"));
        go.exists().then_some(go)
    }

    /// tests/fixtures/allocmix built by Go `version` with `flags`, in its own directory.
    fn build(version: &str, flags: &[&str], tag: &str) -> Option<(PathBuf, PathBuf)> {
        let go = go(version)?;
        let dir = std::env::temp_dir().join(format!(
            "gomemtrace-allocstats-{version}-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/allocmix");
        std::fs::copy(src.join("main.go"), dir.join("main.go")).unwrap();
        std::fs::write(dir.join("go.mod"), "module m\n\ngo 1.19\n").unwrap();
        let status = Command::new(go)
            .args(["build", "-o", "prog"])
            .args(flags)
            .arg(".")
            .current_dir(&dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .status()
            .unwrap();
        assert!(status.success(), "go{version} build {flags:?}");
        Some((dir.join("prog"), dir))
    }

    /// `key=N` of a fixture line.
    fn field(line: &str, key: &str) -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    }

    /// Reads the paused fixture from outside, then lets it print its own
    /// runtime.ReadMemStats: the two agree (the fixture allocates nothing between).
    fn check(version: &str, flags: &[&str], tag: &str) {
        let Some((prog, dir)) = build(version, flags, tag) else {
            eprintln!("SKIP: no Go {version} toolchain (scripts/setup.sh installs it)");
            return;
        };
        let data = std::fs::read(&prog).unwrap();
        let binary = GoBinary::from_bytes(data.clone()).unwrap();
        let layout = AllocStatsLayout::locate(&binary, &data)
            .unwrap_or_else(|e| panic!("go{version} {tag}: {e}"));
        let mut child = Command::new(&prog)
            .args(["-mb", "40", "-goroutines", "3", "-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "paused");
        let bias = crate::engine::ExeMappings::read(child.id(), &prog)
            .expect("stat the program")
            .bias(&binary)
            .expect("load bias");
        let ours = read(child.id(), &layout, bias).unwrap_or_else(|e| panic!("{e}"));
        // The fixture's last allocations are still in its mcaches: the test covers them.
        let flushed_only = flushed(child.id(), &layout, bias).unwrap();
        assert!(
            flushed_only.alloc_objects < ours.alloc_objects,
            "{flushed_only:?}"
        );
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(dir);
        let theirs = AllocCounters {
            alloc_bytes: field(&line, "total_alloc"),
            alloc_objects: field(&line, "mallocs"),
            free_bytes: field(&line, "total_alloc") - field(&line, "heap_alloc"),
            free_objects: field(&line, "frees"),
        };
        eprintln!("go{version} {tag}: read {ours:?}\n   MemStats {theirs:?}");
        // Waking from the stdin read and stopping the world may allocate a few objects
        // (seen under load in CI: 6 objects, 5320 bytes) out of ~128 MB.
        let near = |a: u64, b: u64, slack: u64| a.abs_diff(b) <= slack;
        assert!(
            near(ours.alloc_bytes, theirs.alloc_bytes, 16384)
                && near(ours.alloc_objects, theirs.alloc_objects, 16)
                && near(ours.free_bytes, theirs.free_bytes, 16384)
                && near(ours.free_objects, theirs.free_objects, 16),
            "go{version} {tag}: read {ours:?}, MemStats {theirs:?}"
        );
        assert!(
            near(ours.heap_objects(), field(&line, "heap_objects"), 16),
            "{line}"
        );
    }

    #[test]
    fn equals_the_processes_own_memstats() {
        for version in ["1.19", "1.22", "1.25", "1.27"] {
            check(version, &[], "normal");
        }
    }

    #[test]
    fn equals_the_processes_own_memstats_when_stripped() {
        for version in ["1.19", "1.27"] {
            check(version, &["-ldflags=-s -w"], "stripped");
            check(
                version,
                &["-buildmode=pie", "-ldflags=-s -w"],
                "stripped-pie",
            );
        }
    }

    #[test]
    fn a_missing_process_is_an_error_not_a_panic() {
        let layout = AllocStatsLayout {
            memstats: 0x1000,
            allp: 0x2000,
            offsets: gomemtrace_gobin::allocstats::AllocStatsOffsets::for_version(
                gomemtrace_gobin::GoVersion::new(1, 27, 0),
            )
            .unwrap(),
            class_to_size: gomemtrace_gobin::allocstats::SIZE_CLASS_TO_SIZE,
            source: gomemtrace_gobin::allocstats::LayoutSource::Symbols,
        };
        let err = read(1 << 23, &layout, 0).unwrap_err();
        assert_eq!(err.reason(), "unreadable", "{err}");
        // Our own memory at those addresses is not mapped.
        let err = read(std::process::id(), &layout, 0).unwrap_err();
        assert_eq!(err.reason(), "unreadable", "{err}");
    }
}
