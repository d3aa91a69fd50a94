use crate::{
    helpers::{
        Entry, atomic_add, config, count, count_n, counter_array, entry, finish, read_u64, tgid,
    },
    stacks::{StackBounds, StackCounters, checked_user_stack_key},
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::ProbeContext,
};
use gomemtrace_common::{
    AllocKey, AllocStats, Counter, GoroutineInfo, GoroutineKey, MAX_ALLOC_KEYS, MAX_GOROUTINES,
    MAX_PROCESSES, MAX_STACKS, PROCESS_FLAG_NO_GOID, ProcessConfig, UserStack,
};

#[map(name = "CONFIG")]
pub(crate) static CONFIG: HashMap<u32, ProcessConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "ALLOCS")]
static ALLOCS: HashMap<AllocKey, AllocStats> = HashMap::with_max_entries(MAX_ALLOC_KEYS, 0);

/// The second buffer of [`ALLOCS`]: user space drains one while the programs add to the
/// other.
#[map(name = "ALLOCS_ALT")]
static ALLOCS_ALT: HashMap<AllocKey, AllocStats> = HashMap::with_max_entries(MAX_ALLOC_KEYS, 0);

/// 0: the programs add to [`ALLOCS`]; 1: to [`ALLOCS_ALT`]. Flipped by user space.
#[map(name = "ALLOC_BUFFER")]
static ALLOC_BUFFER: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "STACKS")]
pub(crate) static STACKS: HashMap<u64, UserStack> =
    HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);

#[map(name = "GOROUTINES")]
pub(crate) static GOROUTINES: HashMap<GoroutineKey, GoroutineInfo> =
    HashMap::with_max_entries(MAX_GOROUTINES, 0);

#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

counter_array!(Counter => COUNTERS);

/// Goroutine id of the current user goroutine: `g.goid`, or `g.m.curg.goid` when the
/// runtime is on the system stack (g0, whose goid is 0).
#[inline(always)]
fn current_goid(g: u64, cfg: &ProcessConfig) -> Option<(u64, u64)> {
    if g == 0 {
        return None;
    }
    let goid = read_u64(g + cfg.g_goid as u64)?;
    if goid != 0 {
        return Some((g, goid));
    }
    let m = read_u64(g + cfg.g_m as u64)?;
    let curg = read_u64(m + cfg.m_curg as u64)?;
    if curg == 0 {
        // The runtime's own work with no user goroutine (sysmon, GC workers' system
        // stack): goroutine 0, and nothing failed.
        return Some((g, 0));
    }
    Some((curg, read_u64(curg + cfg.g_goid as u64)?))
}

/// Where the frame-pointer walk of an allocation's stack may go ([`StackBounds`]), from
/// the goroutine running, `g` (R14); `None` where its fields cannot be read.
#[inline(always)]
fn stack_bounds(g: u64, cfg: &ProcessConfig) -> Option<StackBounds> {
    if g == 0 {
        return None;
    }
    let mut bounds = StackBounds {
        lo: read_u64(g + cfg.g_stack_lo as u64)?,
        hi: read_u64(g + cfg.g_stack_hi as u64)?,
        next_lo: 0,
        next_hi: 0,
        open_end: false,
    };
    if read_u64(g + cfg.g_goid as u64)? == 0 {
        // The system stack (g0): through `systemstack` the frames continue on the user
        // goroutine's stack, if the thread runs one.
        let m = read_u64(g + cfg.g_m as u64)?;
        let curg = read_u64(m + cfg.m_curg as u64)?;
        if curg == 0 {
            bounds.open_end = true;
        } else if curg != g {
            bounds.next_lo = read_u64(curg + cfg.g_stack_lo as u64)?;
            bounds.next_hi = read_u64(curg + cfg.g_stack_hi as u64)?;
        }
    }
    Some(bounds)
}

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    finish(try_alloc_entry(&ctx))
}

/// [`alloc_entry`] as a multi-uprobe (Linux 6.6+): duty-cycled mode attaches every entry
/// point with one link, which detaches with one RCU grace period instead of one each.
#[uprobe(multi)]
pub fn alloc_entry_multi(ctx: ProbeContext) -> u32 {
    finish(try_alloc_entry(&ctx))
}

