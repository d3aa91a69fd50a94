//! The one poll loop of a trace, and how it ends.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use super::{Target, interrupt, status_line};

/// Why collection stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Duration,
    Interrupted,
    TargetExited,
}

/// Calls `tick` about every `every` until `duration` (counted from `started`) ends,
/// Ctrl-C (also one that came before the loop: [`interrupt`]), or the target exits. `tick` may ask to be called sooner by returning the
/// instant it wants the next call at (a duty cycle's window end). The last `tick` runs
/// before the end is seen, so what it drains is not lost.
pub fn run_until_end(
    duration: Option<Duration>,
    started: Instant,
    target: &mut Target,
    every: Duration,
    mut tick: impl FnMut(&mut Target) -> anyhow::Result<Option<Instant>>,
) -> anyhow::Result<End> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let wanted = tick(target)?;
            if interrupt::requested() {
                return Ok(End::Interrupted);
            }
            if duration.is_some_and(|d| started.elapsed() >= d) {
                return Ok(End::Duration);
            }
            if !target.is_alive() {
                return Ok(End::TargetExited);
            }
            let now = Instant::now();
            let mut next = now + every;
            if let Some(wanted) = wanted {
                next = next.min(wanted);
            }
            if let Some(d) = duration {
                next = next.min(started + d);
            }
            tokio::select! {
                _ = &mut ctrl_c => return Ok(End::Interrupted),
                _ = tokio::time::sleep(next.saturating_duration_since(now)) => {}
            }
        }
    })
}

/// Waits for a launched target (passing Ctrl-C on) and returns its exit status as ours.
pub fn finish(target: &mut Target, end: End) -> anyhow::Result<ExitCode> {
    let Some(child) = target.child.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    if end == End::Interrupted {
        // The user asked to stop: pass the interrupt on, as a terminal would.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                // Ctrl-C while waiting for the target: stop waiting, leave it running.
                _ = &mut ctrl_c => return Ok::<_, anyhow::Error>(None),
                _ = poll.tick() => {
                    if let Some(status) = child.try_wait()? {
                        return Ok(Some(status));
                    }
                }
            }
        }
    })?;
    let Some(status) = status else {
        status_line(&format!(
            "interrupted while waiting for pid {}: left it running",
            child.id()
        ));
        return Ok(ExitCode::from(130));
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128 + signal as u8),
        _ => ExitCode::FAILURE,
    })
}
