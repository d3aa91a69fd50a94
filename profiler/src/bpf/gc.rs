//! The GC-cycle probes (`gomemtrace gctrace`, the agent's GC metrics): entry uprobes on the
//! runtime's GC and stop/start-the-world functions, finished cycles through a ring buffer;
//! and the mark-assist and mark-worker probes (`gctrace --assists`).

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;
use gomemtrace_common::{
    AssistKey, AssistStats, GC_CALLERS_MAP, GC_CONFIG_MAP, GC_COUNTERS_MAP, GC_EVENTS_MAP,
    GC_FINISH_TRANSITION_PROGRAM, GC_MARK_DONE_PROGRAM, GC_MARK_TERMINATION_PROGRAM,
    GC_START_PROGRAM, GC_START_THE_WORLD_PROGRAM, GC_START_TRANSITION_PROGRAM, GC_STATE_MAP,
    GC_STOP_THE_WORLD_PROGRAM, GcCaller, GcCallerKey, GcConfig, GcCounter, GcEvent, GcState,
    MARK_ASSISTS_MAP, MARK_CONFIG_MAP, MARK_COUNTERS_MAP, MARK_EVENTS_MAP, MARK_PROGRAMS,
    MARK_STACKS_MAP, MarkConfig, MarkCounter, MarkCycleEvent, UserStack,
};

use super::{Bpf, Links, drain};

const GC_PROGRAMS: [&str; 7] = [
    GC_START_PROGRAM,
    GC_MARK_DONE_PROGRAM,
    GC_MARK_TERMINATION_PROGRAM,
    GC_STOP_THE_WORLD_PROGRAM,
    GC_START_THE_WORLD_PROGRAM,
    GC_FINISH_TRANSITION_PROGRAM,
    GC_START_TRANSITION_PROGRAM,
];

pub struct GcProbes {
    bpf: Bpf,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    /// The links attached now (the mark probes' too) and the process each is for.
    links: Links,
}

/// The handle's uprobes go with it: the target stops trapping there (the object and the
/// other capabilities' links stay).
impl Drop for GcProbes {
    fn drop(&mut self) {
        let _ = self.bpf.close_links(&mut self.links, |_, _| true);
    }
}

impl GcProbes {
    /// Verifies every GC program and takes the cycle ring buffer of `bpf`.
    pub fn new(bpf: &Bpf) -> anyhow::Result<Self> {
        for name in GC_PROGRAMS {
            bpf.load_uprobe(name)?;
        }
        Ok(Self {
            bpf: bpf.clone(),
            events: bpf.take_ring(GC_EVENTS_MAP)?,
            links: Links::default(),
        })
    }

    /// Removes `tgid`'s uprobes and its entries of the GC maps (the agent, when the
    /// process exited).
    pub fn forget_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.bpf
            .close_links(&mut self.links, |_, pid| pid == tgid)?;
        self.bpf
            .remove_keys::<u32, GcConfig>(GC_CONFIG_MAP, |p| *p == tgid)?;
        self.bpf
            .remove_keys::<u32, GcState>(GC_STATE_MAP, |p| *p == tgid)?;
        self.bpf
            .remove_keys::<GcCallerKey, GcCaller>(GC_CALLERS_MAP, |k| k.tgid == tgid)?;
        Ok(())
    }

    /// Uprobe links held now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Entries of the per-process GC maps.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        vec![
            (
                GC_CONFIG_MAP,
                self.bpf.count_keys::<u32, GcConfig>(GC_CONFIG_MAP),
            ),
            (
                GC_STATE_MAP,
                self.bpf.count_keys::<u32, GcState>(GC_STATE_MAP),
            ),
        ]
    }

    /// Registers `pid`'s settings; GC probe hits of other processes are ignored.
    pub fn configure(&mut self, pid: u32, config: &GcConfig) -> anyhow::Result<()> {
        self.bpf
            .insert(GC_CONFIG_MAP, &pid, config)
            .context("write GC probe config")
    }

    /// Attaches `program_name` (a `GC_*_PROGRAM` or mark program) at `file_offset` of
    /// `binary`, for `pid` only.
    pub fn attach(
        &mut self,
        program_name: &str,
        binary: &Path,
        file_offset: u64,
        pid: u32,
    ) -> anyhow::Result<()> {
        self.bpf
            .attach_uprobe(&mut self.links, program_name, binary, &[file_offset], pid)
    }

    /// Offsets trapped at now.
    pub fn attached(&self) -> usize {
        self.links.offsets()
    }

    /// The cycles that finished since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<GcEvent> {
        drain(&mut self.events)
    }

    /// GC probe counters, summed over CPUs, indexed by `GcCounter`.
    pub fn counters(&self) -> anyhow::Result<[u64; GcCounter::COUNT as usize]> {
        self.bpf.counters(GC_COUNTERS_MAP)
    }

    /// The object these probes run in (the mark probes share it).
    fn bpf(&self) -> &Bpf {
        &self.bpf
    }
}

/// The mark-assist and mark-worker probes: programs of the same object as [`GcProbes`],
/// attached through it.
pub struct MarkProbes {
    bpf: Bpf,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

/// What the mark probes aggregated per (goroutine, stack, drafting caller).
#[derive(Debug, Default)]
pub struct MarkSnapshot {
    pub assists: Vec<(AssistKey, AssistStats)>,
    /// Stack key → user stack PCs, leaf first (`[0]` is the probed instruction).
    pub stacks: HashMap<u64, Vec<u64>>,
    pub counters: [u64; MarkCounter::COUNT as usize],
}

impl MarkProbes {
    /// Verifies the mark programs in `gc`'s object and registers `pid`.
    pub fn load(gc: &GcProbes, pid: u32, config: &MarkConfig) -> anyhow::Result<Self> {
        let bpf = gc.bpf();
        for name in MARK_PROGRAMS {
            bpf.load_uprobe(name)?;
        }
        bpf.insert(MARK_CONFIG_MAP, &pid, config)
            .context("write mark probe config")?;
        Ok(Self {
            bpf: bpf.clone(),
            events: bpf.take_ring(MARK_EVENTS_MAP)?,
        })
    }

    /// The cycle-end totals sent since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<MarkCycleEvent> {
        drain(&mut self.events)
    }

    /// The per-site assist table, its stacks and the counters.
    pub fn snapshot(&self) -> anyhow::Result<MarkSnapshot> {
        let assists: Vec<(AssistKey, AssistStats)> = self.bpf.entries(MARK_ASSISTS_MAP)?;
        let stacks = self
            .bpf
            .stacks::<UserStack>(MARK_STACKS_MAP, assists.iter().map(|(k, _)| k.stack))?;
        Ok(MarkSnapshot {
            assists,
            stacks,
            counters: self.bpf.counters(MARK_COUNTERS_MAP)?,
        })
    }
}
