//! Where the runtime keeps its own allocation counters: what `runtime.ReadMemStats`
//! (`TotalAlloc`, `Mallocs`, `Frees`, `HeapAlloc`, `HeapObjects`) and runtime/metrics
//! (`/gc/heap/allocs:*`, `/gc/heap/frees:*`) are computed from, so that another process
//! can read them with no probe.
//!
//! Go 1.19–1.27 (`mstats.go`, `mcache.go`): `runtime.memstats.heapStats` is a
//! `consistentHeapStats` whose `stats [3]heapStatsDelta` add up to the flushed totals
//! (`unsafeRead` sums all three); each delta counts large allocations in bytes and objects,
//! small ones per size class (bytes = count × `class_to_size`), tiny ones by count. What
//! each P's `mcache` has not flushed yet is, per cached span, `allocCount −
//! allocCountBeforeCache`, plus `mcache.tinyAllocs`. Frees are counted when sweeping, so
//! they are all in `heapStats`.
//!
//! Offsets come from the binary's DWARF ([`AllocStatsOffsets::from_dwarf`]); for a
//! stripped binary from a per-version table ([`AllocStatsOffsets::for_version`]) read
//! from the DWARF of each release and checked against it by `tests/allocstats.rs`.

use std::io;

use crate::memory::MemorySource;
use crate::{GoBinary, GoVersion, disasm, offsets};

/// Small-object size classes (`_NumSizeClasses`, `gc.NumSizeClasses`): 68 in every
/// release from 1.19 to 1.27.
pub const NUM_SIZE_CLASSES: usize = 68;
/// Span classes (`numSpanClasses`): a scan and a noscan class per size class.
pub const NUM_SPAN_CLASSES: usize = 2 * NUM_SIZE_CLASSES;

/// Object size per size class (`runtime.class_to_size` until 1.24,
/// `internal/runtime/gc.SizeClassToSize` from 1.25): the same table in every release from
/// 1.19 to 1.27. Used where the binary's own copy cannot be found (stripped binaries);
/// `tests/allocstats.rs` checks it against each release's copy.
pub const SIZE_CLASS_TO_SIZE: [u16; NUM_SIZE_CLASSES] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

/// The symbols of the size table, newest first.
const SIZE_TABLE_SYMBOLS: [&str; 2] = [
    "internal/runtime/gc.SizeClassToSize",
    "runtime.class_to_size",
];

/// Byte offsets of the fields the counters are read from. amd64 layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocStatsOffsets {
    /// `mstats.heapStats` (a `consistentHeapStats`, whose first member is `stats`).
    pub mstats_heap_stats: u32,
    /// `consistentHeapStats.gen`: which of the three deltas writers use now.
    pub heap_stats_gen: u32,
    /// Size of one `heapStatsDelta` (the stride of `stats [3]heapStatsDelta`).
    pub delta_size: u32,
    /// `heapStatsDelta` members (uint64; the two `*Count` arrays are per size class).
    pub tiny_alloc_count: u32,
    pub large_alloc: u32,
    pub large_alloc_count: u32,
    pub small_alloc_count: u32,
    pub large_free: u32,
    pub large_free_count: u32,
    pub small_free_count: u32,
    /// `p.mcache` (*mcache).
    pub p_mcache: u32,
    /// `mcache.tinyAllocs` (uintptr): tiny allocations not flushed yet.
    pub mcache_tiny_allocs: u32,
    /// `mcache.alloc` (`[numSpanClasses]*mspan`): the spans cached per span class.
    pub mcache_alloc: u32,
    /// `mspan.allocCount`, `mspan.allocCountBeforeCache` (uint16).
    pub mspan_alloc_count: u32,
    pub mspan_alloc_count_before_cache: u32,
}

/// The structs [`AllocStatsOffsets::from_dwarf`] reads.
const STRUCTS: [&str; 6] = [
    "runtime.mstats",
    "runtime.consistentHeapStats",
    "runtime.heapStatsDelta",
    "runtime.p",
    "runtime.mcache",
    "runtime.mspan",
];

