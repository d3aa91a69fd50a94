//! A process's goroutines read from the runtime's own memory: the goroutines alive
//! (`runtime.allgs`, each `g`'s status) and the goroutine ids handed out
//! (`runtime.sched.goidgen`). Binaries with symbols only (a stripped binary has no
//! `runtime.allgs` symbol). The bytes come from a [`MemorySource`]: the process, or an
//! image in tests and fuzzing.

use std::collections::HashMap;

use crate::GoBinary;
use crate::memory::MemorySource;
use crate::offsets::SchedOffsets;

/// `g.atomicstatus` values (runtime/runtime2.go); `_Gscan` is a bit on top of them.
const G_IDLE: u64 = 0;
const G_DEAD: u64 = 6;
const G_SCAN: u64 = 0x1000;
/// Above every status of Go 1.19–1.27: a word that is not a status (a `g` freed and
/// reused between the reads).
const G_STATUS_MAX: u64 = 15;
/// At most this many `g`s are read per process and harvest.
pub const MAX_GS: u64 = 4 << 20;

/// Where one executable keeps its goroutines: file virtual addresses and offsets.
#[derive(Clone, Copy, Debug)]
pub struct GoroutineLayout {
    /// `runtime.allgs`, a `[]*g`.
    allgs: u64,
    /// `runtime.sched`, whose `goidgen` counts the ids handed out.
    sched: Option<u64>,
    offsets: SchedOffsets,
    g_startpc: u32,
}

impl GoroutineLayout {
    /// `None` when the binary has no symbol for `runtime.allgs`.
    pub fn of(binary: &GoBinary, offsets: SchedOffsets, g_startpc: u32) -> Option<Self> {
        Some(Self::new(
            binary.symbol("runtime.allgs")?,
            binary.symbol("runtime.sched"),
            offsets,
            g_startpc,
        ))
    }

    /// A layout from its parts (file virtual addresses of `runtime.allgs` and
    /// `runtime.sched`).
    pub fn new(allgs: u64, sched: Option<u64>, offsets: SchedOffsets, g_startpc: u32) -> Self {
        Self {
            allgs,
            sched,
            offsets,
            g_startpc,
        }
    }
}

/// One reading of a process's goroutines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineCount {
    /// Alive, started by the program (what `runtime.NumGoroutine` counts) and by the
    /// runtime itself (GC workers, sweeper, scavenger, finalizers, ...).
    pub user: u64,
    pub runtime: u64,
    /// Goroutine ids handed out since the process started: the goroutines created, plus
    /// up to 16 ids per P that a P holds in reserve.
    pub ids_handed_out: Option<u64>,
    /// Entries of `allgs` counted in neither: their status word could not be read or is
    /// no status (a `g` reused between the reads, or overwritten by the program).
    pub invalid: u64,
}

/// Why a process's goroutines could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("reading the process's memory: {0}")]
    Read(#[from] std::io::Error),
    /// The `allgs` slice header is not one the runtime could have written: its length
    /// exceeds its capacity, the goroutine ids handed out (every `g` in `allgs` took one),
    /// or what a harvest reads. Nothing is read through it.
    #[error("runtime.allgs has length {len} (capacity {cap}, at most {limit} possible)")]
    BadLength { len: u64, cap: u64, limit: u64 },
}

/// Per executable: which start functions are the runtime's (`isSystemGoroutine`).
#[derive(Default)]
pub struct StartClassifier {
    by_pc: HashMap<u64, bool>,
}

impl StartClassifier {
    /// As the runtime decides for `runtime.NumGoroutine`: a goroutine whose start
    /// function is in package runtime is the runtime's, except `runtime.main` and the
    /// coroutines of `iter.Pull` (`runtime.corostart`).
    pub fn started_by_runtime(&mut self, binary: &GoBinary, file_pc: u64) -> bool {
        *self.by_pc.entry(file_pc).or_insert_with(|| {
            binary.function_at(file_pc).is_some_and(|f| {
                f.name.starts_with("runtime.")
                    && f.name != "runtime.main"
                    && f.name != "runtime.corostart"
            })
        })
    }
}

