//! GC cycles and stop-the-world pauses of a Go process, from entry uprobes only:
//!
//! - `gcStart` / `gcMarkDone` (on the calling goroutine, R14 = g): remember the goroutine,
//!   so that its stop of the world can be told apart from other stops where the runtime
//!   passes no reason (Go 1.19), and `gcStart`'s trigger kind (RAX).
//! - `stopTheWorldWithSema` (g0): classify the stop — `stwReason` in AL from Go 1.21,
//!   else `m.curg` looked up among the remembered goroutines — and note when it began.
//! - `startTheWorldWithSema` (g0): the pause ends. From Go 1.22 its arguments carry the
//!   world-stop start (RCX) and, at the end of mark termination, the runtime's own `now`
//!   (RAX); before that the pause is paired with the stop's entry time.
//! - `gcMarkTermination`: the next start of the world ends the cycle; then the runtime
//!   globals userspace asked for are read and the cycle goes out through a ring buffer.
//! - `(*gcCPULimiterState).finishGCTransition(now)` (RBX = now): called by `gcStart` right
//!   after the world restarts and by `gcMarkTermination` just before, with the runtime's
//!   own timestamps (`work.tMark`, `work.tEnd`). `startTheWorldWithSema` takes its time
//!   only after restarting the Ps (which may create threads: up to milliseconds), so its
//!   entry is early; this probe gives the runtime's exact end of each pause.
//! - `(*gcCPULimiterState).startGCTransition(enableGC, now)` (BL, RCX): called with the
//!   world stopped by `gcStart` and by `gcMarkDone` (after its last stop) with the time
//!   taken just before stopping (`work.tSweepTerm`, `work.tMarkTerm`): the runtime's exact
//!   start of each phase, including the wait for `sched.lock` that `startedStopping`
//!   leaves out.
//!
//! The stop/start probes of one process run one at a time (the runtime holds `worldsema`
//! across a stop), so the per-process state needs no atomics.

use crate::helpers::{
    Entry, config, count, counter_array, entry, finish, ktime, read_u64, reg, tgid,
};
use aya_ebpf::{
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use gomemtrace_common::{
    GC_CALLER_MARK_DONE, GC_CALLER_START, GC_EVENTS_BYTES, GC_FLAG_START_HAS_WORLDSTOP,
    GC_FLAG_STW_REASON, GC_SLOTS, GC_TRIGGER_UNKNOWN, GcCaller, GcCallerKey, GcConfig, GcCounter,
    GcEvent, GcState, MAX_GC_CALLERS, MAX_PROCESSES, STW_MARK_TERM, STW_NONE, STW_OTHER,
    STW_REASON_GC_MARK_TERM, STW_REASON_GC_SWEEP_TERM, STW_SWEEP_TERM,
};

#[map(name = "GC_CONFIG")]
static GC_CONFIG: HashMap<u32, GcConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "GC_STATE")]
static GC_STATE: HashMap<u32, GcState> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "GC_CALLERS")]
static GC_CALLERS: LruHashMap<GcCallerKey, GcCaller> =
    LruHashMap::with_max_entries(MAX_GC_CALLERS, 0);

#[map(name = "GC_EVENTS")]
static GC_EVENTS: RingBuf = RingBuf::with_byte_size(GC_EVENTS_BYTES, 0);

#[map(name = "GC_COUNTERS")]
static GC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GcCounter::COUNT, 0);

const EMPTY_STATE: GcState = GcState {
    stw_kind: STW_NONE,
    in_mark_termination: 0,
    in_cycle: 0,
    cycles_done: 0,
    awaiting_tmark: 0,
    _pad: 0,
    tend_hint: 0,
    pending_t_sweep_term: 0,
    stop_ns: 0,
    cycle: GcEvent::EMPTY,
};

counter_array!(GcCounter => GC_COUNTERS);

/// The process's configuration, counting hits with and without one.
#[inline(always)]
fn gc_config(tgid: u32) -> Result<&'static GcConfig, GcCounter> {
    let cfg = config(&GC_CONFIG, tgid).ok_or(GcCounter::NoConfig)?;
    count(GcCounter::Hits);
    Ok(cfg)
}

