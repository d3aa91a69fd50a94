//! gomemtrace's profile model ([`model`]) and the formats it is written in.

pub mod model;
