//! `.gopclntab` (Go 1.18+ format): function table, names, and the pc-value tables that map
//! a PC to a file, a line, or an inline-tree index.
//!
//! Reference: Go `runtime/symtab.go`, `internal/abi/symtab.go`, `debug/gosym/pclntab.go`.
//! Every method takes the pclntab bytes (`pcln`), which start at the `pcHeader`.

use crate::bytes::{c_str, i32_le, read_uvarint, u32_le, u64_le};

/// `pcHeader.magic` of Go 1.18–1.19 (40-byte `_func`, no `startLine`).
pub(crate) const MAGIC_GO118: u32 = 0xffff_fff0;
/// `pcHeader.magic` of Go 1.20+ (44-byte `_func` with `startLine`).
pub(crate) const MAGIC_GO120: u32 = 0xffff_fff1;

/// `PCDATA_InlTreeIndex` and `FUNCDATA_InlTree` (unchanged 1.18–1.27).
pub(crate) const PCDATA_INL_TREE_INDEX: u32 = 2;
pub(crate) const FUNCDATA_INL_TREE: u32 = 3;

/// `_func` field offsets that do not depend on the version.
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_NPCDATA: usize = 28;
const FUNC_CU_OFFSET: usize = 32;

/// The parsed `pcHeader`; offsets are relative to the header start.
#[derive(Clone, Debug)]
pub(crate) struct Pclntab {
    /// Virtual address of the header.
    pub addr: u64,
    /// File offset of the header and how many file bytes follow it.
    pub file_offset: usize,
    pub len: usize,
    pub magic: u32,
    /// Instruction size quantum (1 on amd64, 4 on arm64).
    pub min_lc: u8,
    pub nfunc: usize,
    /// `pcHeader.textStart` as stored (0 from Go 1.26, and 0 in PIE files before a
    /// relocation is applied); the slot address lets callers look for that relocation.
    pub text_start_raw: u64,
    pub text_start_slot: u64,
    pub funcname_offset: usize,
    pub cu_offset: usize,
    pub filetab_offset: usize,
    pub pctab_offset: usize,
    pub pcln_offset: usize,
}

/// One functab entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FuncEntry {
    /// Entry relative to the text start.
    pub entry_off: u32,
    /// `_func` offset relative to `pcln_offset`.
    pub func_off: u32,
}

impl Pclntab {
    /// The oldest release whose pclntab has this header's magic: a first guess of the
    /// version where `.go.buildinfo` is missing, refined from `runtime.buildVersion`.
    pub(crate) fn oldest_version(&self) -> crate::GoVersion {
        if self.magic == MAGIC_GO118 {
            crate::GoVersion::new(1, 18, 0)
        } else {
            crate::GoVersion::new(1, 20, 0)
        }
    }

