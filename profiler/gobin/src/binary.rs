//! [`GoBinary`]: one Go ELF executable read from its bytes, stripped or not, PIE or not.

use std::collections::HashMap;
use std::path::Path;

use crate::buildinfo::{self, BuildInfo};
use crate::bytes::u64_le;
use crate::elf::{ElfImage, go_build_id_note};
use crate::file_bytes::FileBytes;
use crate::moduledata::{self, ModuledataLayout};
use crate::pclntab::{FuncEntry, Pclntab};
use crate::{Arch, Error, Function, GoVersion};

/// The oldest release whose pclntab format (magic 0xfffffff0) this crate reads.
const OLDEST_SUPPORTED: GoVersion = GoVersion::new(1, 18, 0);

/// The longest version string taken for `runtime.buildVersion` (`devel go1.27-abcdef1234 ...`).
const MAX_VERSION_LEN: usize = 96;

/// A Go executable, parsed once; owns the file bytes.
pub struct GoBinary {
    pub(crate) data: FileBytes,
    pub(crate) elf: ElfImage,
    build: BuildInfo,
    /// Whether `build` came from `.go.buildinfo`.
    from_buildinfo: bool,
    version: GoVersion,
    go_build_id: Option<String>,
    pub(crate) pclntab: Pclntab,
    pub(crate) moduledata: Option<u64>,
    pub(crate) layout: ModuledataLayout,
    text_start: u64,
    functions: Vec<Function>,
    /// Indices of `functions` sorted by name: 4 bytes a function, where a map of names
    /// held a second copy of each (the agent tracing four 50-100 MB programs was 37 MiB
    /// larger, docs/AGENT.md "Cost").
    by_name: Vec<u32>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("version", &self.build.version)
            .field("arch", &self.arch())
            .field("stripped", &self.is_stripped())
            .field("pie", &self.is_pie())
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

impl GoBinary {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(data, &path.display().to_string())
    }

    /// Whether `data` is an ELF file with Go build information: a cheap test before
    /// [`GoBinary::from_bytes`] (the agent meets mostly other programs).
    pub fn has_buildinfo(data: &[u8]) -> bool {
        let Ok(elf) = ElfImage::parse(data, "<memory>") else {
            return false;
        };
        elf.section(".go.buildinfo").is_some() || find_aligned(data, buildinfo::MAGIC, 16).is_some()
    }

