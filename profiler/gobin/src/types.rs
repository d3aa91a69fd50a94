//! Names of Go runtime type descriptors (`internal/abi.Type`, `runtime._type` in 1.19).
//!
//! An allocation probe sees `typ *_type` (RBX at `mallocgc`); to report "main.Small" it
//! must follow the descriptor's name offset into the module's type data, exactly as the
//! runtime's `resolveNameOff` does. The layout used here is the same in every release from
//! 1.19 to 1.27, amd64 and arm64 (checked on real binaries by `tests/types.rs`):
//!
//! ```text
//! +0x00 Size_ uintptr   +0x08 PtrBytes   +0x10 Hash u32   +0x14 TFlag u8
//! +0x15 Align_ u8       +0x16 FieldAlign_ +0x17 Kind_ u8  +0x18 Equal   +0x20 GCData
//! +0x28 Str NameOff (i32, from md.types)  +0x2c PtrToThis TypeOff
//! ```
//!
//! A name (`internal/abi.Name`) is one flags byte, a uvarint length (since Go 1.17; 1.19
//! included) and the UTF-8 bytes; a tag and package path may follow but are not needed.

/// Offset of `TFlag` in a type descriptor.
const TFLAG_OFFSET: usize = 0x14;
/// Offset of `Str` (NameOff) in a type descriptor.
const STR_OFFSET: usize = 0x28;
/// Bytes of the descriptor that are read: up to and including `Str`.
const HEADER_LEN: usize = STR_OFFSET + 4;
/// `TFlagExtraStar`: the name is stored with a leading `*` that must be dropped. The
/// linker stores `T`'s name as `*T` so that `*T`'s descriptor can share the string.
const TFLAG_EXTRA_STAR: u8 = 0x2;
/// A uvarint of a `usize` takes at most 10 bytes.
const MAX_UVARINT_LEN: usize = 10;
/// Longest name accepted. Real names (generic shapes included) are far shorter; a larger
/// value means `typ` or `types_base` is wrong, and must not turn into a huge read.
const MAX_NAME_LEN: u64 = 1 << 16;

/// The name of the type descriptor at address `typ`, as the runtime prints it
/// (package-*name* qualified: `main.Small`, `*main.Small`, `[]uint8`, `runtime.g`).
///
/// - `read(vaddr, len)` returns exactly `len` bytes at `vaddr` of the binary or process,
///   or `None` when they can't be read.
/// - `types_base` is the module's `md.types`: the start of `.rodata` (≤ 1.26) or of
///   `.go.type` (1.27) for a non-PIE executable, the relocated `firstmoduledata.types` in a
///   live PIE process.
///
/// Returns `None` when any read fails or the bytes don't form a plausible name (length
/// over 64 KiB, invalid UTF-8): a nil or foreign `typ` gives `None`, never garbage.
pub fn type_name(
    read: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    types_base: u64,
    typ: u64,
) -> Option<String> {
    if typ == 0 {
        return None;
    }
    let header = read(typ, HEADER_LEN)?;
    if header.len() < HEADER_LEN {
        return None;
    }
    let tflag = header[TFLAG_OFFSET];
    let str_off = i32::from_le_bytes(header[STR_OFFSET..STR_OFFSET + 4].try_into().ok()?);
    let name_addr = types_base.checked_add_signed(i64::from(str_off))?;
    let mut name = read_name(read, name_addr)?;
    if tflag & TFLAG_EXTRA_STAR != 0 && name.starts_with('*') {
        name.remove(0);
    }
    Some(name)
}

