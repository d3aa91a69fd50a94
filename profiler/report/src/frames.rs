//! Which frames of an allocation stack the stack formats (pprof, folded, svg) show.
//!
//! By default they follow the Go runtime's own heap profile, so that `go tool pprof -top`
//! on gomemtrace's output lists the same functions as the program's `runtime/pprof` heap
//! profile: `writeHeapProto` in `runtime/pprof/protomem.go` hides every PC above the first
//! one whose function is outside `runtime.` and `internal/runtime/`, and keeps the whole stack
//! when it never leaves the runtime. The runtime helpers that did the allocating
//! (`runtime.makeslice`, `newobject`, `growslice`, `concatstrings`, map growth) are hidden
//! too, since Go hides them: the user's function, or the standard-library one such as
//! `bytes.growSlice`, is the leaf.

use crate::model::Location;

/// How much of each stack the pprof, folded and svg formats show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Frames {
    /// The Go heap profile's convention (see the module documentation): what the runtime's
    /// own profile of the same program would show.
    #[default]
    GoHeap,
    /// Every frame the probe saw, from the probed function (the sampler's
    /// `runtime.setprofilebucket`, or the allocator entry point in exact mode) to the root.
    All,
}

/// Package runtime and, since Go 1.24's maps, `internal/runtime/...`: the prefixes
/// `writeHeapProto` hides. `runtime/debug` and the like are ordinary callers.
pub fn is_runtime(function: &str) -> bool {
    function.starts_with("runtime.") || function.starts_with("internal/runtime/")
}

/// The function a location's PC belongs to as `runtime.FuncForPC` names it: the innermost
/// (most inlined) frame. A location without frames is code the Go runtime knows nothing of
/// (`FuncForPC` returns nil), which Go does not hide.
fn pc_function(loc: &Location) -> Option<&str> {
    loc.frames.first().map(|f| f.function.as_str())
}

fn is_runtime_pc(loc: &Location) -> bool {
    pc_function(loc).is_some_and(is_runtime)
}

/// Whether the location's machine code is `function` (its outermost frame: the function the
/// inlined ones were inlined into).
/// The functions that switch to the system stack and are the top frame there, where the
/// runtime's unwinder stops when it records a heap sample (`topofstack`, the TOPFRAME and
/// SPWRITE functions): `systemstack`, `mcall` (the scheduler, e.g. `park_m` → `schedule`
/// → `startm` → `allocm` under a `chanrecv` of `runtime.main`), `morestack` (`newstack`),
/// `asmcgocall`.
const STACK_SWITCHES: [&str; 4] = [
    "runtime.systemstack",
    "runtime.mcall",
    "runtime.morestack",
    "runtime.asmcgocall",
];

fn code_is(loc: &Location, function: &str) -> bool {
    loc.frames.last().is_some_and(|f| f.function == function)
}