    /// Whether `data` may be a Go executable, cheaply: `.go.buildinfo` (section or magic) or
    /// a pclntab section. What [`GoBinary::from_bytes`] then accepts or refuses.
    pub fn looks_like_go(data: &[u8]) -> bool {
        let Ok(elf) = ElfImage::parse(data, "<memory>") else {
            return false;
        };
        [".go.buildinfo", ".gopclntab", ".data.rel.ro.gopclntab"]
            .iter()
            .any(|name| elf.section(name).is_some())
            || find_aligned(data, buildinfo::MAGIC, 16).is_some()
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Self, Error> {
        Self::parse(data, "<memory>")
    }

    /// [`GoBinary::from_bytes`] for bytes read from `name` (a path), which errors name.
    pub fn from_bytes_named(data: Vec<u8>, name: &str) -> Result<Self, Error> {
        Self::parse(data, name)
    }

    /// Parses `data` (read or mapped), named `name` in errors.
    pub fn from_file_bytes(data: FileBytes, name: &str) -> Result<Self, Error> {
        Self::parse(data, name)
    }

    /// The executable's bytes (for what else is looked up in them: DWARF, counters).
    pub fn file_data(&self) -> &[u8] {
        &self.data
    }

    /// Gives back the resident pages of a mapped executable (they are read again when
    /// needed): after the analysis, most of a large binary is not touched again.
    pub fn release_resident(&self) {
        self.data.release_resident();
    }

    fn parse(data: impl Into<FileBytes>, object_name: &str) -> Result<Self, Error> {
        let data: FileBytes = data.into();
        let elf = ElfImage::parse(&data, object_name)?;
        let not_go = || Error::NotGo {
            object: object_name.to_string(),
        };

        let buildinfo_blob = match elf.section(".go.buildinfo") {
            Some(s) => section_bytes(&data, s.offset, s.size),
            None => find_aligned(&data, buildinfo::MAGIC, 16).map(|at| &data[at..]),
        };
        let build = match buildinfo_blob {
            Some(blob) => Some(
                buildinfo::parse(blob, |vaddr, len| {
                    let offset = usize::try_from(elf.vaddr_to_file_offset(vaddr)?).ok()?;
                    data.get(offset..offset.checked_add(len)?)
                        .map(<[u8]>::to_vec)
                })
                .ok_or_else(|| Error::malformed("unreadable .go.buildinfo"))?,
            ),
            None => None,
        };
        let pclntab = find_pclntab(&data, &elf);
        // A Go executable is one with a valid pclntab: some are shipped without buildinfo.
        let (build, version) = match (build, &pclntab) {
            (Some(build), _) => {
                let version = parse_version(&build.version)?;
                (build, version)
            }
            (None, Some(tab)) => (BuildInfo::default(), tab.oldest_version()),
            (None, None) => return Err(not_go()),
        };
        let from_buildinfo = !build.version.is_empty();
        if from_buildinfo && version < OLDEST_SUPPORTED {
            return Err(Error::UnsupportedVersion {
                version: build.version.clone(),
            });
        }

        let go_build_id = elf
            .section(".note.go.buildid")
            .and_then(|s| section_bytes(&data, s.offset, s.size))
            .and_then(go_build_id_note);

        let pclntab = pclntab.ok_or_else(|| Error::malformed("no .gopclntab"))?;
        let layout = ModuledataLayout::for_version(version);

        let mut binary = Self {
            data,
            elf,
            build,
            from_buildinfo,
            version,
            go_build_id,
            pclntab,
            moduledata: None,
            layout,
            text_start: 0,
            functions: Vec::new(),
            by_name: Vec::new(),
        };
        binary.index()?;
        if !from_buildinfo {
            // The pclntab's magic told only a range of releases: the runtime's own
            // version string says which, and the tables that depend on it are redone.
            let version = binary
                .build_version()
                .ok_or_else(|| Error::malformed("no .go.buildinfo and no runtime.buildVersion"))?;
            binary.version = parse_version(&version)?;
            if binary.version < OLDEST_SUPPORTED {
                return Err(Error::UnsupportedVersion { version });
            }
            binary.build.version = version;
            binary.layout = ModuledataLayout::for_version(binary.version);
            binary.index()?;
        }
        Ok(binary)
    }

    /// Moduledata, the text start and the function table, which depend on the version.
    fn index(&mut self) -> Result<(), Error> {
        self.moduledata = self.find_moduledata();
        self.text_start = self.find_text_start().ok_or_else(|| {
            Error::malformed("no text start (pcHeader.textStart and moduledata both missing)")
        })?;
        self.functions = match &self.elf.func_symbols {
            Some(symbols) => functions_from_symtab(symbols),
            None => self.functions_from_pclntab(),
        };
        self.functions.shrink_to_fit();
        self.by_name = name_index(&self.functions)?;
        Ok(())
    }

    /// `runtime.buildVersion`, the string `runtime.Version()` returns: by its symbol, else
    /// through `runtime.schedinit`, which compares its length with 0 to keep it linked
    /// (`if buildVersion == "" { buildVersion = "unknown" }`, every release 1.18–1.27).
    fn build_version(&self) -> Option<String> {
        let candidates: Vec<u64> = match self.elf.data_symbols.get("runtime.buildVersion") {
            Some(&header) => vec![header],
            None => {
                let schedinit = self.function("runtime.schedinit")?;
                let code = self.function_code(schedinit)?;
                // The compare reads the length word, a store writes both: try the
                // operand as the header and as its length word.
                crate::disasm::rip_relative_operands(code, schedinit.entry)
                    .into_iter()
                    .flat_map(|at| [at, at.wrapping_sub(8)])
                    .collect()
            }
        };
        candidates.into_iter().find_map(|header| {
            let ptr = self.read_pointer(header)?;
            let len =
                usize::try_from(u64_le(self.read_vaddr(header.wrapping_add(8), 8)?, 0)?).ok()?;
            if !(4..=MAX_VERSION_LEN).contains(&len) {
                return None;
            }
            let text = std::str::from_utf8(self.read_vaddr(ptr, len)?).ok()?;
            (text.starts_with("go1.") || text.starts_with("devel go1.")).then(|| text.to_string())
        })
    }

    /// Whether the version and build settings came from `.go.buildinfo` (else the version
    /// is the runtime's own `runtime.buildVersion` and the build settings are unknown).
    pub fn has_buildinfo_section(&self) -> bool {
        self.from_buildinfo
    }

    /// The Go release that built the binary, from `.go.buildinfo`.
    pub fn version(&self) -> GoVersion {
        self.version
    }

    /// The version string as stored, e.g. `go1.27.3`.
    pub fn version_string(&self) -> &str {
        &self.build.version
    }

    /// `build\tKEY=VALUE` lines of the module info (`GOEXPERIMENT`, `-ldflags`, `CGO_ENABLED`, ...).
    pub fn build_settings(&self) -> &[(String, String)] {
        &self.build.settings
    }

    /// The main module's path (`mod` line, else `path` line of the module info).
    pub fn main_module(&self) -> Option<&str> {
        self.build.main_module.as_deref()
    }

    pub fn arch(&self) -> Arch {
        match self.elf.machine {
            m if m == object::elf::EM_X86_64.0 => Arch::Amd64,
            m if m == object::elf::EM_AARCH64.0 => Arch::Arm64,
            other => Arch::Other(other),
        }
    }

    /// No `.symtab` (`-ldflags=-s`).
    pub fn is_stripped(&self) -> bool {
        self.elf.func_symbols.is_none()
    }

    /// `ET_DYN`: built with `-buildmode=pie`.
    pub fn is_pie(&self) -> bool {
        self.elf.is_pie
    }

    /// The GNU build ID (`.note.gnu.build-id`) in hex.
    pub fn gnu_build_id(&self) -> Option<String> {
        self.elf
            .gnu_build_id
            .as_ref()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The Go build ID (`.note.go.buildid`), as `go tool buildid` prints it.
    pub fn go_build_id(&self) -> Option<String> {
        self.go_build_id.clone()
    }

    /// All functions, sorted by entry. ABIInternal entries; names carry no `.abi0`.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The function named `name` (the Go function, not its ABI0 wrapper).
    pub fn function(&self, name: &str) -> Option<&Function> {
        find_by_name(&self.functions, &self.by_name, name)
    }

    /// The function whose `[entry, end)` holds `pc` (a file vaddr).
    pub fn function_at(&self, pc: u64) -> Option<&Function> {
        let index = self
            .functions
            .partition_point(|f| f.entry <= pc)
            .checked_sub(1)?;
        let function = &self.functions[index];
        (pc < function.end).then_some(function)
    }

    /// The machine code of `f`.
    pub fn function_code(&self, f: &Function) -> Option<&[u8]> {
        self.read_vaddr(f.entry, usize::try_from(f.end.checked_sub(f.entry)?).ok()?)
    }

    /// `len` bytes at `vaddr` from the file-backed part of a `PT_LOAD` segment (not `.bss`).
    pub fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        if (len as u64) > self.elf.file_backed_len(vaddr)? {
            return None;
        }
        let offset = usize::try_from(self.elf.vaddr_to_file_offset(vaddr)?).ok()?;
        self.data.get(offset..offset.checked_add(len)?)
    }

    /// `vaddr - p_vaddr + p_offset` of the `PT_LOAD` holding `vaddr` (uprobe attach offsets).
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.vaddr_to_file_offset(vaddr)
    }

