#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gomemtrace_gobin::fuzzing::buildinfo(data));
