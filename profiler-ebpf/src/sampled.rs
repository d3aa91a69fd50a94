//! Runtime-sampled mode: probes on the Go runtime's own heap sampler, which the runtime
//! calls about once per `MemProfileRate` bytes (512 KiB by default) — so the trap cost is
//! paid on a small fraction of allocations.
//!
//! - `runtime.setprofilebucket(p, b)` (on g0, called by `mProf_Malloc` once the sample is
//!   recorded): the sampled object's address and its bucket's slot size; aggregated like an
//!   exact event (stack, goroutine; the type is not passed to the sampler) and remembered as
//!   live. Not `mProf_Malloc`'s entry: from Go 1.23 it drops samples taken while an M is
//!   being set up (`mp.profStack == nil`), which would then never be freed.
//! - `runtime.freeSpecial` (sweeping): a heap-profile special being freed means its sampled
//!   object died; its bytes move to the frees of the key it was counted under.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_probe_read_user,
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use gomemtrace_common::{
    AllocKey, AllocStats, Counter, LiveKey, LiveObject, MAX_ALLOC_KEYS, MAX_LIVE_OBJECTS,
    MAX_PROCESSES, TYPE_NOT_RECORDED,
};

use crate::{
    helpers::{Entry, config, count, entry, finish, read_u64, tgid},
    probes::{CONFIG, add_stats, record_allocation},
};

#[map(name = "LIVE")]
static LIVE: HashMap<LiveKey, LiveObject> =
    HashMap::with_max_entries(MAX_LIVE_OBJECTS, BPF_F_NO_PREALLOC);

#[map(name = "RATES")]
static RATES: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "FREES")]
static FREES: HashMap<AllocKey, AllocStats> = HashMap::with_max_entries(MAX_ALLOC_KEYS, 0);

#[uprobe]
pub fn set_profile_bucket(ctx: ProbeContext) -> u32 {
    finish(try_set_profile_bucket(&ctx))
}

/// `setprofilebucket(p unsafe.Pointer, b *bucket)`: p in RAX, b in RBX.
#[inline(always)]
fn try_set_profile_bucket(ctx: &ProbeContext) -> Result<(), Counter> {
    let tgid = tgid();
    let cfg = *config(&CONFIG, tgid).ok_or(Counter::NoConfig)?;
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    let addr = regs.rax;
    let size =
        read_u64(regs.rbx + cfg.bucket_size_offset as u64).ok_or(Counter::DropSampleUnreadable)?;
    match read_u64(cfg.mem_profile_rate_addr) {
        Some(rate) if RATES.insert(&tgid, &rate, 0).is_ok() => {}
        _ => count(Counter::RateUnrecorded),
    }
    let sample_size = u32::try_from(size).unwrap_or(u32::MAX);
    let key = record_allocation(ctx, tgid, &cfg, TYPE_NOT_RECORDED, size, sample_size)?;
    let live = LiveKey {
        tgid,
        _pad: 0,
        addr,
    };
    // An address is reused only after its previous object's free was seen, so a failed
    // insert means the map is full.
    LIVE.insert(&live, &LiveObject { key, size }, BPF_NOEXIST as u64)
        .map_err(|_| Counter::DropLiveMapFull)
}

#[uprobe]
pub fn free_special(ctx: ProbeContext) -> u32 {
    finish(try_free_special(&ctx))
}

/// `freeSpecial(s *special, p unsafe.Pointer, size uintptr)`: s in RAX, p in RBX.
#[inline(always)]
fn try_free_special(ctx: &ProbeContext) -> Result<(), Counter> {
    let tgid = tgid();
    let cfg = *config(&CONFIG, tgid).ok_or(Counter::NoConfig)?;
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    // SAFETY: bpf_probe_read_user fails cleanly on a bad address; a u8 has no invalid values.
    let kind =
        unsafe { bpf_probe_read_user((regs.rax + cfg.special_kind_offset as u64) as *const u8) }
            .map_err(|_| Counter::DropSpecialUnreadable)?;
    if kind as u32 != cfg.special_kind_profile {
        return Ok(());
    }
    let live = LiveKey {
        tgid,
        _pad: 0,
        addr: regs.rbx,
    };
    // SAFETY: read-only copy of a plain value.
    let object = (unsafe { LIVE.get(&live) })
        .copied()
        .ok_or(Counter::FreeBeforeTrace)?;
    // Cannot fail: the entry was just read, and an object's special is freed once.
    let _ = LIVE.remove(&live);
    count(Counter::Frees);
    let first = AllocStats {
        bytes: object.size,
        objects: 1,
    };
    match entry(&FREES, &object.key, &first) {
        Some(Entry::Existing(stats)) => {
            // SAFETY: a live map value.
            unsafe { add_stats(stats, object.size) };
            Ok(())
        }
        Some(Entry::Inserted) => Ok(()),
        None => Err(Counter::DropFreeMapFull),
    }
}

/// `--enable-runtime-sampling` at launch: on `runtime.main`'s entry (after `schedinit`,
/// which resets `MemProfileRate` when the sampler is compiled out; before any user code)
/// the launched target stops itself, so gomemtrace, its ptrace tracer, writes the rate and
/// resumes it with the stop suppressed. Attached to that one process only, and detached
/// once it fired.
#[uprobe]
pub fn stop_at_main(_ctx: ProbeContext) -> u32 {
    const SIGSTOP: u32 = 19;
    // SAFETY: the helper signals the current thread only; it takes no pointers.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal_thread(SIGSTOP) };
    0
}
