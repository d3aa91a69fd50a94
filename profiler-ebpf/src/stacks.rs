//! User stacks, stored once per distinct stack under a 64-bit hash of their PCs — shared by
//! every program that records a stack into a `HashMap<u64, UserStack>`.
//!
//! Allocation probes walk the frame-pointer chain themselves, checking each link
//! ([`checked_user_stack_key`]); the others take the kernel's walk (`bpf_get_stack`).
//!
//! The kernel's own stack-id map is not used: it keys by a hash masked to its bucket count
//! and refuses colliding stacks, which with a few hundred distinct stacks is near certain.

use crate::helpers::{Counted, count};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_stack, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use gomemtrace_common::{MAX_STACK_DEPTH, NO_STACK, STACK_HASH_SEED, UserStack, stack_hash_step};

/// Per-CPU scratch space for the stack being read (too big for the 512-byte BPF stack).
/// One slot serves every program: a CPU runs one program at a time.
#[map(name = "STACK_SCRATCH")]
static STACK_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Why no stack key could be returned; each caller counts it under its own counter.
enum StackError {
    /// The user stack could not be read.
    Unreadable,
    /// `stacks` was full.
    MapFull,
}

/// Reads the current user stack (the kernel's frame-pointer walk), stores it in `stacks`
/// unless already there, and returns its key.
#[inline(always)]
fn record_user_stack(
    ctx: &impl EbpfContext,
    stacks: &HashMap<u64, UserStack>,
) -> Result<u64, StackError> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0).ok_or(StackError::Unreadable)?;
    // SAFETY: the scratch slot belongs to this CPU for the duration of the program.
    let stack = unsafe { &mut *scratch };
    let size = core::mem::size_of_val(&stack.pcs) as u32;
    // SAFETY: the helper writes at most `size` bytes into `stack.pcs`.
    let copied = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            stack.pcs.as_mut_ptr().cast(),
            size,
            BPF_F_USER_STACK as u64,
        )
    };
    if copied <= 0 {
        return Err(StackError::Unreadable);
    }
    stack.len = (copied as usize / 8).min(MAX_STACK_DEPTH) as u32;
    store_stack(stacks, stack)
}

/// Stores `stack` in `stacks` unless already there, and returns its key.
#[inline(always)]
fn store_stack(stacks: &HashMap<u64, UserStack>, stack: &UserStack) -> Result<u64, StackError> {
    let len = stack.len as usize;
    let mut hash = STACK_HASH_SEED;
    for i in 0..MAX_STACK_DEPTH {
        if i >= len {
            break;
        }
        hash = stack_hash_step(hash, stack.pcs[i]);
    }
    let key = if hash == NO_STACK { 1 } else { hash };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { stacks.get(&key) }.is_some() {
        return Ok(key);
    }
    if stacks.insert(&key, stack, BPF_NOEXIST as u64).is_err()
        // SAFETY: as above.
        && unsafe { stacks.get(&key) }.is_none()
    {
        return Err(StackError::MapFull);
    }
    Ok(key)
}

/// The key of the current user stack in `stacks` ([`record_user_stack`]), or [`NO_STACK`]
/// with the failure counted under `unreadable` or `map_full`.
#[inline(always)]
pub(crate) fn user_stack_key<C: Counted>(
    ctx: &impl EbpfContext,
    stacks: &HashMap<u64, UserStack>,
    unreadable: C,
    map_full: C,
) -> u64 {
    match record_user_stack(ctx, stacks) {
        Ok(key) => key,
        Err(StackError::Unreadable) => {
            count(unreadable);
            NO_STACK
        }
        Err(StackError::MapFull) => {
            count(map_full);
            NO_STACK
        }
    }
}

/// The stacks a frame-pointer walk may visit. Go keeps every frame pointer on the stack of
/// the goroutine running, above the previous frame's; the one exception is the system
/// stack (g0), whose frames entered through `systemstack` link to the frames of the user
/// goroutine that switched there.
#[derive(Clone, Copy)]
pub(crate) struct StackBounds {
    /// `g.stack` of the goroutine running (R14): `[lo, hi)`.
    pub lo: u64,
    pub hi: u64,
    /// On g0 with a user goroutine (`m.curg`): that goroutine's stack, which the walk may
    /// enter once; `(0, 0)` otherwise.
    pub next_lo: u64,
    pub next_hi: u64,
    /// On g0 with no user goroutine: leaving the thread's stack ends the walk without a
    /// fault (a thread's first frame pointer is inherited from its creator, not a frame).
    pub open_end: bool,
}

