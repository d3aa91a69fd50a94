//! The stack-growth and goroutine-lifecycle probes (profiler-ebpf/src/rt.rs): copystack
//! events through a ring buffer, per-process stack-copy totals, goroutine creation sites and
//! the goroutines alive.

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;
use gomemtrace_common::{
    GOROUTINE_LIVE_MAP, GOROUTINE_SITES_MAP, GoroutineLive, GoroutineLiveKey, RT_CONFIG_MAP,
    RT_COUNTERS_MAP, RT_FLAG_TOTALS_ONLY, RT_STACKS_MAP, RtConfig, RtCounter, RtStack,
    STACK_EVENTS_MAP, STACK_TOTALS_MAP, SiteKey, SiteStats, StackGrowthEvent, StackTotals,
};

use super::{Bpf, Links, drain};

pub type RtCounters = [u64; RtCounter::COUNT as usize];

pub struct RtProbes {
    bpf: Bpf,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    /// The uprobe links attached now and the process each is for.
    links: Links,
}

/// The handle's uprobes go with it: the target stops trapping there (the object and the
/// other capabilities' links stay).
impl Drop for RtProbes {
    fn drop(&mut self) {
        let _ = self.bpf.close_links(&mut self.links, |_, _| true);
    }
}

impl RtProbes {
    /// Verifies `programs` (`*_PROGRAM` names of gomemtrace-common's rt module) and takes
    /// the stack-event ring buffer of `bpf`.
    pub fn new(bpf: &Bpf, programs: &[&str]) -> anyhow::Result<Self> {
        for name in programs {
            bpf.load_uprobe(name)?;
        }
        Ok(Self {
            bpf: bpf.clone(),
            events: bpf.take_ring(STACK_EVENTS_MAP)?,
            links: Links::default(),
        })
    }

    /// Registers `pid`'s settings (and, with [`RT_FLAG_TOTALS_ONLY`], its zeroed totals).
    pub fn configure(&mut self, pid: u32, config: &RtConfig) -> anyhow::Result<()> {
        if config.flags & RT_FLAG_TOTALS_ONLY != 0 {
            self.bpf
                .insert(STACK_TOTALS_MAP, &pid, &StackTotals::default())
                .context("write stack totals")?;
        }
        self.bpf
            .insert(RT_CONFIG_MAP, &pid, config)
            .context("write probe config")
    }

    /// `pid`'s stack copies since it was configured ([`RT_FLAG_TOTALS_ONLY`]).
    pub fn stack_totals(&self, pid: u32) -> Option<StackTotals> {
        self.bpf.get(STACK_TOTALS_MAP, &pid)
    }

    /// Removes `pid`'s uprobes and map entries (the agent, when the process exited).
    pub fn forget_pid(&mut self, pid: u32) -> anyhow::Result<()> {
        self.bpf.close_links(&mut self.links, |_, p| p == pid)?;
        self.bpf
            .remove_keys::<u32, RtConfig>(RT_CONFIG_MAP, |p| *p == pid)?;
        self.bpf
            .remove_keys::<u32, StackTotals>(STACK_TOTALS_MAP, |p| *p == pid)?;
        Ok(())
    }

    /// Uprobe links held now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Entries of the per-process maps.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        vec![
            (
                RT_CONFIG_MAP,
                self.bpf.count_keys::<u32, RtConfig>(RT_CONFIG_MAP),
            ),
            (
                STACK_TOTALS_MAP,
                self.bpf.count_keys::<u32, StackTotals>(STACK_TOTALS_MAP),
            ),
        ]
    }

    /// Attaches `program_name` at `file_offset` of `binary`, for `pid` only.
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

    /// copystack events sent since the last call, oldest first.
    pub fn drain_growth(&mut self) -> Vec<StackGrowthEvent> {
        drain(&mut self.events)
    }

    /// Creation sites with their counts.
    pub fn sites(&self) -> anyhow::Result<Vec<(SiteKey, SiteStats)>> {
        self.bpf.entries(GOROUTINE_SITES_MAP)
    }

    /// Goroutines created after attach that have not exited.
    pub fn live(&self) -> anyhow::Result<Vec<(GoroutineLiveKey, GoroutineLive)>> {
        self.bpf.entries(GOROUTINE_LIVE_MAP)
    }

    /// The stored stacks with these keys (leaf first).
    pub fn stacks(
        &self,
        keys: impl Iterator<Item = u64>,
    ) -> anyhow::Result<HashMap<u64, Vec<u64>>> {
        self.bpf.stacks::<RtStack>(RT_STACKS_MAP, keys)
    }

    pub fn counters(&self) -> anyhow::Result<RtCounters> {
        self.bpf.counters(RT_COUNTERS_MAP)
    }
}