    /// The address of the data symbol `name` (a global variable such as `runtime.work`)
    /// from `.symtab`; `None` when the binary is stripped or has no such symbol. For PIE
    /// this is the link-time address: add the load bias for the process's copy.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.elf.data_symbols.get(name).copied()
    }

    /// `[moduledata.types, moduledata.etypes)`: where runtime type descriptors live.
    pub fn types_range(&self) -> Option<(u64, u64)> {
        let md = self.moduledata?;
        let start = self.read_pointer(md.wrapping_add(self.layout.types))?;
        let end = self.read_pointer(md.wrapping_add(self.layout.etypes))?;
        (start != 0 && start <= end).then_some((start, end))
    }

    /// `runtime.text` (moduledata.text), the base of every pclntab entry offset.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The pointer stored at `slot`: the `R_*_RELATIVE` addend when the file has one (PIE),
    /// else the little-endian word in the file.
    pub(crate) fn read_pointer(&self, slot: u64) -> Option<u64> {
        if let Some(&addend) = self.elf.relative_relocs.get(&slot) {
            return Some(addend);
        }
        u64_le(self.read_vaddr(slot, 8)?, 0)
    }

    pub(crate) fn pcln(&self) -> &[u8] {
        &self.data[self.pclntab.file_offset..self.pclntab.file_offset + self.pclntab.len]
    }

    /// `moduledata.gofunc`: the base of funcdata offsets (inline trees).
    pub(crate) fn gofunc(&self) -> Option<u64> {
        self.read_pointer(self.moduledata?.wrapping_add(self.layout.gofunc))
    }

    fn find_moduledata(&self) -> Option<u64> {
        let pc_header = self.pclntab.addr;
        let funcnametab = pc_header.wrapping_add(self.pclntab.funcname_offset as u64);
        let is_moduledata = |md: u64| {
            self.read_pointer(md.wrapping_add(self.layout.pc_header)) == Some(pc_header)
                && self.read_pointer(md.wrapping_add(self.layout.funcnametab)) == Some(funcnametab)
        };
        // Go 1.26+: its own section. Unstripped: the symbol.
        let direct = [
            self.elf.section(".go.module").map(|s| s.addr),
            self.elf
                .data_symbols
                .get("runtime.firstmoduledata")
                .copied(),
        ];
        if let Some(md) = direct.into_iter().flatten().find(|&md| is_moduledata(md)) {
            return Some(md);
        }
        // PIE: the pointers live in relocations.
        let mut reloc_slots: Vec<u64> = self.elf.relative_relocs.keys().copied().collect();
        reloc_slots.sort_unstable();
        if let Some(md) =
            moduledata::find_by_pc_header(reloc_slots.into_iter(), pc_header, funcnametab, |s| {
                self.read_pointer(s)
            })
        {
            return Some(md);
        }
        let scan = |bytes: &[u8]| {
            (0..bytes.len().saturating_sub(15)).step_by(8).find(|&i| {
                u64_le(bytes, i) == Some(pc_header) && u64_le(bytes, i + 8) == Some(funcnametab)
            })
        };
        // Otherwise: scan the data sections for the two words.
        let mut sections_seen = false;
        for name in [".noptrdata", ".data", ".data.rel.ro", ".go.module"] {
            let Some(section) = self.elf.section(name) else {
                continue;
            };
            sections_seen = true;
            let bytes = section_bytes(&self.data, section.offset, section.size)?;
            if let Some(i) = scan(bytes) {
                return Some(section.addr.wrapping_add(i as u64));
            }
        }
        // Section headers removed (`sstrip`): the loaded segments, which hold them all.
        if !sections_seen {
            for segment in &self.elf.segments {
                let Some(bytes) = section_bytes(&self.data, segment.offset, segment.file_size)
                else {
                    continue;
                };
                // Segments start page-aligned in the file and in memory: 8-byte alignment
                // holds for both.
                if let Some(i) = scan(bytes) {
                    return Some(segment.vaddr.wrapping_add(i as u64));
                }
            }
        }
        None
    }

    /// pcHeader.textStart through 1.25 (relocated in PIE); moduledata.text always (the
    /// header field is 0 from 1.26).
    fn find_text_start(&self) -> Option<u64> {
        let md_text = self
            .moduledata
            .and_then(|md| self.read_pointer(md.wrapping_add(self.layout.text)))
            .filter(|&t| t != 0);
        let header_text = self
            .elf
            .relative_relocs
            .get(&self.pclntab.text_start_slot)
            .copied()
            .or(Some(self.pclntab.text_start_raw))
            .filter(|&t| t != 0);
        md_text.or(header_text)
    }

    fn wrapper_func_id(&self) -> u8 {
        // FuncIDWrapper moved as funcIDs were added (GO-RUNTIME.md §7).
        match self.version.minor {
            ..=21 => 21,
            22..=24 => 22,
            _ => 23,
        }
    }

    pub(crate) fn func_entry(&self, index: usize) -> Option<FuncEntry> {
        self.pclntab.func_entry(self.pcln(), index)
    }

    fn functions_from_pclntab(&self) -> Vec<Function> {
        let pcln = self.pcln();
        let tab = &self.pclntab;
        let wrapper = self.wrapper_func_id();
        let mut all = Vec::with_capacity(tab.nfunc);
        for i in 0..tab.nfunc {
            let (Some(entry), Some(next)) = (tab.func_entry(pcln, i), tab.func_entry(pcln, i + 1))
            else {
                break;
            };
            let Some(name) = tab.func_name(pcln, entry) else {
                continue;
            };
            let function = Function {
                name: name.to_string(),
                entry: self.text_start.wrapping_add(u64::from(entry.entry_off)),
                end: self.text_start.wrapping_add(u64::from(next.entry_off)),
            };
            // ABI wrappers are compiled at position "<autogenerated>:1"; a few real
            // functions (reflect.callMethod) carry FuncIDWrapper for tracebacks.
            let autogenerated = tab.file(pcln, entry, 0) == Some("<autogenerated>");
            let kind = if tab.is_asm(pcln, entry) {
                Abi::Asm
            } else if autogenerated {
                Abi::AutogeneratedWrapper
            } else if tab.func_id(pcln, entry) == Some(wrapper) {
                Abi::Wrapper
            } else {
                Abi::Go
            };
            all.push((function, kind));
        }
        keep_abi_internal(all)
    }
}

