//! Harness for the end-to-end tests: builds Go fixtures with each toolchain and runs gomemtrace on them.
