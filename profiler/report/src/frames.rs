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
pub(crate) fn is_runtime(function: &str) -> bool {
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

/// The part of a leaf-first `stack` shown under `frames`.
///
/// [`Frames::GoHeap`], on the runtime-only prefix of the stack (the PCs before the first one
/// outside the runtime):
/// 1. the heap sampler's own frames (`setprofilebucket` up to `runtime.profilealloc`, which
///    runtime-sampled mode probes through) are dropped: the runtime's record starts at the
///    allocator that called the sampler;
/// 2. a `runtime.systemstack` there means the allocation was made on the system stack: the
///    runtime's unwinder stops at that switch, while the frame-pointer walk went on into the
///    goroutine's frames, so the stack ends there;
/// 3. then, as `writeHeapProto` does, every PC before the first non-runtime one is hidden,
///    unless there is none, and then the stack is kept whole.
pub fn visible(stack: &[Location], frames: Frames) -> &[Location] {
    if frames == Frames::All {
        return stack;
    }
    let prefix = stack
        .iter()
        .position(|l| !is_runtime_pc(l))
        .unwrap_or(stack.len());
    let start = stack[..prefix]
        .iter()
        .position(|l| code_is(l, "runtime.profilealloc"))
        .map_or(0, |i| i + 1);
    let stack = match stack[start..prefix]
        .iter()
        .position(|l| code_is(l, "runtime.systemstack"))
    {
        Some(i) => &stack[start..=start + i],
        None => &stack[start..],
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
            names(visible(&s, Frames::GoHeap)),
            [
                "bytes.growSlice",
                "bytes.(*Buffer).grow",
                "main.main",
                "runtime.main",
                "runtime.goexit"
            ]
        );
        assert_eq!(visible(&s, Frames::All), &s[..]);
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
            names(visible(&s, Frames::GoHeap)),
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
            names(visible(&s, Frames::GoHeap)),
            ["main.inlined>runtime.callerOfInlined", "main.main"]
        );
        let s = stack(&["runtime.mallocgc", "runtime.inlined>main.f", "main.main"]);
        assert_eq!(names(visible(&s, Frames::GoHeap)), ["main.main"]);
    }

    #[test]
    fn runtime_only_stack_is_kept_without_the_sampler() {
        let s = sampled(&[
            "runtime.mallocgc",
            "runtime.newobject",
            "runtime.acquireSudog",
            "runtime.gcBgMarkWorker",
            "runtime.goexit",
        ]);
        assert_eq!(
            names(visible(&s, Frames::GoHeap)),
            [
                "runtime.mallocgc",
                "runtime.newobject",
                "runtime.acquireSudog",
                "runtime.gcBgMarkWorker",
                "runtime.goexit"
            ]
        );
    }

    /// An allocation on the system stack: the runtime's record ends at the switch.
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
            names(visible(&s, Frames::GoHeap)),
            [
                "runtime.mallocgc",
                "runtime.newobject",
                "runtime.malg",
                "runtime.newproc1",
                "runtime.newproc.func1",
                "runtime.systemstack"
            ]
        );
        // Exact mode: no sampler frames, the same cut.
        let e = stack(&["runtime.mallocgc", "runtime.systemstack", "main.main"]);
        assert_eq!(
            names(visible(&e, Frames::GoHeap)),
            ["runtime.mallocgc", "runtime.systemstack"]
        );
    }

    /// A PC nothing names (no frames) or a C function is not runtime: Go stops hiding there.
    #[test]
    fn unsymbolized_and_native_pcs_are_not_hidden() {
        let s = stack(&["runtime.mallocgc", "", "main.main"]);
        assert_eq!(names(visible(&s, Frames::GoHeap)), ["", "main.main"]);
        let s = stack(&["runtime.mallocgc", "malloc", "main.main"]);
        assert_eq!(names(visible(&s, Frames::GoHeap)), ["malloc", "main.main"]);
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
        assert!(visible(&[], Frames::GoHeap).is_empty());
    }
}