/// Reads an `abi.Name` at `addr`: flags byte, uvarint length, bytes.
fn read_name(read: &dyn Fn(u64, usize) -> Option<Vec<u8>>, addr: u64) -> Option<String> {
    // One read for the flags and the longest possible length prefix; near the end of a
    // mapping that may fail, so fall back to reading the prefix byte by byte.
    let prefix = match read(addr, 1 + MAX_UVARINT_LEN) {
        Some(bytes) if bytes.len() == 1 + MAX_UVARINT_LEN => bytes,
        _ => read_prefix_bytewise(read, addr)?,
    };
    let (len, varint_len) = uvarint(&prefix[1..])?;
    if len > MAX_NAME_LEN {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let start = addr.checked_add(1 + varint_len as u64)?;
    let bytes = if len == 0 {
        Vec::new()
    } else {
        read(start, len)?
    };
    if bytes.len() != len {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The flags byte and as many length bytes as the uvarint needs, one read each.
fn read_prefix_bytewise(
    read: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    addr: u64,
) -> Option<Vec<u8>> {
    let mut prefix = Vec::with_capacity(1 + MAX_UVARINT_LEN);
    prefix.extend(read(addr, 1)?.first().copied());
    for i in 1..=MAX_UVARINT_LEN as u64 {
        let byte = *read(addr.checked_add(i)?, 1)?.first()?;
        prefix.push(byte);
        if byte & 0x80 == 0 {
            break;
        }
    }
    (prefix.len() >= 2).then_some(prefix)
}

/// Decodes a uvarint (Go's `encoding/binary.Uvarint`): `(value, bytes used)`.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(MAX_UVARINT_LEN) {
        let low = u64::from(b & 0x7f);
        if i == MAX_UVARINT_LEN - 1 && b > 1 {
            return None; // overflows 64 bits
        }
        value |= low << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000;

    /// A fake address space: a type descriptor at 0x2000 naming `name` at BASE+0x10.
    fn memory(tflag: u8, name: &[u8]) -> impl Fn(u64, usize) -> Option<Vec<u8>> + use<> {
        let mut name_bytes = vec![0x01]; // flags: exported
        let mut len = name.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            name_bytes.push(if len == 0 { b } else { b | 0x80 });
            if len == 0 {
                break;
            }
        }
        name_bytes.extend_from_slice(name);
        let mut typ = vec![0u8; 0x30];
        typ[TFLAG_OFFSET] = tflag;
        typ[STR_OFFSET..STR_OFFSET + 4].copy_from_slice(&0x10i32.to_le_bytes());
        move |addr, len| {
            let (region, start) = if addr >= 0x2000 {
                (&typ, 0x2000)
            } else {
                (&name_bytes, BASE + 0x10)
            };
            let off = usize::try_from(addr.checked_sub(start)?).ok()?;
            region.get(off..off + len).map(<[u8]>::to_vec)
        }
    }

    #[test]
    fn extra_star_is_dropped() {
        let read = memory(0xf, b"*main.Small");
        assert_eq!(
            type_name(&read, BASE, 0x2000).as_deref(),
            Some("main.Small")
        );
        let read = memory(0x1, b"*main.Small");
        assert_eq!(
            type_name(&read, BASE, 0x2000).as_deref(),
            Some("*main.Small")
        );
    }

    #[test]
    fn short_mapping_and_long_names() {
        // The name ends the "mapping", so the 11-byte prefix read fails; a 200-byte name
        // needs a two-byte uvarint.
        let long = "x".repeat(200);
        let read = memory(0, long.as_bytes());
        assert_eq!(type_name(&read, BASE, 0x2000), Some(long));
        let read = memory(0, b"u8");
        assert_eq!(type_name(&read, BASE, 0x2000).as_deref(), Some("u8"));
    }

    #[test]
    fn unreadable_or_nil_is_none() {
        let read = memory(0, b"int");
        assert_eq!(type_name(&read, BASE, 0), None);
        assert_eq!(type_name(&read, BASE, 0x5000), None);
        assert_eq!(type_name(&|_, _| None, BASE, 0x2000), None);
    }

    #[test]
    fn uvarint_matches_go() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0xc8, 0x01]), Some((200, 2)));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[0xff; 10]), None);
    }
}
