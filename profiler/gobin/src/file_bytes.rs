//! The bytes of an executable: read into memory, or mapped from its file. A mapping keeps
//! large binaries (50–150 MB) out of the process's anonymous memory: only the pages parsed
//! or symbolized are resident, and [`FileBytes::release_resident`] gives them back.

use std::{fs::File, ops::Deref};

enum Repr {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

pub struct FileBytes(Repr);

impl FileBytes {
    /// Maps `file` read-only.
    pub fn map(file: &File) -> std::io::Result<Self> {
        // SAFETY: the mapping is private and read-only. A running executable cannot be
        // written or truncated (ETXTBSY), so its pages do not change under us; a file changed
        // after its process exited gets another mtime, hence another identity, and its old
        // analysis is not used again (only evicted).
        let map = unsafe { memmap2::Mmap::map(file) }?;
        Ok(Self(Repr::Mapped(map)))
    }

    /// Drops the resident pages of a mapping (re-read from the file on the next access);
    /// nothing for bytes in memory.
    pub fn release_resident(&self) {
        if let Repr::Mapped(map) = &self.0 {
            // SAFETY: the mapping is private and read-only: MADV_DONTNEED only drops its
            // pages, which the kernel reads back from the file when next touched; no
            // reference into it is invalidated.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(data: Vec<u8>) -> Self {
        Self(Repr::Owned(data))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(data) => data,
            Repr::Mapped(map) => map,
        }
    }
}
