//! libFuzzer entry for the `transform` target; the target itself is `weir_fuzz::transform::run`.

#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|input: &[u8]| weir_fuzz::transform::run(input));
