//! The offset of `thread.fsbase` in the kernel's `task_struct`, read from the kernel's
//! BTF (`/sys/kernel/btf/vmlinux`), for the goroutine lookup's TLS fallback. A minimal
//! reader: the header, the type section walked by kind (include/uapi/linux/btf.h), the
//! string section.

use std::path::{Path, PathBuf};

/// Why the offset cannot be read from the kernel's BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not little-endian BTF")]
    NotLittleEndian,
    #[error("BTF truncated")]
    Truncated,
    #[error("BTF section out of bounds")]
    SectionOutOfBounds,
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
}

/// `task_struct.thread.fsbase`, in bytes.
pub fn task_fsbase_offset(vmlinux: &Path) -> Result<u32, BtfError> {
    let data = std::fs::read(vmlinux).map_err(|source| BtfError::Read {
        path: vmlinux.to_path_buf(),
        source,
    })?;
    let btf = Btf::parse(&data)?;
    let thread = btf.member_offset("task_struct", "thread")?;
    let fsbase = btf.member_offset("thread_struct", "fsbase")?;
    Ok((thread.0 + fsbase.0) / 8)
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

/// A member's offset in bits.
struct Bits(u32);

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Truncated)
        };
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::NotLittleEndian);
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::SectionOutOfBounds)
        };
        Ok(Self {
            types: section(type_off, type_len)?,
            strings: section(str_off, str_len)?,
        })
    }

    fn string(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The bit offset of `member` in the struct named `name` (the first such struct).
    fn member_offset(&self, name: &str, member: &str) -> Result<Bits, BtfError> {
        let word = |at: usize| -> Option<u32> {
            self.types
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let mut at = 0;
        while let (Some(name_off), Some(info)) = (word(at), word(at + 4)) {
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let body = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            if kind == KIND_STRUCT && self.string(name_off) == name.as_bytes() {
                for i in 0..vlen {
                    let m = body + 12 * i;
                    let (Some(m_name), Some(m_off)) = (word(m), word(m + 8)) else {
                        break;
                    };
                    if self.string(m_name) == member.as_bytes() {
                        return Ok(Bits(if kind_flag { m_off & 0xff_ffff } else { m_off }));
                    }
                }
                return Err(BtfError::NoMember {
                    strukt: name.to_string(),
                    member: member.to_string(),
                });
            }
            at = body + extra;
        }
        Err(BtfError::NoStruct(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_task_struct_has_an_fsbase() {
        // The kernel's own BTF: fsbase is a u64 inside task_struct, so 8-aligned and
        // within the struct.
        let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
        if !vmlinux.exists() {
            return;
        }
        let off = task_fsbase_offset(vmlinux).unwrap();
        assert_eq!(off % 8, 0);
        assert!(off > 0 && off < 16384, "{off}");
    }

    #[test]
    fn a_constructed_btf_resolves_member_offsets() {
        // Strings: "\0s\0a\0b\0"; one INT, then struct s { int a @0; int b @64 }.
        let strings = b"\0s\0a\0b\0";
        let mut types = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        push(&mut types, 0);
        push(&mut types, KIND_INT << 24);
        push(&mut types, 4);
        push(&mut types, 0x20); // int encoding: 32 bits
        push(&mut types, 1); // "s"
        push(&mut types, (KIND_STRUCT << 24) | 2);
        push(&mut types, 16);
        for (name, off) in [(3u32, 0u32), (5, 64)] {
            push(&mut types, name);
            push(&mut types, 1);
            push(&mut types, off);
        }
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("s", "b").unwrap().0, 64);
        assert!(btf.member_offset("s", "c").is_err());
        assert!(btf.member_offset("t", "a").is_err());
    }
}
