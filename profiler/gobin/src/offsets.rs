//! Byte offsets of the runtime struct fields the eBPF side reads from `g` and `m`.
//!
//! A uprobe finds the current goroutine in R14 (amd64) and must then read `g.goid`,
//! `g.m.curg` (to get from `g0` back to the user goroutine), `g.startpc`/`g.gopc` and the
//! stack bounds. These offsets change between Go releases and are **not monotonic**
//! (`goid` is 0x98 in 1.19–1.22, 0xa0 in 1.23–1.24 and 0x98 again from 1.25), so they
//! can't be derived from a version range rule. The authoritative source is the binary's
//! own DWARF ([`from_dwarf`]); for stripped binaries [`for_version`] falls back to a table
//! that was read from the DWARF of real binaries of each verified release and is checked
//! against it by the tests.

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian, Reader};
use object::{Object, ObjectSection};

use crate::version::GoVersion;

/// Offsets (bytes, from the start of the struct) of the `runtime.g` / `runtime.m` fields a
/// profiler needs. amd64 and arm64 have identical layouts for these fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeOffsets {
    /// `g.goid` (int64 in 1.19, uint64 from 1.21).
    pub g_goid: u32,
    /// `g.m` (*m): the OS thread running the goroutine.
    pub g_m: u32,
    /// `m.curg` (*g): the user goroutine of an M, used when R14 holds `g0`.
    pub m_curg: u32,
    /// `g.startpc`: entry PC of the goroutine's function.
    pub g_startpc: u32,
    /// `g.gopc`: PC of the `go` statement that created the goroutine.
    pub g_gopc: u32,
    /// `g.stack.lo`.
    pub g_stack_lo: u32,
    /// `g.stack.hi`.
    pub g_stack_hi: u32,
}

/// Where a [`RuntimeOffsets`] came from, for logging and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetsSource {
    /// Read from the binary's own DWARF: always right for that binary.
    Dwarf,
    /// Taken from the per-version table (stripped binary).
    VersionTable,
}

/// Why [`from_dwarf`] could not produce offsets from a binary that has DWARF.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("not a readable ELF file: {0}")]
    Object(#[from] object::Error),
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("DWARF has no struct {0}")]
    MissingStruct(&'static str),
    #[error("DWARF struct {strukt} has no member {member} (or it has no constant offset)")]
    MissingMember {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("offset of {0} does not fit in 32 bits")]
    TooLarge(&'static str),
    #[error("DWARF offsets of {0} are inconsistent (overflow, or members out of order)")]
    Inconsistent(&'static str),
    #[error(
        "compressed section {section} claims {claimed} bytes, more than {MAX_COMPRESSION_RATIO} times its {compressed} compressed bytes"
    )]
    ImplausibleSize {
        section: String,
        claimed: u64,
        compressed: u64,
    },
}

/// zlib's largest compression ratio is 1032:1. A compressed section that claims more is
/// corrupt, and its claim must not become an allocation (object allocates it up front).
const MAX_COMPRESSION_RATIO: u64 = 1032;

/// A section's bytes, decompressed (`SHF_COMPRESSED` or `.zdebug_*`) when its claimed size
/// is one its compressed bytes can hold.
fn section_data<'data>(
    section: &object::Section<'data, '_>,
) -> Result<Cow<'data, [u8]>, OffsetsError> {
    let compressed = section.compressed_data()?;
    if compressed.format != object::CompressionFormat::None {
        let limit = (compressed.data.len() as u64).saturating_mul(MAX_COMPRESSION_RATIO);
        if compressed.uncompressed_size > limit {
            return Err(OffsetsError::ImplausibleSize {
                section: section.name().unwrap_or("?").to_string(),
                claimed: compressed.uncompressed_size,
                compressed: compressed.data.len() as u64,
            });
        }
    }
    Ok(compressed.decompress()?)
}

/// The structs whose members we need. `runtime.stack` gives `lo`/`hi` inside `g.stack`.
const STRUCTS: [&str; 3] = ["runtime.g", "runtime.m", "runtime.stack"];