    /// Parses the header at `pcln[0..]`; `addr`/`file_offset` locate it.
    pub fn parse(pcln: &[u8], addr: u64, file_offset: usize) -> Option<Self> {
        let magic = u32_le(pcln, 0)?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return None;
        }
        let &[pad1, pad2, min_lc, ptr_size] = pcln.get(4..8)? else {
            return None;
        };
        if pad1 != 0 || pad2 != 0 || !matches!(min_lc, 1 | 2 | 4) || ptr_size != 8 {
            return None;
        }
        let word = |i: usize| u64_le(pcln, 8 + 8 * i);
        let as_offset = |v: u64| usize::try_from(v).ok().filter(|&o| o < pcln.len());
        let nfunc = usize::try_from(word(0)?).ok()?;
        let pcln_offset = as_offset(word(7)?)?;
        // The functab (nfunc + 1 entries of 8 bytes) lies inside the table: a count no
        // table can hold is a corrupt header, not an allocation to try.
        if nfunc >= (pcln.len() - pcln_offset) / 8 {
            return None;
        }
        Some(Self {
            addr,
            file_offset,
            len: pcln.len(),
            magic,
            min_lc,
            nfunc,
            text_start_raw: word(2)?,
            text_start_slot: addr.wrapping_add(8 + 2 * 8),
            funcname_offset: as_offset(word(3)?)?,
            cu_offset: as_offset(word(4)?)?,
            filetab_offset: as_offset(word(5)?)?,
            pctab_offset: as_offset(word(6)?)?,
            pcln_offset,
        })
    }

    /// Functab entry `i`; `i == nfunc` is the end sentinel (its `entry_off` is the end of text).
    pub fn func_entry(&self, pcln: &[u8], i: usize) -> Option<FuncEntry> {
        let at = self.pcln_offset + 8 * i;
        Some(FuncEntry {
            entry_off: u32_le(pcln, at)?,
            func_off: u32_le(pcln, at + 4)?,
        })
    }

    /// Index of the function whose `[entry, next entry)` holds `pc_off` (relative to text start).
    pub fn find_func(&self, pcln: &[u8], pc_off: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.nfunc);
        // Last i with entry_off(i) <= pc_off.
        while lo < hi {
            let mid = (lo + hi) / 2;
            if u64::from(self.func_entry(pcln, mid)?.entry_off) <= pc_off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let index = lo.checked_sub(1)?;
        let end = u64::from(self.func_entry(pcln, self.nfunc)?.entry_off);
        (pc_off < end).then_some(index)
    }

    fn func_base(&self, entry: FuncEntry) -> usize {
        self.pcln_offset + entry.func_off as usize
    }

    fn funcid_offset(&self) -> usize {
        if self.magic == MAGIC_GO118 {
            0x24
        } else {
            0x28
        }
    }

    /// Size of the fixed part of `_func`, after which `pcdata[npcdata]` and `funcdata[nfuncdata]` follow.
    fn func_fixed_size(&self) -> usize {
        if self.magic == MAGIC_GO118 { 40 } else { 44 }
    }

    /// A name from funcnametab by its offset.
    pub fn name_at<'a>(&self, pcln: &'a [u8], name_off: i32) -> Option<&'a str> {
        c_str(pcln, self.funcname_offset + usize::try_from(name_off).ok()?)
    }

    pub fn func_name<'a>(&self, pcln: &'a [u8], entry: FuncEntry) -> Option<&'a str> {
        let name_off = i32_le(pcln, self.func_base(entry) + FUNC_NAME_OFF)?;
        c_str(pcln, self.funcname_offset + usize::try_from(name_off).ok()?)
    }

    pub fn func_id(&self, pcln: &[u8], entry: FuncEntry) -> Option<u8> {
        pcln.get(self.func_base(entry) + self.funcid_offset())
            .copied()
    }

    /// `_func.flag & FuncFlagAsm`: the function is written in assembly (ABI0).
    pub fn is_asm(&self, pcln: &[u8], entry: FuncEntry) -> bool {
        const FUNC_FLAG_ASM: u8 = 1 << 2;
        pcln.get(self.func_base(entry) + self.funcid_offset() + 1)
            .is_some_and(|flag| flag & FUNC_FLAG_ASM != 0)
    }

    /// `_func.pcdata[table]` (a pctab offset), if the function has that table.
    fn pcdata_offset(&self, pcln: &[u8], entry: FuncEntry, table: u32) -> Option<u32> {
        let base = self.func_base(entry);
        let npcdata = u32_le(pcln, base + FUNC_NPCDATA)?;
        if table >= npcdata {
            return None;
        }
        u32_le(pcln, base + self.func_fixed_size() + 4 * table as usize).filter(|&off| off != 0)
    }

    /// `_func.funcdata[index]`: an offset from `moduledata.gofunc`, if present.
    pub fn funcdata_offset(&self, pcln: &[u8], entry: FuncEntry, index: u32) -> Option<u32> {
        let base = self.func_base(entry);
        let npcdata = u32_le(pcln, base + FUNC_NPCDATA)? as usize;
        let nfuncdata = *pcln.get(base + self.func_fixed_size() - 1)?;
        if index >= u32::from(nfuncdata) {
            return None;
        }
        let at = base + self.func_fixed_size() + 4 * npcdata + 4 * index as usize;
        u32_le(pcln, at).filter(|&off| off != u32::MAX)
    }

    /// Value of the pc-value table at pctab offset `table_off` for `pc_off` (relative to
    /// the function entry), as the runtime's `pcvalue` computes it.
    fn pcvalue(&self, pcln: &[u8], table_off: u32, pc_off: u64) -> Option<i32> {
        let mut p = pcln.get(self.pctab_offset + table_off as usize..)?;
        let mut pc = 0u64;
        let mut value: i32 = -1;
        let mut first = true;
        loop {
            let (uvdelta, n) = read_uvarint(p)?;
            if uvdelta == 0 && !first {
                return None;
            }
            first = false;
            p = p.get(n..)?;
            // Zig-zag decoding.
            let vdelta = if uvdelta & 1 != 0 {
                !(uvdelta >> 1)
            } else {
                uvdelta >> 1
            } as i32;
            let (pcdelta, n) = read_uvarint(p)?;
            p = p.get(n..)?;
            // The deltas are the file's: a PC past 2^64 ends the table (no function is there).
            pc = pc.checked_add(pcdelta.checked_mul(u64::from(self.min_lc))?)?;
            value = value.wrapping_add(vdelta);
            if pc_off < pc {
                return Some(value);
            }
        }
    }

    /// Line number at `pc_off` (relative to the entry).
    pub fn line(&self, pcln: &[u8], entry: FuncEntry, pc_off: u64) -> Option<u32> {
        let table = u32_le(pcln, self.func_base(entry) + FUNC_PCLN)?;
        self.pcvalue(pcln, table, pc_off)
            .and_then(|line| u32::try_from(line).ok())
    }

    /// File name at `pc_off`: the pcfile value indexes this function's compilation unit's
    /// slice of cutab, whose entries are offsets into filetab.
    pub fn file<'a>(&self, pcln: &'a [u8], entry: FuncEntry, pc_off: u64) -> Option<&'a str> {
        let base = self.func_base(entry);
        let table = u32_le(pcln, base + FUNC_PCFILE)?;
        let file_index = u32::try_from(self.pcvalue(pcln, table, pc_off)?).ok()?;
        let cu = u32_le(pcln, base + FUNC_CU_OFFSET)?;
        let cutab_entry = self.cu_offset + 4 * (cu as usize + file_index as usize);
        let file_off = u32_le(pcln, cutab_entry).filter(|&o| o != u32::MAX)?;
        c_str(pcln, self.filetab_offset + file_off as usize)
    }

    /// Inline-tree index at `pc_off`, or `None` when the PC is not in inlined code.
    pub fn inline_index(&self, pcln: &[u8], entry: FuncEntry, pc_off: u64) -> Option<u32> {
        let table = self.pcdata_offset(pcln, entry, PCDATA_INL_TREE_INDEX)?;
        let index = self.pcvalue(pcln, table, pc_off)?;
        u32::try_from(index).ok()
    }
}

