//! Mark assists and background mark workers of a Go process (`gomemtrace gctrace
//! --assists`), from uprobes at function entries and at every RET instruction (never
//! uretprobes, which crash Go programs):
//!
//! - `gcAssistAlloc(gp)` entry (after its stack check; on the allocating goroutine,
//!   RAX = gp = R14): remember the goroutine's user stack, its drafting allocator (`[rsp]`)
//!   and the time, keyed by `g` — the assist may park in `gcParkAssist` and resume on
//!   another thread. At each RET (R14 = gp) the assist ends: wall time, parking included.
//! - `gcAssistAlloc1(gp, scanWork)`, on the M's `g0` (R14 = g0), at its two clock reads
//!   (the `CALL`s of `nanotime`): the interval the runtime itself counts as assist time
//!   (`gcController.assistTime`, gctrace's `b`).
//!   Keyed by g0: a system-stack call neither parks nor changes M.
//! - `gcDrainN` RETs (g0): RAX = the scan work an assist did.
//! - `gcBgMarkWorker`, on the worker's goroutine (R14), just after its two calls of the
//!   assembly `nanotime1` (`startTime` … `now`): the interval the runtime itself counts as
//!   the worker's time (gctrace's `c` and `d`), its own two readings. Keyed by the worker's
//!   `g`: it may be preempted and resume on another M between them.
//! - `gcDrain(gcw, flags)` entry (g0; RBX = flags): the worker run's mode (idle 4,
//!   fractional 8, else dedicated), set on the span of `g0.m.curg`, the worker. Where
//!   `gcBgMarkWorker`'s clock calls are not found, the run is timed from this entry to
//!   `gcDrain`'s RETs on our clock instead.
//! - `gcMarkTermination` entry: the world is stopped and every worker and assist of the
//!   cycle has finished: the per-process totals go to userspace, which takes differences.

use crate::{
    helpers::{
        Entry, atomic_add, config, count, counter_array, entry, finish, ktime, read_u64, reg, tgid,
    },
    stacks::user_stack_key,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use gomemtrace_common::{
    AssistInflight, AssistKey, AssistStats, G0Span, GC_DRAIN_FLUSH_BG_CREDIT, GC_DRAIN_FRACTIONAL,
    GC_DRAIN_IDLE, MARK_EVENTS_BYTES, MARK_SPAN_ASSIST, MARK_SPAN_DEDICATED, MARK_SPAN_FRACTIONAL,
    MARK_SPAN_IDLE, MARK_SPAN_OTHER, MAX_ASSIST_KEYS, MAX_ASSIST_STACKS, MAX_MARK_INFLIGHT,
    MAX_PROCESSES, MarkConfig, MarkCounter, MarkCycleEvent, MarkGKey, MarkTotals, UserStack,
};

#[map(name = "MARK_CONFIG")]
static MARK_CONFIG: HashMap<u32, MarkConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "MARK_INFLIGHT")]
static MARK_INFLIGHT: LruHashMap<MarkGKey, AssistInflight> =
    LruHashMap::with_max_entries(MAX_MARK_INFLIGHT, 0);

#[map(name = "MARK_SPANS")]
static MARK_SPANS: LruHashMap<MarkGKey, G0Span> =
    LruHashMap::with_max_entries(MAX_MARK_INFLIGHT, 0);

#[map(name = "MARK_ASSISTS")]
static MARK_ASSISTS: HashMap<AssistKey, AssistStats> =
    HashMap::with_max_entries(MAX_ASSIST_KEYS, 0);

#[map(name = "MARK_STACKS")]
static MARK_STACKS: HashMap<u64, UserStack> =
    HashMap::with_max_entries(MAX_ASSIST_STACKS, BPF_F_NO_PREALLOC);

#[map(name = "MARK_TOTALS")]
static MARK_TOTALS: HashMap<u32, MarkTotals> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "MARK_EVENTS")]
static MARK_EVENTS: RingBuf = RingBuf::with_byte_size(MARK_EVENTS_BYTES, 0);

#[map(name = "MARK_COUNTERS")]
static MARK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MarkCounter::COUNT, 0);

counter_array!(MarkCounter => MARK_COUNTERS);

/// The process's configuration, counting hits with and without one.
#[inline(always)]
fn mark_config(tgid: u32) -> Result<&'static MarkConfig, MarkCounter> {
    let cfg = config(&MARK_CONFIG, tgid).ok_or(MarkCounter::NoConfig)?;
    count(MarkCounter::Hits);
    Ok(cfg)
}

