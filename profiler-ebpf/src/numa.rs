//! NUMA-balancing hint faults of a Go process, attributed to goroutines
//! (`gomemtrace numa`, docs/NUMA.md).
//!
//! - tracepoint `exceptions:page_fault_user` (`address` at offset 8, `ip` at 16): the last
//!   user-mode fault of each thread of a traced process, so the hint fault knows its data
//!   address. Only used when its `ip` is the faulting task's user `ip`: a hint fault taken
//!   in kernel mode (a syscall touching a hinted page, e.g. a futex word) must not inherit
//!   the address of the thread's previous user fault.
//! - fentry `task_numa_fault(int last_cpupid, int mem_node, int pages, int flags)`, which
//!   the kernel calls in the faulting task once a hint fault is resolved: local iff
//!   `flags & TNF_FAULT_LOCAL`. The goroutine is R14 of the task's user registers
//!   (`bpf_task_pt_regs`) when it is a `g` whose `m.curg` is itself; R14 = `m.g0` means the
//!   system stack (goid 0); otherwise the TLS copy of `g` at `fsbase - 8`.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task_btf, bpf_get_numa_node_id, bpf_get_smp_processor_id,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{fentry, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, TracePointContext},
};
use gomemtrace_common::{
    CachedGoroutine, GoidSource, MAX_CACHED_GOROUTINES, MAX_FAULTING_THREADS, MAX_NUMA_STACKS,
    MAX_PROCESSES, NUMA_EVENTS_BYTES, NumaConfig, NumaCounter, NumaFaultEvent, RtGKey, UserStack,
};

use crate::{
    helpers::{config, count, counter_array, finish, ktime, read_u64, tgid_pid},
    stacks::user_stack_key,
};

#[map(name = "NUMA_CONFIG")]
static NUMA_CONFIG: HashMap<u32, NumaConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

#[map(name = "NUMA_COUNTERS")]
static NUMA_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NumaCounter::COUNT, 0);

