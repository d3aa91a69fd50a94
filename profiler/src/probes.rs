//! The only module that talks to the kernel's BPF interfaces: loads the probes, registers
//! a process's configuration, attaches uprobes, and reads the aggregated maps back.

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use gomemtrace_common::{
    ALLOCS_MAP, AllocKey, AllocStats, CONFIG_MAP, COUNTERS_MAP, Counter, FREES_MAP, GC_CONFIG_MAP,
    GC_COUNTERS_MAP, GC_EVENTS_MAP, GC_FINISH_TRANSITION_PROGRAM, GC_MARK_DONE_PROGRAM,
    GC_MARK_TERMINATION_PROGRAM, GC_START_PROGRAM, GC_START_THE_WORLD_PROGRAM,
    GC_START_TRANSITION_PROGRAM, GC_STOP_THE_WORLD_PROGRAM, GOROUTINES_MAP, GcConfig, GcCounter,
    GcEvent, GoroutineInfo, GoroutineKey, LIVE_MAP, LiveKey, LiveObject, NO_STACK, ProcessConfig,
    RATES_MAP, STACKS_MAP, UserStack,
};

use crate::error::UserError;

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

pub struct AllocProbes {
    ebpf: Ebpf,
    loaded: Vec<&'static str>,
    attached: usize,
    /// The uprobe links attached now and the process each is for, for
    /// [`AllocProbes::detach_all`] (duty-cycled mode) and [`AllocProbes::detach_pid`].
    links: Vec<(&'static str, u32, aya::programs::uprobe::UProbeLinkId)>,
}

impl AllocProbes {
    /// Loads the eBPF object; programs are verified when first attached.
    pub fn load() -> anyhow::Result<Self> {
        let ebpf = load_object()?;
        Ok(Self {
            ebpf,
            loaded: Vec::new(),
            attached: 0,
            links: Vec::new(),
        })
    }

    /// Registers `pid`'s settings; its probe hits are ignored (counted as `NoConfig`) until
    /// then.
    pub fn configure(&mut self, pid: u32, config: ProcessConfig) -> anyhow::Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, ProcessConfig> =
            BpfHashMap::try_from(self.ebpf.map_mut(CONFIG_MAP).context("CONFIG map")?)?;
        map.insert(&pid, &config, 0)
            .context("write process config")?;
        Ok(())
    }