/// Counts the goroutines in `memory`; `bias` is the executable's load bias (PIE);
/// `started_by_runtime` tells a start PC (a file vaddr) of the runtime's goroutines.
pub fn count(
    memory: &dyn MemorySource,
    layout: &GoroutineLayout,
    bias: u64,
    started_by_runtime: &mut dyn FnMut(u64) -> bool,
) -> Result<GoroutineCount, CountError> {
    let header = memory.read_u64s(layout.allgs.wrapping_add(bias), 3)?;
    let (array, len, cap) = (header[0], header[1], header[2]);
    let ids_handed_out = ids_handed_out(memory, layout, bias);
    // Every g in allgs took a goroutine id when it was created.
    let limit = MAX_GS.min(ids_handed_out.map_or(u64::MAX, |ids| ids.saturating_add(1)));
    if len > cap || len > limit {
        return Err(CountError::BadLength { len, cap, limit });
    }
    let gs: Vec<u64> = memory
        .read_u64s(array, len as usize)?
        .into_iter()
        .filter(|&g| g != 0)
        .collect();
    // The `g` pointers are the process's words, not trusted: their fields' addresses wrap
    // (and then fail to read) rather than overflow.
    let status_addrs: Vec<u64> = gs
        .iter()
        .map(|g| g.wrapping_add(u64::from(layout.offsets.g_atomicstatus)))
        .collect();
    let statuses = memory.read_words(&status_addrs, 4)?;
    let mut out = GoroutineCount::default();
    let alive: Vec<u64> = gs
        .iter()
        .zip(statuses)
        .filter_map(|(&g, status)| {
            let s = status.map(|s| s & !G_SCAN).filter(|&s| s <= G_STATUS_MAX);
            if s.is_none() {
                out.invalid += 1;
            }
            let s = s?;
            (s != G_IDLE && s != G_DEAD).then_some(g)
        })
        .collect();
    let start_addrs: Vec<u64> = alive
        .iter()
        .map(|g| g.wrapping_add(u64::from(layout.g_startpc)))
        .collect();
    for start in memory.read_words(&start_addrs, 8)?.into_iter().flatten() {
        if started_by_runtime(start.wrapping_sub(bias)) {
            out.runtime += 1;
        } else {
            out.user += 1;
        }
    }
    out.ids_handed_out = ids_handed_out;
    Ok(out)
}

/// `runtime.sched.goidgen` in `memory`.
pub fn ids_handed_out(
    memory: &dyn MemorySource,
    layout: &GoroutineLayout,
    bias: u64,
) -> Option<u64> {
    let addr = layout
        .sched?
        .wrapping_add(bias)
        .wrapping_add(u64::from(layout.offsets.schedt_goidgen));
    memory.read_words(&[addr], 8).ok()?[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ImageMemory;

    /// `allgs` at 0x10 holding `gs`, each `g` (at 0x100 + 0x20 i) with status `status`
    /// at +0 and start PC `0x1000 + i` at +8.
    fn image(gs: &[u64], status: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x400];
        bytes[0x10..0x18].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x18..0x20].copy_from_slice(&(gs.len() as u64).to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&(gs.len() as u64).to_le_bytes());
        for (i, g) in gs.iter().enumerate() {
            bytes[0x40 + 8 * i..0x48 + 8 * i].copy_from_slice(&g.to_le_bytes());
            let at = 0x100 + 0x20 * i;
            bytes[at..at + 4].copy_from_slice(&status.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&(0x1000 + i as u64).to_le_bytes());
        }
        bytes
    }

    fn layout() -> GoroutineLayout {
        let offsets = SchedOffsets {
            g_atomicstatus: 0,
            schedt_goidgen: 0,
        };
        GoroutineLayout::new(0x10, Some(0x18), offsets, 8)
    }

    #[test]
    fn counts_the_live_goroutines_by_who_started_them() {
        let bytes = image(&[0x100, 0x120, 0x140], 2);
        let memory = ImageMemory {
            base: 0,
            bytes: &bytes,
        };
        let count = count(&memory, &layout(), 0, &mut |pc| pc == 0x1001).unwrap();
        assert_eq!((count.user, count.runtime), (2, 1));
        assert_eq!(count.ids_handed_out, Some(3));
    }

    #[test]
    fn a_g_pointer_at_the_top_of_the_address_space_is_unreadable_not_a_panic() {
        // Fuzz crash (goroutines): g + the status offset overflowed.
        let bytes = image(&[u64::MAX - 2, 0x100], 2);
        let memory = ImageMemory {
            base: 0,
            bytes: &bytes,
        };
        let mut layout = layout();
        layout.offsets.g_atomicstatus = 0x10;
        let count = count(&memory, &layout, 0, &mut |_| false).unwrap();
        assert_eq!(count.user + count.runtime, 0);
        assert_eq!(count.invalid, 1);
    }

    #[test]
    fn an_impossible_allgs_header_is_refused_and_nothing_read_through_it() {
        // Longer than its capacity, or than the goroutine ids handed out (each g took one).
        let mut bytes = image(&[0x100, 0x120, 0x140], 2);
        bytes[0x20..0x28].copy_from_slice(&2u64.to_le_bytes());
        let memory = ImageMemory {
            base: 0,
            bytes: &bytes,
        };
        let refused = count(&memory, &layout(), 0, &mut |_| false);
        assert!(matches!(
            refused,
            Err(CountError::BadLength { len: 3, cap: 2, .. })
        ));
        let mut bytes = image(&[0x100, 0x120, 0x140], 2);
        bytes[0x18..0x20].copy_from_slice(&(1u64 << 40).to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let memory = ImageMemory {
            base: 0,
            bytes: &bytes,
        };
        let refused = count(&memory, &layout(), 0, &mut |_| false);
        assert!(
            matches!(refused, Err(CountError::BadLength { .. })),
            "{refused:?}"
        );
    }
}