#[map(name = "NUMA_STACKS")]
static NUMA_STACKS: HashMap<u64, UserStack> =
    HashMap::with_max_entries(MAX_NUMA_STACKS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Last user page fault per thread of a traced process: `[address, ip]`.
#[map(name = "FAULT_ADDRS")]
static FAULT_ADDRS: LruHashMap<u32, [u64; 2]> =
    LruHashMap::with_max_entries(MAX_FAULTING_THREADS, 0);

/// The goroutine of each `g` address seen, for faults where the `g` is unreadable.
#[map(name = "NUMA_GOROUTINES")]
static NUMA_GOROUTINES: LruHashMap<RtGKey, CachedGoroutine> =
    LruHashMap::with_max_entries(MAX_CACHED_GOROUTINES, 0);

#[map(name = "NUMA_EVENTS")]
static NUMA_EVENTS: RingBuf = RingBuf::with_byte_size(NUMA_EVENTS_BYTES, 0);

counter_array!(NumaCounter => NUMA_COUNTERS);

/// The word at `addr` in the current process, 0 if it cannot be read (faults are
/// attributed from whatever can be read; see [`goroutine`]).
#[inline(always)]
fn read_user(addr: u64) -> u64 {
    read_u64(addr).unwrap_or(0)
}

#[inline(always)]
fn read_kernel(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// `exceptions:page_fault_user`: remember the address per thread.
#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    finish(try_page_fault_user(&ctx))
}

#[inline(always)]
fn try_page_fault_user(ctx: &TracePointContext) -> Result<(), NumaCounter> {
    let (tgid, tid) = tgid_pid();
    if config(&NUMA_CONFIG, tgid).is_none() {
        // Every process's faults come here: only traced ones count.
        return Ok(());
    }
    // SAFETY: `address` is the first field after the 8-byte common header.
    let addr = unsafe { ctx.read_at::<u64>(8) }.map_err(|_| NumaCounter::FaultUnreadable)?;
    // SAFETY: as above; `ip` follows `address`.
    let ip = unsafe { ctx.read_at::<u64>(16) }.map_err(|_| NumaCounter::FaultUnreadable)?;
    FAULT_ADDRS
        .insert(&tid, &[addr, ip], 0)
        .map_err(|_| NumaCounter::FaultNotRemembered)
}

/// Remembers the goroutine of `g` for faults where that `g` cannot be read.
#[inline(always)]
fn cache_goroutine(key: &RtGKey, found: &CachedGoroutine) {
    if NUMA_GOROUTINES.insert(key, found, 0).is_err() {
        count(NumaCounter::GoroutineNotCached);
    }
}

/// The goroutine running in user mode: `(goid, gopc, startpc, source)`. A read `g` is
/// remembered; a `g` that cannot be read (NUMA balancing unmaps the runtime's own pages
/// too, and a BPF program cannot fault them in) is looked up among those remembered.
#[inline(always)]
fn goroutine(cfg: &NumaConfig, tgid: u32, r14: u64, task: u64) -> (u64, u64, u64, GoidSource) {
    let key = RtGKey {
        tgid,
        _pad: 0,
        g: r14,
    };
    let m = read_user(r14.wrapping_add(cfg.g_m as u64));
    if m != 0 {
        let curg = read_user(m.wrapping_add(cfg.m_curg as u64));
        if curg == r14 {
            let found = CachedGoroutine {
                goid: read_user(r14 + cfg.g_goid as u64),
                gopc: read_user(r14 + cfg.g_gopc as u64),
                start_pc: read_user(r14 + cfg.g_startpc as u64),
                source: GoidSource::R14 as u32,
                _pad: 0,
            };
            if found.goid != 0 {
                cache_goroutine(&key, &found);
                return (found.goid, found.gopc, found.start_pc, GoidSource::R14);
            }
        }
        if read_user(m) == r14 {
            let g0 = CachedGoroutine {
                source: GoidSource::SystemStack as u32,
                ..CachedGoroutine::default()
            };
            cache_goroutine(&key, &g0);
            return (0, 0, 0, GoidSource::SystemStack);
        }
    }
    // SAFETY: read-only copy of a plain value.
    if let Some(c) = unsafe { NUMA_GOROUTINES.get(&key) } {
        if c.source == GoidSource::SystemStack as u32 {
            return (0, 0, 0, GoidSource::SystemStack);
        }
        return (c.goid, c.gopc, c.start_pc, GoidSource::Cached);
    }
    if cfg.task_fsbase != 0 {
        let fsbase = read_kernel(task + cfg.task_fsbase as u64);
        let g = read_user(fsbase.wrapping_sub(8));
        let m = read_user(g.wrapping_add(cfg.g_m as u64));
        let curg = read_user(m.wrapping_add(cfg.m_curg as u64));
        if g != 0 && m != 0 && curg != 0 {
            if curg != g {
                return (0, 0, 0, GoidSource::SystemStack);
            }
            // A g spans two pages: its goid may be unreadable though its m is not.
            let goid = read_user(g + cfg.g_goid as u64);
            if goid != 0 {
                return (
                    goid,
                    read_user(g + cfg.g_gopc as u64),
                    read_user(g + cfg.g_startpc as u64),
                    GoidSource::Tls,
                );
            }
        }
    }
    (0, 0, 0, GoidSource::Unknown)
}

/// `task_numa_fault(int last_cpupid, int mem_node, int pages, int flags)`, in the faulting
/// task.
#[fentry(function = "task_numa_fault")]
pub fn task_numa_fault(ctx: FEntryContext) -> u32 {
    finish(try_task_numa_fault(&ctx))
}

#[inline(always)]
fn try_task_numa_fault(ctx: &FEntryContext) -> Result<(), NumaCounter> {
    let (tgid, tid) = tgid_pid();
    let Some(cfg) = config(&NUMA_CONFIG, tgid).copied() else {
        // Every process's hint faults come here: only traced ones count.
        return Ok(());
    };
    count(NumaCounter::Faults);
    let mem_node: i32 = ctx.arg(1);
    let pages: i32 = ctx.arg(2);
    let flags: i32 = ctx.arg(3);
    // SAFETY: takes no arguments; returns the current task.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // SAFETY: the current task is valid for the duration of the program.
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as *const pt_regs;
    // SAFETY: bpf_probe_read_kernel of the saved user registers fails cleanly.
    let (r14, ip) = unsafe {
        (
            bpf_probe_read_kernel(&raw const (*regs).r14).unwrap_or(0),
            bpf_probe_read_kernel(&raw const (*regs).rip).unwrap_or(0),
        )
    };
    let (goid, gopc, start_pc, source) = goroutine(&cfg, tgid, r14, task);
    if matches!(source, GoidSource::Unknown) {
        count(NumaCounter::GoidUnknown);
    }
    // SAFETY: read-only copy of a plain value.
    let addr = match unsafe { FAULT_ADDRS.get(&tid) } {
        Some(&[addr, fault_ip]) if fault_ip == ip => {
            // Used once: the thread's next hint fault comes with its own user fault.
            // Cannot fail: the entry was just read, and only this thread removes it.
            let _ = FAULT_ADDRS.remove(&tid);
            addr
        }
        _ => {
            count(NumaCounter::NoFaultAddress);
            0
        }
    };
    let stack = user_stack_key(
        ctx,
        &NUMA_STACKS,
        NumaCounter::StackUnreadable,
        NumaCounter::StackMapFull,
    );
    let event = NumaFaultEvent {
        tgid,
        tid,
        // SAFETY: these helpers take no arguments.
        cpu_node: unsafe { bpf_get_numa_node_id() } as u32,
        mem_node,
        pages: pages as u32,
        flags: flags as u32,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
        goid_source: source as u32,
        goid,
        gopc,
        start_pc,
        addr,
        ip,
        stack,
        t_ns: ktime(),
    };
    NUMA_EVENTS
        .output(&event, 0)
        .map_err(|_| NumaCounter::DropRingFull)?;
    count(NumaCounter::EventsSent);
    Ok(())
}
