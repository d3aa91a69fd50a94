//! gomemtrace's profile model ([`model`]) and the formats it is written in.
//!
//! Every renderer takes the same [`model::AllocProfile`], so the formats agree with each other
//! by construction: the text report's numbers, the pprof sample values and the folded-stack
//! sums are all sums over [`model::AllocProfile::samples`].
//!
//! - [`to_text`]: a human report (top allocation sites, types, goroutines, drops).
//! - [`to_pprof`]: gzipped `profile.proto` that `go tool pprof` opens.
//! - [`to_folded`]: folded stacks (`a;b;c 123`) for inferno, flamegraph.pl, speedscope.
//! - [`to_svg`]: a flame graph drawn with inferno.
//! - [`Frames`]: which frames of a stack pprof, folded and svg show; by default those the Go
//!   runtime's own heap profile shows.
//! - [`to_json`]: the model's serde form, schema `gomemtrace.alloc/v2` (docs/JSON.md).

mod error;
mod folded;
mod frames;
mod json;
pub mod model;
mod pprof;
mod svg;
mod text;

pub use error::Error;
pub use folded::{Weight, to_folded};
pub use frames::{Frames, elided, is_runtime, visible};
pub use json::{SCHEMA, from_json, to_json};
pub use pprof::{NIL_TYPE_LABEL, proto, to_pprof};
pub use svg::to_svg;
pub use text::{NIL_TYPE_TEXT, to_text};

mod weighted;
pub use weighted::{WeightedProfile, WeightedSample, to_weighted_pprof};
