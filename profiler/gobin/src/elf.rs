//! The parts of an ELF file a Go binary reader needs, copied out of the `object` parse
//! so that [`crate::GoBinary`] can own its bytes without borrowing from itself.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SymbolKind};

use crate::Error;

/// An ELF section that occupies bytes in the file (not `SHT_NOBITS`).
#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    pub offset: u64,
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub file_size: u64,
}

/// A function symbol from `.symtab`.
#[derive(Clone, Debug)]
pub(crate) struct FuncSymbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// Everything read from the ELF container itself (not from Go's metadata).
#[derive(Debug)]
pub(crate) struct ElfImage {
    pub machine: u16,
    pub is_pie: bool,
    pub sections: Vec<Section>,
    pub segments: Vec<LoadSegment>,
    /// `None` when the binary has no `.symtab` (stripped).
    pub func_symbols: Option<Vec<FuncSymbol>>,
    /// Data symbols by name, for the few globals that help when `.symtab` is present.
    pub data_symbols: HashMap<String, u64>,
    /// `R_*_RELATIVE` relocations: slot vaddr → addend. PIE files keep link-time pointers
    /// here rather than in the slot itself.
    pub relative_relocs: HashMap<u64, u64>,
    pub gnu_build_id: Option<Vec<u8>>,
}

impl ElfImage {
    pub fn parse(data: &[u8], object_name: &str) -> Result<Self, Error> {
        if data.get(..4) != Some(&b"\x7fELF"[..]) {
            return Err(Error::NotElf {
                object: object_name.to_string(),
                reason: "no ELF magic".into(),
            });
        }
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| Error::NotElf {
            object: object_name.to_string(),
            reason: e.to_string(),
        })?;
        let endian = file.endian();
        let header = file.elf_header();
        let machine = header.e_machine(endian).0;
        let is_pie = header.e_type(endian) == elf::ET_DYN;

        let segments = file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                file_size: ph.p_filesz(endian),
            })
            .collect();

        let mut sections = Vec::new();
        let mut relative_relocs = HashMap::new();
        let relative_type = if machine == elf::EM_AARCH64.0 {
            elf::R_AARCH64_RELATIVE
        } else {
            elf::R_X86_64_RELATIVE
        };
        for section in file.sections() {
            let raw = section.elf_section_header();
            if raw.sh_type(endian) == elf::SHT_NOBITS {
                continue;
            }
            let Some((offset, size)) = section.file_range() else {
                continue;
            };
            sections.push(Section {
                name: section.name().unwrap_or_default().to_string(),
                addr: section.address(),
                size,
                offset,
            });
            if raw.sh_type(endian) == elf::SHT_RELA {
                let relas = raw
                    .data_as_array::<elf::Rela64<Endianness>, _>(endian, data)
                    .unwrap_or(&[]);
                for rela in relas {
                    if rela.r_type(endian, false) == relative_type {
                        relative_relocs.insert(rela.r_offset(endian), rela.r_addend(endian) as u64);
                    }
                }
            }
        }

        let mut data_symbols = HashMap::new();
        let func_symbols = file.symbol_table().map(|table| {
            let mut funcs = Vec::new();
            for symbol in table.symbols() {
                let Ok(name) = symbol.name() else { continue };
                match symbol.kind() {
                    SymbolKind::Text => funcs.push(FuncSymbol {
                        name: name.to_string(),
                        addr: symbol.address(),
                        size: symbol.size(),
                    }),
                    SymbolKind::Data => {
                        data_symbols.insert(name.to_string(), symbol.address());
                    }
                    _ => {}
                }
            }
            funcs
        });

        let gnu_build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        Ok(Self {
            machine,
            is_pie,
            sections,
            segments,
            func_symbols,
            data_symbols,
            relative_relocs,
            gnu_build_id,
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// File offset of `vaddr` through the `PT_LOAD` segment whose file-backed part holds it.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|seg| vaddr >= seg.vaddr && vaddr - seg.vaddr < seg.file_size)
            // p_offset is the file's word: an offset past 2^64 is no offset.
            .and_then(|seg| (vaddr - seg.vaddr).checked_add(seg.offset))
    }

    /// How many file-backed bytes follow `vaddr` in its segment.
    pub fn file_backed_len(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|seg| vaddr >= seg.vaddr && vaddr - seg.vaddr < seg.file_size)
            .map(|seg| seg.file_size - (vaddr - seg.vaddr))
    }
}

