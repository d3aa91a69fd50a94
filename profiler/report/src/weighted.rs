//! A pprof profile with caller-chosen sample types, for the views that are not allocation
//! profiles: mark assists weighted by time (`gctrace --assists-pprof`), stack growth,
//! goroutines, remote NUMA accesses. Encoded by [`crate::pprof::encode`], like the
//! allocation profile.

use crate::model::{Location, Mapping};
use crate::pprof::{Sample, Spec, encode};

/// One sample: its stack (leaf first), one value per sample type, string labels.
#[derive(Clone, Debug, Default)]
pub struct WeightedSample {
    pub stack: Vec<Location>,
    pub values: Vec<i64>,
    pub labels: Vec<(String, String)>,
}

/// What the profile measures.
#[derive(Clone, Debug)]
pub struct WeightedProfile<'a> {
    /// (type, unit) per value, e.g. `("assist_time", "nanoseconds")`.
    pub sample_types: &'a [(&'a str, &'a str)],
    /// Index into `sample_types` that pprof shows by default.
    pub default_sample_type: usize,
    pub samples: &'a [WeightedSample],
    /// The target executable first (pprof's main binary).
    pub mappings: &'a [Mapping],
    pub comments: &'a [String],
    pub duration_ns: i64,
}

/// The profile as a gzipped `profile.proto`; the period is one of the default sample type.
pub fn to_weighted_pprof(p: &WeightedProfile<'_>) -> Vec<u8> {
    let default = p
        .sample_types
        .get(p.default_sample_type)
        .copied()
        .unwrap_or(("", ""));
    let spec = Spec {
        sample_types: p.sample_types,
        default_sample_type: p.default_sample_type,
        period_type: default,
        period: 1,
        time_nanos: 0,
        duration_nanos: p.duration_ns,
        mappings: p.mappings,
        main_binary: p.mappings.first().map(|m| m.path.as_str()),
        comments: p.comments.to_vec(),
    };
    let samples = p.samples.iter().map(|s| Sample {
        stack: &s.stack,
        values: s.values.clone(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    });
    encode(&spec, samples, &|_| true)
}
