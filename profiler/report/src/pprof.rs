//! pprof's `profile.proto`, gzipped: the format `go tool pprof`, Parca, Pyroscope and
//! speedscope open. One encoder ([`encode`]) for every profile gomemtrace writes: the
//! allocation profile ([`to_pprof`], shaped like Go's heap profile) and the weighted views
//! ([`crate::to_weighted_pprof`]: mark assists, stack growth, goroutines, NUMA).

use std::collections::HashMap;
use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message as _;

use crate::folded::NO_STACK;
use crate::frames::{Frames, elided, visible};
use crate::model::{AllocProfile, Location, Mapping, Mode};

/// The prost types generated from `proto/profile.proto` (package `perftools.profiles`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// Value of the `type` label of samples whose type is unknown because the runtime passed a
/// nil `typ` (pointer-free slices, strings, merged escaping locals). Short, so that
/// `-tagfocus=type=<nil>` is easy to type.
pub const NIL_TYPE_LABEL: &str = "<nil>";

/// The string table under construction: index 0 must be the empty string.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self {
            table: Vec::new(),
            index: HashMap::new(),
        };
        s.intern("");
        s
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// What the locations of one mapping carry, for its `has_*` flags.
#[derive(Default, Clone, Copy)]
struct Has {
    functions: bool,
    filenames: bool,
    lines: bool,
}

/// The deduplicated tables of the profile under construction.
struct Tables<'a> {
    strings: Strings,
    /// pprof mapping id (1-based) of each model mapping index.
    mapping_ids: Vec<u64>,
    has: Vec<Has>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(&'a str, Option<&'a str>), u64>,
    locations: Vec<proto::Location>,
    /// By (address, mapping, and for address 0 — no PC — the function named); `None`:
    /// every frame of the PC is elided.
    location_ids: HashMap<(u64, Option<usize>, &'a str), Option<u64>>,
    /// The location standing for unreadable stacks, once created.
    no_stack: Option<u64>,
}

