//! The allocation probes: `mallocgc` (and its replacements) in exact mode, the runtime's
//! own sampling hook in sampled mode; per-process settings, the aggregated keys, stacks,
//! goroutines and live sampled objects.

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::Context as _;
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeScope},
};
use gomemtrace_common::{
    ALLOCS_ALT_MAP, ALLOCS_MAP, AllocKey, AllocStats, CONFIG_MAP, COUNTERS_MAP, Counter,
    EMPTY_PROGRAM, FREES_MAP, GOROUTINES_MAP, GoroutineInfo, GoroutineKey, LIVE_MAP, LiveKey,
    LiveObject, ProcessConfig, RATES_MAP, STACKS_MAP, UserStack,
};

use super::{
    Bpf, Link, Links,
    alloc_drain::{self, BUFFERS, Drained},
    uprobe,
};

/// Everything the probes aggregated so far.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub allocs: Vec<(AllocKey, AllocStats)>,
    /// Stack key → user stack PCs, leaf first (`[0]` is the probed instruction).
    pub stacks: HashMap<u64, Vec<u64>>,
    /// (tgid, goid) → `g.startpc`.
    pub goroutine_start_pcs: HashMap<(u32, u64), u64>,
    pub counters: Counters,
    /// Runtime-sampled mode: frees of sampled objects, per key they were counted under.
    pub frees: HashMap<AllocKey, AllocStats>,
    /// Runtime-sampled mode: `MemProfileRate` per process, as read at its latest sample.
    pub sample_rates: HashMap<u32, u64>,
}

/// One walk of the live sampled objects.
#[derive(Debug, Default)]
pub struct LiveObjects {
    /// By address.
    pub objects: HashMap<u64, LiveObject>,
    /// Entries gone between the key walk and their read: freed meanwhile.
    pub vanished: u64,
    /// The walk stopped at its limit (it kept restarting): objects may be missing.
    pub cut_short: bool,
}

/// Per-reason event counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// The multi-uprobe twin of [`gomemtrace_common::ALLOC_PROGRAM`].
const ALLOC_MULTI_PROGRAM: &str = "alloc_entry_multi";

pub struct AllocProbes {
    bpf: Bpf,
    /// The uprobe links attached now and the process each is for, for
    /// [`AllocProbes::detach_all`] (duty-cycled mode) and [`AllocProbes::detach_pid`].
    links: Links,
    /// What was drained out of the kernel's maps so far ([`AllocProbes::drain_if_due`]).
    drained: Drained,
}

/// The handle's uprobes go with it: the target stops trapping there (the object and the
/// other capabilities' links stay).
impl Drop for AllocProbes {
    fn drop(&mut self) {
        let _ = self.bpf.close_links(&mut self.links, |_, _| true);
    }
}

impl AllocProbes {
    /// The allocation handle on `bpf`; programs are verified when first attached.
    pub fn new(bpf: &Bpf) -> Self {
        Self {
            bpf: bpf.clone(),
            links: Links::default(),
            drained: Drained::default(),
        }
    }

    /// Registers `pid`'s settings; its probe hits are ignored (counted as `NoConfig`) until
    /// then.
    pub fn configure(&mut self, pid: u32, config: ProcessConfig) -> anyhow::Result<()> {
        self.bpf
            .insert(CONFIG_MAP, &pid, &config)
            .context("write process config")
    }

    /// Forgets `pid`'s settings: its probe hits are ignored (counted as `NoConfig`) from
    /// now on.
    pub fn unconfigure(&mut self, pid: u32) -> anyhow::Result<()> {
        self.bpf
            .remove_keys::<u32, ProcessConfig>(CONFIG_MAP, |p| *p == pid)
    }

    /// Attaches `program_name` (e.g. [`gomemtrace_common::ALLOC_PROGRAM`]) at each file
    /// offset of `binary`, for `tgid` only.
    pub fn attach(
        &mut self,
        program_name: &'static str,
        binary: &Path,
        file_offsets: &[u64],
        tgid: u32,
    ) -> anyhow::Result<()> {
        self.bpf
            .attach_uprobe(&mut self.links, program_name, binary, file_offsets, tgid)
    }

    /// Attaches the multi-uprobe twin of the allocation program at every offset with one
    /// link (duty-cycled mode: one link detaches with one RCU grace period). Fails on
    /// kernels without multi-uprobes (before 6.6).
    pub fn attach_alloc_multi(
        &mut self,
        binary: &Path,
        file_offsets: &[u64],
        tgid: u32,
    ) -> anyhow::Result<()> {
        let pid = NonZeroU32::new(tgid).context("pid 0")?;
        self.bpf
            .load_uprobe(ALLOC_MULTI_PROGRAM)
            .context("verify the multi-uprobe allocation probe")?;
        let link = self.bpf.with(|ebpf| {
            uprobe(ebpf, ALLOC_MULTI_PROGRAM)?
                .attach(
                    file_offsets
                        .iter()
                        .map(|&o| UProbeAttachLocation::AbsoluteOffset(o)),
                    binary,
                    UProbeScope::OneProcess(pid),
                )
                .with_context(|| format!("attach multi-uprobe on {}", binary.display()))
        })?;
        self.links.0.push(Link {
            program: ALLOC_MULTI_PROGRAM.to_string(),
            pid: tgid,
            id: link,
            offsets: file_offsets.len(),
        });
        Ok(())
    }

