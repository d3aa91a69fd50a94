//! The runtime's own allocation counters over one CLI trace (`crate::allocstats`): read
//! after attach (before the release of a launched target), at the session loop's polls,
//! and at the end. A target that exits takes its memory with it, so the last reading
//! taken while it ran stands for the end then.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gomemtrace_gobin::allocstats::{AllocStatsLayout, LayoutSource, LocateError};
use gomemtrace_report::model::{AllocSample, ProbeEstimate, RuntimeCounters};

use super::runtime_counters::{self as allocstats, AllocCounters, ReadError};

/// Why the runtime's allocation counters over a trace are not known.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CountersError {
    /// The binary does not tell where they are.
    #[error("{0}")]
    Layout(Arc<LocateError>),
    /// Not looked for (the plan before the session looks).
    #[error("not looked for")]
    NotLookedFor,
    #[error(transparent)]
    NoMapping(#[from] crate::engine::MappingNotFound),
    #[error("reading them at the start: {0}")]
    Start(Arc<ReadError>),
    /// No reading succeeded after the start; the last failure's reason, if any.
    #[error(
        "no reading during the trace{}",
        .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    NoReading(Option<Arc<ReadError>>),
}

/// Readings at polls closer than this are skipped (the duty loop polls every 10 ms).
const EVERY: Duration = Duration::from_millis(20);

pub(crate) struct Watch {
    pid: u32,
    layout: AllocStatsLayout,
    bias: u64,
    start: AllocCounters,
    /// The latest reading, when, and the probes' event count then.
    last: Option<(AllocCounters, Instant, u64)>,
    last_error: Option<Arc<ReadError>>,
}

impl Watch {
    /// The start reading. `launched`: the target is stopped at its exec, before the runtime
    /// ran, so its counters are zero even where they cannot be read yet (no Ps).
    pub fn start(
        pid: u32,
        layout: Result<AllocStatsLayout, CountersError>,
        bias: u64,
        launched: bool,
    ) -> Result<Self, CountersError> {
        let layout = layout?;
        let start = match allocstats::read(pid, &layout, bias) {
            Ok(c) => c,
            Err(_) if launched => AllocCounters::default(),
            Err(e) => return Err(CountersError::Start(Arc::new(e))),
        };
        Ok(Self {
            pid,
            layout,
            bias,
            start,
            last: None,
            last_error: None,
        })
    }

    /// A reading during the trace, kept in case the target exits before the end;
    /// `events`: the probes' event count before it.
    pub fn tick(&mut self, events: u64) {
        if self.last.is_some_and(|(_, at, _)| at.elapsed() < EVERY) {
            return;
        }
        self.read(events);
    }

    fn read(&mut self, events: u64) {
        match allocstats::read(self.pid, &self.layout, self.bias) {
            Ok(c) => self.last = Some((c, Instant::now(), events)),
            Err(e) => self.last_error = Some(Arc::new(e)),
        }
    }

    /// The counts between the start and the end: read now if the target is alive, else
    /// the last reading. `ended`: when the trace ended.
    /// `events`: the probes' event count at the end.
    pub fn finish(
        mut self,
        alive: bool,
        ended: Instant,
        events: u64,
    ) -> Result<RuntimeCounters, CountersError> {
        let mut read_at_end = false;
        if alive {
            let before = self.last.map(|(_, at, _)| at);
            self.read(events);
            read_at_end = self.last.map(|(_, at, _)| at) != before;
        }
        let Some((end, at, events_then)) = self.last else {
            return Err(CountersError::NoReading(self.last_error));
        };
        let s = &self.start;
        Ok(RuntimeCounters {
            allocated_bytes: end.alloc_bytes.saturating_sub(s.alloc_bytes),
            allocated_objects: end.alloc_objects.saturating_sub(s.alloc_objects),
            freed_bytes: end.free_bytes.saturating_sub(s.free_bytes),
            freed_objects: end.free_objects.saturating_sub(s.free_objects),
            layout: match self.layout.source {
                LayoutSource::Symbols => "symbols",
                LayoutSource::Code => "code",
            }
            .to_owned(),
            read_at_end,
            end_gap_ns: ended.saturating_duration_since(at).as_nanos() as u64,
            events_after_reading: events.saturating_sub(events_then),
            scaled_from: None,
        })
    }
}

