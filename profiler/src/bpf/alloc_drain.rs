//! Draining the allocation maps while tracing, so that a real program's tens of thousands
//! of keys and stacks do not fill them: the programs add to one of two allocation buffers
//! (`ALLOCS`, `ALLOCS_ALT`, chosen by `ALLOC_BUFFER`); a drain flips the index, waits for
//! the programs that read the old one to finish, and moves the old buffer's entries into
//! user space (thousands per system call). Stacks are interned here by their hash (a key's stack
//! resolves here from then on) and deleted from the kernel's map once a quarter of it was
//! interned; goroutines' start PCs are moved out at each drain. One drainer per object: the
//! allocation handle ([`super::AllocProbes`]) owns it.
//!
//! A program holding a value of the old buffer when the drain reads it (preempted for the
//! whole of [`FLIP_GRACE`] between its lookup and its add) would lose that one event; the
//! programs run for microseconds.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use gomemtrace_common::{
    ALLOC_BUFFER_MAP, ALLOCS_ALT_MAP, ALLOCS_MAP, AllocKey, AllocStats, GOROUTINES_MAP,
    GoroutineInfo, GoroutineKey, MAX_STACKS, NO_STACK, STACKS_MAP, UserStack,
};

use super::Bpf;

/// How often [`Drained::drain_if_due`] drains at the latest.
pub const DRAIN_EVERY: Duration = Duration::from_millis(500);
/// ... and after how many events since the latest drain, sooner: each event adds at most
/// one key and one stack, so this (plus what arrives until the next tick) bounds what the
/// maps must hold between two drains.
pub const DRAIN_AFTER_EVENTS: u64 = 16_384;
/// The soonest and latest next check [`Drained::drain_if_due`] asks for: at the event rate
/// just seen, the next check comes before half of [`DRAIN_AFTER_EVENTS`] more arrive, so a
/// burst (esbuild: ~400,000 events a second while traced) is drained long before the
/// buffer of [`gomemtrace_common::MAX_ALLOC_KEYS`] fills, whatever the caller's tick.
const SOONEST_CHECK: Duration = Duration::from_millis(5);
const LATEST_CHECK: Duration = Duration::from_millis(100);
/// After a flip, how long programs that read the old index have to finish their add.
const FLIP_GRACE: Duration = Duration::from_millis(5);

/// The two allocation buffers, by index.
pub(super) const BUFFERS: [&str; 2] = [ALLOCS_MAP, ALLOCS_ALT_MAP];

/// What was moved out of the kernel so far.
#[derive(Debug, Default)]
pub(super) struct Drained {
    pub allocs: HashMap<AllocKey, AllocStats>,
    /// Stack hash → PCs, leaf first.
    pub stacks: HashMap<u64, Vec<u64>>,
    /// (tgid, goid) → `g.startpc`.
    pub goroutines: HashMap<(u32, u64), u64>,
    /// The buffer the programs add to now.
    buffer: usize,
    /// Stacks interned since the kernel's stack map was last cleared of interned ones.
    stacks_in_kernel: usize,
    /// When the latest drain was, and the event count then.
    last: Option<(Instant, u64)>,
    /// When the latest check was, and the event count then.
    last_check: Option<(Instant, u64)>,
}

impl Drained {
    /// Drains when [`DRAIN_EVERY`] has passed since the latest drain, or
    /// [`DRAIN_AFTER_EVENTS`] events (`events`: the count so far). Returns when the next
    /// check is wanted, from the event rate since the previous check.
    pub fn drain_if_due(&mut self, bpf: &Bpf, events: u64) -> anyhow::Result<Instant> {
        let now = Instant::now();
        let next = now + next_check(self.last_check, now, events);
        self.last_check = Some((now, events));
        if self.last.is_some_and(|(at, then)| {
            at.elapsed() < DRAIN_EVERY && events.saturating_sub(then) < DRAIN_AFTER_EVENTS
        }) {
            return Ok(next);
        }
        self.drain(bpf)?;
        self.last = Some((Instant::now(), events));
        Ok(next)
    }