impl AllocStatsOffsets {
    /// From the binary's DWARF: `Ok(None)` without DWARF; an error when a member is
    /// missing (a release whose layout this reader does not know).
    pub fn from_dwarf(elf_bytes: &[u8]) -> Result<Option<Self>, offsets::OffsetsError> {
        let Some(structs) = offsets::struct_offsets_from_dwarf(elf_bytes, &STRUCTS)? else {
            return Ok(None);
        };
        let field = |strukt: &'static str, member: &'static str| {
            let off = structs
                .get(strukt)
                .ok_or(offsets::OffsetsError::MissingStruct(strukt))?
                .get(member)
                .copied()
                .ok_or(offsets::OffsetsError::MissingMember { strukt, member })?;
            u32::try_from(off).map_err(|_| offsets::OffsetsError::TooLarge(member))
        };
        let delta = |member| field("runtime.heapStatsDelta", member);
        let small_free_count = delta("smallFreeCount")?;
        // The offsets are the file's: sums that overflow and a `gen` before `stats` are
        // DWARF this reader cannot use, not arithmetic to panic on.
        let stats = field("runtime.consistentHeapStats", "stats")?;
        let inconsistent = |what| offsets::OffsetsError::Inconsistent(what);
        Ok(Some(Self {
            mstats_heap_stats: field("runtime.mstats", "heapStats")?
                .checked_add(stats)
                .ok_or(inconsistent("mstats.heapStats.stats"))?,
            heap_stats_gen: field("runtime.consistentHeapStats", "gen")?
                .checked_sub(stats)
                .ok_or(inconsistent("consistentHeapStats.gen"))?,
            // smallFreeCount is the last member (mstats.go, every release).
            delta_size: small_free_count
                .checked_add(8 * NUM_SIZE_CLASSES as u32)
                .ok_or(inconsistent("heapStatsDelta.smallFreeCount"))?,
            tiny_alloc_count: delta("tinyAllocCount")?,
            large_alloc: delta("largeAlloc")?,
            large_alloc_count: delta("largeAllocCount")?,
            small_alloc_count: delta("smallAllocCount")?,
            large_free: delta("largeFree")?,
            large_free_count: delta("largeFreeCount")?,
            small_free_count,
            p_mcache: field("runtime.p", "mcache")?,
            mcache_tiny_allocs: field("runtime.mcache", "tinyAllocs")?,
            mcache_alloc: field("runtime.mcache", "alloc")?,
            mspan_alloc_count: field("runtime.mspan", "allocCount")?,
            mspan_alloc_count_before_cache: field("runtime.mspan", "allocCountBeforeCache")?,
        }))
    }

    /// The verified releases' layouts (stripped binaries), keyed by (major, minor): patch
    /// releases do not change these structs. `None` for a release not verified.
    pub fn for_version(v: GoVersion) -> Option<Self> {
        // 1.25 dropped heapStatsDelta.inPtrScalarBits (-8 for every delta member after
        // it); p.mcache moved from 0x40 to 0x38 in 1.23; mcache grew memProfRate in 1.24.
        let (first, p_mcache, mcache_shift) = match v.release() {
            (1, 19) | (1, 21) | (1, 22) => (0x30, 0x40, 0),
            (1, 23) => (0x30, 0x38, 0),
            (1, 24) => (0x30, 0x38, 8),
            (1, 25) | (1, 26) | (1, 27) => (0x28, 0x38, 8),
            _ => return None,
        };
        let classes = 8 * NUM_SIZE_CLASSES as u32;
        let small_alloc_count = first + 0x18;
        let large_free = small_alloc_count + classes;
        let small_free_count = large_free + 0x10;
        let delta_size = small_free_count + classes;
        let span_counts = Self::span_counts(v);
        Some(Self {
            // heapStats is mstats's first member in every release.
            mstats_heap_stats: 0,
            heap_stats_gen: 3 * delta_size,
            delta_size,
            tiny_alloc_count: first,
            large_alloc: first + 8,
            large_alloc_count: first + 0x10,
            small_alloc_count,
            large_free,
            large_free_count: large_free + 8,
            small_free_count,
            p_mcache,
            mcache_tiny_allocs: 0x20 + mcache_shift,
            mcache_alloc: 0x28 + mcache_shift,
            mspan_alloc_count: span_counts.0,
            mspan_alloc_count_before_cache: span_counts.1,
        })
    }

