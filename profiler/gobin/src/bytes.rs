//! Little-endian readers over byte slices that return `None` instead of panicking.

pub(crate) fn u32_le(data: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(offset..offset.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn i32_le(data: &[u8], offset: usize) -> Option<i32> {
    u32_le(data, offset).map(|v| v as i32)
}

pub(crate) fn u64_le(data: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(offset..offset.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Go's `binary.Uvarint`: returns the value and the number of bytes read.
pub(crate) fn read_uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The NUL-terminated string starting at `offset`.
pub(crate) fn c_str(data: &[u8], offset: usize) -> Option<&str> {
    let tail = data.get(offset..)?;
    let len = tail.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uvarints() {
        assert_eq!(read_uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(read_uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(read_uvarint(&[0x80]), None);
    }
}
