//! Fields of `/proc/PID/status` (threads, RSS, peak RSS) of a process under test.

use anyhow::{Context as _, Result};

/// The number after `field` (with its colon, e.g. `"VmHWM:"`): a count, or KiB for the
/// memory fields.
pub fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