    /// Forgets `pid`'s settings: its probe hits are ignored (counted as `NoConfig`) from
    /// now on.
    pub fn unconfigure(&mut self, pid: u32) -> anyhow::Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, ProcessConfig> =
            BpfHashMap::try_from(self.ebpf.map_mut(CONFIG_MAP).context("CONFIG map")?)?;
        map.remove(&pid).context("remove process config")?;
        Ok(())
    }

    /// Attaches `program_name` (e.g. [`gomemtrace_common::ALLOC_PROGRAM`]) at each file offset of `binary`,
    /// for `pid` only.
    pub fn attach(
        &mut self,
        program_name: &'static str,
        binary: &Path,
        file_offsets: &[u64],
        tgid: u32,
    ) -> anyhow::Result<()> {
        let pid = NonZeroU32::new(tgid).context("pid 0")?;
        let program: &mut UProbe = program(&mut self.ebpf, program_name)?;
        if !self.loaded.contains(&program_name) {
            program
                .load()
                .with_context(|| format!("verify the {program_name} probe"))?;
            self.loaded.push(program_name);
        }
        for &offset in file_offsets {
            let link = program
                .attach(
                    [UProbeAttachLocation::AbsoluteOffset(offset)],
                    binary,
                    UProbeScope::OneProcess(pid),
                )
                .with_context(|| format!("attach uprobe at {}+{offset:#x}", binary.display()))?;
            self.links.push((program_name, tgid, link));
            self.attached += 1;
        }
        Ok(())
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
        let program: &mut UProbe = program(&mut self.ebpf, ALLOC_MULTI_PROGRAM)?;
        if !self.loaded.contains(&ALLOC_MULTI_PROGRAM) {
            program
                .load()
                .context("verify the multi-uprobe allocation probe")?;
            self.loaded.push(ALLOC_MULTI_PROGRAM);
        }
        let link = program
            .attach(
                file_offsets
                    .iter()
                    .map(|&o| UProbeAttachLocation::AbsoluteOffset(o)),
                binary,
                UProbeScope::OneProcess(pid),
            )
            .with_context(|| format!("attach multi-uprobe on {}", binary.display()))?;
        self.links.push((ALLOC_MULTI_PROGRAM, tgid, link));
        self.attached += file_offsets.len();
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
        let program: &mut UProbe =
            program(&mut self.ebpf, gomemtrace_common::EMPTY_PROGRAM).ok()?;
        if !self.loaded.contains(&gomemtrace_common::EMPTY_PROGRAM) {
            program.load().ok()?;
            self.loaded.push(gomemtrace_common::EMPTY_PROGRAM);
        }
        let bare = time(calls);
        let link = program
            .attach(
                [UProbeAttachLocation::Symbol("gomemtrace_trap_calibration")],
                "/proc/self/exe",
                UProbeScope::OneProcess(pid),
            )
            .ok()?;
        let probed = time(calls);
        let _ = program.detach(link);
        Some(((probed - bare) / calls as f64).max(0.0))
    }

    /// Removes every uprobe attached so far: the target no longer traps at those offsets.
    /// Each removal waits for an RCU grace period in the kernel (~0.1 s each on the
    /// development VM), so the links are closed on parallel threads: the grace periods
    /// overlap.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        self.detach_where(|_, _| true)
    }

    /// Removes the uprobes attached for `tgid` (the agent, when the process exited).
    pub fn detach_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.detach_where(|_, pid| pid == tgid)
    }

    /// Removes the links for which `which(program name, pid)` holds.
    fn detach_where(&mut self, which: impl Fn(&str, u32) -> bool) -> anyhow::Result<()> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|(name, pid, _)| which(name, *pid));
        self.links = kept;
        let mut links = Vec::new();
        for (name, _, link) in gone {
            links.push(
                program(&mut self.ebpf, name)?
                    .take_link(link)
                    .with_context(|| format!("detach the {name} probe"))?,
            );
        }
        self.attached = self.attached.saturating_sub(links.len());
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
        Ok(())
    }

    /// Detaches every link of `program_name`.
    pub fn detach_program(&mut self, program_name: &'static str) -> anyhow::Result<()> {
        self.detach_where(|name, _| name == program_name)
    }

    /// Uprobe links held now.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Deletes every map entry of `tgid` (settings, aggregated keys, live sampled objects,
    /// goroutines, sample rate) and the stacks no remaining key refers to: a process that
    /// exited leaves nothing behind in the kernel.
    pub fn forget_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        let _ = self.unconfigure(tgid);
        remove_keys::<u32, u64>(&mut self.ebpf, RATES_MAP, |pid| *pid == tgid)?;
        remove_keys::<AllocKey, AllocStats>(&mut self.ebpf, ALLOCS_MAP, |k| k.tgid == tgid)?;
        remove_keys::<AllocKey, AllocStats>(&mut self.ebpf, FREES_MAP, |k| k.tgid == tgid)?;
        remove_keys::<GoroutineKey, GoroutineInfo>(&mut self.ebpf, GOROUTINES_MAP, |k| {
            k.tgid == tgid
        })?;
        remove_keys::<LiveKey, LiveObject>(&mut self.ebpf, LIVE_MAP, |k| k.tgid == tgid)?;
        let referenced: std::collections::HashSet<u64> = [ALLOCS_MAP, FREES_MAP]
            .into_iter()
            .filter_map(|name| self.ebpf.map(name))
            .filter_map(|map| BpfHashMap::<&MapData, AllocKey, AllocStats>::try_from(map).ok())
            .flat_map(|map| map.keys().filter_map(Result::ok).collect::<Vec<_>>())
            .map(|k| k.stack)
            .collect();
        remove_keys::<u64, UserStack>(&mut self.ebpf, STACKS_MAP, |k| !referenced.contains(k))?;
        Ok(())
    }

    /// Entries of each map that holds per-process data (the agent exposes them, so a
    /// leak after processes exit shows).
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        vec![
            (
                CONFIG_MAP,
                count_keys::<u32, ProcessConfig>(&self.ebpf, CONFIG_MAP, |_| true).unwrap_or(0),
            ),
            (
                RATES_MAP,
                count_keys::<u32, u64>(&self.ebpf, RATES_MAP, |_| true).unwrap_or(0),
            ),
            (
                ALLOCS_MAP,
                count_keys::<AllocKey, AllocStats>(&self.ebpf, ALLOCS_MAP, |_| true).unwrap_or(0),
            ),
            (
                FREES_MAP,
                count_keys::<AllocKey, AllocStats>(&self.ebpf, FREES_MAP, |_| true).unwrap_or(0),
            ),
            (
                GOROUTINES_MAP,
                count_keys::<GoroutineKey, GoroutineInfo>(&self.ebpf, GOROUTINES_MAP, |_| true)
                    .unwrap_or(0),
            ),
            (
                LIVE_MAP,
                count_keys::<LiveKey, LiveObject>(&self.ebpf, LIVE_MAP, |_| true).unwrap_or(0),
            ),
            (
                STACKS_MAP,
                count_keys::<u64, UserStack>(&self.ebpf, STACKS_MAP, |_| true).unwrap_or(0),
            ),
        ]
    }

    /// The allocation map alone (cheaper than [`AllocProbes::snapshot`]).
    pub fn allocs(&self) -> anyhow::Result<Vec<(AllocKey, AllocStats)>> {
        let allocs: BpfHashMap<&MapData, AllocKey, AllocStats> =
            BpfHashMap::try_from(self.ebpf.map(ALLOCS_MAP).context("ALLOCS map")?)?;
        Ok(allocs.iter().collect::<Result<_, _>>()?)
    }

    /// Runtime-sampled mode: frees of sampled objects per key.
    pub fn frees(&self) -> anyhow::Result<Vec<(AllocKey, AllocStats)>> {
        let frees: BpfHashMap<&MapData, AllocKey, AllocStats> =
            BpfHashMap::try_from(self.ebpf.map(FREES_MAP).context("FREES map")?)?;
        Ok(frees.iter().filter_map(Result::ok).collect())
    }

    /// Runtime-sampled mode: `MemProfileRate` per process, as read at its latest sample.
    pub fn sample_rates(&self) -> anyhow::Result<HashMap<u32, u64>> {
        let rates: BpfHashMap<&MapData, u32, u64> =
            BpfHashMap::try_from(self.ebpf.map(RATES_MAP).context("RATES map")?)?;
        Ok(rates.iter().filter_map(Result::ok).collect())
    }

    /// Runtime-sampled mode: `tgid`'s sampled objects still live (allocated and not yet
    /// seen freed), by address. The map changes while it is walked: a walk that restarts
    /// (its previous key was deleted) sees entries again, hence by address, and it stops
    /// after twice the map's capacity (said in [`LiveObjects::cut_short`]).
    pub fn live_objects(&self, tgid: u32) -> anyhow::Result<LiveObjects> {
        let map: BpfHashMap<&MapData, LiveKey, LiveObject> =
            BpfHashMap::try_from(self.ebpf.map(LIVE_MAP).context("LIVE map")?)?;
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
    }

    /// The PCs of stack `key`, leaf first, if stored.
    pub fn stack(&self, key: u64) -> Option<Vec<u64>> {
        let map: BpfHashMap<&MapData, u64, UserStack> =
            BpfHashMap::try_from(self.ebpf.map(STACKS_MAP)?).ok()?;
        map.get(&key, 0).ok().map(|s| s.pcs().to_vec())
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(COUNTERS_MAP).context("COUNTERS map")?)?;
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            let per_cpu = map.get(&(counter as u32), 0)?;
            counters.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let allocs: BpfHashMap<&MapData, AllocKey, AllocStats> =
            BpfHashMap::try_from(self.ebpf.map(ALLOCS_MAP).context("ALLOCS map")?)?;
        let allocs: Vec<(AllocKey, AllocStats)> = allocs.iter().collect::<Result<_, _>>()?;

        let stack_map: BpfHashMap<&MapData, u64, UserStack> =
            BpfHashMap::try_from(self.ebpf.map(STACKS_MAP).context("STACKS map")?)?;
        let mut stacks = HashMap::new();
        for key in allocs
            .iter()
            .map(|(k, _)| k.stack)
            .filter(|&k| k != NO_STACK)
        {
            if let std::collections::hash_map::Entry::Vacant(slot) = stacks.entry(key)
                && let Ok(stack) = stack_map.get(&key, 0)
            {
                slot.insert(stack.pcs().to_vec());
            }
        }

        let goroutines: BpfHashMap<&MapData, GoroutineKey, GoroutineInfo> =
            BpfHashMap::try_from(self.ebpf.map(GOROUTINES_MAP).context("GOROUTINES map")?)?;
        let goroutine_start_pcs = goroutines
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.tgid, k.goid), v.start_pc))
            .collect();
        let frees: BpfHashMap<&MapData, AllocKey, AllocStats> =
            BpfHashMap::try_from(self.ebpf.map(FREES_MAP).context("FREES map")?)?;
        let frees = frees.iter().filter_map(Result::ok).collect();
        let rates: BpfHashMap<&MapData, u32, u64> =
            BpfHashMap::try_from(self.ebpf.map(RATES_MAP).context("RATES map")?)?;
        let sample_rates = rates.iter().filter_map(Result::ok).collect();
        Ok(Snapshot {
            allocs,
            stacks,
            goroutine_start_pcs,
            counters: self.counters()?,
            frees,
            sample_rates,
        })
    }
}

