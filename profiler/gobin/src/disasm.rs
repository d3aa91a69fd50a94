//! amd64 disassembly helpers for probe placement (work in progress).
