//! libFuzzer entry for the `rewrite` target; the target itself is `weir_fuzz::rewrite::run`.

#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|input: &[u8]| weir_fuzz::rewrite::run(input));