/// How a pclntab entry was produced, to tell the two entries of a duplicated name apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abi {
    /// Compiled Go: ABIInternal.
    Go,
    /// Assembly: ABI0.
    Asm,
    /// Compiler-generated wrapper (`<autogenerated>` position, or `FuncIDWrapper` only).
    AutogeneratedWrapper,
    /// `_func.funcID == FuncIDWrapper` at a real source position.
    Wrapper,
}

/// A name occurs twice in pclntab when a function has an ABI wrapper: a Go function and
/// its ABI0 wrapper, or an assembly (ABI0) function and its ABIInternal wrapper. `.symtab`
/// names the ABIInternal one plainly and the other `X.abi0`; keep the ABIInternal one, so
/// the answer is the same with or without `.symtab`.
fn keep_abi_internal(all: Vec<(Function, Abi)>) -> Vec<Function> {
    let mut kinds: HashMap<&str, Vec<Abi>> = HashMap::new();
    for (f, kind) in &all {
        kinds.entry(f.name.as_str()).or_default().push(*kind);
    }
    let keep: Vec<bool> = all
        .iter()
        .map(|(f, kind)| {
            let same_name = &kinds[f.name.as_str()];
            if same_name.len() < 2 {
                return true;
            }
            // Drop the most wrapper-like kind present: assembly (ABI0), then
            // autogenerated wrappers, then FuncIDWrapper alone.
            let drop = [Abi::Asm, Abi::AutogeneratedWrapper, Abi::Wrapper]
                .into_iter()
                .find(|k| same_name.contains(k) && same_name.iter().any(|other| other != k));
            drop != Some(*kind)
        })
        .collect();
    let mut functions: Vec<Function> = all
        .into_iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|((f, _), _)| f)
        .collect();
    functions.sort_by_key(|f| f.entry);
    functions
}

