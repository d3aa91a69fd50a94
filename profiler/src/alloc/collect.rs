//! Turns what the probes aggregated ([`Snapshot`]) into the profile model: symbolized
//! stacks, type names, goroutine totals and drop counts.

use std::collections::HashMap;

use gomemtrace_common::Counter;
use gomemtrace_gobin::{GoBinary, types};
use gomemtrace_report::model::{
    AllocProfile, AllocSample, Drops, GoroutineSummary, InUse, Mode, RuntimeCounters, TargetInfo,
};

use crate::{
    bpf::{Counters, Snapshot},
    symbolizer::Symbolizer,
};

pub struct CollectInput<'a> {
    pub snapshot: &'a Snapshot,
    pub pid: u32,
    pub binary: &'a GoBinary,
    pub target: TargetInfo,
    pub mode: Mode,
    /// Runtime-sampled mode: the target's `MemProfileRate`.
    pub sample_rate: Option<u64>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    /// Duty-cycled mode: the windows, to scale counts by.
    pub duty: Option<&'a crate::alloc::duty::DutyRecord>,
    /// The runtime's counters over the trace, or why they could not be read; `None` where
    /// they were not asked for.
    pub counters: Option<Result<RuntimeCounters, crate::alloc::counters::CountersError>>,
    /// Scale estimating modes' samples to `counters` (`--totals runtime`).
    pub scale_to_counters: bool,
}

pub fn build_profile(input: CollectInput<'_>, symbolizer: &mut Symbolizer<'_>) -> AllocProfile {
    let CollectInput {
        snapshot,
        pid,
        binary,
        target,
        mode,
        sample_rate,
        start_unix_ns,
        duration_ns,
        duty,
        counters,
        scale_to_counters,
    } = input;
    let scaled = duty.map(|d| d.estimates()).unwrap_or_default();
    let rate = if mode == Mode::Runtime {
        sample_rate.unwrap_or(1)
    } else {
        1
    };
    let type_names = TypeNames::new(binary, symbolizer);
    let mut samples = Vec::new();
    for (key, stats) in snapshot.allocs.iter().filter(|(k, _)| k.tgid == pid) {
        let mut pcs: Vec<u64> = snapshot.stacks.get(&key.stack).cloned().unwrap_or_default();
        insert_direct_caller(&mut pcs, key.caller_pc);
        let stack = pcs
            .iter()
            .enumerate()
            .map(|(i, &pc)| symbolizer.location(pc, i > 0))
            .collect();
        let (objects, bytes) = match scaled.get(key) {
            Some(s) => (s.objects, s.bytes),
            None => unbias(stats.objects, stats.bytes, rate),
        };
        let estimate = scaled.get(key).map(|s| s.estimate);
        let inuse = (mode == Mode::Runtime).then(|| {
            let freed = snapshot.frees.get(key).copied().unwrap_or_default();
            let (objects, bytes) = unbias(
                stats.objects.saturating_sub(freed.objects),
                stats.bytes.saturating_sub(freed.bytes),
                rate,
            );
            InUse { bytes, objects }
        });
        samples.push(AllocSample {
            stack,
            goid: key.goid,
            type_name: type_names.name(key.typ),
            bytes,
            objects,
            inuse,
            estimate,
        });
    }
    let (mut runtime_counters, runtime_counters_error) = match counters {
        Some(Ok(c)) => (Some(c), None),
        Some(Err(why)) => (None, Some(why.to_string())),
        None => (None, None),
    };
    // Estimating modes: the probes give each stack's share, the runtime the volume.
    if let Some(c) = runtime_counters.as_mut()
        && matches!(mode, Mode::Duty | Mode::Runtime)
        && scale_to_counters
        && c.events_after_reading == 0
    {
        crate::alloc::counters::scale(&mut samples, c);
    }
    samples.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.objects.cmp(&a.objects)));
    let goroutines = goroutine_totals(&samples, snapshot, pid, symbolizer);
    AllocProfile {
        target,
        mode,
        sample_rate: (mode == Mode::Runtime).then_some(rate),
        start_unix_ns,
        duration_ns,
        events: snapshot.counters.get(Counter::Events),
        event_bytes: snapshot.counters.get(Counter::EventBytes),
        samples,
        goroutines,
        mappings: symbolizer.mappings.clone(),
        drops: drops(&snapshot.counters),
        duty: duty.map(|d| d.summary()),
        runtime_counters,
        runtime_counters_error,
    }
}

/// Estimates (objects, bytes) allocated from the runtime's samples, as pprof does
/// (`scaleHeapSample`): an object of size s is sampled with probability
/// 1 − exp(−s/rate), so each sample stands for 1/(1 − exp(−avg/rate)) objects of the
/// key's average size. A rate of 1 samples everything.
pub(crate) fn unbias(objects: u64, bytes: u64, rate: u64) -> (u64, u64) {
    if objects == 0 || bytes == 0 || rate <= 1 {
        return (objects, bytes);
    }
    let avg = bytes as f64 / objects as f64;
    let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
    (
        (objects as f64 * scale) as u64,
        (bytes as f64 * scale) as u64,
    )
}

