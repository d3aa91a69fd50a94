//! Where the readers of a running Go process's memory (its goroutine list, its
//! allocation counters) get their bytes: a [`MemorySource`]. The profiler reads the
//! process (`process_vm_readv`); the tests and the fuzz targets read a byte image
//! ([`ImageMemory`]). The decoding on top is the same code for both.

use std::io;

/// Another address space, read word by word or in runs of bytes.
pub trait MemorySource {
    /// Exactly `len` bytes at `addr`, or an error.
    fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>>;

    /// The little-endian `width`-byte (2, 4 or 8) words at `addrs`; `None` where a word
    /// could not be read. Err only when nothing can be read at all (the process is gone,
    /// or no permission).
    fn read_words(&self, addrs: &[u64], width: usize) -> io::Result<Vec<Option<u64>>>;

    /// `n` little-endian u64s at `addr`.
    fn read_u64s(&self, addr: u64, n: usize) -> io::Result<Vec<u64>> {
        let len = n
            .checked_mul(8)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read too large"))?;
        let bytes = self.read_bytes(addr, len)?;
        Ok(bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| u64::from_le_bytes(*c))
            .collect())
    }

    /// A Go slice header at `addr`: (array pointer, length).
    fn slice_header(&self, addr: u64) -> io::Result<(u64, u64)> {
        let words = self.read_u64s(addr, 2)?;
        Ok((words[0], words[1]))
    }
}

/// An address space made of one run of bytes at `base`: every read outside it fails.
#[derive(Clone, Copy, Debug)]
pub struct ImageMemory<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl ImageMemory<'_> {
    fn range(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

impl MemorySource for ImageMemory<'_> {
    fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        // Checked before anything is allocated: a length read from the image is not trusted.
        self.range(addr, len).map(<[u8]>::to_vec).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {addr:#x}: outside the image"),
            )
        })
    }

    fn read_words(&self, addrs: &[u64], width: usize) -> io::Result<Vec<Option<u64>>> {
        if !matches!(width, 2 | 4 | 8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("word width {width}"),
            ));
        }
        Ok(addrs
            .iter()
            .map(|&addr| {
                let mut word = [0u8; 8];
                word[..width].copy_from_slice(self.range(addr, width)?);
                Some(u64::from_le_bytes(word))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_reads_inside_and_refuses_outside() {
        let bytes: Vec<u8> = (0..32).collect();
        let mem = ImageMemory {
            base: 0x1000,
            bytes: &bytes,
        };
        assert_eq!(mem.read_bytes(0x1004, 2).unwrap(), [4, 5]);
        assert!(mem.read_bytes(0x0fff, 2).is_err());
        assert!(mem.read_bytes(0x101f, 2).is_err());
        assert!(mem.read_bytes(0x1000, usize::MAX).is_err());
        assert_eq!(
            mem.read_words(&[0x1000, 0x101f, 0x1010], 2).unwrap(),
            [Some(0x0100), None, Some(0x1110)]
        );
        assert_eq!(mem.slice_header(0x1000).unwrap().0, 0x0706050403020100);
        assert!(mem.read_u64s(0x1000, usize::MAX).is_err());
    }
}
