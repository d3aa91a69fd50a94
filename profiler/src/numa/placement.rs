//! Where a process's memory is resident, per node, from `/proc/PID/numa_maps`: Go heap
//! arenas (from the runtime's own list, `runtime.mheap_.heapArenas` — `allArenas` before
//! Go 1.25 — read with `process_vm_readv`: arena addresses are randomized from Go 1.26),
//! other anonymous memory (mmap'd buffers, C heap, thread stacks) and file-backed pages.

use std::{collections::BTreeMap, sync::Arc};

use gomemtrace_gobin::{GoBinary, offsets};
use serde::Serialize;

use crate::remote_memory;

/// Bytes per heap arena and the arena index base on linux/amd64 (runtime/malloc.go:
/// `heapArenaBytes`, `arenaBaseOffset`).
const HEAP_ARENA_BYTES: u64 = 64 << 20;
const ARENA_BASE_OFFSET: u64 = 0xffff_8000_0000_0000;

/// Why the Go heap's arenas cannot be told apart from other anonymous memory.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HeapError {
    #[error("no runtime.mheap_ symbol (stripped binary)")]
    NoSymbol,
    #[error("no DWARF for runtime.mheap")]
    NoDwarf,
    #[error("no runtime.mheap in DWARF")]
    NotInDwarf,
    #[error("runtime.mheap has neither heapArenas nor allArenas")]
    NoArenasField,
    #[error(transparent)]
    NoMapping(#[from] crate::engine::MappingNotFound),
    /// The executable or the process's memory could not be read.
    #[error("{0}")]
    Read(Arc<std::io::Error>),
    #[error("implausible allArenas length {0}")]
    ImplausibleLength(u64),
}

impl From<std::io::Error> for HeapError {
    fn from(e: std::io::Error) -> Self {
        HeapError::Read(Arc::new(e))
    }
}

/// Reads the Go heap's arenas out of a running process.
pub struct HeapArenas {
    /// Runtime address of the `mheap_.heapArenas` slice header.
    all_arenas: u64,
}

impl HeapArenas {
    /// From the binary's DWARF (`runtime.mheap` layout) and symbol table
    /// (`runtime.mheap_`); `bias` is the PIE load bias.
    pub fn locate(binary: &GoBinary, elf: &[u8], bias: u64) -> Result<Self, HeapError> {
        let mheap = binary.symbol("runtime.mheap_").ok_or(HeapError::NoSymbol)?;
        let structs = offsets::struct_offsets_from_dwarf(elf, &["runtime.mheap"])
            .ok()
            .flatten()
            .ok_or(HeapError::NoDwarf)?;
        let mheap_fields = structs.get("runtime.mheap").ok_or(HeapError::NotInDwarf)?;
        let field = mheap_fields
            .get("heapArenas")
            .or_else(|| mheap_fields.get("allArenas"))
            .ok_or(HeapError::NoArenasField)?;
        Ok(Self {
            all_arenas: mheap.wrapping_add(bias) + *field as u64,
        })
    }

    /// `[start, end)` of every arena, sorted.
    pub fn read(&self, pid: u32) -> Result<Vec<(u64, u64)>, HeapError> {
        let (ptr, len) = remote_memory::slice_header(pid, self.all_arenas)?;
        if len > 1 << 20 {
            return Err(HeapError::ImplausibleLength(len));
        }
        let mut arenas: Vec<(u64, u64)> = remote_memory::read_u64s(pid, ptr, len as usize)?
            .into_iter()
            .map(arena_range)
            .collect();
        arenas.sort_unstable();
        Ok(arenas)
    }
}

/// Snapshots of a process's residency per node; the last one is reported.
pub struct Placement {
    pid: u32,
    heap: Result<HeapArenas, HeapError>,
    /// Why the last snapshot has no Go heap split, if it has none.
    heap_error: Option<HeapError>,
    /// Residency per node, and when it was read (ns since tracing started).
    pub last: Option<(Vec<NodeResidency>, u64)>,
}

impl Placement {
    pub fn new(pid: u32, heap: Result<HeapArenas, HeapError>) -> Self {
        Self {
            pid,
            heap_error: heap.as_ref().err().cloned(),
            heap,
            last: None,
        }
    }