/// The process's state, created on first use.
#[inline(always)]
fn state(tgid: u32) -> Result<&'static mut GcState, GcCounter> {
    let state = match entry(&GC_STATE, &tgid, &EMPTY_STATE) {
        Some(Entry::Existing(state)) => Some(state),
        Some(Entry::Inserted) => GC_STATE.get_ptr_mut(&tgid),
        None => None,
    };
    // SAFETY: a live map value; only the serialized stop/start probes write it.
    state
        .map(|s| unsafe { &mut *s })
        .ok_or(GcCounter::DropStateMapFull)
}

#[uprobe]
pub fn gc_start(ctx: ProbeContext) -> u32 {
    finish(remember_caller(&ctx, GC_CALLER_START))
}

#[uprobe]
pub fn gc_mark_done(ctx: ProbeContext) -> u32 {
    finish(remember_caller(&ctx, GC_CALLER_MARK_DONE))
}

/// `gcStart(trigger)` / `gcMarkDone()` entry, on the calling goroutine (R14).
#[inline(always)]
fn remember_caller(ctx: &ProbeContext, kind: u32) -> Result<(), GcCounter> {
    let tgid = tgid();
    gc_config(tgid)?;
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    // SAFETY: read-only copy of a plain value.
    let seq = unsafe { GC_STATE.get(&tgid) }.map_or(0, |s| s.cycles_done);
    let key = GcCallerKey {
        tgid,
        _pad: 0,
        g: regs.r14,
    };
    if kind == GC_CALLER_START {
        // SAFETY: read-only copy of a plain value.
        if let Some(old) = unsafe { GC_CALLERS.get(&key) }
            && old.kind == GC_CALLER_START
            && old.seq == seq
        {
            // A nested gcStart (an allocation inside gcStart, which returns at once as
            // the M holds locks) must not replace the outer call's trigger.
            return Ok(());
        }
    }
    let caller = GcCaller {
        kind,
        trigger: if kind == GC_CALLER_START {
            regs.rax as u32
        } else {
            GC_TRIGGER_UNKNOWN
        },
        seq,
        _pad: 0,
    };
    GC_CALLERS
        .insert(&key, &caller, 0)
        .map_err(|_| GcCounter::CallerNotRemembered)
}

/// A plain value rather than an `Option`: the verifier rejects LLVM's speculative reads
/// of a `None`'s payload.
const NO_CALLER: GcCaller = GcCaller {
    kind: 0,
    trigger: GC_TRIGGER_UNKNOWN,
    seq: 0,
    _pad: 0,
};

/// What the goroutine that stops or starts the world (`g0.m.curg`, R14 = g0) was doing:
/// its `gcStart`/`gcMarkDone` entry, if any.
#[inline(always)]
fn caller_of(g0: u64, cfg: &GcConfig, tgid: u32) -> GcCaller {
    match read_u64(g0 + cfg.g_m as u64).and_then(|m| read_u64(m + cfg.m_curg as u64)) {
        Some(curg) => {
            let key = GcCallerKey {
                tgid,
                _pad: 0,
                g: curg,
            };
            // SAFETY: read-only copy of a plain value.
            unsafe { GC_CALLERS.get(&key) }
                .copied()
                .unwrap_or(NO_CALLER)
        }
        None => {
            count(GcCounter::CurgUnreadable);
            NO_CALLER
        }
    }
}

/// The kind of a stop from its `stwReason` (Go 1.21+).
#[inline(always)]
fn kind_of_reason(reason: u64) -> u32 {
    match reason & 0xff {
        STW_REASON_GC_SWEEP_TERM => STW_SWEEP_TERM,
        STW_REASON_GC_MARK_TERM => STW_MARK_TERM,
        _ => STW_OTHER,
    }
}

/// Notes a stop of the world of `kind` that began at `started`; `t_sweep_term` is the
/// runtime's `work.tSweepTerm` when already known (0 if not).
#[inline(always)]
fn begin_stw(
    state: &mut GcState,
    tgid: u32,
    kind: u32,
    caller: &GcCaller,
    started: u64,
    t_sweep_term: u64,
) {
    state.stw_kind = kind;
    state.stop_ns = started;
    if kind == STW_SWEEP_TERM {
        state.cycle = GcEvent::EMPTY;
        state.cycle.tgid = tgid;
        state.cycle.t_sweep_term = t_sweep_term;
        state.cycle.trigger = if caller.kind == GC_CALLER_START {
            caller.trigger
        } else {
            GC_TRIGGER_UNKNOWN
        };
        state.in_mark_termination = 0;
        state.awaiting_tmark = 0;
    } else if kind == STW_OTHER {
        count(GcCounter::OtherStws);
    }
}

