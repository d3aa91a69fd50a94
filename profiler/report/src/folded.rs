//! Folded stacks: the `root;caller;leaf value` lines that inferno, Brendan Gregg's
//! flamegraph.pl and speedscope read.

use std::collections::BTreeMap;

use crate::frames::{Frames, elided, visible};
use crate::model::{AllocProfile, Frame, Location};

/// Which sample value a folded line (and the flame graph drawn from it) carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Requested bytes.
    Bytes,
    /// Allocation calls.
    Objects,
}

impl Weight {
    /// The unit word used in flame graph tooltips and titles.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Weight::Bytes => "bytes",
            Weight::Objects => "objects",
        }
    }
}

/// The frame name a sample whose stack could not be read is filed under, so its bytes still
/// show up (as their own tower) instead of silently vanishing from the graph.
pub(crate) const NO_STACK: &str = "[no stack]";

/// Every source frame of a leaf-first stack, innermost first: the leaf PC's inlined frames,
/// then the function they were inlined into, then the caller PC's frames, and so on.
pub(crate) fn frames_leaf_first(stack: &[Location]) -> impl Iterator<Item = &Frame> {
    stack.iter().flat_map(|loc| loc.frames.iter())
}

/// A function name made safe for a folded line: `;` separates frames and a newline ends the
/// line, and both can occur in Go names (generic shape types such as
/// `go.shape.struct { a int; b int }`). `;` becomes `,`, line breaks become spaces.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ',',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// Folded stacks, one line per unique stack (root first; inlined frames expanded, outermost
/// first), followed by a space and the summed weight. Samples that differ only in goroutine
/// or type are merged, since a folded line has only the stack. Lines with a zero value are
/// left out; lines are sorted, so the output is deterministic. A stack that could not be read
/// becomes the single frame `[no stack]`; an address without frames becomes its hex address.
/// `frames` picks which frames of each stack are shown (by default those Go's own heap
/// profile shows: [`Frames`]).
pub fn to_folded(p: &AllocProfile, weight: Weight, frames: Frames) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for s in &p.samples {
        let value = match weight {
            Weight::Bytes => s.bytes,
            Weight::Objects => s.objects,
        };
        if value == 0 {
            continue;
        }
        let mut names: Vec<String> = Vec::new();
        for loc in visible(&s.stack, frames, &p.target.go_version) {
            if loc.frames.is_empty() {
                names.push(format!("{:#x}", loc.address));
            }
            names.extend(
                loc.frames
                    .iter()
                    .filter(|f| !elided(&f.function, frames))
                    .map(|f| sanitize(&f.function)),
            );
        }
        if names.is_empty() {
            names.push(NO_STACK.to_owned());
        }
        names.reverse();
        *lines.entry(names.join(";")).or_default() += value;
    }
    let mut out = String::new();
    for (stack, value) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}
