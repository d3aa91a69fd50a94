//! One GC cycle as gomemtrace measured it, and its rendering as a `GODEBUG=gctrace=1`
//! line (the runtime's own format, `runtime/mgc.go` `gcMarkTermination`, identical from
//! Go 1.19 to 1.27) or as a json object. Unmeasured fields are `?` / `null`.

use serde::Serialize;

/// gcStart's `trigger.kind`.
pub fn trigger_name(kind: u32) -> Option<&'static str> {
    match kind {
        0 => Some("heap"),
        1 => Some("time"),
        2 => Some("cycle"),
        _ => None,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cycle {
    /// `gc N`: the runtime's cycle number (`memstats.numgc` after the cycle).
    pub number: Option<u64>,
    /// `@T`: ns from the runtime's start (or the process's exec, see docs) to the cycle's
    /// start.
    pub start_ns: Option<u64>,
    /// `P%`: the runtime's GC CPU fraction since the program started, in percent.
    pub cpu_percent: Option<i64>,
    /// Wall clock of sweep termination (STW), concurrent mark, mark termination (STW).
    pub clock_ns: [Option<u64>; 3],
    /// CPU: sweep termination, assist, dedicated+fractional, idle, mark termination.
    pub cpu_ns: [Option<u64>; 5],
    /// Heap at cycle start, at mark termination, marked live (bytes).
    pub heap_bytes: [Option<u64>; 3],
    pub goal_bytes: Option<u64>,
    pub stacks_bytes: Option<u64>,
    pub globals_bytes: Option<u64>,
    /// GOMAXPROCS during the cycle.
    pub procs: Option<u64>,
    /// Started by `runtime.GC()`.
    pub forced: Option<bool>,
    /// Why the cycle started: heap, time, cycle (runtime.GC).
    pub trigger: Option<&'static str>,
    /// Sum of the cycle's stop-the-world pauses, measured by the probes.
    pub pause_ns: u64,
    /// How many times the world was stopped (2, more when mark termination restarted).
    pub stws: u32,
    /// The runtime's own `work.pauseNS`, when readable (for cross-checking).
    pub runtime_pause_ns: Option<u64>,
    /// GOGC.
    pub gogc: Option<i64>,
    /// GOMEMLIMIT in bytes (9223372036854775807: no limit).
    pub gomemlimit: Option<i64>,
}

/// `itoaDiv` of the runtime: `val` with a decimal point `dec` digits from the right.
fn itoa_div(val: u64, dec: usize) -> String {
    let mut digits = val.to_string();
    if dec == 0 {
        return digits;
    }
    if digits.len() <= dec {
        digits = format!("{}{digits}", "0".repeat(dec + 1 - digits.len()));
    }
    let split = digits.len() - dec;
    format!("{}.{}", &digits[..split], &digits[split..])
}

/// `fmtNSAsMS` of the runtime: whole ms from 10 ms, else two significant digits with at
/// most three decimals.
pub fn fmt_ns_as_ms(ns: u64) -> String {
    if ns >= 10_000_000 {
        return itoa_div(ns / 1_000_000, 0);
    }
    let mut x = ns / 1000;
    if x == 0 {
        return "0".into();
    }
    let mut dec = 3;
    while x >= 100 {
        x /= 10;
        dec -= 1;
    }
    itoa_div(x, dec)
}

fn or_q<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "?".into(), f)
}

impl Cycle {
    /// The `GODEBUG=gctrace=1` line, without the newline.
    pub fn text(&self) -> String {
        let ms = |v: Option<u64>| or_q(v, fmt_ns_as_ms);
        let mb = |v: Option<u64>| or_q(v, |b| (b >> 20).to_string());
        let [c0, c1, c2] = self.clock_ns;
        let [u0, u1, u2, u3, u4] = self.cpu_ns;
        let [h0, h1, h2] = self.heap_bytes;
        let mut line = format!(
            "gc {} @{}s {}%: {}+{}+{} ms clock, {}+{}/{}/{}+{} ms cpu, {}->{}->{} MB, {} MB goal, \
             {} MB stacks, {} MB globals, {} P",
            or_q(self.number, |n| n.to_string()),
            or_q(self.start_ns, |ns| itoa_div(ns / 1_000_000, 3)),
            or_q(self.cpu_percent, |p| p.to_string()),
            ms(c0),
            ms(c1),
            ms(c2),
            ms(u0),
            ms(u1),
            ms(u2),
            ms(u3),
            ms(u4),
            mb(h0),
            mb(h1),
            mb(h2),
            mb(self.goal_bytes),
            mb(self.stacks_bytes),
            mb(self.globals_bytes),
            or_q(self.procs, |p| p.to_string()),
        );
        if self.forced == Some(true) {
            line.push_str(" (forced)");
        }
        line
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a Cycle always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_formatting_matches_the_runtime() {
        // Values from the runtime's own fmtNSAsMS.
        assert_eq!(fmt_ns_as_ms(0), "0");
        assert_eq!(fmt_ns_as_ms(999), "0");
        assert_eq!(fmt_ns_as_ms(1_000), "0.001");
        assert_eq!(fmt_ns_as_ms(12_345), "0.012");
        assert_eq!(fmt_ns_as_ms(99_999), "0.099");
        assert_eq!(fmt_ns_as_ms(100_000), "0.10");
        assert_eq!(fmt_ns_as_ms(123_456), "0.12");
        assert_eq!(fmt_ns_as_ms(1_234_567), "1.2");
        assert_eq!(fmt_ns_as_ms(9_999_999), "9.9");
        assert_eq!(fmt_ns_as_ms(10_000_000), "10");
        assert_eq!(fmt_ns_as_ms(123_456_789), "123");
        assert_eq!(itoa_div(5, 3), "0.005");
        assert_eq!(itoa_div(1234, 3), "1.234");
    }

    #[test]
    fn full_and_unmeasured_lines() {
        let full = Cycle {
            number: Some(3),
            start_ns: Some(1_234_567_890),
            cpu_percent: Some(2),
            clock_ns: [Some(25_000), Some(1_500_000), Some(40_000)],
            cpu_ns: [
                Some(50_000),
                Some(100_000),
                Some(2_000_000),
                Some(0),
                Some(80_000),
            ],
            heap_bytes: [Some(4 << 20), Some(5 << 20), Some(1 << 20)],
            goal_bytes: Some(8 << 20),
            stacks_bytes: Some(0),
            globals_bytes: Some(0),
            procs: Some(2),
            forced: Some(true),
            ..Cycle::default()
        };
        assert_eq!(
            full.text(),
            "gc 3 @1.234s 2%: 0.025+1.5+0.040 ms clock, 0.050+0.10/2.0/0+0.080 ms cpu, \
             4->5->1 MB, 8 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)"
        );
        let bare = Cycle {
            clock_ns: [Some(25_000), Some(1_500_000), Some(40_000)],
            ..Cycle::default()
        };
        assert_eq!(
            bare.text(),
            "gc ? @?s ?%: 0.025+1.5+0.040 ms clock, ?+?/?/?+? ms cpu, ?->?->? MB, ? MB goal, \
             ? MB stacks, ? MB globals, ? P"
        );
        assert!(bare.json().contains("\"number\":null"));
    }
}
