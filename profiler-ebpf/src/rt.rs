//! Stack growth and goroutine lifecycle of a Go process (`gomemtrace stackgrowth`,
//! `gomemtrace goroutines`), from uprobes at function entries and at RET instructions
//! (never uretprobes: GO-RUNTIME.md §6).
//!
//! - `runtime.copystack(gp, newsize)` entry (on g0: RAX = gp, RBX = newsize): the old
//!   bounds, `gp.sched` (where the goroutine stopped: for a growth, the prologue of the
//!   function that overflowed) and the goroutine's stack by frame pointers from
//!   `gp.sched.bp`, kept per g0 until one of copystack's RETs on the same g0 sends it.
//! - `runtime.newproc1` RET (RAX = the new g, goid assigned): the creation site
//!   (`gopc`, `startpc`, and the creating goroutine's stack, walked from `curg.sched.bp`:
//!   `newproc` switched to g0 through `systemstack`, which saved the creator's frame
//!   pointer there), counted per site and remembered per goid until the goroutine exits.
//! - `runtime.gdestroy(gp)` (Go 1.22+) / `runtime.goexit0(gp)` (before) entry, RAX = gp:
//!   the goroutine exits.

use crate::helpers::{
    Entry, atomic_add, config, count, counter_array, entry, finish, ktime, read_u64, reg, tgid,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use gomemtrace_common::{
    GoroutineLive, GoroutineLiveKey, MAX_LIVE_GOROUTINES, MAX_PENDING_COPIES, MAX_PROCESSES,
    MAX_RT_STACKS, MAX_SITES, RT_FLAG_CREATION_STACKS, RT_FLAG_TOTALS_ONLY, RT_STACK_DEPTH,
    RtConfig, RtCounter, RtGKey, RtStack, STACK_EVENTS_BYTES, STACK_HASH_SEED, SiteKey, SiteStats,
    StackGrowthEvent, StackTotals, stack_hash_step,
};

#[map(name = "RT_CONFIG")]
static RT_CONFIG: HashMap<u32, RtConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "RT_COUNTERS")]
static RT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RtCounter::COUNT, 0);

#[map(name = "RT_STACKS")]
static RT_STACKS: HashMap<u64, RtStack> =
    HashMap::with_max_entries(MAX_RT_STACKS, BPF_F_NO_PREALLOC);

#[map(name = "RT_STACK_SCRATCH")]
static RT_STACK_SCRATCH: PerCpuArray<RtStack> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "GROWTH_SCRATCH")]
static GROWTH_SCRATCH: PerCpuArray<StackGrowthEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PENDING_COPIES")]
static PENDING_COPIES: LruHashMap<RtGKey, StackGrowthEvent> =
    LruHashMap::with_max_entries(MAX_PENDING_COPIES, 0);

#[map(name = "STACK_EVENTS")]
static STACK_EVENTS: RingBuf = RingBuf::with_byte_size(STACK_EVENTS_BYTES, 0);

#[map(name = "GOROUTINE_SITES")]
static GOROUTINE_SITES: HashMap<SiteKey, SiteStats> =
    HashMap::with_max_entries(MAX_SITES, BPF_F_NO_PREALLOC);

#[map(name = "STACK_TOTALS")]
static STACK_TOTALS: HashMap<u32, StackTotals> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "GOROUTINE_LIVE")]
static GOROUTINE_LIVE: HashMap<GoroutineLiveKey, GoroutineLive> =
    HashMap::with_max_entries(MAX_LIVE_GOROUTINES, BPF_F_NO_PREALLOC);

counter_array!(RtCounter => RT_COUNTERS);

#[inline(always)]
fn rt_config(tgid: u32) -> Result<RtConfig, RtCounter> {
    config(&RT_CONFIG, tgid).copied().ok_or(RtCounter::NoConfig)
}

