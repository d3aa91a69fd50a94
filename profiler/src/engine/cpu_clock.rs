//! A process's CPU time, read as it runs: the base the duty cycle's overhead budget is a
//! percentage of.
//!
//! The sum of the threads' run time in `/proc/PID/task/*/schedstat` is exact to the ns and
//! current, but only covers the threads alive at the reading: a thread that exited takes
//! its time with it, and a reading taken while the process exits sees a fraction of its
//! threads (in CI, a 4-s trace of a busy target once read 2.5 s). So the clock keeps each
//! thread's latest reading and sums those, gone threads included: it never runs backwards.
//! Where no schedstat can be read, utime + stime from `/proc/PID/stat` (whole clock ticks,
//! 10 ms, but it keeps exited threads' time).

use std::collections::HashMap;

/// The CPU time of one process, never decreasing across readings.
#[derive(Debug, Default)]
pub struct CpuClock {
    pid: u32,
    /// Per thread id, its run time (ns) at its latest reading.
    threads: HashMap<u32, u64>,
    /// The latest value returned: readings from `/proc/PID/stat` never go below it.
    latest: u64,
}

impl CpuClock {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ..Self::default()
        }
    }

    /// The process's CPU time so far, nanoseconds, or None where it cannot be read (it is
    /// gone): then the latest value still stands for it.
    pub fn read(&mut self) -> Option<u64> {
        let total = if self.read_threads() {
            self.threads.values().sum()
        } else {
            stat_cpu_ns(self.pid)?
        };
        self.latest = self.latest.max(total);
        Some(self.latest)
    }

    /// The latest reading (0 before the first).
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// Updates the per-thread run times; false when no thread could be read.
    fn read_threads(&mut self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return false;
        };
        let mut any = false;
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
            {
                let seen = self.threads.entry(tid).or_default();
                *seen = (*seen).max(ns);
                any = true;
            }
        }
        any
    }
}

fn stat_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((utime + stime) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's own CPU time (the oracle), ns.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn a_thread_that_exits_keeps_its_time() {
        use std::sync::mpsc;
        let mut clock = CpuClock::new(std::process::id());
        let before = clock.read().expect("own CPU time");
        let (burned_tx, burned_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        // A thread burns ~30 ms of CPU, reports how much, waits until the clock has seen
        // it, then exits.
        let thread = std::thread::spawn(move || {
            let mut x = 0u64;
            while thread_cpu_ns() < 30_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            burned_tx.send(thread_cpu_ns()).unwrap();
            exit_rx.recv().unwrap();
            x
        });
        let burned = burned_rx.recv().unwrap();
        clock.read();
        exit_tx.send(()).unwrap();
        thread.join().unwrap();
        let after = clock.read().expect("own CPU time");
        // The thread is gone; what it burned is still counted.
        assert!(after >= before + burned, "{before} + {burned} > {after}");
        assert_eq!(clock.latest(), after);
    }

    #[test]
    fn a_process_that_is_gone_reads_none() {
        let mut clock = CpuClock::new(u32::MAX);
        assert_eq!(clock.read(), None);
        assert_eq!(clock.latest(), 0);
    }
}
