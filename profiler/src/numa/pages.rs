//! The node of pages of another process, as the kernel reports it: `move_pages(2)` with
//! no target nodes (a query: nothing moves, nothing is written into the target), and, for
//! the pages it reports not present (`-ENOENT`), the page frame from `/proc/PID/pagemap`
//! mapped to its node through the memory blocks in sysfs. The second step matters where
//! NUMA balancing runs: some kernels' move_pages does not follow a page the scanner has
//! just made `PROT_NONE` (a hinting fault pending) and calls it not present, though it is
//! resident (seen on the 6.1 guest kernel of `cargo xtask vm`; later kernels follow them
//! again, FOLL_HONOR_NUMA_FAULT).

use std::{collections::BTreeMap, os::unix::fs::FileExt as _, path::Path};

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Why the memory blocks' nodes cannot be read from sysfs.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("memory/block_size_bytes: {0}")]
    BlockSize(#[source] std::io::Error),
    #[error("memory/block_size_bytes: {0:?}")]
    BadBlockSize(String),
    #[error("node/: {0}")]
    Nodes(#[source] std::io::Error),
    #[error("no node/nodeN/memoryM entries (no memory hotplug in sysfs)")]
    NoBlocks,
}

/// Which physical memory block is on which node (sysfs `node/nodeN/memoryM`).
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryBlocks {
    block_bytes: u64,
    nodes: BTreeMap<u64, u32>,
}

impl MemoryBlocks {
    /// From `root`/sys (`/` on a live system).
    pub fn read(root: &Path) -> Result<Self, BlocksError> {
        let sys = root.join("sys/devices/system");
        let size = std::fs::read_to_string(sys.join("memory/block_size_bytes"))
            .map_err(BlocksError::BlockSize)?;
        let block_bytes = u64::from_str_radix(size.trim(), 16)
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| BlocksError::BadBlockSize(size.trim().to_string()))?;
        let mut nodes = BTreeMap::new();
        let dir = std::fs::read_dir(sys.join("node")).map_err(BlocksError::Nodes)?;
        for node_dir in dir.filter_map(Result::ok) {
            let name = node_dir.file_name();
            let Some(node) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(node_dir.path()) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                if let Some(block) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("memory"))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    nodes.insert(block, node);
                }
            }
        }
        if nodes.is_empty() {
            return Err(BlocksError::NoBlocks);
        }
        Ok(Self { block_bytes, nodes })
    }

    /// The node of page frame `pfn` (pages of `page_size` bytes).
    pub fn node_of(&self, pfn: u64, page_size: u64) -> Option<u32> {
        let block = pfn.checked_mul(page_size)? / self.block_bytes;
        self.nodes.get(&block).copied()
    }
}

/// A page's node (`>= 0`) or the negative errno move_pages gave, and whether the node
/// came from pagemap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageNode {
    pub status: i32,
    pub via_pagemap: bool,
}

pub struct PageNodes {
    page_size: u64,
    blocks: Result<MemoryBlocks, BlocksError>,
}

impl PageNodes {
    pub fn new(page_size: u64) -> Self {
        Self {
            page_size,
            blocks: MemoryBlocks::read(Path::new("/")),
        }
    }

    /// Why pages move_pages calls not present cannot be looked up in pagemap, if so.
    pub fn pagemap_unavailable(&self) -> Option<&BlocksError> {
        self.blocks.as_ref().err()
    }

    /// The node of each page (page-aligned addresses in `pid`).
    pub fn classify(&self, pid: u32, pages: &[usize]) -> std::io::Result<Vec<PageNode>> {
        let mut out: Vec<PageNode> = move_pages_query(pid, pages)?
            .into_iter()
            .map(|status| PageNode {
                status,
                via_pagemap: false,
            })
            .collect();
        let Ok(blocks) = &self.blocks else {
            return Ok(out);
        };
        // The process may be gone by now: then the move_pages answers stand.
        let Ok(pagemap) = std::fs::File::open(format!("/proc/{pid}/pagemap")) else {
            return Ok(out);
        };
        for (page, node) in pages.iter().zip(&mut out) {
            if node.status != -libc::ENOENT {
                continue;
            }
            let mut entry = [0u8; 8];
            let at = *page as u64 / self.page_size * 8;
            if pagemap.read_exact_at(&mut entry, at).is_err() {
                continue;
            }
            if let Some(n) = pagemap_node(u64::from_le_bytes(entry), blocks, self.page_size) {
                *node = PageNode {
                    status: n as i32,
                    via_pagemap: true,
                };
            }
        }
        Ok(out)
    }
}