    /// The cost of one uprobe hit running the empty program, measured now on this machine:
    /// the empty program is attached to a function of gomemtrace itself, which is called
    /// `calls` times with and without it. `None` where that cannot be done.
    pub fn measure_trap_ns(&mut self, calls: u32) -> Option<f64> {
        let time = |calls: u32| {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            for i in 0..calls {
                x = x.wrapping_add(gomemtrace_trap_calibration(std::hint::black_box(i as u64)));
            }
            std::hint::black_box(x);
            start.elapsed().as_nanos() as f64
        };
        let pid = NonZeroU32::new(std::process::id())?;
        self.bpf.load_uprobe(EMPTY_PROGRAM).ok()?;
        let bare = time(calls);
        let link = self.bpf.with(|ebpf| {
            let program: &mut UProbe = uprobe(ebpf, EMPTY_PROGRAM).ok()?;
            program
                .attach(
                    [UProbeAttachLocation::Symbol("gomemtrace_trap_calibration")],
                    "/proc/self/exe",
                    UProbeScope::OneProcess(pid),
                )
                .ok()
        })?;
        let probed = time(calls);
        self.bpf.with(|ebpf| {
            if let Ok(program) = uprobe(ebpf, EMPTY_PROGRAM) {
                let _ = program.detach(link);
            }
        });
        Some(((probed - bare) / calls as f64).max(0.0))
    }

