//! A process's goroutines read from the runtime's own memory (`process_vm_readv`): the
//! goroutines alive (`runtime.allgs`, each `g`'s status) and the goroutine ids handed out
//! (`runtime.sched.goidgen`). No probe: a goroutine-per-request server pays nothing for
//! these metrics. Binaries with symbols only (a stripped binary has no `runtime.allgs`
//! symbol). [`super::goroutine_metrics`] turns the readings into the agent's metrics.

use std::collections::HashMap;

use gomemtrace_gobin::{GoBinary, offsets::SchedOffsets};

use crate::remote_memory;

/// `g.atomicstatus` values (runtime/runtime2.go); `_Gscan` is a bit on top of them.
const G_IDLE: u64 = 0;
const G_DEAD: u64 = 6;
const G_SCAN: u64 = 0x1000;
/// Above every status of Go 1.19–1.27: a word that is not a status (a `g` freed and
/// reused between the reads).
const G_STATUS_MAX: u64 = 15;
/// At most this many `g`s are read per process and harvest.
const MAX_GS: u64 = 4 << 20;

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
        Some(Self {
            allgs: binary.symbol("runtime.allgs")?,
            sched: binary.symbol("runtime.sched"),
            offsets,
            g_startpc,
        })
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
    fn started_by_runtime(&mut self, binary: &GoBinary, file_pc: u64) -> bool {
        *self.by_pc.entry(file_pc).or_insert_with(|| {
            binary.function_at(file_pc).is_some_and(|f| {
                f.name.starts_with("runtime.")
                    && f.name != "runtime.main"
                    && f.name != "runtime.corostart"
            })
        })
    }
}

/// Counts `pid`'s goroutines; `bias` is its executable's load bias (PIE).
pub fn count(
    pid: u32,
    layout: &GoroutineLayout,
    bias: u64,
    binary: &GoBinary,
    classifier: &mut StartClassifier,
) -> Result<GoroutineCount, CountError> {
    let header = remote_memory::read_u64s(pid, layout.allgs.wrapping_add(bias), 3)?;
    let (array, len, cap) = (header[0], header[1], header[2]);
    let ids_handed_out = ids_handed_out(pid, layout, bias);
    // Every g in allgs took a goroutine id when it was created.
    let limit = MAX_GS.min(ids_handed_out.map_or(u64::MAX, |ids| ids.saturating_add(1)));
    if len > cap || len > limit {
        return Err(CountError::BadLength { len, cap, limit });
    }
    let gs: Vec<u64> = remote_memory::read_u64s(pid, array, len as usize)?
        .into_iter()
        .filter(|&g| g != 0)
        .collect();
    let status_addrs: Vec<u64> = gs
        .iter()
        .map(|g| g + u64::from(layout.offsets.g_atomicstatus))
        .collect();
    let statuses = remote_memory::read_words(pid, &status_addrs, 4)?;
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
        .map(|g| g + u64::from(layout.g_startpc))
        .collect();
    for start in remote_memory::read_words(pid, &start_addrs, 8)?
        .into_iter()
        .flatten()
    {
        if classifier.started_by_runtime(binary, start.wrapping_sub(bias)) {
            out.runtime += 1;
        } else {
            out.user += 1;
        }
    }
    out.ids_handed_out = ids_handed_out;
    Ok(out)
}

/// `runtime.sched.goidgen` of `pid`.
pub fn ids_handed_out(pid: u32, layout: &GoroutineLayout, bias: u64) -> Option<u64> {
    let addr = layout
        .sched?
        .wrapping_add(bias)
        .wrapping_add(u64::from(layout.offsets.schedt_goidgen));
    remote_memory::read_words(pid, &[addr], 8).ok()?[0]
}
