//! Which runtime globals the GC probe reads when a cycle ends, and where they are.
//!
//! The probe reads up to [`GC_SLOTS`] 8-byte words at addresses userspace chooses; this
//! module assigns each slot a field of `runtime.work` (`workType`), `runtime.memstats`
//! (`mstats`), `runtime.gcController` (`gcControllerState`) or `runtime.runtimeInitTime`,
//! finds the variable in `.symtab` and the member offset in the binary's DWARF, and later
//! decodes the words read. A stripped binary has neither, so every slot stays unread and
//! the fields that need one print as `?`.

use gomemtrace_common::GC_SLOTS;
use gomemtrace_gobin::{GoBinary, offsets::StructOffsets};

/// The structs whose DWARF layout is needed.
pub const STRUCTS: [&str; 3] = [
    "runtime.workType",
    "runtime.mstats",
    "runtime.gcControllerState",
];

/// What a slot holds. The discriminant is the slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `memstats.numgc` (uint32): cycles completed, incremented in mark termination.
    NumGc = 0,
    /// `work.heap0/heap1/heap2`: heap at cycle start, at mark termination, marked live.
    Heap0 = 1,
    Heap1 = 2,
    Heap2 = 3,
    /// `gcController.lastHeapGoal`: the goal of the cycle that just ended.
    LastHeapGoal = 4,
    /// `gcController.lastStackScan` (1.21+) / `maxStackScan` (1.19).
    StackScan = 5,
    /// `gcController.globalsScan`.
    GlobalsScan = 6,
    /// `work.maxprocs`, `work.stwprocs` (int32).
    MaxProcs = 7,
    StwProcs = 8,
    /// `gcController.assistTime`, `dedicatedMarkTime`, `fractionalMarkTime`,
    /// `idleMarkTime` (ns of CPU).
    AssistTime = 9,
    DedicatedMarkTime = 10,
    FractionalMarkTime = 11,
    IdleMarkTime = 12,
    /// `memstats.gc_cpu_fraction` (float64).
    GcCpuFraction = 13,
    /// `runtime.runtimeInitTime`: `nanotime()` when the runtime started.
    RuntimeInitTime = 14,
    /// `work.userForced` (bool).
    UserForced = 15,
    /// `work.pauseNS`: the runtime's own sum of this cycle's pauses.
    PauseNs = 16,
    /// `work.tSweepTerm`, `tMark`, `tMarkTerm`, `tEnd`: the runtime's own phase times.
    TSweepTerm = 17,
    TMark = 18,
    TMarkTerm = 19,
    TEnd = 20,
    /// `memstats.pause_total_ns`.
    PauseTotalNs = 21,
    /// `work.cycles` (uint32).
    Cycles = 22,
    /// `gcController.gcPercent` (int32): GOGC.
    GcPercent = 23,
    /// `gcController.memoryLimit` (int64): GOMEMLIMIT (math.MaxInt64: none).
    MemoryLimit = 24,
}

/// Where one slot's value lives, by name.
struct Spec {
    slot: Slot,
    var: &'static str,
    /// The variable's struct type and the member (first one present wins), or `None` for
    /// a scalar variable.
    member: Option<(&'static str, &'static [&'static str])>,
    /// Bytes of the value; the rest of the 8-byte word is masked off.
    width: u8,
}

const WORK: &str = "runtime.work";
const WORK_T: &str = "runtime.workType";
const MEMSTATS: &str = "runtime.memstats";
const MEMSTATS_T: &str = "runtime.mstats";
const CONTROLLER: &str = "runtime.gcController";
const CONTROLLER_T: &str = "runtime.gcControllerState";

const fn spec(
    slot: Slot,
    var: &'static str,
    strukt: &'static str,
    members: &'static [&'static str],
    width: u8,
) -> Spec {
    Spec {
        slot,
        var,
        member: Some((strukt, members)),
        width,
    }
}

const SPECS: [Spec; GC_SLOTS] = [
    spec(Slot::NumGc, MEMSTATS, MEMSTATS_T, &["numgc"], 4),
    spec(Slot::Heap0, WORK, WORK_T, &["heap0"], 8),
    spec(Slot::Heap1, WORK, WORK_T, &["heap1"], 8),
    spec(Slot::Heap2, WORK, WORK_T, &["heap2"], 8),
    spec(
        Slot::LastHeapGoal,
        CONTROLLER,
        CONTROLLER_T,
        &["lastHeapGoal"],
        8,
    ),
    spec(
        Slot::StackScan,
        CONTROLLER,
        CONTROLLER_T,
        &["lastStackScan", "maxStackScan"],
        8,
    ),
    spec(
        Slot::GlobalsScan,
        CONTROLLER,
        CONTROLLER_T,
        &["globalsScan"],
        8,
    ),
    spec(Slot::MaxProcs, WORK, WORK_T, &["maxprocs"], 4),
    spec(Slot::StwProcs, WORK, WORK_T, &["stwprocs"], 4),
    spec(
        Slot::AssistTime,
        CONTROLLER,
        CONTROLLER_T,
        &["assistTime"],
        8,
    ),
    spec(
        Slot::DedicatedMarkTime,
        CONTROLLER,
        CONTROLLER_T,
        &["dedicatedMarkTime"],
        8,
    ),
    spec(
        Slot::FractionalMarkTime,
        CONTROLLER,
        CONTROLLER_T,
        &["fractionalMarkTime"],
        8,
    ),
    spec(
        Slot::IdleMarkTime,
        CONTROLLER,
        CONTROLLER_T,
        &["idleMarkTime"],
        8,
    ),
    spec(
        Slot::GcCpuFraction,
        MEMSTATS,
        MEMSTATS_T,
        &["gc_cpu_fraction"],
        8,
    ),
    Spec {
        slot: Slot::RuntimeInitTime,
        var: "runtime.runtimeInitTime",
        member: None,
        width: 8,
    },
    spec(Slot::UserForced, WORK, WORK_T, &["userForced"], 1),
    spec(Slot::PauseNs, WORK, WORK_T, &["pauseNS"], 8),
    spec(Slot::TSweepTerm, WORK, WORK_T, &["tSweepTerm"], 8),
    spec(Slot::TMark, WORK, WORK_T, &["tMark"], 8),
    spec(Slot::TMarkTerm, WORK, WORK_T, &["tMarkTerm"], 8),
    spec(Slot::TEnd, WORK, WORK_T, &["tEnd"], 8),
    spec(
        Slot::PauseTotalNs,
        MEMSTATS,
        MEMSTATS_T,
        &["pause_total_ns"],
        8,
    ),
    spec(Slot::Cycles, WORK, WORK_T, &["cycles"], 4),
    spec(Slot::GcPercent, CONTROLLER, CONTROLLER_T, &["gcPercent"], 4),
    spec(
        Slot::MemoryLimit,
        CONTROLLER,
        CONTROLLER_T,
        &["memoryLimit"],
        8,
    ),
];

/// The file virtual addresses of the slots found in one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Globals {
    /// Per slot: link-time address, or `None` when it cannot be found.
    pub addrs: [Option<u64>; GC_SLOTS],
    /// Why some or all slots are missing (for the status line and docs).
    pub missing: Option<String>,
}

