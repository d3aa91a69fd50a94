//! The traced executable as the process maps it: its inode and file mappings, kept fresh
//! while the process lives (for symbolization after it exited), from which the load bias
//! (PIE) and the symbolizer are worked out — in this one place.

use std::path::Path;

use gomemtrace_gobin::GoBinary;

use super::procmaps::{self, MappedFile};
use crate::symbolizer::{ExeLayout, Symbolizer};

/// The executable's text mapping is not in `/proc/PID/maps` (the process exited before it
/// was read, or runs another file than the one analysed).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the executable's text mapping was not found in /proc/PID/maps")]
pub struct MappingNotFound;

pub struct ExeMappings {
    inode: u64,
    pub mappings: Vec<MappedFile>,
}

impl ExeMappings {
    /// Process `pid`'s mappings; `exe_link` (`/proc/PID/exe`) names its executable.
    pub fn read(pid: u32, exe_link: &Path) -> std::io::Result<Self> {
        let inode = std::fs::metadata(exe_link).map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        Ok(Self::with_inode(pid, inode))
    }

    /// Process `pid`'s mappings, its executable known by inode.
    pub fn with_inode(pid: u32, inode: u64) -> Self {
        Self {
            inode,
            mappings: procmaps::executable_mappings(pid).unwrap_or_default(),
        }
    }

    /// Reads the mappings again (libraries loaded late: cgo, plugins); keeps the old ones
    /// once the process is gone.
    pub fn refresh(&mut self, pid: u32) {
        if let Ok(fresh) = procmaps::executable_mappings(pid)
            && !fresh.is_empty()
        {
            self.mappings = fresh;
        }
    }

    /// Where the executable is loaded, if its text mapping is found.
    pub fn layout(&self, binary: &GoBinary) -> Result<ExeLayout, MappingNotFound> {
        ExeLayout::find(binary, self.inode, &self.mappings).ok_or(MappingNotFound)
    }

    /// Runtime address − file address (the PIE bias).
    pub fn bias(&self, binary: &GoBinary) -> Result<u64, MappingNotFound> {
        self.layout(binary).map(|l| l.bias)
    }

    pub fn symbolizer<'a>(
        &self,
        binary: &'a GoBinary,
        exe_path: &str,
    ) -> Result<Symbolizer<'a>, MappingNotFound> {
        Ok(Symbolizer::new(
            binary,
            self.layout(binary)?,
            exe_path,
            &self.mappings,
        ))
    }
}