    /// Removes every uprobe attached so far: the target no longer traps at those offsets.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        self.detach_where(|_, _| true)
    }

    /// Removes the uprobes attached for `tgid` (the agent, when the process exited).
    pub fn detach_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.detach_where(|_, pid| pid == tgid)
    }

    /// Detaches every link of `program_name`.
    pub fn detach_program(&mut self, program_name: &'static str) -> anyhow::Result<()> {
        self.detach_where(|name, _| name == program_name)
    }

    /// Removes the links for which `which(program name, pid)` holds.
    fn detach_where(&mut self, which: impl Fn(&str, u32) -> bool) -> anyhow::Result<()> {
        self.bpf.close_links(&mut self.links, which)?;
        Ok(())
    }

    /// Uprobe links held now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Offsets trapped at now.
    pub fn attached(&self) -> usize {
        self.links.offsets()
    }

    /// Deletes every map entry of `tgid` (settings, aggregated keys, live sampled objects,
    /// goroutines, sample rate) and the stacks no remaining key refers to: a process that
    /// exited leaves nothing behind in the kernel.
    pub fn forget_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        let _ = self.unconfigure(tgid);
        self.bpf
            .remove_keys::<u32, u64>(RATES_MAP, |pid| *pid == tgid)?;
        for buffer in BUFFERS {
            self.bpf
                .remove_keys::<AllocKey, AllocStats>(buffer, |k| k.tgid == tgid)?;
        }
        self.bpf
            .remove_keys::<AllocKey, AllocStats>(FREES_MAP, |k| k.tgid == tgid)?;
        self.bpf
            .remove_keys::<GoroutineKey, GoroutineInfo>(GOROUTINES_MAP, |k| k.tgid == tgid)?;
        self.bpf
            .remove_keys::<LiveKey, LiveObject>(LIVE_MAP, |k| k.tgid == tgid)?;
        let mut referenced: std::collections::HashSet<u64> =
            [ALLOCS_MAP, ALLOCS_ALT_MAP, FREES_MAP]
                .into_iter()
                .filter_map(|name| self.bpf.entries::<AllocKey, AllocStats>(name).ok())
                .flatten()
                .map(|(k, _)| k.stack)
                .collect();
        self.drained.forget_pid(tgid, &referenced);
        referenced.extend(self.drained.allocs.keys().map(|k| k.stack));
        self.bpf
            .remove_keys::<u64, UserStack>(STACKS_MAP, |k| !referenced.contains(k))?;
        Ok(())
    }

    /// Entries of each map that holds per-process data (the agent exposes them, so a
    /// leak after processes exit shows).
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        vec![
            (
                CONFIG_MAP,
                self.bpf.count_keys::<u32, ProcessConfig>(CONFIG_MAP),
            ),
            (RATES_MAP, self.bpf.count_keys::<u32, u64>(RATES_MAP)),
            (
                ALLOCS_MAP,
                self.bpf.count_keys::<AllocKey, AllocStats>(ALLOCS_MAP),
            ),
            (
                ALLOCS_ALT_MAP,
                self.bpf.count_keys::<AllocKey, AllocStats>(ALLOCS_ALT_MAP),
            ),
            (
                FREES_MAP,
                self.bpf.count_keys::<AllocKey, AllocStats>(FREES_MAP),
            ),
            (
                GOROUTINES_MAP,
                self.bpf
                    .count_keys::<GoroutineKey, GoroutineInfo>(GOROUTINES_MAP),
            ),
            (
                LIVE_MAP,
                self.bpf.count_keys::<LiveKey, LiveObject>(LIVE_MAP),
            ),
            (
                STACKS_MAP,
                self.bpf.count_keys::<u64, UserStack>(STACKS_MAP),
            ),
        ]
    }

    /// Moves the kernel's allocation keys, stacks and goroutines into user space when
    /// it is time (see `alloc_drain`): call it at every tick of a trace, and the next tick
    /// no later than the instant returned (sooner the faster events arrive).
    pub fn drain_if_due(&mut self) -> anyhow::Result<std::time::Instant> {
        let events = self.counters()?.get(Counter::Events);
        self.drained.drain_if_due(&self.bpf, events)
    }

    /// Every key's totals so far, drained and still in the kernel (cheaper than
    /// [`AllocProbes::snapshot`]).
    pub fn allocs(&self) -> anyhow::Result<Vec<(AllocKey, AllocStats)>> {
        let mut all = self.drained.allocs.clone();
        for buffer in BUFFERS {
            self.bpf.with(|ebpf| -> anyhow::Result<()> {
                let map: BpfHashMap<&MapData, AllocKey, AllocStats> = BpfHashMap::try_from(
                    ebpf.map(buffer).with_context(|| format!("{buffer} map"))?,
                )?;
                for entry in map.iter() {
                    let (key, stats) = entry?;
                    alloc_drain::add(&mut all, key, stats);
                }
                Ok(())
            })?;
        }
        Ok(all.into_iter().collect())
    }

    /// Runtime-sampled mode: frees of sampled objects per key.
    pub fn frees(&self) -> anyhow::Result<Vec<(AllocKey, AllocStats)>> {
        self.bpf.entries(FREES_MAP)
    }

    /// Runtime-sampled mode: `MemProfileRate` per process, as read at its latest sample.
    pub fn sample_rates(&self) -> anyhow::Result<HashMap<u32, u64>> {
        Ok(self.bpf.entries(RATES_MAP)?.into_iter().collect())
    }

    /// Runtime-sampled mode: `tgid`'s sampled objects still live (allocated and not yet
    /// seen freed), by address. The map changes while it is walked: a walk that restarts
    /// (its previous key was deleted) sees entries again, hence by address, and it stops
    /// after twice the map's capacity (said in [`LiveObjects::cut_short`]).
    pub fn live_objects(&self, tgid: u32) -> anyhow::Result<LiveObjects> {
        self.bpf.with(|ebpf| {
            let map: BpfHashMap<&MapData, LiveKey, LiveObject> =
                BpfHashMap::try_from(ebpf.map(LIVE_MAP).context("LIVE map")?)?;
            let mut out = LiveObjects::default();
            let limit = 2 * gomemtrace_common::MAX_LIVE_OBJECTS as usize;
            let mut walked = 0;
            for key in map.keys().take(limit) {
                walked += 1;
                let key = key.context("walk the LIVE map")?;
                if key.tgid != tgid {
                    continue;
                }
                match map.get(&key, 0) {
                    Ok(object) => {
                        out.objects.insert(key.addr, object);
                    }
                    Err(_) => out.vanished += 1,
                }
            }
            out.cut_short = walked == limit;
            Ok(out)
        })
    }

    /// The PCs of stack `key`, if stored (drained or in the kernel).
    pub fn stack(&self, key: u64) -> Option<Vec<u64>> {
        if let Some(pcs) = self.drained.stacks.get(&key) {
            return Some(pcs.clone());
        }
        self.bpf
            .get::<u64, UserStack>(STACKS_MAP, &key)
            .map(|s| s.pcs().to_vec())
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters(
            self.bpf
                .counters::<{ Counter::COUNT as usize }>(COUNTERS_MAP)?,
        ))
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let allocs = self.allocs()?;
        let interned = &self.drained.stacks;
        let mut stacks = self.bpf.stacks::<UserStack>(
            STACKS_MAP,
            allocs
                .iter()
                .map(|(k, _)| k.stack)
                .filter(|s| !interned.contains_key(s)),
        )?;
        for (key, _) in &allocs {
            if let Some(pcs) = interned.get(&key.stack) {
                stacks.insert(key.stack, pcs.clone());
            }
        }
        let mut goroutine_start_pcs = self.drained.goroutines.clone();
        goroutine_start_pcs.extend(
            self.bpf
                .entries::<GoroutineKey, GoroutineInfo>(GOROUTINES_MAP)?
                .into_iter()
                .map(|(k, v)| ((k.tgid, k.goid), v.start_pc)),
        );
        Ok(Snapshot {
            allocs,
            stacks,
            goroutine_start_pcs,
            counters: self.counters()?,
            frees: self.frees()?.into_iter().collect(),
            sample_rates: self.sample_rates()?,
        })
    }
}

/// The function [`AllocProbes::measure_trap_ns`] probes in gomemtrace itself.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gomemtrace_trap_calibration(x: u64) -> u64 {
    std::hint::black_box(x) ^ 0x5a
}