/// The function [`AllocProbes::measure_trap_ns`] probes in gomemtrace itself.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gomemtrace_trap_calibration(x: u64) -> u64 {
    std::hint::black_box(x) ^ 0x5a
}

/// The multi-uprobe twin of [`gomemtrace_common::ALLOC_PROGRAM`].
const ALLOC_MULTI_PROGRAM: &str = "alloc_entry_multi";

/// Deletes the keys of map `name` that `which` selects.
/// A uprobe link and the process it is for.
pub(crate) type PidLink = (String, u32, aya::programs::uprobe::UProbeLinkId);

/// Takes `pid`'s links out of `links` and closes them; returns how many. Each close waits
/// for an RCU grace period in the kernel: they overlap on threads.
pub(crate) fn close_links_of(
    ebpf: &mut Ebpf,
    links: &mut Vec<PidLink>,
    pid: u32,
) -> anyhow::Result<usize> {
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(links)
        .into_iter()
        .partition(|(_, p, _)| *p == pid);
    *links = kept;
    let mut owned = Vec::new();
    for (name, _, link) in gone {
        owned.push(program(ebpf, &name)?.take_link(link)?);
    }
    let closed = owned.len();
    std::thread::scope(|scope| {
        for link in owned {
            scope.spawn(move || drop(link));
        }
    });
    Ok(closed)
}