    /// (`mspan.allocCount`, `mspan.allocCountBeforeCache`) per release: 1.21 had 8 more
    /// bytes before them.
    fn span_counts(v: GoVersion) -> (u32, u32) {
        match v.release() {
            (1, 21) => (0x68, 0x6e),
            _ => (0x60, 0x66),
        }
    }
}

/// Where one executable keeps the counters: file virtual addresses (add the load bias
/// for a PIE process) and the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocStatsLayout {
    /// `runtime.memstats`.
    pub memstats: u64,
    /// `runtime.allp` (`[]*p`).
    pub allp: u64,
    pub offsets: AllocStatsOffsets,
    /// Object size per size class, from the binary (or [`SIZE_CLASS_TO_SIZE`]).
    pub class_to_size: [u16; NUM_SIZE_CLASSES],
    /// How the globals were found.
    pub source: LayoutSource,
}

/// How an [`AllocStatsLayout`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    /// `.symtab` and DWARF.
    Symbols,
    /// Stripped binary: globals from the code that uses them, offsets from the table.
    Code,
}

/// Why the counters of a binary cannot be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("DWARF without the runtime's allocation counters: {0}")]
    Dwarf(#[from] offsets::OffsetsError),
    #[error("go{0}: no verified layout of the allocation counters for this release")]
    UnknownRelease(String),
    #[error("global {0} not found")]
    Global(&'static str),
}

impl AllocStatsLayout {
    /// Locates the counters in `binary` (whose file bytes are `elf_bytes`).
    pub fn locate(binary: &GoBinary, elf_bytes: &[u8]) -> Result<Self, LocateError> {
        let unknown = || LocateError::UnknownRelease(binary.version().to_string());
        let (offsets, source) = match AllocStatsOffsets::from_dwarf(elf_bytes)? {
            Some(offsets) => (offsets, LayoutSource::Symbols),
            None => (
                AllocStatsOffsets::for_version(binary.version()).ok_or_else(unknown)?,
                LayoutSource::Code,
            ),
        };
        let (memstats, allp) = match (
            binary.symbol("runtime.memstats"),
            binary.symbol("runtime.allp"),
        ) {
            (Some(m), Some(a)) => (m, a),
            _ => globals_from_code(binary, &offsets)?,
        };
        Ok(Self {
            memstats,
            allp,
            offsets,
            class_to_size: class_to_size(binary),
            source,
        })
    }
}

/// (`runtime.memstats`, `runtime.allp`) of a stripped binary, from the code that uses
/// them (GO-RUNTIME.md §7), in every release from 1.19 to 1.27:
/// - `runtime.gcMarkTinyAllocs` loads only `allp`'s array pointer and then its length
///   (`for _, p := range allp`): the first RIP-relative load, followed by the one 8 bytes
///   on;
/// - `runtime.(*mcache).allocLarge` passes `&memstats.heapStats` to `acquire` and then
///   to `release`: the first two consecutive RIP-relative LEAs of the same address.
pub fn globals_from_code(
    binary: &GoBinary,
    offsets: &AllocStatsOffsets,
) -> Result<(u64, u64), LocateError> {
    let code = |name: &str| {
        let f = binary.function(name)?;
        Some((binary.function_code(f)?, f.entry))
    };
    let allp = code("runtime.gcMarkTinyAllocs")
        .and_then(|(code, entry)| allp_from_code(code, entry))
        .ok_or(LocateError::Global("runtime.allp"))?;
    let memstats = code("runtime.(*mcache).allocLarge")
        .and_then(|(code, entry)| heap_stats_from_code(code, entry))
        .and_then(|heap_stats| heap_stats.checked_sub(u64::from(offsets.mstats_heap_stats)))
        .ok_or(LocateError::Global("runtime.memstats"))?;
    Ok((memstats, allp))
}

/// `runtime.allp` from the code of `runtime.gcMarkTinyAllocs` (loaded at `entry`): the
/// first RIP-relative load, when the next one reads 8 bytes on (the slice's length).
pub fn allp_from_code(code: &[u8], entry: u64) -> Option<u64> {
    match disasm::rip_relative_loads(code, entry)[..] {
        [array, len, ..] if len == array.wrapping_add(8) => Some(array),
        _ => None,
    }
}

/// `&runtime.memstats.heapStats` from the code of `runtime.(*mcache).allocLarge` (loaded
/// at `entry`): the first two consecutive RIP-relative LEAs of the same address.
pub fn heap_stats_from_code(code: &[u8], entry: u64) -> Option<u64> {
    disasm::rip_relative_leas(code, entry)
        .windows(2)
        .find(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
}

/// The binary's size table where its symbol is there, else [`SIZE_CLASS_TO_SIZE`].
pub fn class_to_size(binary: &GoBinary) -> [u16; NUM_SIZE_CLASSES] {
    SIZE_TABLE_SYMBOLS
        .iter()
        .find_map(|name| {
            let bytes = binary.read_vaddr(binary.symbol(name)?, 2 * NUM_SIZE_CLASSES)?;
            let mut table = [0u16; NUM_SIZE_CLASSES];
            for (slot, pair) in table.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *slot = u16::from_le_bytes(*pair);
            }
            Some(table)
        })
        .unwrap_or(SIZE_CLASS_TO_SIZE)
}

// The runtime's own allocation counters of a running process, read through a
// [`MemorySource`] (no probe, no stop): what `runtime.ReadMemStats` would report as
// `TotalAlloc`, `Mallocs`, `Frees`, `HeapAlloc` and `HeapObjects` at that moment — the
// flushed totals in `runtime.memstats.heapStats` plus what each P's mcache has not
// flushed yet.
//
// The process runs while it is read, so a reading is not one instant: the flushed totals
// are read before the mcaches, so that a span flushed between the two is missed (counted
// at the next reading) rather than counted twice; a cached span that changed while its
// counts were read is skipped for the same reason.
/// More Ps than this is not a Go process's `allp` (GOMAXPROCS is at most the CPUs, and
/// the runtime's limit is 2^20 only on paper).
const MAX_PS: u64 = 1 << 14;
/// `memstats.heapStats` (three deltas and `gen`) is about 3.3 KiB in every release: a
/// layout that makes it larger is not one to read (it would allocate that much).
pub const MAX_HEAP_STATS_BYTES: u32 = 64 << 10;
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
    #[error(
        "heapStats would span {0} bytes, more than {MAX_HEAP_STATS_BYTES}: not the layout we expect"
    )]
    HeapStatsTooLarge(u32),
    #[error("heapStats was being merged by a runtime/metrics read at each of {TRIES} tries")]
    Merging,
}

