//! User stacks, stored once per distinct stack under a 64-bit hash of their PCs — shared by
//! every program that records a stack into a `HashMap<u64, UserStack>`.
//!
//! The kernel's own stack-id map is not used: it keys by a hash masked to its bucket count
//! and refuses colliding stacks, which with a few hundred distinct stacks is near certain.

use crate::helpers::{Counted, count};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::bpf_get_stack,
    macros::map,
    maps::{HashMap, PerCpuArray},
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
    let len = (copied as usize / 8).min(MAX_STACK_DEPTH);
    stack.len = len as u32;
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
