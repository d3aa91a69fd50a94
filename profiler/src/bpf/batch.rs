//! Moving a hash map's entries out of the kernel thousands at a time
//! (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`, Linux 5.6), which aya does not wrap. Key by key a
//! drain costs three system calls per entry (next key, lookup, delete); on esbuild bundling
//! 3,000 modules (~130,000 new keys a second on a loaded 2-core machine) that was slower
//! than the programs filled the other buffer, and events were lost to a full map.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Entries per system call.
const CHUNK: usize = 4096;

/// `bpf(2)`'s command number.
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a batched take moved out, and why it stopped early, if it did (the caller moves
/// the rest key by key: nothing taken is lost).
pub struct Taken<K, V> {
    pub entries: Vec<(K, V)>,
    pub stopped: Option<io::Error>,
}

/// Looks up and deletes every entry of the hash map `fd` (keys `K`, values `V`, which must
/// be the map's key and value sizes).
pub fn take_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> Taken<K, V> {
    // SAFETY: `Pod` types are plain data for which every bit pattern, zero included, is
    // valid.
    let (mut keys, mut values): (Vec<K>, Vec<V>) = unsafe {
        (
            vec![std::mem::zeroed(); CHUNK],
            vec![std::mem::zeroed(); CHUNK],
        )
    };
    // The kernel's cursor (a bucket index for hash maps: 4 bytes; 8 give room).
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut entries = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &raw const cursor_in as u64
            },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the kernel's `batch` layout; the key and value buffers hold
        // `count` elements of the map's sizes and the cursors 8 bytes each, all alive
        // across the call; the kernel writes only within them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        // Filled even when the call ends with ENOENT (the last entries).
        let n = (attr.count as usize).min(CHUNK);
        entries.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match error {
            None => {
                cursor_in = cursor_out;
                first = false;
            }
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Taken {
                    entries,
                    stopped: None,
                };
            }
            Some(e) => {
                return Taken {
                    entries,
                    stopped: Some(e),
                };
            }
        }
    }
}
