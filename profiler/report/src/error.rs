//! What can fail while rendering a profile.

/// Errors of the fallible renderers. Most formats cannot fail (they write into memory); the
/// flame graph can, because inferno refuses to draw nothing, and reading json back can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flame graph would have no frames: no sample has a nonzero value of the chosen
    /// weight (nothing was allocated while tracing). inferno would only draw an error image,
    /// so the caller gets a real error to report instead.
    #[error("no allocations were recorded: the flame graph would be empty")]
    NoSamples,
    /// inferno failed to write the SVG.
    #[error("drawing the flame graph failed")]
    FlameGraph(#[source] std::io::Error),
    /// The json is not a gomemtrace profile.
    #[error("invalid gomemtrace json profile")]
    Json(#[from] serde_json::Error),
    /// A sample's stack names a location the table does not have.
    #[error("a stack refers to location {index}, the table has {locations}")]
    LocationIndex { index: u32, locations: usize },
    /// The json carries another schema than the one this version reads.
    #[error("unsupported json schema {found:?} (expected {expected:?})")]
    Schema {
        found: String,
        expected: &'static str,
    },
}
