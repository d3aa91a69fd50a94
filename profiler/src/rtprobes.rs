//! Loader of the stack-growth and goroutine-lifecycle probes (profiler-ebpf/src/rt.rs):
//! like [`crate::probes`], the only other place that talks to the kernel's BPF interfaces.

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use gomemtrace_common::{
    GOROUTINE_LIVE_MAP, GOROUTINE_SITES_MAP, GoroutineLive, GoroutineLiveKey, RT_CONFIG_MAP,
    RT_COUNTERS_MAP, RT_FLAG_TOTALS_ONLY, RT_STACKS_MAP, RtConfig, RtCounter, RtStack,
    STACK_EVENTS_MAP, STACK_TOTALS_MAP, SiteKey, SiteStats, StackGrowthEvent, StackTotals,
};

use crate::probes::{PidLink, close_links_of, count_keys, remove_keys};

pub type RtCounters = [u64; RtCounter::COUNT as usize];

pub struct RtProbes {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    /// The uprobe links attached now and the process each is for.
    links: Vec<PidLink>,
}

impl RtProbes {
    /// Loads and verifies `programs` (`*_PROGRAM` names of gomemtrace-common's rt module).
    pub fn load(programs: &[&str]) -> anyhow::Result<Self> {
        let mut ebpf = crate::probes::load_object()?;
        for name in programs {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("probe {name} missing from the eBPF object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verify the {name} probe"))?;
        }
        let events = RingBuf::try_from(
            ebpf.take_map(STACK_EVENTS_MAP)
                .context("STACK_EVENTS map missing from the eBPF object")?,
        )?;
        Ok(Self {
            ebpf,
            events,
            links: Vec::new(),
        })
    }

    /// Registers `pid`'s settings (and, with [`RT_FLAG_TOTALS_ONLY`], its zeroed totals).
    pub fn configure(&mut self, pid: u32, config: &RtConfig) -> anyhow::Result<()> {
        if config.flags & RT_FLAG_TOTALS_ONLY != 0 {
            let mut totals: BpfHashMap<&mut MapData, u32, StackTotals> = BpfHashMap::try_from(
                self.ebpf
                    .map_mut(STACK_TOTALS_MAP)
                    .context("STACK_TOTALS map")?,
            )?;
            totals
                .insert(&pid, &StackTotals::default(), 0)
                .context("write stack totals")?;
        }
        let mut map: BpfHashMap<&mut MapData, u32, RtConfig> =
            BpfHashMap::try_from(self.ebpf.map_mut(RT_CONFIG_MAP).context("RT_CONFIG map")?)?;
        map.insert(&pid, config, 0).context("write probe config")?;
        Ok(())
    }

    /// `pid`'s stack copies since it was configured ([`RT_FLAG_TOTALS_ONLY`]).
    pub fn stack_totals(&self, pid: u32) -> Option<StackTotals> {
        let map: BpfHashMap<&MapData, u32, StackTotals> =
            BpfHashMap::try_from(self.ebpf.map(STACK_TOTALS_MAP)?).ok()?;
        map.get(&pid, 0).ok()
    }

    /// Removes `pid`'s uprobes and map entries (the agent, when the process exited).
    pub fn forget_pid(&mut self, pid: u32) -> anyhow::Result<()> {
        close_links_of(&mut self.ebpf, &mut self.links, pid)?;
        remove_keys::<u32, RtConfig>(&mut self.ebpf, RT_CONFIG_MAP, |p| *p == pid)?;
        remove_keys::<u32, StackTotals>(&mut self.ebpf, STACK_TOTALS_MAP, |p| *p == pid)?;
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
                count_keys::<u32, RtConfig>(&self.ebpf, RT_CONFIG_MAP, |_| true).unwrap_or(0),
            ),
            (
                STACK_TOTALS_MAP,
                count_keys::<u32, StackTotals>(&self.ebpf, STACK_TOTALS_MAP, |_| true).unwrap_or(0),
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
        let pid = NonZeroU32::new(pid).context("pid 0")?;
        let program: &mut UProbe = self
            .ebpf
            .program_mut(program_name)
            .with_context(|| format!("probe {program_name} missing"))?
            .try_into()?;
        let link = program
            .attach(
                [UProbeAttachLocation::AbsoluteOffset(file_offset)],
                binary,
                UProbeScope::OneProcess(pid),
            )
            .with_context(|| {
                format!(
                    "attach {program_name} uprobe at {}+{file_offset:#x}",
                    binary.display()
                )
            })?;
        self.links.push((program_name.to_string(), pid.get(), link));
        Ok(())
    }

    /// copystack events sent since the last call, oldest first.
    pub fn drain_growth(&mut self) -> Vec<StackGrowthEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<StackGrowthEvent>() {
                // SAFETY: the record was written by `STACK_EVENTS.output` with a
                // `StackGrowthEvent` (repr(C), integers only, any bit pattern valid).
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<StackGrowthEvent>())
                });
            }
        }
        events
    }

    /// Creation sites with their counts.
    pub fn sites(&self) -> anyhow::Result<Vec<(SiteKey, SiteStats)>> {
        let map: BpfHashMap<&MapData, SiteKey, SiteStats> = BpfHashMap::try_from(
            self.ebpf
                .map(GOROUTINE_SITES_MAP)
                .context("GOROUTINE_SITES map")?,
        )?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Goroutines created after attach that have not exited.
    pub fn live(&self) -> anyhow::Result<Vec<(GoroutineLiveKey, GoroutineLive)>> {
        let map: BpfHashMap<&MapData, GoroutineLiveKey, GoroutineLive> = BpfHashMap::try_from(
            self.ebpf
                .map(GOROUTINE_LIVE_MAP)
                .context("GOROUTINE_LIVE map")?,
        )?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The stored stacks with these keys (leaf first).
    pub fn stacks(
        &self,
        keys: impl Iterator<Item = u64>,
    ) -> anyhow::Result<HashMap<u64, Vec<u64>>> {
        let map: BpfHashMap<&MapData, u64, RtStack> =
            BpfHashMap::try_from(self.ebpf.map(RT_STACKS_MAP).context("RT_STACKS map")?)?;
        let mut out = HashMap::new();
        for key in keys.filter(|&k| k != 0) {
            if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(key)
                && let Ok(stack) = map.get(&key, 0)
            {
                slot.insert(stack.pcs().to_vec());
            }
        }
        Ok(out)
    }

    pub fn counters(&self) -> anyhow::Result<RtCounters> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(RT_COUNTERS_MAP).context("RT_COUNTERS map")?)?;
        let mut counters = [0; RtCounter::COUNT as usize];
        for c in RtCounter::ALL {
            counters[c as usize] = map.get(&(c as u32), 0)?.iter().sum();
        }
        Ok(counters)
    }
}