pub(crate) fn remove_keys<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    which: impl Fn(&K) -> bool,
) -> anyhow::Result<()> {
    let mut map: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).with_context(|| format!("{name} map"))?)?;
    // Collected first: deleting while walking the keys restarts the kernel's iteration.
    let doomed: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| which(k))
        .collect();
    for key in doomed {
        // Already gone (the kernel or a concurrent delete) is fine.
        let _ = map.remove(&key);
    }
    Ok(())
}

pub(crate) fn count_keys<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &str,
    which: impl Fn(&K) -> bool,
) -> anyhow::Result<usize> {
    let map: BpfHashMap<&MapData, K, V> =
        BpfHashMap::try_from(ebpf.map(name).with_context(|| format!("{name} map"))?)?;
    Ok(map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| which(k))
        .count())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("probe {name} missing from the eBPF object"))?
        .try_into()?)
}

/// Loads gomemtrace's eBPF object (programs are verified when each is loaded); a refusal
/// for lack of privileges becomes [`UserError::NotPermitted`]. Every loader starts here.
pub(crate) fn load_object() -> anyhow::Result<Ebpf> {
    let bytecode = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gomemtrace-probes"));
    Ebpf::load(bytecode).map_err(|e| {
        if is_permission_error(&e) {
            anyhow::Error::new(UserError::NotPermitted {
                what: "loading eBPF programs".into(),
            })
        } else {
            anyhow::Error::new(e).context("load eBPF probes")
        }
    })
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("EPERM")
        || text.contains("Operation not permitted")
        || text.contains("PermissionDenied")
}