/// Under [`Frames::GoHeap`], frames Go's profiles never show: `runtime.goexit` (dropped by
/// `runtime/pprof`'s `allFrames`) and the wrappers the compiler makes for `go` and `defer`
/// statements (`main.main.gowrap1`, Go 1.22+; marked as wrappers, which the runtime's
/// unwinder and `CallersFrames` elide). Other wrappers cannot be told by name and are kept.
pub fn elided(function: &str, frames: Frames) -> bool {
    if frames == Frames::All {
        return false;
    }
    if function == "runtime.goexit" {
        return true;
    }
    let last = function.rsplit('.').next().unwrap_or(function);
    ["gowrap", "deferwrap"].iter().any(|w| {
        last.strip_prefix(w)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Frames the runtime's heap sampler leaves out of its record, counted from
/// `runtime.mProf_Malloc` (its `callers(skip, …)`): mProf_Malloc, profilealloc, then the
/// allocator — and in Go 1.19–1.25 also the allocator's caller, which Go's profile then never
/// shows even when it is outside package runtime (`internal/bytealg.MakeNoZero`, linknamed
/// from the runtime, under `bytes.Repeat`). `go_version` as in [`crate::model::TargetInfo`]
/// (`go1.23.4`); an unknown one is taken as the newest.
fn sampler_skip(go_version: &str) -> usize {
    let minor = go_version
        .strip_prefix("go1.")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m <= 23 => 4, // mallocgc, its caller
        Some(24 | 25) => 5,      // the size-class worker, mallocgc, its caller
        _ => 3,                  // the worker
    }
}

/// The part of a leaf-first `stack` shown under `frames`.
///
/// [`Frames::GoHeap`], on the runtime-only prefix of the stack (the PCs before the first one
/// outside the runtime):
/// 1. runtime-sampled mode (the sampler's `runtime.profilealloc` is on the stack): the
///    frames the runtime's record skips are dropped, as many as that release's
///    `mProf_Malloc` skips ([`sampler_skip`]; whole locations only);
/// 2. a switch to the system stack there ([`STACK_SWITCHES`]) means the allocation was made
///    on it: the runtime's unwinder stops at that switch, while the frame-pointer walk went
///    on into the goroutine's frames, so the stack ends there;
/// 3. then, as `writeHeapProto` does, every PC before the first non-runtime one is hidden,
///    unless there is none, and then the stack is kept whole.
pub fn visible<'a>(stack: &'a [Location], frames: Frames, go_version: &str) -> &'a [Location] {
    if frames == Frames::All {
        return stack;
    }
    let prefix = stack
        .iter()
        .position(|l| !is_runtime_pc(l))
        .unwrap_or(stack.len());
    let mut start = 0;
    // Counted from profilealloc, mProf_Malloc's caller: the frame-pointer walk from the
    // system stack misses mProf_Malloc's own frame on some releases (1.19).
    let sampler = stack[..prefix].iter().enumerate().find_map(|(i, l)| {
        l.frames
            .iter()
            .position(|f| f.function == "runtime.profilealloc")
            .map(|j| (i, j))
    });
    if let Some((m, inlined_above)) = sampler {
        let mut skip = sampler_skip(go_version) - 1 + inlined_above;
        start = m;
        while let Some(l) = stack.get(start) {
            if l.frames.len().max(1) > skip {
                break;
            }
            skip -= l.frames.len().max(1);
            start += 1;
        }
    }
    let stack = &stack[start..];
    let prefix = stack
        .iter()
        .position(|l| !is_runtime_pc(l))
        .unwrap_or(stack.len());
    let stack = match stack[..prefix]
        .iter()
        .position(|l| STACK_SWITCHES.iter().any(|f| code_is(l, f)))
    {
        Some(i) => &stack[..=i],
        None => stack,
    };
    match stack.iter().position(|l| !is_runtime_pc(l)) {
        Some(i) => &stack[i..],
        None => stack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Frame;

    /// One location per name; `a>b` is a PC whose innermost frame `a` was inlined into `b`.
    fn stack(names: &[&str]) -> Vec<Location> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Location {
                address: 0x1000 + i as u64,
                mapping: Some(0),
                frames: n
                    .split('>')
                    .filter(|f| !f.is_empty())
                    .map(|f| Frame {
                        function: f.to_owned(),
                        file: None,
                        line: 0,
                    })
                    .collect(),
            })
            .collect()
    }

    fn names(stack: &[Location]) -> Vec<String> {
        stack
            .iter()
            .map(|l| {
                l.frames
                    .iter()
                    .map(|f| f.function.as_str())
                    .collect::<Vec<_>>()
                    .join(">")
            })
            .collect()
    }

    const GO: &str = "go1.27.3";

    const SAMPLER: [&str; 5] = [
        "runtime.setprofilebucket",
        "runtime.mProf_Malloc.func1",
        "runtime.systemstack",
        "runtime.mProf_Malloc",
        "runtime.profilealloc",
    ];

    fn sampled(rest: &[&str]) -> Vec<Location> {
        stack(&[&SAMPLER[..], rest].concat())
    }

    #[test]
    fn runtime_sampled_stack_starts_at_the_first_non_runtime_pc() {
        let s = sampled(&[
            "runtime.mallocgcLarge",
            "runtime.mallocgc",
            "runtime.growslice",
            "bytes.growSlice",
            "bytes.(*Buffer).grow",
            "main.main",
            "runtime.main",
            "runtime.goexit",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, GO)),
            [
                "bytes.growSlice",
                "bytes.(*Buffer).grow",
                "main.main",
                "runtime.main",
                "runtime.goexit"
            ]
        );
        assert_eq!(visible(&s, Frames::All, GO), &s[..]);
    }

    #[test]
    fn exact_stack_hides_the_allocator_and_internal_runtime() {
        let s = stack(&[
            "runtime.mallocgc",
            "runtime.newarray",
            "internal/runtime/maps.newarray",
            "internal/runtime/maps.newTable",
            "runtime.mapassign_fast64",
            "main.growMap",
            "main.main",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, GO)),
            ["main.growMap", "main.main"]
        );
    }

    /// `runtime.FuncForPC` names the innermost frame: a user function inlined into runtime
    /// code is not hidden, a runtime function inlined into user code is.
    #[test]
    fn the_innermost_frame_of_a_pc_decides() {
        let s = stack(&[
            "runtime.mallocgc",
            "main.inlined>runtime.callerOfInlined",
            "main.main",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, GO)),
            ["main.inlined>runtime.callerOfInlined", "main.main"]
        );
        let s = stack(&["runtime.mallocgc", "runtime.inlined>main.f", "main.main"]);
        assert_eq!(names(visible(&s, Frames::GoHeap, GO)), ["main.main"]);
    }

    #[test]
    fn runtime_only_stack_is_kept_without_the_sampler() {
        let s = sampled(&[
            "runtime.mallocgcSmallScanNoHeader",
            "runtime.mallocgc",
            "runtime.newobject",
            "runtime.acquireSudog",
            "runtime.gcBgMarkWorker",
            "runtime.goexit",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, GO)),
            [
                "runtime.mallocgc",
                "runtime.newobject",
                "runtime.acquireSudog",
                "runtime.gcBgMarkWorker",
                "runtime.goexit"
            ]
        );
    }

    /// An allocation on the system stack: the runtime's record ends at the switch. Go 1.19
    /// skips newobject too: its profile shows exactly these four frames.
    #[test]
    fn system_stack_allocation_ends_at_the_switch() {
        let s = sampled(&[
            "runtime.mallocgc",
            "runtime.newobject",
            "runtime.malg",
            "runtime.newproc1",
            "runtime.newproc.func1",
            "runtime.systemstack",
            "runtime.newproc",
            "main.main",
            "runtime.main",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, "go1.19.8")),
            [
                "runtime.malg",
                "runtime.newproc1",
                "runtime.newproc.func1",
                "runtime.systemstack"
            ]
        );
        // The scheduler on the system stack, entered by mcall from a goroutine that blocked
        // (seen in CI on Go 1.19: Go's profile had it without runtime.main, ours had not).
        let scheduler = sampled(&[
            "runtime.mallocgc",
            "runtime.allocm",
            "runtime.newm",
            "runtime.startm",
            "runtime.schedule",
            "runtime.park_m",
            "runtime.mcall",
            "runtime.chanrecv1",
            "runtime.gcenable",
            "runtime.main",
        ]);
        assert_eq!(
            names(visible(&scheduler, Frames::GoHeap, "go1.19.8")).last(),
            Some(&"runtime.mcall".to_string())
        );
        // Exact mode: no sampler frames, the same cut.
        let e = stack(&["runtime.mallocgc", "runtime.systemstack", "main.main"]);
        assert_eq!(
            names(visible(&e, Frames::GoHeap, GO)),
            ["runtime.mallocgc", "runtime.systemstack"]
        );
    }

    /// A PC nothing names (no frames) or a C function is not runtime: Go stops hiding there.
    #[test]
    fn unsymbolized_and_native_pcs_are_not_hidden() {
        let s = stack(&["runtime.mallocgc", "", "main.main"]);
        assert_eq!(names(visible(&s, Frames::GoHeap, GO)), ["", "main.main"]);
        let s = stack(&["runtime.mallocgc", "malloc", "main.main"]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap, GO)),
            ["malloc", "main.main"]
        );
    }

    /// A function outside package runtime that calls the allocator directly: Go 1.19–1.25
    /// skip the allocator's caller in their records, 1.26+ keep it.
    #[test]
    fn the_allocators_caller_is_skipped_where_the_release_skips_it() {
        let old = sampled(&[
            "runtime.mallocgc",
            "internal/bytealg.MakeNoZero",
            "bytes.Repeat",
            "main.f",
        ]);
        assert_eq!(
            names(visible(&old, Frames::GoHeap, "go1.23.4")),
            ["bytes.Repeat", "main.f"]
        );
        let new = sampled(&[
            "runtime.mallocgcSmallNoscan",
            "runtime.mallocgc",
            "internal/bytealg.MakeNoZero",
            "bytes.Repeat",
            "main.f",
        ]);
        assert_eq!(
            names(visible(&new, Frames::GoHeap, "go1.25.5")),
            ["bytes.Repeat", "main.f"]
        );
        assert_eq!(
            names(visible(&new, Frames::GoHeap, "go1.27.3")),
            ["internal/bytealg.MakeNoZero", "bytes.Repeat", "main.f"]
        );
        // Go 1.19: the walk from the system stack misses mProf_Malloc's frame.
        let no_mprof = stack(&[
            "runtime.setprofilebucket",
            "runtime.mProf_Malloc.func1",
            "runtime.systemstack",
            "runtime.profilealloc",
            "runtime.mallocgc",
            "runtime.makeslice",
            "bufio.NewWriterSize>main.newWriters",
            "main.main",
        ]);
        assert_eq!(
            names(visible(&no_mprof, Frames::GoHeap, "go1.19.8")),
            ["bufio.NewWriterSize>main.newWriters", "main.main"]
        );
        // Exact mode (no sampler on the stack) cannot tell: only the name rule applies.
        let exact = stack(&[
            "runtime.mallocgc",
            "internal/bytealg.MakeNoZero",
            "bytes.Repeat",
        ]);
        assert_eq!(
            names(visible(&exact, Frames::GoHeap, "go1.23.4")),
            ["internal/bytealg.MakeNoZero", "bytes.Repeat"]
        );
    }

    #[test]
    fn goexit_and_go_statement_wrappers_are_elided() {
        for f in [
            "runtime.goexit",
            "main.main.gowrap1",
            "runtime.gcenable.gowrap2",
            "main.(*T).run.deferwrap12",
        ] {
            assert!(elided(f, Frames::GoHeap), "{f}");
            assert!(!elided(f, Frames::All), "{f}");
        }
        for f in [
            "main.gowrap",
            "main.gowrapper1",
            "main.main.func1",
            "main.main",
        ] {
            assert!(!elided(f, Frames::GoHeap), "{f}");
        }
    }

    #[test]
    fn empty_stack_stays_empty() {
        assert!(visible(&[], Frames::GoHeap, GO).is_empty());
    }
}
