//! What a profiler needs from a Go ELF binary, read from the file alone (no process, no
//! root): the Go version and build settings, every function's address (from `.symtab`, or
//! from `.gopclntab` + moduledata when stripped), file:line and inlined frames for any PC,
//! runtime struct offsets (from DWARF, else a per-version table), the probe offset after a
//! function's stack check, RET offsets, and the names of runtime type descriptors.

pub mod allocstats;
mod binary;
mod buildinfo;
mod bytes;
pub mod disasm;
mod elf;
mod error;
mod file_bytes;
#[doc(hidden)]
pub mod fuzzing;
pub mod goroutines;
pub mod memory;
mod moduledata;
pub mod offsets;
mod pclntab;
mod symbolize;
pub mod types;
pub mod version;

pub use binary::GoBinary;
pub use elf::{check_complete, check_complete_bytes};
pub use error::Error;
pub use file_bytes::FileBytes;
pub use version::GoVersion;

/// A function of the binary. Addresses are ELF virtual addresses as in the file (for PIE:
/// link-time, not where the process mapped it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub entry: u64,
    /// One past the last byte.
    pub end: u64,
}

/// One frame of a symbolized PC; inlined calls give several frames for one PC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: Option<String>,
    pub line: u32,
}

/// The binary's instruction set (ELF `e_machine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
    Other(u16),
}
