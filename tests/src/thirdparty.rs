//! What a default-mode (`auto`) report of a third-party server traced by pid must show.

use std::path::Path;

use anyhow::{Result, ensure};

use crate::Report;

/// No drop, the top five sites (by bytes) outside the runtime, and — the server outlived
/// the trace, so its runtime's counters were read at the end — the samples scaled to the
/// runtime's own count of bytes.
pub fn check_default_report(path: &Path) -> Result<()> {
    let report = Report::read(path)?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    ensure!(
        report.drops.values().all(|&n| n == 0),
        "drops: {:?}",
        report.drops
    );
    let mut top = report
        .by_site()
        .into_iter()
        .map(|(site, t)| (site, t.bytes))
        .collect::<Vec<_>>();
    top.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    top.truncate(5);
    let counters = &v["runtime_counters"];
    println!(
        "default mode ({}): top sites {top:?}; runtime counters {counters}",
        report.mode
    );
    ensure!(!top.is_empty(), "no samples");
    ensure!(
        top.iter().all(|(site, _)| site != "?"),
        "a top site is the runtime's own: {top:?}"
    );
    ensure!(
        counters["read_at_end"] == true && !counters["scaled_from"].is_null(),
        "the runtime's counters were not read at the end: {counters}"
    );
    let bytes: u64 = report.samples.iter().map(|s| s.bytes).sum();
    ensure!(
        Some(bytes) == counters["allocated_bytes"].as_u64(),
        "samples add up to {bytes} B, the runtime counted {}",
        counters["allocated_bytes"]
    );
    Ok(())
}