/// Reads the offsets from the binary's DWARF (`.debug_info` etc., compressed or not: Go
/// zlib-compresses its DWARF — `SHF_COMPRESSED` sections in every release from 1.19 to
/// 1.27, `.zdebug_*` sections in older ones and some external links; `object` handles
/// both, and a section that fails to decompress is an error, not "no DWARF").
///
/// Returns `Ok(None)` when the binary has no DWARF (`-ldflags=-w` or `-s -w`), so the
/// caller can fall back to [`for_version`]. Errors mean the DWARF exists but is unusable.
pub fn from_dwarf(elf_bytes: &[u8]) -> Result<Option<RuntimeOffsets>, OffsetsError> {
    let file = object::File::parse(elf_bytes)?;
    let has_info = file
        .section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0);
    if !has_info {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, OffsetsError> {
        match file.section_by_name(id.name()) {
            Some(section) => section_data(&section),
            None => Ok(Cow::Borrowed(&[])),
        }
    })?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    let members = struct_members(&dwarf)?;

    let field = |strukt: &'static str, member: &'static str| -> Result<u64, OffsetsError> {
        members
            .get(strukt)
            .ok_or(OffsetsError::MissingStruct(strukt))?
            .get(member)
            .copied()
            .ok_or(OffsetsError::MissingMember { strukt, member })
    };
    let narrow =
        |name: &'static str, v: u64| u32::try_from(v).map_err(|_| OffsetsError::TooLarge(name));

    let g_stack = field("runtime.g", "stack")?;
    Ok(Some(RuntimeOffsets {
        g_goid: narrow("g.goid", field("runtime.g", "goid")?)?,
        g_m: narrow("g.m", field("runtime.g", "m")?)?,
        m_curg: narrow("m.curg", field("runtime.m", "curg")?)?,
        g_startpc: narrow("g.startpc", field("runtime.g", "startpc")?)?,
        g_gopc: narrow("g.gopc", field("runtime.g", "gopc")?)?,
        g_stack_lo: narrow(
            "g.stack.lo",
            g_stack.saturating_add(field("runtime.stack", "lo")?),
        )?,
        g_stack_hi: narrow(
            "g.stack.hi",
            g_stack.saturating_add(field("runtime.stack", "hi")?),
        )?,
    }))
}

type Members = HashMap<&'static str, HashMap<String, u64>>;