/// `stopTheWorldWithSema(reason)` entry, on g0. Attached only before Go 1.22, where the
/// start of the world does not say when the stop began: from 1.22 a probe here would
/// only add its own cost to the pause the runtime measures.
#[uprobe]
pub fn gc_stop_the_world(ctx: ProbeContext) -> u32 {
    finish(try_gc_stop_the_world(&ctx))
}

#[inline(always)]
fn try_gc_stop_the_world(ctx: &ProbeContext) -> Result<(), GcCounter> {
    let tgid = tgid();
    let cfg = gc_config(tgid)?;
    let now = ktime();
    let state = state(tgid)?;
    let (rax, r14) = (reg!(ctx, rax), reg!(ctx, r14));
    let caller = caller_of(r14, cfg, tgid);
    let current = caller.seq == state.cycles_done;
    let kind = if cfg.flags & GC_FLAG_STW_REASON != 0 {
        kind_of_reason(rax)
    } else if caller.kind == GC_CALLER_START && state.in_cycle == 0 && current {
        // No reason (Go 1.19): a stop by the goroutine in gcStart, outside a cycle, is
        // sweep termination; by one in gcMarkDone of this cycle, mark termination.
        STW_SWEEP_TERM
    } else if caller.kind == GC_CALLER_MARK_DONE && state.in_cycle != 0 && current {
        STW_MARK_TERM
    } else {
        STW_OTHER
    };
    begin_stw(state, tgid, kind, &caller, now, 0);
    Ok(())
}

/// `gcMarkTermination` entry: the world is stopped for the last time in this cycle.
#[uprobe]
pub fn gc_mark_termination(_ctx: ProbeContext) -> u32 {
    finish(try_gc_mark_termination())
}

#[inline(always)]
fn try_gc_mark_termination() -> Result<(), GcCounter> {
    let tgid = tgid();
    gc_config(tgid)?;
    state(tgid)?.in_mark_termination = 1;
    Ok(())
}

/// `startTheWorldWithSema` entry, on g0: a pause ends.
#[uprobe]
pub fn gc_start_the_world(ctx: ProbeContext) -> u32 {
    finish(try_gc_start_the_world(&ctx))
}

#[inline(always)]
fn try_gc_start_the_world(ctx: &ProbeContext) -> Result<(), GcCounter> {
    let tgid = tgid();
    let cfg = gc_config(tgid)?;
    let now = ktime();
    let state = state(tgid)?;
    let (rax, rbx, rcx, r14) = (
        reg!(ctx, rax),
        reg!(ctx, rbx),
        reg!(ctx, rcx),
        reg!(ctx, r14),
    );
    if cfg.flags & GC_FLAG_START_HAS_WORLDSTOP != 0 {
        // Go 1.22+: the stop is described by the worldStop argument (reason in BL).
        let kind = kind_of_reason(rbx);
        let caller = if kind == STW_SWEEP_TERM {
            caller_of(r14, cfg, tgid)
        } else {
            NO_CALLER
        };
        let t_sweep_term = core::mem::replace(&mut state.pending_t_sweep_term, 0);
        begin_stw(state, tgid, kind, &caller, rcx, t_sweep_term);
    }
    let kind = core::mem::replace(&mut state.stw_kind, STW_NONE);
    if kind == STW_NONE {
        return Err(GcCounter::StartWithoutStop);
    }
    let (started, ended) = if cfg.flags & GC_FLAG_START_HAS_WORLDSTOP != 0 {
        // now (RAX; 0 = "take the time now"), worldStop{reason BL, startedStopping RCX}.
        let ended = if rax != 0 { rax } else { now };
        (rcx, ended)
    } else if kind == STW_MARK_TERM && state.in_mark_termination != 0 && state.tend_hint != 0 {
        (state.stop_ns, state.tend_hint)
    } else {
        (state.stop_ns, now)
    };
    state.tend_hint = 0;
    let pause = ended.saturating_sub(started);

    if kind == STW_SWEEP_TERM {
        let cycle = &mut state.cycle;
        cycle.saw_sweep_term = 1;
        cycle.sweep_term_start = started;
        cycle.sweep_term_end = ended;
        cycle.stws = 1;
        cycle.pause_ns = pause;
        state.in_cycle = 1;
        state.awaiting_tmark = 1;
        return Ok(());
    }
    if kind != STW_MARK_TERM {
        return Ok(());
    }
    if state.in_cycle == 0 {
        // Attached during this cycle's marking: its sweep termination was not seen.
        state.cycle = GcEvent::EMPTY;
        state.cycle.tgid = tgid;
        state.in_cycle = 1;
    }
    let cycle = &mut state.cycle;
    cycle.stws += 1;
    cycle.pause_ns += pause;
    cycle.mark_term_start = started;
    cycle.mark_term_end = ended;
    if state.in_mark_termination == 0 {
        // gcMarkDone found more work and restarted the world: marking goes on.
        return Ok(());
    }
    for i in 0..GC_SLOTS {
        let addr = cfg.slots[i];
        cycle.slots[i] = if addr == 0 {
            0
        } else {
            read_u64(addr).unwrap_or_else(|| {
                count(GcCounter::SlotUnreadable);
                0
            })
        };
    }
    let sent = GC_EVENTS.output(cycle, 0);
    state.in_mark_termination = 0;
    state.in_cycle = 0;
    state.cycles_done = state.cycles_done.wrapping_add(1);
    sent.map_err(|_| GcCounter::DropRingFull)?;
    count(GcCounter::Cycles);
    Ok(())
}

