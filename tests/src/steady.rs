//! The `steady` fixture's own account of its work: what a test checks after doing
//! something hostile to it (faults, refused probes) to show it finished its work right.

use anyhow::{Context as _, Result, ensure};

use crate::Finished;

/// The fixture's last stdout line is its json summary; it allocates a buffer every 4th
/// iteration of its small allocations, so its two counts must agree.
pub fn check_own_counts(done: &Finished) -> Result<()> {
    let json: serde_json::Value = serde_json::from_str(
        done.stdout
            .lines()
            .last()
            .context("the target printed nothing")?,
    )?;
    let count = |site: &str| {
        json["sites"][site]["objects"]
            .as_i64()
            .with_context(|| format!("no {site} objects in {json}"))
    };
    let (small, buffers) = (count("main.allocSmall")?, count("main.allocBuffers")?);
    ensure!(
        small > 0 && buffers == (small + 3) / 4,
        "the target's counts do not add up: {small} small, {buffers} buffers"
    );
    Ok(())
}