/// Does nothing: attached instead of [`alloc_entry`] by the benchmark, to measure the
/// floor cost of a uprobe hit at the same offset.
#[uprobe]
pub fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[inline(always)]
fn try_alloc_entry(ctx: &ProbeContext) -> Result<(), Counter> {
    let tgid = tgid();
    let cfg = *config(&CONFIG, tgid).ok_or(Counter::NoConfig)?;
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    let size = regs.rax;
    if size == 0 {
        return Err(Counter::ZeroSize);
    }
    record_allocation(ctx, tgid, &cfg, regs.rbx, size, 0)?;
    Ok(())
}

/// Counts one allocation event of `size` bytes of type `typ` under its goroutine, user
/// stack and direct caller (and `sample_size`: see [`AllocKey::sample_size`]), and returns
/// the key it was aggregated under; the error is the drop counter of an event that could
/// not be aggregated.
#[inline(always)]
pub(crate) fn record_allocation(
    ctx: &ProbeContext,
    tgid: u32,
    cfg: &ProcessConfig,
    typ: u64,
    size: u64,
    sample_size: u32,
) -> Result<AllocKey, Counter> {
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    count(Counter::Events);
    count_n(Counter::EventBytes, size);
    let (g, goid) = if cfg.flags & PROCESS_FLAG_NO_GOID != 0 {
        (0, 0)
    } else {
        match current_goid(regs.r14, cfg) {
            Some(found) => found,
            None => {
                count(Counter::GoidUnreadable);
                (0, 0)
            }
        }
    };
    let key = AllocKey {
        tgid,
        sample_size,
        stack: checked_user_stack_key(
            ctx,
            stack_bounds(regs.r14, cfg).as_ref(),
            &STACKS,
            StackCounters {
                unreadable: Counter::StackUnreadable,
                map_full: Counter::StackMapFull,
                cycle: Counter::StackCycle,
                off_stack: Counter::StackOffStack,
            },
        ),
        goid,
        typ,
        caller_pc: read_u64(regs.rsp).unwrap_or(0),
    };
    // A goroutine's first allocation always makes a new key (the goid is part of it), so
    // its start function is looked up only then, not on every event.
    if add(&key, size)? == Added::NewKey && goid != 0 {
        remember_goroutine(tgid, g, goid, cfg);
    }
    Ok(key)
}

/// Whether [`add`] created the key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Added {
    Existing,
    NewKey,
}

/// Adds one allocation of `size` bytes to a map value shared by all CPUs.
///
/// # Safety
/// `stats` must point at a live map value.
#[inline(always)]
pub(crate) unsafe fn add_stats(stats: *mut AllocStats, size: u64) {
    // SAFETY: the caller guarantees a live value.
    unsafe {
        atomic_add(&raw mut (*stats).bytes, size);
        atomic_add(&raw mut (*stats).objects, 1);
    }
}

#[inline(always)]
fn add(key: &AllocKey, size: u64) -> Result<Added, Counter> {
    let first = AllocStats {
        bytes: size,
        objects: 1,
    };
    let allocs = if ALLOC_BUFFER.get(0) == Some(&1) {
        &ALLOCS_ALT
    } else {
        &ALLOCS
    };
    match entry(allocs, key, &first) {
        Some(Entry::Existing(stats)) => {
            // SAFETY: the pointer is to a live map value.
            unsafe { add_stats(stats, size) };
            Ok(Added::Existing)
        }
        Some(Entry::Inserted) => Ok(Added::NewKey),
        None => Err(Counter::DropAllocMapFull),
    }
}

#[inline(always)]
fn remember_goroutine(tgid: u32, g: u64, goid: u64, cfg: &ProcessConfig) {
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { GOROUTINES.get(&key) }.is_some() {
        return;
    }
    let info = GoroutineInfo {
        start_pc: read_u64(g + cfg.g_startpc as u64).unwrap_or(0),
    };
    if GOROUTINES.insert(&key, &info, BPF_NOEXIST as u64).is_err()
        // SAFETY: as above.
        && unsafe { GOROUTINES.get(&key) }.is_none()
    {
        count(Counter::DropGoroutineMapFull);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