/// Appends the return addresses of the frame-pointer chain from `bp` to `stack`, while
/// the frames stay inside the goroutine's stack `[lo, hi)` and go up; false where a bad
/// link (outside the stack, unaligned, unreadable, or not above the previous frame) cut
/// the walk short.
#[inline(always)]
fn walk_frames(stack: &mut RtStack, mut bp: u64, lo: u64, hi: u64) -> bool {
    for _ in 0..RT_STACK_DEPTH {
        if bp == 0 {
            // The outermost frame: a goroutine starts with no frame pointer.
            return true;
        }
        if bp < lo || bp.saturating_add(16) > hi || bp & 7 != 0 {
            return false;
        }
        let Some(pc) = read_u64(bp + 8) else {
            return false;
        };
        if pc == 0 {
            return true;
        }
        // A volatile load of the length each time: otherwise LLVM turns the index into a
        // running pointer whose bounds the verifier cannot see.
        // SAFETY: a plain field of a live value.
        let n = unsafe { core::ptr::read_volatile(&raw const stack.len) } as usize;
        if n >= RT_STACK_DEPTH {
            return true;
        }
        stack.pcs[n] = pc;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut stack.len, n as u32 + 1) };
        let Some(next) = read_u64(bp) else {
            return false;
        };
        if next != 0 && next <= bp {
            return false;
        }
        bp = next;
    }
    true
}

/// `runtime.copystack(gp *g, newsize uintptr)` entry, on g0.
#[uprobe]
pub fn copystack_entry(ctx: ProbeContext) -> u32 {
    finish(try_copystack_entry(&ctx))
}

#[inline(always)]
fn try_copystack_entry(ctx: &ProbeContext) -> Result<(), RtCounter> {
    let tgid = tgid();
    let cfg = rt_config(tgid)?;
    count(RtCounter::StackCopies);
    let (gp, newsize, g0) = (reg!(ctx, rax), reg!(ctx, rbx), reg!(ctx, r14));
    if cfg.flags & RT_FLAG_TOTALS_ONLY != 0 {
        return add_stack_totals(&cfg, tgid, gp, newsize);
    }
    let Some(ev) = GROWTH_SCRATCH.get_ptr_mut(0) else {
        // Cannot fail: index 0 of a one-entry array (the verifier wants the check).
        return Ok(());
    };
    // SAFETY: the scratch slot belongs to this CPU for the duration of the program.
    let ev = unsafe { &mut *ev };
    let field = |off: u32| read_u64(gp + off as u64).unwrap_or(0);
    let lo = field(cfg.g_stack_lo);
    let hi = field(cfg.g_stack_hi);
    let sp = field(cfg.g_sched_sp);
    let pc = field(cfg.g_sched_pc);
    let bp = field(cfg.g_sched_bp);
    ev.tgid = tgid;
    ev._pad = 0;
    ev.gp = gp;
    ev.goid = field(cfg.g_goid);
    ev.old_size = hi.wrapping_sub(lo);
    ev.new_size = newsize;
    ev.used = if sp >= lo && sp <= hi { hi - sp } else { 0 };
    ev.sched_pc = pc;
    ev.start_pc = field(cfg.g_startpc);
    ev.end_ns = 0;
    ev.stack.len = 0;
    ev.stack._pad = 0;
    if pc != 0 {
        ev.stack.pcs[0] = pc;
        ev.stack.len = 1;
        if newsize > ev.old_size && sp >= lo && sp < hi {
            // A growth: morestack saved the overflowing function's SP at its entry, where
            // its return address lies; its frame pointer is not pushed yet, so sched.bp is
            // the caller's.
            if let Some(ret) = read_u64(sp) {
                ev.stack.pcs[1] = ret;
                ev.stack.len = 2;
            }
        }
        // A cut walk keeps its frames; this view has no counter for it.
        let _ = walk_frames(&mut ev.stack, bp, lo, hi);
    }
    let key = RtGKey {
        tgid,
        _pad: 0,
        g: g0,
    };
    ev.start_ns = ktime();
    PENDING_COPIES
        .insert(&key, ev, 0)
        .map_err(|_| RtCounter::PendingNotRemembered)
}