impl Globals {
    /// Finds the slots' addresses from `.symtab` and the DWARF layouts in `structs`.
    pub fn locate(binary: &GoBinary, structs: Option<&StructOffsets>) -> Self {
        let mut addrs = [None; GC_SLOTS];
        if binary.is_stripped() {
            return Self {
                addrs,
                missing: Some(
                    "stripped binary: no .symtab, so runtime.work, runtime.memstats and \
                     runtime.gcController cannot be located"
                        .into(),
                ),
            };
        }
        let mut not_found = Vec::new();
        for spec in &SPECS {
            let offset = match spec.member {
                None => Some(0),
                Some((strukt, members)) => structs
                    .and_then(|s| s.get(strukt))
                    .and_then(|fields| members.iter().find_map(|m| fields.get(*m)))
                    .copied(),
            };
            match (binary.symbol(spec.var), offset) {
                (Some(base), Some(offset)) => addrs[spec.slot as usize] = Some(base + offset),
                _ => not_found.push(format!("{:?}", spec.slot)),
            }
        }
        let missing = if structs.is_none() {
            Some("no DWARF (-ldflags=-w): runtime struct layouts unknown".into())
        } else if not_found.is_empty() {
            None
        } else {
            Some(format!("not found: {}", not_found.join(", ")))
        };
        Self { addrs, missing }
    }

    /// Runtime addresses for the probe (0 = unread): link-time address + load bias.
    pub fn runtime_addrs(&self, bias: u64) -> [u64; GC_SLOTS] {
        self.addrs.map(|a| a.map_or(0, |a| a.wrapping_add(bias)))
    }

    pub fn any(&self) -> bool {
        self.addrs.iter().any(Option::is_some)
    }
}

/// The decoded words of one cycle: `None` for a slot that was not read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Values([Option<u64>; GC_SLOTS]);

impl Values {
    pub fn decode(globals: &Globals, raw: &[u64; GC_SLOTS]) -> Self {
        let mut values = [None; GC_SLOTS];
        for spec in &SPECS {
            let i = spec.slot as usize;
            if globals.addrs[i].is_some() {
                let mask = match spec.width {
                    8 => u64::MAX,
                    w => (1u64 << (u32::from(w) * 8)) - 1,
                };
                values[i] = Some(raw[i] & mask);
            }
        }
        Self(values)
    }

    pub fn get(&self, slot: Slot) -> Option<u64> {
        self.0[slot as usize]
    }

    /// A signed 32-bit slot (`maxprocs`, `gcPercent`).
    pub fn get_i32(&self, slot: Slot) -> Option<i64> {
        self.get(slot).map(|v| i64::from(v as u32 as i32))
    }

    pub fn get_f64(&self, slot: Slot) -> Option<f64> {
        self.get(slot).map(f64::from_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_exactly_one_spec() {
        for (i, spec) in SPECS.iter().enumerate() {
            assert_eq!(spec.slot as usize, i, "{:?}", spec.slot);
        }
    }

    #[test]
    fn values_are_masked_to_their_width() {
        let globals = Globals {
            addrs: [Some(0x1000); GC_SLOTS],
            missing: None,
        };
        let mut raw = [0u64; GC_SLOTS];
        raw[Slot::NumGc as usize] = 0xdead_beef_0000_0007;
        raw[Slot::UserForced as usize] = 0xffff_ff01;
        raw[Slot::MaxProcs as usize] = 0x1234_5678_ffff_fffe;
        raw[Slot::GcCpuFraction as usize] = 0.25f64.to_bits();
        let v = Values::decode(&globals, &raw);
        assert_eq!(v.get(Slot::NumGc), Some(7));
        assert_eq!(v.get(Slot::UserForced), Some(1));
        assert_eq!(v.get_i32(Slot::MaxProcs), Some(-2));
        assert_eq!(v.get_f64(Slot::GcCpuFraction), Some(0.25));
        let none = Globals {
            addrs: [None; GC_SLOTS],
            missing: Some("stripped".into()),
        };
        assert_eq!(Values::decode(&none, &raw).get(Slot::Heap0), None);
        assert_eq!(none.runtime_addrs(0x5000), [0; GC_SLOTS]);
    }
}
