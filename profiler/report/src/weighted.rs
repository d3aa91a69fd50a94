//! A pprof profile with caller-chosen sample types, for views that are not allocation
//! profiles (mark assists weighted by time: `gomemtrace gctrace --assists-pprof`).

use std::collections::HashMap;
use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message as _;

use crate::model::{Location, Mapping};
use crate::pprof::proto;

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

/// The profile as a gzipped `profile.proto`. Locations are deduplicated by (address,
/// mapping), functions by (name, file); a sample without a stack gets a `[no stack]`
/// frame, because pprof readers drop samples without locations.
pub fn to_weighted_pprof(p: &WeightedProfile<'_>) -> Vec<u8> {
    let mut strings = vec![String::new()];
    let mut string_ids: HashMap<String, i64> = HashMap::from([(String::new(), 0)]);
    let mut intern = |s: &str| -> i64 {
        if let Some(&i) = string_ids.get(s) {
            return i;
        }
        let i = strings.len() as i64;
        strings.push(s.to_string());
        string_ids.insert(s.to_string(), i);
        i
    };
    let sample_type: Vec<proto::ValueType> = p
        .sample_types
        .iter()
        .map(|(t, u)| proto::ValueType {
            r#type: intern(t),
            unit: intern(u),
        })
        .collect();
    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut locations: Vec<proto::Location> = Vec::new();
    let mut location_ids: HashMap<(u64, Option<usize>), u64> = HashMap::new();
    let mut samples = Vec::with_capacity(p.samples.len());
    let no_stack = [Location {
        address: 0,
        mapping: None,
        frames: vec![crate::model::Frame {
            function: "[no stack]".to_string(),
            file: None,
            line: 0,
        }],
    }];
    for s in p.samples {
        let stack: &[Location] = if s.stack.is_empty() {
            &no_stack
        } else {
            &s.stack
        };
        let mut location_id = Vec::with_capacity(stack.len());
        for loc in stack {
            let mapping = loc.mapping.filter(|&m| m < p.mappings.len());
            let key = (loc.address, mapping);
            let id = match location_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let mut lines = Vec::with_capacity(loc.frames.len());
                    for f in &loc.frames {
                        let fkey = (f.function.clone(), f.file.clone());
                        let function_id = match function_ids.get(&fkey) {
                            Some(&id) => id,
                            None => {
                                let id = functions.len() as u64 + 1;
                                let name = intern(&f.function);
                                functions.push(proto::Function {
                                    id,
                                    name,
                                    system_name: name,
                                    filename: intern(f.file.as_deref().unwrap_or("")),
                                    start_line: 0,
                                });
                                function_ids.insert(fkey, id);
                                id
                            }
                        };
                        lines.push(proto::Line {
                            function_id,
                            line: i64::from(f.line),
                            column: 0,
                        });
                    }
                    let id = locations.len() as u64 + 1;
                    locations.push(proto::Location {
                        id,
                        mapping_id: mapping.map_or(0, |m| m as u64 + 1),
                        address: loc.address,
                        line: lines,
                        is_folded: false,
                    });
                    location_ids.insert(key, id);
                    id
                }
            };
            location_id.push(id);
        }
        let label = s
            .labels
            .iter()
            .map(|(k, v)| proto::Label {
                key: intern(k),
                str: intern(v),
                num: 0,
                num_unit: 0,
            })
            .collect();
        samples.push(proto::Sample {
            location_id,
            value: s.values.clone(),
            label,
        });
    }
    let mapping = p
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: intern(&m.path),
            build_id: intern(m.build_id.as_deref().unwrap_or("")),
            // Locations are symbolized here (pclntab resolves inlining too).
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        })
        .collect();
    let comment = p.comments.iter().map(|c| intern(c)).collect();
    let default_sample_type = sample_type
        .get(p.default_sample_type)
        .map_or(0, |t| t.r#type);
    let period_type = sample_type.get(p.default_sample_type).cloned();
    let profile = proto::Profile {
        sample_type,
        sample: samples,
        mapping,
        location: locations,
        function: functions,
        string_table: strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: 0,
        duration_nanos: p.duration_ns,
        period_type,
        period: 1,
        comment,
        default_sample_type,
        doc_url: 0,
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    gz.write_all(&profile.encode_to_vec())
        .expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}
