//! Reads of another process's memory with `process_vm_readv`: many small reads per system
//! call, without stopping the process (the agent's goroutine counts). Needs the ptrace
//! access the agent has already (root or CAP_SYS_PTRACE).

use std::io;

use gomemtrace_gobin::memory::MemorySource;

/// The memory of process `.0`, for gobin's readers of the runtime's structures.
#[derive(Clone, Copy, Debug)]
pub struct Process(pub u32);

impl MemorySource for Process {
    fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        read_bytes(self.0, addr, len)
    }

    fn read_words(&self, addrs: &[u64], width: usize) -> io::Result<Vec<Option<u64>>> {
        read_words(self.0, addrs, width)
    }
}

/// Remote reads per system call (the kernel's IOV_MAX is 1024).
const BATCH: usize = 512;

/// `len` bytes at `addr` in `pid`.
pub fn read_bytes(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes `buf`, which we own and which outlives the call; the
    // remote iovec is only read by the kernel, from the other process.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != len => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {n} of {len} bytes at {addr:#x}"),
        )),
        _ => Ok(buf),
    }
}

/// A Go slice header at `addr` in `pid`: (array pointer, length).
pub fn slice_header(pid: u32, addr: u64) -> io::Result<(u64, u64)> {
    let words = read_u64s(pid, addr, 2)?;
    Ok((words[0], words[1]))
}

/// `n` little-endian u64s at `addr` in `pid`.
pub fn read_u64s(pid: u32, addr: u64, n: usize) -> io::Result<Vec<u64>> {
    let bytes = read_bytes(pid, addr, n * 8)?;
    Ok(bytes
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .collect())
}

/// The little-endian `width`-byte (2, 4 or 8) words at `addrs` in `pid`; `None` where a
/// word could not be read. Err only when nothing can be read at all (the process is gone,
/// or no permission).
pub fn read_words(pid: u32, addrs: &[u64], width: usize) -> io::Result<Vec<Option<u64>>> {
    assert!(matches!(width, 2 | 4 | 8), "word width {width}");
    let mut out = vec![None; addrs.len()];
    let mut buf = vec![0u8; BATCH * width];
    let mut next = 0;
    let mut read_any = false;
    while next < addrs.len() {
        let batch = &addrs[next..(next + BATCH).min(addrs.len())];
        let local: Vec<libc::iovec> = (0..batch.len())
            .map(|i| libc::iovec {
                // SAFETY: in bounds: i < BATCH and buf holds BATCH words.
                iov_base: unsafe { buf.as_mut_ptr().add(i * width) }.cast(),
                iov_len: width,
            })
            .collect();
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: width,
            })
            .collect();
        // SAFETY: every local iovec points into `buf` (owned, outlives the call); the
        // remote ones are only read by the kernel, from the other process.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        // The kernel stops at the first word it cannot read: the words before it are
        // good, that one is skipped.
        let complete = if n < 0 {
            let e = io::Error::last_os_error();
            if !read_any && matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EPERM)) {
                return Err(e);
            }
            0
        } else {
            n as usize / width
        };
        for (i, slot) in out[next..next + complete].iter_mut().enumerate() {
            let bytes = &buf[i * width..(i + 1) * width];
            let mut word = [0u8; 8];
            word[..width].copy_from_slice(bytes);
            *slot = Some(u64::from_le_bytes(word));
        }
        read_any |= complete > 0;
        next += if complete == batch.len() {
            complete
        } else {
            complete + 1
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_words_and_skips_unmapped_ones() {
        let words: Vec<u64> = (0..1500u64).map(|i| i * 3 + 1).collect();
        let pid = std::process::id();
        let mut addrs: Vec<u64> = words.iter().map(|w| w as *const u64 as u64).collect();
        // Unreadable, in the middle of a batch and at its end.
        addrs[7] = 8;
        addrs[BATCH - 1] = 16;
        let read = read_words(pid, &addrs, 8).unwrap();
        for (i, r) in read.iter().enumerate() {
            match i {
                _ if i == 7 || i == BATCH - 1 => assert_eq!(*r, None, "{i}"),
                _ => assert_eq!(*r, Some(words[i]), "{i}"),
            }
        }
        let small: Vec<u32> = vec![0xdead_beef, 7];
        let read = read_words(pid, &[&small[0] as *const u32 as u64], 4).unwrap();
        assert_eq!(read, vec![Some(0xdead_beef)]);
        let read = read_words(pid, &[&small[0] as *const u32 as u64], 2).unwrap();
        assert_eq!(read, vec![Some(0xbeef)]);
        let bytes = read_bytes(pid, words.as_ptr() as u64, 16).unwrap();
        assert_eq!(bytes[..8], 1u64.to_le_bytes());
        assert_eq!(read_u64s(pid, words.as_ptr() as u64, 3).unwrap(), [1, 4, 7]);
        let slice = [words.as_ptr() as u64, 1500];
        assert_eq!(
            slice_header(pid, slice.as_ptr() as u64).unwrap(),
            (words.as_ptr() as u64, 1500)
        );
        assert!(read_bytes(pid, 8, 8).is_err());
    }

    #[test]
    fn a_missing_process_is_an_error() {
        // pid_max is at most 2^22.
        assert!(read_words(1 << 23, &[0x1000], 8).is_err());
    }
}