/// At a function's entry the frame-pointer walk starts at the caller's frame, so it misses
/// the direct caller; the probe read it from `[rsp]`. Kernels that detect a uprobe on the
/// `push %rbp` of an entry (6.12+) already add it: then it is not added twice.
pub(crate) fn insert_direct_caller(pcs: &mut Vec<u64>, caller_pc: u64) {
    if caller_pc == 0 || pcs.get(1) == Some(&caller_pc) {
        return;
    }
    let at = pcs.len().min(1);
    pcs.insert(at, caller_pc);
}

pub fn drops(counters: &Counters) -> Drops {
    Drops {
        alloc_map_full: counters.get(Counter::DropAllocMapFull),
        stack_unreadable: counters.get(Counter::StackUnreadable),
        stack_map_full: counters.get(Counter::StackMapFull),
        goid_unreadable: counters.get(Counter::GoidUnreadable),
        stack_cycle: counters.get(Counter::StackCycle),
        stack_off_stack: counters.get(Counter::StackOffStack),
        goroutine_map_full: counters.get(Counter::DropGoroutineMapFull),
        live_map_full: counters.get(Counter::DropLiveMapFull),
        sample_unreadable: counters.get(Counter::DropSampleUnreadable),
        free_map_full: counters.get(Counter::DropFreeMapFull),
        special_unreadable: counters.get(Counter::DropSpecialUnreadable),
        rate_unrecorded: counters.get(Counter::RateUnrecorded),
    }
}

fn goroutine_totals(
    samples: &[AllocSample],
    snapshot: &Snapshot,
    pid: u32,
    symbolizer: &Symbolizer<'_>,
) -> Vec<GoroutineSummary> {
    let mut totals: HashMap<u64, (u64, u64)> = HashMap::new();
    for s in samples {
        let t = totals.entry(s.goid).or_default();
        t.0 += s.bytes;
        t.1 += s.objects;
    }
    let mut out: Vec<GoroutineSummary> = totals
        .into_iter()
        .map(|(goid, (bytes, objects))| GoroutineSummary {
            goid,
            start_function: snapshot
                .goroutine_start_pcs
                .get(&(pid, goid))
                .and_then(|&pc| symbolizer.function_name(pc)),
            bytes,
            objects,
        })
        .collect();
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.goid.cmp(&b.goid)));
    out
}

/// Names `*_type` pointers from the binary's type descriptors (moduledata.types).
struct TypeNames<'a> {
    binary: &'a GoBinary,
    bias: u64,
    types_base: Option<u64>,
}

impl<'a> TypeNames<'a> {
    fn new(binary: &'a GoBinary, symbolizer: &Symbolizer<'_>) -> Self {
        Self {
            binary,
            bias: symbolizer.bias(),
            types_base: binary.types_range().map(|(start, _)| start),
        }
    }

    /// `None` for the runtime's nil `typ`.
    fn name(&self, typ: u64) -> Option<String> {
        if typ == 0 || typ == gomemtrace_common::TYPE_NOT_RECORDED {
            return None;
        }
        let vaddr = typ.wrapping_sub(self.bias);
        let read = |addr: u64, len: usize| self.binary.read_vaddr(addr, len).map(<[u8]>::to_vec);
        let name = self
            .types_base
            .and_then(|base| types::type_name(&read, base, vaddr));
        Some(name.unwrap_or_else(|| format!("<type at {typ:#x}>")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbiases_like_pprof() {
        // Rate 1 (every allocation sampled) and exact mode leave counts alone.
        assert_eq!(unbias(10, 640, 1), (10, 640));
        // 64-byte objects at 512 KiB: each sample stands for ~8192.5 objects.
        let (objects, bytes) = unbias(1, 64, 512 * 1024);
        assert_eq!(objects, 8192);
        assert_eq!(bytes, 524_320);
        // Objects far bigger than the rate are always sampled: no scaling.
        assert_eq!(unbias(2, 2 << 30, 512 * 1024), (2, 2 << 30));
    }

    #[test]
    fn direct_caller_is_added_once() {
        let mut walked_without_caller = vec![0x10, 0x30];
        insert_direct_caller(&mut walked_without_caller, 0x20);
        assert_eq!(walked_without_caller, [0x10, 0x20, 0x30]);

        let mut walked_with_caller = vec![0x10, 0x20, 0x30];
        insert_direct_caller(&mut walked_with_caller, 0x20);
        assert_eq!(walked_with_caller, [0x10, 0x20, 0x30]);

        let mut unreadable = vec![];
        insert_direct_caller(&mut unreadable, 0x20);
        assert_eq!(unreadable, [0x20]);
    }
}
