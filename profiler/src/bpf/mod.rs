//! The only module that talks to the kernel's BPF interfaces (aya). gomemtrace's eBPF
//! object is loaded once per gomemtrace process, by [`Bpf::load`]; every capability gets a
//! typed handle on that one object ([`AllocProbes`], [`GcProbes`], [`MarkProbes`],
//! [`RtProbes`], [`NumaProbes`], [`ProcEvents`]) that attaches its programs per process,
//! writes its per-process settings, reads its maps and drains its ring buffer.

mod alloc;
mod alloc_drain;
mod batch;
mod gc;
mod numa;
mod procevents;
mod rt;

use std::{
    collections::HashSet,
    num::NonZeroU32,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};

pub use alloc::{AllocProbes, Counters, Snapshot};
pub use gc::{GcProbes, MarkProbes, MarkSnapshot};
pub use numa::{HINT_FAULT_FUNCTION, NumaProbes, config as numa_config};
pub use procevents::{Lifecycle, ProcEvents};
pub use rt::{RtCounters, RtProbes};

use crate::error::UserError;

/// How many times this process loaded the eBPF object (the agent: once, whatever it
/// traces; exported as a metric so that a regression shows).
static OBJECT_LOADS: AtomicUsize = AtomicUsize::new(0);

/// The eBPF object, loaded once and shared by every capability's handle (a cheap clone).
/// Handles live on one thread at a time; the lock only makes the sharing sound.
#[derive(Clone)]
pub struct Bpf(Arc<Mutex<Object>>);

struct Object {
    ebpf: Ebpf,
    /// Programs verified and loaded into the kernel so far.
    loaded: HashSet<String>,
}

