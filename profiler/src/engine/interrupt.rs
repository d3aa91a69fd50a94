//! Ctrl-C from the moment a trace starts. The poll loop's own listener (tokio's) is only
//! registered when the loop first waits; a SIGINT before that — while probes attach, or
//! between "attached" and the first drain on a loaded machine — would kill gomemtrace with
//! the default action: no report, and a rate written by `--enable-runtime-sampling` left in
//! the target. This handler, installed before anything is attached or written, records the
//! request; the loop ends on it like on tokio's (which chains to this one once registered).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn record(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT handler. A failure (never expected) leaves the default action.
pub fn install() {
    let action = SigAction::new(
        SigHandler::Handler(record),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: `record` only stores to an atomic, which is async-signal-safe; no other
    // handler for SIGINT is installed yet (tokio's, registered later, keeps this one as its
    // predecessor and calls it).
    if let Err(err) = unsafe { sigaction(Signal::SIGINT, &action) } {
        eprintln!(
            "gomemtrace: cannot catch Ctrl-C ({err}): it will end the trace without a report"
        );
    }
}

/// Whether a SIGINT has arrived since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