/// Adds one copy of `gp`'s stack to `newsize` bytes to the process's totals.
#[inline(always)]
fn add_stack_totals(cfg: &RtConfig, tgid: u32, gp: u64, newsize: u64) -> Result<(), RtCounter> {
    let field = |off: u32| read_u64(gp + off as u64).unwrap_or(0);
    let lo = field(cfg.g_stack_lo);
    let hi = field(cfg.g_stack_hi);
    let sp = field(cfg.g_sched_sp);
    let used = if sp >= lo && sp <= hi { hi - sp } else { 0 };
    let totals = STACK_TOTALS
        .get_ptr_mut(&tgid)
        .ok_or(RtCounter::NoStackTotals)?;
    // SAFETY: a live map value (entries are only removed with the process's config).
    unsafe {
        if newsize > hi.wrapping_sub(lo) {
            atomic_add(&raw mut (*totals).growths, 1);
            atomic_add(&raw mut (*totals).growth_bytes, used);
        } else {
            atomic_add(&raw mut (*totals).shrinks, 1);
            atomic_add(&raw mut (*totals).shrink_bytes, used);
        }
    }
    Ok(())
}

/// A RET of `runtime.copystack`, on the same g0 as its entry.
#[uprobe]
pub fn copystack_ret(ctx: ProbeContext) -> u32 {
    finish(try_copystack_ret(&ctx))
}

#[inline(always)]
fn try_copystack_ret(ctx: &ProbeContext) -> Result<(), RtCounter> {
    let now = ktime();
    let tgid = tgid();
    rt_config(tgid)?;
    let key = RtGKey {
        tgid,
        _pad: 0,
        g: reg!(ctx, r14),
    };
    let ev = PENDING_COPIES
        .get_ptr_mut(&key)
        .ok_or(RtCounter::StackRetWithoutEntry)?;
    // SAFETY: a live map value of this g0's copy; only this g0 (one thread) writes it.
    let ev = unsafe { &mut *ev };
    ev.end_ns = now;
    let sent = STACK_EVENTS.output(ev, 0);
    // Cannot fail: the entry was just found, and only this g0 (one thread) removes it.
    let _ = PENDING_COPIES.remove(&key);
    sent.map_err(|_| RtCounter::DropStackRingFull)?;
    count(RtCounter::StackEventsSent);
    Ok(())
}

/// Atomic adds to a site's counters, shared by all CPUs.
///
/// # Safety
/// `stats` must point at a live map value.
#[inline(always)]
unsafe fn add_site(stats: *mut SiteStats, created: u64, exited: u64, lifetime: u64) {
    // SAFETY: the caller guarantees a live value.
    unsafe {
        if created != 0 {
            atomic_add(&raw mut (*stats).created, created);
        }
        if exited != 0 {
            atomic_add(&raw mut (*stats).exited, exited);
            atomic_add(&raw mut (*stats).lifetime_ns, lifetime);
        }
    }
}

/// The creating goroutine's stack, stored once per distinct stack; its key or 0.
#[inline(always)]
fn creation_stack(cfg: &RtConfig, g: u64) -> u64 {
    let curg = match read_u64(g + cfg.g_m as u64).and_then(|m| read_u64(m + cfg.m_curg as u64)) {
        Some(c) if c != 0 => c,
        // Created from the system stack with no user goroutine (the runtime's own, e.g.
        // the main goroutine from rt0_go): no creating stack.
        Some(_) => return 0,
        None => {
            count(RtCounter::CreationStackMissing);
            return 0;
        }
    };
    let Some(scratch) = RT_STACK_SCRATCH.get_ptr_mut(0) else {
        // Cannot fail: index 0 of a one-entry array (the verifier wants the check).
        return 0;
    };
    // SAFETY: the scratch slot belongs to this CPU for the duration of the program.
    let stack = unsafe { &mut *scratch };
    stack.len = 0;
    stack._pad = 0;
    let field = |off: u32| read_u64(curg + off as u64).unwrap_or(0);
    if !walk_frames(
        stack,
        field(cfg.g_sched_bp),
        field(cfg.g_stack_lo),
        field(cfg.g_stack_hi),
    ) {
        count(RtCounter::CreationStackTruncated);
    }
    let len = stack.len as usize;
    if len == 0 {
        count(RtCounter::CreationStackMissing);
        return 0;
    }
    let mut hash = STACK_HASH_SEED;
    for i in 0..RT_STACK_DEPTH {
        if i >= len {
            break;
        }
        hash = stack_hash_step(hash, stack.pcs[i]);
    }
    let key = if hash == 0 { 1 } else { hash };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { RT_STACKS.get(&key) }.is_some() {
        return key;
    }
    if RT_STACKS.insert(&key, stack, BPF_NOEXIST as u64).is_err()
        // SAFETY: as above.
        && unsafe { RT_STACKS.get(&key) }.is_none()
    {
        count(RtCounter::CreationStackMapFull);
        return 0;
    }
    key
}

