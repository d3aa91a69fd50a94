//! A small pprof (profile.proto, gzipped) writer for the stack-growth and goroutine
//! profiles: samples of symbolized locations with any sample types and string labels.

use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};
use gomemtrace_report::{
    model::{Location, Mapping},
    proto,
};
use prost::Message as _;

pub struct Sample {
    /// Leaf first.
    pub stack: Vec<Location>,
    pub values: Vec<i64>,
    pub labels: Vec<(&'static str, String)>,
}

pub struct Profile {
    /// (type, unit) per value.
    pub sample_types: Vec<(&'static str, &'static str)>,
    pub default_type: &'static str,
    pub samples: Vec<Sample>,
    pub mappings: Vec<Mapping>,
    pub comments: Vec<String>,
    pub duration_ns: i64,
}

#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<(u64, Option<usize>, String), u64>,
}

impl Builder {
    fn s(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let (name, filename) = (self.s(name), self.s(file));
        self.functions.push(proto::Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, loc: &Location, mappings: usize) -> u64 {
        let mapping = loc.mapping.filter(|&m| m < mappings);
        // Address 0 stands for "no stack": keyed by its name too.
        let name = loc
            .frames
            .first()
            .map(|f| f.function.clone())
            .unwrap_or_default();
        let key = (loc.address, mapping, name);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let lines = loc
            .frames
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(&f.function, f.file.as_deref().unwrap_or("")),
                line: i64::from(f.line),
                column: 0,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: mapping.map_or(0, |m| m as u64 + 1),
            address: loc.address,
            line: lines,
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }
}

pub fn encode(p: &Profile) -> Vec<u8> {
    let mut b = Builder::default();
    b.s("");
    let sample_type = p
        .sample_types
        .iter()
        .map(|(t, u)| proto::ValueType {
            r#type: b.s(t),
            unit: b.s(u),
        })
        .collect::<Vec<_>>();
    let default_sample_type = b.s(p.default_type);
    let mapping = p
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: b.s(&m.path),
            build_id: b.s(m.build_id.as_deref().unwrap_or("")),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        })
        .collect();
    let mut samples = Vec::with_capacity(p.samples.len());
    for s in &p.samples {
        let location_id = s
            .stack
            .iter()
            .map(|l| b.location(l, p.mappings.len()))
            .collect();
        let label = s
            .labels
            .iter()
            .map(|(k, v)| proto::Label {
                key: b.s(k),
                str: b.s(v),
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
    let comment = p.comments.iter().map(|c| b.s(c)).collect();
    let profile = proto::Profile {
        sample_type,
        sample: samples,
        mapping,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: 0,
        duration_nanos: p.duration_ns,
        period_type: None,
        period: 0,
        comment,
        default_sample_type,
        doc_url: 0,
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}