impl Bpf {
    /// Loads gomemtrace's eBPF object: creates its maps (programs are verified when each is
    /// first used). A refusal for lack of privileges becomes [`UserError::NotPermitted`].
    pub fn load() -> anyhow::Result<Self> {
        // aya probes the kernel's features by loading small programs first, and reads a
        // refusal there as a missing feature (and then fails on something else, far from
        // the cause): a program of the kind gomemtrace loads is tried here first.
        match aya::sys::is_program_supported(aya::programs::ProgramType::KProbe) {
            Ok(true) => {}
            Ok(false) => {
                return Err(UserError::KernelUnsupported {
                    what: "uprobe BPF programs".into(),
                    why: "the kernel does not know the program type".into(),
                }
                .into());
            }
            Err(e) => return Err(kernel_refusal("load a BPF program", e.into())),
        }
        let bytecode = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gomemtrace-probes"));
        let ebpf = Ebpf::load(bytecode).map_err(|e| {
            let what = match &e {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, .. }) => {
                    format!("create BPF map `{name}`")
                }
                _ => "load eBPF probes".into(),
            };
            kernel_refusal(what, e.into())
        })?;
        OBJECT_LOADS.fetch_add(1, Ordering::Relaxed);
        Ok(Self(Arc::new(Mutex::new(Object {
            ebpf,
            loaded: HashSet::new(),
        }))))
    }

    /// How many times this process loaded the object.
    pub fn loads() -> usize {
        OBJECT_LOADS.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Object> {
        // A handle that panicked mid-call leaves the maps as the kernel has them: usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the object.
    fn with<R>(&self, f: impl FnOnce(&mut Ebpf) -> R) -> R {
        f(&mut self.lock().ebpf)
    }

    /// Takes ring buffer `name` out of the object: one reader per process.
    fn take_ring(&self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        let map = self.with(|ebpf| ebpf.take_map(name)).with_context(|| {
            format!("{name} ring buffer missing from the eBPF object or already taken")
        })?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Verifies and loads uprobe `name` unless done already.
    fn load_uprobe(&self, name: &str) -> anyhow::Result<()> {
        let mut object = self.lock();
        if object.loaded.contains(name) {
            return Ok(());
        }
        uprobe(&mut object.ebpf, name)?
            .load()
            .map_err(|e| kernel_refusal(format!("verify the {name} probe"), e.into()))?;
        object.loaded.insert(name.to_string());
        Ok(())
    }

    /// Loads (once) and attaches uprobe `program` at each file offset of `binary`, for
    /// `pid` only; the links are added to `links`.
    fn attach_uprobe(
        &self,
        links: &mut Links,
        program: &str,
        binary: &Path,
        file_offsets: &[u64],
        pid: u32,
    ) -> anyhow::Result<()> {
        let scope = NonZeroU32::new(pid).context("pid 0")?;
        self.load_uprobe(program)?;
        let mut object = self.lock();
        let probe = uprobe(&mut object.ebpf, program)?;
        for &offset in file_offsets {
            let link = probe
                .attach(
                    [UProbeAttachLocation::AbsoluteOffset(offset)],
                    binary,
                    UProbeScope::OneProcess(scope),
                )
                .map_err(|e| {
                    kernel_refusal(
                        format!(
                            "attach {program} uprobe at {}+{offset:#x}",
                            binary.display()
                        ),
                        e.into(),
                    )
                })?;
            links.0.push(Link {
                program: program.to_string(),
                pid,
                id: link,
                offsets: 1,
            });
        }
        Ok(())
    }

    /// Closes the links of `links` that `which(program, pid)` selects; returns how many.
    /// Each close waits for an RCU grace period in the kernel (~0.1 s each on the
    /// development VM), so they are closed on parallel threads: the grace periods overlap.
    fn close_links(
        &self,
        links: &mut Links,
        which: impl Fn(&str, u32) -> bool,
    ) -> anyhow::Result<usize> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut links.0)
            .into_iter()
            .partition(|link| which(&link.program, link.pid));
        links.0 = kept;
        let mut owned = Vec::new();
        {
            let mut object = self.lock();
            for link in gone {
                owned.push(
                    uprobe(&mut object.ebpf, &link.program)?
                        .take_link(link.id)
                        .with_context(|| format!("detach the {} probe", link.program))?,
                );
            }
        }
        let closed = owned.len();
        std::thread::scope(|scope| {
            for link in owned {
                scope.spawn(move || drop(link));
            }
        });
        Ok(closed)
    }

    /// Writes `key → value` into hash map `name`.
    fn insert<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        key: &K,
        value: &V,
    ) -> anyhow::Result<()> {
        self.with(|ebpf| {
            let mut map: BpfHashMap<&mut MapData, K, V> =
                BpfHashMap::try_from(ebpf.map_mut(name).with_context(|| format!("{name} map"))?)?;
            map.insert(key, value, 0)
                .with_context(|| format!("write the {name} map"))
        })
    }

    /// The value of `key` in hash map `name`, if there.
    fn get<K: aya::Pod, V: aya::Pod>(&self, name: &str, key: &K) -> Option<V> {
        self.with(|ebpf| {
            let map: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(ebpf.map(name)?).ok()?;
            map.get(key, 0).ok()
        })
    }

    /// Moves every entry of hash map `name` out of the kernel: in batches where the kernel
    /// has them ([`batch::take_all`]), the rest (an older kernel, an error midway) key by
    /// key. Entries the programs add meanwhile may stay for the next take.
    fn take_all<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> anyhow::Result<Vec<(K, V)>> {
        let taken = self.with(|ebpf| {
            let map = ebpf.map(name).with_context(|| format!("{name} map"))?;
            let (aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data)) = map else {
                anyhow::bail!("{name} is not a hash map");
            };
            let fd = data.info()?.fd()?;
            Ok(batch::take_all::<K, V>(std::os::fd::AsFd::as_fd(&fd)))
        })?;
        let mut entries = taken.entries;
        if taken.stopped.is_some() {
            let rest: Vec<(K, V)> = self.entries(name)?;
            self.remove_these::<K, V>(name, rest.iter().map(|(k, _)| k))?;
            entries.extend(rest);
        }
        Ok(entries)
    }

    /// Every entry of hash map `name` (entries that vanish during the walk are skipped).
    fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> anyhow::Result<Vec<(K, V)>> {
        self.with(|ebpf| {
            let map: BpfHashMap<&MapData, K, V> =
                BpfHashMap::try_from(ebpf.map(name).with_context(|| format!("{name} map"))?)?;
            Ok(map.iter().filter_map(Result::ok).collect())
        })
    }

    /// Deletes the keys of hash map `name` that `which` selects.
    fn remove_keys<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        which: impl Fn(&K) -> bool,
    ) -> anyhow::Result<()> {
        self.with(|ebpf| {
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
        })
    }

    /// Deletes these keys of hash map `name` (keys already gone are fine).
    fn remove_these<'k, K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        keys: impl Iterator<Item = &'k K>,
    ) -> anyhow::Result<()> {
        self.with(|ebpf| {
            let mut map: BpfHashMap<&mut MapData, K, V> =
                BpfHashMap::try_from(ebpf.map_mut(name).with_context(|| format!("{name} map"))?)?;
            for key in keys {
                let _ = map.remove(key);
            }
            Ok(())
        })
    }

    /// Writes `value` at `index` of array map `name`.
    fn set_u32(&self, name: &str, index: u32, value: u32) -> anyhow::Result<()> {
        self.with(|ebpf| {
            let mut map: Array<&mut MapData, u32> =
                Array::try_from(ebpf.map_mut(name).with_context(|| format!("{name} map"))?)?;
            map.set(index, &value, 0)
                .with_context(|| format!("write the {name} map"))
        })
    }

    /// How many keys of hash map `name` there are now (0 where it cannot be read).
    fn count_keys<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> usize {
        self.with(|ebpf| {
            ebpf.map(name)
                .and_then(|map| BpfHashMap::<&MapData, K, V>::try_from(map).ok())
                .map(|map| map.keys().filter_map(Result::ok).count())
                .unwrap_or(0)
        })
    }

    /// The stored stacks of stack map `name` with these keys (leaf first); key 0 is "no
    /// stack".
    fn stacks<S: aya::Pod + StackPcs>(
        &self,
        name: &str,
        keys: impl Iterator<Item = u64>,
    ) -> anyhow::Result<std::collections::HashMap<u64, Vec<u64>>> {
        self.with(|ebpf| {
            let map: BpfHashMap<&MapData, u64, S> =
                BpfHashMap::try_from(ebpf.map(name).with_context(|| format!("{name} map"))?)?;
            let mut out = std::collections::HashMap::new();
            for key in keys.filter(|&k| k != gomemtrace_common::NO_STACK) {
                if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(key)
                    && let Ok(stack) = map.get(&key, 0)
                {
                    slot.insert(stack.pcs().to_vec());
                }
            }
            Ok(out)
        })
    }

    /// Per-CPU counter array `name`, summed over CPUs, for indexes `0..N`.
    fn counters<const N: usize>(&self, name: &str) -> anyhow::Result<[u64; N]> {
        self.with(|ebpf| {
            let map: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(ebpf.map(name).with_context(|| format!("{name} map"))?)?;
            let mut sums = [0; N];
            for (index, sum) in sums.iter_mut().enumerate() {
                *sum = map.get(&(index as u32), 0)?.iter().sum();
            }
            Ok(sums)
        })
    }
}

