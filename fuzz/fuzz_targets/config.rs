//! libFuzzer entry for the `config` target; the target itself is `weir_fuzz::config::run`.

#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|input: &[u8]| weir_fuzz::config::run(input));