/// The process's cumulative totals, created on first use.
#[inline(always)]
fn totals(tgid: u32) -> Result<*mut MarkTotals, MarkCounter> {
    match entry(&MARK_TOTALS, &tgid, &MarkTotals::default()) {
        Some(Entry::Existing(t)) => Some(t),
        Some(Entry::Inserted) => MARK_TOTALS.get_ptr_mut(&tgid),
        None => None,
    }
    .ok_or(MarkCounter::DropTotalsMapFull)
}

/// `gcAssistAlloc(gp)` entry, after the stack check, on the allocating goroutine.
#[uprobe]
pub fn mark_assist_entry(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_entry(&ctx))
}

#[inline(always)]
fn try_mark_assist_entry(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    let cfg = mark_config(tgid)?;
    let now = ktime();
    let (gp, rsp, r14) = (reg!(ctx, rax), reg!(ctx, rsp), reg!(ctx, r14));
    if gp != r14 {
        // Called on the system stack: the runtime returns at once without assisting.
        return Err(MarkCounter::AssistOnSystemStack);
    }
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: gp,
    };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { MARK_INFLIGHT.get(&key) }.is_some() {
        count(MarkCounter::StaleAssist);
    }
    let record = AssistInflight {
        start_ns: now,
        stack: user_stack_key(
            ctx,
            &MARK_STACKS,
            MarkCounter::StackUnreadable,
            MarkCounter::StackMapFull,
        ),
        caller_pc: read_u64(rsp).unwrap_or(0),
        goid: read_u64(gp + cfg.g_goid as u64).unwrap_or(0),
        start_pc: read_u64(gp + cfg.g_startpc as u64).unwrap_or(0),
        cpu_ns: 0,
        scan_work: 0,
    };
    MARK_INFLIGHT
        .insert(&key, &record, 0)
        .map_err(|_| MarkCounter::InflightNotRemembered)
}

/// A RET of `gcAssistAlloc`, on the assisting goroutine (R14 = gp).
#[uprobe]
pub fn mark_assist_ret(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_ret(&ctx))
}

#[inline(always)]
fn try_mark_assist_ret(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let now = ktime();
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: reg!(ctx, r14),
    };
    // SAFETY: read-only copy of a plain value.
    let record = (unsafe { MARK_INFLIGHT.get(&key) })
        .copied()
        .ok_or(MarkCounter::RetWithoutEntry)?;
    // Cannot fail: the entry was just read, and only this goroutine's RET removes it.
    let _ = MARK_INFLIGHT.remove(&key);
    let wall = now.saturating_sub(record.start_ns);
    match totals(tgid) {
        // SAFETY: a live map value.
        Ok(t) => unsafe {
            atomic_add(&raw mut (*t).assists, 1);
            atomic_add(&raw mut (*t).assist_wall_ns, wall);
        },
        // Counted; the assist still goes to its row below.
        Err(reason) => count(reason),
    }
    let akey = AssistKey {
        tgid,
        _pad: 0,
        goid: record.goid,
        stack: record.stack,
        caller_pc: record.caller_pc,
    };
    // One goroutine runs on one thread at a time, and the goid is part of the key: no
    // other CPU updates this value concurrently.
    if let Some(stats) = MARK_ASSISTS.get_ptr_mut(&akey) {
        // SAFETY: a live map value.
        let stats = unsafe { &mut *stats };
        stats.count += 1;
        stats.wall_ns += wall;
        stats.cpu_ns += record.cpu_ns;
        stats.scan_work += record.scan_work;
        return Ok(());
    }
    let first = AssistStats {
        count: 1,
        wall_ns: wall,
        cpu_ns: record.cpu_ns,
        scan_work: record.scan_work,
        start_pc: record.start_pc,
    };
    MARK_ASSISTS
        .insert(&akey, &first, BPF_NOEXIST as u64)
        .map_err(|_| MarkCounter::DropAssistMapFull)
}

/// Starts a span of mark work on the system stack (`g0` = R14).
#[inline(always)]
fn begin_span(tgid: u32, g0: u64, kind: u32, gp: u64, start_ns: u64) -> Result<(), MarkCounter> {
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: g0,
    };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { MARK_SPANS.get(&key) }.is_some() {
        count(MarkCounter::StaleSpan);
    }
    let span = G0Span {
        start_ns,
        kind,
        _pad: 0,
        gp,
        scan_work: 0,
    };
    MARK_SPANS
        .insert(&key, &span, 0)
        .map_err(|_| MarkCounter::SpanNotRemembered)
}

