//! libFuzzer entry for the `path` target; the target itself is `weir_fuzz::path::run`.

#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|input: &[u8]| weir_fuzz::path::run(input));
