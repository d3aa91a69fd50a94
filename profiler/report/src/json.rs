//! The json format: the model's serde form tagged with a schema name (docs/JSON.md), each
//! distinct location written once in a table that the samples' stacks index. A real
//! program's hundreds of thousands of samples share a few thousand locations: written
//! inline, esbuild's exact profile of 3,000 bundled modules took 952 MB, with the table
//! 31 MB.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{AllocProfile, AllocSample, Location};

/// The schema name written at the top of every json profile. Bumped when a field changes
/// meaning or is removed, so that readers can refuse what they do not understand.
pub const SCHEMA: &str = "gomemtrace.alloc/v2";

/// The json document: `schema` first, then the profile's fields at the same level, the
/// location table, and the samples.
#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    #[serde(flatten)]
    profile: &'a AllocProfile,
    locations: Vec<&'a Location>,
    samples: Vec<Sample<'a>>,
}

/// A sample with its stack as indexes into the location table.
#[derive(Serialize)]
struct Sample<'a> {
    stack: Vec<u32>,
    #[serde(flatten)]
    sample: &'a AllocSample,
}

#[derive(Deserialize)]
struct OwnedDocument {
    schema: String,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    samples: Vec<OwnedSample>,
    #[serde(flatten)]
    profile: AllocProfile,
}

#[derive(Deserialize)]
struct OwnedSample {
    stack: Vec<u32>,
    #[serde(flatten)]
    sample: AllocSample,
}

/// The profile as compact json with `"schema": "gomemtrace.alloc/v2"` first, ending in a
/// newline (`jq .` pretty-prints it).
pub fn to_json(p: &AllocProfile) -> String {
    let mut locations: Vec<&Location> = Vec::new();
    // A PC in a mapping resolves to one location: the table is keyed by both.
    let mut index: HashMap<(u64, Option<usize>), u32> = HashMap::new();
    let samples = p
        .samples
        .iter()
        .map(|sample| Sample {
            stack: sample
                .stack
                .iter()
                .map(|loc| {
                    *index.entry((loc.address, loc.mapping)).or_insert_with(|| {
                        locations.push(loc);
                        (locations.len() - 1) as u32
                    })
                })
                .collect(),
            sample,
        })
        .collect();
    let doc = Document {
        schema: SCHEMA,
        profile: p,
        locations,
        samples,
    };
    // The model has only strings, integers, options, vectors and plain enums: serialising it
    // cannot fail.
    let mut s = serde_json::to_string(&doc).expect("the profile model is always serialisable");
    s.push('\n');
    s
}

/// Reads a profile written by [`to_json`] back, checking its schema, so that a saved profile
/// can be rendered again in another format.
pub fn from_json(s: &str) -> Result<AllocProfile, Error> {
    let doc: OwnedDocument = serde_json::from_str(s)?;
    if doc.schema != SCHEMA {
        return Err(Error::Schema {
            found: doc.schema,
            expected: SCHEMA,
        });
    }
    let mut profile = doc.profile;
    profile.samples = doc
        .samples
        .into_iter()
        .map(|OwnedSample { stack, mut sample }| {
            sample.stack = stack
                .into_iter()
                .map(|i| {
                    doc.locations
                        .get(i as usize)
                        .cloned()
                        .ok_or(Error::LocationIndex {
                            index: i,
                            locations: doc.locations.len(),
                        })
                })
                .collect::<Result<_, _>>()?;
            Ok(sample)
        })
        .collect::<Result<_, Error>>()?;
    Ok(profile)
}