/// Collects `member name -> DW_AT_data_member_location` for each struct in [`STRUCTS`].
/// Go emits each type once, as a direct child of a compile unit, so only the top level of
/// each unit is walked (function bodies are skipped by the tree iterator).
fn struct_members<R: Reader>(dwarf: &gimli::Dwarf<R>) -> Result<Members, OffsetsError> {
    let mut found = Members::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else {
                continue;
            };
            let name = dwarf.attr_string(&unit, name)?;
            let name = name.to_string_lossy()?;
            let Some(&key) = STRUCTS.iter().find(|s| **s == name) else {
                continue;
            };
            if found.contains_key(key) {
                continue;
            }
            let mut fields = HashMap::new();
            let mut members = child.children();
            while let Some(member) = members.next()? {
                let m = member.entry();
                if m.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let (Some(mname), Some(loc)) = (
                    m.attr_value(gimli::DW_AT_name),
                    m.attr_value(gimli::DW_AT_data_member_location),
                ) else {
                    continue;
                };
                let mname = dwarf
                    .attr_string(&unit, mname)?
                    .to_string_lossy()?
                    .into_owned();
                if let Some(off) = member_location(loc, unit.encoding()) {
                    fields.insert(mname, off);
                }
            }
            found.insert(key, fields);
            if found.len() == STRUCTS.len() {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// `DW_AT_data_member_location` is a constant in Go's DWARF; older producers (and the
/// DWARF 2 form) use a `DW_OP_plus_uconst N` expression, accepted too.
fn member_location<R: Reader>(value: AttributeValue<R>, encoding: gimli::Encoding) -> Option<u64> {
    if let Some(v) = value.udata_value() {
        return Some(v);
    }
    let AttributeValue::Exprloc(expr) = value else {
        return None;
    };
    let mut ops = expr.operations(encoding);
    match ops.next().ok()?? {
        gimli::Operation::PlusConstant { value } if ops.next().ok()?.is_none() => Some(value),
        _ => None,
    }
}

/// Member offsets of the named structs: struct name → member name →
/// `DW_AT_data_member_location`, read from the binary's DWARF. A struct the DWARF does
/// not describe is absent from the map. `Ok(None)` when the binary has no DWARF.
///
/// For readers of runtime globals (`runtime.workType`, `runtime.mstats`,
/// `runtime.gcControllerState`, ...) whose layouts change with every release: the caller
/// picks the members it needs and treats a missing one as "not measurable".
pub fn struct_offsets_from_dwarf(
    elf_bytes: &[u8],
    structs: &[&str],
) -> Result<Option<StructOffsets>, OffsetsError> {
    let file = object::File::parse(elf_bytes)?;
    let has_info = file
        .section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0);
    if !has_info {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, OffsetsError> {
        match file.section_by_name(id.name()) {
            Some(section) => section_data(&section),
            None => Ok(Cow::Borrowed(&[])),
        }
    })?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    Ok(Some(named_struct_members(&dwarf, structs)?))
}

/// struct name → member name → byte offset.
pub type StructOffsets = HashMap<String, HashMap<String, u64>>;

/// Like `struct_members`, for any list of struct names.
fn named_struct_members<R: Reader>(
    dwarf: &gimli::Dwarf<R>,
    structs: &[&str],
) -> Result<StructOffsets, OffsetsError> {
    let mut found = StructOffsets::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else {
                continue;
            };
            let name = dwarf.attr_string(&unit, name)?;
            let name = name.to_string_lossy()?;
            if !structs.contains(&name.as_ref()) || found.contains_key(name.as_ref()) {
                continue;
            }
            let name = name.into_owned();
            let mut fields = HashMap::new();
            let mut members = child.children();
            while let Some(member) = members.next()? {
                let m = member.entry();
                if m.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let (Some(mname), Some(loc)) = (
                    m.attr_value(gimli::DW_AT_name),
                    m.attr_value(gimli::DW_AT_data_member_location),
                ) else {
                    continue;
                };
                let mname = dwarf
                    .attr_string(&unit, mname)?
                    .to_string_lossy()?
                    .into_owned();
                if let Some(off) = member_location(loc, unit.encoding()) {
                    fields.insert(mname, off);
                }
            }
            found.insert(name, fields);
            if found.len() == structs.len() {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// The amd64 offsets for a stripped binary of Go version `v`, or `None` when that release
/// was not verified (1.20: no toolchain was available to check it; < 1.19 and > 1.27:
/// unknown). Keyed by `(major, minor)` because patch releases never change these structs.
///
/// Every row was read from the DWARF of a binary built by that release and is re-checked
/// by `tests/offsets.rs` (`for_version(v) == from_dwarf(unstripped binary of v)`), whose
/// DWARF values are in turn checked against Go's own `debug/dwarf`.
pub fn for_version(v: GoVersion) -> Option<RuntimeOffsets> {
    // g.m, g.stack.lo/hi never moved. The rest: 1.21 dropped 16 bytes before gopc;
    // 1.23 added g.syscallbp (+8 from goid on); 1.25 removed gobuf.ret (-8 from goid on,
    // and m.curg 0xc0 -> 0xb8); 1.26 added a field between goid and gopc (+8 for gopc on).
    const fn row(g_goid: u32, m_curg: u32, g_gopc: u32, g_startpc: u32) -> RuntimeOffsets {
        RuntimeOffsets {
            g_goid,
            g_m: 0x30,
            m_curg,
            g_startpc,
            g_gopc,
            g_stack_lo: 0x0,
            g_stack_hi: 0x8,
        }
    }
    let offsets = match v.release() {
        (1, 19) => row(0x98, 0xc0, 0x128, 0x138),
        (1, 21) | (1, 22) => row(0x98, 0xc0, 0x118, 0x128),
        (1, 23) | (1, 24) => row(0xa0, 0xc0, 0x120, 0x130),
        (1, 25) => row(0x98, 0xb8, 0x118, 0x128),
        (1, 26) | (1, 27) => row(0x98, 0xb8, 0x120, 0x130),
        _ => return None,
    };
    Some(offsets)
}

/// Where the runtime keeps what a goroutine count needs: `g.atomicstatus` and
/// `schedt.goidgen` (the last goroutine id handed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedOffsets {
    pub g_atomicstatus: u32,
    pub schedt_goidgen: u32,
}

/// [`SchedOffsets`] from DWARF; `None` without DWARF or the members.
pub fn sched_from_dwarf(elf_bytes: &[u8]) -> Option<SchedOffsets> {
    let structs = struct_offsets_from_dwarf(elf_bytes, &["runtime.g", "runtime.schedt"]).ok()??;
    let field = |s: &str, f: &str| u32::try_from(*structs.get(s)?.get(f)?).ok();
    Some(SchedOffsets {
        g_atomicstatus: field("runtime.g", "atomicstatus")?,
        schedt_goidgen: field("runtime.schedt", "goidgen")?,
    })
}

/// [`SchedOffsets`] of the verified releases (checked against DWARF by
/// `tests/offsets.rs`): `atomicstatus` and `stackLock` (two 4-byte fields) sit just
/// before `goid`; `goidgen` is `schedt`'s first field.
pub fn sched_for_version(v: GoVersion) -> Option<SchedOffsets> {
    let goid = for_version(v)?.g_goid;
    Some(SchedOffsets {
        g_atomicstatus: goid - 8,
        schedt_goidgen: 0,
    })
}

/// Where `g.sched` (a `gobuf`) keeps a parked goroutine's registers: the stack-copy
/// probe walks the stack of a goroutine that is not running from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GobufOffsets {
    /// `g.sched.sp`, `g.sched.pc`, `g.sched.bp`, from the start of `g`.
    pub sp: u32,
    pub pc: u32,
    pub bp: u32,
}

/// [`GobufOffsets`] from DWARF; `None` without DWARF or the members.
pub fn gobuf_from_dwarf(elf_bytes: &[u8]) -> Option<GobufOffsets> {
    let structs = struct_offsets_from_dwarf(elf_bytes, &["runtime.g", "runtime.gobuf"]).ok()??;
    let sched = *structs.get("runtime.g")?.get("sched")?;
    let gobuf = structs.get("runtime.gobuf")?;
    let field = |name: &str| u32::try_from(sched.checked_add(*gobuf.get(name)?)?).ok();
    Some(GobufOffsets {
        sp: field("sp")?,
        pc: field("pc")?,
        bp: field("bp")?,
    })
}

/// [`GobufOffsets`] of the verified releases, for stripped binaries (GO-RUNTIME.md §5.1,
/// read from the DWARF of each release; checked against DWARF by
/// tests/tests/stackgrowth.rs): `gobuf` lost its `ret` field in 1.25.
pub fn gobuf_for_version(v: GoVersion) -> Option<GobufOffsets> {
    let (sp, pc, bp) = match v.release() {
        (1, 19) | (1, 21..=24) => (0x38, 0x40, 0x68),
        (1, 25..=27) => (0x38, 0x40, 0x60),
        _ => return None,
    };
    Some(GobufOffsets { sp, pc, bp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_versions_have_no_table() {
        for minor in [17, 18, 20, 28, 30] {
            assert_eq!(for_version(GoVersion::new(1, minor, 0)), None, "1.{minor}");
        }
        assert_eq!(for_version(GoVersion::new(2, 0, 0)), None);
    }

    #[test]
    fn goid_is_not_monotonic() {
        let goid = |minor| for_version(GoVersion::new(1, minor, 3)).map(|o| o.g_goid);
        assert_eq!(goid(22), Some(0x98));
        assert_eq!(goid(23), Some(0xa0));
        assert_eq!(goid(25), Some(0x98));
    }

    #[test]
    fn a_compressed_section_claiming_gigabytes_is_refused_before_any_allocation() {
        // Fuzz OOM (dwarf_offsets): 2.7 KB whose .debug_info header claims 4.3 GB.
        let elf = include_bytes!(
            "../tests/fuzz-regressions/dwarf_offsets/oom-6621efa0a369a6abd31ae4266a29e9fe93a39fa2"
        );
        let err = from_dwarf(elf).unwrap_err();
        assert!(matches!(err, OffsetsError::ImplausibleSize { .. }), "{err}");
    }

    #[test]
    fn no_dwarf_is_none() {
        // A minimal ELF64 header with no sections at all.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // EV_CURRENT
        elf[16] = 2; // ET_EXEC
        elf[18] = 0x3e; // EM_X86_64
        elf[20] = 1;
        elf[52] = 64; // e_ehsize
        assert!(matches!(from_dwarf(&elf), Ok(None)));
    }
}