/// Indices of `functions` sorted by name, and by position among equal names.
fn name_index(functions: &[Function]) -> Result<Vec<u32>, Error> {
    let n =
        u32::try_from(functions.len()).map_err(|_| Error::malformed("more than 2^32 functions"))?;
    let mut index: Vec<u32> = (0..n).collect();
    // Stable: equal names stay in `functions`' order.
    index.sort_by(|&a, &b| functions[a as usize].name.cmp(&functions[b as usize].name));
    Ok(index)
}

/// The function named `name` in `index` (from [`name_index`]): of equal names the last
/// one in `functions`.
fn find_by_name<'a>(functions: &'a [Function], index: &[u32], name: &str) -> Option<&'a Function> {
    let name_of = |i: u32| functions[i as usize].name.as_str();
    let end = index.partition_point(|&i| name_of(i) <= name);
    let &last = index[..end].last()?;
    (name_of(last) == name).then(|| &functions[last as usize])
}

/// Functions from `.symtab`: ABI0 symbols lose `.abi0`, and an ABI0 symbol is dropped when
/// the ABIInternal one of the same name exists. `end` is entry + symbol size.
fn functions_from_symtab(symbols: &[crate::elf::FuncSymbol]) -> Vec<Function> {
    let plain: std::collections::HashSet<&str> = symbols
        .iter()
        .filter(|s| !s.name.ends_with(".abi0"))
        .map(|s| s.name.as_str())
        .collect();
    let mut functions: Vec<Function> = symbols
        .iter()
        .filter_map(|s| {
            let name = match s.name.strip_suffix(".abi0") {
                Some(base) if plain.contains(base) => return None,
                Some(base) => base,
                None => &s.name,
            };
            Some(Function {
                name: name.to_string(),
                entry: s.addr,
                end: s.addr.saturating_add(s.size),
            })
        })
        // Size-less symbols are markers (runtime.text, runtime.etext), not functions.
        .filter(|f| f.end > f.entry)
        .collect();
    functions.sort_by_key(|f| f.entry);
    functions
}

