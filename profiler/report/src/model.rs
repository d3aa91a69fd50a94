//! The profile gomemtrace builds from what the probes aggregated: symbolized, typed and
//! attributed to goroutines. Every output format (text, pprof, folded, svg, json) renders
//! this one model; the json format is its serde form (schema in docs/JSON.md).

use serde::{Deserialize, Serialize};

/// One source frame. A machine PC can map to several (inlining): see [`Location`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Fully qualified function name (`main.allocSmall`, `runtime.mallocgc`, `malloc`), or
    /// `0x...` when nothing names the address.
    pub function: String,
    /// Source file, when known.
    pub file: Option<String>,
    /// Line number, 0 when unknown.
    pub line: u32,
}

/// One machine PC of a stack with its source frames, innermost (most inlined) first; the
/// last frame is the function the PC's machine code belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// Virtual address in the process.
    pub address: u64,
    /// Index into [`AllocProfile::mappings`], when the address lies in a known mapping.
    pub mapping: Option<usize>,
    pub frames: Vec<Frame>,
}

/// A mapped executable file of the target (for pprof's mapping table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    pub path: String,
    /// GNU build id, else Go build id, hex or as Go prints it.
    pub build_id: Option<String>,
}

/// Allocations that share one stack, goroutine and type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocSample {
    /// Leaf first: `stack[0]` is the allocator entry point (e.g. `runtime.mallocgc`), then
    /// its callers. Empty when the stack could not be read (counted in drops). The json
    /// form writes indexes into a shared location table instead (crate::json).
    #[serde(skip)]
    pub stack: Vec<Location>,
    /// Goroutine id (0: none could be read).
    pub goid: u64,
    /// Go type name of the allocated object; `None` when the runtime passed a nil `typ`
    /// (pointer-free slices, strings, merged escaping locals).
    pub type_name: Option<String>,
    /// Requested bytes.
    pub bytes: u64,
    /// Allocation calls.
    pub objects: u64,
    /// Of those, still live at the end of the trace (frees of sampled objects are seen in
    /// runtime-sampled mode); `None` where frees are not traced.
    #[serde(default)]
    pub inuse: Option<InUse>,
    /// Duty-cycled mode: `bytes` and `objects` are estimates scaled from the probe windows;
    /// this is their standard error. `None` where the counts are exact or unbiased samples.
    #[serde(default)]
    pub estimate: Option<Estimate>,
}

/// Standard errors of a duty-cycled estimate (see docs/SAMPLING.md for the formula).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// One standard error of `bytes`.
    pub bytes_sigma: f64,
    /// One standard error of `objects`.
    pub objects_sigma: f64,
}

/// How a duty-cycled trace (`--mode duty`) spent its time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DutyCycle {
    /// `--overhead-budget`: the most added CPU time, in percent of the target's own CPU time.
    pub overhead_budget_percent: f64,
    /// Per-event probe cost the controller charged (nanoseconds of the target's CPU).
    pub event_cost_ns: f64,
    /// `true`: the uprobe trap in it was measured on this machine at start-up; `false`:
    /// the benchmark's constant.
    #[serde(default)]
    pub event_cost_measured: bool,
    /// Probe windows.
    pub windows: u64,
    /// Time the probes were attached, summed over windows.
    pub window_ns: u64,
    /// `window_ns` / the trace's duration: the scale-up factor is its inverse.
    pub duty_fraction: f64,
    /// Allocation events the windows saw.
    pub events_observed: u64,
    /// Probe hits outside windows, while the probes were being attached or detached
    /// (ignored by the program, but they cost a trap each).
    #[serde(default)]
    pub hits_between_windows: u64,
    /// The target's CPU time over the trace (utime + stime from /proc/PID/stat).
    pub target_cpu_ns: u64,
    /// Events observed × `event_cost_ns` plus hits between windows × the empty-probe cost,
    /// in percent of the target's CPU time without them.
    pub estimated_overhead_percent: f64,
}

/// Live objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUse {
    pub bytes: u64,
    pub objects: u64,
}

/// Totals of one goroutine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoroutineSummary {
    pub goid: u64,
    /// The goroutine's start function (`g.startpc`), when it could be read.
    pub start_function: Option<String>,
    pub bytes: u64,
    pub objects: u64,
}

