//! Flame graph SVG, drawn by inferno from the folded stacks.

use inferno::flamegraph::{self, Options};

use crate::error::Error;
use crate::folded::{Weight, to_folded};
use crate::frames::Frames;
use crate::model::AllocProfile;

/// A flame graph of the profile weighted by `weight` (root at the bottom, one tower per call
/// path). It is drawn from [`to_folded`]'s lines, so the two formats always agree.
///
/// Fails with [`Error::NoSamples`] when nothing carries weight, because an empty graph would
/// only be inferno's "no valid input" picture.
pub fn to_svg(p: &AllocProfile, weight: Weight, frames: Frames) -> Result<Vec<u8>, Error> {
    let folded = to_folded(p, weight, frames);
    if folded.is_empty() {
        return Err(Error::NoSamples);
    }
    let what = match weight {
        Weight::Bytes => "allocated bytes",
        Weight::Objects => "allocated objects",
    };
    let mut opt = Options::default();
    opt.title = format!(
        "gomemtrace: {what} — {} ({})",
        p.target.exe, p.target.go_version
    );
    opt.subtitle = Some(format!(
        "pid {}, {} mode, {:.3} s",
        p.target.pid,
        match p.mode {
            crate::model::Mode::Exact => "exact",
            crate::model::Mode::Runtime => "runtime-sampled",
            crate::model::Mode::Duty => "duty-cycled (estimates)",
        },
        p.duration_ns as f64 / 1e9
    ));
    opt.count_name = weight.unit().to_owned();
    // Colors from a hash of the name: the same function has the same color in every graph,
    // and the output is reproducible (no random palette).
    opt.hash = true;
    opt.deterministic = true;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, folded.lines(), &mut svg).map_err(Error::FlameGraph)?;
    Ok(svg)
}