/// One `inlinedCall` record of a function's inline tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlinedCall {
    /// Offset of the inlined function's name in funcnametab.
    pub name_off: i32,
    /// Offset from the physical function's entry of an instruction at the call site.
    pub parent_pc: i32,
}

impl InlinedCall {
    /// Record size: 20 bytes in Go 1.18–1.19 (`parent int16, funcID, _, file, line, func_,
    /// parentPc`), 16 bytes from 1.20 (`funcID, _[3], nameOff, parentPc, startLine`).
    pub fn size(magic: u32) -> usize {
        if magic == MAGIC_GO118 { 20 } else { 16 }
    }

    pub fn parse(record: &[u8], magic: u32) -> Option<Self> {
        if magic == MAGIC_GO118 {
            Some(Self {
                name_off: i32_le(record, 12)?,
                parent_pc: i32_le(record, 16)?,
            })
        } else {
            Some(Self {
                name_off: i32_le(record, 4)?,
                parent_pc: i32_le(record, 8)?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(min_lc: u8) -> Pclntab {
        Pclntab {
            addr: 0,
            file_offset: 0,
            len: 0,
            magic: MAGIC_GO120,
            min_lc,
            nfunc: 0,
            text_start_raw: 0,
            text_start_slot: 0,
            funcname_offset: 0,
            cu_offset: 0,
            filetab_offset: 0,
            pctab_offset: 0,
            pcln_offset: 0,
        }
    }

    #[test]
    fn pc_deltas_past_2_to_the_64_end_the_table() {
        // value +1 over 2^63 PCs: times the quantum 4, past 2^64.
        let mut pctab = vec![0x02];
        pctab.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_eq!(table(4).pcvalue(&pctab, 0, u64::MAX), None);
        // The same over 16 PCs: value 0 below PC 64.
        assert_eq!(table(4).pcvalue(&[0x02, 0x10], 0, 63), Some(0));
    }
}