/// Parses the `.note.go.buildid` note: `namesz, descsz, type, "Go\0\0", desc`.
pub(crate) fn go_build_id_note(note: &[u8]) -> Option<String> {
    let namesz = u32::from_le_bytes(note.get(0..4)?.try_into().ok()?) as usize;
    let descsz = u32::from_le_bytes(note.get(4..8)?.try_into().ok()?) as usize;
    let name = note.get(12..12 + namesz)?;
    if !name.starts_with(b"Go") {
        return None;
    }
    let desc_start = 12 + namesz.div_ceil(4) * 4;
    let desc = note.get(desc_start..desc_start + descsz)?;
    Some(
        String::from_utf8_lossy(desc)
            .trim_end_matches('\0')
            .to_string(),
    )
}

/// How many bytes of a file [`check_complete`] reads: the ELF header and its program
/// headers sit at the start of every executable a linker writes.
const HEADERS_READ: u64 = 64 * 1024;

/// Whether the executable at `path` is a complete ELF file: every loadable segment and the
/// section header table lie inside the file. Reads the headers only, so it is cheap enough
/// to run before launching a command: the kernel execs a truncated file and kills it
/// with SIGSEGV when it faults past the end.
pub fn check_complete(path: &std::path::Path) -> Result<(), Error> {
    use std::io::Read as _;
    let object = path.display().to_string();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut head = Vec::new();
    file.take(HEADERS_READ).read_to_end(&mut head).map_err(io)?;
    check_headers(&head, size, object)
}

/// [`check_complete`] for a file already read: `data` is all of it; `object` names it in
/// errors.
pub fn check_complete_bytes(data: &[u8], object: &str) -> Result<(), Error> {
    let head = &data[..data.len().min(HEADERS_READ as usize)];
    check_headers(head, data.len() as u64, object.to_string())
}

/// Whether the ELF headers at the start of a file (`head`) fit in its `size` bytes.
fn check_headers(head: &[u8], size: u64, object: String) -> Result<(), Error> {
    if head.get(..4) != Some(&b"\x7fELF"[..]) {
        return Err(Error::NotElf {
            object,
            reason: "no ELF magic".into(),
        });
    }
    let not_elf = |e: object::read::Error| Error::NotElf {
        object: object.clone(),
        reason: e.to_string(),
    };
    let header = elf::FileHeader64::<Endianness>::parse(head).map_err(not_elf)?;
    let endian = header.endian().map_err(not_elf)?;
    let mut needed = header
        .e_shoff(endian)
        .saturating_add(u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian)));
    let segments = header.program_headers(endian, head).map_err(not_elf)?;
    for ph in segments
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
    {
        needed = needed.max(ph.p_offset(endian).saturating_add(ph.p_filesz(endian)));
    }
    if needed > size {
        return Err(Error::Truncated {
            object,
            needed,
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod complete_tests {
    use super::*;

    /// An ELF64 header and one `PT_LOAD` program header: `vaddr`, `offset`, `file_size`.
    fn one_segment(vaddr: u64, offset: u64, file_size: u64) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // EV_CURRENT
        elf[16] = 2; // ET_EXEC
        elf[18] = 0x3e; // EM_X86_64
        elf[20] = 1; // e_version
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52] = 64; // e_ehsize
        elf[54] = 56; // e_phentsize
        elf[56] = 1; // e_phnum
        let ph = &mut elf[64..];
        ph[0] = 1; // PT_LOAD
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&file_size.to_le_bytes());
        elf
    }

    #[test]
    fn a_segment_offset_past_2_to_the_64_maps_nothing() {
        // Fuzz crash (elf): p_offset near u64::MAX overflowed the file offset of a vaddr.
        let elf = one_segment(0x40_0000, u64::MAX - 8, 0x1000);
        let image = ElfImage::parse(&elf, "test").unwrap();
        assert_eq!(image.vaddr_to_file_offset(0x40_0000 + 0x10), None);
        let sane = ElfImage::parse(&one_segment(0x40_0000, 0, 0x1000), "test").unwrap();
        assert_eq!(sane.vaddr_to_file_offset(0x40_0010), Some(0x10));
    }

    #[test]
    fn a_truncated_executable_is_named_as_such() {
        let exe = std::env::current_exe().unwrap();
        check_complete(&exe).unwrap();
        let data = std::fs::read(&exe).unwrap();
        let dir = std::env::temp_dir().join(format!("gobin-truncated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("cut");
        std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
        let err = check_complete(&cut).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        std::fs::write(&cut, b"#!/bin/sh\n").unwrap();
        assert!(matches!(check_complete(&cut), Err(Error::NotElf { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