/// The node of a pagemap entry's frame, if the page is present and its frame is shown
/// (page frames read as 0 without CAP_SYS_ADMIN).
fn pagemap_node(entry: u64, blocks: &MemoryBlocks, page_size: u64) -> Option<u32> {
    let pfn = entry & PM_PFN_MASK;
    if entry & PM_PRESENT == 0 || pfn == 0 {
        return None;
    }
    blocks.node_of(pfn, page_size)
}

/// Node of each page (or a negative errno), as `move_pages(2)` reports it with no target
/// nodes.
fn move_pages_query(pid: u32, pages: &[usize]) -> std::io::Result<Vec<i32>> {
    let mut status = vec![i32::MIN; pages.len()];
    if pages.is_empty() {
        return Ok(status);
    }
    // SAFETY: `pages` and `status` hold `pages.len()` elements each and outlive the call;
    // with `nodes` NULL the kernel only reads `pages` (addresses in the target, never
    // dereferenced here) and writes `status`; flags 0 moves nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            libc::c_long::from(pid as i32),
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0 as libc::c_int,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_blocks_map_frames_to_nodes() {
        let root = std::env::temp_dir().join(format!("gomemtrace-blocks-{}", std::process::id()));
        let sys = root.join("sys/devices/system");
        std::fs::create_dir_all(sys.join("memory")).unwrap();
        // 128 MiB blocks; node 0 holds blocks 0 and 1, node 1 block 8.
        std::fs::write(sys.join("memory/block_size_bytes"), "8000000\n").unwrap();
        for (node, block) in [(0, 0), (0, 1), (1, 8)] {
            let dir = sys.join(format!("node/node{node}/memory{block}"));
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::create_dir_all(sys.join("node/node1/cpu1")).unwrap();
        std::fs::write(sys.join("node/possible"), "0-1\n").unwrap();
        let blocks = MemoryBlocks::read(&root).unwrap();
        let _ = std::fs::remove_dir_all(&root);
        let page = 4096;
        let frames_per_block = (128 << 20) / page;
        assert_eq!(blocks.node_of(0, page), Some(0));
        assert_eq!(blocks.node_of(2 * frames_per_block - 1, page), Some(0));
        assert_eq!(blocks.node_of(8 * frames_per_block + 5, page), Some(1));
        assert_eq!(blocks.node_of(3 * frames_per_block, page), None);
        // A present entry names its frame's node; absent or hidden frames name none.
        let present = PM_PRESENT | (8 * frames_per_block + 5);
        assert_eq!(pagemap_node(present, &blocks, page), Some(1));
        assert_eq!(pagemap_node(8 * frames_per_block, &blocks, page), None);
        assert_eq!(pagemap_node(PM_PRESENT, &blocks, page), None);
    }

    #[test]
    fn a_touched_page_is_on_a_node_and_an_untouched_one_not_present() {
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh private anonymous mapping of two pages, unmapped below; only
        // the first page is written.
        let base = unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            base.cast::<u8>().write_volatile(1);
            base
        };
        let pages = [base as usize, base as usize + page];
        let pid = std::process::id();
        let nodes = PageNodes::new(page as u64);
        let queried = move_pages_query(pid, &pages);
        let classified = nodes.classify(pid, &pages);
        let status = match queried {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                eprintln!("SKIP: kernel without move_pages (CONFIG_NUMA off)");
                // SAFETY: the mapping made above, no longer used.
                unsafe { libc::munmap(base, 2 * page) };
                return;
            }
            Err(e) => panic!("move_pages: {e}"),
        };
        assert!(status[0] >= 0, "{status:?}");
        assert_eq!(status[1], -libc::ENOENT, "{status:?}");
        // The touched page's frame is on the node move_pages names (where frames are
        // shown: root), the untouched page not present for pagemap either.
        if let Ok(blocks) = &nodes.blocks {
            let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
            let mut entry = [0u8; 8];
            pagemap
                .read_exact_at(&mut entry, (base as u64) / page as u64 * 8)
                .unwrap();
            let entry = u64::from_le_bytes(entry);
            if entry & PM_PFN_MASK != 0 {
                let node = pagemap_node(entry, blocks, page as u64);
                assert_eq!(node.map(|n| n as i32), Some(status[0]), "{entry:#x}");
            }
        }
        let classified = classified.unwrap();
        assert_eq!(classified[0].status, status[0]);
        assert_eq!(
            classified[1],
            PageNode {
                status: -libc::ENOENT,
                via_pagemap: false
            }
        );
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, 2 * page) };
    }
}