/// `(*gcCPULimiterState).finishGCTransition(l, now)` entry: RBX = the runtime's `now`.
#[uprobe]
pub fn gc_finish_transition(ctx: ProbeContext) -> u32 {
    finish(try_gc_finish_transition(&ctx))
}

#[inline(always)]
fn try_gc_finish_transition(ctx: &ProbeContext) -> Result<(), GcCounter> {
    let tgid = tgid();
    gc_config(tgid)?;
    let now = reg!(ctx, rbx);
    let state = state(tgid)?;
    if state.awaiting_tmark != 0 {
        // gcStart, the world just restarted: now = work.tMark.
        state.awaiting_tmark = 0;
        let cycle = &mut state.cycle;
        if now > cycle.sweep_term_start {
            cycle.sweep_term_end = now;
            cycle.pause_ns = now - cycle.sweep_term_start;
        }
    } else if state.in_mark_termination != 0 {
        // gcMarkTermination, world still stopped: now = work.tEnd.
        state.tend_hint = now;
    }
    Ok(())
}

/// `(*gcCPULimiterState).startGCTransition(l, enableGC, now)` entry, world stopped:
/// BL = enableGC (true in gcStart, false in gcMarkDone), RCX = the runtime's `now`.
#[uprobe]
pub fn gc_start_transition(ctx: ProbeContext) -> u32 {
    finish(try_gc_start_transition(&ctx))
}

#[inline(always)]
fn try_gc_start_transition(ctx: &ProbeContext) -> Result<(), GcCounter> {
    let tgid = tgid();
    let cfg = gc_config(tgid)?;
    let (rbx, now) = (reg!(ctx, rbx), reg!(ctx, rcx));
    let state = state(tgid)?;
    if cfg.flags & GC_FLAG_START_HAS_WORLDSTOP != 0 {
        // Go 1.22+: the stop is classified when the world starts again; keep the time
        // until then (the cycle is reset at that point).
        if rbx & 0xff != 0 {
            state.pending_t_sweep_term = now;
        } else {
            state.cycle.t_mark_term = now;
        }
        return Ok(());
    }
    // Before 1.22 the stop was classified at its entry, and the runtime's pause starts
    // here (work.pauseStart).
    if rbx & 0xff != 0 {
        if state.stw_kind == STW_SWEEP_TERM {
            state.cycle.t_sweep_term = now;
            state.stop_ns = now;
        }
    } else if state.stw_kind == STW_MARK_TERM {
        state.cycle.t_mark_term = now;
        state.stop_ns = now;
    }
    Ok(())
}