/// Events that were not aggregated in full. Nothing is dropped without being counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Events lost because the kernel allocation map was full.
    pub alloc_map_full: u64,
    /// Events kept without a stack because the user stack could not be read.
    pub stack_unreadable: u64,
    /// Events kept without a stack because the kernel stack map was full.
    #[serde(default)]
    pub stack_map_full: u64,
    /// Events kept under goroutine 0 because the goroutine could not be read.
    pub goid_unreadable: u64,
    /// Runtime-sampled mode: sampled objects whose free cannot be seen because the
    /// live-object map was full (they stay counted as in use).
    #[serde(default)]
    pub live_map_full: u64,
    /// Runtime-sampled mode: samples lost because their size could not be read.
    #[serde(default)]
    pub sample_unreadable: u64,
    /// Goroutines whose start function is unknown because the goroutine map was full.
    pub goroutine_map_full: u64,
    /// Runtime-sampled mode: frees of sampled objects lost because the frees map was full
    /// (the objects stay counted as in use).
    #[serde(default)]
    pub free_map_full: u64,
    /// Runtime-sampled mode: freed specials whose kind could not be read (a sampled
    /// object's free may be lost: it stays counted as in use).
    #[serde(default)]
    pub special_unreadable: u64,
    /// Runtime-sampled mode: samples at which `MemProfileRate` could not be read or kept
    /// (the rate reported may be stale or missing).
    #[serde(default)]
    pub rate_unrecorded: u64,
    /// Events whose stack was cut where its frame-pointer chain went back down the stack
    /// (a cycle, or a link to a lower frame): kept with the frames before the bad link.
    #[serde(default)]
    pub stack_cycle: u64,
    /// Events whose stack was cut where its frame-pointer chain left the goroutine's stack
    /// (a wild, unaligned or unreadable pointer): kept with the frames before it.
    #[serde(default)]
    pub stack_off_stack: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.alloc_map_full
            + self.stack_unreadable
            + self.stack_map_full
            + self.goid_unreadable
            + self.goroutine_map_full
            + self.live_map_full
            + self.sample_unreadable
            + self.free_map_full
            + self.special_unreadable
            + self.rate_unrecorded
            + self.stack_cycle
            + self.stack_off_stack
    }
}

/// What was traced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    /// Path of the executable.
    pub exe: String,
    /// Go toolchain that built it (`go1.27.3`).
    pub go_version: String,
    /// No `.symtab`: functions came from `.gopclntab`.
    pub stripped: bool,
    pub pie: bool,
    /// The allocator entry points that were probed.
    pub probes: Vec<String>,
}

/// How the events were collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every allocation was seen.
    Exact,
    /// The runtime's own heap sampler (about one allocation per `sample_rate` bytes),
    /// unbiased like pprof; the sampler is not told types, so none are recorded.
    Runtime,
    /// Exact probes attached in short windows under an overhead budget; counts scaled by
    /// total time / window time, each with its standard error ([`AllocSample::estimate`]).
    Duty,
}

/// The whole allocation profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocProfile {
    pub target: TargetInfo,
    pub mode: Mode,
    /// Runtime-sampled mode: the target's `MemProfileRate` (bytes between samples, on
    /// average) that the counts were unbiased with.
    #[serde(default)]
    pub sample_rate: Option<u64>,
    /// Wall-clock start of the trace, Unix nanoseconds.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    /// Allocation events seen (including those later dropped).
    pub events: u64,
    /// Bytes of all events seen.
    pub event_bytes: u64,
    /// Written by crate::json after the location table its stacks index.
    #[serde(skip)]
    pub samples: Vec<AllocSample>,
    /// By bytes, largest first.
    pub goroutines: Vec<GoroutineSummary>,
    pub mappings: Vec<Mapping>,
    pub drops: Drops,
    /// Duty-cycled mode: the windows, the duty fraction and the overhead estimate.
    #[serde(default)]
    pub duty: Option<DutyCycle>,
    /// The runtime's own allocation counters over the trace; `None` where they could not
    /// be read (`runtime_counters_error` says why).
    #[serde(default)]
    pub runtime_counters: Option<RuntimeCounters>,
    #[serde(default)]
    pub runtime_counters_error: Option<String>,
}

/// What the target's runtime counted (`runtime.MemStats`' `TotalAlloc`, `Mallocs`,
/// `TotalAlloc − HeapAlloc`, `Frees`) between the start and the end of the trace, read
/// from outside the process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeCounters {
    /// Bytes as the runtime counts them: each object rounded up to its size class, tiny
    /// allocations by their 16-byte blocks.
    pub allocated_bytes: u64,
    pub allocated_objects: u64,
    pub freed_bytes: u64,
    pub freed_objects: u64,
    /// How the counters were located in the binary: `symbols` (symbol table and DWARF)
    /// or `code` (stripped: from the code that uses them, offsets per release).
    pub layout: String,
    /// `false`: the target exited before the end of the trace could be read; the last
    /// reading taken during the trace (`end_gap_ns` before its end) is used.
    pub read_at_end: bool,
    /// Time from the end reading used to the end of the trace.
    pub end_gap_ns: u64,
    /// Allocation events the probes saw after the end reading used (the target exited
    /// first): the counts miss at least those, so the samples were not scaled to them.
    #[serde(default)]
    pub events_after_reading: u64,
    /// Duty-cycled and runtime-sampled modes: the samples' `bytes`, `objects` (and
    /// `inuse`, `estimate`) were scaled to these totals; this is the probes' own estimate.
    #[serde(default)]
    pub scaled_from: Option<ProbeEstimate>,
}

/// The probes' totals before they were scaled to the runtime's counters, and the factors
/// (counted / estimated) applied to every sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeEstimate {
    pub bytes: u64,
    pub objects: u64,
    pub bytes_factor: f64,
    pub objects_factor: f64,
}

impl AllocProfile {
    /// Bytes and objects over all aggregated samples.
    pub fn totals(&self) -> (u64, u64) {
        self.samples
            .iter()
            .fold((0, 0), |(b, o), s| (b + s.bytes, o + s.objects))
    }
}