fn section_bytes(data: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    data.get(start..start.checked_add(usize::try_from(size).ok()?)?)
}

fn find_aligned(data: &[u8], needle: &[u8], align: usize) -> Option<usize> {
    (0..data.len().saturating_sub(needle.len()))
        .step_by(align)
        .find(|&i| data[i..].starts_with(needle))
}

/// `go1.22.3`, or a development build's `devel go1.28-abcdef ...`.
pub(crate) fn parse_version(version: &str) -> Result<GoVersion, Error> {
    GoVersion::parse(version)
        .or_else(|| GoVersion::parse(version.strip_prefix("devel ")?))
        .ok_or_else(|| Error::UnsupportedVersion {
            version: version.to_string(),
        })
}

/// `.gopclntab`, PIE's `.data.rel.ro.gopclntab`, or (no section headers) a scan for a
/// header that parses.
fn find_pclntab(data: &[u8], elf: &ElfImage) -> Option<Pclntab> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(section) = elf.section(name) {
            let offset = usize::try_from(section.offset).ok()?;
            let bytes = section_bytes(data, section.offset, section.size)?;
            return Pclntab::parse(bytes, section.addr, offset);
        }
    }
    for segment in &elf.segments {
        let start = usize::try_from(segment.offset).ok()?;
        let bytes = section_bytes(data, segment.offset, segment.file_size)?;
        for i in (0..bytes.len().saturating_sub(64)).step_by(8) {
            let magic = u32::from_le_bytes(bytes[i..i + 4].try_into().ok()?);
            if magic != crate::pclntab::MAGIC_GO118 && magic != crate::pclntab::MAGIC_GO120 {
                continue;
            }
            if let Some(tab) =
                Pclntab::parse(&bytes[i..], segment.vaddr.wrapping_add(i as u64), start + i)
            {
                return Some(tab);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::FuncSymbol;

    #[test]
    fn a_symbol_reaching_past_the_address_space_ends_at_its_top() {
        // `.symtab` is the file's: entry + size overflowed.
        let symbols = [FuncSymbol {
            name: "main.f".into(),
            addr: u64::MAX - 1,
            size: 16,
        }];
        let functions = functions_from_symtab(&symbols);
        assert_eq!(functions[0].end, u64::MAX);
    }

    #[test]
    fn functions_are_found_by_name_the_last_of_equal_names() {
        let f = |name: &str, entry: u64| Function {
            name: name.into(),
            entry,
            end: entry + 1,
        };
        let functions = [
            f("main.main", 0),
            f("runtime.mallocgc", 1),
            f("main.f", 2),
            f("main.f", 3),
            f("main", 4),
            f("runtime.mallocgc.func1", 5),
        ];
        let index = name_index(&functions).unwrap();
        let entry = |name| find_by_name(&functions, &index, name).map(|f| f.entry);
        assert_eq!(entry("main.main"), Some(0));
        assert_eq!(entry("runtime.mallocgc"), Some(1));
        assert_eq!(entry("runtime.mallocgc.func1"), Some(5));
        assert_eq!(entry("main"), Some(4));
        // What the map of names gave: the later of two entries.
        assert_eq!(entry("main.f"), Some(3));
        for absent in ["", "a", "main.", "main.g", "runtime.mallocg", "zzz"] {
            assert_eq!(entry(absent), None, "{absent}");
        }
        assert_eq!(find_by_name(&[], &[], "main.main"), None);
    }
}