impl<'a> Tables<'a> {
    /// A location whose only line is the function [`NO_STACK`], at address 0 in no mapping.
    /// pprof readers drop samples without locations (Go 1.19's pprof does, and with them
    /// their bytes from every total), so an unreadable stack gets this one instead: its bytes
    /// stay in the totals under the same name as in the folded stacks and the text report.
    fn no_stack_location(&mut self) -> u64 {
        if let Some(id) = self.no_stack {
            return id;
        }
        let function_id = self.function_id(NO_STACK, None);
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: 0,
            address: 0,
            line: vec![proto::Line {
                function_id,
                line: 0,
                column: 0,
            }],
            is_folded: false,
        });
        self.no_stack = Some(id);
        id
    }

    fn function_id(&mut self, name: &'a str, file: Option<&'a str>) -> u64 {
        if let Some(&id) = self.function_ids.get(&(name, file)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_index = self.strings.intern(name);
        self.functions.push(proto::Function {
            id,
            name: name_index,
            system_name: name_index,
            filename: self.strings.intern(file.unwrap_or("")),
            start_line: 0,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    /// The location of `loc` with the frames `keep` keeps; `None` when that leaves none
    /// (a PC of `runtime.goexit` under Go's convention).
    fn location_id(&mut self, loc: &'a Location, keep: &dyn Fn(&str) -> bool) -> Option<u64> {
        // A mapping index outside the table is treated as no mapping rather than trusted.
        let mapping = loc.mapping.filter(|&m| m < self.mapping_ids.len());
        let name = match loc.address {
            0 => loc.frames.first().map_or("", |f| f.function.as_str()),
            _ => "",
        };
        let key = (loc.address, mapping, name);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let shown = || loc.frames.iter().filter(|f| keep(&f.function));
        if !loc.frames.is_empty() && shown().next().is_none() {
            self.location_ids.insert(key, None);
            return None;
        }
        let mut lines = Vec::with_capacity(loc.frames.len());
        for f in shown() {
            let function_id = self.function_id(&f.function, f.file.as_deref());
            lines.push(proto::Line {
                function_id,
                line: i64::from(f.line),
                column: 0,
            });
            if let Some(m) = mapping {
                // `0x...` names are placeholders for unsymbolized addresses.
                self.has[m].functions |= !f.function.starts_with("0x");
                self.has[m].filenames |= f.file.is_some();
                self.has[m].lines |= f.line != 0;
            }
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: mapping.map_or(0, |m| self.mapping_ids[m]),
            address: loc.address,
            line: lines,
            is_folded: false,
        });
        self.location_ids.insert(key, Some(id));
        Some(id)
    }
}

/// One sample: its stack (leaf first), one value per sample type, string labels.
pub struct Sample<'a> {
    pub stack: &'a [Location],
    pub values: Vec<i64>,
    pub labels: Vec<(&'a str, String)>,
}

/// What a profile measures and what it says about itself.
pub struct Spec<'a> {
    /// (type, unit) per value, e.g. `("alloc_space", "bytes")`.
    pub sample_types: &'a [(&'a str, &'a str)],
    /// Index into `sample_types` that pprof shows by default.
    pub default_sample_type: usize,
    /// (type, unit) of `period`.
    pub period_type: (&'a str, &'a str),
    pub period: i64,
    /// Unix ns when collection started; 0: not said.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub mappings: &'a [Mapping],
    /// The path of the target executable: its mappings go first, because pprof takes the
    /// first mapping as the main binary.
    pub main_binary: Option<&'a str>,
    pub comments: Vec<String>,
}

/// The profile as a gzipped `profile.proto`:
///
/// - locations deduplicated by (address, mapping); inlined frames are several lines of one
///   location, innermost first as pprof expects; only the frames `keep` keeps.
/// - functions deduplicated by (name, file).
/// - a sample whose stack is empty (or wholly dropped by `keep`) has the single frame
///   `[no stack]` (address 0, no mapping), because pprof readers drop samples without
///   locations (Go 1.19's pprof does, and with them their values from every total).
/// - mappings in model order, except that the main binary's come first. Each mapping's
///   `has_*` flags say what its locations carry, so pprof does not try to symbolize what is
///   already symbolized (and does try for what is not).
pub fn encode<'a>(
    spec: &Spec<'a>,
    samples: impl IntoIterator<Item = Sample<'a>>,
    keep: &dyn Fn(&str) -> bool,
) -> Vec<u8> {
    let profile = build(spec, samples, keep);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    gz.write_all(&profile.encode_to_vec())
        .expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

fn build<'a>(
    spec: &Spec<'a>,
    samples: impl IntoIterator<Item = Sample<'a>>,
    keep: &dyn Fn(&str) -> bool,
) -> proto::Profile {
    let mut strings = Strings::new();
    let sample_type: Vec<proto::ValueType> = spec
        .sample_types
        .iter()
        .map(|(ty, unit)| proto::ValueType {
            r#type: strings.intern(ty),
            unit: strings.intern(unit),
        })
        .collect();
    let default_sample_type = sample_type
        .get(spec.default_sample_type)
        .map_or(0, |t| t.r#type);
    let period_type = proto::ValueType {
        r#type: strings.intern(spec.period_type.0),
        unit: strings.intern(spec.period_type.1),
    };

    let mappings = spec.mappings;
    let is_main = |i: &usize| Some(mappings[*i].path.as_str()) == spec.main_binary;
    let mut order: Vec<usize> = (0..mappings.len()).filter(is_main).collect();
    order.extend((0..mappings.len()).filter(|i| !is_main(i)));
    let mut mapping_ids = vec![0u64; mappings.len()];
    for (pos, &i) in order.iter().enumerate() {
        mapping_ids[i] = pos as u64 + 1;
    }

    let mut t = Tables {
        strings,
        mapping_ids,
        has: vec![Has::default(); mappings.len()],
        functions: Vec::new(),
        function_ids: HashMap::new(),
        locations: Vec::new(),
        location_ids: HashMap::new(),
        no_stack: None,
    };

    let mut encoded = Vec::new();
    for s in samples {
        let mut location_id: Vec<u64> = s
            .stack
            .iter()
            .filter_map(|loc| t.location_id(loc, keep))
            .collect();
        if location_id.is_empty() {
            location_id.push(t.no_stack_location());
        }
        let label = s
            .labels
            .iter()
            .map(|(key, value)| proto::Label {
                key: t.strings.intern(key),
                str: t.strings.intern(value),
                num: 0,
                num_unit: 0,
            })
            .collect();
        encoded.push(proto::Sample {
            location_id,
            value: s.values,
            label,
        });
    }

    let mapping = order
        .iter()
        .map(|&i| {
            let m = &mappings[i];
            let has = t.has[i];
            proto::Mapping {
                id: t.mapping_ids[i],
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.file_offset,
                filename: t.strings.intern(&m.path),
                build_id: t.strings.intern(m.build_id.as_deref().unwrap_or("")),
                has_functions: has.functions,
                has_filenames: has.filenames,
                has_line_numbers: has.lines,
                // Go symbolization (pclntab) always resolves inlining, so a mapping with
                // function names also has its inline frames.
                has_inline_frames: has.functions,
            }
        })
        .collect();
    let comment = spec.comments.iter().map(|c| t.strings.intern(c)).collect();

    proto::Profile {
        sample_type,
        sample: encoded,
        mapping,
        location: t.locations,
        function: t.functions,
        string_table: t.strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: spec.time_nanos,
        duration_nanos: spec.duration_nanos,
        period_type: Some(period_type),
        period: spec.period,
        comment,
        default_sample_type,
        doc_url: 0,
    }
}

/// The allocation profile's sample types, in Go's heap-profile order.
const ALLOC_SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// The profile as a gzipped pprof protobuf, shaped like the Go runtime's own heap profile
/// (`runtime/pprof` `writeHeapProto`), so that `go tool pprof` shows the same lines for both
/// and `-diff_base` accepts one against the other:
///
/// - sample types `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`,
///   `inuse_space/bytes`, always all four, in Go's order (pprof merges and diffs only
///   profiles with identical sample types). The in-use values are measured where frees are
///   traced (runtime-sampled mode); elsewhere they are zero, and a comment says so.
/// - default sample type: `inuse_space` where it is measured, which is what Go's heap
///   profile shows by default (it leaves the field unset, and pprof takes the last type);
///   `alloc_space` elsewhere, as Go's `allocs` profile.
/// - period type `space/bytes`; period the target's `MemProfileRate` in runtime-sampled
///   mode (values already unbiased, as Go's), else 1.
/// - stacks cut as `frames` says, by default the runtime frames above the allocation hidden
///   as Go hides them ([`crate::Frames`]).
/// - string labels per sample: `goroutine` (goid in decimal, `0` when unreadable) and `type`
///   (the Go type name, [`NIL_TYPE_LABEL`] for a nil `typ`).
/// - locations, functions, `[no stack]` and mappings as [`encode`] writes them, the target
///   executable as the main binary.
/// - comments carry the mode, the probes and the drop counters.
pub fn to_pprof(p: &AllocProfile, frames: Frames) -> Vec<u8> {
    // Frees are traced in runtime-sampled mode only (every sample then has `inuse`).
    let has_inuse = p.samples.iter().any(|s| s.inuse.is_some()) || p.mode == Mode::Runtime;
    let mode = match p.mode {
        Mode::Exact => "mode: exact (every allocation recorded, period 1, no sampling)".to_owned(),
        Mode::Runtime => format!(
            "mode: runtime-sampled (the target's heap sampler, MemProfileRate {}; values unbiased like pprof)",
            p.sample_rate.unwrap_or(0)
        ),
        Mode::Duty => format!(
            "mode: duty-cycled (exact probes in windows; values are estimates scaled by total/window time; {})",
            crate::text::duty_summary(p)
        ),
    };
    let d = &p.drops;
    let comments = [
        format!(
            "gomemtrace allocation profile of {} (pid {}, {})",
            p.target.exe, p.target.pid, p.target.go_version
        ),
        mode.to_owned(),
        format!("probes: {}", p.target.probes.join(", ")),
        match frames {
            Frames::GoHeap => "frames: as Go's heap profile (runtime frames above the first non-runtime one hidden; --all-frames keeps them)".to_owned(),
            Frames::All => "frames: all (--all-frames: from the probed function to the root)".to_owned(),
        },
        if has_inuse {
            "inuse_objects, inuse_space: live at the end of the trace (frees of sampled objects traced)".to_owned()
        } else {
            "inuse_objects, inuse_space: not measured in this mode (frees are not traced), zero; present so the sample types match Go's heap profile (-diff_base)".to_owned()
        },
        format!("events: {} ({} bytes)", p.events, p.event_bytes),
        format!(
            "drops: alloc_map_full={} stack_unreadable={} stack_map_full={} goid_unreadable={} goroutine_map_full={} live_map_full={} sample_unreadable={} free_map_full={} special_unreadable={} rate_unrecorded={} stack_cycle={} stack_off_stack={}",
            d.alloc_map_full,
            d.stack_unreadable,
            d.stack_map_full,
            d.goid_unreadable,
            d.goroutine_map_full,
            d.live_map_full,
            d.sample_unreadable,
            d.free_map_full,
            d.special_unreadable,
            d.rate_unrecorded,
            d.stack_cycle,
            d.stack_off_stack
        ),
    ]
    .to_vec();
    let spec = Spec {
        sample_types: &ALLOC_SAMPLE_TYPES,
        default_sample_type: if has_inuse { 3 } else { 1 },
        period_type: ("space", "bytes"),
        period: p.sample_rate.map_or(1, |rate| rate as i64),
        time_nanos: saturate(p.start_unix_ns),
        duration_nanos: saturate(p.duration_ns),
        mappings: &p.mappings,
        main_binary: Some(&p.target.exe),
        comments,
    };
    let samples = p.samples.iter().map(|s| {
        let inuse = s.inuse.unwrap_or_default();
        Sample {
            stack: visible(&s.stack, frames, &p.target.go_version),
            values: vec![
                saturate(s.objects),
                saturate(s.bytes),
                saturate(inuse.objects),
                saturate(inuse.bytes),
            ],
            labels: vec![
                ("goroutine", s.goid.to_string()),
                (
                    "type",
                    s.type_name.as_deref().unwrap_or(NIL_TYPE_LABEL).to_string(),
                ),
            ],
        }
    });
    encode(&spec, samples, &|function| !elided(function, frames))
}

/// pprof values are int64; a u64 beyond that range (never in practice) is clamped rather
/// than wrapped to a negative number.
fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