/// Ends the span on `g0`, if one was seen to start.
#[inline(always)]
fn end_span(tgid: u32, g0: u64, now: u64) -> Result<(G0Span, u64), MarkCounter> {
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: g0,
    };
    // SAFETY: read-only copy of a plain value.
    let span = (unsafe { MARK_SPANS.get(&key) })
        .copied()
        .ok_or(MarkCounter::RetWithoutEntry)?;
    // Cannot fail: the entry was just read, and only this g0 (one thread) removes it.
    let _ = MARK_SPANS.remove(&key);
    Ok((span, now.saturating_sub(span.start_ns)))
}

/// `gcAssistAlloc1(gp, scanWork)`, on g0: at its `startTime := nanotime()` call (or its
/// entry, where that call is not found). The assisting goroutine is `g0.m.curg`: the
/// runtime switched stacks with `systemstack`, which leaves `curg` alone.
#[uprobe]
pub fn mark_assist_work_entry(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_work_entry(&ctx, ktime()))
}

/// `gcAssistAlloc1` just after its `startTime := nanotime()` call returned from the
/// assembly `nanotime1` (ABI0: the result is the word at RSP): the span starts at the
/// runtime's own reading, so that a thread descheduled between the probe and the clock
/// read counts on both sides or on neither.
#[uprobe]
pub fn mark_assist_clock_start(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_work_entry(&ctx, runtime_clock(&ctx)))
}

/// The runtime's clock reading that `nanotime1` (ABI0) just returned at RSP; ours where it
/// cannot be read (the span is then timed on our clock, as at the CALL).
#[inline(always)]
fn runtime_clock(ctx: &ProbeContext) -> u64 {
    read_u64(reg!(ctx, rsp)).unwrap_or_else(ktime)
}

#[inline(always)]
fn try_mark_assist_work_entry(ctx: &ProbeContext, start_ns: u64) -> Result<(), MarkCounter> {
    let tgid = tgid();
    let cfg = mark_config(tgid)?;
    let g0 = reg!(ctx, r14);
    let gp = read_u64(g0 + cfg.g_m as u64)
        .and_then(|m| read_u64(m + cfg.m_curg as u64))
        .unwrap_or_else(|| {
            // The span is still timed (the totals), but not added to its assist.
            count(MarkCounter::CurgUnreadable);
            0
        });
    begin_span(tgid, g0, MARK_SPAN_ASSIST, gp, start_ns)
}

/// `gcAssistAlloc1`'s `now := nanotime()` call (or each RET, where that call is not
/// found), on g0.
#[uprobe]
pub fn mark_assist_work_ret(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_work_ret(&ctx, ktime()))
}

/// `gcAssistAlloc1` just after its `now := nanotime()` call returned (ABI0: the reading at
/// RSP): the span ends at the runtime's own reading, the interval is the runtime's own.
#[uprobe]
pub fn mark_assist_clock_end(ctx: ProbeContext) -> u32 {
    finish(try_mark_assist_work_ret(&ctx, runtime_clock(&ctx)))
}

#[inline(always)]
fn try_mark_assist_work_ret(ctx: &ProbeContext, now: u64) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let (span, ns) = end_span(tgid, reg!(ctx, r14), now)?;
    if span.kind != MARK_SPAN_ASSIST {
        return Ok(());
    }
    match totals(tgid) {
        // SAFETY: a live map value.
        Ok(t) => unsafe {
            atomic_add(&raw mut (*t).assist_work_calls, 1);
            atomic_add(&raw mut (*t).assist_cpu_ns, ns);
            atomic_add(&raw mut (*t).assist_scan_work, span.scan_work);
        },
        // Counted; the span still goes to its assist below.
        Err(reason) => count(reason),
    }
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: span.gp,
    };
    if let Some(record) = MARK_INFLIGHT.get_ptr_mut(&key) {
        // SAFETY: a live map value; its goroutine is blocked in this call.
        let record = unsafe { &mut *record };
        record.cpu_ns += ns;
        record.scan_work += span.scan_work;
    }
    Ok(())
}

/// A RET of `gcDrainN` (only called by `gcAssistAlloc1`), on g0: RAX = scan work done.
#[uprobe]
pub fn mark_drain_n_ret(ctx: ProbeContext) -> u32 {
    finish(try_mark_drain_n_ret(&ctx))
}

#[inline(always)]
fn try_mark_drain_n_ret(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let (work, r14) = (reg!(ctx, rax), reg!(ctx, r14));
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: r14,
    };
    if let Some(span) = MARK_SPANS.get_ptr_mut(&key) {
        // SAFETY: a live map value, written only on this M.
        unsafe { (*span).scan_work += work };
    }
    Ok(())
}