/// Scales the samples' bytes and objects (and their in-use counts and standard errors) so
/// that they add up to the runtime's counts: the probes give each stack's share, the
/// runtime the volume. Rounded cumulatively, so that the totals equal the counts.
pub(crate) fn scale(samples: &mut [AllocSample], counted: &mut RuntimeCounters) {
    let bytes: u64 = samples.iter().map(|s| s.bytes).sum();
    let objects: u64 = samples.iter().map(|s| s.objects).sum();
    if bytes == 0 || objects == 0 {
        return;
    }
    let bytes_factor = counted.allocated_bytes as f64 / bytes as f64;
    let objects_factor = counted.allocated_objects as f64 / objects as f64;
    let mut b = Cumulative::new(bytes_factor);
    let mut o = Cumulative::new(objects_factor);
    for s in samples.iter_mut() {
        s.bytes = b.next(s.bytes);
        s.objects = o.next(s.objects);
        if let Some(inuse) = s.inuse.as_mut() {
            inuse.bytes = (inuse.bytes as f64 * bytes_factor).round() as u64;
            inuse.objects = (inuse.objects as f64 * objects_factor).round() as u64;
        }
        if let Some(e) = s.estimate.as_mut() {
            e.bytes_sigma *= bytes_factor;
            e.objects_sigma *= objects_factor;
        }
    }
    counted.scaled_from = Some(ProbeEstimate {
        bytes,
        objects,
        bytes_factor,
        objects_factor,
    });
}

/// Rounds each scaled value so that the running sum is the rounded scaled running sum.
struct Cumulative {
    factor: f64,
    raw: u64,
    out: u64,
}

impl Cumulative {
    fn new(factor: f64) -> Self {
        Self {
            factor,
            raw: 0,
            out: 0,
        }
    }

    fn next(&mut self, value: u64) -> u64 {
        self.raw += value;
        let total = (self.raw as f64 * self.factor).round() as u64;
        let this = total.saturating_sub(self.out);
        self.out = total.max(self.out);
        this
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gomemtrace_report::model::Estimate;

    fn sample(bytes: u64, objects: u64, sigma: f64) -> AllocSample {
        AllocSample {
            stack: vec![],
            goid: 1,
            type_name: None,
            bytes,
            objects,
            inuse: None,
            estimate: Some(Estimate {
                bytes_sigma: sigma,
                objects_sigma: sigma,
            }),
        }
    }

    fn counted(bytes: u64, objects: u64) -> RuntimeCounters {
        RuntimeCounters {
            allocated_bytes: bytes,
            allocated_objects: objects,
            freed_bytes: 0,
            freed_objects: 0,
            layout: "symbols".into(),
            read_at_end: true,
            end_gap_ns: 0,
            events_after_reading: 0,
            scaled_from: None,
        }
    }

    #[test]
    fn scaled_totals_equal_the_counts_and_keep_the_shares() {
        let mut samples = vec![
            sample(300, 3, 10.0),
            sample(700, 7, 20.0),
            sample(1, 1, 0.0),
        ];
        let mut c = counted(2003, 33);
        scale(&mut samples, &mut c);
        let bytes: u64 = samples.iter().map(|s| s.bytes).sum();
        let objects: u64 = samples.iter().map(|s| s.objects).sum();
        assert_eq!((bytes, objects), (2003, 33));
        // Each share stays within one unit of rounding.
        let f = 2003.0 / 1001.0;
        for (s, raw) in samples.iter().zip([300.0, 700.0, 1.0]) {
            assert!((s.bytes as f64 - raw * f).abs() <= 1.0, "{}", s.bytes);
        }
        let e = c.scaled_from.unwrap();
        assert_eq!((e.bytes, e.objects), (1001, 11));
        assert!((samples[1].estimate.unwrap().bytes_sigma - 20.0 * f).abs() < 1e-9);
        assert!((samples[1].estimate.unwrap().objects_sigma - 20.0 * 3.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_seen_is_not_scaled() {
        let mut samples = vec![];
        let mut c = counted(100, 1);
        scale(&mut samples, &mut c);
        assert!(c.scaled_from.is_none());
    }
}
