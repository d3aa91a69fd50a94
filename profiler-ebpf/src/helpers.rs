//! What every program does: count into its per-CPU counter array, read user memory and
//! registers, take the time, find the current process and its configuration.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    maps::{HashMap, PerCpuArray},
};

/// A counter enum of `gomemtrace_common` (`#[repr(u32)]`, one slot per variant) and the
/// per-CPU array its program counts into; implemented with [`counter_array!`].
pub(crate) trait Counted: Copy {
    /// The per-CPU array of this enum's counters.
    fn array() -> &'static PerCpuArray<u64>;
    /// The counter's slot in [`Counted::array`].
    fn index(self) -> u32;
}

/// `counter_array!(Enum => ARRAY)`: `Enum`'s counters live in the per-CPU array `ARRAY`.
macro_rules! counter_array {
    ($counter:ty => $array:ident) => {
        impl $crate::helpers::Counted for $counter {
            #[inline(always)]
            fn array() -> &'static aya_ebpf::maps::PerCpuArray<u64> {
                &$array
            }

            #[inline(always)]
            fn index(self) -> u32 {
                self as u32
            }
        }
    };
}
pub(crate) use counter_array;

/// Adds `n` to `counter`.
#[inline(always)]
pub(crate) fn count_n<C: Counted>(counter: C, n: u64) {
    if let Some(slot) = C::array().get_ptr_mut(counter.index()) {
        // SAFETY: the pointer comes from a per-CPU array slot of this CPU; BPF programs do
        // not migrate CPUs while running, so nothing else writes it concurrently.
        unsafe { *slot += n };
    }
}

/// Adds 1 to `counter`.
#[inline(always)]
pub(crate) fn count<C: Counted>(counter: C) {
    count_n(counter, 1);
}

/// A program's return value once its work is done: 0, after counting why it stopped
/// early, if it did. Every entry point is `finish(try_x(&ctx))`.
#[inline(always)]
pub(crate) fn finish<C: Counted>(result: Result<(), C>) -> u32 {
    if let Err(reason) = result {
        count(reason);
    }
    0
}

/// The 8-byte word at `addr` in the current process, if it can be read.
#[inline(always)]
pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies from user memory and fails cleanly on a bad
    // address; the value is a plain integer, valid for any bit pattern.
    unsafe { bpf_probe_read_user(addr as *const u64).ok() }
}

/// `CLOCK_MONOTONIC` ns (the clock of Go's `nanotime`).
#[inline(always)]
pub(crate) fn ktime() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_ns() }
}

/// The current process (thread-group id) and thread.
#[inline(always)]
pub(crate) fn tgid_pid() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The current process (thread-group id).
#[inline(always)]
pub(crate) fn tgid() -> u32 {
    tgid_pid().0
}

/// The configuration userspace wrote for process `tgid` into `map`, if any.
#[inline(always)]
pub(crate) fn config<T>(map: &'static HashMap<u32, T>, tgid: u32) -> Option<&'static T> {
    // SAFETY: configuration values are replaced whole by userspace, never partially
    // written, and only read here.
    unsafe { map.get(&tgid) }
}

/// `reg!(ctx, rax)`: a user register of a uprobe's context, as a volatile load at a
/// constant offset from the context (the verifier rejects loads through a context pointer
/// that LLVM has offset first, as it does for a select of addresses).
macro_rules! reg {
    ($ctx:expr, $reg:ident) => {
        // SAFETY: for a uprobe, ctx.regs points at the user registers saved by the kernel.
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.regs).$reg) }
    };
}
pub(crate) use reg;

/// Adds `n` to a `u64` of a map value shared by all CPUs.
///
/// # Safety
/// `field` must point into a live map value.
#[inline(always)]
pub(crate) unsafe fn atomic_add(field: *mut u64, n: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: the caller guarantees a live value; BPF_ATOMIC add (XADD) is atomic across
    // CPUs. core's AtomicU64::fetch_add is not available on the bpf target, so the
    // intrinsic is used directly.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, n);
    }
}

/// What [`entry`] found.
pub(crate) enum Entry<V> {
    /// The key was there, or another CPU inserted it meanwhile: its live value.
    Existing(*mut V),
    /// The key was not there: the given first value was inserted.
    Inserted,
}

/// The value of `key` in `map`, or else `first` inserted as its value; `None` when the
/// map is full.
#[inline(always)]
pub(crate) fn entry<K, V>(map: &HashMap<K, V>, key: &K, first: &V) -> Option<Entry<V>> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(Entry::Existing(value));
    }
    if map.insert(key, first, BPF_NOEXIST as u64).is_ok() {
        return Some(Entry::Inserted);
    }
    // Another CPU inserted the key first (then it is there now), or the map is full.
    map.get_ptr_mut(key).map(Entry::Existing)
}
