//! The json format: the model's serde form tagged with a schema name (docs/JSON.md).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::AllocProfile;

/// The schema name written at the top of every json profile. Bumped when a field changes
/// meaning or is removed, so that readers can refuse what they do not understand.
pub const SCHEMA: &str = "gomemtrace.alloc/v1";

/// The json document: `schema` first, then the profile's fields at the same level.
#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    #[serde(flatten)]
    profile: &'a AllocProfile,
}

#[derive(Deserialize)]
struct OwnedDocument {
    schema: String,
    #[serde(flatten)]
    profile: AllocProfile,
}

/// The profile as pretty-printed json with `"schema": "gomemtrace.alloc/v1"`, ending in a
/// newline.
pub fn to_json(p: &AllocProfile) -> String {
    let doc = Document {
        schema: SCHEMA,
        profile: p,
    };
    // The model has only strings, integers, options, vectors and plain enums: serialising it
    // cannot fail.
    let mut s =
        serde_json::to_string_pretty(&doc).expect("the profile model is always serialisable");
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
    Ok(doc.profile)
}
