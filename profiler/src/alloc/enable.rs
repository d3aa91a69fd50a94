//! `--enable-runtime-sampling[=RATE]`: the only write gomemtrace ever makes into a target.
//!
//! Setting `runtime.MemProfileRate` alone turns the runtime's heap sampler on, on every
//! release 1.19–1.27 (checked in each release's `malloc.go`): up to 1.23 `mallocgc` samples
//! when `rate > 0 && size >= c.nextSample`, and an mcache made while the rate was 0 holds
//! `nextSample == 0`, so each P's next allocation calls `profilealloc`, which draws a fresh
//! `nextSample`; from 1.24 every allocation checks `MemProfileRate != c.memProfRate`, which
//! the write makes true, and `profilealloc` copies the new rate. No per-P state needs
//! writing. `mProf_Malloc`, `setprofilebucket` and `freeSpecial` are linked into every
//! binary (`mallocgc` and the sweeper reach them); only the profile readers are dropped.

use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::Context as _;

/// The releases whose `MemProfileRate` semantics were checked (see the module comment).
pub fn verified(major: u32, minor: u32) -> bool {
    major == 1 && (19..=27).contains(&minor)
}

/// A written `MemProfileRate`, restored by [`RateWrite::restore`] or on drop.
pub struct RateWrite {
    pid: u32,
    addr: u64,
    old: u64,
    new: u64,
    restored: bool,
}

fn mem(pid: u32, write: bool) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("open /proc/{pid}/mem"))
}

/// Reads the 8-byte word at `addr` in `pid`.
pub fn read_word(pid: u32, addr: u64) -> anyhow::Result<u64> {
    let mut buf = [0u8; 8];
    mem(pid, false)?
        .read_exact_at(&mut buf, addr)
        .with_context(|| format!("read runtime.MemProfileRate at {addr:#x} in pid {pid}"))?;
    Ok(u64::from_le_bytes(buf))
}

fn write_word(pid: u32, addr: u64, value: u64) -> anyhow::Result<()> {
    mem(pid, true)?
        .write_all_at(&value.to_le_bytes(), addr)
        .with_context(|| format!("write runtime.MemProfileRate at {addr:#x} in pid {pid}"))
}

impl RateWrite {
    /// Sets `runtime.MemProfileRate` (runtime address `addr`) to `rate`, saying so on stderr;
    /// the value restored at the end is the one found, or `restore` where the caller knows
    /// the one found was not the program's own.
    pub fn set(pid: u32, addr: u64, rate: u64, restore: Option<u64>) -> anyhow::Result<Self> {
        let found = read_word(pid, addr)?;
        let old = restore.unwrap_or(found);
        write_word(pid, addr, rate)?;
        eprintln!(
            "gomemtrace: wrote runtime.MemProfileRate at {addr:#x} in pid {pid}: {found} -> {rate} (restored to {old} when tracing ends)"
        );
        Ok(Self {
            pid,
            addr,
            old,
            new: rate,
            restored: false,
        })
    }

    /// Puts the old value back; `alive` false (the target exited) skips the write.
    pub fn restore(&mut self, alive: bool) {
        if self.restored {
            return;
        }
        self.restored = true;
        if !alive {
            return;
        }
        match write_word(self.pid, self.addr, self.old) {
            Ok(()) => eprintln!(
                "gomemtrace: restored runtime.MemProfileRate at {:#x} in pid {}: {} -> {}",
                self.addr, self.pid, self.new, self.old
            ),
            Err(e) => eprintln!("gomemtrace: could not restore runtime.MemProfileRate: {e:#}"),
        }
    }
}

impl Drop for RateWrite {
    /// Error paths: restore if the process is still there.
    fn drop(&mut self) {
        let alive = std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        self.restore(alive);
    }
}
