//! The human report: what was traced, totals, top allocation sites, types and goroutines,
//! and the drop counters.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::folded::frames_leaf_first;
use crate::frames::is_runtime;
use crate::model::{AllocProfile, AllocSample, Frame, Mode};

/// How the text report names allocations whose type is unknown (nil `typ`): long enough to
/// say why a type is missing, which the reader would otherwise take for a bug.
pub const NIL_TYPE_TEXT: &str = "<nil: untyped (slices, strings, merged locals)>";

/// Runtime entry points that only forward an allocation (`runtime.` prefix stripped), and
/// the heap sampler's frames above them (runtime-sampled mode probes `setprofilebucket`).
/// Used only for stacks that never leave the runtime, to name the runtime function that
/// asked for the memory rather than the allocator itself.
const ALLOCATOR_HELPERS: &[&str] = &[
    "setprofilebucket",
    "mProf_Malloc",
    "systemstack",
    "profilealloc",
    "mallocgc",
    "newobject",
    "newarray",
    "makeslice",
    "growslice",
    "makemap",
    "makechan",
    "rawstring",
    "rawbyteslice",
    "rawruneslice",
    "concatstring",
    "slicebytetostring",
    "slicerunetostring",
    "stringtoslice",
    "convT",
    "malloc",
];

/// The allocation site of a stack: the first (innermost) frame outside package runtime.
/// A stack that never leaves the runtime (the runtime's own allocations) is attributed to
/// its first frame that is not an allocator helper, else to its leaf. `None`: no stack.
fn site(stack_frames: &[&Frame]) -> Option<usize> {
    if stack_frames.is_empty() {
        return None;
    }
    if let Some(i) = stack_frames.iter().position(|f| !is_runtime(&f.function)) {
        return Some(i);
    }
    let helper = |f: &&Frame| {
        let name = f.function.strip_prefix("runtime.").unwrap_or(&f.function);
        ALLOCATOR_HELPERS.iter().any(|h| name.starts_with(h))
    };
    Some(stack_frames.iter().position(|f| !helper(f)).unwrap_or(0))
}

/// `file:line`, `file` when the line is unknown, `?` when the file is.
fn file_line(f: &Frame) -> String {
    match (&f.file, f.line) {
        (Some(file), 0) => file.clone(),
        (Some(file), line) => format!("{file}:{line}"),
        (None, _) => "?".to_owned(),
    }
}

