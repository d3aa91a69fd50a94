//! Where a process's memory is resident, per node, from `/proc/PID/numa_maps`: Go heap
//! arenas (the runtime's arena hints put them at `0x00c0 << 32 | i << 40` on amd64),
//! other anonymous memory (goroutine stacks outside the heap, mmap'd buffers, C heap) and
//! file-backed pages.

use std::collections::BTreeMap;

use serde::Serialize;

/// Resident bytes on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeResidency {
    pub node: u32,
    pub go_heap_bytes: u64,
    pub other_anon_bytes: u64,
    pub file_bytes: u64,
}

/// Whether `start` lies in an amd64 Go heap arena: bits 32..40 are 0xc0.
fn is_go_arena(start: u64) -> bool {
    (start >> 32) & 0xff == 0xc0
}

/// Per-node residency from the text of a `numa_maps` file, by node.
pub fn parse_numa_maps(text: &str) -> Vec<NodeResidency> {
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
            } else if is_go_arena(start) {
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
        let nodes = parse_numa_maps(text);
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
}