    /// Reads `/proc/PID/numa_maps` (and the heap's arenas); keeps the old snapshot when the
    /// process is gone or exiting (its memory half torn down).
    pub fn snapshot(&mut self, at_ns: u64) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/numa_maps", self.pid)) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let (arenas, heap_error) = match self.heap.as_ref().map(|h| h.read(self.pid)) {
            Ok(Ok(arenas)) => (arenas, None),
            Ok(Err(e)) => (Vec::new(), Some(e)),
            Err(e) => (Vec::new(), Some(e.clone())),
        };
        if super::exiting(self.pid) {
            return;
        }
        self.heap_error = heap_error;
        self.last = Some((parse_numa_maps(&text, &arenas), at_ns));
    }

    /// Where the Go heap split comes from, or why there is none.
    pub fn heap_detail(&self) -> String {
        match &self.heap_error {
            None => "Go heap from runtime.mheap_.heapArenas".into(),
            Some(e) => format!("no Go heap split ({e}): the heap counts as other anon"),
        }
    }
}

/// The address range of arena index `index` (runtime `arenaBase`).
fn arena_range(index: u64) -> (u64, u64) {
    let start = index
        .wrapping_mul(HEAP_ARENA_BYTES)
        .wrapping_add(ARENA_BASE_OFFSET);
    (start, start + HEAP_ARENA_BYTES)
}

/// Resident bytes on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeResidency {
    pub node: u32,
    pub go_heap_bytes: u64,
    pub other_anon_bytes: u64,
    pub file_bytes: u64,
}

fn in_arenas(addr: u64, arenas: &[(u64, u64)]) -> bool {
    arenas.iter().any(|&(lo, hi)| (lo..hi).contains(&addr))
}

/// Per-node residency from the text of a `numa_maps` file, by node; mappings that start
/// inside one of `arenas` count as Go heap.
pub fn parse_numa_maps(text: &str, arenas: &[(u64, u64)]) -> Vec<NodeResidency> {
    let mut nodes: BTreeMap<u32, NodeResidency> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(start) = fields.next().and_then(|a| u64::from_str_radix(a, 16).ok()) else {
            continue;
        };
        let mut page_size = 4096u64;
        let mut anon = false;
        let mut file = false;
        let mut per_node = Vec::new();
        for field in fields {
            if let Some(kb) = field.strip_prefix("kernelpagesize_kB=") {
                page_size = kb.parse::<u64>().unwrap_or(4) * 1024;
            } else if field.starts_with("anon=") {
                anon = true;
            } else if field.starts_with("file=") {
                file = true;
            } else if let Some((node, pages)) = field
                .strip_prefix('N')
                .and_then(|rest| rest.split_once('='))
                && let (Ok(node), Ok(pages)) = (node.parse::<u32>(), pages.parse::<u64>())
            {
                per_node.push((node, pages));
            }
        }
        for (node, pages) in per_node {
            let entry = nodes.entry(node).or_insert_with(|| NodeResidency {
                node,
                ..Default::default()
            });
            let bytes = pages * page_size;
            if file && !anon {
                entry.file_bytes += bytes;
            } else if in_arenas(start, arenas) {
                entry.go_heap_bytes += bytes;
            } else {
                entry.other_anon_bytes += bytes;
            }
        }
    }
    nodes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_is_split_by_node_and_kind() {
        // Lines in the kernel's format (fs/proc/task_mmu.c show_numa_map).
        let text = "\
00400000 default file=/app mapped=300 active=0 N0=300 kernelpagesize_kB=4
c000000000 default anon=1024 dirty=1024 N0=1000 N1=24 kernelpagesize_kB=4
7f0000000000 default anon=8192 dirty=8192 N1=8192 kernelpagesize_kB=4
7f1000000000 default anon=2 dirty=2 N1=2 kernelpagesize_kB=2048
7ffd00000000 default stack anon=3 dirty=3 N0=3 kernelpagesize_kB=4
";
        let nodes = parse_numa_maps(text, &[(0xc0_0000_0000, 0xc0_0400_0000)]);
        assert_eq!(
            nodes,
            vec![
                NodeResidency {
                    node: 0,
                    go_heap_bytes: 1000 * 4096,
                    other_anon_bytes: 3 * 4096,
                    file_bytes: 300 * 4096,
                },
                NodeResidency {
                    node: 1,
                    go_heap_bytes: 24 * 4096,
                    other_anon_bytes: 8192 * 4096 + 2 * 2048 * 1024,
                    file_bytes: 0,
                },
            ]
        );
    }

    #[test]
    fn arena_indexes_map_to_the_runtimes_addresses() {
        // Go's first arena hint before 1.26, 0x00c0 << 32, is arena index
        // (0xc000000000 + 2^47) / 2^26 = 0x3000 + 0x200000.
        assert_eq!(arena_range(0x20_3000), (0xc0_0000_0000, 0xc0_0400_0000));
        assert_eq!(arena_range(0x20_3001).0, 0xc0_0400_0000);
    }
}