/// `gcDrain(gcw, flags)` entry, on g0: RBX = flags.
#[uprobe]
pub fn mark_drain_entry(ctx: ProbeContext) -> u32 {
    finish(try_mark_drain_entry(&ctx))
}

#[inline(always)]
fn try_mark_drain_entry(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    let cfg = mark_config(tgid)?;
    let (flags, g0) = (reg!(ctx, rbx), reg!(ctx, r14));
    let kind = if flags & GC_DRAIN_IDLE != 0 {
        MARK_SPAN_IDLE
    } else if flags & GC_DRAIN_FRACTIONAL != 0 {
        MARK_SPAN_FRACTIONAL
    } else if flags & GC_DRAIN_FLUSH_BG_CREDIT != 0 {
        MARK_SPAN_DEDICATED
    } else {
        MARK_SPAN_OTHER
    };
    if cfg.worker_clock == 0 {
        return begin_span(tgid, g0, kind, 0, ktime());
    }
    // The worker's span, opened at its `startTime` reading: name its mode. None when the
    // reading came before the attach; the end then counts it as a RET without an entry.
    let worker = read_u64(g0 + cfg.g_m as u64)
        .and_then(|m| read_u64(m + cfg.m_curg as u64))
        .ok_or(MarkCounter::CurgUnreadable)?;
    let key = MarkGKey {
        tgid,
        _pad: 0,
        g: worker,
    };
    if let Some(span) = MARK_SPANS.get_ptr_mut(&key) {
        // SAFETY: a live map value of this worker, which is running this call.
        unsafe { (*span).kind = kind };
    }
    Ok(())
}

/// `gcBgMarkWorker` just after its `startTime := nanotime()` call returned (ABI0: the
/// reading at RSP), on the worker's goroutine: a run starts; its mode comes at `gcDrain`.
#[uprobe]
pub fn mark_worker_clock_start(ctx: ProbeContext) -> u32 {
    finish(try_mark_worker_clock_start(&ctx))
}

#[inline(always)]
fn try_mark_worker_clock_start(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    begin_span(tgid, reg!(ctx, r14), MARK_SPAN_OTHER, 0, runtime_clock(ctx))
}

/// `gcBgMarkWorker` just after its `now := nanotime()` call returned: the run ends at the
/// runtime's own reading.
#[uprobe]
pub fn mark_worker_clock_end(ctx: ProbeContext) -> u32 {
    finish(try_mark_worker_clock_end(&ctx))
}

#[inline(always)]
fn try_mark_worker_clock_end(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let (span, ns) = end_span(tgid, reg!(ctx, r14), runtime_clock(ctx))?;
    add_worker_run(tgid, span.kind, ns)
}

/// A RET of `gcDrain`, on g0.
#[uprobe]
pub fn mark_drain_ret(ctx: ProbeContext) -> u32 {
    finish(try_mark_drain_ret(&ctx))
}

#[inline(always)]
fn try_mark_drain_ret(ctx: &ProbeContext) -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let (span, ns) = end_span(tgid, reg!(ctx, r14), ktime())?;
    add_worker_run(tgid, span.kind, ns)
}

/// Adds a background worker's run of `ns` to its mode's totals.
#[inline(always)]
fn add_worker_run(tgid: u32, kind: u32, ns: u64) -> Result<(), MarkCounter> {
    let index = match kind {
        MARK_SPAN_DEDICATED => 0,
        MARK_SPAN_FRACTIONAL => 1,
        MARK_SPAN_IDLE => 2,
        MARK_SPAN_OTHER => 3,
        // MARK_SPAN_ASSIST: not a mark worker's span.
        _ => return Ok(()),
    };
    let t = totals(tgid)?;
    // SAFETY: a live map value; index < 4.
    unsafe {
        atomic_add(&raw mut (*t).drain_ns[index], ns);
        atomic_add(&raw mut (*t).drain_calls[index], 1);
    }
    Ok(())
}

/// `gcMarkTermination` entry: this cycle's marking is over; send the totals.
#[uprobe]
pub fn mark_cycle_end(_ctx: ProbeContext) -> u32 {
    finish(try_mark_cycle_end())
}

#[inline(always)]
fn try_mark_cycle_end() -> Result<(), MarkCounter> {
    let tgid = tgid();
    mark_config(tgid)?;
    let t = totals(tgid)?;
    let event = MarkCycleEvent {
        tgid,
        _pad: 0,
        ktime_ns: ktime(),
        // SAFETY: a live map value (a torn read of a counter another CPU is adding to
        // cannot happen here: the world is stopped).
        totals: unsafe { *t },
    };
    MARK_EVENTS
        .output(&event, 0)
        .map_err(|_| MarkCounter::DropRingFull)
}