impl ReadError {
    /// A bounded label for the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Memory { .. } => "unreadable",
            ReadError::TooManyPs(_) | ReadError::BadGen(_) | ReadError::HeapStatsTooLarge(_) => {
                "unexpected_layout"
            }
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

/// Reads the counters in `memory`; `bias` is the executable's load bias (PIE).
pub fn read_counters(
    memory: &dyn MemorySource,
    layout: &AllocStatsLayout,
    bias: u64,
) -> Result<AllocCounters, ReadError> {
    let mut counters = flushed(memory, layout, bias)?;
    let (objects, tiny) = unflushed(memory, layout, bias)?;
    // The counters are the runtime's uint64s, which wrap (Go's arithmetic): so do the sums.
    for (class, &n) in objects.iter().enumerate() {
        counters.alloc_objects = counters.alloc_objects.wrapping_add(n);
        let bytes = n.wrapping_mul(u64::from(layout.class_to_size[class]));
        counters.alloc_bytes = counters.alloc_bytes.wrapping_add(bytes);
    }
    counters.alloc_objects = counters.alloc_objects.wrapping_add(tiny);
    counters.free_objects = counters.free_objects.wrapping_add(tiny);
    Ok(counters)
}

fn unreadable(what: &'static str, addr: u64) -> impl FnOnce(io::Error) -> ReadError {
    move |source| ReadError::Memory { what, addr, source }
}

/// The totals in `memstats.heapStats`: the sum of its three deltas, as the runtime's
/// `unsafeRead` does.
pub fn flushed(
    memory: &dyn MemorySource,
    layout: &AllocStatsLayout,
    bias: u64,
) -> Result<AllocCounters, ReadError> {
    let o = &layout.offsets;
    let addr = layout
        .memstats
        .wrapping_add(bias)
        .wrapping_add(u64::from(o.mstats_heap_stats));
    if o.heap_stats_gen > MAX_HEAP_STATS_BYTES {
        return Err(ReadError::HeapStatsTooLarge(o.heap_stats_gen));
    }
    let len = o.heap_stats_gen as usize + 4;
    for _ in 0..TRIES {
        let bytes = memory
            .read_bytes(addr, len)
            .map_err(unreadable("heapStats", addr))?;
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
        // Sums of the process's uint64 words: they wrap as the runtime's own sums do,
        // whatever the words hold.
        let mut out = AllocCounters::default();
        let add = |sum: &mut u64, n: u64| *sum = sum.wrapping_add(n);
        for d in &deltas {
            add(&mut out.alloc_bytes, d.large_alloc);
            add(
                &mut out.alloc_objects,
                d.large_alloc_count.wrapping_add(d.tiny),
            );
            add(&mut out.free_bytes, d.large_free);
            add(
                &mut out.free_objects,
                d.large_free_count.wrapping_add(d.tiny),
            );
            for class in 0..NUM_SIZE_CLASSES {
                let size = u64::from(layout.class_to_size[class]);
                add(&mut out.alloc_objects, d.small_alloc[class]);
                add(
                    &mut out.alloc_bytes,
                    d.small_alloc[class].wrapping_mul(size),
                );
                add(&mut out.free_objects, d.small_free[class]);
                add(&mut out.free_bytes, d.small_free[class].wrapping_mul(size));
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
    memory: &dyn MemorySource,
    layout: &AllocStatsLayout,
    bias: u64,
) -> Result<([u64; NUM_SIZE_CLASSES], u64), ReadError> {
    let o = &layout.offsets;
    let allp = layout.allp.wrapping_add(bias);
    let (array, len) = memory
        .slice_header(allp)
        .map_err(unreadable("allp", allp))?;
    if len > MAX_PS {
        return Err(ReadError::TooManyPs(len));
    }
    let ps = memory
        .read_u64s(array, len as usize)
        .map_err(unreadable("allp[]", array))?;
    let mcache_addrs: Vec<u64> = ps
        .iter()
        .filter(|&&p| p != 0)
        .map(|p| p.wrapping_add(u64::from(o.p_mcache)))
        .collect();
    let mcaches: Vec<u64> = memory
        .read_words(&mcache_addrs, 8)
        .map_err(unreadable("p.mcache", array))?
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
                .map(move |spc| c.wrapping_add(u64::from(o.mcache_alloc) + 8 * spc))
                .chain(std::iter::once(
                    c.wrapping_add(u64::from(o.mcache_tiny_allocs)),
                ))
        })
        .collect();
    let read_caches = || {
        memory
            .read_words(&cache_words, 8)
            .map_err(unreadable("mcache", allp))
    };
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
                s.wrapping_add(u64::from(o.mspan_alloc_count)),
                s.wrapping_add(u64::from(o.mspan_alloc_count_before_cache)),
            ]
        })
        .collect();
    let counts = memory
        .read_words(&count_addrs, 2)
        .map_err(unreadable("mspan", allp))?;
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
        .fold(0u64, |sum, &n| sum.wrapping_add(n));
    Ok((objects, tiny))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_size_order_and_ends_at_32_kib() {
        assert!(SIZE_CLASS_TO_SIZE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(SIZE_CLASS_TO_SIZE[NUM_SIZE_CLASSES - 1], 32 << 10);
    }

    #[test]
    fn unverified_releases_have_no_table() {
        for minor in [18, 20, 28] {
            assert_eq!(
                AllocStatsOffsets::for_version(GoVersion::new(1, minor, 0)),
                None
            );
        }
    }
}
