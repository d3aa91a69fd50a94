//! What a profiler needs from a Go ELF binary, read from the file alone (no process, no
//! root): the Go version and build settings, every function's address (from `.symtab`, or
//! from `.gopclntab` + moduledata when stripped), file:line and inlined frames for any PC,
//! runtime struct offsets (from DWARF, else a per-version table), the probe offset after a
//! function's stack check, RET offsets, and the names of runtime type descriptors.

pub mod version;

pub use version::GoVersion;