/// The GC-cycle probes (`gomemtrace gctrace`): entry uprobes on the runtime's GC and
/// stop/start-the-world functions; finished cycles arrive through a ring buffer.
pub struct GcProbes {
    ebpf: Ebpf,
    events: aya::maps::RingBuf<MapData>,
    attached: usize,
    /// The links attached now and the process each is for.
    links: Vec<PidLink>,
}

impl GcProbes {
    /// Loads and verifies every GC program.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = load_object()?;
        for name in GC_PROGRAMS {
            let program: &mut UProbe = program(&mut ebpf, name)?;
            program
                .load()
                .with_context(|| format!("verify the {name} probe"))?;
        }
        let events = aya::maps::RingBuf::try_from(
            ebpf.take_map(GC_EVENTS_MAP)
                .context("GC_EVENTS map missing from the eBPF object")?,
        )?;
        Ok(Self {
            ebpf,
            events,
            attached: 0,
            links: Vec::new(),
        })
    }

    /// Removes `tgid`'s uprobes and its entries of the GC maps (the agent, when the
    /// process exited).
    pub fn forget_pid(&mut self, tgid: u32) -> anyhow::Result<()> {
        let closed = close_links_of(&mut self.ebpf, &mut self.links, tgid)?;
        self.attached = self.attached.saturating_sub(closed);
        remove_keys::<u32, GcConfig>(&mut self.ebpf, GC_CONFIG_MAP, |p| *p == tgid)?;
        remove_keys::<u32, gomemtrace_common::GcState>(
            &mut self.ebpf,
            gomemtrace_common::GC_STATE_MAP,
            |p| *p == tgid,
        )?;
        remove_keys::<gomemtrace_common::GcCallerKey, gomemtrace_common::GcCaller>(
            &mut self.ebpf,
            gomemtrace_common::GC_CALLERS_MAP,
            |k| k.tgid == tgid,
        )?;
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
                count_keys::<u32, GcConfig>(&self.ebpf, GC_CONFIG_MAP, |_| true).unwrap_or(0),
            ),
            (
                gomemtrace_common::GC_STATE_MAP,
                count_keys::<u32, gomemtrace_common::GcState>(
                    &self.ebpf,
                    gomemtrace_common::GC_STATE_MAP,
                    |_| true,
                )
                .unwrap_or(0),
            ),
        ]
    }

    /// Registers `pid`'s settings; GC probe hits of other processes are ignored.
    pub fn configure(&mut self, pid: u32, config: &GcConfig) -> anyhow::Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, GcConfig> =
            BpfHashMap::try_from(self.ebpf.map_mut(GC_CONFIG_MAP).context("GC_CONFIG map")?)?;
        map.insert(&pid, config, 0)
            .context("write GC probe config")?;
        Ok(())
    }

    /// Attaches `program` (one of the `GC_*_PROGRAM` names) at `file_offset` of `binary`,
    /// for `pid` only.
    pub fn attach(
        &mut self,
        program_name: &str,
        binary: &Path,
        file_offset: u64,
        pid: u32,
    ) -> anyhow::Result<()> {
        let pid = NonZeroU32::new(pid).context("pid 0")?;
        let program: &mut UProbe = program(&mut self.ebpf, program_name)?;
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
        self.attached += 1;
        Ok(())
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// The cycles that finished since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<GcEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<GcEvent>() {
                // SAFETY: the ring buffer record was written by `GC_EVENTS.output` with a
                // `GcEvent` (repr(C), integers only, any bit pattern valid);
                // read_unaligned copes with the record's alignment.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<GcEvent>()) });
            }
        }
        events
    }

    /// GC probe counters, summed over CPUs, indexed by `GcCounter`.
    pub fn counters(&self) -> anyhow::Result<[u64; GcCounter::COUNT as usize]> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(GC_COUNTERS_MAP).context("GC_COUNTERS map")?)?;
        let mut counters = [0; GcCounter::COUNT as usize];
        for counter in GcCounter::ALL {
            counters[counter as usize] = map.get(&(counter as u32), 0)?.iter().sum();
        }
        Ok(counters)
    }
}

const GC_PROGRAMS: [&str; 7] = [
    GC_START_PROGRAM,
    GC_MARK_DONE_PROGRAM,
    GC_MARK_TERMINATION_PROGRAM,
    GC_STOP_THE_WORLD_PROGRAM,
    GC_START_THE_WORLD_PROGRAM,
    GC_FINISH_TRANSITION_PROGRAM,
    GC_START_TRANSITION_PROGRAM,
];