/// Bytes in binary units with one decimal (`12.3 MiB`); plain bytes below 1 KiB.
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "0.00%".to_owned();
    }
    format!("{:.2}%", part as f64 * 100.0 / total as f64)
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Writes an indented table with aligned columns (two spaces apart). The last column is not
/// padded, so lines carry no trailing spaces.
fn table(out: &mut String, columns: &[(&str, Align)], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            let (w, align) = (widths[i], columns[i].1);
            line.push(' ');
            if i > 0 {
                line.push(' ');
            }
            match align {
                Align::Right => line.push_str(&format!("{cell:>w$}")),
                Align::Left if i + 1 == row.len() => line.push_str(cell),
                Align::Left => line.push_str(&format!("{cell:<w$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// One row of a ranking before it is formatted.
struct Ranked<K> {
    key: K,
    bytes: u64,
    objects: u64,
}

/// Sorts by bytes descending then key, keeps the first `top` (all when `top` is 0) and
/// returns what was cut off (rows, bytes).
fn rank<K: Ord>(rows: &mut Vec<Ranked<K>>, top: usize) -> (usize, u64) {
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
    if top == 0 || rows.len() <= top {
        return (0, 0);
    }
    let cut = rows.split_off(top);
    (cut.len(), cut.iter().map(|r| r.bytes).sum())
}

fn more_line(out: &mut String, (rows, bytes): (usize, u64), what: &str, total: u64) {
    if rows > 0 {
        let _ = writeln!(
            out,
            "  ... and {rows} more {what} ({bytes} bytes, {})",
            percent(bytes, total)
        );
    }
}

/// Aggregates samples under a key (sorted map: deterministic before the ranking sort).
fn aggregate<K: Ord>(samples: &[AllocSample], key: impl Fn(&AllocSample) -> K) -> Vec<Ranked<K>> {
    let mut map: BTreeMap<K, (u64, u64)> = BTreeMap::new();
    for s in samples {
        let e = map.entry(key(s)).or_default();
        e.0 += s.bytes;
        e.1 += s.objects;
    }
    map.into_iter()
        .map(|(key, (bytes, objects))| Ranked {
            key,
            bytes,
            objects,
        })
        .collect()
}

/// The text report. `top` bounds each ranking (0: no bound). Every ranking is by bytes
/// descending, ties by name, so the same profile always gives the same text.
///
/// Allocation sites are the first frame outside package runtime (the user's line that
/// allocated); the full stacks are in the other formats. Drop counters are always printed,
/// with an explicit "none" when all are zero, so that a clean run and an incomplete one are
/// told apart.
pub fn to_text(p: &AllocProfile, top: usize) -> String {
    let mut out = String::new();
    let (bytes, objects) = p.totals();
    let t = &p.target;

    out.push_str("gomemtrace allocation profile\n");
    let mode = match p.mode {
        Mode::Exact => "exact (every allocation recorded, no sampling)".to_owned(),
        Mode::Runtime => format!(
            "runtime-sampled (the target's heap sampler, MemProfileRate {} bytes; estimates unbiased like pprof; types not recorded)",
            p.sample_rate.unwrap_or(0)
        ),
        Mode::Duty => format!(
            "duty-cycled (exact probes in windows; counts are estimates scaled by total/window time, ± one standard error per site below; {})",
            duty_summary(p)
        ),
    };
    let binary = format!(
        "{}, {}",
        if t.stripped {
            "stripped (functions from .gopclntab)"
        } else {
            "not stripped"
        },
        if t.pie { "PIE" } else { "not PIE" }
    );
    let probes = if t.probes.is_empty() {
        "(none)".to_owned()
    } else {
        t.probes.join(", ")
    };
    let header = [
        ("target", format!("{} (pid {})", t.exe, t.pid)),
        ("go", t.go_version.clone()),
        ("binary", binary),
        ("mode", mode.to_owned()),
        ("duration", format!("{:.3} s", p.duration_ns as f64 / 1e9)),
        ("probes", probes),
    ];
    for (k, v) in header {
        let _ = writeln!(out, "  {:<10}{v}", format!("{k}:"));
    }

    out.push_str("\nTotals\n");
    let totals = [
        (
            "events",
            format!(
                "{} ({}, {} bytes)",
                p.events,
                human_bytes(p.event_bytes),
                p.event_bytes
            ),
        ),
        ("bytes", format!("{} ({bytes} bytes)", human_bytes(bytes))),
        ("objects", objects.to_string()),
    ];
    for (k, v) in totals {
        let _ = writeln!(out, "  {:<10}{v}", format!("{k}:"));
    }
    // Absent from profiles of the agent and of older versions.
    if p.runtime_counters.is_some() || p.runtime_counters_error.is_some() {
        let _ = writeln!(out, "  runtime counters: {}", runtime_counters_line(p));
    }
    if let Some(e) = p.runtime_counters.as_ref().and_then(|c| c.scaled_from) {
        let _ = writeln!(
            out,
            "  totals from: the runtime's counters; shares per stack from the probes, whose own estimate was {} ({} bytes), {} objects (scaled ×{:.4} bytes, ×{:.4} objects)",
            human_bytes(e.bytes),
            e.bytes,
            e.objects,
            e.bytes_factor,
            e.objects_factor
        );
    } else if matches!(p.mode, Mode::Duty | Mode::Runtime)
        && (p.runtime_counters.is_some() || p.runtime_counters_error.is_some())
    {
        let _ = writeln!(
            out,
            "  totals from: the probes' own estimate ({})",
            if p.runtime_counters
                .as_ref()
                .is_some_and(|c| c.events_after_reading > 0)
            {
                "the runtime's counters are incomplete, see above"
            } else if p.runtime_counters.is_some() {
                "--totals probes"
            } else {
                "the runtime's counters were not read"
            }
        );
    }

    // Sites.
    let mut sites: HashMap<(String, String), (u64, u64)> = HashMap::new();
    for s in &p.samples {
        let frames: Vec<&Frame> = frames_leaf_first(&s.stack).collect();
        let key = match site(&frames) {
            Some(i) => (frames[i].function.clone(), file_line(frames[i])),
            None => ("[no stack]".to_owned(), "-".to_owned()),
        };
        let e = sites.entry(key).or_default();
        e.0 += s.bytes;
        e.1 += s.objects;
    }
    let mut sites: Vec<Ranked<(String, String)>> = sites
        .into_iter()
        .map(|(key, (bytes, objects))| Ranked {
            key,
            bytes,
            objects,
        })
        .collect();
    let n_sites = sites.len();
    let cut = rank(&mut sites, top);
    let _ = writeln!(
        out,
        "\nTop allocation sites (first frame outside package runtime), by bytes: {} of {n_sites}",
        sites.len()
    );
    let mut cum = 0;
    let rows: Vec<Vec<String>> = sites
        .iter()
        .map(|r| {
            cum += r.bytes;
            vec![
                r.bytes.to_string(),
                human_bytes(r.bytes),
                r.objects.to_string(),
                percent(r.bytes, bytes),
                percent(cum, bytes),
                r.key.0.clone(),
                r.key.1.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            ("BYTES", Align::Right),
            ("SPACE", Align::Right),
            ("OBJECTS", Align::Right),
            ("%BYTES", Align::Right),
            ("CUM%", Align::Right),
            ("FUNCTION", Align::Left),
            ("LOCATION", Align::Left),
        ],
        &rows,
    );
    more_line(&mut out, cut, "sites", bytes);

    if p.samples.iter().any(|s| s.inuse.is_some()) {
        live_heap_by_site(&mut out, p, top);
    }

    if p.mode == Mode::Duty {
        estimates_section(&mut out, p, top);
    }

    if p.mode == Mode::Runtime {
        out.push_str("\nTypes: not recorded (the runtime's sampler is not told them)\n");
    } else {
        types_section(&mut out, p, top, bytes);
    }
    goroutines_section(&mut out, p, top, bytes);
    drops_section(&mut out, p);
    out
}

/// Bytes and objects still live at the end of the trace, by allocation site.
fn live_heap_by_site(out: &mut String, p: &AllocProfile, top: usize) {
    let mut live: HashMap<(String, String), (u64, u64)> = HashMap::new();
    for s in &p.samples {
        let Some(inuse) = s.inuse.filter(|u| u.objects > 0) else {
            continue;
        };
        let frames: Vec<&Frame> = frames_leaf_first(&s.stack).collect();
        let key = match site(&frames) {
            Some(i) => (frames[i].function.clone(), file_line(frames[i])),
            None => ("[no stack]".to_owned(), "-".to_owned()),
        };
        let e = live.entry(key).or_default();
        e.0 += inuse.bytes;
        e.1 += inuse.objects;
    }
    let total: u64 = live.values().map(|v| v.0).sum();
    let mut live: Vec<Ranked<(String, String)>> = live
        .into_iter()
        .map(|(key, (bytes, objects))| Ranked {
            key,
            bytes,
            objects,
        })
        .collect();
    let n = live.len();
    let cut = rank(&mut live, top);
    let _ = writeln!(
        out,
        "\nLive heap by site (allocated during the trace, not yet freed): {} of {n}, {} in use",
        live.len(),
        human_bytes(total)
    );
    let rows: Vec<Vec<String>> = live
        .iter()
        .map(|r| {
            vec![
                r.bytes.to_string(),
                human_bytes(r.bytes),
                r.objects.to_string(),
                percent(r.bytes, total),
                r.key.0.clone(),
                r.key.1.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            ("INUSE", Align::Right),
            ("SPACE", Align::Right),
            ("OBJECTS", Align::Right),
            ("%INUSE", Align::Right),
            ("FUNCTION", Align::Left),
            ("LOCATION", Align::Left),
        ],
        &rows,
    );
    more_line(out, cut, "sites", total);
}

fn types_section(out: &mut String, p: &AllocProfile, top: usize, bytes: u64) {
    let mut types = aggregate(&p.samples, |s| {
        s.type_name
            .clone()
            .unwrap_or_else(|| NIL_TYPE_TEXT.to_owned())
    });
    let n_types = types.len();
    let cut = rank(&mut types, top);
    let _ = writeln!(out, "\nTop types, by bytes: {} of {n_types}", types.len());
    let rows: Vec<Vec<String>> = types
        .iter()
        .map(|r| {
            vec![
                r.bytes.to_string(),
                human_bytes(r.bytes),
                r.objects.to_string(),
                percent(r.bytes, bytes),
                r.key.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            ("BYTES", Align::Right),
            ("SPACE", Align::Right),
            ("OBJECTS", Align::Right),
            ("%BYTES", Align::Right),
            ("TYPE", Align::Left),
        ],
        &rows,
    );
    more_line(out, cut, "types", bytes);
}

fn goroutines_section(out: &mut String, p: &AllocProfile, top: usize, bytes: u64) {
    // Goroutines: the collector's summaries, or the samples when it gave none.
    let starts: HashMap<u64, &str> = p
        .goroutines
        .iter()
        .filter_map(|g| Some((g.goid, g.start_function.as_deref()?)))
        .collect();
    let mut goroutines: Vec<Ranked<u64>> = if p.goroutines.is_empty() {
        aggregate(&p.samples, |s| s.goid)
    } else {
        p.goroutines
            .iter()
            .map(|g| Ranked {
                key: g.goid,
                bytes: g.bytes,
                objects: g.objects,
            })
            .collect()
    };
    let n_goroutines = goroutines.len();
    let cut = rank(&mut goroutines, top);
    let _ = writeln!(
        out,
        "\nTop goroutines, by bytes: {} of {n_goroutines}",
        goroutines.len()
    );
    let rows: Vec<Vec<String>> = goroutines
        .iter()
        .map(|r| {
            vec![
                if r.key == 0 {
                    "0 (none)".to_owned()
                } else {
                    r.key.to_string()
                },
                r.bytes.to_string(),
                human_bytes(r.bytes),
                r.objects.to_string(),
                percent(r.bytes, bytes),
                starts.get(&r.key).copied().unwrap_or("?").to_owned(),
            ]
        })
        .collect();
    table(
        out,
        &[
            ("GOROUTINE", Align::Right),
            ("BYTES", Align::Right),
            ("SPACE", Align::Right),
            ("OBJECTS", Align::Right),
            ("%BYTES", Align::Right),
            ("START", Align::Left),
        ],
        &rows,
    );
    more_line(out, cut, "goroutines", bytes);
}

fn drops_section(out: &mut String, p: &AllocProfile) {
    // Drops: every counter, always.
    let d = &p.drops;
    out.push_str("\nDrops\n");
    let rows: Vec<Vec<String>> = [
        (
            "alloc_map_full",
            d.alloc_map_full,
            "events lost: the kernel allocation map was full",
        ),
        (
            "stack_unreadable",
            d.stack_unreadable,
            "events kept without a stack: the user stack could not be read",
        ),
        (
            "stack_map_full",
            d.stack_map_full,
            "events kept without a stack: the kernel stack map was full",
        ),
        (
            "goid_unreadable",
            d.goid_unreadable,
            "events kept under goroutine 0: the goroutine could not be read",
        ),
        (
            "goroutine_map_full",
            d.goroutine_map_full,
            "goroutines without start function: the goroutine map was full",
        ),
        (
            "live_map_full",
            d.live_map_full,
            "sampled objects whose free is not seen: the live-object map was full",
        ),
        (
            "sample_unreadable",
            d.sample_unreadable,
            "runtime samples lost: their size could not be read",
        ),
        (
            "free_map_full",
            d.free_map_full,
            "sampled objects whose free is lost: the frees map was full",
        ),
        (
            "special_unreadable",
            d.special_unreadable,
            "frees possibly lost: a freed special's kind could not be read",
        ),
        (
            "rate_unrecorded",
            d.rate_unrecorded,
            "samples where MemProfileRate could not be read or kept",
        ),
        (
            "stack_cycle",
            d.stack_cycle,
            "stacks cut short: the frame-pointer chain went back down the stack",
        ),
        (
            "stack_off_stack",
            d.stack_off_stack,
            "stacks cut short: the frame-pointer chain left the goroutine's stack",
        ),
    ]
    .iter()
    .map(|(name, n, why)| vec![(*name).to_owned(), n.to_string(), (*why).to_owned()])
    .collect();
    table(
        out,
        &[
            ("COUNTER", Align::Left),
            ("COUNT", Align::Right),
            ("MEANING", Align::Left),
        ],
        &rows,
    );
    if d.total() == 0 {
        out.push_str("  none: every event was aggregated in full\n");
    } else {
        let _ = writeln!(out, "  total: {}", d.total());
    }
}

/// The runtime's own counters over the trace, or why they are missing.
pub fn runtime_counters_line(p: &AllocProfile) -> String {
    let Some(c) = &p.runtime_counters else {
        return format!(
            "not read: {}",
            p.runtime_counters_error
                .as_deref()
                .unwrap_or("unknown reason")
        );
    };
    format!(
        "{} ({} bytes) in {} objects allocated, {} ({} bytes) in {} objects freed during the trace (layout from {}; {})",
        human_bytes(c.allocated_bytes),
        c.allocated_bytes,
        c.allocated_objects,
        human_bytes(c.freed_bytes),
        c.freed_bytes,
        c.freed_objects,
        c.layout,
        if c.read_at_end {
            "read at the end".to_owned()
        } else if c.events_after_reading > 0 {
            format!(
                "the target exited {:.0} ms after the last reading, and the probes saw {} allocations since: incomplete, not used to scale",
                c.end_gap_ns as f64 / 1e6,
                c.events_after_reading
            )
        } else {
            format!(
                "the target exited: last reading {:.0} ms before the end, no allocation seen since",
                c.end_gap_ns as f64 / 1e6
            )
        }
    )
}

/// One line on a duty-cycled trace's windows, duty fraction and overhead estimate.
pub fn duty_summary(p: &AllocProfile) -> String {
    let Some(d) = &p.duty else {
        return "no window record".to_owned();
    };
    format!(
        "{} windows, {:.1} ms attached, duty fraction {:.4}, {} events seen, {} hits between windows, estimated overhead {:.3}% of the target's CPU (budget {}%, {:.0} ns per event {})",
        d.windows,
        d.window_ns as f64 / 1e6,
        d.duty_fraction,
        d.events_observed,
        d.hits_between_windows,
        d.estimated_overhead_percent,
        d.overhead_budget_percent,
        d.event_cost_ns,
        if d.event_cost_measured {
            "with the trap measured here"
        } else {
            "assumed"
        },
    )
}

/// Duty-cycled mode: estimated bytes and objects by site with their standard errors
/// (per-key errors added in quadrature).
fn estimates_section(out: &mut String, p: &AllocProfile, top: usize) {
    let mut by_site: HashMap<(String, String), (u64, f64, u64, f64)> = HashMap::new();
    for s in &p.samples {
        let frames: Vec<&Frame> = frames_leaf_first(&s.stack).collect();
        let key = match site(&frames) {
            Some(i) => (frames[i].function.clone(), file_line(frames[i])),
            None => ("[no stack]".to_owned(), "-".to_owned()),
        };
        let e = by_site.entry(key).or_default();
        let est = s.estimate.unwrap_or_default();
        e.0 += s.bytes;
        e.1 += est.bytes_sigma * est.bytes_sigma;
        e.2 += s.objects;
        e.3 += est.objects_sigma * est.objects_sigma;
    }
    let mut rows: Vec<_> = by_site.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    out.push_str("\nEstimates by site (duty-cycled: value ± one standard error)\n");
    for ((function, location), (bytes, bv, objects, ov)) in rows.into_iter().take(top) {
        let _ = writeln!(
            out,
            "  {bytes:>14} ± {:<12.0} B  {objects:>10} ± {:<10.0} objects  {function}  {location}",
            bv.sqrt(),
            ov.sqrt()
        );
    }
}

#[cfg(test)]
mod site_tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| Frame {
                function: n.to_string(),
                file: None,
                line: 0,
            })
            .collect()
    }

    /// A runtime-sampled stack of the runtime's own allocation (seen from Go 1.25's
    /// runtime.main): the sampler and allocator frames are skipped, the asker is the site.
    #[test]
    fn runtime_allocation_seen_by_the_sampler_goes_to_the_asker() {
        let stack = frames(&[
            "runtime.setprofilebucket",
            "runtime.mProf_Malloc.func1",
            "runtime.systemstack",
            "runtime.mProf_Malloc",
            "runtime.profilealloc",
            "runtime.mallocgcSmallNoscan",
            "runtime.mallocgc",
            "runtime.makechan",
            "runtime.main",
            "runtime.goexit",
        ]);
        let refs: Vec<&Frame> = stack.iter().collect();
        assert_eq!(site(&refs), Some(8));
    }

    #[test]
    fn user_frame_is_the_site() {
        let stack = frames(&[
            "runtime.mallocgc",
            "runtime.newobject",
            "main.f",
            "main.main",
        ]);
        let refs: Vec<&Frame> = stack.iter().collect();
        assert_eq!(site(&refs), Some(2));
    }
}
