//! Turns runtime PCs of the target into source frames. Go code is named from the binary's
//! own `.gopclntab` (function, file:line, inlined frames — works on stripped binaries);
//! anything else (cgo, libc) goes to blazesym.

use std::collections::HashMap;

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as BlazeSymbolizer, source::Elf, source::Source,
};
use gomemtrace_gobin::GoBinary;
use gomemtrace_report::model::{Frame, Location, Mapping};

use crate::engine::procmaps::MappedFile;

/// Where the target's executable is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExeLayout {
    /// runtime address − file virtual address (0 unless PIE).
    pub bias: u64,
    pub start: u64,
    pub end: u64,
}

impl ExeLayout {
    /// Finds the executable's text mapping and its load bias.
    pub fn find(binary: &GoBinary, exe_inode: u64, mappings: &[MappedFile]) -> Option<Self> {
        let probe = binary.functions().first()?;
        let file_offset = binary.vaddr_to_file_offset(probe.entry)?;
        mappings
            .iter()
            .filter(|m| m.inode == exe_inode)
            .find(|m| (m.file_offset..m.file_offset + (m.end - m.start)).contains(&file_offset))
            .map(|m| {
                let runtime = m.start + (file_offset - m.file_offset);
                Self {
                    bias: runtime.wrapping_sub(probe.entry),
                    start: m.start,
                    end: m.end,
                }
            })
    }

    pub fn to_file_vaddr(self, runtime: u64) -> u64 {
        runtime.wrapping_sub(self.bias)
    }
}

pub struct Symbolizer<'a> {
    binary: &'a GoBinary,
    exe: ExeLayout,
    others: Vec<MappedFile>,
    blaze: BlazeSymbolizer,
    cache: HashMap<(u64, bool), Location>,
    pub mappings: Vec<Mapping>,
}

impl<'a> Symbolizer<'a> {
    pub fn new(
        binary: &'a GoBinary,
        exe: ExeLayout,
        exe_path: &str,
        mapped: &[MappedFile],
    ) -> Self {
        let exe_mapping = Mapping {
            start: exe.start,
            limit: exe.end,
            file_offset: binary
                .vaddr_to_file_offset(exe.to_file_vaddr(exe.start))
                .unwrap_or(0),
            path: exe_path.to_string(),
            build_id: binary.gnu_build_id().or_else(|| binary.go_build_id()),
        };
        let others: Vec<MappedFile> = mapped
            .iter()
            .filter(|m| !(m.start >= exe.start && m.end <= exe.end))
            .cloned()
            .collect();
        let mut mappings = vec![exe_mapping];
        mappings.extend(others.iter().map(|m| Mapping {
            start: m.start,
            limit: m.end,
            file_offset: m.file_offset,
            path: m.path.clone(),
            build_id: None,
        }));
        Self {
            binary,
            exe,
            others,
            blaze: BlazeSymbolizer::new(),
            cache: HashMap::new(),
            mappings,
        }
    }

    /// The frames of `pc`. `is_return_address`: `pc` follows a call, so the call
    /// instruction (`pc - 1`) is what gets named, as pprof and Go's own profiles do.
    pub fn location(&mut self, pc: u64, is_return_address: bool) -> Location {
        if let Some(hit) = self.cache.get(&(pc, is_return_address)) {
            return hit.clone();
        }
        let lookup = if is_return_address {
            pc.saturating_sub(1)
        } else {
            pc
        };
        let location = if (self.exe.start..self.exe.end).contains(&pc) {
            Location {
                address: pc,
                mapping: Some(0),
                frames: self.go_frames(lookup),
            }
        } else if let Some(index) = self
            .others
            .iter()
            .position(|m| (m.start..m.end).contains(&pc))
        {
            Location {
                address: pc,
                mapping: Some(index + 1),
                frames: self.native_frames(index, lookup),
            }
        } else {
            Location {
                address: pc,
                mapping: None,
                frames: vec![unknown(pc)],
            }
        };
        self.cache.insert((pc, is_return_address), location.clone());
        location
    }

    /// runtime address − file virtual address of the executable.
    pub fn bias(&self) -> u64 {
        self.exe.bias
    }

    /// Name of the function whose entry is at runtime address `pc`.
    pub fn function_name(&self, pc: u64) -> Option<String> {
        self.binary
            .function_at(self.exe.to_file_vaddr(pc))
            .map(|f| f.name.clone())
    }

    fn go_frames(&self, pc: u64) -> Vec<Frame> {
        let frames: Vec<Frame> = self
            .binary
            .symbolize(self.exe.to_file_vaddr(pc))
            .into_iter()
            .map(|f| Frame {
                function: f.function,
                file: f.file,
                line: f.line,
            })
            .collect();
        if frames.is_empty() {
            vec![unknown(pc)]
        } else {
            frames
        }
    }

    fn native_frames(&self, index: usize, pc: u64) -> Vec<Frame> {
        let mapping = &self.others[index];
        let offset = pc - mapping.start + mapping.file_offset;
        let source = Source::Elf(Elf::new(&mapping.path));
        match self
            .blaze
            .symbolize(&source, Input::FileOffset(&[offset][..]))
        {
            Ok(results) => match results.into_iter().next() {
                Some(Symbolized::Sym(sym)) => {
                    let (file, line) = match &sym.code_info {
                        Some(info) => (
                            Some(info.to_path().display().to_string()),
                            info.line.unwrap_or(0),
                        ),
                        None => (None, 0),
                    };
                    vec![Frame {
                        function: sym.name.into_owned(),
                        file,
                        line,
                    }]
                }
                _ => vec![unknown(pc)],
            },
            Err(_) => vec![unknown(pc)],
        }
    }
}

fn unknown(pc: u64) -> Frame {
    Frame {
        function: format!("{pc:#x}"),
        file: None,
        line: 0,
    }
}
