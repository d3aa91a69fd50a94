//! A process's goroutines read from the runtime's own memory (`process_vm_readv`): the
//! goroutines alive and the goroutine ids handed out. No probe: a goroutine-per-request
//! server pays nothing for these metrics. The decoding is gobin's
//! ([`gomemtrace_gobin::goroutines`]), which refuses an impossible `allgs` header and counts
//! the entries whose status is no status; [`super::goroutine_metrics`] turns the readings
//! into the agent's metrics.

use gomemtrace_gobin::GoBinary;
pub use gomemtrace_gobin::goroutines::{
    CountError, GoroutineCount, GoroutineLayout, StartClassifier,
};

use crate::remote_memory::Process;

/// Counts `pid`'s goroutines; `bias` is its executable's load bias (PIE).
pub fn count(
    pid: u32,
    layout: &GoroutineLayout,
    bias: u64,
    binary: &GoBinary,
    classifier: &mut StartClassifier,
) -> Result<GoroutineCount, CountError> {
    gomemtrace_gobin::goroutines::count(&Process(pid), layout, bias, &mut |file_pc| {
        classifier.started_by_runtime(binary, file_pc)
    })
}

/// `runtime.sched.goidgen` of `pid`.
pub fn ids_handed_out(pid: u32, layout: &GoroutineLayout, bias: u64) -> Option<u64> {
    gomemtrace_gobin::goroutines::ids_handed_out(&Process(pid), layout, bias)
}
