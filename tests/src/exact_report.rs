//! What every third-party program's exact-mode report must hold, and the figures its test
//! bounds: no event dropped, every event in a sample, every sample with a stack; the share
//! of bytes allocated under the program's own frames; the runtime's own count of objects
//! over the trace (read from the process by gomemtrace).

use anyhow::{Context as _, Result, ensure};
use serde::Deserialize;

use crate::Report;

/// The figures of one exact-mode report (see the module).
#[derive(Debug)]
pub struct ExactFigures {
    pub report: Report,
    /// Fraction of the bytes allocated under a frame whose function starts with the
    /// program's package prefix.
    pub own_share: f64,
    /// Objects the runtime counted over the trace.
    pub counted_objects: u64,
    /// The counters were read at the end (else at the last read before the target exited).
    pub counted_at_end: bool,
    /// Events the probes saw after the reading used (the target exited first).
    pub events_after_reading: u64,
}

#[derive(Deserialize)]
struct Counted {
    runtime_counters: Option<RuntimeCounters>,
    runtime_counters_error: Option<String>,
}

#[derive(Deserialize)]
struct RuntimeCounters {
    allocated_objects: u64,
    read_at_end: bool,
    #[serde(default)]
    events_after_reading: u64,
}

/// Checks `json` (an exact-mode report) and returns its figures; `own_prefix` names the
/// program's packages (`github.com/gohugoio/hugo/`).
pub fn check_exact_report(json: &str, own_prefix: &str) -> Result<ExactFigures> {
    let report = Report::parse(json)?;
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    let in_samples: u64 = report.samples.iter().map(|s| s.objects).sum();
    ensure!(
        in_samples == report.events,
        "{in_samples} objects in samples, {} events",
        report.events
    );
    ensure!(
        report.samples.iter().all(|s| !s.stack.is_empty()),
        "samples without a stack"
    );
    let total: u64 = report.samples.iter().map(|s| s.bytes).sum();
    let own: u64 = report
        .samples
        .iter()
        .filter(|s| {
            s.stack
                .iter()
                .flat_map(|l| &l.frames)
                .any(|f| f.function.starts_with(own_prefix))
        })
        .map(|s| s.bytes)
        .sum();
    let counted: Counted = serde_json::from_str(json)?;
    let c = counted.runtime_counters.with_context(|| {
        format!(
            "no runtime counters: {}",
            counted.runtime_counters_error.as_deref().unwrap_or("?")
        )
    })?;
    Ok(ExactFigures {
        report,
        own_share: own as f64 / total.max(1) as f64,
        counted_objects: c.allocated_objects,
        counted_at_end: c.read_at_end,
        events_after_reading: c.events_after_reading,
    })
}

impl ExactFigures {
    /// Prints the share of bytes under a frame of `own_prefix` and fails below `min`.
    pub fn own_share_at_least(&self, min: f64, own_prefix: &str) -> Result<()> {
        let share = 100.0 * self.own_share;
        println!("{share:.1}% of the bytes under a frame of {own_prefix}");
        ensure!(
            self.own_share >= min,
            "only {share:.1}% of the bytes under a frame of {own_prefix}"
        );
        Ok(())
    }

    /// A launched target that exits is read last at the poll before its exit; the report
    /// counts the events seen after that reading, so the events up to it are the runtime's
    /// count of the same allocations. Fails unless they are within `fraction` of it.
    pub fn events_until_reading_match_the_runtime(&self, fraction: f64) -> Result<()> {
        let (events, counted) = (self.report.events, self.counted_objects);
        let until_reading = events - self.events_after_reading;
        println!(
            "runtime counters: {counted} objects (read at the end: {}); events up to that \
             reading: {until_reading} of {events}",
            self.counted_at_end
        );
        ensure!(
            (until_reading as f64 - counted as f64).abs() <= fraction * counted as f64,
            "{until_reading} events up to the runtime's last reading ({events} in all), the \
             runtime counted {counted} objects"
        );
        Ok(())
    }

    /// Fails unless the events are within `fraction` of the runtime's count.
    pub fn events_match_the_runtime(&self, fraction: f64) -> Result<()> {
        let events = self.report.events;
        let diff = (events as f64 - self.counted_objects as f64).abs();
        ensure!(
            diff <= fraction * self.counted_objects as f64,
            "{events} events, the runtime counted {} objects",
            self.counted_objects
        );
        Ok(())
    }
}
