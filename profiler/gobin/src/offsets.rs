//! Offsets of the runtime struct fields a profiler reads from `g`/`m` (work in progress).
