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
        Ok(Some(Self {
            mstats_heap_stats: field("runtime.mstats", "heapStats")?
                + field("runtime.consistentHeapStats", "stats")?,
            heap_stats_gen: field("runtime.consistentHeapStats", "gen")?
                - field("runtime.consistentHeapStats", "stats")?,
            // smallFreeCount is the last member (mstats.go, every release).
            delta_size: small_free_count + 8 * NUM_SIZE_CLASSES as u32,
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
        .and_then(
            |(code, entry)| match disasm::rip_relative_loads(code, entry)[..] {
                [array, len, ..] if len == array.wrapping_add(8) => Some(array),
                _ => None,
            },
        )
        .ok_or(LocateError::Global("runtime.allp"))?;
    let memstats = code("runtime.(*mcache).allocLarge")
        .and_then(|(code, entry)| {
            disasm::rip_relative_leas(code, entry)
                .windows(2)
                .find(|pair| pair[0] == pair[1])
                .map(|pair| pair[0])
        })
        .and_then(|heap_stats| heap_stats.checked_sub(u64::from(offsets.mstats_heap_stats)))
        .ok_or(LocateError::Global("runtime.memstats"))?;
    Ok((memstats, allp))
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
