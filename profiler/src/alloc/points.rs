//! Which runtime functions see every heap allocation exactly once, per Go version.
//!
//! - Go ≤ 1.26 (default build): `runtime.mallocgc`. From 1.24 it only dispatches to
//!   per-kind workers, but every allocation still enters it.
//! - Size-specialized malloc (Go 1.27 default, 1.26 with the experiment): the compiler calls
//!   `mallocgcTinySC2`, `mallocgcSmallNoScanSC*` and `mallocgcSmallScanNoHeaderSC*`
//!   directly, bypassing `mallocgc`, and `mallocgc` itself forwards small sizes to them.
//!   So the probes go on those leaves plus the workers `mallocgc` calls for bigger objects
//!   (`mallocgcSmallNoscan`, `mallocgcSmallScanNoHeader`, `mallocgcSmallScanHeader`,
//!   `mallocgcLarge`), never on `mallocgc` itself nor on the `*SlowPath` tails of the
//!   leaves — each allocation passes exactly one probe.

use gomemtrace_gobin::{Function, GoBinary};

const SPECIALIZED_PREFIXES: [&str; 4] = [
    "runtime.mallocgcTinySC",
    "runtime.mallocgcTinySize",
    "runtime.mallocgcSmallNoScanSC",
    "runtime.mallocgcSmallScanNoHeaderSC",
];
const WORKERS_BEHIND_MALLOCGC: [&str; 4] = [
    "runtime.mallocgcSmallNoscan",
    "runtime.mallocgcSmallScanNoHeader",
    "runtime.mallocgcSmallScanHeader",
    "runtime.mallocgcLarge",
];

/// The allocation entry points to probe, or `None` when the binary has none we know.
pub fn allocation_entry_points(binary: &GoBinary) -> Option<Vec<Function>> {
    let specialized: Vec<Function> = binary
        .functions()
        .iter()
        .filter(|f| is_size_specialized(&f.name))
        .cloned()
        .collect();
    if specialized.is_empty() {
        return binary.function("runtime.mallocgc").map(|f| vec![f.clone()]);
    }
    let mut points = specialized;
    points.extend(
        WORKERS_BEHIND_MALLOCGC
            .iter()
            .filter_map(|name| binary.function(name))
            .cloned(),
    );
    Some(points)
}

fn is_size_specialized(name: &str) -> bool {
    SPECIALIZED_PREFIXES.iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|class| !class.is_empty() && class.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_size_specialized_leaves_only() {
        assert!(is_size_specialized("runtime.mallocgcTinySC2"));
        assert!(is_size_specialized("runtime.mallocgcSmallScanNoHeaderSC7"));
        assert!(is_size_specialized("runtime.mallocgcTinySize15"));
        assert!(!is_size_specialized("runtime.mallocgcSmallNoScanSlowPath"));
        assert!(!is_size_specialized("runtime.mallocgcTinySlowPath"));
        assert!(!is_size_specialized("runtime.mallocgcSmallNoscan"));
        assert!(!is_size_specialized("runtime.mallocgc"));
    }
}