    /// Flips the buffers and moves the old one's entries, their stacks and the goroutines
    /// out of the kernel.
    pub fn drain(&mut self, bpf: &Bpf) -> anyhow::Result<()> {
        let old = self.buffer;
        self.buffer = 1 - old;
        bpf.set_u32(ALLOC_BUFFER_MAP, 0, self.buffer as u32)?;
        std::thread::sleep(FLIP_GRACE);
        let entries: Vec<(AllocKey, AllocStats)> = bpf.take_all(BUFFERS[old])?;
        let missing: Vec<u64> = entries
            .iter()
            .map(|(k, _)| k.stack)
            .filter(|s| *s != NO_STACK && !self.stacks.contains_key(s))
            .collect();
        for (key, stats) in entries {
            add(&mut self.allocs, key, stats);
        }
        let found = bpf.stacks::<UserStack>(STACKS_MAP, missing.into_iter())?;
        self.stacks_in_kernel += found.len();
        self.stacks.extend(found);
        if self.stacks_in_kernel > MAX_STACKS as usize / 4 {
            // Keys in the buffer being filled may use these stacks: they resolve here.
            bpf.remove_keys::<u64, UserStack>(STACKS_MAP, |k| self.stacks.contains_key(k))?;
            self.stacks_in_kernel = 0;
        }
        let goroutines: Vec<(GoroutineKey, GoroutineInfo)> = bpf.take_all(GOROUTINES_MAP)?;
        self.goroutines.extend(
            goroutines
                .into_iter()
                .map(|(k, v)| ((k.tgid, k.goid), v.start_pc)),
        );
        Ok(())
    }

    /// Forgets what was drained of `tgid`, and the interned stacks no key refers to any
    /// more (`referenced`: the stacks the kernel's keys still use).
    pub fn forget_pid(&mut self, tgid: u32, referenced: &std::collections::HashSet<u64>) {
        self.allocs.retain(|k, _| k.tgid != tgid);
        self.goroutines.retain(|k, _| k.0 != tgid);
        let kept: std::collections::HashSet<u64> = self.allocs.keys().map(|k| k.stack).collect();
        self.stacks
            .retain(|s, _| kept.contains(s) || referenced.contains(s));
    }
}

/// How long until the next check: the time half of [`DRAIN_AFTER_EVENTS`] take to arrive at
/// the rate since `previous` (a check's instant and event count), within
/// [`SOONEST_CHECK`]..=[`LATEST_CHECK`].
fn next_check(previous: Option<(Instant, u64)>, now: Instant, events: u64) -> Duration {
    let Some((at, then)) = previous else {
        return SOONEST_CHECK;
    };
    let arrived = events.saturating_sub(then);
    if arrived == 0 {
        return LATEST_CHECK;
    }
    let per_event = now.duration_since(at).as_secs_f64() / arrived as f64;
    Duration::from_secs_f64(per_event * (DRAIN_AFTER_EVENTS / 2) as f64)
        .clamp(SOONEST_CHECK, LATEST_CHECK)
}

/// Adds `stats` to `key`'s totals in `into`.
pub(super) fn add(into: &mut HashMap<AllocKey, AllocStats>, key: AllocKey, stats: AllocStats) {
    let total = into.entry(key).or_default();
    total.objects += stats.objects;
    total.bytes += stats.bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_check_comes_before_half_a_drain_of_events_arrives() {
        let at = Instant::now();
        let now = at + Duration::from_millis(100);
        // First check: soon, the rate is unknown.
        assert_eq!(next_check(None, now, 0), SOONEST_CHECK);
        // Idle: the latest.
        assert_eq!(next_check(Some((at, 500)), now, 500), LATEST_CHECK);
        // 81,920 events in 100 ms: 8,192 arrive in 10 ms.
        let busy = next_check(Some((at, 0)), now, 81_920);
        assert!((busy.as_secs_f64() - 0.010).abs() < 1e-6, "{busy:?}");
        // Faster than that: never below the soonest.
        assert_eq!(next_check(Some((at, 0)), now, 10_000_000), SOONEST_CHECK);
        // A trickle: never beyond the latest.
        assert_eq!(next_check(Some((at, 0)), now, 10), LATEST_CHECK);
    }
}