/// The mark-assist and mark-worker probes (`gomemtrace gctrace --assists`): programs of
/// the same eBPF object as [`GcProbes`], loaded and attached through it.
pub struct MarkProbes {
    events: aya::maps::RingBuf<MapData>,
}

/// What the mark probes aggregated per (goroutine, stack, drafting caller).
#[derive(Debug, Default)]
pub struct MarkSnapshot {
    pub assists: Vec<(gomemtrace_common::AssistKey, gomemtrace_common::AssistStats)>,
    /// Stack key → user stack PCs, leaf first (`[0]` is the probed instruction).
    pub stacks: HashMap<u64, Vec<u64>>,
    pub counters: [u64; gomemtrace_common::MarkCounter::COUNT as usize],
}

impl MarkProbes {
    /// Loads and verifies the mark programs into `gc`'s object and registers `pid`.
    pub fn load(
        gc: &mut GcProbes,
        pid: u32,
        config: &gomemtrace_common::MarkConfig,
    ) -> anyhow::Result<Self> {
        for name in gomemtrace_common::MARK_PROGRAMS {
            let program: &mut UProbe = program(&mut gc.ebpf, name)?;
            program
                .load()
                .with_context(|| format!("verify the {name} probe"))?;
        }
        let mut map: BpfHashMap<&mut MapData, u32, gomemtrace_common::MarkConfig> =
            BpfHashMap::try_from(
                gc.ebpf
                    .map_mut(gomemtrace_common::MARK_CONFIG_MAP)
                    .context("MARK_CONFIG map")?,
            )?;
        map.insert(&pid, config, 0)
            .context("write mark probe config")?;
        let events = aya::maps::RingBuf::try_from(
            gc.ebpf
                .take_map(gomemtrace_common::MARK_EVENTS_MAP)
                .context("MARK_EVENTS map missing from the eBPF object")?,
        )?;
        Ok(Self { events })
    }

    /// The cycle-end totals sent since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<gomemtrace_common::MarkCycleEvent> {
        use gomemtrace_common::MarkCycleEvent;
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<MarkCycleEvent>() {
                // SAFETY: written by `MARK_EVENTS.output` with a `MarkCycleEvent`
                // (repr(C), integers only); read_unaligned copes with the alignment.
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<MarkCycleEvent>())
                });
            }
        }
        events
    }

    /// The per-site assist table, its stacks and the counters.
    pub fn snapshot(gc: &GcProbes) -> anyhow::Result<MarkSnapshot> {
        use gomemtrace_common::{
            AssistKey, AssistStats, MARK_ASSISTS_MAP, MARK_COUNTERS_MAP, MARK_STACKS_MAP,
            MarkCounter,
        };
        let assists: BpfHashMap<&MapData, AssistKey, AssistStats> =
            BpfHashMap::try_from(gc.ebpf.map(MARK_ASSISTS_MAP).context("MARK_ASSISTS map")?)?;
        let assists: Vec<(AssistKey, AssistStats)> = assists.iter().collect::<Result<_, _>>()?;
        let stack_map: BpfHashMap<&MapData, u64, UserStack> =
            BpfHashMap::try_from(gc.ebpf.map(MARK_STACKS_MAP).context("MARK_STACKS map")?)?;
        let mut stacks = HashMap::new();
        for key in assists
            .iter()
            .map(|(k, _)| k.stack)
            .filter(|&k| k != NO_STACK)
        {
            if let std::collections::hash_map::Entry::Vacant(slot) = stacks.entry(key)
                && let Ok(stack) = stack_map.get(&key, 0)
            {
                slot.insert(stack.pcs().to_vec());
            }
        }
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            gc.ebpf
                .map(MARK_COUNTERS_MAP)
                .context("MARK_COUNTERS map")?,
        )?;
        let mut counters = [0; MarkCounter::COUNT as usize];
        for counter in MarkCounter::ALL {
            counters[counter as usize] = map.get(&(counter as u32), 0)?.iter().sum();
        }
        Ok(MarkSnapshot {
            assists,
            stacks,
            counters,
        })
    }
}
