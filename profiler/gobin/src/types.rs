//! Names of Go runtime type descriptors (work in progress).