/// The records of type `T` waiting in `ring`, oldest first (shorter records are skipped).
fn drain<T: aya::Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: the record holds at least size_of::<T>() bytes written by the probe's
            // `output` of a `T`; `T: Pod` (repr(C), integers only) is valid for any bit
            // pattern, and read_unaligned copes with the record's alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
    }
    out
}

/// A stored user stack: its PCs, leaf first.
trait StackPcs {
    fn pcs(&self) -> &[u64];
}

impl StackPcs for gomemtrace_common::UserStack {
    fn pcs(&self) -> &[u64] {
        gomemtrace_common::UserStack::pcs(self)
    }
}

impl StackPcs for gomemtrace_common::RtStack {
    fn pcs(&self) -> &[u64] {
        gomemtrace_common::RtStack::pcs(self)
    }
}

/// One uprobe link and the process it is for.
struct Link {
    program: String,
    pid: u32,
    id: UProbeLinkId,
    /// Offsets it traps at (a multi-uprobe link has many).
    offsets: usize,
}

/// The uprobe links a handle attached and holds now.
#[derive(Default)]
struct Links(Vec<Link>);

impl Links {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Offsets trapped at through these links.
    fn offsets(&self) -> usize {
        self.0.iter().map(|link| link.offsets).sum()
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("probe {name} missing from the eBPF object"))?
        .try_into()?)
}

/// `err` as the user's error where the kernel refused `what` for want of permission or
/// memory (the OS error under aya's), else `err` with `what` as its context.
fn kernel_refusal(what: impl Into<String>, err: anyhow::Error) -> anyhow::Error {
    let what = what.into();
    let os_error = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
        .and_then(|io| Some((io.raw_os_error()?, io.to_string())));
    match os_error {
        Some((libc::EPERM | libc::EACCES, error)) => {
            UserError::KernelForbids { what, error }.into()
        }
        Some((libc::ENOMEM, error)) => UserError::KernelOutOfMemory { what, error }.into(),
        _ => err.context(what),
    }
}