/// Why a frame-pointer walk stopped before the outermost frame.
#[derive(Clone, Copy)]
enum Truncation {
    /// A link back down the stack: a cycle, or a link to a lower frame.
    Cycle,
    /// A link outside the goroutine's stack, unaligned, or unreadable.
    OffStack,
}

/// Walks the frame-pointer chain from the probe's registers into `stack` (the PC, then
/// each frame's return address), checking every link: it must point above the previous
/// frame, 8-aligned, inside the goroutine's stack. A bad link ends the walk, keeping the
/// frames read before it: an unchecked walk (the kernel's) would follow a cycle until
/// its depth limit, or read a forged frame anywhere in memory, and so credit the
/// allocation to frames that are not on the stack.
#[inline(always)]
fn walk_user_stack(
    regs: &aya_ebpf::bindings::pt_regs,
    bounds: &StackBounds,
    stack: &mut UserStack,
) -> Option<Truncation> {
    stack.pcs[0] = regs.rip;
    stack.len = 1;
    let (mut lo, mut hi) = (bounds.lo, bounds.hi);
    let mut may_switch = bounds.next_hi != 0;
    // Frames lie above the stack pointer.
    let mut prev = regs.rsp;
    let mut fp = regs.rbp;
    for _ in 1..MAX_STACK_DEPTH {
        if fp == 0 {
            // The outermost frame: a goroutine starts with no frame pointer.
            return None;
        }
        let aligned = fp & 7 == 0;
        if !(aligned && fp > prev && fp >= lo && fp < hi && hi - fp >= 16) {
            if aligned
                && may_switch
                && fp >= bounds.next_lo
                && fp < bounds.next_hi
                && bounds.next_hi - fp >= 16
            {
                (lo, hi, may_switch) = (bounds.next_lo, bounds.next_hi, false);
            } else if aligned && fp >= lo && fp < hi && fp <= prev {
                return Some(Truncation::Cycle);
            } else if bounds.open_end {
                return None;
            } else {
                return Some(Truncation::OffStack);
            }
        }
        // SAFETY: bpf_probe_read_user copies from user memory and fails cleanly on a bad
        // address; the value is plain integers, valid for any bit pattern.
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            return Some(Truncation::OffStack);
        };
        // A volatile load of the length each time: otherwise LLVM turns the index into a
        // running pointer whose bounds the verifier cannot see.
        // SAFETY: a plain field of a live value.
        let n = unsafe { core::ptr::read_volatile(&raw const stack.len) } as usize;
        if n >= MAX_STACK_DEPTH {
            return None;
        }
        stack.pcs[n] = ret;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut stack.len, n as u32 + 1) };
        prev = fp;
        fp = next;
    }
    None
}

/// Counters of [`checked_user_stack_key`]'s outcomes.
#[derive(Clone, Copy)]
pub(crate) struct StackCounters<C> {
    pub unreadable: C,
    pub map_full: C,
    pub cycle: C,
    pub off_stack: C,
}

/// The key of the current user stack in `stacks`, walked by frame pointers within
/// `bounds` ([`walk_user_stack`]); a walk cut short by a bad link is stored as far as it
/// went and counted under `cycle` or `off_stack`. [`NO_STACK`] with the failure counted
/// where nothing could be stored.
#[inline(always)]
pub(crate) fn checked_user_stack_key<C: Counted>(
    ctx: &ProbeContext,
    bounds: Option<&StackBounds>,
    stacks: &HashMap<u64, UserStack>,
    counters: StackCounters<C>,
) -> u64 {
    let (Some(bounds), Some(scratch)) = (bounds, STACK_SCRATCH.get_ptr_mut(0)) else {
        count(counters.unreadable);
        return NO_STACK;
    };
    // SAFETY: the scratch slot belongs to this CPU for the duration of the program.
    let stack = unsafe { &mut *scratch };
    // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
    let regs = unsafe { &*ctx.regs };
    match walk_user_stack(regs, bounds, stack) {
        Some(Truncation::Cycle) => count(counters.cycle),
        Some(Truncation::OffStack) => count(counters.off_stack),
        None => {}
    }
    match store_stack(stacks, stack) {
        Ok(key) => key,
        Err(_) => {
            count(counters.map_full);
            NO_STACK
        }
    }
}
