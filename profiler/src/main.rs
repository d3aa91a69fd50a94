//! gomemtrace: where a Go program's memory goes, from outside the process.



fn main() {}