/// The RET of `runtime.newproc1`: RAX = the new goroutine, runnable, goid assigned.
#[uprobe]
pub fn newproc1_ret(ctx: ProbeContext) -> u32 {
    finish(try_newproc1_ret(&ctx))
}

#[inline(always)]
fn try_newproc1_ret(ctx: &ProbeContext) -> Result<(), RtCounter> {
    let tgid = tgid();
    let cfg = rt_config(tgid)?;
    let (newg, g) = (reg!(ctx, rax), reg!(ctx, r14));
    let goid = read_u64(newg + cfg.g_goid as u64).ok_or(RtCounter::Unreadable)?;
    count(RtCounter::Created);
    let now = ktime();
    let stack = if cfg.flags & RT_FLAG_CREATION_STACKS != 0 {
        creation_stack(&cfg, g)
    } else {
        0
    };
    let site = SiteKey {
        tgid,
        _pad: 0,
        stack,
        gopc: read_u64(newg + cfg.g_gopc as u64).unwrap_or(0),
        start_pc: read_u64(newg + cfg.g_startpc as u64).unwrap_or(0),
    };
    let first = SiteStats {
        created: 1,
        exited: 0,
        lifetime_ns: 0,
    };
    match entry(&GOROUTINE_SITES, &site, &first) {
        // SAFETY: a live map value.
        Some(Entry::Existing(stats)) => unsafe { add_site(stats, 1, 0, 0) },
        Some(Entry::Inserted) => {}
        None => count(RtCounter::DropSiteMapFull),
    }
    let key = GoroutineLiveKey {
        tgid,
        _pad: 0,
        goid,
    };
    let live = GoroutineLive {
        site,
        created_ns: now,
    };
    GOROUTINE_LIVE
        .insert(&key, &live, 0)
        .map_err(|_| RtCounter::DropLiveMapFull)
}

/// `runtime.gdestroy(gp)` (Go 1.22+) / `runtime.goexit0(gp)` entry: RAX = the exiting g.
#[uprobe]
pub fn goroutine_exit(ctx: ProbeContext) -> u32 {
    finish(try_goroutine_exit(&ctx))
}

#[inline(always)]
fn try_goroutine_exit(ctx: &ProbeContext) -> Result<(), RtCounter> {
    let tgid = tgid();
    let cfg = rt_config(tgid)?;
    let now = ktime();
    let gp = reg!(ctx, rax);
    let goid = read_u64(gp + cfg.g_goid as u64).ok_or(RtCounter::Unreadable)?;
    let key = GoroutineLiveKey {
        tgid,
        _pad: 0,
        goid,
    };
    // SAFETY: read-only copy of a plain value.
    let live = (unsafe { GOROUTINE_LIVE.get(&key) })
        .copied()
        .ok_or(RtCounter::ExitedUnknown)?;
    // Cannot fail: the entry was just read, and a goroutine exits once.
    let _ = GOROUTINE_LIVE.remove(&key);
    count(RtCounter::Exited);
    if let Some(stats) = GOROUTINE_SITES.get_ptr_mut(&live.site) {
        // SAFETY: a live map value.
        unsafe { add_site(stats, 0, 1, now.saturating_sub(live.created_ns)) };
    }
    Ok(())
}
